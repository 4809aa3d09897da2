/* lb_mpi: the MPI side of the distributed pipeline (the ONE file that includes
 * mpi.h is lb_mpi.c; built only when MPI is found, target lowbit_mpi).
 *
 * Data-parallel Hessian accumulation with a result that does not depend on how
 * calibration falls on ranks (docs/determinism.md):
 *   - calibration is cut into fixed chunks (e.g. 16 sequences each) numbered
 *     0..n_chunks-1, independent of the number of ranks;
 *   - each chunk's partial Hessian (lb_hessian raw sums, float64) is computed on
 *     its own, from a fresh accumulator, by whichever rank owns the chunk;
 *   - rank 0 receives the partials point-to-point strictly in chunk order
 *     (its own from memory) and adds them in that order with lb_hessian_add:
 *       S = ((0 + S_0) + S_1) + ... + S_{n-1}
 *     then broadcasts S and N. Any owner table gives the same additions in the
 *     same order, hence the same bits, and the same bits as a single process
 *     running the same loop (lb_mpi_hessian_sum_local). */
#ifndef LB_MPI_H
#define LB_MPI_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_hessian.h"

/* Initializes MPI (MPI_Init_thread, FUNNELED) and makes MPI errors return codes
 * instead of aborting. OUT: *rank, *size of MPI_COMM_WORLD. Returns 0 or LB_ENET. */
int lb_mpi_init(int *argc, char ***argv, int *rank, int *size, lb_err *err);

/* Finalizes MPI (no-op when not initialized). Returns 0 or LB_ENET. */
int lb_mpi_finalize(lb_err *err);

/* Contiguous block assignment: chunk c goes to rank floor(c * size / n_chunks).
 * OUT: owner[0..n_chunks). */
void lb_mpi_owner_block(int64_t n_chunks, int size, int32_t *owner);

/* Round-robin assignment: chunk c goes to rank c % size. OUT: owner[0..n_chunks). */
void lb_mpi_owner_cyclic(int64_t n_chunks, int size, int32_t *owner);

/* Collective over MPI_COMM_WORLD (every rank calls it with the same n_chunks,
 * owner table and width). local[c] is this rank's partial for chunk c when
 * owner[c] == rank (not NULL), and is ignored otherwise. On return `out` (an
 * accumulator of the same width, emptied first) holds the chunk-order sum on
 * every rank. The partials are not modified. Returns 0, LB_EINVAL (bad table,
 * missing partial, width mismatch), LB_ENUMERIC (a partial with NaN/Inf),
 * LB_ENET (an MPI error, naming the peer rank), LB_ENOMEM. */
int lb_mpi_hessian_reduce(int64_t n_chunks, const int32_t *owner, lb_hessian *const *local,
                          lb_hessian *out, lb_err *err);

/* The same sum without MPI: out = ((0 + parts[0]) + parts[1]) + ..., emptied
 * first. The single-process reference the reduction must equal bit for bit.
 * Returns 0 or LB_EINVAL. */
int lb_mpi_hessian_sum_local(int64_t n_chunks, lb_hessian *const *parts, lb_hessian *out,
                             lb_err *err);

#endif
