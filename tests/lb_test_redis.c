#include "lb_test_redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lb_test_util.h"

#define MAX_SERVERS 8
static pid_t live[MAX_SERVERS];
static int atexit_done;

static void kill_all(void)
{
    for (int i = 0; i < MAX_SERVERS; i++)
        if (live[i] > 0) {
            kill(live[i], SIGKILL);
            waitpid(live[i], NULL, 0);
            live[i] = 0;
        }
}

static void track(pid_t pid, int add)
{
    for (int i = 0; i < MAX_SERVERS; i++)
        if (add ? live[i] == 0 : live[i] == pid) {
            live[i] = add ? pid : 0;
            return;
        }
}

int lb_test_redis_available(void)
{
    return lb_test_on_path("redis-server");
}

int lb_test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* 1 when something on the port answers a RESP PING (+PONG or -NOAUTH). */
static int answers(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && write(fd, "PING\r\n", 6) == 6) {
        char buf[64] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        ok = n > 0 && (buf[0] == '+' || buf[0] == '-');
    }
    close(fd);
    return ok;
}

/* Starts redis-server on port in r->dir; 0 when it answers, -1 otherwise. */
static int spawn_at(lb_test_redis *r, int port, const char *const *extra)
{
    {
        char port_s[16], log[4200];
        snprintf(port_s, sizeof port_s, "%d", port);
        snprintf(log, sizeof log, "%s/redis.log", r->dir);
        const char *argv[40] = {"redis-server", "--port", port_s, "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", r->aof ? "yes" : "no",
                                "--dir", r->dir, "--logfile", log, "--daemonize", "no"};
        int n = 15;
        if (r->aof) {
            argv[n++] = "--appendfsync";
            argv[n++] = "always";
        }
        for (int i = 0; extra && extra[i] && n < 39; i++)
            argv[n++] = extra[i];
        argv[n] = NULL;
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(127);
            int devnull = open("/dev/null", O_RDWR);
            if (devnull >= 0) {
                dup2(devnull, 0);
                dup2(devnull, 1);
                dup2(devnull, 2);
            }
            execvp("redis-server", (char *const *)argv);
            _exit(127);
        }
        track(pid, 1);
        for (int i = 0; i < 250; i++) { /* up to ~5 s */
            if (waitpid(pid, NULL, WNOHANG) == pid) { /* died: port taken */
                track(pid, 0);
                return -1;
            }
            if (answers(port)) {
                r->pid = pid;
                r->port = port;
                snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d/0", port);
                return 0;
            }
            sleep_ms(20);
        }
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            track(pid, 0);
        }
    }
    return -1;
}

static int start_impl(lb_test_redis *r, int aof, const char *const *extra);

int lb_test_redis_start(lb_test_redis *r, const char *const *extra)
{
    return start_impl(r, 0, extra);
}

int lb_test_redis_start_aof(lb_test_redis *r)
{
    return start_impl(r, 1, NULL);
}

static int start_impl(lb_test_redis *r, int aof, const char *const *extra)
{
    memset(r, 0, sizeof *r);
    r->aof = aof;
    if (!atexit_done) {
        atexit(kill_all);
        atexit_done = 1;
    }
    r->dir = lb_test_mkdtemp();
    if (!r->dir)
        return -1;
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = lb_test_free_port();
        if (port < 0)
            break;
        if (spawn_at(r, port, extra) == 0)
            return 0;
    }
    lb_test_rmdir(&r->dir);
    return -1;
}

void lb_test_redis_crash(lb_test_redis *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        track(r->pid, 0);
        r->pid = 0;
    }
}

int lb_test_redis_restart(lb_test_redis *r, const char *const *extra)
{
    lb_test_redis_crash(r);
    return r->dir && r->port > 0 ? spawn_at(r, r->port, extra) : -1;
}

void lb_test_redis_stop(lb_test_redis *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        int done = 0;
        for (int i = 0; i < 100 && !done; i++) {
            done = waitpid(r->pid, NULL, WNOHANG) == r->pid;
            if (!done)
                sleep_ms(20);
        }
        if (!done) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, NULL, 0);
        }
        track(r->pid, 0);
        r->pid = 0;
    }
    if (r->dir)
        lb_test_rmdir(&r->dir);
}
