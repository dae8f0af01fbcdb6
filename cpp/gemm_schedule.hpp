// gemm_schedule.hpp: how the Hopper GEMM's persistent blocks share out the output tiles (data-parallel
// or Stream-K), planned on the host from what a pipeline knows at creation.
#pragma once

#include <cstdint>

#include "../cuda/gemm.cuh"

namespace mfa {

// The schedule of a problem of m x n x k (batch batches) in MFA_SM90_BM x tile_n tiles on a device of
// sm_count SMs; `requested` is the descriptor's MFA_SCHEDULE_*. Its sk_tiles is 0 for a data-parallel
// schedule. Requires tiles_m * tiles_n * batch <= INT_MAX.
mfa_gemm_schedule plan_gemm_schedule(int64_t m, int64_t n, int64_t k, int64_t batch, int tile_n, int sm_count,
                                     int32_t requested);

// MFA_SCHEDULE_STREAM_K or MFA_SCHEDULE_DATA_PARALLEL: what a planned schedule is.
int32_t schedule_kind(const mfa_gemm_schedule &schedule);

}  // namespace mfa
