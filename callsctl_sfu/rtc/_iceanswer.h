/*
 * ICE consent STUN handled on the C ingress's reader thread (_iceanswer.c).
 *
 * Why: an idle joined session costs the server about 100 µs of CPU a second, and most
 * of it was STUN: the peer's consent check (RFC 7675) every ~5 s and the answer to the
 * server's own, each a hand-up that woke the event loop for aioice to parse, verify and
 * answer. For a session whose nominated pair is on the shared IPv4 socket both are now
 * done where the datagram is read: the peer's check answered, the answer to the
 * server's check verified and noted (IceState.consent_at, read by rtc/consent.py).
 * Anything else (first checks, another address, a role conflict, a wrong password, an
 * unknown comprehension-required attribute, error responses) goes up to aioice as before.
 */
#ifndef CALLSCTL_ICEANSWER_H
#define CALLSCTL_ICEANSWER_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#define ICE_CHECKS 8            /* the server's outstanding consent checks remembered */

/* A 32-bit network-order field (STUN, RTP and RTCP headers alike). */
static inline unsigned int
read32(const unsigned char *p)
{
    return ((unsigned int)p[0] << 24) | ((unsigned int)p[1] << 16) | ((unsigned int)p[2] << 8) |
           p[3];
}

/* The sources table's key of an IPv4 address and port (host byte order port). */
static inline unsigned long long
address_key(struct in_addr address, unsigned int port)
{
    return ((unsigned long long)ntohl(address.s_addr) << 16) | (port & 0xFFFFu);
}

/* A (host, port) as Python gives it, when it is IPv4: 1 with *address and *key set, else 0. */
static inline int
ipv4_key(const char *host, int port, struct in_addr *address, unsigned long long *key)
{
    if (port < 0 || port > 65535 || inet_pton(AF_INET, host, address) != 1)
        return 0;
    *key = address_key(*address, (unsigned int)port);
    return 1;
}

/* One consent check the server sent, waiting for its answer. */
typedef struct {
    unsigned char tid[12];
    unsigned long long to;      /* address_key the check went to */
    double sent_at;
    int waiting;
} IceCheck;

/* One session's ICE credentials and consent bookkeeping (inside InSession). */
typedef struct {
    PyObject *username;         /* bytes: the USERNAME of the peer's checks, "ours:theirs" */
    PyObject *check_username;   /* bytes: the USERNAME of our checks, "theirs:ours" */
    unsigned long long tie_breaker;  /* our role's tie-breaker (RFC 8445 §7.1.3) */
    unsigned int priority;      /* the PRIORITY our checks carry (RFC 8445 §7.1.1) */
    PyObject *local_key;        /* bytes: our ICE password (their checks, our answers) */
    PyObject *remote_key;       /* bytes: the peer's password (its answers to our checks) */
    PyObject *nominated;        /* aioice's live dict: component -> nominated pair */
    PyObject *pair;             /* the pair pair_key was read from */
    unsigned long long pair_key;
    int controlling;
    IceCheck checks[ICE_CHECKS];
    int next_check;
    double consent_at;          /* loop time of the last answer to our checks taken here */
    double round_trip;          /* that answer's round trip, seconds */
    unsigned long long answered;  /* the peer's checks answered here */
    unsigned long long taken;     /* answers to our checks taken here */
} IceState;

/* set_ice(**keywords): see InSession.set_ice. 0, or -1 with an error. */
int ice_state_set(IceState *state, PyObject *args, PyObject *kwds);
/* send_check(transaction_id, sent_at, (host, port), fd, source=None): our consent check,
   built, signed and sent here (from the local IPv4 address `source`, when given) and
   remembered for its answer. Octets sent, 0 when the kernel would not
   take it now, or -1 with an error. */
Py_ssize_t ice_state_send_check(IceState *state, PyObject *args);
/* expect_answer(transaction_id, sent_at, (host, port)). 0, or -1 with an error. */
int ice_state_expect(IceState *state, PyObject *args);
int ice_state_traverse(IceState *state, visitproc visit, void *arg);
void ice_state_clear(IceState *state);

/*
 * A STUN datagram (RFC 7983: first byte 0-3) from `source` (address_key of `sa`) for
 * this session, sent to our `destination` (NULL: unknown), GIL held: 1 when handled here
 * (answered on send_fd from `destination`, *sent_octets set; or an answer to our check
 * taken), 0 to hand it up to Python. Never raises.
 */
int ice_handle(IceState *state, unsigned char *data, int length, const struct sockaddr_in *sa,
               const struct in_addr *destination, unsigned long long source, int send_fd,
               double now, int *sent_octets);

#endif
