/* lb_override: --override spec parsing, and the bounds that keep regcomp's
 * time and memory small whatever the spec (fuzz findings kept as cases). */
#include "lb_test_util.h"

#include <string.h>
#include <time.h>

#include "lb_override.h"

static int parse(const char *spec, lb_override *o, lb_err *err)
{
    lb_qopts base;
    lb_qopts_init(&base);
    return lb_override_parse(spec, &base, o, err);
}

static void test_valid(void **state)
{
    (void)state;
    lb_override o;
    lb_err err = {0};
    assert_int_equal(parse("model\\.layers\\.[0-4]\\.mlp\\..+=gptq:bits=3,group_size=32", &o,
                           &err), 0);
    assert_string_equal(o.method, "gptq");
    assert_int_equal(o.opts.bits, 3);
    assert_int_equal(regexec(&o.re, "model.layers.3.mlp.up_proj.weight", 0, NULL, 0), 0);
    assert_int_not_equal(regexec(&o.re, "model.layers.5.mlp.up_proj.weight", 0, NULL, 0), 0);
    lb_override_free(&o);
    lb_override_free(&o); /* idempotent */
    assert_int_equal(parse("x{3}=rtn", &o, &err), 0);
    lb_override_free(&o);
    assert_int_equal(parse("(a\\(|b)\\|[|]x=rtn", &o, &err), 0); /* escaped/bracketed: not empty */
    lb_override_free(&o);
    /* 12 quantifiers are still fine; brackets and escapes do not count */
    assert_int_equal(parse(".*a.*|.*b.*|.*c.*|.*d.*|.*e.*|.*f[*+?]\\+\\*+=rtn", &o, &err), 0);
    lb_override_free(&o);
}

static void test_rejected(void **state)
{
    (void)state;
    const struct {
        const char *spec, *want;
    } cases[] = {
        {"x=nosuchmethod", "unknown method"},
        {"=gptq", "expected REGEX=METHOD"},
        {"[=gptq", "bad regular expression"},
        {"x=gptq:bogus=1", "unknown option"},
        /* fuzz finding: stacked '+' made glibc's regcomp take 68 s and 20 GB */
        {"0=++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++"
         "++++++++++++++++++++{{}}r[=",
         "quantifiers"},
        {"(a{20}){20}(b{20})=rtn", "repetitions multiply"},
        {"x*(a*)*(a*)*)++*+(a+)*)++\xd4++*gptq(=rtn", "quantifiers"}, /* 12 s fuzzed */
        {"a*+=rtn", "quantifiers"},
        /* fuzz finding: empty alternatives: "(|||...|){16}" took 3 s and 2.3 GB */
        {"((||||||||||||||||||||||||||||||||||||||||||||||||)){16}=rtn", "empty group"},
        {"(()()()()()()()()()()()()()()()()()()()()()()()()()()()()()()){120}=rtn", "empty group"},
        {"a|=rtn", "empty group"},
        {"|a=rtn", "empty group"},
        {"(a|)=rtn", "empty group"},
        {"(a{100}){100}=rtn", "repetitions multiply"},
        {"a{5000}=rtn", "repetitions multiply"},
        /* fuzz finding: 70 stacked '*' after "x*#" took regcomp 0.6 s; star groups
         * grow exponentially ("x*(a*)*" x 26: over 20 s) */
        {"\xd8*#**********************************************************************=rtn",
         "quantifiers"},
        {"x*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*"
         "(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*(a*)*=rtn",
         "quantifiers"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lb_override o;
        lb_err err = {0};
        clock_t t0 = clock();
        if (parse(cases[i].spec, &o, &err) != LB_EINVAL)
            fail_msg("'%s' accepted or wrong code: %s", cases[i].spec, err.msg);
        assert_true((double)(clock() - t0) / CLOCKS_PER_SEC < 1.0);
        assert_null(o.pattern);
        if (!strstr(err.msg, cases[i].want))
            fail_msg("'%s': got '%s', want '%s'", cases[i].spec, err.msg, cases[i].want);
        assert_null(strchr(err.msg, '\n'));
    }
    char longspec[LB_OVERRIDE_SPEC_MAX + 16];
    memset(longspec, 'a', sizeof longspec - 1);
    longspec[sizeof longspec - 1] = '\0';
    longspec[10] = '=';
    lb_override o;
    lb_err err = {0};
    assert_int_equal(parse(longspec, &o, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "longer than"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_valid),
                                       cmocka_unit_test(test_rejected)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
