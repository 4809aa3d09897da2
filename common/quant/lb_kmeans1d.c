#include "lb_kmeans1d.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Columns at least this long split each DP level over two threads. */
#define LB_KMEANS1D_PAR_MIN_N 1024

/* The first wait, in fits, before the way not in favour is timed again. */
#define LB_KMEANS1D_PROBE 16

/* A barrier for two threads that spins briefly, then yields the CPU: a column's
 * levels are tens of microseconds apart, too short for a sleeping barrier, and on a
 * busy machine a pure spin would burn the time slice its partner needs. The last
 * arrival resets the count and advances the phase (release); waiters acquire it. */
typedef struct {
    atomic_int count;
    atomic_int phase;
} pair_barrier;

/* The optional helper thread and its hand-off state. */
typedef struct {
    bool started;
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* the helper sleeps here between blocks */
    atomic_int go;     /* bumped once per two-thread fit */
    atomic_int stop;
    int64_t n;         /* the fit's shape, written before go */
    int32_t ke;
    pair_barrier bar;  /* level hand-offs */
    int phase;         /* the caller's barrier phase */
    int64_t fits;      /* eligible fits since the last probe */
    int64_t probe;     /* fits between probes of the way not in favour */
    double cost[2];    /* running ns per unit of work: [0] one thread, [1] two */
} km_team;

struct lb_kmeans1d_ws {
    int64_t max_n;
    int32_t max_k;
    uint32_t *keys, *tmp; /* (max_n,) radix sort buffers */
    double *s1, *s2;      /* (max_n + 1,) prefix sums of centred sorted data */
    double *inv;          /* (max_n + 1,) inv[len] = 1 / len */
    double *rinv;         /* (max_n + 1,) rinv[t] = 1 / (max_n + 1 - t): ascending in a */
    double *base[2];      /* (max_n + 1,) base[a] = D[m-1][a] - S2[a]: this level's
                           * and, when two threads run, the next one's */
    double *dprev, *dcur; /* (max_n + 1,) DP rows */
    int32_t *split;       /* (max_k, max_n + 1) leftmost optimal split per level */
    km_team team;         /* two-thread levels (lb_kmeans1d_ws_set_threads) */
};

int lb_kmeans1d_ws_new(int64_t max_n, int32_t max_k, lb_kmeans1d_ws **out, lb_err *err)
{
    *out = NULL;
    if (max_n < 1 || max_n > INT32_MAX - 1 || max_k < 1 || max_k > LB_KMEANS1D_MAX_K)
        return lb_err_set(err, LB_EINVAL,
                          "kmeans1d: workspace for n=%lld, k=%d is out of range "
                          "(need 1 <= n < 2^31, 1 <= k <= %d)",
                          (long long)max_n, max_k, LB_KMEANS1D_MAX_K);
    lb_kmeans1d_ws *ws = calloc(1, sizeof *ws);
    if (!ws)
        return lb_err_set(err, LB_ENOMEM, "kmeans1d: out of memory for the workspace");
    size_t n1 = (size_t)max_n + 1;
    ws->max_n = max_n;
    ws->max_k = max_k;
    ws->keys = malloc((size_t)max_n * sizeof *ws->keys);
    ws->tmp = malloc((size_t)max_n * sizeof *ws->tmp);
    ws->s1 = malloc(n1 * sizeof(double));
    ws->s2 = malloc(n1 * sizeof(double));
    ws->inv = malloc(n1 * sizeof(double));
    ws->rinv = malloc(n1 * sizeof(double));
    ws->base[0] = malloc(n1 * sizeof(double));
    ws->base[1] = malloc(n1 * sizeof(double));
    ws->dprev = malloc(n1 * sizeof(double));
    ws->dcur = malloc(n1 * sizeof(double));
    /* (max_k * n1) int32: max_k <= 256 and n1 < 2^31 so the product fits size_t on 64-bit;
     * check anyway for 32-bit size_t. */
    if (n1 > SIZE_MAX / sizeof(int32_t) / (size_t)max_k) {
        lb_kmeans1d_ws_free(&ws);
        return lb_err_set(err, LB_EINVAL, "kmeans1d: n=%lld, k=%d too large for this platform",
                          (long long)max_n, max_k);
    }
    ws->split = malloc((size_t)max_k * n1 * sizeof(int32_t));
    if (!ws->keys || !ws->tmp || !ws->s1 || !ws->s2 || !ws->inv || !ws->rinv || !ws->base[0] ||
        !ws->base[1] || !ws->dprev || !ws->dcur || !ws->split) {
        lb_kmeans1d_ws_free(&ws);
        return lb_err_set(err, LB_ENOMEM, "kmeans1d: out of memory for n=%lld, k=%d",
                          (long long)max_n, max_k);
    }
    ws->inv[0] = 0.0;
    for (size_t i = 1; i < n1; i++)
        ws->inv[i] = 1.0 / (double)i;
    for (size_t t = 0; t < n1; t++)
        ws->rinv[t] = 1.0 / (double)(n1 - t);
    *out = ws;
    return 0;
}

static void team_stop(lb_kmeans1d_ws *ws);

void lb_kmeans1d_ws_free(lb_kmeans1d_ws **p)
{
    if (!p || !*p)
        return;
    lb_kmeans1d_ws *ws = *p;
    team_stop(ws);
    free(ws->keys);
    free(ws->tmp);
    free(ws->s1);
    free(ws->s2);
    free(ws->inv);
    free(ws->rinv);
    free(ws->base[0]);
    free(ws->base[1]);
    free(ws->dprev);
    free(ws->dcur);
    free(ws->split);
    free(ws);
    *p = NULL;
}

/* Order-preserving map float -> uint32 (for non-NaN inputs). */
static inline uint32_t float_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float key_float(uint32_t k)
{
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* LSD radix sort of n keys, 4 passes of 8 bits; passes where every key has the same
 * byte are skipped. Result in keys. */
static void radix_sort_u32(uint32_t *keys, uint32_t *tmp, int64_t n)
{
    uint32_t *src = keys, *dst = tmp;
    for (int shift = 0; shift < 32; shift += 8) {
        int64_t count[256] = {0};
        for (int64_t i = 0; i < n; i++)
            count[(src[i] >> shift) & 0xffu]++;
        if (count[(src[0] >> shift) & 0xffu] == n)
            continue;
        int64_t pos = 0;
        for (int b = 0; b < 256; b++) {
            int64_t c = count[b];
            count[b] = pos;
            pos += c;
        }
        for (int64_t i = 0; i < n; i++)
            dst[count[(src[i] >> shift) & 0xffu]++] = src[i];
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != keys)
        memcpy(keys, src, (size_t)n * sizeof *keys);
}

/* SSE of sorted run [a, b), b > a. */
static inline double run_sse(const lb_kmeans1d_ws *ws, int64_t a, int64_t b)
{
    double d1 = ws->s1[b] - ws->s1[a];
    double v = (ws->s2[b] - ws->s2[a]) - d1 * d1 * ws->inv[b - a];
    return v > 0.0 ? v : 0.0;
}

/* One DP level by divide and conquer: for b in [blo, bhi], dcur[b] = min over a in
 * [max(alo, prev[b]), min(ahi, b-1)] of D[m-1][a] + SSE(a, b), split[b] = the leftmost
 * argmin. The scan minimises base[a] - (S1[b] - S1[a])^2 / (b - a), the cost less the
 * constant S2[b]. prev (the level below's splits, or NULL) is a lower bound because
 * adding a cluster never moves the last optimal split left (Knuth's monotonicity for
 * costs with the quadrangle inequality). */
static void dp_level(const lb_kmeans1d_ws *ws, const double *base, double *dcur, int32_t *split,
                     const int32_t *prev, int64_t blo, int64_t bhi, int64_t alo, int64_t ahi)
{
    const double *s1 = ws->s1;
    while (blo <= bhi) {
        int64_t mid = blo + (bhi - blo) / 2;
        int64_t hi = ahi < mid - 1 ? ahi : mid - 1;
        int64_t lo = prev && prev[mid] > alo ? prev[mid] : alo;
        const double *rinv = ws->rinv + (ws->max_n + 1 - mid); /* rinv[a] = 1 / (mid - a) */
        double s1b = s1[mid], best = INFINITY;
        int64_t best_a = lo;
        for (int64_t a = lo; a <= hi; a++) {
            double d = s1b - s1[a];
            double v = base[a] - (d * d) * rinv[a];
            if (v < best) {
                best = v;
                best_a = a;
            }
        }
        best += ws->s2[mid];
        dcur[mid] = best > 0.0 ? best : 0.0;
        split[mid] = (int32_t)best_a;
        /* Left half recursively (depth log n), right half by iteration. */
        if (blo <= mid - 1)
            dp_level(ws, base, dcur, split, prev, blo, mid - 1, alo, best_a);
        blo = mid + 1;
        alo = best_a;
    }
}

/* base[a] = D[m][a] - S2[a] for a in [lo, hi], from the level just solved. */
static void level_base(const lb_kmeans1d_ws *ws, double *base, const double *d, int64_t lo,
                       int64_t hi)
{
    for (int64_t a = lo; a <= hi; a++)
        base[a] = d[a] - ws->s2[a];
}

static void pair_barrier_wait(pair_barrier *b, int *phase)
{
    int ph = *phase;
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, ph + 1, memory_order_release);
    } else {
        for (int spin = 0; atomic_load_explicit(&b->phase, memory_order_acquire) == ph; spin++)
            if (spin >= 256)
                sched_yield();
    }
    *phase = ph + 1;
}

/* Levels 2..ke-1 over every b >= m (one thread); D[ke-1] ends in ws->dprev. */
static void dp_levels_serial(lb_kmeans1d_ws *ws, int64_t n, int32_t ke)
{
    const size_t row = (size_t)ws->max_n + 1;
    for (int32_t m = 2; m < ke; m++) {
        int32_t *split = ws->split + (size_t)m * row;
        const int32_t *prev = m > 2 ? split - row : NULL;
        dp_level(ws, ws->base[0], ws->dcur, split, prev, m, n, m - 1, n - 1);
        level_base(ws, ws->base[0], ws->dcur, m, n);
        double *t = ws->dprev;
        ws->dprev = ws->dcur;
        ws->dcur = t;
    }
}

/* One thread's share of levels 2..ke-1 when two threads run them (t = 0 the caller,
 * t = 1 the helper). Thread 0 solves the middle b of each level; the splits left of it
 * lie at or below its split and the ones right of it at or above, so the two halves
 * are independent D&C problems, one per thread. Each thread also writes the next
 * level's base[] over its own half (double-buffered: the other half may still be read).
 * Every value is computed exactly as in the serial order, so the thread count never
 * changes a result. */
static void dp_levels_part(lb_kmeans1d_ws *ws, int64_t n, int32_t ke, int t, int *phase)
{
    const size_t row = (size_t)ws->max_n + 1;
    pair_barrier *bar = &ws->team.bar;
    double *dprev = ws->dprev, *dcur = ws->dcur;
    double *base = ws->base[0], *next = ws->base[1]; /* this level's, the next one's */
    for (int32_t m = 2; m < ke; m++) {
        int32_t *split = ws->split + (size_t)m * row;
        const int32_t *prev = m > 2 ? split - row : NULL;
        const int64_t mid = m + (n - m) / 2;
        if (t == 0)
            dp_level(ws, base, dcur, split, prev, mid, mid, m - 1, n - 1);
        pair_barrier_wait(bar, phase);
        const int64_t amid = split[mid];
        if (t == 0) {
            dp_level(ws, base, dcur, split, prev, m, mid - 1, m - 1, amid);
            level_base(ws, next, dcur, m, mid);
        } else {
            dp_level(ws, base, dcur, split, prev, mid + 1, n, amid, n - 1);
            level_base(ws, next, dcur, mid + 1, n);
        }
        pair_barrier_wait(bar, phase);
        double *tmp = dprev;
        dprev = dcur;
        dcur = tmp;
        tmp = base;
        base = next;
        next = tmp;
    }
    if (t == 0) { /* the helper is past its last read of these */
        ws->dprev = dprev;
        ws->dcur = dcur;
        if (base != ws->base[0]) { /* the final level reads base[0] */
            ws->base[1] = ws->base[0];
            ws->base[0] = base;
        }
    }
}

/* The helper thread: waits for a fit (spin, then yield, then sleep: fits come every
 * ~100 us inside a CLAQ block but milliseconds apart across blocks), runs its half. */
static void *team_main(void *arg)
{
    lb_kmeans1d_ws *ws = arg;
    km_team *tm = &ws->team;
    int phase = 0, seen = 0;
    for (;;) {
        for (int spin = 0; atomic_load_explicit(&tm->go, memory_order_acquire) == seen &&
                           !atomic_load_explicit(&tm->stop, memory_order_acquire);
             spin++) {
            if (spin >= 256 + 4096) {
                pthread_mutex_lock(&tm->mu);
                while (atomic_load_explicit(&tm->go, memory_order_acquire) == seen &&
                       !atomic_load_explicit(&tm->stop, memory_order_acquire))
                    pthread_cond_wait(&tm->cv, &tm->mu);
                pthread_mutex_unlock(&tm->mu);
            } else if (spin >= 256) {
                sched_yield();
            }
        }
        if (atomic_load_explicit(&tm->stop, memory_order_acquire))
            return NULL;
        seen++;
        dp_levels_part(ws, tm->n, tm->ke, 1, &phase);
    }
}

/* Wakes the helper for one fit (n, ke) and runs the caller's half. */
static void dp_levels_parallel(lb_kmeans1d_ws *ws, int64_t n, int32_t ke)
{
    km_team *tm = &ws->team;
    tm->n = n;
    tm->ke = ke;
    pthread_mutex_lock(&tm->mu);
    atomic_fetch_add_explicit(&tm->go, 1, memory_order_release);
    pthread_cond_signal(&tm->cv);
    pthread_mutex_unlock(&tm->mu);
    dp_levels_part(ws, n, ke, 0, &tm->phase);
}

static void team_stop(lb_kmeans1d_ws *ws)
{
    km_team *tm = &ws->team;
    if (!tm->started)
        return;
    pthread_mutex_lock(&tm->mu);
    atomic_store_explicit(&tm->stop, 1, memory_order_release);
    pthread_cond_signal(&tm->cv);
    pthread_mutex_unlock(&tm->mu);
    pthread_join(tm->tid, NULL);
    pthread_cond_destroy(&tm->cv);
    pthread_mutex_destroy(&tm->mu);
    memset(tm, 0, sizeof *tm);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e9 * (double)ts.tv_sec + (double)ts.tv_nsec;
}

/* Runs the levels serially or on two threads, whichever has been faster lately per
 * unit of work (n (ke - 2)). The other way is timed again after `probe` fits; each probe
 * that loses doubles the wait (up to 1024 fits), a switch resets it. On an idle machine
 * two threads win; on an oversubscribed one the partner is often descheduled at a
 * barrier and one thread wins. The result is the same either way. */
static void dp_levels_timed(lb_kmeans1d_ws *ws, int64_t n, int32_t ke)
{
    km_team *tm = &ws->team;
    if (tm->probe < LB_KMEANS1D_PROBE)
        tm->probe = LB_KMEANS1D_PROBE;
    const int favoured = tm->cost[1] <= tm->cost[0]; /* unmeasured (0) ways go first */
    const int probing = ++tm->fits >= tm->probe && tm->cost[0] > 0.0 && tm->cost[1] > 0.0;
    const int two = probing ? !favoured : favoured;
    double t0 = now_ns();
    if (two)
        dp_levels_parallel(ws, n, ke);
    else
        dp_levels_serial(ws, n, ke);
    double c = (now_ns() - t0) / ((double)n * (double)(ke - 2));
    tm->cost[two] = tm->cost[two] > 0.0 ? 0.75 * tm->cost[two] + 0.25 * c : c;
    if (probing) {
        tm->fits = 0;
        if ((tm->cost[1] <= tm->cost[0]) == favoured && tm->probe < 1024)
            tm->probe *= 2; /* the probe lost */
        else
            tm->probe = LB_KMEANS1D_PROBE;
    }
}

int lb_kmeans1d_ws_set_threads(lb_kmeans1d_ws *ws, int threads, lb_err *err)
{
    km_team *tm = &ws->team;
    if (threads < 2) {
        team_stop(ws);
        return 0;
    }
    if (tm->started)
        return 0;
    memset(tm, 0, sizeof *tm);
    if (pthread_mutex_init(&tm->mu, NULL))
        return lb_err_set(err, LB_ENOMEM, "kmeans1d: cannot create a mutex for the helper thread");
    if (pthread_cond_init(&tm->cv, NULL)) {
        pthread_mutex_destroy(&tm->mu);
        return lb_err_set(err, LB_ENOMEM, "kmeans1d: cannot create a condition variable");
    }
    int e = pthread_create(&tm->tid, NULL, team_main, ws);
    if (e) {
        pthread_cond_destroy(&tm->cv);
        pthread_mutex_destroy(&tm->mu);
        return lb_err_set(err, LB_ENOMEM, "kmeans1d: cannot start a helper thread (%s); run with "
                          "one thread", strerror(e));
    }
    tm->started = true;
    return 0;
}

int lb_kmeans1d_fit(lb_kmeans1d_ws *ws, const float *x, int64_t n, int32_t k,
                    float *centroids, double *loss, lb_err *err)
{
    if (n < 1 || n > ws->max_n || k < 1 || k > ws->max_k)
        return lb_err_set(err, LB_EINVAL,
                          "kmeans1d: n=%lld, k=%d outside the workspace (n <= %lld, k <= %d)",
                          (long long)n, k, (long long)ws->max_n, ws->max_k);
    double mean = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return lb_err_set(err, LB_ENUMERIC,
                              "kmeans1d: input %lld is not finite; check the weights", (long long)i);
        ws->keys[i] = float_key(x[i]);
        mean += (double)x[i];
    }
    mean /= (double)n;
    radix_sort_u32(ws->keys, ws->tmp, n);
    /* Centring keeps S2 - S1^2/len from cancelling badly. */
    ws->s1[0] = ws->s2[0] = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double v = (double)key_float(ws->keys[i]) - mean;
        ws->s1[i + 1] = ws->s1[i] + v;
        ws->s2[i + 1] = ws->s2[i] + v * v;
    }
    int32_t ke = (int64_t)k < n ? k : (int32_t)n; /* clusters actually formed */

    /* Level 1: D[1][b] = SSE(0, b). */
    ws->dprev[0] = 0.0;
    for (int64_t b = 1; b <= n; b++)
        ws->dprev[b] = run_sse(ws, 0, b);
    double total;
    if (ke == 1) {
        total = ws->dprev[n];
    } else {
        level_base(ws, ws->base[0], ws->dprev, 0, n);
        /* Levels 2..ke-1 over every b >= m; level ke only at b = n. Two threads pay off
         * only on long columns. */
        if (ws->team.started && n >= LB_KMEANS1D_PAR_MIN_N && ke > 2)
            dp_levels_timed(ws, n, ke);
        else
            dp_levels_serial(ws, n, ke);
        int32_t *split = ws->split; /* level ke only needs b = n: row 0 (unused otherwise) */
        const int32_t *prev = ke > 2 ? ws->split + (size_t)(ke - 1) * (size_t)(ws->max_n + 1) : NULL;
        dp_level(ws, ws->base[0], ws->dcur, split, prev, n, n, ke - 1, n - 1);
        total = ws->dcur[n];
    }
    /* Backtrack the runs from the right. */
    int64_t b = n;
    for (int32_t m = ke; m >= 1; m--) {
        int64_t a;
        if (m == 1)
            a = 0;
        else if (m == ke)
            a = ws->split[n];
        else
            a = ws->split[(size_t)m * (size_t)(ws->max_n + 1) + (size_t)b];
        double c = (ws->s1[b] - ws->s1[a]) * ws->inv[b - a] + mean;
        centroids[m - 1] = (float)c;
        b = a;
    }
    for (int32_t m = ke; m < k; m++)
        centroids[m] = centroids[ke - 1];
    if (loss)
        *loss = total;
    return 0;
}

void lb_kmeans1d_assign(const float *x, int64_t n, const float *centroids, int32_t k,
                        uint8_t *codes)
{
    for (int64_t i = 0; i < n; i++) {
        /* Differences of floats are exact in double, so ties are real ties. */
        double best = fabs((double)x[i] - (double)centroids[0]);
        int32_t bi = 0;
        for (int32_t c = 1; c < k; c++) {
            double d = fabs((double)x[i] - (double)centroids[c]);
            if (d < best) {
                best = d;
                bi = c;
            }
        }
        codes[i] = (uint8_t)bi;
    }
}

void lb_kmeans1d_assign_sorted(const float *x, int64_t n, const float *centroids, int32_t k,
                               uint8_t *codes)
{
    for (int64_t i = 0; i < n; i++) {
        const double xi = (double)x[i];
        int32_t lo = 0, hi = k; /* p = the number of centroids <= x */
        while (lo < hi) {
            int32_t mid = (lo + hi) / 2;
            if ((double)centroids[mid] <= xi)
                lo = mid + 1;
            else
                hi = mid;
        }
        const int32_t p = lo;
        int32_t j;
        if (p == 0) {
            j = 0;
        } else if (p == k) {
            j = k - 1;
        } else {
            double dl = fabs(xi - (double)centroids[p - 1]), dr = fabs(xi - (double)centroids[p]);
            j = dr < dl ? p : p - 1;
        }
        /* Distances fall up to p - 1 and rise from p: the first index with the minimum
         * is found by walking left over equal distances (repeated centroids). */
        while (j > 0 && fabs(xi - (double)centroids[j - 1]) == fabs(xi - (double)centroids[j]))
            j--;
        codes[i] = (uint8_t)j;
    }
}

double lb_kmeans1d_loss(const float *x, int64_t n, const float *centroids, int32_t k)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double best = INFINITY;
        for (int32_t c = 0; c < k; c++) {
            double d = (double)x[i] - (double)centroids[c];
            if (d * d < best)
                best = d * d;
        }
        s += best;
    }
    return s;
}
