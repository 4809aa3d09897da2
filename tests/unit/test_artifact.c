/* lb_artifact: put/has round trip, verification of id, kind and data checksum,
 * qlinear artifacts read back exactly, removal. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_artifact.h"
#include "lb_sha256.h"
#include "lb_test_util.h"

static void test_put_verify_corrupt(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    lb_store *s = NULL;
    lb_err err;
    assert_int_equal(lb_store_open(dir, &s, &err), 0);
    char id[LB_SHA256_HEX], other[LB_SHA256_HEX];
    lb_sha256_hex("a", 1, id);
    lb_sha256_hex("b", 1, other);
    assert_false(lb_store_has(s, id, NULL));
    float x[6] = {1, 2, 3, 4, 5, 6};
    lb_artifact_tensor t = {"x", LB_DTYPE_F32, 2, {2, 3, 0, 0}, x, sizeof x};
    const char *meta[] = {"k", "v"};
    assert_int_equal(lb_store_put(s, id, "activations", &t, 1, meta, 1, &err), 0);
    assert_true(lb_store_has(s, id, "activations"));
    assert_true(lb_store_has(s, id, NULL));
    assert_false(lb_store_has(s, id, "hessian")); /* wrong kind */
    lb_st *st = NULL;
    assert_int_equal(lb_store_open_artifact(s, id, "activations", &st, &err), 0);
    assert_string_equal(lb_st_metadata_get(st, "k"), "v");
    lb_st_free(&st);
    assert_int_equal(lb_store_open_artifact(s, other, NULL, &st, &err), LB_ENOTFOUND);

    /* renamed onto another id: it does not name itself -> absent */
    char *pa = lb_store_path(s, id), *pb = lb_store_path(s, other);
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "cp '%s' '%s'", pa, pb), 0);
    free(out);
    assert_false(lb_store_has(s, other, NULL));
    assert_int_equal(lb_store_open_artifact(s, other, NULL, &st, &err), LB_EFORMAT);

    /* one flipped data byte -> checksum mismatch */
    FILE *f = fopen(pa, "r+b");
    assert_non_null(f);
    fseek(f, -1, SEEK_END);
    int c = fgetc(f);
    fseek(f, -1, SEEK_END);
    fputc(c ^ 1, f);
    fclose(f);
    assert_false(lb_store_has(s, id, NULL));
    assert_int_equal(lb_store_open_artifact(s, id, NULL, &st, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "checksum"));
    assert_int_equal(lb_store_remove(s, id, &err), 0);
    assert_int_equal(lb_store_remove(s, id, &err), 0); /* absent is fine */
    free(pa);
    free(pb);
    lb_store_free(&s);
    lb_test_rmdir(&dir);
}

static void test_qlinear_round_trip(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    lb_store *s = NULL;
    lb_err err;
    assert_int_equal(lb_store_open(dir, &s, &err), 0);
    lb_qpacked p;
    memset(&p, 0, sizeof p);
    strcpy(p.method, "rtn");
    p.rows = 4;
    p.cols = 8;
    int64_t shape[2] = {4, 8}, sshape[1] = {4};
    assert_non_null(lb_qpacked_add_field(&p, "codes", LB_QFIELD_UINT, 3, 2, shape, &err));
    assert_non_null(lb_qpacked_add_field(&p, "scales", LB_QFIELD_F16, 16, 1, sshape, &err));
    for (int i = 0; i < 32; i++)
        lb_qfield_put(&p.fields[0], i, (uint32_t)(i % 8));
    for (int i = 0; i < 4; i++)
        lb_qfield_put_float(&p.fields[1], i, 0.5f * (float)(i + 1));
    char id[LB_SHA256_HEX];
    lb_sha256_hex("q", 1, id);
    assert_int_equal(lb_store_put_qlinear(s, id, "model.layers.0.mlp.up_proj.weight", "bits=3",
                                          &p, &err), 0);
    assert_true(lb_store_has(s, id, "qlinear"));
    lb_qpacked back;
    assert_int_equal(lb_store_get_qlinear(s, id, &back, &err), 0);
    assert_string_equal(back.method, "rtn");
    assert_int_equal(back.nfields, 2);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(back.fields[k].nbytes, p.fields[k].nbytes);
        assert_memory_equal(back.fields[k].data, p.fields[k].data, p.fields[k].nbytes);
    }
    lb_qpacked_free(&back);
    lb_qpacked_free(&p);
    lb_store_free(&s);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_verify_corrupt),
        cmocka_unit_test(test_qlinear_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
