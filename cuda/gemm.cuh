// gemm.cuh: what the GEMM kernels and their host-side launcher (cpp/gemm.cpp) agree on.
//
// Compiled twice: by the host C++ compiler (the argument struct, tile shapes and shared-memory
// formulas) and by NVRTC inside every generated GEMM source (plus the device-side epilogue).
// A generated source defines the MFA_* variant macros, then includes this header and one kernel file
// (gemm_sm80.cu or gemm_sm90.cu); MFA_DUMP_SOURCE=1 writes it out.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define MFA_HOST_DEVICE __host__ __device__
#else
#define MFA_HOST_DEVICE
#endif

// Element types (the values of MFA_DTYPE_* in mfa.h).
#define MFA_GEMM_F16 1
#define MFA_GEMM_BF16 2
#define MFA_GEMM_F32 3

// Inner-product arithmetic a variant uses.
#define MFA_MATH_F16_MMA 0   // fp16 x fp16 -> fp32 on tensor cores
#define MFA_MATH_BF16_MMA 1  // bf16 x bf16 -> fp32 on tensor cores
#define MFA_MATH_TF32X3 2    // fp32 split into tf32 hi + lo, three products (fp32-accurate)
#define MFA_MATH_FFMA 3      // fp32 fused multiply-add on the CUDA cores (IEEE)

// Epilogue activations: MFA_ACT_* (the values of MFA_ACTIVATION_* in mfa.h) and mfa_activate. The
// activation is part of the variant (MFA_GEMM_ACTIVATION, set by the generated source): unrolled over a
// 128 x 256 tile's accumulators, the four of them in one kernel doubled its compile time (nvcc phases,
// sm_90a: 15.5 s against 7.7 s without) for code that a given pipeline never runs.
#include "activation.cuh"

// ----- the persistent schedule: which k steps of which output tiles each block computes -----
// Used by the sm_90 kernel and, through the same functions, by the host (planning in
// cpp/gemm_schedule.cpp, and mfa_gemm_schedule_describe, which lets the CPU tests check coverage).
//
// Output tiles are numbered 0 .. tiles-1 (the kernel maps a number to its place, gemm_sm90.cu); a tile
// takes k_iters k steps. A grid of `units` persistent blocks shares them out in two regions:
//   Stream-K: tiles [0, sk_tiles), as one run of sk_tiles * k_iters iterations (iteration g is k step
//     g % k_iters of tile g / k_iters), cut evenly: unit u takes the sk_base + (u < sk_extra) iterations
//     after those of units 0 .. u-1. A unit's range may start or end inside a tile; it is walked tile
//     segment by tile segment.
//   Data-parallel: tiles [sk_tiles, tiles), whole, unit u taking tiles sk_tiles + u + i * units.
// Every unit does its Stream-K segments first, then its data-parallel tiles. Why this order: all units
// start their Stream-K share at once and shares are equal, so the fix-up waits (below) are short and
// the kernel ends on whole tiles with no inter-block dependency (in the hybrid, sk_tiles is chosen so
// that the data-parallel tiles are full waves: every unit ends at the same time).
//
// Fix-up. A segment that stops short of its tile's last k step ("partial": only ever the last segment
// of a unit's range) stores its fp32 accumulators in the workspace slot of its unit and raises the
// unit's flag to the launch's token; the segment that ends on the tile's last k step (the tile's one
// "finisher") waits for the flags of the units before it that cover the same tile to hold the token,
// lowers them (0) for the next launch, adds their partials in a fixed order and runs the epilogue.
// Within a unit the segments are walked last to first: its partial segment (if any) comes first, so
// partials are published before a unit ever waits, and its finisher segment (if any: only ever the
// first segment of its range) comes last, when the units before it have long published. Contributors
// never wait, so no wait can be part of a cycle; and all units are resident at once (grid <= SMs, one
// block per SM: the host asserts it), so every awaited unit is running.
struct mfa_gemm_schedule {
  int tiles_m, tiles_n, batch;  // tiles of one batch along M and N; batches
  int k_iters;                  // k steps of one tile
  int tiles;                    // tiles_m * tiles_n * batch
  int units;                    // persistent blocks: the grid
  int sk_tiles;                 // tiles [0, sk_tiles) are Stream-K, the rest data-parallel
  int sk_base, sk_extra;        // unit u has sk_base + (u < sk_extra) Stream-K iterations
};

// One work item of a unit: k steps [k_begin, k_end) of tile `tile`.
struct mfa_gemm_work {
  int tile, k_begin, k_end;
};

// The schedule of `units` blocks over a tiles_m x tiles_n x batch grid of tiles of k_iters steps, the
// first sk_tiles of them by Stream-K. With sk_tiles > 0 every unit gets at least one iteration
// (the planner keeps units <= sk_tiles * k_iters).
MFA_HOST_DEVICE inline mfa_gemm_schedule mfa_gemm_schedule_make(int tiles_m, int tiles_n, int batch, int k_iters,
                                                               int units, int sk_tiles) {
  mfa_gemm_schedule s;
  s.tiles_m = tiles_m;
  s.tiles_n = tiles_n;
  s.batch = batch;
  s.k_iters = k_iters;
  s.tiles = tiles_m * tiles_n * batch;
  s.units = units;
  s.sk_tiles = sk_tiles;
  const long long sk_iters = static_cast<long long>(sk_tiles) * k_iters;
  s.sk_base = static_cast<int>(sk_iters / units);
  s.sk_extra = static_cast<int>(sk_iters % units);
  return s;
}

// First Stream-K iteration of unit u (u = units gives the end of the region).
MFA_HOST_DEVICE inline long long mfa_gemm_sk_begin(const mfa_gemm_schedule &s, int u) {
  return static_cast<long long>(u) * s.sk_base + (u < s.sk_extra ? u : s.sk_extra);
}

// The unit whose Stream-K range holds iteration g (0 <= g < sk_tiles * k_iters).
MFA_HOST_DEVICE inline int mfa_gemm_sk_unit_of(const mfa_gemm_schedule &s, long long g) {
  const long long wide = static_cast<long long>(s.sk_extra) * (s.sk_base + 1);  // units with one more
  return g < wide ? static_cast<int>(g / (s.sk_base + 1)) : s.sk_extra + static_cast<int>((g - wide) / s.sk_base);
}

// Tile segments in unit u's Stream-K range (0 without Stream-K).
MFA_HOST_DEVICE inline int mfa_gemm_sk_segments(const mfa_gemm_schedule &s, int u) {
  const long long begin = mfa_gemm_sk_begin(s, u), end = mfa_gemm_sk_begin(s, u + 1);
  if (s.sk_tiles == 0 || end <= begin) return 0;
  return static_cast<int>((end - 1) / s.k_iters - begin / s.k_iters + 1);
}

// Data-parallel tiles of unit u.
MFA_HOST_DEVICE inline int mfa_gemm_dp_tiles(const mfa_gemm_schedule &s, int u) {
  const int dp = s.tiles - s.sk_tiles;
  return u < dp ? (dp - u + s.units - 1) / s.units : 0;
}

// Work items of unit u: its Stream-K segments, then its data-parallel tiles.
MFA_HOST_DEVICE inline int mfa_gemm_work_count(const mfa_gemm_schedule &s, int u) {
  return mfa_gemm_sk_segments(s, u) + mfa_gemm_dp_tiles(s, u);
}

// Item i (0 <= i < mfa_gemm_work_count) of unit u. Stream-K segments come last-to-first (see above).
MFA_HOST_DEVICE inline mfa_gemm_work mfa_gemm_work_at(const mfa_gemm_schedule &s, int u, int i) {
  const int segments = mfa_gemm_sk_segments(s, u);
  if (i >= segments) return {s.sk_tiles + u + (i - segments) * s.units, 0, s.k_iters};
  const long long begin = mfa_gemm_sk_begin(s, u), end = mfa_gemm_sk_begin(s, u + 1);
  const int tile = static_cast<int>(begin / s.k_iters) + segments - 1 - i;
  const long long tile_begin = static_cast<long long>(tile) * s.k_iters;
  const long long lo = begin > tile_begin ? begin : tile_begin;
  const long long hi = end < tile_begin + s.k_iters ? end : tile_begin + s.k_iters;
  return {tile, static_cast<int>(lo - tile_begin), static_cast<int>(hi - tile_begin)};
}

// A partial item stores its accumulators for the finisher; a finisher with k_begin > 0 adds the
// partials of units [mfa_gemm_first_contributor, u), which hold the tile's k steps [0, k_begin).
MFA_HOST_DEVICE inline bool mfa_gemm_work_is_partial(const mfa_gemm_schedule &s, const mfa_gemm_work &w) {
  return w.k_end < s.k_iters;
}
MFA_HOST_DEVICE inline int mfa_gemm_first_contributor(const mfa_gemm_schedule &s, int tile) {
  return mfa_gemm_sk_unit_of(s, static_cast<long long>(tile) * s.k_iters);
}

// Workspace of a schedule for unit tiles of bm x bn (bm: MFA_SM90_BM times the blocks of a cluster): one
// 64-bit flag per 64 rows of a unit tile (a consumer warpgroup's), padded to 256 bytes, then one fp32
// tile-sized partial slot per unit. None without Stream-K.
MFA_HOST_DEVICE inline unsigned long long mfa_gemm_flag_count(const mfa_gemm_schedule &s, int bm) {
  return static_cast<unsigned long long>(s.units) * (bm / 64);
}
MFA_HOST_DEVICE inline unsigned long long mfa_gemm_flag_bytes(const mfa_gemm_schedule &s, int bm) {
  return (mfa_gemm_flag_count(s, bm) * 8 + 255) / 256 * 256;
}
MFA_HOST_DEVICE inline unsigned long long mfa_gemm_workspace_bytes(const mfa_gemm_schedule &s, int bm, int bn) {
  if (s.sk_tiles == 0) return 0;
  return mfa_gemm_flag_bytes(s, bm) + static_cast<unsigned long long>(s.units) * bm * bn * 4;
}

// Kernel parameters. Element (i, k) of op(A) lives at a[i * lda + k] (trans_a = 0) or
// a[k * lda + i] (trans_a = 1); likewise B with (k, j); C is row-major with row stride ldc.
// Strides count elements; a batch stride of 0 broadcasts that operand.
struct mfa_gemm_args {
  const void *a;
  const void *b;
  void *c;
  const void *bias;       // [n] of bias_dtype, or null
  long long lda, ldb, ldc;
  long long batch_stride_a, batch_stride_b, batch_stride_c;
  int m, n, k, batch;
  float alpha, beta;
  int bias_dtype;         // MFA_GEMM_* or 0 for none
  // sm_90 kernel only: its schedule, and the Stream-K workspace (null without Stream-K): flags and
  // partial slots, laid out as mfa_gemm_workspace_bytes says, and the value a flag of this launch is
  // raised to (never 0; cpp/gemm.cpp's attach_workspace says why a token).
  mfa_gemm_schedule schedule;
  unsigned long long *flags;
  unsigned long long flag_token;
  float *partials;
  int c_by_tma;  // sm_90 16-bit kernel: C is stored by TMA through shared memory (else element by element)
};

// The opaque 128-byte CUtensorMap that the host encodes and the sm_90 kernel receives by value.
struct alignas(64) mfa_tensor_map {
  unsigned long long opaque[16];
};

// ----- sm_80 portable kernel: block tile and its shared-memory ring -----
// 16-bit inputs: BK = 32 (two k16 mma steps); fp32 inputs: BK = 16 (two k8 tf32 steps or 16 FMAs).
#define MFA_SM80_BM 128
#define MFA_SM80_BN 128
#define MFA_SM80_THREADS 256
#define MFA_SM80_STAGES 3
MFA_HOST_DEVICE constexpr int mfa_sm80_bk(int in_bytes) { return in_bytes == 2 ? 32 : 16; }
// Rows of `cols` elements are padded so that fragment loads of neighbouring rows fall in different
// banks: by 16 bytes (ldmatrix rows land in distinct 16-byte bank groups), except fp32 rows that run
// along M or N (cols != BK), read one word per thread: there the 4 k-rows a thread quad reads must
// start 8 banks apart, hence 32 bytes.
MFA_HOST_DEVICE constexpr int mfa_sm80_pad(int cols, int in_bytes) {
  return (in_bytes == 4 && cols != mfa_sm80_bk(in_bytes) ? 32 : 16) / in_bytes;
}
// One stage holds the A tile and the B tile, each stored in global orientation, rows padded.
MFA_HOST_DEVICE constexpr int mfa_sm80_tile_elems(int rows, int cols, int in_bytes) {
  return rows * (cols + mfa_sm80_pad(cols, in_bytes));
}
MFA_HOST_DEVICE constexpr int mfa_sm80_stage_elems(int trans_a, int trans_b, int in_bytes) {
  return (trans_a ? mfa_sm80_tile_elems(mfa_sm80_bk(in_bytes), MFA_SM80_BM, in_bytes)
                  : mfa_sm80_tile_elems(MFA_SM80_BM, mfa_sm80_bk(in_bytes), in_bytes)) +
         (trans_b ? mfa_sm80_tile_elems(MFA_SM80_BN, mfa_sm80_bk(in_bytes), in_bytes)
                  : mfa_sm80_tile_elems(mfa_sm80_bk(in_bytes), MFA_SM80_BN, in_bytes));
}
MFA_HOST_DEVICE constexpr int mfa_sm80_smem_bytes(int trans_a, int trans_b, int in_bytes) {
  return MFA_SM80_STAGES * mfa_sm80_stage_elems(trans_a, trans_b, in_bytes) * in_bytes;
}

// ----- sm_90a kernel: TMA boxes, wgmma tile, ring depth -----
// A block computes BM x BN tiles with two consumer warpgroups (64 rows each) and one producer
// warpgroup. BN is the variant's choice, a multiple of 16 from 64 to 256 (wgmma's n; chosen so that the
// tiles fill the SMs' waves, cpp/gemm.cpp), or from 16 where B is K-major (the narrow tiles of thin
// problems, whose few rows fill the tile's width): a generated source defines MFA_SM90_BN, the host
// passes it to the formulas below. TMA boxes are 64 elements (128 bytes, the swizzle span) wide on the
// contiguous dimension.
#define MFA_SM90_BM 128
#define MFA_SM90_BK 64
#define MFA_SM90_THREADS 384
#define MFA_SM90_BOX 64
#define MFA_SM90_SMEM_LIMIT (227 * 1024)  // opt-in dynamic shared memory of one block on sm_90
// Narrow tiles, narrower than one box (16, 32, 48): K-major B only, no staging buffers (below).
MFA_HOST_DEVICE constexpr bool mfa_sm90_narrow(int bn) { return bn < MFA_SM90_BOX; }
// B's region of a stage holds whole 64-wide boxes: an N-major B (TRANS_B = 0) arrives as square boxes
// side by side, the last one loaded whole even where the tile uses part of it (144 wide: 192 columns).
// A narrow tile's K-major B is one box of BN rows.
MFA_HOST_DEVICE constexpr int mfa_sm90_b_region_cols(int bn) {
  return mfa_sm90_narrow(bn) ? bn : (bn + MFA_SM90_BOX - 1) / MFA_SM90_BOX * MFA_SM90_BOX;
}
MFA_HOST_DEVICE constexpr int mfa_sm90_stage_bytes(int bn) {
  return (MFA_SM90_BM + mfa_sm90_b_region_cols(bn)) * MFA_SM90_BK * 2;
}
// The epilogue's staging: two 8 KB buffers (64 rows of one 128-byte swizzle span) per consumer
// warpgroup, for tiles of at least one whole 16-bit chunk (64 columns); narrow tiles write C from
// registers and give that room to the ring.
#define MFA_SM90_STAGING_BYTES (2 * 2 * 8192)
MFA_HOST_DEVICE constexpr int mfa_sm90_staging_bytes(int bn) {
  return mfa_sm90_narrow(bn) ? 0 : MFA_SM90_STAGING_BYTES;
}
// As many stages as fit beside the staging buffers, 1 KB of alignment slack and two 8-byte mbarriers a
// stage: 4 of 48 KB for 128 x 256 (and 208, 224, 240), 4 of 40 KB for 128 x 192 (and 144 .. 176), 6 of 32 KB
// for 128 x 128 (and 80 .. 112), 8 of 24 KB for 128 x 64; 10 to 12 of 18-22 KB for the narrow tiles.
MFA_HOST_DEVICE constexpr int mfa_sm90_stages(int bn) {
  return (MFA_SM90_SMEM_LIMIT - 1024 - mfa_sm90_staging_bytes(bn)) / (mfa_sm90_stage_bytes(bn) + 2 * 8);
}
// The ring, the staging buffers, the ring's mbarriers, and 1 KB so the ring can start on a 1024-byte
// (swizzle atom) boundary.
MFA_HOST_DEVICE constexpr int mfa_sm90_smem_bytes(int bn) {
  return mfa_sm90_stages(bn) * (mfa_sm90_stage_bytes(bn) + 2 * 8) + mfa_sm90_staging_bytes(bn) + 1024;
}

// ----- sm_90a fp32-accurate kernel (gemm_sm90_tf32.cu): 128 x 128 tiles, k-tiles of 32 fp32 -----
// A stage holds A, B as loaded and B's tf32 lo part; with B stored N-major (TRANS_B = 0) also B's hi
// part, transposed to K-major (tf32 wgmma reads K-major operands only).
#define MFA_SM90_TF32_BN 128
MFA_HOST_DEVICE constexpr int mfa_sm90_tf32_stage_bytes(int trans_b) { return (trans_b ? 3 : 4) * 16384; }
// As many stages as fit beside 1 KB of alignment slack and three 8-byte mbarriers a stage.
MFA_HOST_DEVICE constexpr int mfa_sm90_tf32_stages(int trans_b) {
  return (MFA_SM90_SMEM_LIMIT - 1024) / (mfa_sm90_tf32_stage_bytes(trans_b) + 3 * 8);
}
MFA_HOST_DEVICE constexpr int mfa_sm90_tf32_smem_bytes(int trans_b) {
  return mfa_sm90_tf32_stages(trans_b) * (mfa_sm90_tf32_stage_bytes(trans_b) + 3 * 8) + 1024;
}

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#ifndef MFA_GEMM_ACTIVATION
#error "a generated GEMM source defines MFA_GEMM_ACTIVATION"
#endif
// ----- device side: element conversion and the epilogue shared by every path -----
#include "ptx.cuh"

template <int DTYPE>
__device__ __forceinline__ float mfa_load_as_float(const void *base, long long index) {
  if (DTYPE == MFA_GEMM_F32) return static_cast<const float *>(base)[index];
  const unsigned short bits = static_cast<const unsigned short *>(base)[index];
  return DTYPE == MFA_GEMM_F16 ? mfa_f16_to_f32(bits) : mfa_bf16_to_f32(bits);
}

__device__ __forceinline__ float mfa_load_bias(const void *bias, int dtype, int col) {
  switch (dtype) {
    case MFA_GEMM_F16: return mfa_load_as_float<MFA_GEMM_F16>(bias, col);
    case MFA_GEMM_BF16: return mfa_load_as_float<MFA_GEMM_BF16>(bias, col);
    case MFA_GEMM_F32: return mfa_load_as_float<MFA_GEMM_F32>(bias, col);
    default: return 0.0f;
  }
}

template <int DTYPE>
__device__ __forceinline__ void mfa_store_from_float(void *base, long long index, float value) {
  if (DTYPE == MFA_GEMM_F32) {
    static_cast<float *>(base)[index] = value;
  } else {
    static_cast<unsigned short *>(base)[index] =
        DTYPE == MFA_GEMM_F16 ? mfa_f32_to_f16(value) : mfa_f32_to_bf16(value);
  }
}

// Two adjacent elements at base[index], base[index + 1] as one 32-bit (16-bit types) or 64-bit (f32)
// access; index must be even and base aligned to two elements.
template <int DTYPE>
__device__ __forceinline__ void mfa_load_pair_as_float(const void *base, long long index, float &v0, float &v1) {
  if (DTYPE == MFA_GEMM_F32) {
    const float2 pair = *reinterpret_cast<const float2 *>(static_cast<const float *>(base) + index);
    v0 = pair.x;
    v1 = pair.y;
  } else {
    const unsigned bits = *reinterpret_cast<const unsigned *>(static_cast<const unsigned short *>(base) + index);
    v0 = mfa_load_as_float<DTYPE>(&bits, 0);
    v1 = mfa_load_as_float<DTYPE>(&bits, 1);
  }
}

template <int DTYPE>
__device__ __forceinline__ void mfa_store_pair_from_float(void *base, long long index, float v0, float v1) {
  if (DTYPE == MFA_GEMM_F32) {
    *reinterpret_cast<float2 *>(static_cast<float *>(base) + index) = make_float2(v0, v1);
  } else {
    unsigned short halves[2];
    mfa_store_from_float<DTYPE>(halves, 0, v0);
    mfa_store_from_float<DTYPE>(halves, 1, v1);
    *reinterpret_cast<unsigned *>(static_cast<unsigned short *>(base) + index) = halves[0] | halves[1] << 16;
  }
}

// The variant's activation of a value bound for C of type C_DTYPE: the fast forms (activation.cuh) for
// 16-bit C, whose rounding hides their error.
template <int C_DTYPE>
__device__ __forceinline__ float mfa_gemm_activated(float value) {
  return mfa_activate(value, MFA_GEMM_ACTIVATION, C_DTYPE != MFA_GEMM_F32);
}

// C[row, col] = act(alpha * acc + beta * C[row, col] + bias[col]) for one in-bounds element of
// batch `batch_index`. beta == 0 never reads C, so C may hold anything (NaN included) on entry.
template <int C_DTYPE>
__device__ __forceinline__ void mfa_epilogue_store(const mfa_gemm_args &args, int batch_index, int row,
                                                   int col, float acc) {
  const long long index = batch_index * args.batch_stride_c + (long long)row * args.ldc + col;
  float value = args.alpha * acc;
  if (args.beta != 0.0f) value += args.beta * mfa_load_as_float<C_DTYPE>(args.c, index);
  if (args.bias_dtype) value += mfa_load_bias(args.bias, args.bias_dtype, col);
  mfa_store_from_float<C_DTYPE>(args.c, index, mfa_gemm_activated<C_DTYPE>(value));
}
#endif
