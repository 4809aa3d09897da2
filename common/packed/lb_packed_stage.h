/* lb_packed_stage (private to lb_packed*.c): build a checkpoint's files in
 * out_dir/.tmp-XXXXXX, then rename them into out_dir with one chosen file last,
 * so that file marks the directory complete. */
#ifndef LB_PACKED_STAGE_H
#define LB_PACKED_STAGE_H

#include "lb_err.h"

typedef struct {
    char *out_dir;
    char *tmp;    /* out_dir/.tmp-XXXXXX */
    char **names; /* staged file names, in staging order */
    int n;
} lb_packed_stage;

/* Creates out_dir (and missing parents) and the temp dir inside it.
 * OUT: *s. Returns 0 or LB_EIO/LB_ENOMEM. */
int lb_packed_stage_open(lb_packed_stage *s, const char *out_dir, lb_err *err);

/* malloc'd path of file `name` inside the temp dir, recorded for commit; NULL on OOM. */
char *lb_packed_stage_file(lb_packed_stage *s, const char *name);

/* Removes out_dir/last, renames every staged file except `last` into out_dir,
 * then `last`, fsyncs out_dir and removes the temp dir. Returns 0 or LB_EIO.
 * s is freed either way (abort is still safe to call). */
int lb_packed_stage_commit(lb_packed_stage *s, const char *last, lb_err *err);

/* Removes the staged files (and their ".tmp" siblings) and the temp dir; frees s.
 * Safe on a zeroed or committed stage. */
void lb_packed_stage_abort(lb_packed_stage *s);

/* Copies src_dir/name into the stage when it exists (tokenizer files etc.).
 * OUT: *copied (1 when copied). Returns 0 or LB_E*. */
int lb_packed_stage_copy_if_present(lb_packed_stage *s, const char *src_dir, const char *name,
                                    int *copied, lb_err *err);

/* The end of a dense export into out_dir: copies the tokenizer/generation files
 * of src_dir that exist, commits with config.json last (without it the
 * directory is not a model), then removes a stale packed manifest.json (it
 * would describe other files). Returns 0 or LB_E*; s is freed on success. */
int lb_packed_stage_finish_export(lb_packed_stage *s, const char *src_dir, lb_err *err);

#endif
