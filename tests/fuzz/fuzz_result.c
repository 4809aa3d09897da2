/* libFuzzer target: msgpack result records (lb_job_result_decode), as workers
 * write them to Redis. A decoded result must re-encode and decode to the same
 * bytes. Corpus: tests/fuzz/corpus/result/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lb_err err;
    lb_job_result res;
    if (lb_job_result_decode(data, size, &res, &err) != 0)
        return 0;
    /* what a coordinator does with it: print the one-line error */
    if (strnlen(res.error, sizeof res.error) == sizeof res.error || strchr(res.error, '\n'))
        abort();
    uint8_t *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    lb_job_result again;
    if (lb_job_result_encode(&res, &buf, &len, &err) != 0 ||
        lb_job_result_decode(buf, len, &again, &err) != 0 ||
        lb_job_result_encode(&again, &buf2, &len2, &err) != 0 || len2 != len ||
        memcmp(buf, buf2, len) != 0)
        abort();
    free(buf);
    free(buf2);
    return 0;
}
