/* lb_backward: analytic block gradients (dL/dW of all seven linears and dL/dx)
 * against central finite differences of a double-precision reference block
 * written here, for L = Σ c ∘ y with random c; the tape's forward against
 * lb_fwd_block; bit-identical results at 1 and 2 threads. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_backward.h"
#include "lb_forward.h"
#include "lb_model.h"
#include "lb_test_model.h"
#include "lb_test_util.h"

typedef struct {
    lb_config cfg;
    int64_t dim, q_dim, kv_dim, inter, hd, nh, nkv;
    double *g1, *g2, *W[LB_LINEAR_COUNT];
} ref_block;

static void ref_rms(const double *x, const double *g, double *o, int64_t dim, double eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < dim; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / (double)dim + eps);
    for (int64_t i = 0; i < dim; i++)
        o[i] = x[i] * inv * g[i];
}

// y (n,) = W (n, k) x (k,)
static void ref_mv(const double *W, const double *x, double *y, int64_t n, int64_t k)
{
    for (int64_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int64_t j = 0; j < k; j++)
            s += W[i * k + j] * x[j];
        y[i] = s;
    }
}

static void ref_rope(double *v, int64_t nh, int64_t hd, int64_t pos, double theta)
{
    for (int64_t h = 0; h < nh; h++)
        for (int64_t i = 0; i < hd / 2; i++) {
            double a = (double)pos * pow(theta, -2.0 * (double)i / (double)hd);
            double c = cos(a), s = sin(a), x0 = v[h * hd + i], x1 = v[h * hd + i + hd / 2];
            v[h * hd + i] = x0 * c - x1 * s;
            v[h * hd + i + hd / 2] = x1 * c + x0 * s;
        }
}

/* y (n_seq * L, dim) = block(x), one token at a time, all in double */
static void ref_forward(const ref_block *b, const double *x, int64_t n_seq, int64_t L, double *y)
{
    const int64_t dim = b->dim, qd = b->q_dim, kd = b->kv_dim, in = b->inter, hd = b->hd;
    double *xn = malloc(sizeof(double) * (size_t)dim), *K = malloc(sizeof(double) * (size_t)(L * kd)),
           *V = malloc(sizeof(double) * (size_t)(L * kd)), *q = malloc(sizeof(double) * (size_t)qd),
           *att = malloc(sizeof(double) * (size_t)qd), *h = malloc(sizeof(double) * (size_t)dim),
           *o = malloc(sizeof(double) * (size_t)dim), *gt = malloc(sizeof(double) * (size_t)in),
           *u = malloc(sizeof(double) * (size_t)in), *sc = malloc(sizeof(double) * (size_t)L);
    for (int64_t s = 0; s < n_seq; s++)
        for (int64_t p = 0; p < L; p++) {
            const double *xr = x + (s * L + p) * dim;
            ref_rms(xr, b->g1, xn, dim, b->cfg.rms_norm_eps);
            ref_mv(b->W[LB_LINEAR_Q], xn, q, qd, dim);
            ref_mv(b->W[LB_LINEAR_K], xn, K + p * kd, kd, dim);
            ref_mv(b->W[LB_LINEAR_V], xn, V + p * kd, kd, dim);
            ref_rope(q, b->nh, hd, p, b->cfg.rope_theta);
            ref_rope(K + p * kd, b->nkv, hd, p, b->cfg.rope_theta);
            for (int64_t hh = 0; hh < b->nh; hh++) {
                int64_t kvh = hh / (b->nh / b->nkv);
                double m = -INFINITY, z = 0.0;
                for (int64_t j = 0; j <= p; j++) {
                    double d = 0.0;
                    for (int64_t i = 0; i < hd; i++)
                        d += q[hh * hd + i] * K[j * kd + kvh * hd + i];
                    sc[j] = d / sqrt((double)hd);
                    m = fmax(m, sc[j]);
                }
                for (int64_t j = 0; j <= p; j++)
                    z += (sc[j] = exp(sc[j] - m));
                for (int64_t i = 0; i < hd; i++) {
                    double acc = 0.0;
                    for (int64_t j = 0; j <= p; j++)
                        acc += sc[j] / z * V[j * kd + kvh * hd + i];
                    att[hh * hd + i] = acc;
                }
            }
            ref_mv(b->W[LB_LINEAR_O], att, o, dim, qd);
            for (int64_t i = 0; i < dim; i++)
                h[i] = xr[i] + o[i];
            ref_rms(h, b->g2, xn, dim, b->cfg.rms_norm_eps);
            ref_mv(b->W[LB_LINEAR_GATE], xn, gt, in, dim);
            ref_mv(b->W[LB_LINEAR_UP], xn, u, in, dim);
            for (int64_t i = 0; i < in; i++)
                gt[i] = gt[i] / (1.0 + exp(-gt[i])) * u[i];
            ref_mv(b->W[LB_LINEAR_DOWN], gt, o, dim, in);
            for (int64_t i = 0; i < dim; i++)
                y[(s * L + p) * dim + i] = h[i] + o[i];
        }
    free(xn);
    free(K);
    free(V);
    free(q);
    free(att);
    free(h);
    free(o);
    free(gt);
    free(u);
    free(sc);
}

static double ref_loss(const ref_block *b, const double *x, int64_t n_seq, int64_t L,
                       const double *c, double *y)
{
    ref_forward(b, x, n_seq, L, y);
    double s = 0.0;
    for (int64_t i = 0; i < n_seq * L * b->dim; i++)
        s += c[i] * y[i];
    return s;
}

static double *to_double(const float *p, int64_t n)
{
    double *d = malloc((size_t)n * sizeof *d);
    assert_non_null(d);
    for (int64_t i = 0; i < n; i++)
        d[i] = (double)p[i];
    return d;
}

typedef struct {
    lb_config cfg;
    lb_block_weights w;
    int64_t n_seq, L, ntok;
    float *x, *c;
} fixture;

static void fixture_new(fixture *f, int32_t dim, int32_t nh, int32_t nkv, int32_t hd,
                        int32_t inter, int64_t n_seq, int64_t L, uint64_t seed)
{
    lb_err err = {0};
    f->cfg = lb_test_model_config(dim, nh, nkv, hd, inter, 32, 1);
    assert_int_equal(lb_block_weights_alloc(&f->cfg, &f->w, &err), 0);
    uint64_t rng = seed;
    for (int64_t i = 0; i < dim; i++) {
        f->w.attn_norm[i] = 1.0f + 0.2f * lb_test_rand_normal(&rng);
        f->w.ffn_norm[i] = 1.0f + 0.2f * lb_test_rand_normal(&rng);
    }
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        int64_t r, cc;
        lb_linear_shape(&f->cfg, (lb_linear)l, &r, &cc);
        float *W = lb_block_linear(&f->w, (lb_linear)l);
        /* larger than 1/sqrt(in) so attention is far from uniform */
        for (int64_t i = 0; i < r * cc; i++)
            W[i] = 1.5f * lb_test_rand_normal(&rng) / sqrtf((float)cc);
    }
    f->n_seq = n_seq;
    f->L = L;
    f->ntok = n_seq * L;
    f->x = malloc((size_t)(f->ntok * dim) * sizeof(float));
    f->c = malloc((size_t)(f->ntok * dim) * sizeof(float));
    assert_non_null(f->x);
    assert_non_null(f->c);
    for (int64_t i = 0; i < f->ntok * dim; i++) {
        f->x[i] = lb_test_rand_normal(&rng);
        f->c[i] = lb_test_rand_normal(&rng);
    }
}

static void fixture_free(fixture *f)
{
    lb_block_weights_free(&f->w);
    free(f->x);
    free(f->c);
}

static void check_close(const char *what, const float *an, const double *fd, int64_t n)
{
    double maxd = 0.0, maxf = 0.0;
    for (int64_t i = 0; i < n; i++) {
        maxd = fmax(maxd, fabs((double)an[i] - fd[i]));
        maxf = fmax(maxf, fabs(fd[i]));
    }
    printf("  %-10s max|fd| %.3e  max|an-fd| %.3e\n", what, maxf, maxd);
    assert_true(maxf > 1e-3);                /* the gradient is not trivially zero */
    assert_true(maxd <= 2e-4 * maxf + 1e-6); /* fp32 analytic vs double FD */
}

static void run_fd(int32_t dim, int32_t nh, int32_t nkv, int32_t hd, int32_t inter,
                   int64_t n_seq, int64_t L, uint64_t seed)
{
    fixture f;
    fixture_new(&f, dim, nh, nkv, hd, inter, n_seq, L, seed);
    lb_err err = {0};
    lb_tape *t = NULL;
    assert_int_equal(lb_tape_new(&f.cfg, f.ntok, L, &t, &err), 0);
    float *y = malloc((size_t)(f.ntok * dim) * sizeof(float));
    float *dx = malloc((size_t)(f.ntok * dim) * sizeof(float));
    float *dW[LB_LINEAR_COUNT];
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        int64_t r, cc;
        lb_linear_shape(&f.cfg, (lb_linear)l, &r, &cc);
        dW[l] = malloc((size_t)(r * cc) * sizeof(float));
    }
    assert_int_equal(lb_tape_backward(t, &f.w, f.c, dx, dW, &err), LB_EINVAL); /* no forward */
    assert_int_equal(lb_tape_forward(t, &f.w, f.x, n_seq, L, y, &err), 0);
    assert_int_equal(lb_tape_backward(t, &f.w, f.c, dx, dW, &err), 0);

    /* the tape's forward is lb_fwd_block's function */
    lb_fwd_workspace *ws = NULL;
    assert_int_equal(lb_fwd_workspace_new(&f.cfg, f.ntok, L, &ws, &err), 0);
    float *y2 = malloc((size_t)(f.ntok * dim) * sizeof(float));
    memcpy(y2, f.x, (size_t)(f.ntok * dim) * sizeof(float));
    assert_int_equal(lb_fwd_block(&f.cfg, &f.w, y2, n_seq, L, ws, NULL, &err), 0);
    for (int64_t i = 0; i < f.ntok * dim; i++)
        assert_true(fabsf(y[i] - y2[i]) <= 1e-5f * (1.0f + fabsf(y2[i])));
    lb_fwd_workspace_free(&ws);
    free(y2);

    ref_block rb = {.cfg = f.cfg, .dim = dim, .hd = hd, .inter = inter, .nh = nh, .nkv = nkv};
    rb.q_dim = (int64_t)nh * hd;
    rb.kv_dim = (int64_t)nkv * hd;
    rb.g1 = to_double(f.w.attn_norm, dim);
    rb.g2 = to_double(f.w.ffn_norm, dim);
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        int64_t r, cc;
        lb_linear_shape(&f.cfg, (lb_linear)l, &r, &cc);
        rb.W[l] = to_double(lb_block_linear(&f.w, (lb_linear)l), r * cc);
    }
    double *xd = to_double(f.x, f.ntok * dim), *cd = to_double(f.c, f.ntok * dim);
    double *yd = malloc((size_t)(f.ntok * dim) * sizeof(double));
    const double h = 1e-5;
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        int64_t r, cc;
        lb_linear_shape(&f.cfg, (lb_linear)l, &r, &cc);
        double *fd = malloc((size_t)(r * cc) * sizeof(double));
        for (int64_t i = 0; i < r * cc; i++) {
            double w0 = rb.W[l][i];
            rb.W[l][i] = w0 + h;
            double lp = ref_loss(&rb, xd, n_seq, L, cd, yd);
            rb.W[l][i] = w0 - h;
            double lm = ref_loss(&rb, xd, n_seq, L, cd, yd);
            rb.W[l][i] = w0;
            fd[i] = (lp - lm) / (2.0 * h);
        }
        check_close(lb_linear_name((lb_linear)l), dW[l], fd, r * cc);
        free(fd);
    }
    double *fdx = malloc((size_t)(f.ntok * dim) * sizeof(double));
    for (int64_t i = 0; i < f.ntok * dim; i++) {
        double x0 = xd[i];
        xd[i] = x0 + h;
        double lp = ref_loss(&rb, xd, n_seq, L, cd, yd);
        xd[i] = x0 - h;
        double lm = ref_loss(&rb, xd, n_seq, L, cd, yd);
        xd[i] = x0;
        fdx[i] = (lp - lm) / (2.0 * h);
    }
    check_close("x", dx, fdx, f.ntok * dim);
    free(fdx);
    free(xd);
    free(cd);
    free(yd);
    free(rb.g1);
    free(rb.g2);
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        free(rb.W[l]);
        free(dW[l]);
    }
    free(y);
    free(dx);
    lb_tape_free(&t);
    assert_null(t);
    fixture_free(&f);
}

static void test_fd_gqa(void **state)
{
    (void)state;
    run_fd(16, 4, 2, 4, 24, 2, 6, 1); /* GQA: 2 query heads per kv head */
}

static void test_fd_mha(void **state)
{
    (void)state;
    run_fd(12, 2, 2, 6, 20, 1, 9, 2); /* MHA, one longer sequence */
}

static void test_threads_identical(void **state)
{
    (void)state;
    fixture f;
    fixture_new(&f, 32, 4, 2, 8, 40, 3, 33, 3);
    lb_err err = {0};
    float *out[2][2];
    const int64_t ndw = 40 * 32;
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run + 1);
        lb_tape *t = NULL;
        assert_int_equal(lb_tape_new(&f.cfg, f.ntok, f.L, &t, &err), 0);
        float *y = malloc((size_t)(f.ntok * 32) * sizeof(float));
        out[run][0] = malloc((size_t)(f.ntok * 32) * sizeof(float));
        out[run][1] = malloc((size_t)ndw * sizeof(float));
        float *dW[LB_LINEAR_COUNT] = {NULL};
        dW[LB_LINEAR_GATE] = out[run][1];
        assert_int_equal(lb_tape_forward(t, &f.w, f.x, f.n_seq, f.L, y, &err), 0);
        assert_int_equal(lb_tape_backward(t, &f.w, f.c, out[run][0], dW, &err), 0);
        lb_tape_free(&t);
        free(y);
    }
    assert_memory_equal(out[0][0], out[1][0], (size_t)(f.ntok * 32) * sizeof(float));
    assert_memory_equal(out[0][1], out[1][1], (size_t)ndw * sizeof(float));
    for (int r = 0; r < 2; r++) {
        free(out[r][0]);
        free(out[r][1]);
    }
    fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_gqa),
        cmocka_unit_test(test_fd_mha),
        cmocka_unit_test(test_threads_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
