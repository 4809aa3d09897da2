/* lb_time: the one monotonic clock reading (seconds) for timeouts, deadlines and
 * benchmark timings. Header-only, so every library and test can use it. */
#ifndef LB_TIME_H
#define LB_TIME_H

#include <time.h>

static inline double lb_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
