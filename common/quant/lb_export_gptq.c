/* GPTQ safetensors layout and compressed-tensors pack-quantized export. */
#include <string.h>

#include "lb_export.h"

int lb_gptq_export(const char *in_dir, const char *out_dir, bool compressed, lb_dtype dtype,
                   lb_err *err)
{
    (void)in_dir;
    (void)out_dir;
    (void)dtype;
    return lb_err_set(err, LB_EINVAL, "export: --format %s is not implemented yet",
                      compressed ? "compressed-tensors" : "gptq");
}
