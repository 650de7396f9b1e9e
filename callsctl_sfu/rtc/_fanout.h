/*
 * What the two halves of the C media path share.
 *
 * _fanout.c sends: one decrypted RTP packet, rewritten, SRTP-protected and sent
 * to every receiver of a plan (fanout_send). _ingress.c receives: it reads the
 * media socket, decrypts the audio of publishers whose routes Python has
 * registered, and hands each packet to fanout_send; everything else goes up to
 * Python. Whoever makes copies holds the media lock (media_lock_with_gil): the
 * server's event loop for its own fan-outs, the ingress's reader thread for each
 * read. The copies themselves (phase 2: rewrite, protect, send) need no GIL, so the
 * reader thread makes them with the GIL released and the event loop runs Python
 * meanwhile.
 */
#ifndef CALLSCTL_FANOUT_H
#define CALLSCTL_FANOUT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* libsrtp 2: srtp_err_status_t srtp_protect/srtp_unprotect(srtp_t ctx, void *rtp, int *len). */
typedef int (*srtp_fn)(void *ctx, void *rtp, int *len);

/* A libsrtp function's address as Python hands it over (an int from pylibsrtp's cffi
   module) into *out: 0, or -1 with an exception naming `name`. */
static inline int
srtp_fn_from(PyObject *address_obj, const char *name, srtp_fn *out)
{
    void *address = PyLong_AsVoidPtr(address_obj);
    if (address == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "null %s address", name);
        return -1;
    }
    *out = (srtp_fn)address;
    return 0;
}

#define BATCH 64                /* datagrams per sendmmsg / recvmmsg call */
#define MAX_HEADER 20           /* 12-octet header + 8-octet audio-level extension */
#define MAX_PAYLOAD (2048 - MAX_HEADER - 144)

/* The packet every copy is made from. */
typedef struct {
    int fd;
    int first_byte;
    int marker;
    unsigned int sequence;
    unsigned int timestamp;
    unsigned int ssrc;
    int level_byte;             /* < 0: none */
    const unsigned char *payload;
    Py_ssize_t payload_len;
} Packet;

/* What one fanout_send did. */
typedef struct {
    Py_ssize_t sent;
    Py_ssize_t send_errors;
    Py_ssize_t srtp_errors;
    unsigned long long plain_octets;
    unsigned long long wire_octets;
} FanoutTotals;

/* One packet to every Target in `targets` (a list); see _fanout.c. 0, or -1 with an error. */
int fanout_send(const Packet *packet, PyObject *targets, FanoutTotals *totals,
                PyObject **stale, PyObject **unsent);

/*
 * The fan-outs of n packets of one read, in three steps so the sending needs no GIL:
 * fanout_prepare (GIL held: checks the targets, copies out what the copies need and
 * holds a reference on every Target; a targets[i] made by fanout_compile is used as it
 * is, holding one reference on it), fanout_run (no GIL needed, the media lock held:
 * every copy rewritten, protected and sent or deferred; packets of different groups,
 * i.e. calls, may run on different pool threads at once, a big fan-out is split in
 * slices) and fanout_finish (GIL held: totals summed, the deferred datagrams as
 * (bytes, addr) in batch order, references dropped, the batch freed). The packets'
 * payloads must stay valid until fanout_run returns.
 */
typedef struct FanoutBatch FanoutBatch;
FanoutBatch *fanout_prepare(const Packet *packets, PyObject *const *targets,
                            const long long *groups, Py_ssize_t n);
void fanout_run(FanoutBatch *batch);
int fanout_batch_parallel(const FanoutBatch *batch);  /* 1 when run uses the pool */
int fanout_batch_deferred(const FanoutBatch *batch);  /* 1 when run deferred a datagram */
int fanout_finish(FanoutBatch *batch, FanoutTotals *totals, PyObject **unsent);

/* A route's plan as the fan-out's copies, laid out once (see _fanout.c): a new reference,
   or NULL with TypeError when an item is not a live Target. fanout_prepare takes it in
   place of a list. */
PyObject *fanout_compile(PyObject *targets);
/* 1 when every Target of a compiled plan still uses the nominated pair it was made from,
   0 if not, -1 with an exception set; no look-up while no nomination changed. */
int fanout_compiled_fresh(PyObject *compiled);

/* The media lock (_ingress.c): one user at a time of every srtp_t, Rewrite and the
   static send and receive buffers. Taken with the GIL held: a try first, else waited
   for with the GIL released; nests on the thread that holds it. */
void media_lock_with_gil(void);
void media_unlock(void);

/* Adds the ingress types and functions to the module (_ingress.c). 0 or -1. */
int ingress_add_to_module(PyObject *module);

/* SrtpSealer (_srtpseal.c): a receiver's outgoing RTP protected by this module, not
   libsrtp (AES-CM + HMAC-SHA1 or AES-GCM). sealer_protect has srtp_protect's signature; the media lock
   guards a sealer as it guards an srtp_t. */
extern PyTypeObject SealerType;
int sealer_protect(void *sealer, void *rtp, int *len);
int sealer_supported(void);
int sealer_add_to_module(PyObject *module);

/* Adds ReceivePump, the load generator's receive thread (_recvpump.c). 0 or -1. */
int recvpump_add_to_module(PyObject *module);

#endif
