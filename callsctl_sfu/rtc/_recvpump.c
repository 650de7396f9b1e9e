/*
 * The load generator's receive path: many participants' sockets read on one C thread.
 *
 * Why: in delivered mode every copy the server forwards is read by a participant of
 * `callsctl loadtest`, 100,000 datagrams a second at the guide's 1 x 1000. Read by
 * asyncio, each costs an event-loop wake-up of that participant's socket, a recvfrom
 * and a Python callback, several microseconds; the generator then needs most of a core
 * and shares the machine with the server it measures. What it does with a copy is
 * small: count it under its SSRC, and hand every Nth of a probe participant to Python
 * for its delay stamp. This thread does that for every registered socket (epoll,
 * recvmmsg) without the GIL, and queues for Python only what needs it: every datagram
 * that is not SRTP/SRTCP (STUN, DTLS: the participant's ICE and DTLS stay aioice's and
 * aiortc's), the sampled packets with their arrival time, SRTCP when asked (keyframe
 * requests for a video sender), and receive errors (ICMP). One write of an eventfd
 * wakes the event loop when the queue stops being empty.
 *
 * Locking: `lock` guards the slots and the queue. The thread holds it for each socket's
 * reads, so once remove() has returned the thread never touches that descriptor again
 * and the caller may close it. The thread never takes the GIL; Python's calls take
 * `lock` only briefly (waiting, if they must, with the GIL released).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PUMP_BATCH 64           /* datagrams per recvmmsg */
#define PUMP_DATAGRAM 2048      /* bigger than any datagram the server sends */
#define PUMP_SSRCS 32           /* SSRCs counted per socket; more are counted as `other` */
#define PUMP_QUEUE 4096         /* hand-ups waiting for Python; more are dropped, counted */
#define STOP_TOKEN UINT32_MAX

enum { KIND_DATAGRAM = 0, KIND_SAMPLE = 1, KIND_RTCP = 2, KIND_ERROR = 3 };

typedef struct {
    unsigned int ssrc;
    unsigned long long count;
} SsrcCount;

typedef struct {
    int fd;                     /* -1: free */
    int every;                  /* hand up every `every`-th packet of an SSRC (0: none) */
    int watch_rtcp;             /* hand SRTCP up too */
    unsigned long long rtcp_in;
    unsigned long long other;   /* packets of SSRCs beyond PUMP_SSRCS */
    double first_media;         /* CLOCK_MONOTONIC seconds of the first SRTP; < 0: none */
    int nssrcs;
    SsrcCount ssrcs[PUMP_SSRCS];
} Slot;

typedef struct {
    int slot;
    int kind;
    int error;                  /* KIND_ERROR: errno */
    int len;
    double arrived;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned char data[PUMP_DATAGRAM];
} Handup;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_t thread;
    int running;
    int epoll_fd, stop_fd, wake_fd;
    Slot *slots;
    int nslots;
    Handup *queue;              /* ring of PUMP_QUEUE */
    int head, count;
    unsigned long long dropped, datagrams, wakes;
    /* the thread's receive buffers */
    unsigned char (*buffers)[PUMP_DATAGRAM];
    struct mmsghdr messages[PUMP_BATCH];
    struct iovec vectors[PUMP_BATCH];
    struct sockaddr_storage addrs[PUMP_BATCH];
} PumpObject;

static double
now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s and asyncio's clock */
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Queue one hand-up (lock held); wakes the loop when the queue was empty. */
static void
hand_up(PumpObject *self, int slot, int kind, int error, const unsigned char *data, int len,
        const struct sockaddr_storage *addr, socklen_t addrlen, double arrived)
{
    if (self->count >= PUMP_QUEUE) {
        self->dropped += 1;
        return;
    }
    Handup *h = &self->queue[(self->head + self->count) % PUMP_QUEUE];
    h->slot = slot;
    h->kind = kind;
    h->error = error;
    h->len = len;
    h->arrived = arrived;
    if (len > 0)
        memcpy(h->data, data, (size_t)len);
    h->addrlen = addr != NULL ? addrlen : 0;
    if (addr != NULL)
        memcpy(&h->addr, addr, sizeof(*addr));
    if (self->count++ == 0) {
        uint64_t one = 1;
        self->wakes += 1;
        if (write(self->wake_fd, &one, sizeof(one)) < 0) {
            /* EAGAIN: already signalled */
        }
    }
}

/* One datagram of slot `index` (lock held): counted, or handed up. */
static void
classify(PumpObject *self, int index, const unsigned char *data, int len,
         const struct sockaddr_storage *addr, socklen_t addrlen, double arrived)
{
    Slot *slot = &self->slots[index];
    self->datagrams += 1;
    if (len > 12 && data[0] > 127 && data[0] < 192) {
        if (data[1] > 191 && data[1] < 224) { /* SRTCP (RFC 5761 §4) */
            slot->rtcp_in += 1;
            if (slot->watch_rtcp)
                hand_up(self, index, KIND_RTCP, 0, data, len, addr, addrlen, arrived);
            return;
        }
        unsigned int ssrc = (unsigned int)data[8] << 24 | (unsigned int)data[9] << 16 |
                            (unsigned int)data[10] << 8 | data[11];
        unsigned long long count = 0;
        int i;
        for (i = 0; i < slot->nssrcs; i++) {
            if (slot->ssrcs[i].ssrc == ssrc) {
                count = ++slot->ssrcs[i].count;
                break;
            }
        }
        if (i == slot->nssrcs) {
            if (slot->nssrcs < PUMP_SSRCS) {
                slot->ssrcs[slot->nssrcs].ssrc = ssrc;
                slot->ssrcs[slot->nssrcs].count = count = 1;
                slot->nssrcs += 1;
            } else {
                slot->other += 1;
            }
        }
        if (slot->first_media < 0)
            slot->first_media = arrived;
        if (slot->every > 0 && count > 0 && count % (unsigned long long)slot->every == 0)
            hand_up(self, index, KIND_SAMPLE, 0, data, len, addr, addrlen, arrived);
        return;
    }
    hand_up(self, index, KIND_DATAGRAM, 0, data, len, addr, addrlen, arrived);
}

/* Everything queued on slot `index`'s socket (lock held). */
static void
read_slot(PumpObject *self, int index)
{
    Slot *slot = &self->slots[index];
    for (int rounds = 0; rounds < 64 && slot->fd >= 0; rounds++) {
        for (int i = 0; i < PUMP_BATCH; i++) {
            self->vectors[i].iov_base = self->buffers[i];
            self->vectors[i].iov_len = PUMP_DATAGRAM;
            memset(&self->messages[i].msg_hdr, 0, sizeof(struct msghdr));
            self->messages[i].msg_hdr.msg_iov = &self->vectors[i];
            self->messages[i].msg_hdr.msg_iovlen = 1;
            self->messages[i].msg_hdr.msg_name = &self->addrs[i];
            self->messages[i].msg_hdr.msg_namelen = sizeof(self->addrs[i]);
        }
        int n = recvmmsg(slot->fd, self->messages, PUMP_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            int error = errno;
            if (error == EBADF || error == ENOTSOCK) { /* closed without remove(): let go */
                epoll_ctl(self->epoll_fd, EPOLL_CTL_DEL, slot->fd, NULL);
                slot->fd = -1;
                return;
            }
            /* a queued ICMP error (ECONNREFUSED...): reported once, as asyncio would */
            hand_up(self, index, KIND_ERROR, error, NULL, 0, NULL, 0, now_monotonic());
            continue;
        }
        double arrived = now_monotonic();
        for (int i = 0; i < n; i++)
            classify(self, index, self->buffers[i], (int)self->messages[i].msg_len,
                     &self->addrs[i], self->messages[i].msg_hdr.msg_namelen, arrived);
        if (n < PUMP_BATCH)
            return;
    }
}

static void *
pump_main(void *arg)
{
    PumpObject *self = (PumpObject *)arg;
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(self->epoll_fd, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        int stop = 0;
        pthread_mutex_lock(&self->lock);
        for (int i = 0; i < n; i++) {
            uint32_t token = events[i].data.u32;
            if (token == STOP_TOKEN) {
                stop = 1;
                continue;
            }
            if ((int)token < self->nslots && self->slots[token].fd >= 0)
                read_slot(self, (int)token);
        }
        pthread_mutex_unlock(&self->lock);
        if (stop)
            break;
    }
    return NULL;
}

/* Take `lock` from a thread that holds the GIL: a try first, else wait without it. */
static void
lock_with_gil(PumpObject *self)
{
    if (pthread_mutex_trylock(&self->lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->lock);
        Py_END_ALLOW_THREADS
    }
}

static PyObject *
Pump_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PumpObject *self = (PumpObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    self->epoll_fd = self->stop_fd = self->wake_fd = -1;
    return (PyObject *)self;
}

PyDoc_STRVAR(start_doc,
"start() -> wake_fd\n\n"
"Start the reader thread. Returns an eventfd that is readable when take() has hand-ups.");

static PyObject *
Pump_start(PumpObject *self, PyObject *unused)
{
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "ReceivePump.start: already running");
        return NULL;
    }
    if (self->queue == NULL) {
        self->queue = PyMem_RawCalloc(PUMP_QUEUE, sizeof(Handup));
        self->buffers = PyMem_RawMalloc(sizeof(*self->buffers) * PUMP_BATCH);
        if (self->queue == NULL || self->buffers == NULL)
            return PyErr_NoMemory();
    }
    self->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    self->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event stop_event = {.events = EPOLLIN, .data.u32 = STOP_TOKEN};
    if (self->epoll_fd < 0 || self->stop_fd < 0 || self->wake_fd < 0 ||
        epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->stop_fd, &stop_event) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay the main thread's */
    int rc = pthread_create(&self->thread, NULL, pump_main, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    Py_INCREF(self); /* the thread's, dropped by stop() */
    self->running = 1;
    return PyLong_FromLong(self->wake_fd);
fail:
    if (self->epoll_fd >= 0)
        close(self->epoll_fd);
    if (self->stop_fd >= 0)
        close(self->stop_fd);
    if (self->wake_fd >= 0)
        close(self->wake_fd);
    self->epoll_fd = self->stop_fd = self->wake_fd = -1;
    return NULL;
}

static PyObject *
Pump_stop(PumpObject *self, PyObject *unused)
{
    if (!self->running)
        Py_RETURN_NONE;
    uint64_t one = 1;
    if (write(self->stop_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        return PyErr_SetFromErrno(PyExc_OSError);
    self->running = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    close(self->epoll_fd);
    close(self->stop_fd);
    close(self->wake_fd);
    self->epoll_fd = self->stop_fd = self->wake_fd = -1;
    Py_DECREF(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(add_doc,
"add(fd, every, watch_rtcp) -> slot\n\n"
"Read socket `fd` on the thread from now on: SRTP counted per SSRC, every `every`-th\n"
"packet of an SSRC handed up (0: none), SRTCP handed up when watch_rtcp, all else handed\n"
"up. Call remove(slot) before closing fd.");

static PyObject *
Pump_add(PumpObject *self, PyObject *args)
{
    int fd, every, watch_rtcp;
    if (!PyArg_ParseTuple(args, "iip:add", &fd, &every, &watch_rtcp))
        return NULL;
    if (!self->running || fd < 0 || every < 0) {
        PyErr_SetString(PyExc_ValueError, "ReceivePump.add: not running, or a bad fd/every");
        return NULL;
    }
    lock_with_gil(self);
    int index = 0;
    while (index < self->nslots && self->slots[index].fd >= 0)
        index++;
    if (index == self->nslots) {
        Slot *grown = PyMem_RawRealloc(self->slots, sizeof(Slot) * (size_t)(self->nslots + 64));
        if (grown == NULL) {
            pthread_mutex_unlock(&self->lock);
            return PyErr_NoMemory();
        }
        for (int i = self->nslots; i < self->nslots + 64; i++)
            grown[i].fd = -1;
        self->slots = grown;
        self->nslots += 64;
    }
    Slot *slot = &self->slots[index];
    memset(slot, 0, sizeof(*slot));
    slot->fd = fd;
    slot->every = every;
    slot->watch_rtcp = watch_rtcp;
    slot->first_media = -1.0;
    struct epoll_event event = {.events = EPOLLIN, .data.u32 = (uint32_t)index};
    int rc = epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, fd, &event);
    if (rc < 0)
        slot->fd = -1;
    pthread_mutex_unlock(&self->lock);
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(index);
}

static int
slot_index(PumpObject *self, PyObject *arg)
{
    long index = PyLong_AsLong(arg);
    if (index == -1 && PyErr_Occurred())
        return -1;
    if (index < 0 || index >= self->nslots || self->slots[index].fd < 0) {
        PyErr_Format(PyExc_KeyError, "ReceivePump: no slot %ld", index);
        return -1;
    }
    return (int)index;
}

static PyObject *
Pump_remove(PumpObject *self, PyObject *arg)
{
    lock_with_gil(self);
    int index = slot_index(self, arg);
    if (index >= 0) {
        epoll_ctl(self->epoll_fd, EPOLL_CTL_DEL, self->slots[index].fd, NULL);
        self->slots[index].fd = -1;
        /* its queued hand-ups stay; take() returns them and the caller ignores them */
    }
    pthread_mutex_unlock(&self->lock);
    if (index < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(counts_doc,
"counts(slot) -> ({ssrc: packets}, rtcp_in, other, first_media)\n\n"
"first_media: time.monotonic() of the first SRTP packet, or None.");

static PyObject *
Pump_counts(PumpObject *self, PyObject *arg)
{
    Slot copy;
    lock_with_gil(self);
    int index = slot_index(self, arg);
    if (index >= 0)
        copy = self->slots[index];
    pthread_mutex_unlock(&self->lock);
    if (index < 0)
        return NULL;
    PyObject *received = PyDict_New();
    if (received == NULL)
        return NULL;
    for (int i = 0; i < copy.nssrcs; i++) {
        PyObject *key = PyLong_FromUnsignedLong(copy.ssrcs[i].ssrc);
        PyObject *value = PyLong_FromUnsignedLongLong(copy.ssrcs[i].count);
        if (key == NULL || value == NULL || PyDict_SetItem(received, key, value) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_DECREF(received);
            return NULL;
        }
        Py_DECREF(key);
        Py_DECREF(value);
    }
    if (copy.first_media < 0)
        return Py_BuildValue("(NKKO)", received, copy.rtcp_in, copy.other, Py_None);
    return Py_BuildValue("(NKKd)", received, copy.rtcp_in, copy.other, copy.first_media);
}

static PyObject *
address_tuple(const struct sockaddr_storage *addr, socklen_t addrlen)
{
    char host[INET6_ADDRSTRLEN];
    if (addrlen >= sizeof(struct sockaddr_in) && addr->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(v4->sin_port));
    }
    if (addrlen >= sizeof(struct sockaddr_in6) && addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(siII)", host, ntohs(v6->sin6_port),
                             ntohl(v6->sin6_flowinfo), v6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(take_doc,
"take() -> [(slot, kind, data, addr, arrived, errno)]\n\n"
"The hand-ups queued since the last take, in arrival order. kind: 0 a datagram for the\n"
"socket's protocol, 1 a sampled SRTP packet, 2 SRTCP, 3 a receive error (errno).\n"
"arrived: time.monotonic() when it was read.");

static PyObject *
Pump_take(PumpObject *self, PyObject *unused)
{
    uint64_t value;
    if (self->wake_fd >= 0 && read(self->wake_fd, &value, sizeof(value)) < 0) {
        /* EAGAIN: not signalled */
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    while (PyList_GET_SIZE(out) < PUMP_QUEUE) {
        Handup h;
        lock_with_gil(self);
        int have = self->count > 0;
        if (have) {
            /* copy out one at a time: the thread refills the ring meanwhile */
            Handup *src = &self->queue[self->head];
            h.slot = src->slot;
            h.kind = src->kind;
            h.error = src->error;
            h.len = src->len;
            h.arrived = src->arrived;
            h.addr = src->addr;
            h.addrlen = src->addrlen;
            memcpy(h.data, src->data, (size_t)src->len);
            self->head = (self->head + 1) % PUMP_QUEUE;
            self->count -= 1;
        }
        pthread_mutex_unlock(&self->lock);
        if (!have)
            break;
        PyObject *addr = address_tuple(&h.addr, h.addrlen);
        PyObject *item = addr == NULL ? NULL :
            Py_BuildValue("(iiy#Ndi)", h.slot, h.kind, (const char *)h.data, (Py_ssize_t)h.len,
                          addr, h.arrived, h.error);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *
Pump_stats(PumpObject *self, PyObject *unused)
{
    lock_with_gil(self);
    unsigned long long datagrams = self->datagrams, dropped = self->dropped,
                       wakes = self->wakes;
    pthread_mutex_unlock(&self->lock);
    return Py_BuildValue("{sKsKsK}", "datagrams", datagrams, "dropped", dropped,
                         "wakes", wakes);
}

static void
Pump_dealloc(PumpObject *self)
{
    /* running holds a reference, so the thread has been joined by now */
    PyMem_RawFree(self->slots);
    PyMem_RawFree(self->queue);
    PyMem_RawFree(self->buffers);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Pump_methods[] = {
    {"start", (PyCFunction)Pump_start, METH_NOARGS, start_doc},
    {"stop", (PyCFunction)Pump_stop, METH_NOARGS,
     "stop(): stop and join the thread (idempotent); every slot must be removed first."},
    {"add", (PyCFunction)Pump_add, METH_VARARGS, add_doc},
    {"remove", (PyCFunction)Pump_remove, METH_O,
     "remove(slot): the thread reads that socket no more (then it may be closed)."},
    {"counts", (PyCFunction)Pump_counts, METH_O, counts_doc},
    {"take", (PyCFunction)Pump_take, METH_NOARGS, take_doc},
    {"stats", (PyCFunction)Pump_stats, METH_NOARGS,
     "stats() -> {datagrams, dropped, wakes}: read, hand-ups dropped (queue full), loop wakes."},
    {NULL}
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.ReceivePump",
    .tp_basicsize = sizeof(PumpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The load generator's participants' sockets, read on one C thread (_recvpump.c).",
    .tp_new = Pump_new,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
};

int
recvpump_add_to_module(PyObject *module)
{
    if (PyType_Ready(&PumpType) < 0)
        return -1;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(module, "ReceivePump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(&PumpType);
        return -1;
    }
    return 0;
}
