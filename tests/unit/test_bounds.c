/* Bounded resources (issue 14, docs/io-formats.md "Limits"): input that
 * announces absurd sizes gets a clear one-line error at once; it never
 * makes lowbit allocate gigabytes or spin. Each case runs in a child whose
 * address space is capped at its current size + 1 GiB (not under the
 * sanitizers, whose shadow maps need it), and must finish in 2 s. */
#include "lb_test_util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lb_config.h"
#include "lb_job.h"
#include "lb_safetensors.h"
#include "lb_sha256.h"
#include "lb_xfer.h"

/* ASan reserves terabytes of address space: no RLIMIT_AS cap under it (compile-time,
 * so no environment variable has to say so). */
#if defined(__SANITIZE_ADDRESS__)
#define LB_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LB_TEST_ASAN 1
#endif
#endif
#ifndef LB_TEST_ASAN
#define LB_TEST_ASAN 0
#endif

static char *tdir;

static int setup(void **state)
{
    (void)state;
    tdir = lb_test_mkdtemp();
    return tdir ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    lb_test_rmdir(&tdir);
    return 0;
}

/* Virtual size of this process in bytes (VmSize), 0 when unknown. */
static unsigned long long vm_size(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

typedef int (*case_fn)(lb_err *err);

/* Runs fn in a capped child; checks its code, that the message contains
 * `want` and is one line, and that it took < 2 s. */
static void run_capped(const char *what, case_fn fn, int want_code, const char *want)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        unsigned long long vs = vm_size();
        if (!LB_TEST_ASAN && vs) {
            struct rlimit rl = {vs + (1ull << 30), vs + (1ull << 30)};
            setrlimit(RLIMIT_AS, &rl);
        }
        alarm(10); /* a hang fails the parent's checks instead of the suite */
        lb_err err = {0};
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int rc = fn(&err);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
        char out[400];
        int n = snprintf(out, sizeof out, "%d %.3f %s", rc, s, err.msg);
        if (write(pfd[1], out, (size_t)n) != n)
            _exit(3);
        _exit(0);
    }
    close(pfd[1]);
    char buf[400] = {0};
    size_t got = 0;
    ssize_t r;
    while ((r = read(pfd[0], buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)r;
    close(pfd[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("%s: child died (status %d)", what, status);
    int rc = 0;
    double secs = 0;
    int off = 0;
    assert_int_equal(sscanf(buf, "%d %lf %n", &rc, &secs, &off), 2);
    const char *msg = buf + off;
    print_message("%s: %d in %.3f s: %s\n", what, rc, secs, msg);
    if (rc != want_code || !strstr(msg, want) || strchr(msg, '\n') || secs > 2.0)
        fail_msg("%s: got %d '%s' in %.3f s, want %d '%s'", what, rc, msg, secs, want_code, want);
}

/* ---- a safetensors header declaring huge shapes ---- */

static char st_path[4096];

static void write_st(const char *header, size_t data_len)
{
    snprintf(st_path, sizeof st_path, "%s/huge.safetensors", tdir);
    FILE *f = fopen(st_path, "wb");
    assert_non_null(f);
    uint64_t n = strlen(header);
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(n >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_len; i++)
        fputc(0, f);
    fclose(f);
}

static int open_st(lb_err *err)
{
    lb_st *st = NULL;
    int rc = lb_st_open(&st, st_path, err);
    lb_st_free(&st);
    return rc;
}

static void test_safetensors_huge_shapes(void **state)
{
    (void)state;
    /* 2^20 x 2^20 x 2^10 F32 = 4 PiB announced in a 100-byte file */
    write_st("{\"w\":{\"dtype\":\"F32\",\"shape\":[1048576,1048576,1024],"
             "\"data_offsets\":[0,4503599627370496]}}", 8);
    run_capped("safetensors 4 PiB tensor", open_st, LB_EFORMAT, "past the data area");
    write_st("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
             8);
    run_capped("safetensors shape overflow", open_st, LB_EFORMAT, "overflows");
    /* a 100 MB header length with 2 bytes behind it */
    uint8_t hdr[10] = {0x00, 0xe1, 0xf5, 0x05, 0, 0, 0, 0, '{', '}'};
    FILE *f = fopen(st_path, "wb");
    fwrite(hdr, 1, sizeof hdr, f);
    fclose(f);
    run_capped("safetensors 100 MB header length", open_st, LB_EFORMAT, "past the end");
}

/* ---- config.json beyond the limits ---- */

static int parse_huge_config(lb_err *err)
{
    lb_config cfg;
    return lb_config_parse(&cfg,
                           "{\"model_type\":\"llama\",\"hidden_size\":1073741824,"
                           "\"intermediate_size\":172,\"num_hidden_layers\":2,"
                           "\"num_attention_heads\":8,\"vocab_size\":512,"
                           "\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5}",
                           "huge/config.json", err);
}

static int parse_huge_vocab(lb_err *err)
{
    lb_config cfg;
    return lb_config_parse(&cfg,
                           "{\"model_type\":\"llama\",\"hidden_size\":64,"
                           "\"intermediate_size\":172,\"num_hidden_layers\":2,"
                           "\"num_attention_heads\":8,\"vocab_size\":2000000000,"
                           "\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5}",
                           "huge/config.json", err);
}

static void test_config_limits(void **state)
{
    (void)state;
    run_capped("config hidden_size 2^30", parse_huge_config, LB_EFORMAT,
               "\"hidden_size\" = 1073741824 exceeds lowbit's limit 131072");
    run_capped("config vocab_size 2e9", parse_huge_vocab, LB_EFORMAT, "vocab_size");
}

/* ---- msgpack records announcing 2^31 entries ---- */

static int decode_job_map(lb_err *err)
{
    /* ["lbjob", 3, {2^31 entries...}] with nothing behind the map header */
    const uint8_t b[] = {0x93, 0xa5, 'l', 'b', 'j', 'o', 'b', 0x03, 0xdf, 0x80, 0, 0, 0};
    lb_job job;
    int rc = lb_job_decode(b, sizeof b, &job, err);
    lb_job_clear(&job);
    return rc;
}

static int decode_result_map(lb_err *err)
{
    const uint8_t b[] = {0xdf, 0x80, 0, 0, 0, 0xc0};
    lb_job_result r;
    return lb_job_result_decode(b, sizeof b, &r, err);
}

static int decode_job_array(lb_err *err)
{
    const uint8_t b[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xa5, 'l', 'b', 'j', 'o', 'b'};
    lb_job job;
    int rc = lb_job_decode(b, sizeof b, &job, err);
    lb_job_clear(&job);
    return rc;
}

static void test_msgpack_huge_counts(void **state)
{
    (void)state;
    run_capped("job with a 2^31-entry map", decode_job_map, LB_EFORMAT, "");
    run_capped("result that is a 2^31-entry map", decode_result_map, LB_EFORMAT, "");
    run_capped("job array of 2^32-1 elements", decode_job_array, LB_EFORMAT, "");
}

/* ---- an artifact frame announcing 100 GB ---- */

static int check_100gb(lb_err *err)
{
    lb_xfer_hdr h = {.version = LB_XFER_VERSION, .cmd = LB_XFER_PUT, .nframes = 1,
                     .size = 100ull * 1000 * 1000 * 1000};
    lb_sha256_hex("x", 1, h.id);
    uint8_t raw[LB_XFER_HDR_SIZE];
    lb_xfer_hdr_encode(&h, raw);
    lb_xfer_hdr d;
    int rc = lb_xfer_hdr_decode(raw, sizeof raw, &d, err);
    if (rc)
        return rc;
    const lb_xfer_span fr = {"abcd", 4};
    return lb_xfer_payload_check(&d, &fr, 1, err);
}

static int check_frames_100gb(lb_err *err)
{
    /* 25,000 frames of 4 MiB would be 100 GB: the count must match first */
    lb_xfer_hdr h = {.version = LB_XFER_VERSION, .cmd = LB_XFER_PUT, .nframes = 25000,
                     .size = 100ull * 1000 * 1000 * 1000};
    const lb_xfer_span fr = {"abcd", 4};
    return lb_xfer_payload_check(&h, &fr, 1, err);
}

static void test_xfer_100gb(void **state)
{
    (void)state;
    run_capped("xfer header announcing 100 GB", check_100gb, LB_EFORMAT,
               "header announces 100000000000 payload bytes");
    run_capped("xfer 25000 frames announced", check_frames_100gb, LB_EFORMAT,
               "header announces 25000 payload frames, 1 arrived");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors_huge_shapes),
        cmocka_unit_test(test_config_limits),
        cmocka_unit_test(test_msgpack_huge_counts),
        cmocka_unit_test(test_xfer_100gb),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
