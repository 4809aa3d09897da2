/* SHA-256 per FIPS 180-4. Byte order is handled explicitly, so the digest does
 * not depend on the host. */
#include "lb_sha256.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define LB_SHA256_SHANI 1
#endif

/* §4.2.2: first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
    0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
    0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
    0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
    0xc67178f2u,
};

static inline uint32_t rotr(uint32_t x, unsigned n) { return (x >> n) | (x << (32u - n)); }

/* §6.2.2: one 512-bit block. */
static void compress(uint32_t st[8], const uint8_t *blk)
{
    uint32_t w[64];
    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)blk[4 * t] << 24 | (uint32_t)blk[4 * t + 1] << 16 |
               (uint32_t)blk[4 * t + 2] << 8 | (uint32_t)blk[4 * t + 3];
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);  /* σ0 (4.6) */
        uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);   /* σ1 (4.7) */
        w[t] = s1 + w[t - 7] + s0 + w[t - 16];
    }
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    uint32_t e = st[4], f = st[5], g = st[6], h = st[7];
    for (int t = 0; t < 64; t++) {
        uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);  /* Σ1 (4.5) */
        uint32_t ch = (e & f) ^ (~e & g);                      /* Ch (4.2) */
        uint32_t t1 = h + S1 + ch + K[t] + w[t];
        uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);  /* Σ0 (4.4) */
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);            /* Maj (4.3) */
        uint32_t t2 = S0 + maj;
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
    st[4] += e;
    st[5] += f;
    st[6] += g;
    st[7] += h;
}

static _Atomic int force_portable;

#ifdef LB_SHA256_SHANI
/* The same blocks with the x86 SHA extensions (Intel, "New Instructions Supporting the
 * Secure Hash Algorithm on Intel Architecture Processors", 2013): the state is held as
 * ABEF and CDGH, SHA256RNDS2 runs two rounds, SHA256MSG1/MSG2 extend the schedule
 * (4.6, 4.7) four words at a time. About 10x the portable code; same digests. */
__attribute__((target("sha,ssse3,sse4.1"))) static void compress_shani(uint32_t st[8],
                                                                        const uint8_t *p,
                                                                        size_t nblocks)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i t = _mm_loadu_si128((const __m128i *)&st[0]);   /* D C B A */
    __m128i s1 = _mm_loadu_si128((const __m128i *)&st[4]);  /* H G F E */
    t = _mm_shuffle_epi32(t, 0xB1);                          /* C D A B */
    s1 = _mm_shuffle_epi32(s1, 0x1B);                        /* E F G H */
    __m128i s0 = _mm_alignr_epi8(t, s1, 8);                  /* A B E F */
    s1 = _mm_blend_epi16(s1, t, 0xF0);                       /* C D G H */
    for (; nblocks > 0; nblocks--, p += 64) {
        const __m128i save0 = s0, save1 = s1;
        __m128i w[4];
        for (int i = 0; i < 4; i++)
            w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
        for (int j = 0; j < 16; j++) {
            __m128i g;
            if (j < 4) {
                g = w[j];
            } else { /* W[4j..4j+3] from the four groups before (4.6, 4.7) */
                g = _mm_sha256msg1_epu32(w[j & 3], w[(j + 1) & 3]);
                g = _mm_add_epi32(g, _mm_alignr_epi8(w[(j + 3) & 3], w[(j + 2) & 3], 4));
                g = _mm_sha256msg2_epu32(g, w[(j + 3) & 3]);
                w[j & 3] = g;
            }
            __m128i m = _mm_add_epi32(g, _mm_loadu_si128((const __m128i *)&K[4 * j]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, m);
            m = _mm_shuffle_epi32(m, 0x0E);
            s0 = _mm_sha256rnds2_epu32(s0, s1, m);
        }
        s0 = _mm_add_epi32(s0, save0);
        s1 = _mm_add_epi32(s1, save1);
    }
    t = _mm_shuffle_epi32(s0, 0x1B);      /* F E B A */
    s1 = _mm_shuffle_epi32(s1, 0xB1);     /* D C H G */
    s0 = _mm_blend_epi16(t, s1, 0xF0);    /* D C B A */
    s1 = _mm_alignr_epi8(s1, t, 8);       /* H G F E */
    _mm_storeu_si128((__m128i *)&st[0], s0);
    _mm_storeu_si128((__m128i *)&st[4], s1);
}

/* CPUID leaf 7 EBX bit 29: SHA; leaf 1 ECX bits 9 and 19: SSSE3, SSE4.1. */
static int cpu_has_shani(void)
{
    static _Atomic int cached = -1; /* every thread computes the same value */
    int v = cached;
    if (v < 0) {
        unsigned a, b, c, d;
        v = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 9)) && (c & (1u << 19)) &&
            __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29));
        cached = v;
    }
    return v && !force_portable;
}
#endif

void lb_sha256_force_portable(int on)
{
    force_portable = on != 0;
}

/* nblocks consecutive 64-byte blocks. */
static void compress_blocks(uint32_t st[8], const uint8_t *p, size_t nblocks)
{
#ifdef LB_SHA256_SHANI
    if (cpu_has_shani()) {
        compress_shani(st, p, nblocks);
        return;
    }
#endif
    for (; nblocks > 0; nblocks--, p += 64)
        compress(st, p);
}

void lb_sha256_init(lb_sha256 *s)
{
    static const uint32_t H0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(s->state, H0, sizeof H0);
    s->total = 0;
    s->buflen = 0;
}

void lb_sha256_update(lb_sha256 *s, const void *data, size_t n)
{
    const uint8_t *p = data;
    if (n == 0)
        return; /* data may be NULL */
    s->total += n;
    if (s->buflen) {
        size_t take = 64 - s->buflen < n ? 64 - s->buflen : n;
        memcpy(s->buf + s->buflen, p, take);
        s->buflen += take;
        p += take;
        n -= take;
        if (s->buflen < 64)
            return;
        compress_blocks(s->state, s->buf, 1);
        s->buflen = 0;
    }
    compress_blocks(s->state, p, n / 64);
    p += n / 64 * 64;
    n %= 64;
    if (n) {
        memcpy(s->buf, p, n);
        s->buflen = n;
    }
}

void lb_sha256_final(lb_sha256 *s, uint8_t digest[LB_SHA256_DIGEST])
{
    uint64_t bits = s->total * 8u; /* message length mod 2^64 bits, as the standard says */
    uint8_t pad[72] = {0x80};
    size_t padlen = (s->buflen < 56 ? 56 : 120) - s->buflen;
    for (int i = 0; i < 8; i++)
        pad[padlen + (size_t)i] = (uint8_t)(bits >> (56 - 8 * i));
    uint64_t keep = s->total;
    lb_sha256_update(s, pad, padlen + 8);
    s->total = keep;
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (uint8_t)(s->state[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(s->state[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(s->state[i] >> 8);
        digest[4 * i + 3] = (uint8_t)s->state[i];
    }
}

void lb_sha256_to_hex(const uint8_t digest[LB_SHA256_DIGEST], char hex[LB_SHA256_HEX])
{
    static const char xd[] = "0123456789abcdef";
    for (int i = 0; i < LB_SHA256_DIGEST; i++) {
        hex[2 * i] = xd[digest[i] >> 4];
        hex[2 * i + 1] = xd[digest[i] & 15];
    }
    hex[64] = '\0';
}

void lb_sha256_hex(const void *data, size_t n, char hex[LB_SHA256_HEX])
{
    lb_sha256 s;
    uint8_t d[LB_SHA256_DIGEST];
    lb_sha256_init(&s);
    lb_sha256_update(&s, data, n);
    lb_sha256_final(&s, d);
    lb_sha256_to_hex(d, hex);
}

int lb_sha256_file(const char *path, char hex[LB_SHA256_HEX], lb_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return lb_err_set(err, LB_EIO, "%s: cannot open for hashing: %s", path, strerror(errno));
    lb_sha256 s;
    lb_sha256_init(&s);
    uint8_t chunk[16384];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        lb_sha256_update(&s, chunk, got);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return lb_err_set(err, LB_EIO, "%s: read error while hashing", path);
    uint8_t d[LB_SHA256_DIGEST];
    lb_sha256_final(&s, d);
    lb_sha256_to_hex(d, hex);
    return 0;
}
