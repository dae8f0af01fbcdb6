// gemm_schedule.hpp: how the Hopper GEMM's persistent blocks share out the output tiles (data-parallel
// or Stream-K), planned on the host from what a pipeline knows at creation.
#pragma once

#include <cstdint>

#include "../cuda/gemm.cuh"

namespace mfa {

// The schedule of a problem of m x n x k (batch batches) in tile_m x tile_n tiles over at most `units`
// persistent units that run at once (one a block, or a cluster whose blocks stack a tile_m-row tile);
// `requested` is the descriptor's MFA_SCHEDULE_*. Its sk_tiles is 0 for a data-parallel schedule.
// Requires tiles_m * tiles_n * batch <= INT_MAX.
mfa_gemm_schedule plan_gemm_schedule(int64_t m, int64_t n, int64_t k, int64_t batch, int tile_m, int tile_n,
                                     int units, int32_t requested);

// MFA_SCHEDULE_STREAM_K or MFA_SCHEDULE_DATA_PARALLEL: what a planned schedule is.
int32_t schedule_kind(const mfa_gemm_schedule &schedule);

}  // namespace mfa
