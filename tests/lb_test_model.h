/* Test helper: writes small random-weight LLaMA-family models to disk
 * (config.json + model.safetensors) using the io writer. */
#ifndef LB_TEST_MODEL_H
#define LB_TEST_MODEL_H

#include <stdint.h>

#include "lb_config.h"
#include "lb_err.h"

/* A small llama config (model_type "llama", silu, eps 1e-5, theta 10000,
 * max_position_embeddings 128, no biases, untied). */
lb_config lb_test_model_config(int32_t dim, int32_t n_heads, int32_t n_kv, int32_t head_dim,
                               int32_t inter, int32_t vocab, int32_t layers);

/* Writes dir/config.json and dir/model.safetensors with every tensor cfg
 * implies (HF names), weights N(0, 1/in_features) (norms 1 + N(0, 0.01)),
 * from a fixed seed. skip_tensor (may be NULL) is left out and bad_shape_tensor
 * (may be NULL) is written with one extra row, to test loader errors.
 * Returns 0 or the io error. */
int lb_test_model_write(const char *dir, const lb_config *cfg, uint64_t seed,
                        const char *skip_tensor, const char *bad_shape_tensor, lb_err *err);

#endif
