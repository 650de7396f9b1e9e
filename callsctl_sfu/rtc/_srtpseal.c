/*
 * SRTP protect for a receiver's outgoing RTP (RFC 3711, RFC 7714): the fan-out's own
 * sending context, on the CPU's AES (and, for GCM, carry-less multiply) instructions.
 *
 * Why this exists: every forwarded copy is protected with its receiver's context,
 * and at a call's own packet rate each copy starts from cold memory. libsrtp's
 * context is a chain of small allocations (srtp_t, its stream list, the stream, its
 * 1024-packet replay bitmap, the cipher, OpenSSL's EVP context and its provider
 * data), and its protect re-initialises OpenSSL's cipher for every packet; a
 * profile of the server at 1 x 500 put libsrtp with its OpenSSL at about 1 µs per
 * copy, four times what the same calls cost when their contexts are warm
 * (bench/RESULTS.md, "Where the time above the floor goes"). A SrtpSealer is one
 * allocation of about 450 bytes: the expanded AES key, the GHASH key or the HMAC's
 * two precomputed SHA-1 states, the salt and the per-SSRC rollover counters inline,
 * so one copy touches a few cache lines.
 *
 * What it is not: a general SRTP library. It protects RTP only (SRTCP stays with
 * libsrtp, whose index and keys are separate: RFC 3711 §3.4, §4.3), only for the
 * three profiles aiortc offers (RFC 5764 §4.1.2: AES_CM_128_HMAC_SHA1_80, which
 * Chromium picks; RFC 7714 §14.2: AEAD_AES_128_GCM, AEAD_AES_256_GCM, which aiortc
 * clients end up with), and only as a sender. A CPU without AES-NI and PCLMULQDQ
 * keeps libsrtp (sealer_supported()).
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
 *   - AES_CM_128_HMAC_SHA1_80 (RFC 3711 §4.1.1, §4.2.1): AES-128 in counter mode
 *     from IV = salt * 2^16 XOR SSRC * 2^64 XOR index * 2^16 over the payload, then
 *     HMAC-SHA1 (RFC 2104, SHA-1 of FIPS 180-4) over header, ciphertext and ROC,
 *     its first 80 bits appended; the 112-bit salt used whole;
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

#define GCM_SALT 12              /* RFC 7714 §11: 96-bit salt */
#define GCM_TAG 16               /* RFC 7714 §9.2: 16-octet tag */
#define CM_SALT 14               /* RFC 3711 §8.2: 112-bit salt */
#define CM_AUTH_KEY 20           /* RFC 3711 §4.2.1: 160-bit HMAC-SHA1 key */
#define CM_TAG 10                /* RFC 3711 §5.2 (and RFC 4568 §6.2.1): 80-bit tag */
#define MAX_SEALER_TAG 16

/* What a sealer protects with (RFC 5764 §4.1.2 names the DTLS-SRTP profiles). */
enum { PROFILE_AES_CM_SHA1_80 = 1, PROFILE_AEAD_AES_128_GCM = 7, PROFILE_AEAD_AES_256_GCM = 8 };
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
    uint8_t hash_key[16];       /* GCM: H = E(K, 0^128), byte-reversed for ghash_multiply */
    uint8_t hash_powers[3][16]; /* GCM: H^2, H^3, H^4, the same way (ghash_update) */
    uint32_t hmac_inner[5];     /* AES-CM: SHA-1 state after the key XOR ipad block */
    uint32_t hmac_outer[5];     /* AES-CM: SHA-1 state after the key XOR opad block */
    uint8_t salt[CM_SALT];      /* session salt: GCM uses the first 12 octets */
    int profile;                /* PROFILE_* */
    int rounds;                 /* 10 or 14 */
    int stream_count;
    int stream_cap;             /* 0: only the inline ones */
    SendStream *more;           /* streams beyond INLINE_STREAMS */
    SendStream streams[INLINE_STREAMS];
    unsigned long long protected_packets;
} SealerObject;

static int cpu_checked = 0;
static int cpu_ok = 0;
static void sha1_choose(void);

int
sealer_supported(void)
{
#if SEALER_BUILT
    if (!cpu_checked) {
        __builtin_cpu_init();
        cpu_ok = __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul") &&
                 __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1");
        if (cpu_ok)
            sha1_choose();
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

/* Folds `len` octets (zero-padded to whole blocks) into the hash state.
   Four blocks at a time where there are four: ((((S+X1)H+X2)H+X3)H+X4)H is
   (S+X1)H^4 + X2 H^3 + X3 H^2 + X4 H, whose four products do not wait for each
   other, where the one-block chain waits a whole multiplication per block
   (`powers`: H^2, H^3, H^4, as hash_powers). */
ACCEL static inline __m128i
ghash_update(__m128i state, __m128i h, const uint8_t powers[3][16], const uint8_t *data,
             size_t len)
{
    __m128i h2 = _mm_loadu_si128((const __m128i *)powers[0]);
    __m128i h3 = _mm_loadu_si128((const __m128i *)powers[1]);
    __m128i h4 = _mm_loadu_si128((const __m128i *)powers[2]);
    while (len >= 64) {
        __m128i x1 = byte_reverse(_mm_loadu_si128((const __m128i *)data));
        __m128i x2 = byte_reverse(_mm_loadu_si128((const __m128i *)(data + 16)));
        __m128i x3 = byte_reverse(_mm_loadu_si128((const __m128i *)(data + 32)));
        __m128i x4 = byte_reverse(_mm_loadu_si128((const __m128i *)(data + 48)));
        state = _mm_xor_si128(_mm_xor_si128(ghash_multiply(_mm_xor_si128(state, x1), h4),
                                            ghash_multiply(x2, h3)),
                              _mm_xor_si128(ghash_multiply(x3, h2), ghash_multiply(x4, h)));
        data += 64;
        len -= 64;
    }
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

/* The counter's octets into a counter block (see counter_mode). */
static inline void
set_counter(uint8_t block[16], int counter_bits, uint32_t counter)
{
    if (counter_bits == 32) {
        block[12] = (uint8_t)(counter >> 24);
        block[13] = (uint8_t)(counter >> 16);
    }
    block[14] = (uint8_t)(counter >> 8);
    block[15] = (uint8_t)counter;
}

/* AES in counter mode over `len` octets in place, the counter in the block's last 16
   bits (RFC 3711 §4.1.1) or 32 bits (GCM's inc32, SP 800-38D §6.2), from `first`.
   Four blocks go through the rounds side by side while 64 octets are left: alone, a
   block's next round waits for its last (the AESENC latency), which four independent
   blocks fill. */
ACCEL static void
counter_mode(const uint8_t round_keys[15][16], int rounds, uint8_t counter_block[16],
             int counter_bits, uint32_t first, uint8_t *data, size_t len)
{
    uint32_t counter = first;
    size_t done = 0;
    for (; len - done >= 64; done += 64, counter += 4) {
        __m128i b[4];
        for (int j = 0; j < 4; j++) {
            set_counter(counter_block, counter_bits, counter + (uint32_t)j);
            b[j] = _mm_xor_si128(_mm_loadu_si128((const __m128i *)counter_block),
                                 _mm_loadu_si128((const __m128i *)round_keys[0]));
        }
        for (int r = 1; r < rounds; r++) {
            __m128i k = _mm_loadu_si128((const __m128i *)round_keys[r]);
            for (int j = 0; j < 4; j++)
                b[j] = _mm_aesenc_si128(b[j], k);
        }
        __m128i last = _mm_loadu_si128((const __m128i *)round_keys[rounds]);
        for (int j = 0; j < 4; j++) {
            __m128i text = _mm_loadu_si128((const __m128i *)(data + done + 16 * j));
            _mm_storeu_si128((__m128i *)(data + done + 16 * j),
                             _mm_xor_si128(text, _mm_aesenclast_si128(b[j], last)));
        }
    }
    for (; done < len; done += 16, counter++) {
        set_counter(counter_block, counter_bits, counter);
        __m128i stream = aes_encrypt(round_keys, rounds,
                                     _mm_loadu_si128((const __m128i *)counter_block));
        size_t take = len - done < 16 ? len - done : 16;
        if (take == 16) {
            __m128i text = _mm_loadu_si128((const __m128i *)(data + done));
            _mm_storeu_si128((__m128i *)(data + done), _mm_xor_si128(text, stream));
        } else {
            uint8_t bytes[16];
            _mm_storeu_si128((__m128i *)bytes, stream);
            for (size_t i = 0; i < take; i++)
                data[done + i] ^= bytes[i];
        }
    }
}

/* ---- Key derivation (RFC 3711 §4.3.1, RFC 7714 §11) ------------------------------- */

/* `len` octets of the PRF for `label`: AES-CTR under the master key from
   (master salt, zero-padded to 112 bits, XOR label at octet 7) || 16-bit counter. */
ACCEL static void
derive(const uint8_t master_round_keys[15][16], int rounds, const uint8_t *master_salt,
       size_t salt_len, uint8_t label, uint8_t *out, size_t len)
{
    uint8_t block[16] = {0};
    memcpy(block, master_salt, salt_len);
    block[7] ^= label;
    memset(out, 0, len);        /* the keystream itself */
    counter_mode(master_round_keys, rounds, block, 16, 0, out, len);
}

static void hmac_key(SealerObject *self, const uint8_t *auth_key);

/* Session keys from the master key and salt (labels: RFC 3711 §4.3.2). */
ACCEL static void
sealer_key(SealerObject *self, const uint8_t *master_key, size_t key_len,
           const uint8_t *master_salt, size_t salt_len)
{
    uint8_t master_schedule[15][16];
    uint8_t session_key[32];
    uint8_t auth_key[CM_AUTH_KEY];
    if (key_len == 16)
        expand_128(master_key, master_schedule);
    else
        expand_256(master_key, master_schedule);
    self->rounds = key_len == 16 ? 10 : 14;
    derive(master_schedule, self->rounds, master_salt, salt_len, 0x00, session_key, key_len);
    derive(master_schedule, self->rounds, master_salt, salt_len, 0x02, self->salt, salt_len);
    if (key_len == 16)
        expand_128(session_key, self->round_keys);
    else
        expand_256(session_key, self->round_keys);
    if (self->profile == PROFILE_AES_CM_SHA1_80) {
        derive(master_schedule, self->rounds, master_salt, salt_len, 0x01, auth_key,
               CM_AUTH_KEY);
        hmac_key(self, auth_key);
    } else {
        __m128i h = byte_reverse(aes_encrypt(self->round_keys, self->rounds,
                                             _mm_setzero_si128()));
        _mm_storeu_si128((__m128i *)self->hash_key, h);
        __m128i power = h;
        for (int i = 0; i < 3; i++) {
            power = ghash_multiply(power, h);
            _mm_storeu_si128((__m128i *)self->hash_powers[i], power);
        }
    }
    memset(master_schedule, 0, sizeof(master_schedule));
    memset(session_key, 0, sizeof(session_key));
    memset(auth_key, 0, sizeof(auth_key));
}

/* ---- Protect ---------------------------------------------------------------------- */

/* AEAD_AES_*_GCM (RFC 7714): J0 = the nonce 00 00 || SSRC || ROC || SEQ XOR the salt
   (§8.1), then 00 00 00 01; the payload in GCTR from inc32(J0); the tag over the header
   (the additional data, §8.2) and the ciphertext, appended. */
ACCEL static void
gcm_seal(const SealerObject *self, uint32_t roc, uint8_t *packet, size_t header_len,
         size_t payload_len)
{
    uint8_t counter_block[16] = {0, 0,
                                 packet[8], packet[9], packet[10], packet[11],
                                 (uint8_t)(roc >> 24), (uint8_t)(roc >> 16),
                                 (uint8_t)(roc >> 8), (uint8_t)roc,
                                 packet[2], packet[3], 0, 0, 0, 1};
    for (int i = 0; i < GCM_SALT; i++)
        counter_block[i] ^= self->salt[i];
    __m128i tag_mask = aes_encrypt(self->round_keys, self->rounds,
                                   _mm_loadu_si128((const __m128i *)counter_block));
    uint8_t *payload = packet + header_len;
    counter_mode(self->round_keys, self->rounds, counter_block, 32, 2, payload, payload_len);
    __m128i h = _mm_loadu_si128((const __m128i *)self->hash_key);
    __m128i state = ghash_update(_mm_setzero_si128(), h, self->hash_powers, packet,
                                 header_len);
    state = ghash_update(state, h, self->hash_powers, payload, payload_len);
    uint64_t header_bits = (uint64_t)header_len * 8, payload_bits = (uint64_t)payload_len * 8;
    /* len(A) || len(C), 64-bit big-endian each; byte-reversed that is (len(A):len(C)) */
    __m128i lengths = _mm_set_epi64x((long long)header_bits, (long long)payload_bits);
    state = ghash_multiply(_mm_xor_si128(state, lengths), h);
    __m128i tag = _mm_xor_si128(byte_reverse(state), tag_mask);
    _mm_storeu_si128((__m128i *)(payload + payload_len), tag);
}

/* AES_CM_128_HMAC_SHA1_80 (RFC 3711 §4.1.1, §4.2.1): the payload in counter mode from
   IV = salt * 2^16 XOR SSRC * 2^64 XOR index * 2^16, then HMAC-SHA1 over the header, the
   encrypted payload and the ROC, its first 80 bits appended. */
static void hmac_tag(const SealerObject *self, const uint8_t *packet, size_t len,
                     uint32_t roc, uint8_t tag[20]);

ACCEL static void
cm_seal(const SealerObject *self, uint32_t roc, uint8_t *packet, size_t header_len,
        size_t payload_len)
{
    uint8_t counter_block[16] = {0};
    memcpy(counter_block, self->salt, CM_SALT);
    for (int i = 0; i < 4; i++) {
        counter_block[4 + i] ^= packet[8 + i];                          /* SSRC */
        counter_block[8 + i] ^= (uint8_t)(roc >> (24 - 8 * i));          /* ROC */
    }
    counter_block[12] ^= packet[2];                                       /* SEQ */
    counter_block[13] ^= packet[3];
    counter_mode(self->round_keys, self->rounds, counter_block, 16, 0, packet + header_len,
                 payload_len);
    uint8_t digest[20];
    hmac_tag(self, packet, header_len + payload_len, roc, digest);
    memcpy(packet + header_len + payload_len, digest, CM_TAG);
}

#endif /* SEALER_BUILT */

/* ---- SHA-1 (FIPS 180-4 §6.1.2) and HMAC (RFC 2104) ----------------------------------- */

static const uint32_t SHA1_INITIAL[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u,
                                         0xC3D2E1F0u};

static inline uint32_t
rotate_left(uint32_t x, int bits)
{
    return (x << bits) | (x >> (32 - bits));
}

static void
sha1_block_portable(uint32_t state[5], const uint8_t block[64])
{
    uint32_t w[80];
    for (int t = 0; t < 16; t++)
        w[t] = ((uint32_t)block[4 * t] << 24) | ((uint32_t)block[4 * t + 1] << 16) |
               ((uint32_t)block[4 * t + 2] << 8) | block[4 * t + 3];
    for (int t = 16; t < 80; t++)
        w[t] = rotate_left(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3], e = state[4];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k;
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999u;
        } else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1u;
        } else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDCu;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6u;
        }
        uint32_t next = rotate_left(a, 5) + f + e + k + w[t];
        e = d;
        d = c;
        c = rotate_left(b, 30);
        b = a;
        a = next;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
}

#if SEALER_BUILT
/*
 * The same compression on the SHA extensions (Intel SDM vol. 2: SHA1RNDS4 runs four
 * rounds on A..D with E + W added to the first word, SHA1NEXTE gives the next four
 * rounds' E (A of four rounds before, rotated by 30) plus their W, SHA1MSG1/SHA1MSG2
 * extend the schedule W[t] = ROTL1(W[t-3] ^ W[t-8] ^ W[t-14] ^ W[t-16]) four words at
 * a time). Words are kept with the earliest in the highest lane.
 */
#define SHA_ACCEL __attribute__((target("sha,sse4.1,ssse3")))
#define ROUNDS4(group, func) \
    do { \
        __m128i e_and_w = (group) == 0 ? _mm_add_epi32(e_start, msg[0]) \
                                       : _mm_sha1nexte_epu32(before, msg[(group) & 3]); \
        before = abcd; \
        abcd = _mm_sha1rnds4_epu32(abcd, e_and_w, func); \
        if ((group) >= 3 && (group) < 19) \
            msg[((group) + 1) & 3] = _mm_sha1msg2_epu32( \
                _mm_xor_si128(_mm_sha1msg1_epu32(msg[((group) + 1) & 3], \
                                                 msg[((group) + 2) & 3]), \
                              msg[((group) + 3) & 3]), \
                msg[(group) & 3]); \
    } while (0)

SHA_ACCEL static void
sha1_block_sha_ni(uint32_t state[5], const uint8_t block[64])
{
    const __m128i order = _mm_set_epi64x(0x0001020304050607LL, 0x08090a0b0c0d0e0fLL);
    __m128i abcd = _mm_set_epi32((int)state[0], (int)state[1], (int)state[2], (int)state[3]);
    __m128i e_start = _mm_set_epi32((int)state[4], 0, 0, 0);
    __m128i abcd_start = abcd, before = abcd;
    __m128i msg[4];
    for (int i = 0; i < 4; i++)
        msg[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * i)), order);
    ROUNDS4(0, 0); ROUNDS4(1, 0); ROUNDS4(2, 0); ROUNDS4(3, 0); ROUNDS4(4, 0);
    ROUNDS4(5, 1); ROUNDS4(6, 1); ROUNDS4(7, 1); ROUNDS4(8, 1); ROUNDS4(9, 1);
    ROUNDS4(10, 2); ROUNDS4(11, 2); ROUNDS4(12, 2); ROUNDS4(13, 2); ROUNDS4(14, 2);
    ROUNDS4(15, 3); ROUNDS4(16, 3); ROUNDS4(17, 3); ROUNDS4(18, 3); ROUNDS4(19, 3);
    __m128i e = _mm_sha1nexte_epu32(before, e_start);
    abcd = _mm_add_epi32(abcd, abcd_start);
    state[0] = (uint32_t)_mm_extract_epi32(abcd, 3);
    state[1] = (uint32_t)_mm_extract_epi32(abcd, 2);
    state[2] = (uint32_t)_mm_extract_epi32(abcd, 1);
    state[3] = (uint32_t)_mm_extract_epi32(abcd, 0);
    state[4] = (uint32_t)_mm_extract_epi32(e, 3);
}
#endif

/* The compression in use: the SHA extensions when the CPU has them and they give the
   FIPS 180-4 example's digest (checked once, sha1_choose), else the portable one. */
static void (*sha1_block)(uint32_t state[5], const uint8_t block[64]) = sha1_block_portable;

typedef void (*sha1_block_fn)(uint32_t state[5], const uint8_t block[64]);

/* The SHA-1 of (`prefix` octets already in `state`, whole blocks) || data || extra. */
static void
sha1_finish_with(sha1_block_fn sha1_block, uint32_t state[5], size_t prefix,
                 const uint8_t *data, size_t len, const uint8_t *extra, size_t extra_len,
                 uint8_t digest[20])
{
    uint64_t bits = ((uint64_t)prefix + len + extra_len) * 8;
    while (len >= 64) {
        sha1_block(state, data);
        data += 64;
        len -= 64;
    }
    uint8_t tail[128] = {0};
    memcpy(tail, data, len);
    if (extra_len)
        memcpy(tail + len, extra, extra_len);
    size_t used = len + extra_len;
    tail[used++] = 0x80;
    size_t total = used + 8 <= 64 ? 64 : 128;
    for (int i = 0; i < 8; i++)
        tail[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha1_block(state, tail);
    if (total == 128)
        sha1_block(state, tail + 64);
    for (int i = 0; i < 5; i++) {
        digest[4 * i] = (uint8_t)(state[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(state[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(state[i] >> 8);
        digest[4 * i + 3] = (uint8_t)state[i];
    }
}

/* The HMAC's: after the key's 64-octet block, data, then `extra` (the ROC, or nothing). */
static void
sha1_finish(uint32_t state[5], const uint8_t *data, size_t len, const uint8_t extra[4],
            size_t extra_len, uint8_t digest[20])
{
    sha1_finish_with(sha1_block, state, 64, data, len, extra, extra_len, digest);
}

/* "abc" (FIPS 180-4 examples): a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d. */
static int
sha1_known_answer(void (*block)(uint32_t state[5], const uint8_t block[64]))
{
    static const uint32_t expected[5] = {0xa9993e36u, 0x4706816au, 0xba3e2571u, 0x7850c26cu,
                                         0x9cd0d89du};
    uint8_t message[64] = {'a', 'b', 'c', 0x80};
    message[63] = 24;           /* the length in bits */
    uint32_t state[5];
    memcpy(state, SHA1_INITIAL, sizeof(state));
    block(state, message);
    return memcmp(state, expected, sizeof(state)) == 0;
}

static void
sha1_choose(void)
{
#if SEALER_BUILT
    if (__builtin_cpu_supports("sha") && sha1_known_answer(sha1_block_sha_ni))
        sha1_block = sha1_block_sha_ni;
#endif
}

/* The HMAC key's two padded blocks hashed once (RFC 2104 §2), so a tag costs the
   message's blocks and one more. */
static void
hmac_key(SealerObject *self, const uint8_t *auth_key)
{
    uint8_t inner[64], outer[64];
    for (int i = 0; i < 64; i++) {
        uint8_t k = i < CM_AUTH_KEY ? auth_key[i] : 0;
        inner[i] = k ^ 0x36;
        outer[i] = k ^ 0x5c;
    }
    memcpy(self->hmac_inner, SHA1_INITIAL, sizeof(SHA1_INITIAL));
    memcpy(self->hmac_outer, SHA1_INITIAL, sizeof(SHA1_INITIAL));
    sha1_block(self->hmac_inner, inner);
    sha1_block(self->hmac_outer, outer);
    memset(inner, 0, sizeof(inner));
    memset(outer, 0, sizeof(outer));
}

static void
hmac_tag(const SealerObject *self, const uint8_t *packet, size_t len, uint32_t roc,
         uint8_t tag[20])
{
    uint8_t roc_octets[4] = {(uint8_t)(roc >> 24), (uint8_t)(roc >> 16), (uint8_t)(roc >> 8),
                             (uint8_t)roc};
    uint32_t state[5];
    uint8_t inner_digest[20];
    memcpy(state, self->hmac_inner, sizeof(state));
    sha1_finish(state, packet, len, roc_octets, 4, inner_digest);
    memcpy(state, self->hmac_outer, sizeof(state));
    sha1_finish(state, inner_digest, 20, roc_octets, 0, tag);
}

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
 * Protects the RTP packet at `rtp` (*len octets, room for MAX_SEALER_TAG more) in place
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
    size_t payload = (size_t)(*len - header);
    if (self->profile == PROFILE_AES_CM_SHA1_80) {
        cm_seal(self, roc, packet, (size_t)header, payload);
        *len += CM_TAG;
    } else {
        gcm_seal(self, roc, packet, (size_t)header, payload);
        *len += GCM_TAG;
    }
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
    /* The length names the profile: AES-CM 16 + 14, AES-GCM 16 + 12 or 32 + 12. */
    int profile = material.len == 30 ? PROFILE_AES_CM_SHA1_80
                  : material.len == 28 ? PROFILE_AEAD_AES_128_GCM
                  : material.len == 44 ? PROFILE_AEAD_AES_256_GCM : 0;
    if (profile == 0) {
        PyErr_Format(PyExc_ValueError, "SrtpSealer: key_and_salt must be an AES master key "
                     "and salt of 30 (AES_CM_128_HMAC_SHA1_80), 28 (AEAD_AES_128_GCM) or 44 "
                     "(AEAD_AES_256_GCM) octets, not %zd octets", material.len);
        PyBuffer_Release(&material);
        return NULL;
    }
    size_t salt_len = profile == PROFILE_AES_CM_SHA1_80 ? CM_SALT : GCM_SALT;
    size_t key_len = (size_t)material.len - salt_len;
    if (!sealer_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "SrtpSealer: this CPU has no AES-NI and PCLMULQDQ "
                        "(or this build is not for x86-64); use libsrtp");
        PyBuffer_Release(&material);
        return NULL;
    }
    SealerObject *self = (SealerObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->profile = profile;
#if SEALER_BUILT
        const uint8_t *bytes = (const uint8_t *)material.buf;
        sealer_key(self, bytes, key_len, bytes + key_len, salt_len);
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
    if (packet.len > 65536 - MAX_SEALER_TAG) {
        PyBuffer_Release(&packet);
        PyErr_SetString(PyExc_ValueError, "SrtpSealer.protect: packet too long");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, packet.len + MAX_SEALER_TAG);
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
    if (len < PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, len) < 0)
        return NULL;
    return out;
}

static PyObject *
Sealer_get_streams(SealerObject *self, void *closure)
{
    return PyLong_FromLong(self->stream_count);
}

static PyObject *
Sealer_get_profile(SealerObject *self, void *closure)
{
    return PyUnicode_FromString(self->profile == PROFILE_AES_CM_SHA1_80
                                ? "SRTP_AES128_CM_SHA1_80"
                                : self->profile == PROFILE_AEAD_AES_128_GCM
                                ? "SRTP_AEAD_AES_128_GCM" : "SRTP_AEAD_AES_256_GCM");
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
    {"profile", (getter)Sealer_get_profile, NULL, "the DTLS-SRTP profile (RFC 5764 name)",
     NULL},
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

static PyObject *
sha1_in_use(PyObject *module, PyObject *unused)
{
    sealer_supported();
    return PyUnicode_FromString(sha1_block == sha1_block_portable ? "portable" : "sha-ni");
}

/* sealer_sha1_digest(data, implementation) -> bytes: the plain SHA-1 of `data` with
   the 'portable' or the 'sha-ni' compression, so tests can hold both to hashlib's. */
static PyObject *
sha1_digest(PyObject *module, PyObject *args)
{
    Py_buffer data;
    const char *which;
    if (!PyArg_ParseTuple(args, "y*s:sealer_sha1_digest", &data, &which))
        return NULL;
    sha1_block_fn block = NULL;
    if (strcmp(which, "portable") == 0)
        block = sha1_block_portable;
#if SEALER_BUILT
    else if (strcmp(which, "sha-ni") == 0 && sealer_supported() &&
             __builtin_cpu_supports("sha"))
        block = sha1_block_sha_ni;
#endif
    if (block == NULL) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "sealer_sha1_digest: no %.20s SHA-1 here", which);
        return NULL;
    }
    uint32_t state[5];
    uint8_t digest[20];
    memcpy(state, SHA1_INITIAL, sizeof(state));
    sha1_finish_with(block, state, 0, data.buf, (size_t)data.len, NULL, 0, digest);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)digest, 20);
}

static PyMethodDef sealer_functions[] = {
    {"sealer_sha1_digest", sha1_digest, METH_VARARGS,
     "sealer_sha1_digest(data, 'portable' | 'sha-ni') -> bytes: SHA-1 with one of the "
     "sealer's compressions (for tests)."},
    {"sealer_supported", supported, METH_NOARGS,
     "sealer_supported() -> bool: this build and CPU can run SrtpSealer (AES-NI, PCLMULQDQ)."},
    {"sealer_sha1", sha1_in_use, METH_NOARGS,
     "sealer_sha1() -> 'sha-ni' or 'portable': the SHA-1 the AES-CM profile's HMAC runs on."},
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
