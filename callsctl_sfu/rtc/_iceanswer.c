/*
 * ICE consent STUN answered and taken on the reader thread (see _iceanswer.h for why).
 *
 * The message format is RFC 8489's: a 20-octet header (type, length, the magic cookie
 * 0x2112A442, a 96-bit transaction id) and 4-octet-aligned attributes. Integrity is
 * RFC 8489 §14.5 (HMAC-SHA1 with the short-term password, over the message up to the
 * attribute, the header's length counting the attribute) and §14.7 (CRC-32 of the
 * message up to FINGERPRINT, XOR 0x5354554E). ICE's use of them, the USERNAME
 * "receiver:sender" and the role attributes, is RFC 8445 §7.2.2 and §7.3.1.
 *
 * The HMAC and CRC-32 are Python's own (`hmac.digest`, `zlib.crc32`, both OpenSSL or
 * zlib underneath): this runs with the GIL held, a few times a second per session.
 * What is answered is exactly what aioice would answer (Connection.request_received):
 * a Binding success with XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and FINGERPRINT.
 */
#include "_iceanswer.h"
#include "_pktinfo.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#define STUN_HEADER 20
#define STUN_COOKIE 0x2112A442u
#define FINGERPRINT_XOR 0x5354554Eu
#define BINDING_REQUEST 0x0001
#define BINDING_SUCCESS 0x0101
#define ATTR_USERNAME 0x0006
#define ATTR_MESSAGE_INTEGRITY 0x0008
#define ATTR_PRIORITY 0x0024
#define ATTR_USE_CANDIDATE 0x0025
#define ATTR_FINGERPRINT 0x8028
#define ATTR_ICE_CONTROLLED 0x8029
#define ATTR_ICE_CONTROLLING 0x802A
#define ATTR_XOR_MAPPED_ADDRESS 0x0020
#define HMAC_SHA1_LEN 20
#define ANSWER_LEN (STUN_HEADER + 12 + 24 + 8)
#define MAX_USERNAME 512        /* RFC 8489 §14.3: USERNAME is under 513 octets */

static PyObject *hmac_digest = NULL;    /* hmac.digest */
static PyObject *zlib_crc32 = NULL;     /* zlib.crc32 */
static PyObject *component_one = NULL;  /* 1: the RTP component's key in `nominated` */

/* Where the attributes this file reads are in one message (offsets, -1: absent). */
typedef struct {
    int type;
    int username, username_len;
    int integrity;
    int fingerprint;
    int controlling, controlled, use_candidate;
    int unknown_required;       /* an attribute under 0x8000 this file does not know */
} StunView;

static unsigned int
read16(const unsigned char *p)
{
    return ((unsigned int)p[0] << 8) | p[1];
}

static void
write16(unsigned char *p, unsigned int value)
{
    p[0] = (unsigned char)(value >> 8);
    p[1] = (unsigned char)value;
}

static void
write32(unsigned char *p, unsigned int value)
{
    p[0] = (unsigned char)(value >> 24);
    p[1] = (unsigned char)(value >> 16);
    p[2] = (unsigned char)(value >> 8);
    p[3] = (unsigned char)value;
}

/* Parse the header and attribute list; -1 when it is not a well-formed STUN message, or
   anything but FINGERPRINT follows MESSAGE-INTEGRITY (RFC 8489 §14.5), or anything
   follows FINGERPRINT (§14.7). */
static int
stun_view(const unsigned char *data, int length, StunView *view)
{
    memset(view, 0, sizeof(*view));
    view->username = view->integrity = view->fingerprint = -1;
    if (length < STUN_HEADER || (length & 3) || data[0] > 3)
        return -1;
    if ((int)read16(data + 2) + STUN_HEADER != length || read32(data + 4) != STUN_COOKIE)
        return -1;
    view->type = (int)read16(data);
    int offset = STUN_HEADER;
    while (offset < length) {
        if (offset + 4 > length || view->fingerprint >= 0)
            return -1;
        unsigned int type = read16(data + offset);
        int size = (int)read16(data + offset + 2);
        if (offset + 4 + size > length)
            return -1;
        if (view->integrity >= 0 && type != ATTR_FINGERPRINT)
            return -1;
        switch (type) {
        case ATTR_USERNAME:
            view->username = offset + 4;
            view->username_len = size;
            break;
        case ATTR_MESSAGE_INTEGRITY:
            if (size != HMAC_SHA1_LEN)
                return -1;
            view->integrity = offset;
            break;
        case ATTR_FINGERPRINT:
            if (size != 4)
                return -1;
            view->fingerprint = offset;
            break;
        case ATTR_ICE_CONTROLLING:
            view->controlling = 1;
            break;
        case ATTR_ICE_CONTROLLED:
            view->controlled = 1;
            break;
        case ATTR_USE_CANDIDATE:
            view->use_candidate = 1;
            break;
        case ATTR_PRIORITY:
            break;
        default:
            if (type < 0x8000)
                view->unknown_required = 1;
        }
        offset += 4 + ((size + 3) & ~3);
    }
    return offset == length ? 0 : -1;
}

static int
load_functions(void)
{
    if (hmac_digest != NULL)
        return 0;
    PyObject *hmac = PyImport_ImportModule("hmac");
    PyObject *zlib = hmac ? PyImport_ImportModule("zlib") : NULL;
    PyObject *digest = hmac ? PyObject_GetAttrString(hmac, "digest") : NULL;
    PyObject *crc32 = zlib ? PyObject_GetAttrString(zlib, "crc32") : NULL;
    PyObject *one = PyLong_FromLong(1);
    Py_XDECREF(hmac);
    Py_XDECREF(zlib);
    if (digest == NULL || crc32 == NULL || one == NULL) {
        Py_XDECREF(digest);
        Py_XDECREF(crc32);
        Py_XDECREF(one);
        return -1;
    }
    hmac_digest = digest;
    zlib_crc32 = crc32;
    component_one = one;
    return 0;
}

/* HMAC-SHA1(key, data[0:length]) into out; 0, or -1 (error cleared). */
static int
hmac_sha1(PyObject *key, const unsigned char *data, int length, unsigned char *out)
{
    PyObject *digest = PyObject_CallFunction(hmac_digest, "Oy#s", key, (const char *)data,
                                             (Py_ssize_t)length, "sha1");
    if (digest == NULL || !PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != HMAC_SHA1_LEN) {
        Py_XDECREF(digest);
        PyErr_Clear();
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(digest), HMAC_SHA1_LEN);
    Py_DECREF(digest);
    return 0;
}

/* CRC-32 of data[0:length] XOR 0x5354554E (RFC 8489 §14.7) into *out; 0, or -1. */
static int
fingerprint_of(const unsigned char *data, int length, unsigned int *out)
{
    PyObject *crc = PyObject_CallFunction(zlib_crc32, "y#", (const char *)data,
                                          (Py_ssize_t)length);
    if (crc == NULL) {
        PyErr_Clear();
        return -1;
    }
    unsigned long value = PyLong_AsUnsignedLongMask(crc);
    Py_DECREF(crc);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *out = (unsigned int)value ^ FINGERPRINT_XOR;
    return 0;
}

/* Whether a message's MESSAGE-INTEGRITY and FINGERPRINT (both required here) hold. The
   header's length is set to end at MESSAGE-INTEGRITY while its HMAC is computed, as the
   sender did, and restored. */
static int
authentic(PyObject *key, unsigned char *data, int length, const StunView *view)
{
    if (view->integrity < 0 || view->fingerprint < 0)
        return 0;
    unsigned int fingerprint;
    if (fingerprint_of(data, view->fingerprint, &fingerprint) < 0 ||
        fingerprint != read32(data + view->fingerprint + 4))
        return 0;
    unsigned char saved[2] = {data[2], data[3]};
    write16(data + 2, (unsigned int)(view->integrity + 4 + HMAC_SHA1_LEN - STUN_HEADER));
    unsigned char mac[HMAC_SHA1_LEN];
    int ok = hmac_sha1(key, data, view->integrity, mac) == 0;
    data[2] = saved[0];
    data[3] = saved[1];
    if (!ok)
        return 0;
    unsigned char differ = 0;  /* compared in full: no early exit on the first difference */
    for (int i = 0; i < HMAC_SHA1_LEN; i++)
        differ |= mac[i] ^ data[view->integrity + 4 + i];
    return differ == 0;
}

/* Append MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) and FINGERPRINT to the `length` octets
   of a message whose header is written, setting the header's length for each as RFC 8489
   §14.5 and §14.7 say. The new length, or -1 (error cleared). The buffer has room for 32
   more octets. */
static int
seal(PyObject *key, unsigned char *message, int length)
{
    write16(message + 2, (unsigned int)(length + 24 - STUN_HEADER));
    write16(message + length, ATTR_MESSAGE_INTEGRITY);
    write16(message + length + 2, HMAC_SHA1_LEN);
    if (hmac_sha1(key, message, length, message + length + 4) < 0)
        return -1;
    length += 24;
    write16(message + 2, (unsigned int)(length + 8 - STUN_HEADER));
    unsigned int fingerprint;
    if (fingerprint_of(message, length, &fingerprint) < 0)
        return -1;
    write16(message + length, ATTR_FINGERPRINT);
    write16(message + length + 2, 4);
    write32(message + length + 4, fingerprint);
    return length + 8;
}

/* One datagram to `to`, from `from` (NULL: the kernel's choice of source address): 1 when
   the kernel took all of it, else 0. */
static int
send_whole(int fd, const unsigned char *message, int length, const struct sockaddr_in *to,
           const struct in_addr *from)
{
    struct iovec vector = {(void *)message, (size_t)length};
    struct msghdr header;
    memset(&header, 0, sizeof(header));
    header.msg_name = (void *)to;
    header.msg_namelen = sizeof(*to);
    header.msg_iov = &vector;
    header.msg_iovlen = 1;
    SourceControl control;
    set_source(&header, &control, from);
    ssize_t sent;
    do {
        sent = sendmsg(fd, &header, 0);
    } while (sent < 0 && errno == EINTR);
    return sent == length;
}

/* The address_key of the nominated pair's remote address, or 0 (none, or not IPv4). */
static unsigned long long
nominated_key(IceState *state)
{
    PyObject *pair = PyDict_GetItemWithError(state->nominated, component_one);
    if (pair == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (pair == state->pair)
        return state->pair_key;
    unsigned long long key = 0;
    Py_INCREF(pair); /* getattr may run Python that changes the dict meanwhile */
    PyObject *addr = PyObject_GetAttrString(pair, "remote_addr");
    const char *host;
    int port;
    struct in_addr address;
    if (addr == NULL || !PyArg_ParseTuple(addr, "si", &host, &port) ||
        !ipv4_key(host, port, &address, &key))
        key = 0;
    Py_XDECREF(addr);
    PyErr_Clear();
    Py_XSETREF(state->pair, pair); /* the reference taken above */
    state->pair_key = key;
    return key;
}

/* The peer's consent check on the nominated pair: answered here when aioice would only
   answer it (RFC 8445 §7.3.1: authenticated, no role conflict), else 0. */
static int
answer_check(IceState *state, unsigned char *data, int length, const StunView *view,
             const struct sockaddr_in *sa, const struct in_addr *destination,
             unsigned long long source, int send_fd, int *sent_octets)
{
    if (view->unknown_required || view->username < 0 || source != nominated_key(state))
        return 0;
    if (state->controlling ? view->controlling : view->controlled)
        return 0; /* a role conflict: aioice decides */
    if (view->username_len != PyBytes_GET_SIZE(state->username) ||
        memcmp(data + view->username, PyBytes_AS_STRING(state->username),
               (size_t)view->username_len) != 0)
        return 0;
    if (!authentic(state->local_key, data, length, view))
        return 0; /* aioice answers 401 (RFC 8489 §9.1.3) */

    unsigned char answer[ANSWER_LEN];
    write16(answer, BINDING_SUCCESS);
    memcpy(answer + 4, data + 4, 16); /* the cookie and the transaction id */
    unsigned char *attr = answer + STUN_HEADER;
    write16(attr, ATTR_XOR_MAPPED_ADDRESS);
    write16(attr + 2, 8);
    attr[4] = 0;
    attr[5] = 0x01; /* IPv4 */
    write16(attr + 6, ntohs(sa->sin_port) ^ (STUN_COOKIE >> 16));
    write32(attr + 8, ntohl(sa->sin_addr.s_addr) ^ STUN_COOKIE);
    if (seal(state->local_key, answer, STUN_HEADER + 12) != ANSWER_LEN)
        return 0;
    /* From the address the check went to: a host with several has to say which. */
    if (!send_whole(send_fd, answer, ANSWER_LEN, sa, destination))
        return 0; /* the kernel would not take it now: Python answers through asyncio */
    state->answered += 1;
    *sent_octets = ANSWER_LEN;
    return 1;
}

/* An answer to one of our consent checks from where it went: consent, when authentic
   with the peer's password (RFC 7675 §5.1). 0 for anything else (aioice's own
   transactions, error responses). */
static int
take_answer(IceState *state, unsigned char *data, int length, const StunView *view,
            unsigned long long source, double now)
{
    for (int i = 0; i < ICE_CHECKS; i++) {
        IceCheck *check = &state->checks[i];
        if (!check->waiting || check->to != source || memcmp(check->tid, data + 8, 12) != 0)
            continue;
        double sent_at = check->sent_at;
        /* The HMAC is a Python call: the event loop may send a check meanwhile and reuse
           this slot, so the slot is cleared only if it still holds this check. */
        if (!authentic(state->remote_key, data, length, view))
            return 0;
        if (check->waiting && memcmp(check->tid, data + 8, 12) == 0)
            check->waiting = 0;
        state->consent_at = now;
        state->round_trip = now - sent_at;
        state->taken += 1;
        return 1;
    }
    return 0;
}

int
ice_handle(IceState *state, unsigned char *data, int length, const struct sockaddr_in *sa,
           const struct in_addr *destination, unsigned long long source, int send_fd,
           double now, int *sent_octets)
{
    *sent_octets = 0;
    if (state->nominated == NULL || load_functions() < 0) {
        PyErr_Clear();
        return 0;
    }
    StunView view;
    if (stun_view(data, length, &view) < 0)
        return 0; /* malformed: Python counts and logs it */
    if (view.type == BINDING_REQUEST && send_fd >= 0)
        return answer_check(state, data, length, &view, sa, destination, source, send_fd,
                            sent_octets);
    if (view.type == BINDING_SUCCESS)
        return take_answer(state, data, length, &view, source, now);
    return 0;
}

static int
require_bytes(PyObject *value, const char *what)
{
    if (!PyBytes_Check(value)) {
        PyErr_Format(PyExc_TypeError, "set_ice: %s must be bytes", what);
        return -1;
    }
    return 0;
}

int
ice_state_set(IceState *state, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"username", "local_key", "remote_key", "controlling", "nominated",
                             "check_username", "tie_breaker", "priority", NULL};
    PyObject *username, *local_key, *remote_key, *nominated, *check_username;
    int controlling;
    unsigned long long tie_breaker;
    unsigned int priority;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$OOOpO!OKI:set_ice", kwlist, &username,
                                     &local_key, &remote_key, &controlling, &PyDict_Type,
                                     &nominated, &check_username, &tie_breaker, &priority))
        return -1;
    if (require_bytes(username, "username") < 0 || require_bytes(local_key, "local_key") < 0 ||
        require_bytes(remote_key, "remote_key") < 0 ||
        require_bytes(check_username, "check_username") < 0)
        return -1;
    if (PyBytes_GET_SIZE(check_username) > MAX_USERNAME) {
        PyErr_Format(PyExc_ValueError, "set_ice: check_username over %d octets", MAX_USERNAME);
        return -1;
    }
    if (load_functions() < 0)
        return -1;
    Py_XSETREF(state->check_username, Py_NewRef(check_username));
    state->tie_breaker = tie_breaker;
    state->priority = priority;
    Py_XSETREF(state->username, Py_NewRef(username));
    Py_XSETREF(state->local_key, Py_NewRef(local_key));
    Py_XSETREF(state->remote_key, Py_NewRef(remote_key));
    Py_XSETREF(state->nominated, Py_NewRef(nominated));
    Py_CLEAR(state->pair);
    state->pair_key = 0;
    state->controlling = controlling;
    return 0;
}

/* Remember a check we sent, for its answer (the oldest of ICE_CHECKS is forgotten). */
static void
remember_check(IceState *state, const unsigned char *tid, unsigned long long to, double sent_at)
{
    IceCheck *check = &state->checks[state->next_check];
    state->next_check = (state->next_check + 1) % ICE_CHECKS;
    memcpy(check->tid, tid, 12);
    check->to = to;
    check->sent_at = sent_at;
    check->waiting = 1;
}

Py_ssize_t
ice_state_send_check(IceState *state, PyObject *args)
{
    Py_buffer tid;
    double sent_at;
    const char *host, *from_text = NULL;
    int port, fd;
    struct sockaddr_in to;
    struct in_addr from;
    unsigned long long to_key;
    if (!PyArg_ParseTuple(args, "y*d(si)i|z:send_check", &tid, &sent_at, &host, &port, &fd,
                          &from_text))
        return -1;
    memset(&to, 0, sizeof(to));
    to.sin_family = AF_INET;
    int ok = tid.len == 12 && ipv4_key(host, port, &to.sin_addr, &to_key) &&
             (from_text == NULL || parse_source(from_text, &from));
    if (!ok || state->check_username == NULL) {
        PyBuffer_Release(&tid);
        PyErr_SetString(PyExc_ValueError, state->check_username == NULL
                        ? "send_check: set_ice() first"
                        : "send_check: a 12-octet transaction id, an IPv4 (host, port) and "
                          "an IPv4 source or None");
        return -1;
    }
    to.sin_port = htons((unsigned short)port);

    /* RFC 8445 §7.2.2: USERNAME, PRIORITY, the role with its tie-breaker; then
       MESSAGE-INTEGRITY with the peer's password and FINGERPRINT (aioice's order). */
    unsigned char request[STUN_HEADER + 4 + MAX_USERNAME + 4 + 8 + 4 + 8 + 4 + 24 + 8];
    memset(request, 0, sizeof(request));
    write16(request, BINDING_REQUEST);
    write32(request + 4, STUN_COOKIE);
    memcpy(request + 8, tid.buf, 12);
    PyBuffer_Release(&tid);
    int length = STUN_HEADER;
    int name_len = (int)PyBytes_GET_SIZE(state->check_username);
    write16(request + length, ATTR_USERNAME);
    write16(request + length + 2, (unsigned int)name_len);
    memcpy(request + length + 4, PyBytes_AS_STRING(state->check_username), (size_t)name_len);
    length += 4 + ((name_len + 3) & ~3);
    write16(request + length, ATTR_PRIORITY);
    write16(request + length + 2, 4);
    write32(request + length + 4, state->priority);
    length += 8;
    write16(request + length, state->controlling ? ATTR_ICE_CONTROLLING : ATTR_ICE_CONTROLLED);
    write16(request + length + 2, 8);
    write32(request + length + 4, (unsigned int)(state->tie_breaker >> 32));
    write32(request + length + 8, (unsigned int)state->tie_breaker);
    length = seal(state->remote_key, request, length + 12);
    if (length < 0) {
        PyErr_SetString(PyExc_RuntimeError, "send_check: HMAC-SHA1 or CRC-32 failed");
        return -1;
    }
    if (!send_whole(fd, request, length, &to, from_text != NULL ? &from : NULL))
        return 0;
    remember_check(state, request + 8, to_key, sent_at);
    return length;
}

int
ice_state_expect(IceState *state, PyObject *args)
{
    Py_buffer tid;
    double sent_at;
    const char *host;
    int port;
    struct in_addr address;
    unsigned long long key;
    if (!PyArg_ParseTuple(args, "y*d(si):expect_answer", &tid, &sent_at, &host, &port))
        return -1;
    int ok = tid.len == 12;
    if (ok && ipv4_key(host, port, &address, &key))
        remember_check(state, tid.buf, key, sent_at);
    PyBuffer_Release(&tid);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "expect_answer: a transaction id is 12 octets");
        return -1;
    }
    return 0; /* not IPv4: its answer never reaches this socket's reader */
}

int
ice_state_traverse(IceState *state, visitproc visit, void *arg)
{
    Py_VISIT(state->username);
    Py_VISIT(state->check_username);
    Py_VISIT(state->local_key);
    Py_VISIT(state->remote_key);
    Py_VISIT(state->nominated);
    Py_VISIT(state->pair);
    return 0;
}

void
ice_state_clear(IceState *state)
{
    Py_CLEAR(state->username);
    Py_CLEAR(state->check_username);
    Py_CLEAR(state->local_key);
    Py_CLEAR(state->remote_key);
    Py_CLEAR(state->nominated);
    Py_CLEAR(state->pair);
}
