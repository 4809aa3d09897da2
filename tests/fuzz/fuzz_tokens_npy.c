/* libFuzzer target: .npy token files (lb_tokens_load_rows); the same checks as
 * fuzz_tokens_u32.c on another extension. Corpus: tests/fuzz/corpus/tokens_npy/. */
#define LB_FUZZ_TOKENS_FILE "tokens.npy"
#include "fuzz_tokens_u32.c"
