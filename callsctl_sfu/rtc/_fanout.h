/*
 * What the two halves of the C media path share.
 *
 * _fanout.c sends: one decrypted RTP packet, rewritten, SRTP-protected and sent
 * to every receiver of a plan (fanout_send). _ingress.c receives: it reads the
 * media socket, decrypts the audio of publishers whose routes Python has
 * registered, and hands each packet to fanout_send; everything else goes up to
 * Python. Both run on the thread that holds the GIL: the server's event loop, or
 * the ingress's reader thread (_ingress.c); fanout_send's parallel phase releases
 * it only while no reader thread runs (fanout_keep_gil).
 */
#ifndef CALLSCTL_FANOUT_H
#define CALLSCTL_FANOUT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* libsrtp 2: srtp_err_status_t srtp_protect/srtp_unprotect(srtp_t ctx, void *rtp, int *len). */
typedef int (*srtp_fn)(void *ctx, void *rtp, int *len);

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

/* The fan-outs of n packets of one read; packets of different groups (calls) may run on
   different pool threads at once. Totals summed; unsent in batch order. 0, or -1. */
int fanout_send_many(const Packet *packets, PyObject *const *targets, const long long *groups,
                     Py_ssize_t n, FanoutTotals *totals, PyObject **unsent);

/* 1 when every item is a Target whose nominated pair is still current, 0 if not, -1 error. */
int fanout_targets_fresh(PyObject *targets);

/* Non-zero while an ingress reader thread runs: fan-outs then keep the GIL (_fanout.c). */
extern int fanout_keep_gil;

/* Adds the ingress types and functions to the module (_ingress.c). 0 or -1. */
int ingress_add_to_module(PyObject *module);

#endif
