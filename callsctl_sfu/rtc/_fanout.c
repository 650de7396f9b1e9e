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
 * Python hands each receiver over as a `Target`, a type defined here with
 * named, checked fields (built once per receiver when its plan changes, read
 * per packet without any Python attribute lookup); anything else in the list
 * is refused with a TypeError naming its index and type.
 *
 * References: RTP header RFC 3550 §5.1; one-byte header extensions RFC 8285
 * §4.2; client-to-mixer audio level RFC 6464; SRTP RFC 3711 (libsrtp 2 API:
 * srtp_protect(ctx, buffer, &len) protects in place and appends the tag);
 * sendmmsg(2).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr). */
typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

#define BATCH 64                /* datagrams per sendmmsg call */
#define SLOT 2048               /* bytes per datagram buffer */
#define MAX_TRAILER 144         /* SRTP_MAX_TRAILER_LEN: tag + MKI */
#define MAX_HEADER 20           /* 12-octet header + 8-octet audio-level extension */
#define MAX_PAYLOAD (SLOT - MAX_HEADER - MAX_TRAILER)
#define OPUS_FRAME_TICKS 960    /* one 20 ms Opus frame at 48 kHz */

static protect_fn srtp_protect_ptr = NULL;
static unsigned char slots[BATCH][SLOT];
static struct mmsghdr messages[BATCH];
static struct iovec vectors[BATCH];
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
        Py_ssize_t header = write_header(self, buf, (int)first_byte, marker, sequence,
                                         timestamp, ssrc, level_byte, retransmission,
                                         payload.len);
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
    PyObject *srtp_session;     /* pylibsrtp Session owning `ctx`: kept alive here */
    void *ctx;                  /* its srtp_t */
    struct sockaddr_in sockaddr;
    PyObject *addr;             /* (host, port), for datagrams handed back to asyncio */
    PyObject *nominated;        /* aioice's live nominated-pair dict */
    PyObject *pair;             /* the pair `sockaddr` was taken from */
} TargetObject;

static PyObject *
Target_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"rewrite", "srtp_session", "context", "addr", "nominated", "pair",
                             NULL};
    PyObject *rewrite, *session, *context, *addr, *nominated, *pair;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO:Target", kwlist, &rewrite, &session,
                                     &context, &addr, &nominated, &pair))
        return NULL;
    if (!PyObject_TypeCheck(rewrite, &RewriteType)) {
        PyErr_Format(PyExc_TypeError, "Target: rewrite must be a _fanout.Rewrite, not %.100s",
                     Py_TYPE(rewrite)->tp_name);
        return NULL;
    }
    if (!PyLong_Check(context)) {
        PyErr_Format(PyExc_TypeError, "Target: context must be the srtp_t address as an int, "
                     "not %.100s", Py_TYPE(context)->tp_name);
        return NULL;
    }
    void *ctx = PyLong_AsVoidPtr(context);
    if (ctx == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "Target: null SRTP context");
        return NULL;
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
    self->sockaddr = sockaddr;
    self->addr = Py_NewRef(addr);
    self->nominated = Py_NewRef(nominated);
    self->pair = Py_NewRef(pair);
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
    {"context", (getter)Target_get_context, NULL, "address of the srtp_t", NULL},
    {NULL}
};

static PyTypeObject TargetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.Target",
    .tp_doc = "Target(rewrite, srtp_session, context, addr, nominated, pair): one receiver "
              "of fanout(), checked once when built (IPv4 addr, Rewrite, non-null context).",
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

typedef struct {
    Py_ssize_t sent;
    unsigned long long plain_octets;
    unsigned long long wire_octets;
    Py_ssize_t send_errors;
    int blocked;             /* the kernel's buffer filled: the rest goes to `unsent` */
    PyObject *unsent;        /* list of (bytes, addr) for asyncio's queue, or NULL */
    PyObject *addrs[BATCH];  /* borrowed: each slot's address tuple */
    Py_ssize_t plain_len[BATCH];
} FanoutState;

static int
defer(FanoutState *st, int index)
{
    if (st->unsent == NULL && (st->unsent = PyList_New(0)) == NULL)
        return -1;
    PyObject *data = PyBytes_FromStringAndSize((const char *)slots[index],
                                               (Py_ssize_t)vectors[index].iov_len);
    if (data == NULL)
        return -1;
    PyObject *item = PyTuple_Pack(2, data, st->addrs[index]);
    Py_DECREF(data);
    if (item == NULL)
        return -1;
    int rc = PyList_Append(st->unsent, item);
    Py_DECREF(item);
    return rc;
}

/* Send slots [0, count) with sendmmsg; what the kernel will not take now is deferred. */
static int
flush(FanoutState *st, int fd, int count)
{
    int offset = 0;
    while (offset < count && !st->blocked) {
        int n = sendmmsg(fd, messages + offset, (unsigned int)(count - offset), 0);
        if (n > 0) {
            for (int i = offset; i < offset + n; i++) {
                st->sent += 1;
                st->plain_octets += (unsigned long long)st->plain_len[i];
                st->wire_octets += vectors[i].iov_len;
            }
            offset += n;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            st->blocked = 1;
        } else {
            st->send_errors += 1; /* this datagram only (EPERM from a firewall, ...) */
            offset += 1;
        }
    }
    for (int i = offset; i < count; i++) {
        if (defer(st, i) < 0)
            return -1;
        st->sent += 1;
        st->plain_octets += (unsigned long long)st->plain_len[i];
        st->wire_octets += vectors[i].iov_len;
    }
    return 0;
}

PyDoc_STRVAR(fanout_doc,
"fanout(fd, first_byte, marker, sequence, timestamp, ssrc, payload, level_byte, targets)\n"
"-> FanoutResult(sent, plain_octets, wire_octets, send_errors, srtp_errors, stale, unsent)\n\n"
"One decrypted RTP packet to every target: a list of Target (anything else is a\n"
"TypeError). A target whose nominated pair changed is\n"
"left alone and its index returned in `stale` (the caller sends it the slow way and\n"
"rebuilds its targets). Datagrams the kernel would not take (socket buffer full) come\n"
"back in `unsent` as (bytes, addr) for asyncio's write queue. level_byte < 0: none.");

static PyObject *
fanout(PyObject *module, PyObject *args)
{
    int fd, first_byte, marker, level_byte;
    unsigned int sequence, timestamp, ssrc;
    Py_buffer payload;
    PyObject *targets;
    if (!PyArg_ParseTuple(args, "iipIIIy*iO!", &fd, &first_byte, &marker, &sequence,
                          &timestamp, &ssrc, &payload, &level_byte, &PyList_Type, &targets))
        return NULL;
    if (srtp_protect_ptr == NULL) {
        PyBuffer_Release(&payload);
        PyErr_SetString(PyExc_RuntimeError, "set_protect() was not called");
        return NULL;
    }
    if (payload.len > MAX_PAYLOAD) {
        PyBuffer_Release(&payload);
        PyErr_Format(PyExc_ValueError, "payload of %zd octets is over %d", payload.len,
                     MAX_PAYLOAD);
        return NULL;
    }
    FanoutState st;
    memset(&st, 0, sizeof(st));
    Py_ssize_t srtp_errors = 0;
    PyObject *stale = NULL;
    int filled = 0;
    Py_ssize_t count = PyList_GET_SIZE(targets);
    for (Py_ssize_t t = 0; t < count; t++) {
        PyObject *item = PyList_GET_ITEM(targets, t);
        if (!Py_IS_TYPE(item, &TargetType)) {
            PyErr_Format(PyExc_TypeError, "fanout: targets[%zd] is a %.100s, not a "
                         "_fanout.Target (build receivers with fastpath.Target)", t,
                         Py_TYPE(item)->tp_name);
            goto error;
        }
        TargetObject *target = (TargetObject *)item;
        if (target->nominated == NULL || target->rewrite == NULL) {
            PyErr_Format(PyExc_TypeError, "fanout: targets[%zd] was cleared", t);
            goto error;
        }
        PyObject *current = PyDict_GetItemWithError(target->nominated, key_component);
        if (current == NULL && PyErr_Occurred())
            goto error;
        if (current != target->pair) {
            PyObject *index = PyLong_FromSsize_t(t);
            if (index == NULL || (stale == NULL && (stale = PyList_New(0)) == NULL) ||
                PyList_Append(stale, index) < 0) {
                Py_XDECREF(index);
                goto error;
            }
            Py_DECREF(index);
            continue;
        }
        void *ctx = target->ctx;
        unsigned char *slot = slots[filled];
        Py_ssize_t header = write_header((RewriteObject *)target->rewrite, slot,
                                         first_byte, marker, sequence, timestamp, ssrc,
                                         level_byte, 0, payload.len);
        memcpy(slot + header, payload.buf, (size_t)payload.len);
        int length = (int)(header + payload.len);
        st.plain_len[filled] = length;
        if (srtp_protect_ptr(ctx, slot, &length) != 0) {
            srtp_errors += 1;
            continue;
        }
        vectors[filled].iov_base = slot;
        vectors[filled].iov_len = (size_t)length;
        memset(&messages[filled], 0, sizeof(struct mmsghdr));
        messages[filled].msg_hdr.msg_name = &target->sockaddr;
        messages[filled].msg_hdr.msg_namelen = (socklen_t)sizeof(struct sockaddr_in);
        messages[filled].msg_hdr.msg_iov = &vectors[filled];
        messages[filled].msg_hdr.msg_iovlen = 1;
        st.addrs[filled] = target->addr;
        filled += 1;
        if (filled == BATCH) {
            if (flush(&st, fd, filled) < 0)
                goto error;
            filled = 0;
        }
    }
    if (filled && flush(&st, fd, filled) < 0)
        goto error;
    PyBuffer_Release(&payload);
    PyObject *result = PyStructSequence_New(FanoutResultType);
    if (result == NULL)
        goto error_released;
    PyObject *values[7] = {
        PyLong_FromSsize_t(st.sent), PyLong_FromUnsignedLongLong(st.plain_octets),
        PyLong_FromUnsignedLongLong(st.wire_octets), PyLong_FromSsize_t(st.send_errors),
        PyLong_FromSsize_t(srtp_errors), stale ? stale : Py_NewRef(Py_None),
        st.unsent ? st.unsent : Py_NewRef(Py_None)};
    stale = NULL;
    st.unsent = NULL;
    for (int i = 0; i < 7; i++) {
        if (values[i] == NULL) {
            for (int k = 0; k < 7; k++)
                Py_XDECREF(values[k]);
            Py_DECREF(result);
            return NULL;
        }
    }
    for (int i = 0; i < 7; i++)
        PyStructSequence_SET_ITEM(result, i, values[i]);
    return result;
error_released:
    Py_XDECREF(stale);
    Py_XDECREF(st.unsent);
    return NULL;
error:
    PyBuffer_Release(&payload);
    Py_XDECREF(stale);
    Py_XDECREF(st.unsent);
    return NULL;
}

static PyObject *
set_protect(PyObject *module, PyObject *arg)
{
    void *address = PyLong_AsVoidPtr(arg);
    if (address == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "null srtp_protect address");
        return NULL;
    }
    srtp_protect_ptr = (protect_fn)address;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"fanout", fanout, METH_VARARGS, fanout_doc},
    {"set_protect", set_protect, METH_O,
     "set_protect(address): libsrtp's srtp_protect, as pylibsrtp's cffi module exposes it."},
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
    if (PyType_Ready(&RewriteType) < 0 || PyType_Ready(&TargetType) < 0)
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
    return module;
}
