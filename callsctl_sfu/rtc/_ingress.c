/*
 * The receive half of the C media path: the media socket read, decrypted and
 * forwarded without a Python call per packet.
 *
 * Why this exists: with the fan-out in C (_fanout.c), a small call's cost was
 * the Python receive path: an event-loop wake-up, asyncio's read, the demux,
 * the cffi unprotect, the RTP parse and the routing, ~50-110 µs per incoming
 * packet against ~3 µs per copy sent (bench/RESULTS.md, "Small calls").
 *
 * What it does, per wake-up of the media socket (Ingress.drain):
 *   - one recvmmsg(2) of up to BATCH datagrams;
 *   - an SRTP packet (RFC 7983 first byte 128-191, not RTCP by RFC 5761 §4)
 *     from a source address Python registered (InSession: that peer's inbound
 *     srtp_t), whose SSRC has a route Python registered (InRoute: one
 *     publisher audio stream, its plan's Targets) with a matching payload
 *     type, is handled here: srtp_unprotect, RTP header parse (RFC 3550 §5.1,
 *     RFC 8285 extensions), reception statistics (RFC 3550 A.3/A.8, into the
 *     same ReceptionStats object Python reports from), mute enforcement, the
 *     RFC 6464 level (voice activity is reported up once per drain) and
 *     fanout_send to every receiver;
 *   - SRTCP from such a session, once Python gave it `on_reports`, is
 *     decrypted here (srtp_unprotect_rtcp, the same inbound srtp_t): a
 *     compound of receiver reports only (RFC 3550 §6.4.2, SDES beside them),
 *     a listener's regular RTCP, has its report blocks handed to on_reports
 *     on the spot; any other compound goes up decrypted (on_plain);
 *   - a forwarded packet that waited in the socket's receive queue longer than
 *     `late_drop` seconds (its kernel receive time, SO_TIMESTAMPNS) is still
 *     decrypted and counted, but not fanned out (dropped_late): when the server
 *     falls behind (a full core), a fan-out of stale audio would only keep it
 *     behind, and the STUN and DTLS of joining sessions queued behind that audio
 *     in the same socket would wait as long (their handshakes time out);
 *   - every RTP packet handled here has that wait counted in a histogram
 *     (queue_wait: QUEUE_WAIT_BOUNDS_US buckets and the sum), the server's own
 *     share of the media's delay, which an operator reads as
 *     callsctl_media_queue_delay_seconds;
 *   - everything else (STUN, DTLS, RTCP of sessions without on_reports,
 *     video, unknown sources or SSRCs, a route whose plan changed, a receiver
 *     that renominated) goes up to Python as (bytes, addr), untouched, in
 *     arrival order, exactly as the asyncio reader delivered it before.
 *
 * Python stays the only decider: it registers a route when its own path has
 * forwarded a packet of that stream with a complete plan, and drops routes
 * (so the next packet comes up again) on any change: plan rebuilt, mute,
 * renegotiation. All of this runs on the event loop's thread with the GIL
 * held, so the srtp_t contexts are used by one thread at a time, as before.
 */
#include "_fanout.h"
#include "_iceanswer.h"
#include "_pktinfo.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Upper bounds (µs) of the queue-wait histogram's buckets; one more counts the rest.
   From well under a 20 ms audio frame to the seconds of an overloaded core. */
static const long long QUEUE_WAIT_BOUNDS_US[] = {500, 1000, 2000, 5000, 10000, 20000,
                                                 50000, 100000, 250000, 500000, 1000000};
#define QUEUE_WAIT_BUCKETS ((int)(sizeof(QUEUE_WAIT_BOUNDS_US) / sizeof(long long)) + 1)
#define RECV_SLOT 4096          /* WebRTC datagrams stay under the path MTU (~1200-1500) */
#define VOICE_LEVEL_DBOV 50     /* RFC 6464 -dBov at or below which a packet is "loud" */
#define SILENT_LEVEL 127
#define WRITE_SAMPLE_EVERY 64   /* one fan-out in this many is timed */
/* Reader thread: a route's speech is handed up only when it starts again after this much
   quiet (voice on); while it goes on, Python reads `heard_at` for the voice-off rule. */
#define LOUD_AFTER_QUIET 0.5
#define MAX_SAMPLES 1024        /* reader thread: write-time samples kept until collect() */

static srtp_fn srtp_unprotect_ptr = NULL;
static srtp_fn srtcp_unprotect_ptr = NULL; /* srtp_unprotect_rtcp; NULL: RTCP goes up */

/* ---- Reception: RFC 3550 Appendix A bookkeeping for one incoming SSRC ------------- */

typedef struct {
    PyObject_HEAD
    int clock_rate;
    long long base_seq;
    long long max_seq;
    long long cycles;
    long long received;
    long long expected_prior;
    long long received_prior;
    double jitter;
    double transit;
    int has_transit;
    long long last_sr;
    double last_sr_at;
    double lost_fraction;
} ReceptionObject;

static void
reception_update(ReceptionObject *self, unsigned int sequence, unsigned int rtp_timestamp,
                 double arrival)
{
    if (self->base_seq < 0) {
        self->base_seq = self->max_seq = sequence;
    } else if (((sequence - (unsigned int)self->max_seq) & 0xFFFFu) < 0x8000u) {
        if ((long long)sequence < self->max_seq)
            self->cycles += 1 << 16;
        self->max_seq = sequence;
    }
    self->received += 1;
    double transit = arrival * self->clock_rate - (double)rtp_timestamp;
    if (self->has_transit) {
        double delta = transit - self->transit;
        if (delta < 0)
            delta = -delta;
        if (delta < self->clock_rate * 10.0) /* ignore timestamp jumps (new source) */
            self->jitter += (delta - self->jitter) / 16.0;
    }
    self->transit = transit;
    self->has_transit = 1;
}

static int
Reception_init(ReceptionObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"clock_rate", NULL};
    int clock_rate;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &clock_rate))
        return -1;
    if (clock_rate <= 0) {
        PyErr_SetString(PyExc_ValueError, "clock_rate must be positive");
        return -1;
    }
    self->clock_rate = clock_rate;
    self->base_seq = -1;
    return 0;
}

static PyObject *
Reception_update(ReceptionObject *self, PyObject *args)
{
    unsigned int sequence, timestamp;
    double arrival;
    if (!PyArg_ParseTuple(args, "IId", &sequence, &timestamp, &arrival))
        return NULL;
    reception_update(self, sequence & 0xFFFFu, timestamp, arrival);
    Py_RETURN_NONE;
}

static PyObject *
Reception_get_transit(ReceptionObject *self, void *closure)
{
    if (!self->has_transit)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->transit);
}

static int
Reception_set_transit(ReceptionObject *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        self->has_transit = 0;
        return 0;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    self->transit = v;
    self->has_transit = 1;
    return 0;
}

static PyMemberDef Reception_members[] = {
    {"clock_rate", T_INT, offsetof(ReceptionObject, clock_rate), READONLY, "RTP clock rate"},
    {"base_seq", T_LONGLONG, offsetof(ReceptionObject, base_seq), 0, "first sequence (-1)"},
    {"max_seq", T_LONGLONG, offsetof(ReceptionObject, max_seq), 0, "highest sequence"},
    {"cycles", T_LONGLONG, offsetof(ReceptionObject, cycles), 0, "sequence wraps << 16"},
    {"received", T_LONGLONG, offsetof(ReceptionObject, received), 0, "packets received"},
    {"expected_prior", T_LONGLONG, offsetof(ReceptionObject, expected_prior), 0,
     "expected at the last report"},
    {"received_prior", T_LONGLONG, offsetof(ReceptionObject, received_prior), 0,
     "received at the last report"},
    {"jitter", T_DOUBLE, offsetof(ReceptionObject, jitter), 0,
     "interarrival jitter in RTP units"},
    {"last_sr", T_LONGLONG, offsetof(ReceptionObject, last_sr), 0,
     "middle 32 bits of the last SR's NTP timestamp"},
    {"last_sr_at", T_DOUBLE, offsetof(ReceptionObject, last_sr_at), 0, "when it arrived"},
    {"lost_fraction", T_DOUBLE, offsetof(ReceptionObject, lost_fraction), 0,
     "fraction lost in the last report interval"},
    {NULL}
};

static PyGetSetDef Reception_getset[] = {
    {"transit", (getter)Reception_get_transit, (setter)Reception_set_transit,
     "last relative transit time, or None", NULL},
    {NULL}
};

static PyMethodDef Reception_methods[] = {
    {"update", (PyCFunction)Reception_update, METH_VARARGS,
     "update(sequence, rtp_timestamp, arrival): one packet received (RFC 3550 A.3, A.8)."},
    {NULL}
};

static PyTypeObject ReceptionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.Reception",
    .tp_doc = "Reception(clock_rate): RFC 3550 Appendix A state of one incoming SSRC, "
              "updated by the C ingress and by Python alike.",
    .tp_basicsize = sizeof(ReceptionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reception_init,
    .tp_members = Reception_members,
    .tp_getset = Reception_getset,
    .tp_methods = Reception_methods,
};

/* ---- InRoute: one publisher audio stream the ingress forwards ------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *tag;              /* the publisher's session id: reported when loud */
    PyObject *targets;          /* list of Target, or None: "ask Python" */
    PyObject *compiled;         /* the same as the fan-out's copies (fanout_compile), or
                                   NULL: "ask Python" (None, or an item not a live Target) */
    PyObject *reception;        /* a Reception, or None */
    int payload_type;           /* packets of another type go up to Python (RTX, DTMF) */
    int level_id;               /* publisher's RFC 6464 extension id, -1 none */
    int muted;                  /* dropped after reception accounting */
    unsigned long long packets;
    unsigned long long octets;  /* payload octets, as PublishedTrack.octets */
    unsigned long long loud_drain; /* the drain that last reported it loud */
    double heard_at;            /* when its last loud packet arrived (loop time), < 0 never */
    long long group;            /* the call: different calls' fan-outs may run in parallel */
    /* Video (no simulcast): only the next packet in sequence that does not start a
       keyframe is handled here; it is also stored in the NACK ring and its sequence
       number in the track's highest_seq, as Python's path does. */
    int video;
    PyObject *ring;             /* the track's RingBuffer (put(seq, bytes)), or NULL */
    PyObject *highest_seq;      /* the track's dict SSRC -> highest sequence, or NULL */
    long highest;               /* the last sequence number seen, -1 unknown */
    unsigned long long handed_up_drain; /* the read that last sent one of its packets up */
} InRouteObject;

static int
InRoute_init(InRouteObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tag", "payload_type", "level_id", "reception", "muted", NULL};
    PyObject *tag, *level = Py_None, *reception = Py_None;
    int payload_type, muted = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oi|OOp:InRoute", kwlist, &tag, &payload_type,
                                     &level, &reception, &muted))
        return -1;
    if (payload_type < 0 || payload_type > 127) {
        PyErr_SetString(PyExc_ValueError, "InRoute: payload_type must be 0..127");
        return -1;
    }
    int level_id = -1;
    if (level != Py_None) {
        long v = PyLong_AsLong(level);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v < 1 || v > 255) {
            PyErr_SetString(PyExc_ValueError, "InRoute: level_id must be 1..255 or None");
            return -1;
        }
        level_id = (int)v;
    }
    if (reception != Py_None && !PyObject_TypeCheck(reception, &ReceptionType)) {
        PyErr_Format(PyExc_TypeError, "InRoute: reception must be a Reception, not %.100s",
                     Py_TYPE(reception)->tp_name);
        return -1;
    }
    Py_XSETREF(self->tag, Py_NewRef(tag));
    Py_XSETREF(self->reception, Py_NewRef(reception));
    Py_XSETREF(self->targets, Py_NewRef(Py_None));
    self->highest = -1;
    self->heard_at = -1.0;
    self->payload_type = payload_type;
    self->level_id = level_id;
    self->muted = muted;
    return 0;
}

static int
InRoute_traverse(InRouteObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tag);
    Py_VISIT(self->targets);
    Py_VISIT(self->compiled);
    Py_VISIT(self->reception);
    Py_VISIT(self->ring);
    Py_VISIT(self->highest_seq);
    return 0;
}

static int
InRoute_clear(InRouteObject *self)
{
    Py_CLEAR(self->tag);
    Py_CLEAR(self->targets);
    Py_CLEAR(self->compiled);
    Py_CLEAR(self->reception);
    Py_CLEAR(self->ring);
    Py_CLEAR(self->highest_seq);
    return 0;
}

static void
InRoute_dealloc(InRouteObject *self)
{
    PyObject_GC_UnTrack(self);
    InRoute_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
InRoute_get_targets(InRouteObject *self, void *closure)
{
    return Py_NewRef(self->targets ? self->targets : Py_None);
}

static int
InRoute_set_targets(InRouteObject *self, PyObject *value, void *closure)
{
    if (value == NULL)
        value = Py_None;
    if (value != Py_None && !PyList_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "InRoute.targets must be a list of Target or None, "
                     "not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    PyObject *compiled = NULL;
    if (value != Py_None) {
        /* Laid out now, once per plan, not per packet. A list the fan-out cannot use
           leaves the route to Python, as before: its packets go up. */
        compiled = fanout_compile(value);
        if (compiled == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError))
                return -1;
            PyErr_Clear();
        }
    }
    Py_XSETREF(self->targets, Py_NewRef(value));
    Py_XSETREF(self->compiled, compiled);
    return 0;
}

static PyObject *
InRoute_get_reception(InRouteObject *self, void *closure)
{
    return Py_NewRef(self->reception ? self->reception : Py_None);
}

static int
InRoute_set_reception(InRouteObject *self, PyObject *value, void *closure)
{
    if (value == NULL)
        value = Py_None;
    if (value != Py_None && !PyObject_TypeCheck(value, &ReceptionType)) {
        PyErr_Format(PyExc_TypeError, "InRoute.reception must be a Reception or None, "
                     "not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_XSETREF(self->reception, Py_NewRef(value));
    return 0;
}

static PyObject *
InRoute_get_ring(InRouteObject *self, void *closure)
{
    return Py_NewRef(self->ring ? self->ring : Py_None);
}

static int
InRoute_set_ring(InRouteObject *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->ring);
        return 0;
    }
    Py_XSETREF(self->ring, Py_NewRef(value));
    return 0;
}

static PyObject *
InRoute_get_highest_seq(InRouteObject *self, void *closure)
{
    return Py_NewRef(self->highest_seq ? self->highest_seq : Py_None);
}

static int
InRoute_set_highest_seq(InRouteObject *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->highest_seq);
        return 0;
    }
    if (!PyDict_Check(value)) {
        PyErr_Format(PyExc_TypeError, "InRoute.highest_seq must be a dict or None, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_XSETREF(self->highest_seq, Py_NewRef(value));
    return 0;
}

static PyMemberDef InRoute_members[] = {
    {"tag", T_OBJECT_EX, offsetof(InRouteObject, tag), READONLY, "the publisher's session id"},
    {"payload_type", T_INT, offsetof(InRouteObject, payload_type), 0,
     "the only payload type handled here (others go up: RTX, DTMF)"},
    {"level_id", T_INT, offsetof(InRouteObject, level_id), 0,
     "the publisher's RFC 6464 extension id, -1 for none"},
    {"muted", T_INT, offsetof(InRouteObject, muted), 0, "drop after accounting"},
    {"packets", T_ULONGLONG, offsetof(InRouteObject, packets), 0, "packets handled here"},
    {"octets", T_ULONGLONG, offsetof(InRouteObject, octets), 0, "their payload octets"},
    {"heard_at", T_DOUBLE, offsetof(InRouteObject, heard_at), READONLY,
     "loop time of its last loud packet (RFC 6464), -1 for never: the voice-off rule reads "
     "it, since the reader thread hands speech up only when it starts again"},
    {"group", T_LONGLONG, offsetof(InRouteObject, group), 0,
     "the call it belongs to: no two routes of one call may send at once, so only "
     "different groups' packets are sent on different threads"},
    {"video", T_INT, offsetof(InRouteObject, video), 0,
     "a video stream: only in-sequence packets that start no keyframe are handled here"},
    {"highest", T_LONG, offsetof(InRouteObject, highest), 0,
     "the last sequence number seen, -1 unknown (video)"},
    {NULL}
};

static PyGetSetDef InRoute_getset[] = {
    {"targets", (getter)InRoute_get_targets, (setter)InRoute_set_targets,
     "the plan's Targets, or None while Python must decide", NULL},
    {"reception", (getter)InRoute_get_reception, (setter)InRoute_set_reception,
     "the Reception of the SSRC it is registered for, or None", NULL},
    {"ring", (getter)InRoute_get_ring, (setter)InRoute_set_ring,
     "the track's NACK ring (its put(sequence, packet) is called), or None", NULL},
    {"highest_seq", (getter)InRoute_get_highest_seq, (setter)InRoute_set_highest_seq,
     "the track's SSRC -> highest sequence dict, kept current, or None", NULL},
    {NULL}
};

static PyTypeObject InRouteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.InRoute",
    .tp_doc = "InRoute(tag, payload_type, level_id=None, reception=None, muted=False): one "
              "publisher audio stream the ingress forwards to `targets`.",
    .tp_basicsize = sizeof(InRouteObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)InRoute_init,
    .tp_dealloc = (destructor)InRoute_dealloc,
    .tp_traverse = (traverseproc)InRoute_traverse,
    .tp_clear = (inquiry)InRoute_clear,
    .tp_members = InRoute_members,
    .tp_getset = InRoute_getset,
};

/* ---- InSession: one peer's inbound SRTP context and its routes by SSRC ------------- */

typedef struct {
    PyObject_HEAD
    void *ctx;                  /* the inbound srtp_t */
    PyObject *srtp_session;     /* the pylibsrtp Session owning it: kept alive */
    PyObject *routes;           /* dict: SSRC (int) -> InRoute */
    PyObject *on_plain;         /* called with a decrypted packet the ingress hands up */
    PyObject *on_reports;       /* on_reports(now, blocks): receiver reports read here */
    double last_rx;             /* loop time of the last packet handled here */
    unsigned long long srtp_errors;
    unsigned long long packets;
    unsigned long long rtcp_packets; /* RTCP compounds decrypted here */
    IceState ice;               /* consent STUN handled here once set_ice() was called */
} InSessionObject;

static PyObject *
InSession_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"context", "srtp_session", "on_plain", NULL};
    PyObject *context, *session, *on_plain = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:InSession", kwlist, &context, &session,
                                     &on_plain))
        return NULL;
    if (on_plain != Py_None && !PyCallable_Check(on_plain)) {
        PyErr_SetString(PyExc_TypeError, "InSession: on_plain must be callable or None");
        return NULL;
    }
    if (!PyLong_Check(context)) {
        PyErr_SetString(PyExc_TypeError, "InSession: context must be the srtp_t address");
        return NULL;
    }
    void *ctx = PyLong_AsVoidPtr(context);
    if (ctx == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "InSession: null SRTP context");
        return NULL;
    }
    InSessionObject *self = (InSessionObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->routes = PyDict_New();
    if (self->routes == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->ctx = ctx;
    self->srtp_session = Py_NewRef(session);
    self->on_plain = on_plain == Py_None ? NULL : Py_NewRef(on_plain);
    return (PyObject *)self;
}

static int
InSession_traverse(InSessionObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->srtp_session);
    Py_VISIT(self->routes);
    Py_VISIT(self->on_plain);
    Py_VISIT(self->on_reports);
    return ice_state_traverse(&self->ice, visit, arg);
}

static int
InSession_clear(InSessionObject *self)
{
    Py_CLEAR(self->srtp_session);
    Py_CLEAR(self->routes);
    Py_CLEAR(self->on_plain);
    Py_CLEAR(self->on_reports);
    ice_state_clear(&self->ice);
    return 0;
}

static void
InSession_dealloc(InSessionObject *self)
{
    PyObject_GC_UnTrack(self);
    InSession_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
InSession_set_route(InSessionObject *self, PyObject *args)
{
    PyObject *ssrc, *route;
    if (!PyArg_ParseTuple(args, "O!O!:set_route", &PyLong_Type, &ssrc, &InRouteType, &route))
        return NULL;
    if (self->routes == NULL || PyDict_SetItem(self->routes, ssrc, route) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
InSession_remove_route(InSessionObject *self, PyObject *ssrc)
{
    if (self->routes != NULL && PyDict_DelItem(self->routes, ssrc) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyObject *
InSession_clear_routes(InSessionObject *self, PyObject *unused)
{
    if (self->routes != NULL)
        PyDict_Clear(self->routes);
    Py_RETURN_NONE;
}

static PyObject *
InSession_set_ice(InSessionObject *self, PyObject *args, PyObject *kwds)
{
    if (ice_state_set(&self->ice, args, kwds) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
InSession_send_check(InSessionObject *self, PyObject *args)
{
    Py_ssize_t sent = ice_state_send_check(&self->ice, args);
    return sent < 0 ? NULL : PyLong_FromSsize_t(sent);
}

static PyObject *
InSession_expect_answer(InSessionObject *self, PyObject *args)
{
    if (ice_state_expect(&self->ice, args) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
InSession_get_routes(InSessionObject *self, void *closure)
{
    return PyDictProxy_New(self->routes);
}

static PyObject *
InSession_get_on_reports(InSessionObject *self, void *closure)
{
    return Py_NewRef(self->on_reports ? self->on_reports : Py_None);
}

static int
InSession_set_on_reports(InSessionObject *self, PyObject *value, void *closure)
{
    if (value != NULL && value != Py_None && !PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "InSession.on_reports must be callable or None");
        return -1;
    }
    Py_XSETREF(self->on_reports, value == NULL || value == Py_None ? NULL : Py_NewRef(value));
    return 0;
}

static PyMemberDef InSession_members[] = {
    {"last_rx", T_DOUBLE, offsetof(InSessionObject, last_rx), 0,
     "loop time of the last packet the ingress handled"},
    {"srtp_errors", T_ULONGLONG, offsetof(InSessionObject, srtp_errors), 0,
     "packets srtp_unprotect refused here"},
    {"packets", T_ULONGLONG, offsetof(InSessionObject, packets), 0, "packets handled here"},
    {"rtcp_packets", T_ULONGLONG, offsetof(InSessionObject, rtcp_packets), READONLY,
     "RTCP compounds decrypted here (receiver reports read here, the rest handed up)"},
    {"consent_at", T_DOUBLE, offsetof(InSessionObject, ice.consent_at), READONLY,
     "loop time of the last answer to the server's consent checks taken here, or 0"},
    {"consent_round_trip", T_DOUBLE, offsetof(InSessionObject, ice.round_trip), READONLY,
     "that answer's round trip in seconds"},
    {"consent_answers_taken", T_ULONGLONG, offsetof(InSessionObject, ice.taken), READONLY,
     "answers to the server's consent checks taken here"},
    {"checks_answered", T_ULONGLONG, offsetof(InSessionObject, ice.answered), READONLY,
     "the peer's consent checks answered here"},
    {NULL}
};

static PyGetSetDef InSession_getset[] = {
    {"routes", (getter)InSession_get_routes, NULL, "SSRC -> InRoute (read-only view)", NULL},
    {"on_reports", (getter)InSession_get_on_reports, (setter)InSession_set_on_reports,
     "on_reports(now, [(ssrc, fraction_lost, jitter, lsr, dlsr), ...]), called on the reader\n"
     "thread for a compound of receiver reports only; None: this peer's RTCP goes up\n"
     "encrypted, as before", NULL},
    {NULL}
};

static PyMethodDef InSession_methods[] = {
    {"set_route", (PyCFunction)InSession_set_route, METH_VARARGS,
     "set_route(ssrc, route): packets of this SSRC are handled by `route`."},
    {"remove_route", (PyCFunction)InSession_remove_route, METH_O,
     "remove_route(ssrc): that SSRC's packets go up to Python (no error if unknown)."},
    {"clear_routes", (PyCFunction)InSession_clear_routes, METH_NOARGS,
     "clear_routes(): every packet goes up to Python until routes are set again."},
    {"set_ice", (PyCFunction)(void (*)(void))InSession_set_ice, METH_VARARGS | METH_KEYWORDS,
     "set_ice(*, username, local_key, remote_key, controlling, nominated, check_username,\n"
     "tie_breaker, priority): answer the peer's consent checks on the nominated pair here\n"
     "(username: the USERNAME they carry, b'ours:theirs'; the keys: both ICE passwords;\n"
     "nominated: aioice's live dict component -> pair), send ours with send_check()\n"
     "(check_username b'theirs:ours', our role's tie_breaker, the PRIORITY they carry) and\n"
     "take the answers to those and to the checks expect_answer() names."},
    {"send_check", (PyCFunction)InSession_send_check, METH_VARARGS,
     "send_check(transaction_id, sent_at, (host, port), fd, source=None) -> octets: one\n"
     "consent check built, signed and sent on fd (from the local IPv4 address source, when\n"
     "given); 0 when the kernel would not take it now."},
    {"expect_answer", (PyCFunction)InSession_expect_answer, METH_VARARGS,
     "expect_answer(transaction_id, sent_at, (host, port)): a consent check the server\n"
     "sent; its authentic answer from that address sets consent_at (IPv4 only)."},
    {NULL}
};

static PyTypeObject InSessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.InSession",
    .tp_doc = "InSession(context, srtp_session): one peer's inbound srtp_t and its audio "
              "routes by SSRC.",
    .tp_basicsize = sizeof(InSessionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = InSession_new,
    .tp_dealloc = (destructor)InSession_dealloc,
    .tp_traverse = (traverseproc)InSession_traverse,
    .tp_clear = (inquiry)InSession_clear,
    .tp_members = InSession_members,
    .tp_getset = InSession_getset,
    .tp_methods = InSession_methods,
};

/* ---- Ingress: the source table and drain() ------------------------------------------ */

/* The counters of one drain (DrainResult's numbers). */
typedef struct {
    long long datagrams_in, bytes_in, truncated, rtp_in, forwarded, plain_octets, wire_octets,
        send_errors, srtp_protect_errors, dropped_muted, dropped_malformed, stun_in, stun_out,
        stun_octets_out, dropped_late;
    long long queue_wait[QUEUE_WAIT_BUCKETS]; /* RTP packets by their wait, in buckets */
    long long queue_wait_us;                  /* the sum of those waits */
} DrainCounts;

typedef struct {
    PyObject_HEAD
    PyObject *sources;          /* dict: (IPv4 << 16 | port) -> InSession */
    unsigned long long drains;
    unsigned long long fanouts;
    /* The reader thread (start()/stop()); every field below is used with the GIL held,
       except the descriptors, which are fixed while it runs. */
    pthread_t thread;
    int running;
    int recv_fd;
    int send_fd;                /* the fan-out's socket, -1 while asyncio holds queued data */
    int stop_fd;                /* eventfd: stop() writes it */
    int wake_fd;                /* eventfd: written when `handups` becomes non-empty */
    PyObject *handups;          /* DrainResults with something for Python, in order */
    PyObject *samples;          /* (kind, seconds) write-time samples, or NULL */
    PyObject *failure;          /* the exception that stopped the thread, or NULL */
    DrainCounts totals;         /* counters of the thread's drains since collect() */
    unsigned long long wakes;   /* times the thread woke the event loop */
    /* The thread's last fan-out, sent with the GIL released and finished (counters,
       references dropped) with the GIL by whoever next holds both locks: the thread's
       next read, collect() or stop(). Under media_lock. */
    FanoutBatch *pending;
    double pending_seconds;     /* sampled: its start time, then (once sent) its write time; else < 0 */
    int pending_video;          /* the sample's label: its first stream was video */
    double late_drop;           /* seconds in the receive queue after which media is not
                                   forwarded; 0: never (see the module doc) */
    int stamped_fd;             /* the socket SO_TIMESTAMPNS was turned on for, or -1 */
} IngressObject;

/* Whoever uses an srtp_t, a Rewrite or the static buffers holds this (see the reader
   thread section below): the reader thread for each wake-up (it sends with the GIL
   released), drain(), the C fanout() and Rewrite.build(), and pylibsrtp's calls on the
   event loop (fastpath.py wraps them: cffi releases the GIL inside libsrtp). */
static pthread_mutex_t media_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int media_held = 0; /* this thread's nesting of media_lock */

/* The receive buffers: used by drains only, under media_lock. */
static struct {
    unsigned char data[BATCH][RECV_SLOT];
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_in addrs[BATCH];
    /* SO_TIMESTAMPNS: each datagram's kernel receive time (CLOCK_REALTIME); IP_PKTINFO,
       when rtc/mux.py turned it on: the address it was sent to (_pktinfo.h). */
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(struct timespec)) + CMSG_SPACE(sizeof(struct in_pktinfo))];
    } control[BATCH];
} rx;

static PyObject *
source_key(PyObject *args, const char *what)
{
    const char *host;
    int port;
    struct in_addr address;
    unsigned long long key;
    if (!PyArg_ParseTuple(args, "(si)", &host, &port))
        return NULL;
    if (!ipv4_key(host, port, &address, &key)) {
        PyErr_Format(PyExc_ValueError, "%s: not an IPv4 (host, port): (%.100s, %d)", what, host,
                     port);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(key);
}

static PyObject *
Ingress_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Ingress() takes no arguments");
        return NULL;
    }
    IngressObject *self = (IngressObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->recv_fd = self->send_fd = self->stop_fd = self->wake_fd = -1;
    self->stamped_fd = -1;
    self->sources = PyDict_New();
    if (self->sources == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
Ingress_traverse(IngressObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sources);
    Py_VISIT(self->handups);
    Py_VISIT(self->samples);
    Py_VISIT(self->failure);
    return 0;
}

static int
Ingress_clear(IngressObject *self)
{
    Py_CLEAR(self->sources);
    Py_CLEAR(self->handups);
    Py_CLEAR(self->samples);
    Py_CLEAR(self->failure);
    return 0;
}

static void
Ingress_dealloc(IngressObject *self)
{
    PyObject_GC_UnTrack(self);
    Ingress_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Ingress_add(IngressObject *self, PyObject *args)
{
    PyObject *addr, *session;
    if (!PyArg_ParseTuple(args, "OO!:add", &addr, &InSessionType, &session))
        return NULL;
    PyObject *wrapped = PyTuple_Pack(1, addr);
    if (wrapped == NULL)
        return NULL;
    PyObject *key = source_key(wrapped, "Ingress.add");
    Py_DECREF(wrapped);
    if (key == NULL)
        return NULL;
    int rc = PyDict_SetItem(self->sources, key, session);
    Py_DECREF(key);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Ingress_remove(IngressObject *self, PyObject *args)
{
    PyObject *addr;
    if (!PyArg_ParseTuple(args, "O:remove", &addr))
        return NULL;
    PyObject *wrapped = PyTuple_Pack(1, addr);
    if (wrapped == NULL)
        return NULL;
    PyObject *key = source_key(wrapped, "Ingress.remove");
    Py_DECREF(wrapped);
    if (key == NULL)
        return NULL;
    int rc = PyDict_DelItem(self->sources, key);
    Py_DECREF(key);
    if (rc < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static Py_ssize_t
Ingress_len(IngressObject *self)
{
    return self->sources ? PyDict_GET_SIZE(self->sources) : 0;
}

static int
append_new(PyObject **list, PyObject *item)
{
    if (item == NULL)
        return -1;
    if (*list == NULL && (*list = PyList_New(0)) == NULL) {
        Py_DECREF(item);
        return -1;
    }
    int rc = PyList_Append(*list, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *
address_tuple(const struct sockaddr_in *sa)
{
    char host[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &sa->sin_addr, host, sizeof(host)) == NULL)
        host[0] = '\0';
    return Py_BuildValue("(si)", host, (int)ntohs(sa->sin_port));
}

/* Datagram i's destination address (IP_PKTINFO) in *space, or NULL when it carries none. */
static const struct in_addr *
datagram_destination(int i, struct in_addr *space)
{
    return destination_of(&rx.messages[i].msg_hdr, space) ? space : NULL;
}

/* "a.b.c.d" of a datagram's destination, or None when it is not known (a new reference). */
static PyObject *
destination_text(const struct in_addr *destination)
{
    char host[INET_ADDRSTRLEN];
    if (destination == NULL || inet_ntop(AF_INET, destination, host, sizeof(host)) == NULL)
        Py_RETURN_NONE;
    return PyUnicode_FromString(host);
}

/* The session whose source sent datagram i, or NULL (borrowed). */
static InSessionObject *
lookup_session(IngressObject *self, const struct sockaddr_in *sa)
{
    if (sa->sin_family != AF_INET)
        return NULL;
    PyObject *key_obj = PyLong_FromUnsignedLongLong(address_key(sa->sin_addr,
                                                                 ntohs(sa->sin_port)));
    if (key_obj == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(self->sources, key_obj);
    Py_DECREF(key_obj);
    if (found == NULL)
        PyErr_Clear();
    return (InSessionObject *)found;
}

static InRouteObject *
lookup_route(InSessionObject *session, unsigned int ssrc)
{
    PyObject *key = PyLong_FromUnsignedLong(ssrc);
    if (key == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *found = session->routes ? PyDict_GetItemWithError(session->routes, key) : NULL;
    Py_DECREF(key);
    if (found == NULL)
        PyErr_Clear();
    return (InRouteObject *)found;
}

/* The RFC 6464 level byte of a one-byte (0xBEDE) or two-byte (0x100X) extension block, or -1. */
static int
find_level(const unsigned char *data, int start, int end, int profile, int level_id)
{
    int pos = start;
    if (profile == 0xBEDE) {
        while (pos < end) {
            int byte = data[pos];
            if (byte == 0) {
                pos += 1;
                continue;
            }
            int id = byte >> 4, length = (byte & 0x0F) + 1;
            if (id == 15)
                return -1;
            pos += 1;
            if (pos + length > end)
                return -1;
            if (id == level_id)
                return data[pos];
            pos += length;
        }
    } else if ((profile & 0xFFF0) == 0x1000) {
        while (pos + 1 < end) {
            int id = data[pos];
            if (id == 0) {
                pos += 1;
                continue;
            }
            int length = data[pos + 1];
            pos += 2;
            if (pos + length > end)
                return -1;
            if (id == level_id && length > 0)
                return data[pos];
            pos += length;
        }
    }
    return -1;
}

/* Whether a VP8 RTP payload starts a keyframe (RFC 7741 §4.2-4.3): the payload
   descriptor skipped, the P bit of a partition-0 start's payload header. The same
   reading as rtp.vp8_keyframe in Python. */
static int
vp8_keyframe(const unsigned char *payload, Py_ssize_t size)
{
    if (size < 1)
        return 0;
    int first = payload[0];
    Py_ssize_t offset = 1;
    if (first & 0x80) {
        if (size < 2)
            return 0;
        int ext = payload[1];
        offset = 2;
        if (ext & 0x80) {
            if (size <= offset)
                return 0;
            offset += (payload[offset] & 0x80) ? 2 : 1;
        }
        if (ext & 0x40)
            offset += 1;
        if (ext & 0x30)
            offset += 1;
    }
    if (!(first & 0x10) || (first & 0x07) != 0 || size <= offset)
        return 0;
    return (payload[offset] & 0x01) == 0;
}

/* A video packet handled here: into the track's NACK ring and highest_seq, as the Python
   path keeps them. 0, or -1 with an exception set. */
static int
keep_for_nack(InRouteObject *route, const unsigned char *data, int length,
              unsigned int sequence, unsigned int ssrc)
{
    route->highest = (long)sequence;
    PyObject *seq = PyLong_FromUnsignedLong(sequence);
    if (seq == NULL)
        return -1;
    int rc = 0;
    if (route->highest_seq != NULL) {
        PyObject *key = PyLong_FromUnsignedLong(ssrc);
        rc = key == NULL ? -1 : PyDict_SetItem(route->highest_seq, key, seq);
        Py_XDECREF(key);
    }
    if (rc == 0 && route->ring != NULL) {
        PyObject *packet = PyBytes_FromStringAndSize((const char *)data, length);
        PyObject *done = packet == NULL ? NULL : PyObject_CallMethod(route->ring, "put", "OO",
                                                                      seq, packet);
        rc = done == NULL ? -1 : 0;
        Py_XDECREF(done);
        Py_XDECREF(packet);
    }
    Py_DECREF(seq);
    return rc;
}

/* How long a datagram waited in the socket's receive queue, in seconds: its
   SO_TIMESTAMPNS receive time (a control message) against `wall`, read after the
   recvmmsg(2) that returned it; -1 without a receive time. */
static double
queue_wait(struct msghdr *header, const struct timespec *wall)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(header); cm != NULL; cm = CMSG_NXTHDR(header, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_TIMESTAMPNS ||
            cm->cmsg_len < CMSG_LEN(sizeof(struct timespec)))
            continue;
        struct timespec stamp;
        memcpy(&stamp, CMSG_DATA(cm), sizeof(stamp));
        double waited = (double)(wall->tv_sec - stamp.tv_sec) +
                        (double)(wall->tv_nsec - stamp.tv_nsec) / 1e9;
        return waited > 0 ? waited : 0; /* the realtime clock stepped back: no wait */
    }
    return -1;
}

/* One RTP packet's wait, into the histogram. */
static void
count_queue_wait(DrainCounts *c, double waited)
{
    long long us = (long long)(waited * 1e6);
    int b = 0;
    while (b < QUEUE_WAIT_BUCKETS - 1 && us > QUEUE_WAIT_BOUNDS_US[b])
        b++;
    c->queue_wait[b] += 1;
    c->queue_wait_us += us;
}

/* What one drain() did, by name (a struct sequence, so it also indexes like a tuple). */
static PyStructSequence_Field drain_fields[] = {
    {"slow", "(bytes, (host, port), destination) handed up untouched, in arrival order, or "
             "None; destination: the local address it was sent to (IP_PKTINFO), or None"},
    {"loud", "tags of the routes that carried speech, or None"},
    {"unsent", "(bytes, addr) the kernel would not take now, or None"},
    {"samples", "(kind, seconds per copy) of the timed fan-outs, or None"},
    {"error", "errno of a failed read, or 0"},
    {"datagrams_in", "datagrams read"},
    {"bytes_in", "octets read"},
    {"truncated", "datagrams over RECV_SLOT, dropped"},
    {"rtp_in", "RTP packets handled here"},
    {"forwarded", "copies sent or queued"},
    {"plain_octets", "octets of those copies before SRTP protect"},
    {"wire_octets", "octets of those copies on the wire"},
    {"send_errors", "copies the kernel refused"},
    {"srtp_protect_errors", "copies srtp_protect failed on"},
    {"dropped_muted", "packets of muted routes dropped"},
    {"dropped_malformed", "packets whose RTP header did not fit"},
    {"plain", "(on_plain, packet) decrypted video packets for Python, in order, or None"},
    {"stun_in", "consent STUN messages handled here (checks answered, answers taken)"},
    {"stun_out", "consent check answers sent from here"},
    {"stun_octets_out", "octets of those answers"},
    {"dropped_late", "packets not forwarded: longer than late_drop in the receive queue"},
    {"queue_wait", "RTP packets handled here by their wait in the receive queue: a count "
                   "per QUEUE_WAIT_BOUNDS_US bucket, the rest, then the sum in µs; or None"},
    {NULL}
};
#define DRAIN_FIELDS 22

static PyStructSequence_Desc drain_desc = {
    "callsctl_sfu.rtc._fanout.DrainResult", "What one Ingress.drain() did.", drain_fields,
    DRAIN_FIELDS,
};

static PyTypeObject *DrainResultType = NULL;

PyDoc_STRVAR(drain_doc,
"drain(recv_fd, send_fd, now) -> DrainResult\n\n"
"Read up to BATCH datagrams from recv_fd (non-blocking) and forward what the\n"
"registered routes cover, sending on send_fd (-1: forward nothing here, every\n"
"datagram goes up). The result names what was handed up (slow, plain), heard\n"
"(loud), deferred (unsent), timed (samples) and counted; see DrainResult's fields.");

/* The queue-wait histogram of `c` as (count per bucket..., sum µs), or None when it is
   empty (most drains of the method have no RTP). */
static PyObject *
queue_wait_tuple(const DrainCounts *c)
{
    long long any = 0;
    for (int b = 0; b < QUEUE_WAIT_BUCKETS; b++)
        any += c->queue_wait[b];
    if (any == 0)
        return Py_NewRef(Py_None);
    PyObject *out = PyTuple_New(QUEUE_WAIT_BUCKETS + 1);
    if (out == NULL)
        return NULL;
    for (int b = 0; b <= QUEUE_WAIT_BUCKETS; b++) {
        PyObject *value = PyLong_FromLongLong(b < QUEUE_WAIT_BUCKETS ? c->queue_wait[b]
                                                                     : c->queue_wait_us);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, b, value);
    }
    return out;
}

/* A DrainResult of these lists (each NULL for None; their references are stolen, also on
   failure) and counters: what drain() returns, and what collect() returns for the thread. */
static PyObject *
drain_result(PyObject *slow, PyObject *loud, PyObject *unsent, PyObject *samples, int error,
             const DrainCounts *c, PyObject *plain)
{
    PyObject *result = PyStructSequence_New(DrainResultType);
    PyObject *values[DRAIN_FIELDS] = {
        slow ? slow : Py_NewRef(Py_None), loud ? loud : Py_NewRef(Py_None),
        unsent ? unsent : Py_NewRef(Py_None), samples ? samples : Py_NewRef(Py_None),
        PyLong_FromLong(error), PyLong_FromLongLong(c->datagrams_in),
        PyLong_FromLongLong(c->bytes_in), PyLong_FromLongLong(c->truncated),
        PyLong_FromLongLong(c->rtp_in), PyLong_FromLongLong(c->forwarded),
        PyLong_FromLongLong(c->plain_octets), PyLong_FromLongLong(c->wire_octets),
        PyLong_FromLongLong(c->send_errors), PyLong_FromLongLong(c->srtp_protect_errors),
        PyLong_FromLongLong(c->dropped_muted), PyLong_FromLongLong(c->dropped_malformed),
        plain ? plain : Py_NewRef(Py_None), PyLong_FromLongLong(c->stun_in),
        PyLong_FromLongLong(c->stun_out), PyLong_FromLongLong(c->stun_octets_out),
        PyLong_FromLongLong(c->dropped_late), queue_wait_tuple(c)};
    int failed = result == NULL;
    for (int i = 0; i < DRAIN_FIELDS; i++)
        failed = failed || values[i] == NULL;
    if (failed) {
        for (int i = 0; i < DRAIN_FIELDS; i++)
            Py_XDECREF(values[i]);
        Py_XDECREF(result);
        return NULL;
    }
    for (int i = 0; i < DRAIN_FIELDS; i++)
        PyStructSequence_SET_ITEM(result, i, values[i]);
    return result;
}

/* What a finished read's fan-outs sent, added to counters (the drain's or the thread's). */
static void
count_sent(DrainCounts *c, const FanoutTotals *sent)
{
    c->forwarded += sent->sent;
    c->plain_octets += (long long)sent->plain_octets;
    c->wire_octets += (long long)sent->wire_octets;
    c->send_errors += sent->send_errors;
    c->srtp_protect_errors += sent->srtp_errors;
}

/* A write-time sample: seconds per copy sent, labelled by the read's first forwarded
   stream (a read rarely mixes kinds). A new reference, or NULL. */
static PyObject *
write_sample(int video, double seconds, Py_ssize_t copies)
{
    return Py_BuildValue("(sd)", video ? "video" : "audio", seconds / (double)copies);
}

/* Decrypt one of the session's datagrams in place with `unprotect` (srtp_unprotect or
   srtp_unprotect_rtcp on its inbound srtp_t): 0 and the peer counts as heard now, or -1
   with the refusal counted. */
static inline int
session_unprotect(InSessionObject *session, srtp_fn unprotect, unsigned char *data,
                  int *length, double now)
{
    if (unprotect(session->ctx, data, length) != 0) {
        session->srtp_errors += 1;
        return -1;
    }
    session->last_rx = now;
    return 0;
}

/* RFC 3550 §6.4.2 receiver reports, with SDES beside them (§6.5) and nothing else: the
   regular RTCP of a participant that only listens. Their report blocks go to
   on_reports(now, [(ssrc, fraction_lost, jitter, lsr, dlsr), ...]) here, on the reader
   thread, so the event loop is not woken for a statistic; 1 when taken so, 0 when the
   compound holds anything else (a sender report, feedback, BYE, APP) or is malformed,
   for the caller to hand up whole; -1 with an exception set. */
static int
take_receiver_reports(InSessionObject *session, const unsigned char *data, int length,
                      double now)
{
    int offset = 0, blocks = 0;
    while (offset < length) {
        if (length - offset < 4 || (data[offset] & 0xC0) != 0x80)
            return 0;
        int type = data[offset + 1];
        int size = 4 * (((data[offset + 2] << 8) | data[offset + 3]) + 1);
        if (size > length - offset)
            return 0;
        if (type == 201) {
            int count = data[offset] & 0x1F;
            if (8 + 24 * count > size)
                return 0;
            blocks += count;
        } else if (type != 202) {
            return 0;
        }
        offset += size;
    }
    if (offset == 0)
        return 0;
    if (blocks == 0)
        return 1; /* an empty report (RFC 3550 §6.4.2): nothing to record */
    PyObject *list = PyList_New(blocks);
    if (list == NULL)
        return -1;
    int filled = 0;
    for (offset = 0; offset < length;) {
        int size = 4 * (((data[offset + 2] << 8) | data[offset + 3]) + 1);
        if (data[offset + 1] == 201) {
            int count = data[offset] & 0x1F;
            for (int b = 0; b < count; b++) {
                const unsigned char *block = data + offset + 8 + 24 * b;
                PyObject *item = Py_BuildValue("(IiIII)", read32(block), (int)block[4],
                                               read32(block + 12), read32(block + 16),
                                               read32(block + 20));
                if (item == NULL) {
                    Py_DECREF(list);
                    return -1;
                }
                PyList_SET_ITEM(list, filled++, item);
            }
        }
        offset += size;
    }
    if (session->on_reports == NULL) { /* taken away meanwhile (a collection ran Python) */
        Py_DECREF(list);
        return 1;
    }
    /* Held across the call: the callback may replace session.on_reports meanwhile. */
    PyObject *callback = Py_NewRef(session->on_reports);
    PyObject *result = PyObject_CallFunction(callback, "dN", now, list);
    Py_DECREF(callback);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 1;
}

/*
 * One drain: the method's work, and the reader thread's. With `totals` NULL (the method)
 * the result carries this drain's counters and samples, and every route's speech is
 * reported once per drain. With `totals` (the thread) the counters are added there
 * (datagrams handed up excluded: Python counts those as it handles them), samples go to
 * self->samples, a route's speech is handed up only when it starts after LOUD_AFTER_QUIET
 * seconds of quiet (its `heard_at` says when it was last heard), and the result is None
 * when nothing needs Python.
 *
 * The fan-outs: with `batch_out` NULL they are made and finished here (the GIL released
 * while they are sent if the pool takes part); with `batch_out` (the thread) they are
 * only prepared and *batch_out is set (or NULL): the caller sends them with the GIL
 * released and finishes them later (finish_pending).
 */
static PyObject *
drain_once(IngressObject *self, int recv_fd, int send_fd, double now, DrainCounts *totals,
           FanoutBatch **batch_out)
{
    PyObject *slow = NULL, *loud = NULL, *unsent = NULL, *samples = NULL, *plain = NULL;
    DrainCounts c;
    memset(&c, 0, sizeof(c));
    int error = 0, blocked = send_fd < 0 || srtp_unprotect_ptr == NULL;
    /* The fan-outs to make once the batch is read: one per forwarded packet. */
    Packet jobs[BATCH];
    PyObject *job_targets[BATCH];
    PyObject *held_session = NULL, *held_route = NULL;
    long long job_groups[BATCH];
    int job_count = 0, first_job_video = 0;
    long long slow_datagrams = 0, slow_bytes = 0;
    self->drains += 1;

    for (int i = 0; i < BATCH; i++) {
        rx.vectors[i].iov_base = rx.data[i];
        rx.vectors[i].iov_len = RECV_SLOT;
        memset(&rx.messages[i], 0, sizeof(struct mmsghdr));
        rx.messages[i].msg_hdr.msg_name = &rx.addrs[i];
        rx.messages[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
        rx.messages[i].msg_hdr.msg_iov = &rx.vectors[i];
        rx.messages[i].msg_hdr.msg_iovlen = 1;
        rx.messages[i].msg_hdr.msg_control = rx.control[i].space;
        rx.messages[i].msg_hdr.msg_controllen = sizeof(rx.control[i].space);
    }
    if (self->stamped_fd != recv_fd) {
        /* Once per socket; if the kernel refuses, datagrams carry no time: none is late and
           none is counted in the queue-wait histogram. */
        int on = 1;
        (void)setsockopt(recv_fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on));
        self->stamped_fd = recv_fd;
    }
    int n;
    do {
        n = recvmmsg(recv_fd, rx.messages, BATCH, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            error = errno;
        n = 0;
    }
    struct timespec wall = {0, 0}; /* now, on the kernel's receive-time clock */
    if (n > 0)
        clock_gettime(CLOCK_REALTIME, &wall);

    for (int i = 0; i < n; i++) {
        unsigned char *data = rx.data[i];
        int length = (int)rx.messages[i].msg_len;
        const struct sockaddr_in *sa = &rx.addrs[i];
        struct in_addr destination; /* read only for what is answered or handed up */
        c.datagrams_in += 1;
        c.bytes_in += length;
        if (rx.messages[i].msg_hdr.msg_flags & MSG_TRUNC) {
            c.truncated += 1; /* over RECV_SLOT: not a WebRTC datagram */
            continue;
        }
        if (length == 0)
            continue;
        InSessionObject *session = NULL;
        InRouteObject *route = NULL;
        /* Strong references for this datagram: Python run from here (a ring's put, a
           collection) may let the event loop drop the session or route meanwhile. */
        Py_XSETREF(held_session, NULL);
        Py_XSETREF(held_route, NULL);
        if (data[0] < 4 && srtp_unprotect_ptr != NULL &&
            (session = lookup_session(self, sa)) != NULL) {
            /* ICE consent on an established session's nominated pair (_iceanswer.c). Its
               HMACs are Python calls, during which the event loop may run and drop the
               session: hold it. */
            Py_XSETREF(held_session, Py_NewRef((PyObject *)session));
            int answer_octets = 0;
            if (ice_handle(&session->ice, data, length, sa,
                           datagram_destination(i, &destination),
                           address_key(sa->sin_addr, ntohs(sa->sin_port)), send_fd, now,
                           &answer_octets)) {
                session->last_rx = now;
                c.stun_in += 1;
                if (answer_octets > 0) {
                    c.stun_out += 1;
                    c.stun_octets_out += answer_octets;
                }
                continue;
            }
            session = NULL;
        }
        if (!blocked && srtcp_unprotect_ptr != NULL && length >= 12 &&
            (data[0] & 0xC0) == 0x80 && data[1] >= 192 && data[1] <= 223 &&
            (session = lookup_session(self, sa)) != NULL && session->on_reports != NULL &&
            session->on_plain != NULL) {
            /* SRTCP (RFC 5761 §4) from an established session: decrypted here; a compound
               of receiver reports only is read here, the rest goes up decrypted. */
            Py_XSETREF(held_session, Py_NewRef((PyObject *)session));
            int plain_len = length;
            if (session_unprotect(session, srtcp_unprotect_ptr, data, &plain_len, now) < 0)
                continue;
            session->rtcp_packets += 1;
            int taken = take_receiver_reports(session, data, plain_len, now);
            if (taken < 0) {
                PyErr_Clear(); /* the reports are statistics: a failure loses only them */
                continue;
            }
            if (taken)
                continue;
            PyObject *item = Py_BuildValue("(Oy#)", session->on_plain, (const char *)data,
                                           (Py_ssize_t)plain_len);
            if (append_new(&plain, item) < 0)
                goto fail;
            continue;
        }
        session = NULL;
        if (!blocked && length >= 12 && (data[0] & 0xC0) == 0x80 &&
            !(data[1] >= 192 && data[1] <= 223) &&
            (session = lookup_session(self, sa)) != NULL) {
            held_session = Py_NewRef((PyObject *)session);
            unsigned int ssrc = read32(data + 8);
            route = lookup_route(session, ssrc);
            if (route != NULL && (route->compiled == NULL ||
                                  (data[1] & 0x7F) != route->payload_type))
                route = NULL;
            if (route != NULL && !route->muted) {
                int fresh = fanout_compiled_fresh(route->compiled);
                if (fresh < 0)
                    PyErr_Clear();
                if (fresh != 1)
                    route = NULL; /* a receiver renominated: Python replans */
            }
        }
        if (route == NULL) {
            PyObject *item = Py_BuildValue("(y#NN)", (const char *)data, (Py_ssize_t)length,
                                           address_tuple(sa),
                                           destination_text(datagram_destination(i, &destination)));
            if (append_new(&slow, item) < 0)
                goto fail;
            slow_datagrams += 1;
            slow_bytes += length;
            continue;
        }
        held_route = Py_NewRef((PyObject *)route);

        /* The fast path: this stream's packets are ours to forward. */
        int plain_len = length;
        if (session_unprotect(session, srtp_unprotect_ptr, data, &plain_len, now) < 0)
            continue;
        session->packets += 1;
        int first = data[0], offset = 12 + 4 * (first & 0x0F), level = -1;
        if (first & 0x10) {
            if (offset + 4 > plain_len) {
                c.rtp_in += 1;
                c.dropped_malformed += 1;
                continue;
            }
            int profile = (data[offset] << 8) | data[offset + 1];
            int words = (data[offset + 2] << 8) | data[offset + 3];
            int start = offset + 4, end = start + 4 * words;
            if (end > plain_len) {
                c.rtp_in += 1;
                c.dropped_malformed += 1;
                continue;
            }
            if (route->level_id >= 0)
                level = find_level(data, start, end, profile, route->level_id);
            offset = end;
        }
        if (offset > plain_len) {
            c.rtp_in += 1;
            c.dropped_malformed += 1;
            continue;
        }
        unsigned int sequence = ((unsigned int)data[2] << 8) | data[3];
        unsigned int timestamp = read32(data + 4);
        unsigned int ssrc = read32(data + 8);
        Py_ssize_t payload_len = plain_len - offset;
        if (route->video) {
            /* Anything but the next packet of a frame goes up to Python, decrypted: a gap
               (NACK upstream), a late packet, a keyframe (receivers waiting for one); and
               so does the rest of this stream's packets in this read, to keep their order. */
            int up = route->handed_up_drain == self->drains || route->highest < 0 ||
                     sequence != (((unsigned long)route->highest + 1) & 0xFFFFu) ||
                     vp8_keyframe(data + offset, payload_len) || session->on_plain == NULL;
            if (up) {
                route->handed_up_drain = self->drains;
                if (session->on_plain != NULL) {
                    PyObject *item = Py_BuildValue("(Oy#)", session->on_plain,
                                                   (const char *)data, (Py_ssize_t)plain_len);
                    if (append_new(&plain, item) < 0)
                        goto fail;
                }
                continue;
            }
            if (keep_for_nack(route, data, plain_len, sequence, ssrc) < 0)
                PyErr_Clear(); /* the ring is a cache: a packet not kept is only not repaired */
        }
        c.rtp_in += 1;
        double waited = wall.tv_sec != 0 ? queue_wait(&rx.messages[i].msg_hdr, &wall) : -1;
        if (waited >= 0)
            count_queue_wait(&c, waited);
        if (route->reception != NULL && route->reception != Py_None)
            reception_update((ReceptionObject *)route->reception, sequence, timestamp, now);
        route->packets += 1;
        route->octets += (unsigned long long)payload_len;
        if (route->muted) {
            c.dropped_muted += 1;
            continue;
        }
        int level_value = level >= 0 ? (level & 0x7F) : SILENT_LEVEL;
        if (level_value <= VOICE_LEVEL_DBOV) {
            int after_quiet = route->heard_at < 0 || now - route->heard_at >= LOUD_AFTER_QUIET;
            route->heard_at = now;
            if (route->loud_drain != self->drains && (totals == NULL || after_quiet)) {
                route->loud_drain = self->drains;
                if (append_new(&loud, Py_NewRef(route->tag)) < 0)
                    goto fail;
            }
        }
        if (payload_len > MAX_PAYLOAD) {
            c.dropped_malformed += 1;
            continue;
        }
        /* Audio only: a video packet not sent would come back as a NACK (answered from the
           ring, in Python: more work, not less). */
        if (!route->video && self->late_drop > 0 && waited > self->late_drop) {
            c.dropped_late += 1;
            continue;
        }
        Packet *packet = &jobs[job_count];
        packet->fd = send_fd;
        packet->first_byte = first;
        packet->marker = (data[1] & 0x80) != 0;
        packet->sequence = sequence;
        packet->timestamp = timestamp;
        packet->ssrc = ssrc;
        packet->level_byte = route->level_id >= 0 ? level_value : -1;
        packet->payload = data + offset;
        packet->payload_len = payload_len;
        if (job_count == 0)
            first_job_video = route->video;
        job_targets[job_count] = Py_NewRef(route->compiled);
        job_groups[job_count] = route->group;
        job_count += 1;
    }

    Py_CLEAR(held_session);
    Py_CLEAR(held_route);
    /* The fan-outs, once every datagram is read (payloads stay in the receive buffers):
       different calls' packets may go out on different threads at once. */
    if (job_count > 0) {
        int timed = (++self->fanouts % WRITE_SAMPLE_EVERY) == 0;
        struct timespec t0, t1;
        if (timed)
            clock_gettime(CLOCK_MONOTONIC, &t0);
        FanoutBatch *batch = fanout_prepare(jobs, job_targets, job_groups, job_count);
        for (int j = 0; j < job_count; j++)
            Py_CLEAR(job_targets[j]);
        job_count = 0;
        if (batch == NULL)
            goto fail;
        if (batch_out != NULL) {
            *batch_out = batch;
            self->pending_video = first_job_video;
            self->pending_seconds = -1.0;
            if (timed)
                self->pending_seconds = (double)t0.tv_sec + t0.tv_nsec / 1e9; /* start */
        } else {
            PyThreadState *save = fanout_batch_parallel(batch) ? PyEval_SaveThread() : NULL;
            fanout_run(batch);
            if (save != NULL)
                PyEval_RestoreThread(save);
            FanoutTotals sent;
            if (fanout_finish(batch, &sent, &unsent) < 0)
                goto fail;
            count_sent(&c, &sent);
            if (timed && sent.sent > 0) {
                clock_gettime(CLOCK_MONOTONIC, &t1);
                double seconds = (double)(t1.tv_sec - t0.tv_sec) +
                                 (t1.tv_nsec - t0.tv_nsec) / 1e9;
                if (append_new(&samples, write_sample(first_job_video, seconds, sent.sent)) < 0)
                    goto fail;
            }
        }
    }
    if (totals != NULL) {
        /* The reader thread: counters to the totals, samples kept for collect(). */
        totals->datagrams_in += c.datagrams_in - slow_datagrams;
        totals->bytes_in += c.bytes_in - slow_bytes;
        totals->truncated += c.truncated;
        totals->rtp_in += c.rtp_in;
        totals->forwarded += c.forwarded;
        totals->plain_octets += c.plain_octets;
        totals->wire_octets += c.wire_octets;
        totals->send_errors += c.send_errors;
        totals->srtp_protect_errors += c.srtp_protect_errors;
        totals->dropped_muted += c.dropped_muted;
        totals->dropped_malformed += c.dropped_malformed;
        totals->stun_in += c.stun_in;
        totals->stun_out += c.stun_out;
        totals->stun_octets_out += c.stun_octets_out;
        totals->dropped_late += c.dropped_late;
        for (int b = 0; b < QUEUE_WAIT_BUCKETS; b++)
            totals->queue_wait[b] += c.queue_wait[b];
        totals->queue_wait_us += c.queue_wait_us;
        memset(&c, 0, sizeof(c));
        if (slow == NULL && loud == NULL && unsent == NULL && plain == NULL && error == 0)
            Py_RETURN_NONE;
    }
    return drain_result(slow, loud, unsent, samples, error, &c, plain);
fail:
    for (int j = 0; j < job_count; j++)
        Py_CLEAR(job_targets[j]);
    Py_XDECREF(held_session);
    Py_XDECREF(held_route);
    Py_XDECREF(slow);
    Py_XDECREF(loud);
    Py_XDECREF(unsent);
    Py_XDECREF(samples);
    Py_XDECREF(plain);
    return NULL;
}

static PyObject *
Ingress_drain(IngressObject *self, PyObject *args)
{
    int recv_fd, send_fd;
    double now;
    if (!PyArg_ParseTuple(args, "iid:drain", &recv_fd, &send_fd, &now))
        return NULL;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "Ingress.drain: the reader thread reads this socket");
        return NULL;
    }
    /* Another Ingress's reader thread may be draining (the receive buffers are shared). */
    media_lock_with_gil();
    PyObject *result = drain_once(self, recv_fd, send_fd, now, NULL, NULL);
    media_unlock();
    return result;
}

/* ---- The reader thread ------------------------------------------------------------------
 *
 * Why: each incoming packet of a small call cost an event-loop wake-up (epoll return,
 * asyncio's loop pass, the callback) around a drain that is itself a few microseconds.
 * The thread waits in poll(2) without the GIL and runs the same drain (drain_once) with
 * it; only what needs Python is handed to the event loop (`handups`, and one write of
 * `wake_fd`, which the loop watches, when the list was empty): datagrams for Python, the
 * decrypted video Python decides on, datagrams the kernel would not take, a read error,
 * and a route's speech when it starts again after a quiet. Counters accumulate here until
 * collect().
 *
 * Locking rule: an srtp_t (and a Rewrite, and the static buffers) is used by one thread
 * at a time, and that thread holds media_lock. The reader thread takes it for each
 * wake-up: with the GIL it reads and prepares the fan-outs (Python objects: the routes,
 * the target lists), then it sends the copies with the GIL released, so the event loop
 * runs Python meanwhile, and lets media_lock go. On the event loop, the C fanout() and
 * Rewrite.build() take media_lock themselves, and pylibsrtp's calls (cffi releases the
 * GIL inside libsrtp) are wrapped by fastpath.py. media_lock is always taken before the
 * GIL, or with a try-lock while holding it and, if that fails, waited for with the GIL
 * released (media_lock_with_gil), so the two cannot deadlock. The sent read is finished
 * (counters, references dropped) with both locks by the next wake-up, collect() or
 * stop(); at once when the kernel would not take some copies, which asyncio must queue
 * before anything else goes to those receivers.
 */

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of asyncio's loop.time() */
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
media_lock_blocking(void)
{
    pthread_mutex_lock(&media_lock);
    media_held = 1;
}

/* Take media_lock on a thread that holds the GIL: a try first; if the reader thread has
   it (or waits for the GIL with it), wait with the GIL released so it can finish. */
void
media_lock_with_gil(void)
{
    if (media_held > 0) {
        media_held += 1; /* nested on the thread that holds it */
        return;
    }
    if (pthread_mutex_trylock(&media_lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&media_lock);
        Py_END_ALLOW_THREADS
    }
    media_held = 1;
}

void
media_unlock(void)
{
    if (--media_held == 0)
        pthread_mutex_unlock(&media_lock);
}

/* A hand-up is waiting: wake the loop (the GIL held). */
static void
wake_loop(IngressObject *self)
{
    uint64_t one = 1;
    self->wakes += 1;
    if (write(self->wake_fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is already non-zero, the loop will wake anyway */
    }
}

/* The drain raised: keep the exception for the loop, which gives up on the C reader. */
static void
record_failure(IngressObject *self)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value == NULL)
        value = Py_NewRef(PyExc_RuntimeError);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    Py_XSETREF(self->failure, value);
    wake_loop(self);
}

/* Append a result for the loop, waking it when the list was empty (GIL held). 0 or -1. */
static int
hand_up(IngressObject *self, PyObject *result)
{
    int was_empty = PyList_GET_SIZE(self->handups) == 0;
    if (PyList_Append(self->handups, result) < 0)
        return -1;
    if (was_empty)
        wake_loop(self);
    return 0;
}

/* Finish the thread's last fan-out, if any (GIL and media_lock held): its counters to the
   totals, its write-time sample kept for collect(), its references dropped, and what the
   kernel would not take handed up for asyncio's queue. 0, or -1 with an exception. */
static int
finish_pending(IngressObject *self)
{
    FanoutBatch *batch = self->pending;
    if (batch == NULL)
        return 0;
    self->pending = NULL;
    FanoutTotals sent;
    PyObject *unsent = NULL;
    if (fanout_finish(batch, &sent, &unsent) < 0)
        return -1;
    count_sent(&self->totals, &sent);
    if (self->pending_seconds >= 0 && sent.sent > 0) {
        if (self->samples == NULL && (self->samples = PyList_New(0)) == NULL) {
            Py_XDECREF(unsent);
            return -1;
        }
        /* Never collected (no stats reader): the oldest samples are enough. */
        if (PyList_GET_SIZE(self->samples) < MAX_SAMPLES) {
            PyObject *sample = write_sample(self->pending_video, self->pending_seconds,
                                            sent.sent);
            if (sample == NULL || PyList_Append(self->samples, sample) < 0) {
                Py_XDECREF(sample);
                Py_XDECREF(unsent);
                return -1;
            }
            Py_DECREF(sample);
        }
    }
    if (unsent == NULL)
        return 0;
    DrainCounts none;
    memset(&none, 0, sizeof(none));
    PyObject *result = drain_result(NULL, NULL, unsent, NULL, 0, &none, NULL);
    if (result == NULL)
        return -1;
    int rc = hand_up(self, result);
    Py_DECREF(result);
    return rc;
}

/*
 * One wake-up of the thread, media_lock held and the GIL released on entry and on
 * return: with the GIL, finish the previous read's fan-out and read this one (its
 * hand-ups go to the loop at once); without it, send the read's copies, so the event
 * loop runs Python meanwhile. The copies are finished with the GIL again at once only
 * when the kernel would not take some (asyncio must queue them before anything else is
 * sent); otherwise at the next wake-up, or by collect(). Returns 0, or -1 when the
 * thread must stop (the failure recorded for the loop).
 */
static int
reader_wake(IngressObject *self, PyThreadState **state, int closed)
{
    PyEval_RestoreThread(*state);
    FanoutBatch *batch = NULL;
    int rc = 0;
    if (finish_pending(self) < 0) {
        rc = -1;
    } else if (closed) {
        PyErr_SetString(PyExc_OSError, "the media socket was closed under the reader thread");
        rc = -1;
    } else {
        PyObject *result = drain_once(self, self->recv_fd, self->send_fd, monotonic_now(),
                                      &self->totals, &batch);
        if (result == NULL)
            rc = -1;
        else if (result != Py_None && hand_up(self, result) < 0)
            rc = -1;
        Py_XDECREF(result);
    }
    if (rc < 0) {
        record_failure(self);
        if (batch != NULL) {
            /* Not sent: drop its references (its counters are lost with the thread). */
            FanoutTotals ignored;
            PyObject *unsent = NULL;
            if (fanout_finish(batch, &ignored, &unsent) < 0)
                PyErr_Clear();
            Py_XDECREF(unsent);
        }
        *state = PyEval_SaveThread();
        return -1;
    }
    if (batch == NULL) {
        *state = PyEval_SaveThread();
        return 0;
    }
    *state = PyEval_SaveThread();
    fanout_run(batch);
    if (self->pending_seconds >= 0)
        self->pending_seconds = monotonic_now() - self->pending_seconds;
    self->pending = batch;
    if (!fanout_batch_deferred(batch))
        return 0;
    PyEval_RestoreThread(*state);
    if (finish_pending(self) < 0) {
        record_failure(self);
        rc = -1;
    }
    *state = PyEval_SaveThread();
    return rc;
}

static void *
reader_main(void *arg)
{
    IngressObject *self = (IngressObject *)arg;
    PyGILState_STATE gil = PyGILState_Ensure(); /* this thread's state, kept until the end */
    PyThreadState *state = PyEval_SaveThread();
    struct pollfd fds[2] = {{self->recv_fd, POLLIN, 0}, {self->stop_fd, POLLIN, 0}};
    for (;;) {
        int ready = poll(fds, 2, -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            int error = errno;
            PyEval_RestoreThread(state);
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
            record_failure(self);
            state = PyEval_SaveThread();
            break;
        }
        if (fds[1].revents)
            break; /* stop() */
        if (fds[0].revents == 0)
            continue;
        media_lock_blocking();
        int rc = reader_wake(self, &state, (fds[0].revents & POLLNVAL) != 0);
        media_unlock();
        if (rc < 0)
            break;
    }
    PyEval_RestoreThread(state);
    PyGILState_Release(gil);
    return NULL;
}

static int
make_eventfd(void)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        PyErr_SetFromErrno(PyExc_OSError);
    return fd;
}

PyDoc_STRVAR(start_doc,
"start(recv_fd, send_fd) -> wake_fd\n\n"
"Read recv_fd on a thread of its own from now on (see the reader thread in _ingress.c).\n"
"Returns the eventfd to watch: readable when take() has hand-ups or `failure` is set.\n"
"send_fd is the fan-out's socket; set the `send_fd` attribute to -1 while asyncio holds\n"
"queued datagrams. Stopped by stop(), which must run before recv_fd is closed.");

static PyObject *
Ingress_start(IngressObject *self, PyObject *args)
{
    int recv_fd, send_fd;
    if (!PyArg_ParseTuple(args, "ii:start", &recv_fd, &send_fd))
        return NULL;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "Ingress.start: the reader thread already runs");
        return NULL;
    }
    if (recv_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "Ingress.start: recv_fd must be an open socket");
        return NULL;
    }
    if (self->handups == NULL && (self->handups = PyList_New(0)) == NULL)
        return NULL;
    int stop_fd = make_eventfd();
    if (stop_fd < 0)
        return NULL;
    int wake_fd = make_eventfd();
    if (wake_fd < 0) {
        close(stop_fd);
        return NULL;
    }
    Py_CLEAR(self->failure);
    self->recv_fd = recv_fd;
    self->send_fd = send_fd;
    self->stop_fd = stop_fd;
    self->wake_fd = wake_fd;
    /* The thread never runs Python signal handlers: keep signals for the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    Py_INCREF(self); /* the thread's reference, dropped by stop() */
    int rc = pthread_create(&self->thread, NULL, reader_main, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) /* for `top -H`, perf and /proc/PID/task/TID/comm (15 characters at most) */
        (void)pthread_setname_np(self->thread, "callsctl-reader");
    if (rc != 0) {
        Py_DECREF(self);
        close(stop_fd);
        close(wake_fd);
        self->stop_fd = self->wake_fd = -1;
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->running = 1;
    return PyLong_FromLong(wake_fd);
}

static PyObject *
Ingress_stop(IngressObject *self, PyObject *unused)
{
    if (!self->running)
        Py_RETURN_NONE;
    uint64_t one = 1;
    if (write(self->stop_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        return PyErr_SetFromErrno(PyExc_OSError);
    pthread_t thread = self->thread;
    self->running = 0;
    Py_BEGIN_ALLOW_THREADS /* it may be waiting for the GIL to finish a drain */
    pthread_join(thread, NULL);
    Py_END_ALLOW_THREADS
    media_lock_with_gil();
    int finished = finish_pending(self); /* the thread's last read, sent but not counted */
    media_unlock();
    close(self->stop_fd);
    close(self->wake_fd);
    self->stop_fd = self->wake_fd = self->recv_fd = -1;
    Py_DECREF(self); /* the thread's; the caller still holds one */
    if (finished < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Ingress_take(IngressObject *self, PyObject *unused)
{
    uint64_t count;
    if (self->wake_fd >= 0 && read(self->wake_fd, &count, sizeof(count)) < 0) {
        /* EAGAIN: nothing was signalled since the last take() */
    }
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    PyObject *taken = self->handups ? self->handups : PyList_New(0);
    self->handups = fresh;
    return taken;
}

static PyObject *
Ingress_collect(IngressObject *self, PyObject *unused)
{
    media_lock_with_gil(); /* the thread may be sending its last read */
    int finished = finish_pending(self);
    media_unlock();
    if (finished < 0)
        return NULL;
    DrainCounts c = self->totals;
    PyObject *samples = self->samples;
    self->samples = NULL;
    memset(&self->totals, 0, sizeof(self->totals));
    return drain_result(NULL, NULL, NULL, samples, 0, &c, NULL);
}

static PyObject *
Ingress_get_failure(IngressObject *self, void *closure)
{
    return Py_NewRef(self->failure ? self->failure : Py_None);
}

static PyObject *
Ingress_get_running(IngressObject *self, void *closure)
{
    return PyBool_FromLong(self->running);
}

static PyGetSetDef Ingress_getset[] = {
    {"failure", (getter)Ingress_get_failure, NULL,
     "the exception that stopped the reader thread, or None", NULL},
    {"running", (getter)Ingress_get_running, NULL, "whether the reader thread runs", NULL},
    {NULL}
};

static PyMemberDef Ingress_members[] = {
    {"send_fd", T_INT, offsetof(IngressObject, send_fd), 0,
     "reader thread: the fan-out's socket, -1 while asyncio holds queued datagrams"},
    {"wakes", T_ULONGLONG, offsetof(IngressObject, wakes), READONLY,
     "times the reader thread woke the event loop"},
    {"drains", T_ULONGLONG, offsetof(IngressObject, drains), READONLY, "drain() calls"},
    {"fanouts", T_ULONGLONG, offsetof(IngressObject, fanouts), READONLY,
     "drain() calls that forwarded something"},
    {"late_drop", T_DOUBLE, offsetof(IngressObject, late_drop), 0,
     "seconds an audio packet may wait in the receive queue and still be forwarded; "
     "0 = no limit"},
    {NULL}
};

static PyMethodDef Ingress_methods[] = {
    {"add", (PyCFunction)Ingress_add, METH_VARARGS,
     "add((host, port), session): datagrams from this IPv4 source belong to `session`."},
    {"remove", (PyCFunction)Ingress_remove, METH_VARARGS,
     "remove((host, port)): forget a source (no error if unknown)."},
    {"drain", (PyCFunction)Ingress_drain, METH_VARARGS, drain_doc},
    {"start", (PyCFunction)Ingress_start, METH_VARARGS, start_doc},
    {"stop", (PyCFunction)Ingress_stop, METH_NOARGS,
     "stop(): stop and join the reader thread (no-op when none runs)."},
    {"take", (PyCFunction)Ingress_take, METH_NOARGS,
     "take() -> list: the reader thread's DrainResults for Python, in order (and clears "
     "the wake-up)."},
    {"collect", (PyCFunction)Ingress_collect, METH_NOARGS,
     "collect() -> DrainResult: the reader thread's counters and write-time samples since "
     "the last collect()."},
    {NULL}
};

static PySequenceMethods Ingress_as_sequence = {
    .sq_length = (lenfunc)Ingress_len,
};

static PyTypeObject IngressType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.Ingress",
    .tp_doc = "Ingress(): the media socket's reader in C (see drain()).",
    .tp_basicsize = sizeof(IngressObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Ingress_new,
    .tp_dealloc = (destructor)Ingress_dealloc,
    .tp_traverse = (traverseproc)Ingress_traverse,
    .tp_clear = (inquiry)Ingress_clear,
    .tp_members = Ingress_members,
    .tp_getset = Ingress_getset,
    .tp_methods = Ingress_methods,
    .tp_as_sequence = &Ingress_as_sequence,
};

static PyObject *
set_unprotect(PyObject *module, PyObject *arg)
{
    if (srtp_fn_from(arg, "srtp_unprotect", &srtp_unprotect_ptr) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
set_unprotect_rtcp(PyObject *module, PyObject *arg)
{
    if (srtp_fn_from(arg, "srtp_unprotect_rtcp", &srtcp_unprotect_ptr) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
media_acquire(PyObject *module, PyObject *unused)
{
    media_lock_with_gil();
    Py_RETURN_NONE;
}

static PyObject *
media_release(PyObject *module, PyObject *unused)
{
    if (media_held <= 0) {
        PyErr_SetString(PyExc_RuntimeError, "media_release: this thread does not hold it");
        return NULL;
    }
    media_unlock();
    Py_RETURN_NONE;
}

static PyMethodDef ingress_functions[] = {
    {"media_acquire", media_acquire, METH_NOARGS,
     "media_acquire(): take the lock the reader thread drains under (around a libsrtp call "
     "that releases the GIL)."},
    {"media_release", media_release, METH_NOARGS, "media_release(): give it back."},
    {"set_unprotect", set_unprotect, METH_O,
     "set_unprotect(address): libsrtp's srtp_unprotect, as pylibsrtp's cffi module exposes it."},
    {"set_unprotect_rtcp", set_unprotect_rtcp, METH_O,
     "set_unprotect_rtcp(address): libsrtp's srtp_unprotect_rtcp, likewise; until it is\n"
     "given, sessions' RTCP goes up to Python encrypted."},
    {NULL}
};

int
ingress_add_to_module(PyObject *module)
{
    PyTypeObject *types[] = {&ReceptionType, &InRouteType, &InSessionType, &IngressType};
    const char *names[] = {"Reception", "InRoute", "InSession", "Ingress"};
    for (int i = 0; i < 4; i++) {
        if (PyType_Ready(types[i]) < 0)
            return -1;
        Py_INCREF(types[i]);
        if (PyModule_AddObject(module, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            return -1;
        }
    }
    DrainResultType = PyStructSequence_NewType(&drain_desc);
    if (DrainResultType == NULL)
        return -1;
    Py_INCREF(DrainResultType);
    if (PyModule_AddObject(module, "DrainResult", (PyObject *)DrainResultType) < 0) {
        Py_DECREF(DrainResultType);
        return -1;
    }
    if (PyModule_AddFunctions(module, ingress_functions) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "RECV_SLOT", RECV_SLOT) < 0 ||
        PyModule_AddIntConstant(module, "VOICE_LEVEL_DBOV", VOICE_LEVEL_DBOV) < 0)
        return -1;
    PyObject *bounds = PyTuple_New(QUEUE_WAIT_BUCKETS - 1);
    if (bounds == NULL)
        return -1;
    for (int b = 0; b < QUEUE_WAIT_BUCKETS - 1; b++) {
        PyObject *value = PyLong_FromLongLong(QUEUE_WAIT_BOUNDS_US[b]);
        if (value == NULL) {
            Py_DECREF(bounds);
            return -1;
        }
        PyTuple_SET_ITEM(bounds, b, value);
    }
    if (PyModule_AddObject(module, "QUEUE_WAIT_BOUNDS_US", bounds) < 0) {
        Py_DECREF(bounds);
        return -1;
    }
    return 0;
}
