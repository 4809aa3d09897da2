/* lb_cli: the `lowbit` command's subcommands. Each lives in its own cmd_*.c
 * and returns a process exit status (0 ok, 1 failure, 2 usage). */
#ifndef LB_CLI_H
#define LB_CLI_H

typedef int (*lb_cli_fn)(int argc, char **argv);

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
/* lowbit quantize's body; with dist non-NULL (redis_url and job_name set) the
 * plan runs through Redis (lb_dist.h) instead of the in-process pool. */
int lb_quantize_main(int argc, char **argv, const struct lb_dist_opts *dist);

#endif
