// gemm_schedule.cpp: choosing between data-parallel and Stream-K for the Hopper GEMM (the schedule's
// data and its work items are in cuda/gemm.cuh, shared with the kernel). The rules are CUTLASS's for
// Stream-K on Hopper (arXiv 2301.03598; shared/refs/HOPPER_GEMM.md):
//   - data-parallel (DP) when the last wave of tiles is empty or at least half full: little is idle
//     (three quarters full for thin problems, below);
//   - DP when a tile has few k steps (<= 8): the fix-up would cost more than the imbalance it removes;
//   - DP when each block's Stream-K share would be under 24 k steps: measured on H100 (fp16), 1024^3
//     (64 tiles of 16 steps, 7.8 a block) ran 133 TFLOPS Stream-K against 189 data-parallel, 768^3 65
//     against 97, while 1536^3 (26 a block) gained, 311 against 281;
//   - where the tiles do not fill one wave, or the problem is thin (at most 64 rows or columns:
//     cpp/gemm.cpp hands the kernel such problems with the few rows as columns), Stream-K only from
//     128 k steps a tile and 8 a block. A thin problem is the reading of a weight matrix with little
//     arithmetic on it; in DP a few SMs would read it all. Sub-wave problems of long K gained as much
//     (H200, fp16 NN, same process, 128 x 128 tiles in 2 to 8 parts, cpp/gemm.cpp's cost model, against
//     the DP 128 x 64 tiles the table took before: 128 x 4096 x 11008 1.09x, x 14336 1.20x, 256 rows
//     1.10x and 1.13x, 768 x 768 x 12288 1.38x, 1024 x 1024 x 8192 1.11x, 512 x 512 x 16384 2.04x).
//     Thin sub-wave shapes, measured on H200 (`bench gemm --suite stream_k` prints both schedules), ran
//     Stream-K at 0.88-0.91x of DP with 64 k steps a tile (M 16-64, N 4096, K 4096: the fix-up of a
//     tile split four ways costs more than the SMs it adds; again 0.92-0.97x in three rounds of both
//     builds on one H200, though `tune gemm` on another measured 1.12-1.18x, where DP's 32 blocks ran
//     15-19% slower than elsewhere while Stream-K's times held) and at 1.15-1.30x with K 11008 and 14336
//     (transposed, 128 x 64 tiles; 128-row tiles had shown the same split, 0.76-0.96x against
//     1.27-1.61x): Stream-K from 128 k steps a tile (and 8 a block) up (thin ones: 64 since, below), in
//     every tile width. Narrow tiles (16 to 48 wide, cpp/gemm.cpp) hold 10 to 12 stages, and on an H100
//     data-parallel kept up (16 x 4096 x 14336 in 128 x 16 tiles 51.0 us DP against 51.4 Stream-K), but
//     not on an H200, whose faster memory 32 SMs do not keep busy (`python -m mfa_c tune gemm`, same
//     process: 16 x 4096 x 14336 128 x 16 tiles 47.5 TFLOPS Stream-K against 38.9 DP; 32 x 4096 x 14336
//     128 x 32 96.1 against 77.5).
//     Once the fix-up's flags no longer needed a kernel of their own to clear them (gemm.cpp,
//     attach_workspace), thin problems took Stream-K from 64 k steps a tile, and DP only where their
//     last wave is three quarters full. Measured (H200, fp16 NN, same process, two rounds, against the
//     DP they took before): 16, 32 and 64 x 4096 x 4096 in Stream-K 0.93-0.98x the time; with K 4096 and
//     N 11008 (86 tiles in a wave of 132) 0.96x, N 14336 (112 tiles) 1.03-1.05x;
//   - otherwise Stream-K: all tiles when there are at most two waves of them, else the hybrid: full
//     waves DP and Stream-K for the tail wave plus one full wave, so every block gets about 1.x tiles of
//     Stream-K work, enough that no partial segment is tiny. At most half a wave of tiles is cut into
//     equal whole parts of each tile where the k steps allow it (tile_splits).
// A forced MFA_SCHEDULE_STREAM_K skips the two DP rules (not the choice of region), so tests can run
// the Stream-K kernel on any shape with k > 0.
#include "gemm_schedule.hpp"

#include <algorithm>

#include "mfa.h"

namespace mfa {

namespace {

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

constexpr int kMaxDpKSteps = 8;       // k steps a tile needs before Stream-K can pay for its fix-up
constexpr int kMinBlockKSteps = 24;   // Stream-K k steps each block needs to pay for its fix-up
constexpr int kMaxThin = 64;          // rows or columns of a thin problem, whose cost is reading B
// Thin and sub-wave problems: Stream-K spreads their few tiles over the SMs from tiles of this many k
// steps (thin ones from fewer: the rules above), and this many a block.
constexpr int kMinSpreadKSteps = 128;
constexpr int kMinThinKSteps = 64;
constexpr int kMinSpreadBlockKSteps = 8;

// Whether Stream-K's fix-up pays for the SMs it keeps busy (the rules above).
bool stream_k_pays(int64_t m, int64_t n, int64_t tiles, int64_t sk_tiles, int k_iters, int sms) {
  const int64_t tail = tiles % sms;
  const bool thin = std::min(m, n) <= kMaxThin;
  if (tail == 0 || (thin ? 4 * tail >= 3 * sms : 2 * tail >= sms) || k_iters <= kMaxDpKSteps) return false;
  if (thin || tiles < sms)
    return k_iters >= (thin ? kMinThinKSteps : kMinSpreadKSteps) &&
           sk_tiles * k_iters >= int64_t{kMinSpreadBlockKSteps} * sms;
  return sk_tiles * k_iters >= int64_t{kMinBlockKSteps} * sms;
}

// How many of the first tiles Stream-K takes (0: none).
int64_t stream_k_tiles(int64_t m, int64_t n, int64_t tiles, int k_iters, int sms, int32_t requested) {
  if (tiles == 0 || k_iters == 0 || requested == MFA_SCHEDULE_DATA_PARALLEL) return 0;
  const int64_t sk_tiles = tiles <= 2 * int64_t{sms} ? tiles : sms + tiles % sms;
  return requested == MFA_SCHEDULE_AUTO && !stream_k_pays(m, n, tiles, sk_tiles, k_iters, sms) ? 0 : sk_tiles;
}

// Where every tile is Stream-K and at most half a wave of them: the most equal parts, at least two,
// that split each tile's k steps evenly with a unit for each part (0: none). Then every unit runs one
// segment of one tile. Cut over all SMs instead, most units hold the end of one tile and the start of
// the next, two segments and two pipeline fills. Measured on H100 (fp16 NN, thin problems of 32 tiles,
// `bench gemm --suite stream_k` shapes): 16 x 4096 x 14336 57.6 us over 132 units, 52.9 over 128 (4
// parts), 52.4 over 64 (2 parts), 57.0 over 96 (3 parts, not whole: 224 k steps); 16 x 4096 x 11008
// 44.9 -> 42.4 us.
int tile_splits(int64_t tiles, int k_iters, int sms) {
  for (int64_t parts = sms / std::max<int64_t>(tiles, 1); parts >= 2; --parts)
    if (k_iters % parts == 0) return static_cast<int>(parts);
  return 0;
}

}  // namespace

mfa_gemm_schedule plan_gemm_schedule(int64_t m, int64_t n, int64_t k, int64_t batch, int tile_m, int tile_n,
                                     int units, int32_t requested) {
  const int tiles_m = ceil_div(m, tile_m), tiles_n = ceil_div(n, tile_n), k_iters = ceil_div(k, MFA_SM90_BK);
  const int64_t tiles = int64_t{tiles_m} * tiles_n * batch;
  const int sms = std::max(units, 1);  // the rules below speak of SMs: one unit runs where a block would
  const int64_t sk_tiles = stream_k_tiles(m, n, tiles, k_iters, sms, requested);
  // Stream-K: every SM, but no more units than iterations (each unit gets at least one), or fewer
  // where whole splits of each tile fit (tile_splits). The hybrid's DP region is then whole waves of
  // `sms` tiles. DP: one unit per tile up to one per SM.
  const int splits = sk_tiles == tiles ? tile_splits(tiles, k_iters, sms) : 0;
  const int64_t grid = sk_tiles == 0 ? std::clamp<int64_t>(tiles, 1, sms)
                       : splits > 0  ? tiles * splits
                                     : std::min<int64_t>(sms, sk_tiles * k_iters);
  return mfa_gemm_schedule_make(tiles_m, tiles_n, static_cast<int>(batch), k_iters, static_cast<int>(grid),
                                static_cast<int>(sk_tiles));
}

int32_t schedule_kind(const mfa_gemm_schedule &schedule) {
  return schedule.sk_tiles > 0 ? MFA_SCHEDULE_STREAM_K : MFA_SCHEDULE_DATA_PARALLEL;
}

}  // namespace mfa
