/* lb_qopts_table: every quantizer option, one line each. Adding an option is
 * one line here plus its use in a kernel; everything else is generated:
 *   - the lb_qopts struct (lb_quant.h) and its defaults (lb_qopts_init),
 *   - command-line parsing and usage text (lb_qopts_parse.c; `lowbit quantize`,
 *     `lowbit coordinator`, `lowbit qmatrix` and `--override k=v,...`),
 *   - the option description hashed into run ids and stored with every packed
 *     tensor (lb_qopts_describe), and the JSON one (lb_qopts_json),
 *   - the job message's opts array (proto/lb_job.c).
 *
 * X(field, kind, cli, default, lo, hi, wire_max, flags, methods, arg, help)
 *   kind      F64 | I32 | BOOL | U64 | GRID | CRIT | ROT | KEEP (the TOP of a
 *             "--opt TOP,REST" pair; REST is the next row, a F64 with no cli)
 *   cli       "--name" (NULL: set through the row above)
 *   lo, hi    accepted command-line range (numbers)
 *   wire_max  largest integer a job message may carry (I32; checked on decode)
 *   flags     0, or LB_QOPT_LATE: an option added after the wire and description
 *             formats were fixed; it is described and sent only when it differs
 *             from its default, so runs without it keep their ids and bytes.
 *             LATE rows come last, and stay in the order they were added.
 * Row order is the wire and description order: never reorder rows. */
#ifndef LB_QOPTS_TABLE_H
#define LB_QOPTS_TABLE_H

#define LB_QOPTS_TABLE(X)                                                                          \
    X(bits, F64, "--bits", 4.0, 1, 16, 0, 0, "all", "B",                                           \
      "bits per weight, 1..16 (fractional for claq)")                                              \
    X(group_size, I32, "--group-size", 0, 0, 1 << 30, INT32_MAX, 0, "all", "G",                    \
      "columns per group, 0 = per row")                                                            \
    X(act_order, BOOL, "--act-order", 0, 0, 0, 0, 0, "gptq", "",                                   \
      "columns by descending diag(H)")                                                             \
    X(static_groups, BOOL, "--static-groups", 0, 0, 0, 0, 0, "gptq", "",                           \
      "group grids fixed before the loop")                                                         \
    X(sym, BOOL, "--sym", 0, 0, 0, 0, 0, "all", "", "symmetric grid")                              \
    X(grid, GRID, "--grid", LB_GRID_MINMAX, 0, 0, 4, 0, "all", "minmax|mse|q2_k|q3_k|q4_k",           \
      "grid search; q2_k|q3_k|q4_k: gptq onto llama.cpp K-quant blocks (rows of 256k columns)")  \
    X(damp, F64, "--damp", 0.01, 0, 1, 0, 0, "gptq", "D",                                          \
      "relative damping of H: damp * mean(diag(H)), 0..1")                                         \
    X(block_size, I32, "--block-size", 128, 1, 65536, INT32_MAX, 0, "gptq", "N",                   \
      "lazy-batch block, 1..65536")                                                                \
    X(outlier_threshold, F64, "--outlier-threshold", 13.0, 1e-9, 1e9, 0, 0, "claq", "T",           \
      "|w| >= T * mean|W| is an outlier, > 0")                                                     \
    X(outlier_hessian_score, BOOL, "--outlier-hessian-score", 0, 0, 0, 0, 0, "claq", "",           \
      "rank columns by a Hessian-weighted score")                                                  \
    X(outlier_keep_top, KEEP, "--outlier-keep", 0.014, 0, 1, 0, 0, "claq", "TOP,REST",             \
      "fp16 keep ratios of top-ranked / other columns, 0..1")                                      \
    X(outlier_keep_rest, F64, NULL, 0.004, 0, 1, 0, 0, "claq", "", "")                             \
    X(outlier_top_frac, F64, "--outlier-top-frac", 0.10, 0, 1, 0, 0, "claq", "F",                  \
      "fraction of top columns, 0..1")                                                             \
    X(centroids_with_outliers, BOOL, "--centroids-with-outliers", 0, 0, 0, 0, 0, "claq", "",       \
      "fit K-means including kept values")                                                         \
    X(salient_frac, F64, "--salient", 0.1, 0, 1, 0, 0, "pbllm", "F", "salient fraction, 0..1")     \
    X(salient_bits, I32, "--salient-bits", 8, 1, 16, 64, 0, "pbllm", "B",                          \
      "bits of salient weights, 1..16")                                                            \
    X(salient_criterion, CRIT, "--salient-criterion", LB_SALIENT_HESSIAN, 0, 0, 1, 0, "pbllm",     \
      "hessian|magnitude", "how salient weights are ranked")                                       \
    X(salient_group, I32, "--salient-group", 0, 0, 1 << 30, INT32_MAX, 0, "pbllm", "N",            \
      "columns per salient threshold, 0 = matrix")                                                 \
    X(bases, I32, "--bases", 2, 1, 4, 64, 0, "qbb", "N", "binary bases, 1..4")                     \
    X(refine_iters, I32, "--refine-iters", 10, 0, 10000, 1000000, 0, "qbb", "N",                   \
      "refinement rounds, 0..10000")                                                               \
    X(hessian_weighted, BOOL, "--hessian-weighted", 0, 0, 0, 0, 0, "qbb", "",                      \
      "H-weighted least-squares scales")                                                           \
    X(gptq_init, BOOL, "--gptq-init", 0, 0, 0, 0, 0, "qbb", "",                                    \
      "start from a 4-bit GPTQ reconstruction")                                                    \
    X(seed, U64, "--seed", 0, 0, (double)INT64_MAX, 0, 0, "all", "N", "random seed")               \
    X(rotate, ROT, "--rotate", 0, 0, 0, 1, LB_QOPT_LATE, "all", "none|hadamard|auto",              \
      "random signs + block Hadamard on both sides, seed and kind stored (auto: hadamard "         \
      "for rtn, gptq, claq, billm, qbb, none for pbllm)")                                          \
    X(damp_auto, BOOL, "--damp-auto", 0, 0, 0, 1, LB_QOPT_LATE, "gptq", "",                        \
      "when H does not factor, retry with 10x --damp (0.01 after 0), at most 3 times")

/* the C type of each kind (lb_quant.h builds lb_qopts from the table) */
#define LB_QOPT_CTYPE_F64 double
#define LB_QOPT_CTYPE_KEEP double
#define LB_QOPT_CTYPE_I32 int32_t
#define LB_QOPT_CTYPE_ROT int32_t
#define LB_QOPT_CTYPE_BOOL bool
#define LB_QOPT_CTYPE_U64 uint64_t
#define LB_QOPT_CTYPE_GRID lb_qgrid
#define LB_QOPT_CTYPE_CRIT lb_qsalient
#define LB_QOPT_FIELD(field, kind, ...) LB_QOPT_CTYPE_##kind field;

#define LB_QOPT_LATE 1

#endif
