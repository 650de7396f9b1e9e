/*
 * SRTP protect with AES-GCM (RFC 7714) for a receiver's outgoing RTP: the fan-out's
 * own sending context, on the CPU's AES and carry-less multiply instructions.
 *
 * Why this exists: every forwarded copy is protected with its receiver's context,
 * and at a call's own packet rate each copy starts from cold memory. libsrtp's
 * context is a chain of small allocations (srtp_t, its stream list, the stream, its
 * 1024-packet replay bitmap, the cipher, OpenSSL's EVP context and its provider
 * data), and its GCM protect re-initialises OpenSSL's cipher for every packet; a
 * profile of the server at 1 x 500 put libsrtp with its OpenSSL at about 1 µs per
 * copy, four times what the same calls cost when their contexts are warm
 * (bench/RESULTS.md, "Where the time above the floor goes"). A SrtpSealer is one
 * allocation of about 400 bytes: the expanded AES key, the hash key, the salt and
 * the per-SSRC rollover counters inline, so one copy touches a few cache lines.
 *
 * What it is not: a general SRTP library. It protects RTP only (SRTCP stays with
 * libsrtp, whose index and keys are separate: RFC 3711 §3.4, §4.3), only for the
 * two AEAD profiles (RFC 7714 §14.2: AEAD_AES_128_GCM, AEAD_AES_256_GCM; the
 * server's DTLS offers them first, so aiortc and browsers select them), and only
 * as a sender. A session whose profile is AES_CM_128_HMAC_SHA1_80, or a CPU
 * without AES-NI and PCLMULQDQ, keeps libsrtp (sealer_supported()).
 *
 * Sending state, as libsrtp keeps it for a sender (RFC 3711 §3.3.1): per SSRC the
 * rollover counter and the highest sequence number sent; a packet's index is
 * estimated against them as a receiver would (RFC 3711 Appendix A), so a
 * retransmission of an older packet is protected with the index it had, and the
 * counter rolls over when the sequence number wraps. Like aiortc's libsrtp policy
 * (allow_repeat_tx), an index may be protected again (a retransmission carries the
 * same bytes, so the same ciphertext).
 *
 * The algorithms, from their specifications:
 *   - session keys: the SRTP key derivation (RFC 3711 §4.3.1, §4.3.3), AES in
 *     counter mode keyed with the master key over the master salt XOR the label;
 *     the 96-bit GCM master salt is taken as the leading 96 of the 112 bits
 *     (RFC 7714 §11), with key derivation rate 0;
 *   - AES-128 and AES-256 (FIPS-197): the key schedule of §5.2 with AESKEYGENASSIST,
 *     rounds with AESENC/AESENCLAST (Intel SDM, vol. 2);
 *   - GCM (NIST SP 800-38D): 96-bit IV, J0 = IV || 1, GCTR from inc32(J0), GHASH
 *     over the additional data and the ciphertext, each zero-padded, then their
 *     lengths in bits; the tag is the full 16 octets (RFC 7714 §9.2);
 *   - the RTP nonce (RFC 7714 §8.1): 00 00 || SSRC || ROC || SEQ, XOR the session
 *     salt; the additional data is the whole RTP header with CSRCs and extension
 *     (RFC 7714 §8.2), the plaintext the payload;
 *   - GHASH multiplication in GF(2^128) (SP 800-38D §6.3) with PCLMULQDQ on
 *     byte-reversed blocks, reduced by x^128 + x^7 + x^2 + x + 1: derived in
 *     ghash_multiply below.
 */
#include "_fanout.h"

#include <structmember.h>

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SEALER_BUILT 1
#include <immintrin.h>
#define ACCEL __attribute__((target("aes,pclmul,ssse3,sse4.1")))
#else
#define SEALER_BUILT 0
#endif

#define SEALER_SALT 12           /* RFC 7714 §11: 96-bit salt */
#define SEALER_TAG 16            /* RFC 7714 §9.2: 16-octet tag */
#define INLINE_STREAMS 6         /* SSRCs kept in the object itself; more go to the heap */
#define MAX_STREAMS 4096         /* a receiver with more outgoing SSRCs is refused */

/* One outgoing SSRC's index state (RFC 3711 §3.3.1). */
typedef struct {
    uint32_t ssrc;
    uint32_t roc;               /* rollover counter of the highest index sent */
    uint16_t highest;           /* sequence number of the highest index sent */
} SendStream;

typedef struct {
    PyObject_HEAD
    uint8_t round_keys[15][16]; /* AES-128 uses 11, AES-256 15 */
    uint8_t hash_key[16];       /* H = E(K, 0^128), byte-reversed for ghash_multiply */
    uint8_t salt[SEALER_SALT];
    int rounds;                 /* 10 or 14 */
    int stream_count;
    int stream_cap;             /* 0: only the inline ones */
    SendStream *more;           /* streams beyond INLINE_STREAMS */
    SendStream streams[INLINE_STREAMS];
    unsigned long long protected_packets;
} SealerObject;

static int cpu_checked = 0;
static int cpu_ok = 0;

int
sealer_supported(void)
{
#if SEALER_BUILT
    if (!cpu_checked) {
        __builtin_cpu_init();
        cpu_ok = __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul") &&
                 __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1");
        cpu_checked = 1;
    }
    return cpu_ok;
#else
    return 0;
#endif
}

#if SEALER_BUILT

/* ---- AES (FIPS-197) --------------------------------------------------------------- */

/* w ^ (w << 32) ^ (w << 64) ^ (w << 96): each word of a round key XORs all before it. */
ACCEL static inline __m128i
prefix_xor(__m128i w)
{
    w = _mm_xor_si128(w, _mm_slli_si128(w, 4));
    w = _mm_xor_si128(w, _mm_slli_si128(w, 4));
    return _mm_xor_si128(w, _mm_slli_si128(w, 4));
}

#define NEXT_128(prev, rcon) \
    _mm_xor_si128(prefix_xor(prev), \
                  _mm_shuffle_epi32(_mm_aeskeygenassist_si128((prev), (rcon)), 0xff))

ACCEL static void
expand_128(const uint8_t *key, uint8_t out[15][16])
{
    __m128i k[11];
    k[0] = _mm_loadu_si128((const __m128i *)key);
    k[1] = NEXT_128(k[0], 0x01);
    k[2] = NEXT_128(k[1], 0x02);
    k[3] = NEXT_128(k[2], 0x04);
    k[4] = NEXT_128(k[3], 0x08);
    k[5] = NEXT_128(k[4], 0x10);
    k[6] = NEXT_128(k[5], 0x20);
    k[7] = NEXT_128(k[6], 0x40);
    k[8] = NEXT_128(k[7], 0x80);
    k[9] = NEXT_128(k[8], 0x1b);
    k[10] = NEXT_128(k[9], 0x36);
    for (int i = 0; i < 11; i++)
        _mm_storeu_si128((__m128i *)out[i], k[i]);
}

/* AES-256's schedule (FIPS-197 §5.2, Nk = 8): even round keys take SubWord(RotWord)
   of the last word with Rcon (word 3 of AESKEYGENASSIST), odd ones SubWord alone
   (word 2 of AESKEYGENASSIST with Rcon 0). */
#define EVEN_256(two_back, prev, rcon) \
    _mm_xor_si128(prefix_xor(two_back), \
                  _mm_shuffle_epi32(_mm_aeskeygenassist_si128((prev), (rcon)), 0xff))
#define ODD_256(two_back, prev) \
    _mm_xor_si128(prefix_xor(two_back), \
                  _mm_shuffle_epi32(_mm_aeskeygenassist_si128((prev), 0), 0xaa))

ACCEL static void
expand_256(const uint8_t *key, uint8_t out[15][16])
{
    __m128i k[15];
    k[0] = _mm_loadu_si128((const __m128i *)key);
    k[1] = _mm_loadu_si128((const __m128i *)(key + 16));
    k[2] = EVEN_256(k[0], k[1], 0x01);
    k[3] = ODD_256(k[1], k[2]);
    k[4] = EVEN_256(k[2], k[3], 0x02);
    k[5] = ODD_256(k[3], k[4]);
    k[6] = EVEN_256(k[4], k[5], 0x04);
    k[7] = ODD_256(k[5], k[6]);
    k[8] = EVEN_256(k[6], k[7], 0x08);
    k[9] = ODD_256(k[7], k[8]);
    k[10] = EVEN_256(k[8], k[9], 0x10);
    k[11] = ODD_256(k[9], k[10]);
    k[12] = EVEN_256(k[10], k[11], 0x20);
    k[13] = ODD_256(k[11], k[12]);
    k[14] = EVEN_256(k[12], k[13], 0x40);
    for (int i = 0; i < 15; i++)
        _mm_storeu_si128((__m128i *)out[i], k[i]);
}

ACCEL static inline __m128i
aes_encrypt(const uint8_t round_keys[15][16], int rounds, __m128i block)
{
    block = _mm_xor_si128(block, _mm_loadu_si128((const __m128i *)round_keys[0]));
    for (int r = 1; r < rounds; r++)
        block = _mm_aesenc_si128(block, _mm_loadu_si128((const __m128i *)round_keys[r]));
    return _mm_aesenclast_si128(block, _mm_loadu_si128((const __m128i *)round_keys[rounds]));
}

/* ---- GHASH (SP 800-38D §6.4) -------------------------------------------------------- */

/* Reverses the 16 octets, so bit p of the 128-bit integer is the coefficient of
   x^(127-p) (GCM numbers a block's bits from the most significant bit of octet 0). */
ACCEL static inline __m128i
byte_reverse(__m128i v)
{
    return _mm_shuffle_epi8(v, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                            15));
}

ACCEL static inline __m128i
shift_right_128(__m128i v, int bits) /* 0 < bits < 64 */
{
    return _mm_or_si128(_mm_srli_epi64(v, bits), _mm_slli_epi64(_mm_srli_si128(v, 8), 64 - bits));
}

ACCEL static inline __m128i
shift_left_128(__m128i v, int bits) /* 0 < bits < 64 */
{
    return _mm_or_si128(_mm_slli_epi64(v, bits), _mm_srli_epi64(_mm_slli_si128(v, 8), 64 - bits));
}

/*
 * a * b in GF(2^128) with both in the byte-reversed form (bit p <-> x^(127-p)).
 *
 * The carry-less product P of two such integers has bit q <-> x^(254-q) of the
 * polynomial product, so P << 1 has bit q <-> x^(255-q): its high 128 bits are
 * the low-degree half C0 (x^0..x^127) in the same reversed form, its low 128
 * bits the high-degree half C1 (x^128..x^255) reversed. In this form
 * multiplying by x^k is a right shift by k. With x^128 = x^7 + x^2 + x + 1:
 *   C = C0 + C1 * (1 + x + x^2 + x^7),
 * where C1 >> 1, >> 2, >> 7 lose the terms that reach x^128 and above; those,
 * O = (C1 << 127) ^ (C1 << 126) ^ (C1 << 121) (degrees 0..6 of the overflow
 * divided by x^128), are folded in once more the same way (degree < 14: no
 * further overflow).
 */
ACCEL static inline __m128i
ghash_multiply(__m128i a, __m128i b)
{
    __m128i low = _mm_clmulepi64_si128(a, b, 0x00);
    __m128i high = _mm_clmulepi64_si128(a, b, 0x11);
    __m128i middle = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10),
                                   _mm_clmulepi64_si128(a, b, 0x01));
    low = _mm_xor_si128(low, _mm_slli_si128(middle, 8));
    high = _mm_xor_si128(high, _mm_srli_si128(middle, 8));
    /* (high:low) << 1 over 256 bits */
    __m128i c0 = _mm_or_si128(shift_left_128(high, 1), _mm_srli_epi64(_mm_srli_si128(low, 8), 63));
    __m128i c1 = shift_left_128(low, 1);
    /* the overflow of c1 * (x + x^2 + x^7): the low 1, 2 and 7 bits of c1, moved to the top */
    __m128i top = _mm_slli_si128(c1, 8);
    __m128i overflow = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi64(top, 63),
                                                   _mm_slli_epi64(top, 62)),
                                     _mm_slli_epi64(top, 57));
    __m128i folded = _mm_xor_si128(c1, overflow);
    __m128i result = _mm_xor_si128(c0, folded);
    result = _mm_xor_si128(result, shift_right_128(folded, 1));
    result = _mm_xor_si128(result, shift_right_128(folded, 2));
    return _mm_xor_si128(result, shift_right_128(folded, 7));
}

/* Folds `len` octets (zero-padded to whole blocks) into the hash state. */
ACCEL static inline __m128i
ghash_update(__m128i state, __m128i h, const uint8_t *data, size_t len)
{
    while (len >= 16) {
        __m128i block = byte_reverse(_mm_loadu_si128((const __m128i *)data));
        state = ghash_multiply(_mm_xor_si128(state, block), h);
        data += 16;
        len -= 16;
    }
    if (len) {
        uint8_t last[16] = {0};
        memcpy(last, data, len);
        __m128i block = byte_reverse(_mm_loadu_si128((const __m128i *)last));
        state = ghash_multiply(_mm_xor_si128(state, block), h);
    }
    return state;
}

/* ---- Key derivation (RFC 3711 §4.3.1, RFC 7714 §11) ------------------------------- */

/* `len` octets of the PRF for `label`: AES-CTR under the master key from
   (master salt, zero-padded to 112 bits, XOR label at octet 7) || 16-bit counter. */
ACCEL static void
derive(const uint8_t master_round_keys[15][16], int rounds, const uint8_t *master_salt,
       uint8_t label, uint8_t *out, size_t len)
{
    uint8_t block[16] = {0};
    memcpy(block, master_salt, SEALER_SALT);
    block[7] ^= label;
    for (uint16_t counter = 0; len > 0; counter++) {
        block[14] = (uint8_t)(counter >> 8);
        block[15] = (uint8_t)counter;
        uint8_t stream[16];
        _mm_storeu_si128((__m128i *)stream,
                         aes_encrypt(master_round_keys, rounds,
                                     _mm_loadu_si128((const __m128i *)block)));
        size_t take = len < 16 ? len : 16;
        memcpy(out, stream, take);
        out += take;
        len -= take;
    }
}

ACCEL static void
sealer_key(SealerObject *self, const uint8_t *master_key, size_t key_len,
           const uint8_t *master_salt)
{
    uint8_t master_schedule[15][16];
    uint8_t session_key[32];
    if (key_len == 16)
        expand_128(master_key, master_schedule);
    else
        expand_256(master_key, master_schedule);
    self->rounds = key_len == 16 ? 10 : 14;
    derive(master_schedule, self->rounds, master_salt, 0x00, session_key, key_len);
    derive(master_schedule, self->rounds, master_salt, 0x02, self->salt, SEALER_SALT);
    if (key_len == 16)
        expand_128(session_key, self->round_keys);
    else
        expand_256(session_key, self->round_keys);
    __m128i h = aes_encrypt(self->round_keys, self->rounds, _mm_setzero_si128());
    _mm_storeu_si128((__m128i *)self->hash_key, byte_reverse(h));
    memset(master_schedule, 0, sizeof(master_schedule));
    memset(session_key, 0, sizeof(session_key));
}

/* ---- Protect ---------------------------------------------------------------------- */

ACCEL static void
gcm_seal(const SealerObject *self, const uint8_t nonce[12], uint8_t *packet,
         size_t header_len, size_t payload_len)
{
    uint8_t counter_block[16];
    memcpy(counter_block, nonce, 12);
    counter_block[12] = 0;
    counter_block[13] = 0;
    counter_block[14] = 0;
    counter_block[15] = 1;
    __m128i tag_mask = aes_encrypt(self->round_keys, self->rounds,
                                   _mm_loadu_si128((const __m128i *)counter_block));
    uint8_t *payload = packet + header_len;
    uint32_t counter = 2;
    for (size_t done = 0; done < payload_len; done += 16, counter++) {
        counter_block[12] = (uint8_t)(counter >> 24);
        counter_block[13] = (uint8_t)(counter >> 16);
        counter_block[14] = (uint8_t)(counter >> 8);
        counter_block[15] = (uint8_t)counter;
        __m128i stream = aes_encrypt(self->round_keys, self->rounds,
                                     _mm_loadu_si128((const __m128i *)counter_block));
        size_t take = payload_len - done < 16 ? payload_len - done : 16;
        if (take == 16) {
            __m128i text = _mm_loadu_si128((const __m128i *)(payload + done));
            _mm_storeu_si128((__m128i *)(payload + done), _mm_xor_si128(text, stream));
        } else {
            uint8_t bytes[16];
            _mm_storeu_si128((__m128i *)bytes, stream);
            for (size_t i = 0; i < take; i++)
                payload[done + i] ^= bytes[i];
        }
    }
    __m128i h = _mm_loadu_si128((const __m128i *)self->hash_key);
    __m128i state = ghash_update(_mm_setzero_si128(), h, packet, header_len);
    state = ghash_update(state, h, payload, payload_len);
    uint64_t header_bits = (uint64_t)header_len * 8, payload_bits = (uint64_t)payload_len * 8;
    /* len(A) || len(C), 64-bit big-endian each; byte-reversed that is (len(A):len(C)) */
    __m128i lengths = _mm_set_epi64x((long long)header_bits, (long long)payload_bits);
    state = ghash_multiply(_mm_xor_si128(state, lengths), h);
    __m128i tag = _mm_xor_si128(byte_reverse(state), tag_mask);
    _mm_storeu_si128((__m128i *)(payload + payload_len), tag);
}

#endif /* SEALER_BUILT */

/* The RTP header's length with CSRCs and extension (RFC 3550 §5.1, §5.3.1), or -1. */
static long
rtp_header_length(const uint8_t *packet, long len)
{
    if (len < 12 || (packet[0] >> 6) != 2)
        return -1;
    long header = 12 + 4L * (packet[0] & 0x0f);
    if (packet[0] & 0x10) {
        if (len < header + 4)
            return -1;
        header += 4 + 4L * ((packet[header + 2] << 8) | packet[header + 3]);
    }
    return header <= len ? header : -1;
}

static SendStream *
find_stream(SealerObject *self, uint32_t ssrc)
{
    int inline_count = self->stream_count < INLINE_STREAMS ? self->stream_count : INLINE_STREAMS;
    for (int i = 0; i < inline_count; i++)
        if (self->streams[i].ssrc == ssrc)
            return &self->streams[i];
    for (int i = INLINE_STREAMS; i < self->stream_count; i++)
        if (self->more[i - INLINE_STREAMS].ssrc == ssrc)
            return &self->more[i - INLINE_STREAMS];
    return NULL;
}

/* A new SSRC's state; NULL when there is no room (malloc failed, or MAX_STREAMS). */
static SendStream *
add_stream(SealerObject *self, uint32_t ssrc, uint16_t sequence)
{
    SendStream *stream;
    if (self->stream_count < INLINE_STREAMS) {
        stream = &self->streams[self->stream_count];
    } else {
        int extra = self->stream_count - INLINE_STREAMS;
        if (self->stream_count >= MAX_STREAMS)
            return NULL;
        if (extra == self->stream_cap) {
            int cap = self->stream_cap ? self->stream_cap * 2 : 8;
            SendStream *grown = realloc(self->more, (size_t)cap * sizeof(SendStream));
            if (grown == NULL)
                return NULL;
            self->more = grown;
            self->stream_cap = cap;
        }
        stream = &self->more[extra];
    }
    stream->ssrc = ssrc;
    stream->roc = 0;            /* RFC 3711 §3.3.1: the first packet's ROC is 0 */
    stream->highest = sequence;
    self->stream_count += 1;
    return stream;
}

/* The rollover counter for `sequence`, estimated against the highest index sent
   (RFC 3711 Appendix A), which moves forward when this one is beyond it. */
static uint32_t
index_roc(SendStream *stream, uint16_t sequence)
{
    uint32_t roc = stream->roc;
    uint16_t highest = stream->highest;
    uint32_t estimate;
    if (roc == 0 && highest <= 32768)
        /* as libsrtp: no wrap is guessed before the index has passed 2^15 (a guess of
           ROC 0xffffffff for a first packet with a high sequence number is refused) */
        estimate = 0;
    else if (highest < 32768)
        estimate = (sequence > highest && sequence - highest > 32768) ? roc - 1 : roc;
    else
        estimate = (highest - 32768 > sequence) ? roc + 1 : roc;
    if (estimate == roc + 1 || (estimate == roc && sequence > highest)) {
        stream->roc = estimate;
        stream->highest = sequence;
    }
    return estimate;
}

/*
 * Protects the RTP packet at `rtp` (*len octets, room for SEALER_TAG more) in place
 * and appends the tag; srtp_protect's signature, so the fan-out calls either. 0 on
 * success; 1 for a packet that is not RTP, 2 for a sender with no room for one more
 * SSRC (the packet is left as it was, as libsrtp leaves a bad one).
 */
int
sealer_protect(void *context, void *rtp, int *len)
{
#if SEALER_BUILT
    SealerObject *self = (SealerObject *)context;
    uint8_t *packet = (uint8_t *)rtp;
    long header = rtp_header_length(packet, *len);
    if (header < 0)
        return 1;
    uint32_t ssrc = ((uint32_t)packet[8] << 24) | ((uint32_t)packet[9] << 16) |
                    ((uint32_t)packet[10] << 8) | packet[11];
    uint16_t sequence = (uint16_t)((packet[2] << 8) | packet[3]);
    SendStream *stream = find_stream(self, ssrc);
    if (stream == NULL && (stream = add_stream(self, ssrc, sequence)) == NULL)
        return 2;
    uint32_t roc = index_roc(stream, sequence);
    uint8_t nonce[12] = {0, 0,
                         packet[8], packet[9], packet[10], packet[11],
                         (uint8_t)(roc >> 24), (uint8_t)(roc >> 16), (uint8_t)(roc >> 8),
                         (uint8_t)roc,
                         packet[2], packet[3]};
    for (int i = 0; i < 12; i++)
        nonce[i] ^= self->salt[i];
    gcm_seal(self, nonce, packet, (size_t)header, (size_t)(*len - header));
    *len += SEALER_TAG;
    self->protected_packets += 1;
    return 0;
#else
    return 1;
#endif
}

/* ---- SrtpSealer: the Python type ---------------------------------------------------- */

static PyObject *
Sealer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key_and_salt", NULL};
    Py_buffer material;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:SrtpSealer", kwlist, &material))
        return NULL;
    Py_ssize_t key_len = material.len - SEALER_SALT;
    if (key_len != 16 && key_len != 32) {
        PyErr_Format(PyExc_ValueError, "SrtpSealer: key_and_salt must be a 16- or 32-octet "
                     "AES key and a 12-octet salt (28 or 44 octets), not %zd octets",
                     material.len);
        PyBuffer_Release(&material);
        return NULL;
    }
    if (!sealer_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "SrtpSealer: this CPU has no AES-NI and PCLMULQDQ "
                        "(or this build is not for x86-64); use libsrtp");
        PyBuffer_Release(&material);
        return NULL;
    }
    SealerObject *self = (SealerObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
#if SEALER_BUILT
        const uint8_t *bytes = (const uint8_t *)material.buf;
        sealer_key(self, bytes, (size_t)key_len, bytes + key_len);
#endif
    }
    PyBuffer_Release(&material);
    return (PyObject *)self;
}

static void
Sealer_dealloc(SealerObject *self)
{
    free(self->more);
    memset(self->round_keys, 0, sizeof(self->round_keys));
    memset(self->hash_key, 0, sizeof(self->hash_key));
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* SrtpSealer.protect(packet) -> bytes, pylibsrtp Session.protect's contract. */
static PyObject *
Sealer_protect(SealerObject *self, PyObject *arg)
{
    Py_buffer packet;
    if (PyObject_GetBuffer(arg, &packet, PyBUF_SIMPLE) < 0)
        return NULL;
    if (packet.len > 65536 - SEALER_TAG) {
        PyBuffer_Release(&packet);
        PyErr_SetString(PyExc_ValueError, "SrtpSealer.protect: packet too long");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, packet.len + SEALER_TAG);
    if (out == NULL) {
        PyBuffer_Release(&packet);
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(out), packet.buf, (size_t)packet.len);
    int len = (int)packet.len;
    PyBuffer_Release(&packet);
    /* Another user of this sealer (the fan-out, the reader thread) holds the media lock. */
    media_lock_with_gil();
    int status = sealer_protect(self, PyBytes_AS_STRING(out), &len);
    media_unlock();
    if (status != 0) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, status == 1
                        ? "SrtpSealer.protect: not an RTP packet (RFC 3550 §5.1)"
                        : "SrtpSealer.protect: no room for another SSRC");
        return NULL;
    }
    return out;
}

static PyObject *
Sealer_get_streams(SealerObject *self, void *closure)
{
    return PyLong_FromLong(self->stream_count);
}

static PyMemberDef Sealer_members[] = {
    {"packets", T_ULONGLONG, offsetof(SealerObject, protected_packets), READONLY,
     "RTP packets protected"},
    {"rounds", T_INT, offsetof(SealerObject, rounds), READONLY,
     "AES rounds: 10 for AES-128, 14 for AES-256"},
    {NULL}
};

static PyGetSetDef Sealer_getset[] = {
    {"streams", (getter)Sealer_get_streams, NULL, "SSRCs protected so far", NULL},
    {NULL}
};

static PyMethodDef Sealer_methods[] = {
    {"protect", (PyCFunction)Sealer_protect, METH_O,
     "protect(packet) -> bytes: the RTP packet SRTP-protected (RFC 7714 AEAD), tag appended."},
    {NULL}
};

PyTypeObject SealerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callsctl_sfu.rtc._fanout.SrtpSealer",
    .tp_doc = "SrtpSealer(key_and_salt): a receiver's outgoing RTP protected with AES-GCM "
              "(RFC 7714), keyed with the DTLS-SRTP master key and salt.",
    .tp_basicsize = sizeof(SealerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Sealer_new,
    .tp_dealloc = (destructor)Sealer_dealloc,
    .tp_members = Sealer_members,
    .tp_getset = Sealer_getset,
    .tp_methods = Sealer_methods,
};

static PyObject *
supported(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(sealer_supported());
}

static PyMethodDef sealer_functions[] = {
    {"sealer_supported", supported, METH_NOARGS,
     "sealer_supported() -> bool: this build and CPU can run SrtpSealer (AES-NI, PCLMULQDQ)."},
    {NULL}
};

int
sealer_add_to_module(PyObject *module)
{
    if (PyType_Ready(&SealerType) < 0)
        return -1;
    Py_INCREF(&SealerType);
    if (PyModule_AddObject(module, "SrtpSealer", (PyObject *)&SealerType) < 0) {
        Py_DECREF(&SealerType);
        return -1;
    }
    return PyModule_AddFunctions(module, sealer_functions);
}
