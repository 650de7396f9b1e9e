/*
 * The forwarding hot path in C: one decrypted RTP packet out to many receivers.
 *
 * Why this exists: in Python, each forwarded copy costs a header rewrite, an
 * SRTP protect through cffi and a sendto(2) whose address tuple is parsed on
 * every call, about 10 µs per copy at 200 participants (bench/RESULTS.md).
 * Here each copy is a header written in place, one srtp_protect() and one slot
 * of a sendmmsg(2) batch, so the per-copy cost is close to the kernel's own.
 *
 * What it does not own: SRTP contexts (aiortc creates them through pylibsrtp;
 * this module calls the same libsrtp srtp_protect() through the function
 * pointer pylibsrtp exposes, on the same srtp_t, so sequence/ROC state stays
 * shared with the Python path), routing, RTCP and every decision about who
 * receives what (callsctl_sfu/calls/forwarder.py builds the target lists).
 *
 * Big fan-outs (PARALLEL_MIN_TARGETS receivers or more) can be split across a
 * small pool of native threads with the GIL released (start_pool(), the
 * server's --media-threads); fanout() still returns only when every copy is
 * sent. Why that needs no lock around libsrtp is explained at fanout() below.
 *
 * Python hands each receiver over as a `Target`, a type defined here with
 * named, checked fields (built once per receiver when its plan changes, read
 * per packet without any Python attribute lookup); anything else in the list
 * is refused with a TypeError naming its index and type.
 *
 * References: RTP header RFC 3550 §5.1; one-byte header extensions RFC 8285
 * §4.2; client-to-mixer audio level RFC 6464; SRTP RFC 3711 (libsrtp 2 API:
 * srtp_protect(ctx, buffer, &len) protects in place and appends the tag);
 * sendmmsg(2); pthreads (POSIX.1-2008: mutexes, condition variables).
 */
#include "_fanout.h"
#include "_pktinfo.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SLOT 2048               /* bytes per datagram buffer */
#define MAX_TRAILER 144         /* SRTP_MAX_TRAILER_LEN: tag + MKI */
#define OPUS_FRAME_TICKS 960    /* one 20 ms Opus frame at 48 kHz */

static srtp_fn srtp_protect_ptr = NULL;
static PyObject *key_component = NULL; /* the int 1: aioice's RTP component */

/* ---- Rewrite: how one receiver expects one forwarded stream --------------------- */

typedef struct {
    PyObject_HEAD
    unsigned int ssrc;
    unsigned int payload_type;
    int audio_level_id;       /* -1: the receiver did not negotiate RFC 6464 */
    int has_source;           /* 0: no packet forwarded yet */
    unsigned int source_ssrc;
    unsigned int seq_offset;
    unsigned int ts_offset;
    unsigned int last_seq;
    unsigned int last_ts;
    unsigned long long packets;
    unsigned long long octets;
} RewriteObject;

/* Header for one copy; returns its length. Advances stream state unless a retransmission. */
static Py_ssize_t
write_header(RewriteObject *self, unsigned char *out, int first_byte, int marker,
             unsigned int sequence, unsigned int timestamp, unsigned int source_ssrc,
             int level_byte, int retransmission, Py_ssize_t payload_len)
{
    unsigned int seq, ts;
    if (!retransmission) {
        if (!self->has_source || source_ssrc != self->source_ssrc) {
            if (self->has_source) {
                /* Continue where the old source stopped (one Opus frame later). */
                self->seq_offset = (self->last_seq + 1u - sequence) & 0xFFFFu;
                self->ts_offset = self->last_ts + OPUS_FRAME_TICKS - timestamp;
            }
            self->has_source = 1;
            self->source_ssrc = source_ssrc;
        }
    }
    seq = (sequence + self->seq_offset) & 0xFFFFu;
    ts = timestamp + self->ts_offset;
    if (!retransmission) {
        self->last_seq = seq;
        self->last_ts = ts;
        self->packets += 1;
        self->octets += (unsigned long long)payload_len;
    }
    int with_level = level_byte >= 0 && self->audio_level_id >= 0;
    out[0] = (unsigned char)(0x80 | (first_byte & 0x20) | (with_level ? 0x10 : 0));
    out[1] = (unsigned char)((marker ? 0x80 : 0) | (self->payload_type & 0x7F));
    out[2] = (unsigned char)(seq >> 8);
    out[3] = (unsigned char)seq;
    out[4] = (unsigned char)(ts >> 24);
    out[5] = (unsigned char)(ts >> 16);
    out[6] = (unsigned char)(ts >> 8);
    out[7] = (unsigned char)ts;
    out[8] = (unsigned char)(self->ssrc >> 24);
    out[9] = (unsigned char)(self->ssrc >> 16);
    out[10] = (unsigned char)(self->ssrc >> 8);
    out[11] = (unsigned char)self->ssrc;
    if (!with_level)
        return 12;
    out[12] = 0xBE;
    out[13] = 0xDE;
    out[14] = 0x00;
    out[15] = 0x01;
    out[16] = (unsigned char)((self->audio_level_id & 0x0F) << 4);
    out[17] = (unsigned char)level_byte;
    out[18] = 0;
    out[19] = 0;
    return 20;
}

static int
optional_int(PyObject *value, int *out, const char *name)
{
    if (value == NULL || value == Py_None) {
        *out = -1;
        return 0;
    }
    long v = PyLong_AsLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 255) {
        PyErr_Format(PyExc_ValueError, "%s must be 0..255 or None", name);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static PyObject *
Rewrite_get_level(RewriteObject *self, void *closure)
{
    if (self->audio_level_id < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->audio_level_id);
}

static int
Rewrite_set_level(RewriteObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete audio_level_id");
        return -1;
    }
    return optional_int(value, &self->audio_level_id, "audio_level_id");
}

static PyObject *
Rewrite_get_source(RewriteObject *self, void *closure)
{
    if (!self->has_source)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(self->source_ssrc);
}

static int
Rewrite_set_source(RewriteObject *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        self->has_source = 0;
        return 0;
    }
    unsigned long v = PyLong_AsUnsignedLong(value);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    self->has_source = 1;
    self->source_ssrc = (unsigned int)v;
    return 0;
}

static int
Rewrite_init(RewriteObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ssrc", "payload_type", "audio_level_id", "source_ssrc",
                             "seq_offset", "ts_offset", "last_seq", "last_ts", "packets",
                             "octets", NULL};
    unsigned int ssrc = 0, payload_type = 0;
    PyObject *level = Py_None, *source = Py_None;
    unsigned int seq_offset = 0, ts_offset = 0, last_seq = 0, last_ts = 0;
    unsigned long long packets = 0, octets = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "II|OOIIIIKK", kwlist, &ssrc, &payload_type,
                                     &level, &source, &seq_offset, &ts_offset, &last_seq,
                                     &last_ts, &packets, &octets))
        return -1;
    if (optional_int(level, &self->audio_level_id, "audio_level_id") < 0)
        return -1;
    if (Rewrite_set_source(self, source, NULL) < 0)
        return -1;
    self->ssrc = ssrc;
    self->payload_type = payload_type;
    self->seq_offset = seq_offset;
    self->ts_offset = ts_offset;
    self->last_seq = last_seq;
    self->last_ts = last_ts;
    self->packets = packets;
    self->octets = octets;
    return 0;
}

static int
get_uint_attr(PyObject *obj, const char *name, unsigned int *out)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == NULL)
        return -1;
    unsigned long v = PyLong_AsUnsignedLongMask(value);
    Py_DECREF(value);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    *out = (unsigned int)v;
    return 0;
}

/* Rewrite.build(packet, level_byte, retransmission=False) -> bytes (the Python path's API). */
static PyObject *
Rewrite_build(RewriteObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"packet", "level_byte", "retransmission", NULL};
    PyObject *packet, *level_obj;
    int retransmission = 0, level_byte;
    unsigned int first_byte, sequence, timestamp, ssrc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|p", kwlist, &packet, &level_obj,
                                     &retransmission))
        return NULL;
    if (optional_int(level_obj, &level_byte, "level_byte") < 0)
        return NULL;
    if (get_uint_attr(packet, "first_byte", &first_byte) < 0 ||
        get_uint_attr(packet, "sequence", &sequence) < 0 ||
        get_uint_attr(packet, "timestamp", &timestamp) < 0 ||
        get_uint_attr(packet, "ssrc", &ssrc) < 0)
        return NULL;
    PyObject *marker_obj = PyObject_GetAttrString(packet, "marker");
    if (marker_obj == NULL)
        return NULL;
    int marker = PyObject_IsTrue(marker_obj);
    Py_DECREF(marker_obj);
    if (marker < 0)
        return NULL;
    PyObject *payload_obj = PyObject_GetAttrString(packet, "payload");
    if (payload_obj == NULL)
        return NULL;
    Py_buffer payload;
    if (PyObject_GetBuffer(payload_obj, &payload, PyBUF_SIMPLE) < 0) {
        Py_DECREF(payload_obj);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, MAX_HEADER + payload.len);
    if (out != NULL) {
        unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(out);
        /* The reader thread may be writing this Rewrite with the GIL released. */
        media_lock_with_gil();
        Py_ssize_t header = write_header(self, buf, (int)first_byte, marker, sequence,
                                         timestamp, ssrc, level_byte, retransmission,
                                         payload.len);
        media_unlock();
        memcpy(buf + header, payload.buf, (size_t)payload.len);
        if (_PyBytes_Resize(&out, header + payload.len) < 0)
            out = NULL;
    }
    PyBuffer_Release(&payload);
    Py_DECREF(payload_obj);
    return out;
}

static PyObject *
Rewrite_repr(RewriteObject *self)
{
    return PyUnicode_FromFormat("Rewrite(ssrc=%u, payload_type=%u, packets=%llu)", self->ssrc,
                                self->payload_type, self->packets);
}

static PyMemberDef Rewrite_members[] = {
    {"ssrc", T_UINT, offsetof(RewriteObject, ssrc), 0, "SSRC the receiver knows this stream by"},
    {"payload_type", T_UINT, offsetof(RewriteObject, payload_type), 0,
     "payload type the receiver negotiated"},
    {"seq_offset", T_UINT, offsetof(RewriteObject, seq_offset), 0, "added to sequence numbers"},
    {"ts_offset", T_UINT, offsetof(RewriteObject, ts_offset), 0, "added to RTP timestamps"},
    {"last_seq", T_UINT, offsetof(RewriteObject, last_seq), 0, "last sequence number sent"},
    {"last_ts", T_UINT, offsetof(RewriteObject, last_ts), 0, "last timestamp sent"},
    {"packets", T_ULONGLONG, offsetof(RewriteObject, packets), 0, "packets forwarded"},
    {"octets", T_ULONGLONG, offsetof(RewriteObject, octets), 0, "payload octets forwarded"},
    {NULL}
};

static PyGetSetDef Rewrite_getset[] = {
    {"audio_level_id", (getter)Rewrite_get_level, (setter)Rewrite_set_level,
     "RFC 6464 extension id the receiver negotiated, or None", NULL},
    {"source_ssrc", (getter)Rewrite_get_source, (setter)Rewrite_set_source,
     "publisher SSRC the offsets were computed for, or None", NULL},
    {NULL}
};

static PyMethodDef Rewrite_methods[] = {
    {"build", (PyCFunction)(void (*)(void))Rewrite_build, METH_VARARGS | METH_KEYWORDS,
     "build(packet, level_byte, retransmission=False) -> bytes: the copy this receiver gets."},
    {NULL}
};

static PyTypeObject RewriteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.Rewrite",
    .tp_doc = "How one receiver expects one forwarded stream (C twin of rtp.PyRewrite).",
    .tp_basicsize = sizeof(RewriteObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rewrite_init,
    .tp_repr = (reprfunc)Rewrite_repr,
    .tp_members = Rewrite_members,
    .tp_getset = Rewrite_getset,
    .tp_methods = Rewrite_methods,
};

/* ---- Target: one receiver of the fan-out ------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *rewrite;          /* a Rewrite: this receiver's header state */
    PyObject *srtp_session;     /* pylibsrtp Session owning `ctx`, or a SrtpSealer */
    void *ctx;                  /* its srtp_t, or the SrtpSealer itself */
    srtp_fn protect;            /* NULL: libsrtp's srtp_protect; else sealer_protect */
    struct sockaddr_in sockaddr;
    PyObject *addr;             /* (host, port), for datagrams handed back to asyncio */
    PyObject *nominated;        /* aioice's live nominated-pair dict */
    PyObject *pair;             /* the pair `sockaddr` was taken from */
    struct in_addr source;      /* the address copies are sent from (IP_PKTINFO) */
    int has_source;             /* 0: the kernel picks it (no control message) */
} TargetObject;

static PyObject *
Target_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"rewrite", "srtp_session", "context", "addr", "nominated", "pair",
                             "source", NULL};
    PyObject *rewrite, *session, *context, *addr, *nominated, *pair;
    const char *source_text = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|$z:Target", kwlist, &rewrite,
                                     &session, &context, &addr, &nominated, &pair,
                                     &source_text))
        return NULL;
    struct in_addr source = {0};
    if (source_text != NULL && !parse_source(source_text, &source)) {
        PyErr_Format(PyExc_ValueError, "Target: source must be an IPv4 address, not %.100s",
                     source_text);
        return NULL;
    }
    if (!PyObject_TypeCheck(rewrite, &RewriteType)) {
        PyErr_Format(PyExc_TypeError, "Target: rewrite must be a _fanout.Rewrite, not %.100s",
                     Py_TYPE(rewrite)->tp_name);
        return NULL;
    }
    void *ctx;
    srtp_fn protect = NULL;
    if (PyObject_TypeCheck(session, &SealerType)) {
        /* The receiver's SRTP sender of this module (_srtpseal.c): `context` is not used. */
        ctx = session;
        protect = sealer_protect;
    } else {
        if (!PyLong_Check(context)) {
            PyErr_Format(PyExc_TypeError, "Target: context must be the srtp_t address as an "
                         "int, not %.100s", Py_TYPE(context)->tp_name);
            return NULL;
        }
        ctx = PyLong_AsVoidPtr(context);
        if (ctx == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "Target: null SRTP context");
            return NULL;
        }
    }
    if (!PyDict_Check(nominated)) {
        PyErr_Format(PyExc_TypeError, "Target: nominated must be aioice's nominated-pair dict, "
                     "not %.100s", Py_TYPE(nominated)->tp_name);
        return NULL;
    }
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) != 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(addr, 0)) || !PyLong_Check(PyTuple_GET_ITEM(addr, 1))) {
        PyErr_SetString(PyExc_TypeError, "Target: addr must be a (host, port) tuple");
        return NULL;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (host == NULL)
        return NULL;
    long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred())
        return NULL;
    struct sockaddr_in sockaddr;
    memset(&sockaddr, 0, sizeof(sockaddr));
    sockaddr.sin_family = AF_INET;
    if (port < 0 || port > 65535 || inet_pton(AF_INET, host, &sockaddr.sin_addr) != 1) {
        PyErr_Format(PyExc_ValueError, "Target: addr must be an IPv4 address and a port "
                     "0..65535, not (%.100s, %ld)", host, port);
        return NULL;
    }
    sockaddr.sin_port = htons((uint16_t)port);
    TargetObject *self = (TargetObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->rewrite = Py_NewRef(rewrite);
    self->srtp_session = Py_NewRef(session);
    self->ctx = ctx;
    self->protect = protect;
    self->sockaddr = sockaddr;
    self->addr = Py_NewRef(addr);
    self->nominated = Py_NewRef(nominated);
    self->pair = Py_NewRef(pair);
    self->source = source;
    self->has_source = source_text != NULL;
    return (PyObject *)self;
}

static int
Target_traverse(TargetObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->rewrite);
    Py_VISIT(self->srtp_session);
    Py_VISIT(self->addr);
    Py_VISIT(self->nominated);
    Py_VISIT(self->pair);
    return 0;
}

static int
Target_clear(TargetObject *self)
{
    Py_CLEAR(self->rewrite);
    Py_CLEAR(self->srtp_session);
    Py_CLEAR(self->addr);
    Py_CLEAR(self->nominated);
    Py_CLEAR(self->pair);
    return 0;
}

static void
Target_dealloc(TargetObject *self)
{
    PyObject_GC_UnTrack(self);
    Target_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Target_get_context(TargetObject *self, void *closure)
{
    return PyLong_FromVoidPtr(self->ctx);
}

static PyObject *
Target_get_source(TargetObject *self, void *closure)
{
    if (!self->has_source)
        Py_RETURN_NONE;
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &self->source, text, sizeof(text));
    return PyUnicode_FromString(text);
}

static PyObject *
Target_repr(TargetObject *self)
{
    return PyUnicode_FromFormat("Target(addr=%R, rewrite=%R)", self->addr ? self->addr : Py_None,
                                self->rewrite ? self->rewrite : Py_None);
}

static PyMemberDef Target_members[] = {
    {"rewrite", T_OBJECT_EX, offsetof(TargetObject, rewrite), READONLY,
     "the receiver's Rewrite"},
    {"srtp_session", T_OBJECT_EX, offsetof(TargetObject, srtp_session), READONLY,
     "the pylibsrtp Session whose srtp_t copies are protected with"},
    {"addr", T_OBJECT_EX, offsetof(TargetObject, addr), READONLY, "(host, port) sent to"},
    {"nominated", T_OBJECT_EX, offsetof(TargetObject, nominated), READONLY,
     "aioice's nominated-pair dict, checked on every packet"},
    {"pair", T_OBJECT_EX, offsetof(TargetObject, pair), READONLY,
     "the nominated pair the address was taken from"},
    {NULL}
};

static PyGetSetDef Target_getset[] = {
    {"context", (getter)Target_get_context, NULL,
     "address of the srtp_t (or of the SrtpSealer that protects instead)", NULL},
    {"source", (getter)Target_get_source, NULL,
     "the local address copies are sent from (IP_PKTINFO), or None: the kernel's choice",
     NULL},
    {NULL}
};

static PyTypeObject TargetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.Target",
    .tp_doc = "Target(rewrite, srtp_session, context, addr, nominated, pair, *, source=None): "
              "one receiver of fanout(), checked once when built (IPv4 addr, Rewrite, non-null "
              "context); source: the local IPv4 address its copies are sent from.",
    .tp_basicsize = sizeof(TargetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Target_new,
    .tp_dealloc = (destructor)Target_dealloc,
    .tp_traverse = (traverseproc)Target_traverse,
    .tp_clear = (inquiry)Target_clear,
    .tp_repr = (reprfunc)Target_repr,
    .tp_members = Target_members,
    .tp_getset = Target_getset,
};

/* ---- fanout ---------------------------------------------------------------------- */

/*
 * One fanout() call runs in three phases:
 *
 *   1. prepare (GIL held): check every target's type, compare its nominated pair
 *      with aioice's live dict (stale ones are only reported), and copy what the
 *      copies need into a plain C array of `Copy` items (Rewrite state, srtp_t,
 *      sockaddr, the target's index), taking a reference on each Target so that
 *      nothing it owns can be freed while the GIL is released;
 *   2. send (no Python object touched): header rewrite, srtp_protect and
 *      sendmmsg batches of BATCH, over one contiguous slice of the items per
 *      thread; a datagram the kernel will not take now is copied aside in C;
 *   3. aggregate (GIL held): sum the slices' counters and turn the copied-aside
 *      datagrams into (bytes, addr) for asyncio's queue, in target order.
 *
 * Small fan-outs (fewer than PARALLEL_MIN_TARGETS sendable targets) and a pool
 * of one thread run phase 2 on the calling thread without releasing the GIL, in
 * the static buffers below: that is the single-core behaviour.
 *
 * Big fan-outs with a pool (start_pool(n), n > 1) release the GIL for phase 2,
 * split the items into contiguous slices, run the first slice on the calling
 * thread and the others on the pool's workers, each with its own buffers, and
 * wait for all of them. Why this is safe without any lock around libsrtp or the
 * Rewrite objects:
 *   - each receiver appears once in a fan-out list (the forwarder builds one
 *     Target per receiver of a track), so each srtp_t and each Rewrite is in
 *     exactly one slice and written by one thread; libsrtp keeps no shared
 *     mutable state between contexts once initialised;
 *   - nothing else touches those contexts meanwhile: every other user of an
 *     srtp_t or a Rewrite holds the media lock (_ingress.c) as the caller does:
 *     the event loop's fanout() and Rewrite.build(), pylibsrtp's calls (NACK
 *     retransmissions, RTCP, the Python send path; wrapped by fastpath.py) and
 *     the ingress's reader thread for each read;
 *   - every send goes out of the one media socket `fd`: sendmmsg(2) from several
 *     threads on one UDP socket is safe (each call queues whole datagrams), so
 *     the server keeps its one UDP port.
 * Workers sleep on a condition variable between fan-outs (no spinning: an idle
 * server uses no CPU for them) and only ever run plain C.
 */

#define PARALLEL_MIN_TARGETS 64 /* fewer sendable targets: no hand-off to the pool */
#define MIN_SLICE 32            /* a slice has at least this many copies */
#define MAX_SLICES 64           /* a fan-out is cut into at most this many slices */
#define SLICES_PER_THREAD 4     /* slices per pool thread in a big fan-out */
#define MAX_THREADS 64          /* start_pool's upper bound */
#define LOCAL_COPIES 64         /* items kept on the stack before falling back to malloc */

static PyTypeObject *FanoutResultType = NULL;

static PyStructSequence_Field result_fields[] = {
    {"sent", "copies sent or queued"},
    {"plain_octets", "octets before SRTP protect"},
    {"wire_octets", "octets on the wire"},
    {"send_errors", "datagrams the kernel refused"},
    {"srtp_errors", "copies srtp_protect failed on"},
    {"stale", "indexes of targets whose nominated pair changed, or None"},
    {"unsent", "(bytes, addr) the kernel would not take now, or None"},
    {NULL}
};

static PyStructSequence_Desc result_desc = {
    "callsctl_sfu.rtc._fanout.FanoutResult", "What one fanout() call did.", result_fields, 7,
};

/* One copy to send: what phase 2 needs of a Target, with no Python access. */
typedef struct {
    TargetObject *target;       /* a reference held for the whole call */
    RewriteObject *rewrite;
    void *ctx;
    srtp_fn protect;            /* NULL: libsrtp's srtp_protect */
    const struct sockaddr_in *sockaddr;
    const struct in_addr *source; /* NULL: the kernel picks the source address */
    Py_ssize_t index;           /* the target's position in the caller's list */
} Copy;


/* A datagram the kernel would not take now, copied aside until the GIL is back. */
typedef struct {
    const Copy *copy;           /* whose datagram: its Target gives the address tuple */
    size_t offset;              /* into Slice.deferred_data */
    size_t length;
} Deferred;

/* One thread's share of a fan-out: its items in, its counters and deferrals out. */
typedef struct {
    const Copy *copies;
    Py_ssize_t count;
    Py_ssize_t sent;
    Py_ssize_t send_errors;
    Py_ssize_t srtp_errors;
    unsigned long long plain_octets;
    unsigned long long wire_octets;
    int blocked;                /* the kernel's buffer filled: the rest is deferred */
    Deferred *deferred;
    Py_ssize_t deferred_count;
    Py_ssize_t deferred_cap;
    unsigned char *deferred_data;
    size_t data_used;
    size_t data_cap;
} Slice;

/* Per-thread datagram buffers for one sendmmsg batch. */
typedef struct {
    unsigned char slots[BATCH][SLOT];
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    SourceControl control[BATCH];
    Py_ssize_t plain_len[BATCH];
    Py_ssize_t item[BATCH];     /* which Copy each slot holds */
} Buffers;

/* Every fan-out runs under the media lock (_ingress.c), so the srtp_t contexts,
   Rewrites and these buffers keep one user at a time whether the GIL is held or not. */
static unsigned long long parallel_runs = 0; /* fan-outs split across the pool */
static Buffers gil_buffers;      /* the calling thread's path: used under the media lock */
static Buffers caller_buffers;   /* the calling thread's slice: used under pool.dispatch only */

static int
defer(Slice *slice, const Buffers *b, int slot)
{
    size_t length = b->vectors[slot].iov_len;
    if (slice->deferred_count == slice->deferred_cap) {
        Py_ssize_t cap = slice->deferred_cap ? slice->deferred_cap * 2 : 64;
        Deferred *grown = realloc(slice->deferred, (size_t)cap * sizeof(Deferred));
        if (grown == NULL)
            return -1;
        slice->deferred = grown;
        slice->deferred_cap = cap;
    }
    if (slice->data_used + length > slice->data_cap) {
        size_t cap = slice->data_cap ? slice->data_cap * 2 : (size_t)BATCH * SLOT;
        while (cap < slice->data_used + length)
            cap *= 2;
        unsigned char *grown = realloc(slice->deferred_data, cap);
        if (grown == NULL)
            return -1;
        slice->deferred_data = grown;
        slice->data_cap = cap;
    }
    memcpy(slice->deferred_data + slice->data_used, b->slots[slot], length);
    Deferred *d = &slice->deferred[slice->deferred_count++];
    d->copy = &slice->copies[b->item[slot]];
    d->offset = slice->data_used;
    d->length = length;
    slice->data_used += length;
    return 0;
}

/* Send slots [0, count) with sendmmsg; what the kernel will not take now is deferred. */
static void
flush(Slice *slice, Buffers *b, int fd, int count)
{
    int offset = 0;
    while (offset < count && !slice->blocked) {
        int n = sendmmsg(fd, b->messages + offset, (unsigned int)(count - offset), 0);
        if (n > 0) {
            for (int i = offset; i < offset + n; i++) {
                slice->sent += 1;
                slice->plain_octets += (unsigned long long)b->plain_len[i];
                slice->wire_octets += b->vectors[i].iov_len;
            }
            offset += n;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            slice->blocked = 1;
        } else {
            slice->send_errors += 1; /* this datagram only (EPERM from a firewall, ...) */
            offset += 1;
        }
    }
    for (int i = offset; i < count; i++) {
        if (defer(slice, b, i) < 0) {
            slice->send_errors += 1; /* no memory to keep it: lost like a refused one */
            continue;
        }
        slice->sent += 1;
        slice->plain_octets += (unsigned long long)b->plain_len[i];
        slice->wire_octets += b->vectors[i].iov_len;
    }
}

/* Phase 2 for one slice: plain C only, safe without the GIL (see above). */
static void
run_slice(const Packet *p, Slice *slice, Buffers *b)
{
    int filled = 0;
    for (Py_ssize_t i = 0; i < slice->count; i++) {
        const Copy *copy = &slice->copies[i];
        unsigned char *slot = b->slots[filled];
        Py_ssize_t header = write_header(copy->rewrite, slot, p->first_byte, p->marker,
                                         p->sequence, p->timestamp, p->ssrc, p->level_byte,
                                         0, p->payload_len);
        memcpy(slot + header, p->payload, (size_t)p->payload_len);
        int length = (int)(header + p->payload_len);
        b->plain_len[filled] = length;
        srtp_fn protect = copy->protect != NULL ? copy->protect : srtp_protect_ptr;
        if (protect(copy->ctx, slot, &length) != 0) {
            slice->srtp_errors += 1;
            continue;
        }
        b->vectors[filled].iov_base = slot;
        b->vectors[filled].iov_len = (size_t)length;
        memset(&b->messages[filled], 0, sizeof(struct mmsghdr));
        b->messages[filled].msg_hdr.msg_name = (void *)copy->sockaddr;
        b->messages[filled].msg_hdr.msg_namelen = (socklen_t)sizeof(struct sockaddr_in);
        b->messages[filled].msg_hdr.msg_iov = &b->vectors[filled];
        b->messages[filled].msg_hdr.msg_iovlen = 1;
        if (copy->source != NULL)
            set_source(&b->messages[filled].msg_hdr, &b->control[filled], copy->source);
        b->item[filled] = i;
        filled += 1;
        if (filled == BATCH) {
            flush(slice, b, p->fd, filled);
            filled = 0;
        }
    }
    if (filled)
        flush(slice, b, p->fd, filled);
}

/* ---- The worker pool -------------------------------------------------------------- */

typedef struct {
    pthread_t thread;
    int number;                 /* 1..threads-1: runs slice `number` of a job */
    unsigned long created_at;   /* pool.generation when started (under pool.dispatch) */
    Buffers *buffers;
} Worker;

static struct {
    int threads;                /* 1: no pool, every fan-out on the calling thread */
    Worker *workers;            /* threads - 1 of them */
    /* Held by whoever uses the pool or caller_buffers (a fan-out, start, shutdown),
       always with the GIL released, so a second Python thread waits here, not in it. */
    pthread_mutex_t dispatch;
    pthread_mutex_t lock;       /* guards the job fields below */
    pthread_cond_t work;        /* workers wait here for a new generation or stop */
    pthread_cond_t done;        /* the caller waits here for pending == 0 */
    unsigned long generation;
    int stop;
    int pending;
    /* The current job: part `number` of it runs on worker `number` (part 0: the caller). */
    void (*task)(void *arg, int number, Buffers *buffers);
    void *arg;
    int parts;
} pool = {
    .threads = 1,
    .dispatch = PTHREAD_MUTEX_INITIALIZER,
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .work = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};

static void *
worker_main(void *arg)
{
    Worker *self = (Worker *)arg;
    /* The generation when the worker was created, not when it first runs: a job posted
       before this thread got the CPU must still be seen as new. */
    unsigned long seen = self->created_at;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.stop && pool.generation == seen)
            pthread_cond_wait(&pool.work, &pool.lock);
        if (pool.stop)
            break;
        seen = pool.generation;
        if (self->number >= pool.parts)
            continue; /* a small job: not needed this time */
        void (*task)(void *, int, Buffers *) = pool.task;
        void *task_arg = pool.arg;
        pthread_mutex_unlock(&pool.lock);
        task(task_arg, self->number, self->buffers);
        pthread_mutex_lock(&pool.lock);
        if (--pool.pending == 0)
            pthread_cond_signal(&pool.done);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* Stop and join every worker; called with pool.dispatch held and the GIL released. */
static void
pool_stop_locked(void)
{
    if (pool.workers == NULL)
        return;
    pthread_mutex_lock(&pool.lock);
    pool.stop = 1;
    pthread_cond_broadcast(&pool.work);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.threads - 1; i++) {
        pthread_join(pool.workers[i].thread, NULL);
        free(pool.workers[i].buffers);
    }
    free(pool.workers);
    pool.workers = NULL;
    pool.threads = 1;
    pool.stop = 0;
}

/* Start `threads - 1` workers; pool.dispatch held, no workers running. 0 or errno. */
static int
pool_start_locked(int threads)
{
    if (threads <= 1)
        return 0;
    Worker *workers = calloc((size_t)threads - 1, sizeof(Worker));
    if (workers == NULL)
        return ENOMEM;
    /* Workers never run Python: keep every signal for the interpreter's main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int started = 0, rc = 0;
    pool.workers = workers;
    for (; started < threads - 1; started++) {
        workers[started].number = started + 1;
        workers[started].created_at = pool.generation;
        workers[started].buffers = malloc(sizeof(Buffers));
        if (workers[started].buffers == NULL) {
            rc = ENOMEM;
            break;
        }
        rc = pthread_create(&workers[started].thread, NULL, worker_main, &workers[started]);
        if (rc != 0) {
            free(workers[started].buffers);
            break;
        }
        /* Named here, not by the thread, so the name is there when this returns: for
           `top -H`, perf and /proc/PID/task/TID/comm (15 characters at most). */
        (void)pthread_setname_np(workers[started].thread, "callsctl-fanout");
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pool.threads = started + 1;
    if (rc != 0)
        pool_stop_locked();
    return rc;
}

/* A forked child has none of the parent's workers: it starts single-threaded. */
static void
pool_after_fork_in_child(void)
{
    pthread_mutex_init(&pool.dispatch, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.work, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = NULL; /* their buffers leak in the child: it usually execs at once */
    pool.threads = 1;
    pool.stop = 0;
    pool.pending = 0;
    pool.parts = 0;
}

/* Run parts 0..parts-1 of a task, part 0 on this thread and part k on worker k; returns
   when all are done. pool.dispatch held and the GIL released by the caller. */
static void
pool_run_locked(void (*task)(void *, int, Buffers *), void *arg, int parts)
{
    if (parts > 1) {
        pthread_mutex_lock(&pool.lock);
        pool.task = task;
        pool.arg = arg;
        pool.parts = parts;
        pool.pending = parts - 1;
        pool.generation += 1;
        pthread_cond_broadcast(&pool.work);
        pthread_mutex_unlock(&pool.lock);
    }
    task(arg, 0, &caller_buffers);
    if (parts > 1) {
        pthread_mutex_lock(&pool.lock);
        while (pool.pending > 0)
            pthread_cond_wait(&pool.done, &pool.lock);
        pool.task = NULL;
        pool.arg = NULL;
        pool.parts = 0;
        pthread_mutex_unlock(&pool.lock);
    }
}

typedef struct {
    const Packet *packet;
    Slice *slices;
    int count;
    int next;                   /* the next slice to take (atomic) */
} SliceTask;

/* Every part takes the next slice not yet taken until none is left: a thread that gets
   the CPU late (the machine is shared with the load, the event loop) or is preempted
   between slices leaves its share to the others instead of making the caller wait. */
static void
run_slice_part(void *arg, int number, Buffers *buffers)
{
    SliceTask *task = (SliceTask *)arg;
    for (;;) {
        int taken = __atomic_fetch_add(&task->next, 1, __ATOMIC_RELAXED);
        if (taken >= task->count)
            break;
        run_slice(task->packet, &task->slices[taken], buffers);
    }
}

/* Phase 2 over `count` copies on the pool; GIL released by the caller, media lock held.
   The copies are cut into contiguous slices of at least MIN_SLICE (at most `cap`
   slices), taken in turn by the calling thread and the workers, so a slow thread delays
   only the slice it holds; *slice_count says how many slices the results are in. */
static void
run_parallel(const Packet *p, const Copy *copies, Py_ssize_t count, Slice *slices, int cap,
             int *slice_count)
{
    Py_ssize_t wanted = count / MIN_SLICE;
    int n = wanted < cap ? (int)(wanted > 0 ? wanted : 1) : cap;
    Py_ssize_t base = count / n, extra = count % n, start = 0;
    for (int i = 0; i < n; i++) {
        Py_ssize_t size = base + (i < extra ? 1 : 0);
        slices[i].copies = copies + start;
        slices[i].count = size;
        start += size;
    }
    *slice_count = n;
    SliceTask task = {p, slices, n, 0};
    pthread_mutex_lock(&pool.dispatch);
    int parts = pool.threads < n ? pool.threads : n;
    pool_run_locked(run_slice_part, &task, parts);
    pthread_mutex_unlock(&pool.dispatch);
}

/* How many slices one packet's `count` copies are cut into: 1 (no hand-off to the pool)
   below PARALLEL_MIN_TARGETS or without a pool; else SLICES_PER_THREAD per thread, so a
   late thread's share is taken by the others, but no smaller than MIN_SLICE copies
   (each slice is at least one sendmmsg). */
static int
slice_cap_for(Py_ssize_t count)
{
    if (count < PARALLEL_MIN_TARGETS || pool.threads <= 1)
        return 1;
    Py_ssize_t n = count / MIN_SLICE, most = (Py_ssize_t)pool.threads * SLICES_PER_THREAD;
    if (most > MAX_SLICES)
        most = MAX_SLICES;
    return n > most ? (int)most : (int)n;
}

/* Phase 2 of one packet's fan-out, media lock held: in up to `cap` slices on the pool
   (the GIL released by the caller) when cap > 1, else as one slice on this thread. */
static void
send_copies(const Packet *p, const Copy *copies, Py_ssize_t count, Slice *slices, int cap,
            int *slice_count)
{
    if (cap > 1) {
        run_parallel(p, copies, count, slices, cap, slice_count);
        parallel_runs += *slice_count > 1;
        return;
    }
    slices[0].copies = copies;
    slices[0].count = count;
    *slice_count = 1;
    run_slice(p, &slices[0], &gil_buffers);
}

/* ---- fanout() --------------------------------------------------------------------- */

PyDoc_STRVAR(fanout_doc,
"fanout(fd, first_byte, marker, sequence, timestamp, ssrc, payload, level_byte, targets)\n"
"-> FanoutResult(sent, plain_octets, wire_octets, send_errors, srtp_errors, stale, unsent)\n\n"
"One decrypted RTP packet to every target: a list of Target (anything else is a\n"
"TypeError, and nothing is sent). A target whose nominated pair changed is\n"
"left alone and its index returned in `stale` (the caller sends it the slow way and\n"
"rebuilds its targets). Datagrams the kernel would not take (socket buffer full) come\n"
"back in `unsent` as (bytes, addr) for asyncio's write queue. level_byte < 0: none.\n"
"With a pool (start_pool) and at least PARALLEL_MIN_TARGETS sendable targets, the\n"
"copies are made on several threads with the GIL released; the call still returns\n"
"only when every copy is sent or deferred, with the same result.");

/*
 * Phase 1 for one target list, with the GIL: check each item, and copy into `copies`
 * what phase 2 needs of every one whose nominated pair is still current, with a
 * reference on its Target until the caller releases it (its srtp_t, Rewrite and
 * address outlive phase 2 even if another Python thread empties the list while the
 * GIL is released). The indexes of the others go to *stale (created on first use).
 * 0, or -1 with an exception set (anything but a Target is a TypeError).
 */
/* 1 when the receiver still uses the pair `target` was made from (its client did not
   renominate), 0 when it does not, -1 with an exception set. The target is live. */
static int
pair_current(const TargetObject *target)
{
    PyObject *current = PyDict_GetItemWithError(target->nominated, key_component);
    if (current == NULL && PyErr_Occurred())
        return -1;
    return current == target->pair;
}

/* What phase 2 needs of `target` (at `index` in its list), with a new reference on it. */
static void
fill_copy(Copy *copy, TargetObject *target, Py_ssize_t index)
{
    copy->target = (TargetObject *)Py_NewRef((PyObject *)target);
    copy->rewrite = (RewriteObject *)target->rewrite;
    copy->ctx = target->ctx;
    copy->protect = target->protect;
    copy->sockaddr = &target->sockaddr;
    copy->source = target->has_source ? &target->source : NULL;
    copy->index = index;
}

static int
copy_targets(PyObject *targets, Copy *copies, Py_ssize_t *count, PyObject **stale)
{
    Py_ssize_t total = PyList_GET_SIZE(targets);
    *count = 0;
    for (Py_ssize_t t = 0; t < total; t++) {
        PyObject *item = PyList_GET_ITEM(targets, t);
        if (!Py_IS_TYPE(item, &TargetType)) {
            PyErr_Format(PyExc_TypeError, "fanout: targets[%zd] is a %.100s, not a "
                         "_fanout.Target (build receivers with fastpath.Target)", t,
                         Py_TYPE(item)->tp_name);
            return -1;
        }
        TargetObject *target = (TargetObject *)item;
        if (target->nominated == NULL || target->rewrite == NULL) {
            PyErr_Format(PyExc_TypeError, "fanout: targets[%zd] was cleared", t);
            return -1;
        }
        int current = pair_current(target);
        if (current < 0)
            return -1;
        if (!current) {
            PyObject *index = PyLong_FromSsize_t(t);
            if (index == NULL || (*stale == NULL && (*stale = PyList_New(0)) == NULL) ||
                PyList_Append(*stale, index) < 0) {
                Py_XDECREF(index);
                return -1;
            }
            Py_DECREF(index);
            continue;
        }
        fill_copy(&copies[(*count)++], target, t);
    }
    return 0;
}

/* ---- A plan's copies laid out once (the C ingress's routes) ------------------------------
 *
 * Why: a route's fan-out used to start each packet by walking its list of Targets twice
 * with the GIL held: a freshness check (the receiver's nominated pair looked up in aioice's
 * dict) and copy_targets (the same lookup again, a reference taken, a Copy written into an
 * array allocated for that packet). At 1 x 500 those dict lookups alone were 7.8 % of the
 * server's CPU (bench/RESULTS.md, "A plan's copies laid out once"), and all of it ran with
 * the GIL, where no other core can help. A route's list changes at join rate, its packets
 * arrive at 50 a second per speaker: so the Copy array is built when Python hands the route
 * its list (InRoute.targets), kept with a reference on every Target, and used by every
 * packet as it is.
 *
 * Freshness (a receiver that renominated must not be sent to at its old address) is then
 * checked once per change of any nominated pair, not per packet: fastpath.NominatedPairs,
 * the dict aioice's connections keep their nominated pairs in once the server bound them
 * (aiortc_bridge.nominated_pairs), calls nominations_changed() after every change, which
 * moves `nomination_epoch`; a plan whose Targets all use such dicts and were all fresh at
 * the current epoch needs no look-up. A Target with any other dict is checked per packet,
 * as before.
 */

static unsigned long long nomination_epoch = 1; /* moved by nominations_changed() */
static unsigned long long plan_walks = 0;       /* fanout_compiled_fresh's look-ups of a plan */
static PyTypeObject *watched_dict_type = NULL;   /* fastpath.NominatedPairs, once registered */

typedef struct {
    PyObject_HEAD
    PyObject *source;           /* the list of Target it was made from */
    Copy *copies;               /* one per Target, each holding a reference on it */
    Py_ssize_t count;
    int watched;                /* every Target's nominated dict reports its changes */
    unsigned long long fresh_epoch; /* the epoch all were last found fresh at; 0: never */
} CompiledObject;

static int
Compiled_traverse(CompiledObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->source);
    for (Py_ssize_t i = 0; i < self->count; i++)
        Py_VISIT(self->copies[i].target);
    return 0;
}

static int
Compiled_clear(CompiledObject *self)
{
    Py_ssize_t count = self->count;
    self->count = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        Py_CLEAR(self->copies[i].target);
    PyMem_Free(self->copies);
    self->copies = NULL;
    Py_CLEAR(self->source);
    return 0;
}

static void
Compiled_dealloc(CompiledObject *self)
{
    PyObject_GC_UnTrack(self);
    Compiled_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CompiledType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.CompiledTargets",
    .tp_doc = "A route's Targets as the fan-out's Copy array (made by InRoute.targets).",
    .tp_basicsize = sizeof(CompiledObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)Compiled_dealloc,
    .tp_traverse = (traverseproc)Compiled_traverse,
    .tp_clear = (inquiry)Compiled_clear,
};

PyObject *
fanout_compile(PyObject *targets)
{
    if (!PyList_Check(targets)) {
        PyErr_Format(PyExc_TypeError, "fanout_compile: a list of Target, not %.100s",
                     Py_TYPE(targets)->tp_name);
        return NULL;
    }
    Py_ssize_t total = PyList_GET_SIZE(targets);
    for (Py_ssize_t t = 0; t < total; t++) {
        PyObject *item = PyList_GET_ITEM(targets, t);
        if (!Py_IS_TYPE(item, &TargetType) || ((TargetObject *)item)->nominated == NULL ||
            ((TargetObject *)item)->rewrite == NULL) {
            PyErr_Format(PyExc_TypeError, "fanout_compile: targets[%zd] is not a live Target", t);
            return NULL;
        }
    }
    CompiledObject *self = PyObject_GC_New(CompiledObject, &CompiledType);
    if (self == NULL)
        return NULL;
    self->source = Py_NewRef(targets);
    self->count = 0;
    self->watched = 1;
    self->fresh_epoch = 0;
    self->copies = PyMem_Malloc((size_t)(total > 0 ? total : 1) * sizeof(Copy));
    if (self->copies == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t t = 0; t < total; t++) {
        TargetObject *target = (TargetObject *)PyList_GET_ITEM(targets, t);
        fill_copy(&self->copies[t], target, t);
        self->watched &= watched_dict_type != NULL && Py_IS_TYPE(target->nominated,
                                                                 watched_dict_type);
        self->count = t + 1;
    }
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

int
fanout_compiled_fresh(PyObject *compiled_obj)
{
    CompiledObject *compiled = (CompiledObject *)compiled_obj;
    if (compiled->watched && compiled->fresh_epoch == nomination_epoch)
        return 1;
    unsigned long long epoch = nomination_epoch;
    plan_walks += 1;
    for (Py_ssize_t i = 0; i < compiled->count; i++) {
        TargetObject *target = compiled->copies[i].target;
        if (target->nominated == NULL || target->rewrite == NULL)
            return 0;
        int current = pair_current(target);
        if (current != 1)
            return current;
    }
    if (compiled->watched)
        compiled->fresh_epoch = epoch;
    return 1;
}

static Py_ssize_t
targets_length(PyObject *targets)
{
    if (Py_IS_TYPE(targets, &CompiledType))
        return ((CompiledObject *)targets)->count;
    return PyList_GET_SIZE(targets);
}

/* Phase 3 for one slice: add its counters to *totals and its deferred datagrams, as
   (bytes, addr), to *unsent (created on first use). 0, or -1 with an exception set. */
static int
collect_slice(const Slice *slice, FanoutTotals *totals, PyObject **unsent)
{
    totals->sent += slice->sent;
    totals->send_errors += slice->send_errors;
    totals->srtp_errors += slice->srtp_errors;
    totals->plain_octets += slice->plain_octets;
    totals->wire_octets += slice->wire_octets;
    for (Py_ssize_t d = 0; d < slice->deferred_count; d++) {
        const Deferred *deferred = &slice->deferred[d];
        if (*unsent == NULL && (*unsent = PyList_New(0)) == NULL)
            return -1;
        PyObject *data = PyBytes_FromStringAndSize(
            (const char *)slice->deferred_data + deferred->offset,
            (Py_ssize_t)deferred->length);
        if (data == NULL)
            return -1;
        PyObject *pair = PyTuple_Pack(2, data, deferred->copy->target->addr);
        Py_DECREF(data);
        if (pair == NULL || PyList_Append(*unsent, pair) < 0) {
            Py_XDECREF(pair);
            return -1;
        }
        Py_DECREF(pair);
    }
    return 0;
}

/*
 * fanout_send: phases 1-3 for one packet (the GIL held on entry and on return).
 * On success returns 0 with the counters in *totals, *stale (indexes, or NULL) and
 * *unsent ((bytes, addr) items, or NULL) as new references; -1 with an exception set.
 */
int
fanout_send(const Packet *packet, PyObject *targets, FanoutTotals *totals, PyObject **stale_out,
            PyObject **unsent_out)
{
    const Packet p = *packet;
    PyObject *stale = NULL, *unsent = NULL;
    int rc = -1;
    Copy local[LOCAL_COPIES];
    Copy *copies = local;
    Py_ssize_t total = PyList_GET_SIZE(targets), count = 0;
    Slice slices[MAX_SLICES];
    int slice_count = 0;
    memset(totals, 0, sizeof(*totals));
    memset(slices, 0, sizeof(slices));
    *stale_out = NULL;
    *unsent_out = NULL;
    if (srtp_protect_ptr == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_protect() was not called");
        return -1;
    }
    if (p.payload_len > MAX_PAYLOAD) {
        PyErr_Format(PyExc_ValueError, "payload of %zd octets is over %d", p.payload_len,
                     MAX_PAYLOAD);
        return -1;
    }
    if (total > LOCAL_COPIES && (copies = PyMem_Malloc((size_t)total * sizeof(Copy))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Phase 1: check and copy out, with the GIL. */
    if (copy_targets(targets, copies, &count, &stale) < 0)
        goto done;

    /* Phase 2: send (the caller holds the media lock), the GIL released for the pool. */
    int cap = slice_cap_for(count);
    if (cap > 1) {
        PyThreadState *save = PyEval_SaveThread();
        send_copies(&p, copies, count, slices, cap, &slice_count);
        PyEval_RestoreThread(save);
    } else if (count > 0) {
        send_copies(&p, copies, count, slices, 1, &slice_count);
    }

    /* Phase 3: aggregate, slices in order so `unsent` stays in target order. */
    for (int s = 0; s < slice_count; s++) {
        if (collect_slice(&slices[s], totals, &unsent) < 0)
            goto done;
    }
    *stale_out = stale;
    *unsent_out = unsent;
    stale = unsent = NULL;
    rc = 0;
done:
    for (Py_ssize_t i = 0; i < count; i++)
        Py_DECREF(copies[i].target);
    for (int s = 0; s < slice_count; s++) {
        free(slices[s].deferred);
        free(slices[s].deferred_data);
    }
    if (copies != local)
        PyMem_Free(copies);
    Py_XDECREF(stale);
    Py_XDECREF(unsent);
    return rc;
}

/* ---- A batch of packets: different calls' fan-outs on different threads ---------------- */

/*
 * The fan-outs of the packets one read of the media socket brought (rtc/_ingress.c),
 * in the three steps _fanout.h describes. Packets of different `groups` (calls) go to
 * disjoint receivers, so their fan-outs can run on different threads at once under the
 * rule that makes the pool lock-free (each srtp_t and Rewrite written by one thread): a
 * group's packets all run on one thread, in batch order. One group, or no pool: the
 * packets run in order on the calling thread, a big one split into slices.
 */

typedef struct {
    Packet packet;
    Copy *copies;               /* each holds a reference on its Target until finish, */
    PyObject *shared;           /* unless they are a CompiledTargets' (held until finish) */
    Py_ssize_t copy_count;
    Slice *slices;              /* slice_cap of them: [0] the whole fan-out, or its parts */
    int slice_cap;
    int slice_count;            /* set by run */
    int owner;                  /* groups mode: the part (thread) that sends it */
} BatchItem;

struct FanoutBatch {
    BatchItem *items;
    Py_ssize_t count;
    int parts;                  /* > 1: groups mode, items run by owner on the pool */
    int parallel;               /* run uses the pool (groups mode or a split item) */
    int spread;                 /* groups mode with copies for more than one part */
    int deferred;               /* run deferred at least one datagram */
};

static void
run_batch_part(void *arg, int number, Buffers *buffers)
{
    FanoutBatch *batch = (FanoutBatch *)arg;
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        BatchItem *item = &batch->items[i];
        if (item->owner == number && item->copy_count > 0)
            run_slice(&item->packet, &item->slices[0], buffers);
    }
}

static unsigned long long parallel_batches = 0; /* batches whose calls ran on several threads */

/* Frees what prepare allocated and drops the Target references (GIL held). */
static void
batch_free(FanoutBatch *batch)
{
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        BatchItem *item = &batch->items[i];
        if (item->shared != NULL) {
            Py_DECREF(item->shared);
        } else {
            for (Py_ssize_t c = 0; c < item->copy_count; c++)
                Py_DECREF(item->copies[c].target);
            PyMem_Free(item->copies);
        }
        for (int k = 0; k < item->slice_cap; k++) {
            free(item->slices[k].deferred);
            free(item->slices[k].deferred_data);
        }
        PyMem_Free(item->slices);
    }
    PyMem_Free(batch->items);
    PyMem_Free(batch);
}

FanoutBatch *
fanout_prepare(const Packet *packets, PyObject *const *targets, const long long *groups,
               Py_ssize_t n)
{
    if (srtp_protect_ptr == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_protect() was not called");
        return NULL;
    }
    if (n < 0 || n > BATCH) {
        PyErr_Format(PyExc_ValueError, "fanout_prepare: %zd packets (at most %d)", n, BATCH);
        return NULL;
    }
    FanoutBatch *batch = PyMem_Calloc(1, sizeof(FanoutBatch));
    if (batch == NULL || (n > 0 && (batch->items = PyMem_Calloc((size_t)n,
                                                                  sizeof(BatchItem))) == NULL)) {
        PyMem_Free(batch);
        PyErr_NoMemory();
        return NULL;
    }
    batch->count = n;
    batch->parts = 1;
    /* Which part (thread) each group goes to: handing work to another thread costs more
       than a few copies, so only a read with at least as many copies as a fan-out the
       pool would split, and of two calls or more, runs in groups mode. */
    int threads = pool.threads, group_index[BATCH], seen = 0;
    long long group_seen[BATCH];
    Py_ssize_t total_copies = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        total_copies += targets_length(targets[i]);
    if (threads > 1 && n >= 2 && total_copies >= PARALLEL_MIN_TARGETS) {
        for (Py_ssize_t i = 0; i < n; i++) {
            int found = -1;
            for (int g = 0; g < seen; g++) {
                if (group_seen[g] == groups[i]) {
                    found = g;
                    break;
                }
            }
            if (found < 0) {
                found = seen;
                group_seen[seen++] = groups[i];
            }
            group_index[i] = found;
        }
    }
    if (seen >= 2)
        batch->parts = threads;
    int part_of_group[BATCH];
    Py_ssize_t load[MAX_THREADS];
    memset(load, 0, sizeof(load));
    for (int g = 0; g < seen; g++)
        part_of_group[g] = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        BatchItem *item = &batch->items[i];
        PyObject *list = targets[i];
        Py_ssize_t total = targets_length(list);
        item->packet = packets[i];
        if (Py_IS_TYPE(list, &CompiledType) && total > 0 && packets[i].payload_len <= MAX_PAYLOAD) {
            /* A route's plan: its copies as they are, when still fresh; else the stale
               receivers are left out as for a list (a renomination since the caller's check). */
            int fresh = fanout_compiled_fresh(list);
            if (fresh < 0)
                goto fail;
            if (fresh) {
                item->shared = Py_NewRef(list);
                item->copies = ((CompiledObject *)list)->copies;
                item->copy_count = total;
            } else {
                list = ((CompiledObject *)list)->source;
                total = PyList_GET_SIZE(list);
            }
        }
        /* Too big for a slot (the caller checked) or nobody to send to: nothing to copy. */
        if (item->shared == NULL && packets[i].payload_len <= MAX_PAYLOAD && total > 0) {
            item->copies = PyMem_Malloc((size_t)total * sizeof(Copy));
            if (item->copies == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            PyObject *stale = NULL;
            int copied = copy_targets(list, item->copies, &item->copy_count, &stale);
            Py_XDECREF(stale); /* renominated since the caller's check: Python replans */
            if (copied < 0)
                goto fail;
        }
        item->slice_cap = batch->parts == 1 ? slice_cap_for(item->copy_count) : 1;
        item->slices = PyMem_Calloc((size_t)item->slice_cap, sizeof(Slice));
        if (item->slices == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        batch->parallel |= item->slice_cap > 1;
        if (batch->parts > 1) {
            int g = group_index[i];
            if (part_of_group[g] < 0) {
                int best = 0;
                for (int k = 1; k < threads && k < MAX_THREADS; k++)
                    if (load[k] < load[best])
                        best = k;
                part_of_group[g] = best;
            }
            item->owner = part_of_group[g];
            load[item->owner] += item->copy_count;
        }
    }
    if (batch->parts > 1) {
        int busy = 0; /* parts with copies to send: more than one is a parallel read */
        for (int k = 0; k < threads && k < MAX_THREADS; k++)
            busy += load[k] > 0;
        batch->spread = busy > 1;
        batch->parallel = 1;
    }
    return batch;
fail:
    batch_free(batch);
    return NULL;
}

int
fanout_batch_parallel(const FanoutBatch *batch)
{
    return batch->parallel;
}

int
fanout_batch_deferred(const FanoutBatch *batch)
{
    return batch->deferred;
}

void
fanout_run(FanoutBatch *batch)
{
    if (batch->parts > 1) {
        for (Py_ssize_t i = 0; i < batch->count; i++) {
            batch->items[i].slices[0].copies = batch->items[i].copies;
            batch->items[i].slices[0].count = batch->items[i].copy_count;
            batch->items[i].slice_count = 1;
        }
        pthread_mutex_lock(&pool.dispatch);
        int parts = batch->parts;
        /* The pool may have shrunk since prepare: the parts beyond it run here. */
        if (pool.threads < parts) {
            for (Py_ssize_t i = 0; i < batch->count; i++)
                if (batch->items[i].owner >= pool.threads)
                    batch->items[i].owner = 0;
            parts = pool.threads;
        }
        pool_run_locked(run_batch_part, batch, parts);
        pthread_mutex_unlock(&pool.dispatch);
        parallel_batches += batch->spread;
    } else {
        for (Py_ssize_t i = 0; i < batch->count; i++) {
            BatchItem *item = &batch->items[i];
            if (item->copy_count > 0)
                send_copies(&item->packet, item->copies, item->copy_count, item->slices,
                            item->slice_cap, &item->slice_count);
        }
    }
    for (Py_ssize_t i = 0; i < batch->count; i++)
        for (int k = 0; k < batch->items[i].slice_count; k++)
            batch->deferred |= batch->items[i].slices[k].deferred_count > 0;
}

int
fanout_finish(FanoutBatch *batch, FanoutTotals *totals, PyObject **unsent)
{
    int rc = 0;
    memset(totals, 0, sizeof(*totals));
    *unsent = NULL;
    for (Py_ssize_t i = 0; i < batch->count && rc == 0; i++)
        for (int k = 0; k < batch->items[i].slice_count && rc == 0; k++)
            rc = collect_slice(&batch->items[i].slices[k], totals, unsent);
    batch_free(batch);
    if (rc < 0)
        Py_CLEAR(*unsent);
    return rc;
}

static PyObject *
fanout(PyObject *module, PyObject *args)
{
    Packet p;
    Py_buffer payload;
    PyObject *targets, *stale, *unsent;
    FanoutTotals totals;
    if (!PyArg_ParseTuple(args, "iipIIIy*iO!", &p.fd, &p.first_byte, &p.marker, &p.sequence,
                          &p.timestamp, &p.ssrc, &payload, &p.level_byte, &PyList_Type,
                          &targets))
        return NULL;
    p.payload = (const unsigned char *)payload.buf;
    p.payload_len = payload.len;
    media_lock_with_gil(); /* the reader thread may be sending with the GIL released */
    int rc = fanout_send(&p, targets, &totals, &stale, &unsent);
    media_unlock();
    PyBuffer_Release(&payload);
    if (rc < 0)
        return NULL;
    PyObject *result = PyStructSequence_New(FanoutResultType);
    PyObject *values[7] = {
        PyLong_FromSsize_t(totals.sent), PyLong_FromUnsignedLongLong(totals.plain_octets),
        PyLong_FromUnsignedLongLong(totals.wire_octets), PyLong_FromSsize_t(totals.send_errors),
        PyLong_FromSsize_t(totals.srtp_errors), stale ? stale : Py_NewRef(Py_None),
        unsent ? unsent : Py_NewRef(Py_None)};
    int failed = result == NULL;
    for (int i = 0; i < 7; i++)
        failed = failed || values[i] == NULL;
    if (failed) {
        for (int i = 0; i < 7; i++)
            Py_XDECREF(values[i]);
        Py_XDECREF(result);
        return NULL;
    }
    for (int i = 0; i < 7; i++)
        PyStructSequence_SET_ITEM(result, i, values[i]);
    return result;
}

/* ---- Pool control from Python ------------------------------------------------------ */

static PyObject *
start_pool(PyObject *module, PyObject *arg)
{
    long threads = PyLong_AsLong(arg);
    if (threads == -1 && PyErr_Occurred())
        return NULL;
    if (threads < 1 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "start_pool: threads must be 1..%d, not %ld",
                     MAX_THREADS, threads);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&pool.dispatch);
    pool_stop_locked();
    rc = pool_start_locked((int)threads);
    pthread_mutex_unlock(&pool.dispatch);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(pool.threads);
}

static PyObject *
shutdown_pool(PyObject *module, PyObject *unused)
{
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&pool.dispatch);
    pool_stop_locked();
    pthread_mutex_unlock(&pool.dispatch);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *
pool_threads(PyObject *module, PyObject *unused)
{
    return PyLong_FromLong(pool.threads);
}

static PyObject *
parallel_fanouts(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(parallel_runs);
}

static PyObject *
parallel_batches_count(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(parallel_batches);
}

static PyObject *
set_protect(PyObject *module, PyObject *arg)
{
    if (srtp_fn_from(arg, "srtp_protect", &srtp_protect_ptr) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
nominations_changed(PyObject *module, PyObject *unused)
{
    nomination_epoch += 1;
    Py_RETURN_NONE;
}

static PyObject *
watch_nominations(PyObject *module, PyObject *arg)
{
    if (!PyType_Check(arg) || !PyType_IsSubtype((PyTypeObject *)arg, &PyDict_Type)) {
        PyErr_SetString(PyExc_TypeError, "watch_nominations: a dict subclass that calls "
                        "nominations_changed() after every change");
        return NULL;
    }
    Py_XSETREF(watched_dict_type, (PyTypeObject *)Py_NewRef(arg));
    Py_RETURN_NONE;
}

static PyObject *
current_nomination_epoch(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(nomination_epoch);
}

static PyObject *
plan_checks(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(plan_walks);
}

static PyMethodDef module_methods[] = {
    {"plan_checks", plan_checks, METH_NOARGS,
     "plan_checks() -> times a route's plan had its receivers' pairs looked up (once per "
     "nomination change, or per packet for Targets on dicts that do not announce changes)."},
    {"nominations_changed", nominations_changed, METH_NOARGS,
     "nominations_changed(): some nominated pair changed; every route's plan is checked "
     "again before its next packet."},
    {"watch_nominations", watch_nominations, METH_O,
     "watch_nominations(dict_type): Targets whose nominated dict is of this type are "
     "checked once per nominations_changed(), not per packet."},
    {"nomination_epoch", current_nomination_epoch, METH_NOARGS,
     "nomination_epoch() -> how many times nominations_changed() was called, plus one."},
    {"fanout", fanout, METH_VARARGS, fanout_doc},
    {"set_protect", set_protect, METH_O,
     "set_protect(address): libsrtp's srtp_protect, as pylibsrtp's cffi module exposes it."},
    {"start_pool", start_pool, METH_O,
     "start_pool(threads) -> threads: (re)start the fan-out pool; 1 = no worker threads. "
     "Fan-outs of PARALLEL_MIN_TARGETS or more then run on `threads` threads."},
    {"shutdown_pool", shutdown_pool, METH_NOARGS,
     "shutdown_pool(): stop and join the workers (idempotent); fan-outs run on one thread."},
    {"pool_threads", pool_threads, METH_NOARGS,
     "pool_threads() -> threads fan-outs can run on now (1 = no pool)."},
    {"parallel_fanouts", parallel_fanouts, METH_NOARGS,
     "parallel_fanouts() -> fan-outs split across the pool since the module was loaded."},
    {"parallel_batches", parallel_batches_count, METH_NOARGS,
     "parallel_batches() -> socket reads whose calls' fan-outs ran on several threads."},
    {NULL}
};

static struct PyModuleDef fanout_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "callsctl_sfu.rtc._fanout",
    .m_doc = "Forwarding hot path: header rewrite, SRTP protect and sendmmsg for many receivers.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fanout(void)
{
    if (PyType_Ready(&RewriteType) < 0 || PyType_Ready(&TargetType) < 0 ||
        PyType_Ready(&CompiledType) < 0)
        return NULL;
    FanoutResultType = PyStructSequence_NewType(&result_desc);
    if (FanoutResultType == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&fanout_module);
    if (module == NULL)
        return NULL;
    key_component = PyLong_FromLong(1);
    if (key_component == NULL)
        return NULL;
    Py_INCREF(&RewriteType);
    if (PyModule_AddObject(module, "Rewrite", (PyObject *)&RewriteType) < 0) {
        Py_DECREF(&RewriteType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&TargetType);
    if (PyModule_AddObject(module, "Target", (PyObject *)&TargetType) < 0) {
        Py_DECREF(&TargetType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(FanoutResultType);
    if (PyModule_AddObject(module, "FanoutResult", (PyObject *)FanoutResultType) < 0) {
        Py_DECREF(FanoutResultType);
        Py_DECREF(module);
        return NULL;
    }
    PyModule_AddIntConstant(module, "BATCH", BATCH);
    PyModule_AddIntConstant(module, "MAX_PAYLOAD", MAX_PAYLOAD);
    PyModule_AddIntConstant(module, "PARALLEL_MIN_TARGETS", PARALLEL_MIN_TARGETS);
    PyModule_AddIntConstant(module, "MIN_SLICE", MIN_SLICE);
    PyModule_AddIntConstant(module, "MAX_THREADS", MAX_THREADS);
    if (ingress_add_to_module(module) < 0 || recvpump_add_to_module(module) < 0 ||
        sealer_add_to_module(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    pthread_atfork(NULL, NULL, pool_after_fork_in_child);
    return module;
}
