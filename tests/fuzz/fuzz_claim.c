/* libFuzzer target: the lease claim a worker sends with a PUT
 * (lb_dist_lease_parse_claim; the artifact server parses it from the network
 * before asking Redis). Parsed fields are NUL-terminated, within their bounds,
 * hold no space, and an error is one line. Corpus: tests/fuzz/corpus/claim/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_dist_lease.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *claim = lb_fuzz_cstr(data, size);
    char job[LB_REDIS_NAME_MAX + 1], entry[48], worker[LB_REDIS_ID_MAX + 1];
    lb_err err;
    if (lb_dist_lease_parse_claim(claim, job, entry, worker, &err) == 0) {
        if (!job[0] || !entry[0] || !worker[0] || strchr(job, ' ') || strchr(entry, ' ') ||
            strchr(worker, ' ') || !strstr(claim, job) || !strstr(claim, entry) ||
            !strstr(claim, worker))
            abort();
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        abort();
    }
    free(claim);
    return 0;
}
