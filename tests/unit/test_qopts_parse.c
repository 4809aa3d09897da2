#include "lb_test_util.h"

#include <stdio.h>
#include <string.h>

#include "lb_distill_opts.h"
#include "lb_qopts_parse.h"

/* Parses a whitespace-separated command line; returns the first non-option index or a
 * negative code. */
static int parse_line(lb_qopts *o, const char *line, lb_err *err)
{
    char buf[512];
    char *argv[64];
    int argc = 0;
    snprintf(buf, sizeof buf, "%s", line);
    for (char *t = strtok(buf, " "); t && argc < 64; t = strtok(NULL, " "))
        argv[argc++] = t;
    lb_qopts_init(o);
    int i = 0;
    while (i < argc) {
        int r = lb_qopts_parse_arg(o, argc, argv, &i, err);
        if (r < 0)
            return r;
        if (r == 0)
            return i;
    }
    return i;
}

static void test_every_option(void **state)
{
    (void)state;
    lb_qopts o;
    lb_err err = {0};
    int n = parse_line(&o,
                       "--bits 2.1 --group-size 128 --act-order --static-groups --sym --grid mse "
                       "--damp 0.05 --block-size 64 --salient 0.2 --salient-bits 4 "
                       "--salient-criterion magnitude --salient-group 128 --bases 3 "
                       "--refine-iters 7 --hessian-weighted --gptq-init --outlier-threshold 9.5 "
                       "--outlier-keep 0.02,0.001 --outlier-top-frac 0.2 --outlier-hessian-score "
                       "--centroids-with-outliers --seed 42 --rotate hadamard",
                       &err);
    if (n != 39) /* every token consumed */
        fail_msg("parsed %d: %s", n, err.msg);
    assert_true(o.bits == 2.1);
    assert_int_equal(o.group_size, 128);
    assert_true(o.act_order && o.static_groups && o.sym);
    assert_int_equal(o.grid, LB_GRID_MSE);
    assert_true(o.damp == 0.05);
    assert_int_equal(o.block_size, 64);
    assert_true(o.salient_frac == 0.2);
    assert_int_equal(o.salient_bits, 4);
    assert_int_equal(o.salient_criterion, LB_SALIENT_MAGNITUDE);
    assert_int_equal(o.salient_group, 128);
    assert_int_equal(o.bases, 3);
    assert_int_equal(o.refine_iters, 7);
    assert_true(o.hessian_weighted && o.gptq_init && o.outlier_hessian_score &&
                o.centroids_with_outliers);
    assert_true(o.outlier_threshold == 9.5);
    assert_true(o.outlier_keep_top == 0.02 && o.outlier_keep_rest == 0.001);
    assert_true(o.outlier_top_frac == 0.2);
    assert_int_equal(o.seed, 42);
    assert_int_equal(o.rotate, 1);
    assert_int_equal(lb_qopts_validate(&o, &err), 0);
    /* --opt=value form, and a non-option stops the scan without consuming it */
    n = parse_line(&o, "--bits=3 --grid=minmax --weight w.st", &err);
    assert_int_equal(n, 2);
    assert_true(o.bits == 3.0);
    assert_int_equal(o.grid, LB_GRID_MINMAX);
    n = parse_line(&o, "--rotate=auto", &err);
    assert_int_equal(n, 1);
    assert_int_equal(o.rotate, -1);
    /* llama.cpp K-quant grids (gptq) */
    static const char *const kg[3] = {"q2_k", "q3_k", "q4_k"};
    static const lb_qgrid kv[3] = {LB_GRID_Q2_K, LB_GRID_Q3_K, LB_GRID_Q4_K};
    for (int i = 0; i < 3; i++) {
        char line[32];
        snprintf(line, sizeof line, "--grid %s", kg[i]);
        assert_int_equal(parse_line(&o, line, &err), 2);
        assert_int_equal(o.grid, kv[i]);
        assert_string_equal(lb_qgrid_name(o.grid), kg[i]);
    }
}

static void test_rejects(void **state)
{
    (void)state;
    const char *bad[] = {"--bits",          "--bits 0.5",         "--bits 17",
                         "--bits nan",      "--bits 3x",          "--group-size -1",
                         "--group-size 1.5", "--damp 2",          "--grid best",
                         "--salient 1.5",   "--salient-bits 0",   "--salient-criterion x",
                         "--bases 5",       "--refine-iters -1",  "--outlier-threshold 0",
                         "--outlier-keep 0.1", "--outlier-keep a,b", "--outlier-keep 0.1,2",
                         "--sym=1",         "--block-size 0",     "--seed -3",
                         "--rotate",        "--rotate quip",      "--grid q5_k"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lb_qopts o;
        lb_err err = {0};
        int rc = parse_line(&o, bad[i], &err);
        if (rc != LB_EINVAL || !strchr(err.msg, '-') || strchr(err.msg, '\n'))
            fail_msg("'%s' gave %d '%s'", bad[i], rc, err.msg);
    }
    lb_qopts o;
    lb_err err = {0};
    assert_int_equal(parse_line(&o, "--static-groups", &err), 1);
    assert_int_equal(lb_qopts_validate(&o, &err), LB_EINVAL);
    assert_non_null(strstr(lb_qopts_usage(), "--outlier-keep"));
}

/* The description is generated from lb_qopts_table.h; it is hashed into run ids,
 * so the defaults must keep the bytes of the hand-written format it replaced. */
static void test_describe_golden(void **state)
{
    (void)state;
    lb_qopts o;
    lb_qopts_init(&o);
    char buf[1024];
    lb_qopts_describe(&o, buf, sizeof buf);
    assert_string_equal(buf, "bits=4,group_size=0,act_order=0,static_groups=0,sym=0,grid=minmax,"
                        "damp=0.01,block_size=128,outlier_threshold=13,outlier_hessian_score=0,"
                        "outlier_keep_top=0.014,outlier_keep_rest=0.004,outlier_top_frac=0.1,"
                        "centroids_with_outliers=0,salient_frac=0.1,salient_bits=8,"
                        "salient_criterion=hessian,salient_group=0,bases=2,refine_iters=10,"
                        "hessian_weighted=0,gptq_init=0,seed=0");
    o.rotate = 1;
    o.seed = 18446744073709551615ull;
    lb_qopts_describe(&o, buf, sizeof buf);
    assert_non_null(strstr(buf, ",seed=18446744073709551615,rotate=hadamard"));
    /* a LATE option is described only when set: --damp-auto (numeric/test_gptq runs it) */
    lb_qopts_init(&o);
    lb_err err = {0};
    assert_int_equal(parse_line(&o, "--damp-auto", &err), 1);
    assert_true(o.damp_auto);
    lb_qopts_describe(&o, buf, sizeof buf);
    assert_non_null(strstr(buf, ",seed=0,damp_auto=1"));
    /* every option of the usage text parses, and the JSON names them all */
    size_t n;
    const lb_qopt_desc *rows = lb_qopts_table(&n);
    for (size_t k = 0; k < n; k++)
        if (rows[k].cli)
            assert_non_null(strstr(lb_qopts_usage(), rows[k].cli));
}

/* moved from tests/numeric/test_distill.c: argv parsing is not a kernel */
static void test_distill_cli_options(void **state)
{
    (void)state;
    lb_distill_opts o;
    lb_distill_opts_init(&o);
    char *argv[] = {"x", "--distill", "200", "--distill-lr=0.005", "--bits", "2",
                    "--distill-batch", "4", "--distill-seed", "7", "--distill", "-1",
                    "--distill-lr", "2"};
    const int argc = (int)(sizeof argv / sizeof argv[0]);
    lb_err err = {0};
    int i = 1;
    assert_int_equal(lb_distill_parse_arg(&o, argc, argv, &i, &err), 1);
    assert_int_equal(i, 3);
    assert_int_equal(o.steps, 200);
    assert_int_equal(lb_distill_parse_arg(&o, argc, argv, &i, &err), 1);
    assert_int_equal(i, 4);
    assert_true(o.lr == 0.005);
    assert_int_equal(lb_distill_parse_arg(&o, argc, argv, &i, &err), 0); /* --bits: not ours */
    i = 6;
    assert_int_equal(lb_distill_parse_arg(&o, argc, argv, &i, &err), 1);
    assert_int_equal(o.batch_seqs, 4);
    assert_int_equal(lb_distill_parse_arg(&o, argc, argv, &i, &err), 1);
    assert_int_equal(o.seed, 7);
    assert_int_equal(lb_distill_parse_arg(&o, argc, argv, &i, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "--distill"));
    i = 12;
    assert_int_equal(lb_distill_parse_arg(&o, argc, argv, &i, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "--distill-lr"));
    char *argv2[] = {"x", "--distill"};
    i = 1;
    assert_int_equal(lb_distill_parse_arg(&o, 2, argv2, &i, &err), LB_EINVAL); /* missing */
    char js[512];
    assert_int_equal(lb_distill_opts_json(&o, js, sizeof js, &err), 0);
    assert_non_null(strstr(js, "\"steps\":200"));
    assert_non_null(strstr(js, "\"lr\":0.005"));
    assert_int_equal(lb_distill_opts_json(&o, js, 20, &err), LB_EINVAL);
    assert_non_null(strstr(lb_distill_usage(), "--distill-lr"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_option),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_describe_golden),
        cmocka_unit_test(test_distill_cli_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
