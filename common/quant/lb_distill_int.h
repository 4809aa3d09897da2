/* lb_distill_int: the student block shared by the per-block stage (lb_distill.c)
 * and the whole-model stage (lb_distill_model.c). Private to common/quant. */
#ifndef LB_DISTILL_INT_H
#define LB_DISTILL_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_forward.h"
#include "lb_qparams.h"

typedef struct {
    lb_qparams qp[LB_LINEAR_COUNT];
    bool on[LB_LINEAR_COUNT];
    lb_block_weights w; /* student: fp norms/biases, Ŵ(θ) for quantized linears */
} student;

/* Ŵ(θ) of every quantized linear into s->w */
void lb_distill_student_refresh(student *s);
/* s = fp block with Ŵ(θ) of every packed linear; off[l] = first parameter of
 * linear l in the concatenated vector (off[7] = total); dW[l] allocated for
 * each packed linear when dW != NULL. */
int lb_distill_student_init(const lb_config *cfg, const lb_block_weights *fp,
                            lb_qpacked *const packed[LB_LINEAR_COUNT], student *sp,
                            int64_t *off, float **dW, lb_err *err);
void lb_distill_student_free(student *s);

#endif
