/* Test helper: child processes the test itself spawns and reaps, with a timeout
 * on every wait. Shell `cmd &` children are orphaned when the shell exits and,
 * in a container whose PID 1 does not reap, stay zombies that `kill -0` still
 * sees: a test polling them never ends. Children of the test process have none
 * of that: waitpid reaps them, and they die with the test (PDEATHSIG). */
#ifndef LB_TEST_PROC_H
#define LB_TEST_PROC_H

#include <sys/types.h>

/* Starts argv[0] (looked up on PATH) with argv, stdin from /dev/null, stdout and
 * stderr appended to log_path. Returns the pid, or -1. */
pid_t lb_test_spawn(const char *log_path, const char *const *argv);

/* Waits up to timeout_s for pid to exit and reaps it. Returns its exit status
 * (128 + signal when killed), or -1 after a timeout, in which case the child has
 * been killed (SIGKILL) and reaped. */
int lb_test_wait(pid_t pid, double timeout_s);

/* Sends sig to pid (no-op for pid <= 0). */
void lb_test_signal(pid_t pid, int sig);

#endif
