/* lb_xfer_store: moves a job's artifacts between a worker's local artifact
 * store (worker/lb_artifact.h) and the coordinator's artifact server
 * (worker/lb_xfer.h), so a remote worker can run a job from its description
 * plus artifacts fetched by id, and hand its outputs back. */
#ifndef LB_XFER_STORE_H
#define LB_XFER_STORE_H

#include <stdint.h>

#include "lb_artifact.h"
#include "lb_err.h"
#include "lb_job.h"
#include "lb_xfer.h"

/* Makes artifact id present and verified in the local store: nothing is
 * transferred when it already verifies (lb_store_has); otherwise it is fetched
 * (checksum-verified, written atomically) and must then verify as an artifact
 * naming its own id. When bytes != NULL the payload bytes received are added to
 * *bytes (0 when nothing moved). Returns 0, LB_ENOTFOUND (the server lacks it:
 * its producing job must run first), LB_EFORMAT (the server's copy fails
 * validation, or the fetched file is not that artifact; it is removed), or the
 * transfer's error (LB_ENET: no answer). */
int lb_xfer_fetch(lb_xfer_client *c, const lb_store *store, const char *id, uint64_t *bytes,
                  lb_err *err);

/* Uploads local artifact id after verifying it locally, unless the server
 * already holds a valid copy (HAS: then nothing moves). When bytes != NULL the
 * payload bytes sent are added to *bytes. Returns 0, LB_ENOTFOUND or
 * LB_EFORMAT (absent or corrupt locally: rerun the job), or the transfer's
 * error. */
int lb_xfer_publish(lb_xfer_client *c, const lb_store *store, const char *id, uint64_t *bytes,
                    lb_err *err);

/* lb_xfer_fetch for every input of job, in order. Returns 0 or the first error,
 * prefixed with the job id and the input's index. */
int lb_xfer_fetch_inputs(lb_xfer_client *c, const lb_store *store, const lb_job *job,
                         uint64_t *bytes, lb_err *err);

/* lb_xfer_publish for every output of job. Returns 0 or the first error. */
int lb_xfer_publish_outputs(lb_xfer_client *c, const lb_store *store, const lb_job *job,
                            uint64_t *bytes, lb_err *err);

#endif
