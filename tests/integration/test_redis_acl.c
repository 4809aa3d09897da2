/* Redis least privilege (issue 14): a distributed quantize runs with the
 * worker and the coordinator logged in as the two ACL users of
 * deploy/redis.conf (the "#acl user" lines, used verbatim); Redis denies
 * nothing they send (a missing right shows as NOPERM, or as a worker retrying
 * until the 120 s timeout) and denies what they must not do; no log line,
 * CLI output, error message or stored Redis value carries a password. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_test_redis.h"
#include "lb_test_util.h"

typedef struct {
    char line[2048];
    char rule[2048]; /* "user NAME ..." as in an ACL file */
    char name[64], pass[128];
} acl_user;

/* Finds "#acl user NAME ..." in deploy/redis.conf and splits it. */
static void read_acl(const char *name, acl_user *u)
{
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/deploy/redis.conf", src && *src ? src : ".");
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s (set LOWBIT_SOURCE_DIR)", path);
    char want[128];
    snprintf(want, sizeof want, "#acl user %s ", name);
    memset(u, 0, sizeof *u);
    while (fgets(u->line, sizeof u->line, f))
        if (!strncmp(u->line, want, strlen(want)))
            break;
    fclose(f);
    if (strncmp(u->line, want, strlen(want)))
        fail_msg("%s: no '%s' line", path, want);
    u->line[strcspn(u->line, "\n")] = '\0';
    snprintf(u->rule, sizeof u->rule, "%s", u->line + 5);
    char *save = NULL;
    for (char *t = strtok_r(u->line, " ", &save); t; t = strtok_r(NULL, " ", &save))
        if (t[0] == '>')
            snprintf(u->pass, sizeof u->pass, "%s", t + 1);
    snprintf(u->name, sizeof u->name, "%s", name);
    assert_true(u->pass[0] != '\0');
}

static void test_job_under_least_privilege(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    acl_user w, c;
    read_acl("lowbit-worker", &w);
    read_acl("lowbit-coordinator", &c);
    /* the two lines, verbatim, as an ACL file (too many words for --user arguments) */
    char *dir = lb_test_mkdtemp();
    char aclfile[4200];
    snprintf(aclfile, sizeof aclfile, "%s/users.acl", dir);
    FILE *f = fopen(aclfile, "w");
    assert_non_null(f);
    fprintf(f, "%s\n%s\n", w.rule, c.rule);
    fclose(f);
    /* --rdbcompression no: so the dump below can be searched as text */
    const char *extra[] = {"--aclfile", aclfile, "--rdbcompression", "no", NULL};
    lb_test_redis srv;
    assert_int_equal(lb_test_redis_start(&srv, extra), 0);
    char wurl[512], curl[512];
    snprintf(wurl, sizeof wurl, "redis://%s:%s@127.0.0.1:%d/0", w.name, w.pass, srv.port);
    snprintf(curl, sizeof curl, "redis://%s:%s@127.0.0.1:%d/0", c.name, c.pass, srv.port);
    const char *bin = lb_test_lowbit_bin();
    char *out = NULL;
    int rc = lb_test_run(&out,
                         "cd '%s' || exit 1; ( timeout 120 '%s' coordinator --redis '%s' --job acl1 --model '%s' "
                         "--calib '%s' --out dist --ctx 128 --nsamples 8 --method gptq --bits 3 "
                         "--threads 1 > coord.log 2>&1; echo $? > coord.rc ) & "
                         "timeout 120 '%s' worker --redis '%s' --threads 1 --idle-exit 3 --id wA > wA.log 2>&1; "
                         "wait; timeout 30 '%s' status acl1 --redis '%s' > status.log 2>&1; "
                         "cat coord.rc; grep -h 'state ' status.log; grep -h NOPERM *.log; "
                         "tail -n 3 coord.log wA.log",
                         dir, bin, curl, model, calib, bin, wurl, bin, curl);
    int ok = rc == 0 && out && !strncmp(out, "0\n", 2) && strstr(out, "state     done") &&
             !strstr(out, "NOPERM");
    char *log = out;
    out = NULL;
    /* Redis denied nothing; the worker cannot step outside its rights */
    lb_test_run(&out, "redis-cli -p %d ACL LOG 50", srv.port);
    int denied_in_job = !out || strstr(out, "lowbit-") != NULL; /* ACL LOG names the user */
    char *acl_log = out;
    out = NULL;
    lb_test_run(&out,
                "redis-cli -p %d --user %s --pass '%s' --no-auth-warning SET other:key 1; "
                "redis-cli -p %d --user %s --pass '%s' --no-auth-warning FLUSHALL; "
                "redis-cli -p %d --user %s --pass '%s' --no-auth-warning KEYS '*'; "
                "redis-cli -p %d --user %s --pass '%s' --no-auth-warning CONFIG GET dir; "
                "redis-cli -p %d --user %s --pass '%s' --no-auth-warning "
                "EVAL \"return redis.call('DEL', KEYS[1])\" 1 lowbit:jobs; "
                "redis-cli -p %d SAVE",
                srv.port, w.name, w.pass, srv.port, w.name, w.pass, srv.port, w.name,
                w.pass, srv.port, w.name, w.pass, srv.port, w.name, w.pass, srv.port);
    char *acl = out;
    out = NULL;
    /* no password anywhere: logs, CLI output, and every stored key and value */
    lb_test_run(&out,
                "grep -a -c 'lowbit:job:acl1' '%s/dump.rdb'; "
                "cat '%s/dump.rdb' '%s'/*.log | grep -a -c -e '%s' -e '%s'",
                srv.dir, srv.dir, dir, w.pass, c.pass);
    int seen = 0, leaks = -1;
    if (!out || sscanf(out, "%d %d", &seen, &leaks) != 2 || seen < 1)
        leaks = -1; /* the dump must hold the job's keys, or the search proves nothing */
    lb_test_redis_stop(&srv);
    lb_test_rmdir(&dir);
    if (!ok)
        fail_msg("job under the ACL users failed:\n%s", log ? log : "(no output)");
    if (denied_in_job)
        fail_msg("Redis denied commands during the job:\n%s", acl_log ? acl_log : "");
    int nperm = 0;
    for (const char *p = acl; p && (p = strstr(p, "NOPERM")) != NULL; p++)
        nperm++;
    if (nperm != 5)
        fail_msg("the worker user must be denied 5 probes, got %d:\n%s", nperm, acl);
    if (leaks != 0)
        fail_msg("a password appears %d times in logs or Redis (%s)", leaks, out ? out : "");
    free(log);
    free(acl);
    free(acl_log);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_job_under_least_privilege)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
