// group_norm.cuh: what the group-norm kernels (group_norm.cu) and their host side (cpp/group_norm.cpp)
// agree on: the argument struct, the block size, the values of the variant macros.
//
// A pass is one launch where a group fits on chip (the one-pass path, sm_90+): a thread-block cluster
// per (n, group) copies the group into its blocks' shared memory, merges its sums through distributed
// shared memory and writes y (forward) or dx (backward), reading every input from HBM once; the
// backward's dweight/dbias then take one small launch over per-block partials, unless a cluster holds
// the group in every sample (cluster_samples == n) and sums them itself. Otherwise (groups too
// large for a cluster, or no clusters: before sm_90) a pass is three launches over per-(sample, channel,
// spatial tile) partials in a workspace:
//   reduce    partials[n][c][tile] = (mean, M2) of x' (forward) or (sum dy^ * xhat, sum dy^) (backward)
//   finalize  merges them in a fixed order: forward mean/rstd per (n, group); backward the per-(n, group)
//             coefficients of dx and, per channel, dweight and dbias
//   apply     elementwise: y (and x_sum) forward, dx backward
// No atomics anywhere: the same inputs give the same bits.
#pragma once

// Values of the variant macros a generated source defines (MFA_GN_PASS, MFA_GN_LAYOUT, MFA_GN_DTYPE,
// MFA_GN_ACTIVATION); they equal mfa.h's MFA_PASS_*, MFA_LAYOUT_*, MFA_DTYPE_*, MFA_ACTIVATION_*.
#define MFA_GN_FORWARD 0
#define MFA_GN_BACKWARD 1
#define MFA_GN_NCHW 0
#define MFA_GN_NHWC 1
#define MFA_GN_F16 1
#define MFA_GN_BF16 2
#define MFA_GN_F32 3
// MFA_GN_ACTIVATION takes activation.cuh's MFA_ACT_* values.

#define MFA_GN_THREADS 256
// One-pass NHWC backward blocks of many wide units a thread at MFA_GN_THREADS take up to this many
// (cpp/group_norm.cpp onepass_threads).
#define MFA_GN_ONEPASS_THREADS 512

// The one-pass path: clusters of at most MFA_GN_CLUSTER_MAX blocks (the portable size: every GPC holds
// 8 blocks) of at most MFA_GN_THREADS threads (MFA_GN_ONEPASS_THREADS for some NHWC backward passes),
// each block staging at most MFA_GN_SLICE_MAX_BYTES of shared memory (its slice of each input stream plus
// the group's per-channel table), so that two blocks share an SM and one copies while the other computes
// or stores.
#define MFA_GN_CLUSTER_MAX 8
// Groups too large for MFA_GN_CLUSTER_MAX blocks may take up to this many: the non-portable size Hopper
// schedules (checked with cuOccupancyMaxActiveClusters when the pipeline is made).
#define MFA_GN_CLUSTER_WIDE_MAX 16
#define MFA_GN_SLICE_MAX_BYTES (110 * 1024)
// The one-pass NCHW backward copies its slice in at most this many chunks (cp.async groups, waited for in
// turn) of at least two block-strides of units each, so that its first pass (dy^, the sums) overlaps the
// later chunks' copies. Measured (H200, fp16, against one chunk): 16x256x128x128 148.6 -> 141.0 us,
// 2x1280x64x64 36.9 -> 35.3, with SiLU 48.5 -> 43.3, the smaller diffusion shapes within 2%. The forward,
// whose first pass is cheap, gained nothing; NHWC (its scattered copies bound by issue) lost 3-4%, in a
// build that also carried the register cost noted at mfa_gn_item, not measured apart. Both copy in one chunk.
#define MFA_GN_MAX_CHUNKS 8
// The one-pass NHWC kernel on a tensor beyond L2 takes a band of up to this many adjacent groups per
// cluster (args.band), so that its rows are at least 64 bytes (cpp/group_norm.cpp onepass_band).
#define MFA_GN_MAX_BAND 8
// Floats per (n, group) in the workspace's group_stats (forward: pivot p, mean of x' - p, rstd; one spare).
#define MFA_GN_STATS 4
#define MFA_GN_WARPS (MFA_GN_THREADS / 32)
// Spatial tiles are multiples of this many positions, so that 16-byte vectors never straddle two tiles.
#define MFA_GN_TILE_MULTIPLE 8

// Division of 64-bit indices by a 32-bit divisor without the 64-bit division subroutine (which costs a
// call and stack): q = (t + ((n - t) >> 1)) >> (shift - 1), t = umulhi(magic, n), with shift =
// ceil(log2 value) and magic = floor(2^64 (2^shift - value) / value) + 1 (Granlund and Montgomery);
// exact for every 64-bit n. The host fills it with mfa_gn_divisor_of (cpp/group_norm.cpp).
// magic32 does the same for 32-bit n with t = umulhi32(magic32, n), magic32 = floor(2^32 (2^shift - value) /
// value) + 1 (the one-pass kernel's offsets within a group: 4 instructions instead of ~14).
struct mfa_gn_divisor {
  unsigned long long magic;
  unsigned int shift;
  unsigned int value;
  unsigned int magic32;
  unsigned int unused;
};

// Kernel parameters. x is [n, c, spatial] in the variant's layout: NCHW element (n, c, s) at
// (n * c + c) * spatial + s, NHWC at (n * spatial + s) * c + c. Element tensors share x's layout.
struct mfa_gn_args {
  const void *x;         // forward: x; backward: x' (the forward's normalized input)
  const void *residual;  // forward: added to x, or null; backward: unused
  const void *dy;        // backward only
  const void *weight;    // [c] of weight_dtype, or null (1)
  const void *bias;      // [c] of weight_dtype, or null (0)
  void *y;               // forward: y; backward: dx
  void *x_sum;           // forward: x + residual, or null
  float *mean;           // [n, groups]: forward output (or null), backward input
  float *rstd;           // likewise
  void *dweight;         // backward: [c] of weight_dtype, or null
  void *dbias;
  float *partials;       // workspace: [n][c][tiles][2]
  float *coefficients;   // workspace, forward with 16-bit inputs: [n][c] (scale, shift) for apply
  float *group_stats;    // workspace: [n][groups][MFA_GN_STATS]: forward (p, mean_p, rstd), backward
                         // (rstd*s1/M, rstd*s2/M)
  long long n, c, spatial, groups, cpg;  // cpg: channels per group
  long long tile, tiles;                 // spatial positions per partial, partials per (n, c)
  // one pass: a group is units of U elements copied at once, numbered in memory order (NCHW: channel-
  // major; NHWC: position-major); block `rank` of a cluster holds units [rank * slice_units, ...)
  long long slice_units;
  long long row_units;                   // units per channel (NCHW: spatial / U) or per position (NHWC: cpg / U)
  long long slice_bytes;                 // shared bytes of one stream's slice (a multiple of 16)
  int streams;                           // staged input streams: 1 (x) or 2 (x and residual or dy)
  // one pass, backward: shared memory holds, after the table, `column_slots` float2 (MFA_GN_WARPS per
  // channel a slice touches; 0 unless every run of 32 units lies in one channel: NCHW, row_units and
  // slice_units multiples of 32), then, where cluster_samples == n, cpg float2 (the block's channel sums)
  int column_slots;
  int cluster_samples;                   // one pass: samples a cluster holds its group in (1, or backward n)
  // one pass: groups side by side in an item (1, or in NHWC a power of two up to MFA_GN_MAX_BAND,
  // with rows of at most 32 units: group j of the band owns units of columns [j, j + 1) * row_units /
  // band of each row, and slices are whole rows). groups, cpg and div_groups then describe the items:
  // the band's groups / band, its cpg * band.
  int band;
  mfa_gn_divisor div_c, div_spatial, div_groups, div_cpg, div_tiles, div_row_units;
  int weight_dtype;                      // MFA_GN_F16/BF16/F32, 0 for none
  float eps;
};

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
// n / d.value for n >= 0.
__device__ __forceinline__ long long mfa_gn_div(long long n, const mfa_gn_divisor &d) {
  if (d.value == 1) return n;
  const unsigned long long u = static_cast<unsigned long long>(n);
  const unsigned long long t = __umul64hi(d.magic, u);
  return static_cast<long long>((t + ((u - t) >> 1)) >> (d.shift - 1));
}
// n / d.value for 0 <= n < 2^32 (d.value < 2^31).
__device__ __forceinline__ unsigned mfa_gn_div32(unsigned n, const mfa_gn_divisor &d) {
  if (d.value == 1) return n;
  const unsigned t = __umulhi(d.magic32, n);
  return (t + ((n - t) >> 1)) >> (d.shift - 1);
}
#endif
