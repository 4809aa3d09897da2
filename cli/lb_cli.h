/* lb_cli: the `lowbit` command's subcommands. Each lives in its own cmd_*.c
 * and returns a process exit status (0 ok, 1 failure, 2 usage). */
#ifndef LB_CLI_H
#define LB_CLI_H

#include <stdio.h>

typedef int (*lb_cli_fn)(int argc, char **argv);

/* lb_cli_util.c: "lowbit CMD: bad value 'VAL' for OPT; run `lowbit CMD --help`" on
 * stderr, returns 2 (the usage exit status). */
int lb_cli_bad_value(const char *cmd, const char *opt, const char *val);
/* A whole decimal integer in [lo, hi]: 0 and *out, or -1. */
int lb_cli_parse_ll(const char *s, long long lo, long long hi, long long *out);
/* " rtn gptq ..." (every registered method, each after a space). */
void lb_cli_print_methods(FILE *out);

/* Subcommands; a file that defines one also adds it to the table in lowbit_main.c. */
int lb_cmd_eval(int argc, char **argv);
int lb_cmd_status(int argc, char **argv);
int lb_cmd_cancel(int argc, char **argv);
int lb_cmd_keygen(int argc, char **argv);
int lb_cmd_worker(int argc, char **argv);
int lb_cmd_coordinator(int argc, char **argv);
int lb_cmd_synth(int argc, char **argv);
int lb_cmd_qmatrix(int argc, char **argv);
int lb_cmd_quantize(int argc, char **argv);
int lb_cmd_export(int argc, char **argv);
int lb_cmd_verify(int argc, char **argv);
int lb_cmd_gen_calib(int argc, char **argv);
int lb_cmd_tokenize(int argc, char **argv);

struct lb_dist_opts;
struct lb_quantize_spec;
/* The `lowbit quantize` options (cmd_quantize.c), shared with `lowbit
 * coordinator`. lb_cli_quantize_arg tries argv[*i]: 1 when consumed (*i past
 * it), -1 after --help (usage printed), -2 on a usage error (printed). */
int lb_cli_quantize_arg(struct lb_quantize_spec *q, int argc, char **argv, int *i);
/* Required options, method name and cross-option checks: 0 or exit status 2 (printed). */
int lb_cli_quantize_check(struct lb_quantize_spec *q);
/* Runs an lb_session (embedded, or through Redis with dist non-NULL) and
 * returns the exit status, the error printed. */
int lb_cli_quantize_run(const struct lb_quantize_spec *q, const struct lb_dist_opts *dist);

#endif
