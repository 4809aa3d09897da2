/* libFuzzer target: msgpack job records (lb_job_decode), as read from Redis.
 * A decoded job must re-encode and decode to the same bytes. Corpus:
 * tests/fuzz/corpus/job/ (tests/proto/test_job.c writes the seeds). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lb_err err;
    lb_job job;
    if (lb_job_decode(data, size, &job, &err) == 0) {
        uint8_t *buf = NULL;
        size_t len = 0;
        if (lb_job_encode(&job, &buf, &len, &err) != 0)
            abort();
        lb_job again;
        if (lb_job_decode(buf, len, &again, &err) != 0)
            abort();
        uint8_t *buf2 = NULL;
        size_t len2 = 0;
        if (lb_job_encode(&again, &buf2, &len2, &err) != 0 || len2 != len ||
            memcmp(buf, buf2, len) != 0)
            abort();
        free(buf);
        free(buf2);
        lb_job_clear(&again);
        lb_job_clear(&job);
    }
    return 0;
}
