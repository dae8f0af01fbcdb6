// group_norm.cpp: the group-norm family's host side. A descriptor is validated and names one variant
// (pass, layout, element type, activation: "group_norm.fwd.nhwc.f16.silu"), a small generated source
// compiled by NVRTC (cached) that includes cuda/group_norm.cu. Sizes choose the plans; encode checks the
// tensors and launches either the one-pass kernel (sm_90+, a group fits a cluster's shared memory):
//
//   onepass      one cluster of 1..8 blocks per (n, group): inputs read once, y or dx written; an
//                entry per unit of 1, 2, 4 or 8 elements (the widest the tensors' alignment allows).
//                Backward, where n clusters' blocks fit one cluster: one cluster per group, holding it
//                in every sample, which also sums dweight/dbias
//   param_grads  otherwise, backward with dweight/dbias: a fixed-order sum of the blocks' per-channel partials
//
// or three kernels (groups too large for a cluster, and GPUs without clusters):
//
//   reduce    per-(n, c, tile) partials into the workspace        vec (16-byte) or scalar entry
//   finalize  fixed-order merge: forward mean/rstd, backward the dx coefficients and dweight/dbias
//   apply     y (and x_sum) forward, dx backward                    vec or scalar entry
//
// Weight dtype and the residual are run-time arguments of the same kernels (they touch C values or
// add one load), so the variant count stays at pass x layout x dtype x activation = 48.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../cuda/activation.cuh"
#include "../cuda/group_norm.cuh"
#include "context.hpp"
#include "errors.hpp"
#include "nvrtc.hpp"
#include "tensor.hpp"

static_assert(MFA_GN_FORWARD == MFA_PASS_FORWARD && MFA_GN_BACKWARD == MFA_PASS_BACKWARD, "pass values");
static_assert(MFA_GN_NCHW == MFA_LAYOUT_NCHW && MFA_GN_NHWC == MFA_LAYOUT_NHWC, "layout values");
static_assert(MFA_GN_F16 == MFA_DTYPE_F16 && MFA_GN_BF16 == MFA_DTYPE_BF16 && MFA_GN_F32 == MFA_DTYPE_F32, "dtypes");
static_assert(MFA_ACT_NONE == MFA_ACTIVATION_NONE && MFA_ACT_SILU == MFA_ACTIVATION_SILU &&
                  MFA_ACT_GELU_ERF == MFA_ACTIVATION_GELU_ERF && MFA_ACT_GELU_TANH == MFA_ACTIVATION_GELU_TANH,
              "activation values");

namespace mfa {
namespace {

const char *layout_name(int32_t layout) { return layout == MFA_LAYOUT_NHWC ? "nhwc" : "nchw"; }

// Elements per 16-byte vector.
int vector_elements(int32_t dtype) { return 16 / element_bytes(dtype); }

// ----- the descriptor -----

mfa_group_norm_descriptor validate_descriptor(const mfa_group_norm_descriptor *descriptor) {
  require_arg(descriptor, "descriptor");
  require_header(descriptor->header, MFA_STRUCT_GROUP_NORM_DESCRIPTOR, sizeof(mfa_group_norm_descriptor),
                 "descriptor");
  mfa_group_norm_descriptor d = MFA_GROUP_NORM_DESCRIPTOR_INIT;
  std::memcpy(&d, descriptor, std::min<size_t>(descriptor->header.size, sizeof d));
  d.header.size = sizeof d;
  require(d.n >= 1 && d.n <= 65535, MFA_STATUS_INVALID_ARGUMENT, "descriptor->n is ", d.n, " (must be in [1, 65535])");
  require(d.c >= 1 && d.c <= INT_MAX, MFA_STATUS_INVALID_ARGUMENT, "descriptor->c is ", d.c,
          " (must be in [1, 2^31))");
  require(d.spatial >= 1 && d.spatial <= INT_MAX, MFA_STATUS_INVALID_ARGUMENT, "descriptor->spatial is ", d.spatial,
          " (must be in [1, 2^31))");
  require(d.groups >= 1 && d.groups <= d.c && d.c % d.groups == 0, MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->groups is ", d.groups, ": it must divide c (", d.c, ")");
  require(d.c * d.spatial <= (int64_t{1} << 48) / d.n, MFA_STATUS_UNSUPPORTED, "descriptor: n * c * spatial (",
          d.n, " * ", d.c, " * ", d.spatial, ") exceeds 2^48 elements");
  require(is_float_dtype(d.dtype), MFA_STATUS_INVALID_ARGUMENT, "descriptor->dtype is ", d.dtype);
  require(d.weight_dtype == MFA_DTYPE_NONE || is_float_dtype(d.weight_dtype), MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->weight_dtype is ", d.weight_dtype);
  require(d.weight_dtype == MFA_DTYPE_NONE || d.weight_dtype == d.dtype || d.weight_dtype == MFA_DTYPE_F32,
          MFA_STATUS_UNSUPPORTED, "descriptor->weight_dtype is ", dtype_name(d.weight_dtype), ": use dtype (",
          dtype_name(d.dtype), "), f32 or none");
  require(d.layout == MFA_LAYOUT_NCHW || d.layout == MFA_LAYOUT_NHWC, MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->layout is ", d.layout);
  require(d.activation >= MFA_ACTIVATION_NONE && d.activation <= MFA_ACTIVATION_SILU, MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->activation is ", d.activation);
  require(d.activation != MFA_ACTIVATION_RELU, MFA_STATUS_UNSUPPORTED,
          "descriptor->activation is RELU: group norm fuses none, SILU, GELU_ERF or GELU_TANH");
  require(d.pass == MFA_PASS_FORWARD || d.pass == MFA_PASS_BACKWARD, MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->pass is ", d.pass);
  require(d.has_residual == 0 || d.has_residual == 1, MFA_STATUS_INVALID_ARGUMENT, "descriptor->has_residual is ",
          d.has_residual);
  require(d.has_residual == 0 || d.pass == MFA_PASS_FORWARD, MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->has_residual is 1 for the backward pass: pass the forward's x_sum as x instead");
  require(std::isfinite(d.eps) && d.eps > 0.0f, MFA_STATUS_INVALID_ARGUMENT, "descriptor->eps is ", d.eps,
          " (must be finite and > 0)");
  require(d.reserved == 0, MFA_STATUS_INVALID_ARGUMENT, "descriptor->reserved is ", d.reserved, " (must be 0)");
  return d;
}

// ----- the variant -----

struct GroupNormVariant {
  int32_t pass, layout, dtype, activation;

  std::string key() const {
    return concat("group_norm.", pass == MFA_PASS_FORWARD ? "fwd" : "bwd", ".", layout_name(layout), ".",
                  dtype_name(dtype), ".", activation_name(activation));
  }

  std::string source() const {
    return concat("// ", key(), ": generated by MFA ", mfa_version_string(), "\n",
                  "#define MFA_GN_PASS ", pass, "\n",
                  "#define MFA_GN_LAYOUT ", layout, "\n",
                  "#define MFA_GN_DTYPE ", dtype, "\n",
                  "#define MFA_GN_ACTIVATION ", activation, "\n",
                  "#include \"group_norm.cu\"\n");
  }
};

// The launch order of a pass; encode indexes them with these names.
enum Entry {
  kReduceVec, kReduceScalar, kFinalize, kApplyVec, kApplyScalar,
  kOnePass1, kOnePass2, kOnePass4, kOnePass8, kParamGrads,
  kOnePassBands1, kOnePassBands2, kOnePassBands4, kOnePassBands8, kEntryCount
};
const char *const kEntries[kEntryCount] = {
    "mfa_gn_reduce_vec",      "mfa_gn_reduce_scalar",   "mfa_gn_finalize",        "mfa_gn_apply_vec",
    "mfa_gn_apply_scalar",    "mfa_gn_onepass_1",       "mfa_gn_onepass_2",       "mfa_gn_onepass_4",
    "mfa_gn_onepass_8",       "mfa_gn_param_grads",     "mfa_gn_onepass_bands_1", "mfa_gn_onepass_bands_2",
    "mfa_gn_onepass_bands_4", "mfa_gn_onepass_bands_8"};

// The one-pass entry for units of `unit` elements, for items of one group or of bands of several.
Entry onepass_entry(int unit, int band) {
  const bool bands = band > 1;
  switch (unit) {
    case 8: return bands ? kOnePassBands8 : kOnePass8;
    case 4: return bands ? kOnePassBands4 : kOnePass4;
    case 2: return bands ? kOnePassBands2 : kOnePass2;
    default: return bands ? kOnePassBands1 : kOnePass1;
  }
}

GroupNormVariant variant_for(const mfa_group_norm_descriptor &d) { return {d.pass, d.layout, d.dtype, d.activation}; }

KernelSource source_of(const GroupNormVariant &variant, const std::string &arch) {
  return {variant.key(), variant.source(), arch};
}

// ----- the plan: spatial tiles per channel, and the workspace -----

constexpr int64_t kWorkspaceAlign = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Plan {
  int64_t tile = 1, tiles = 1;
  uint64_t partials_bytes = 0, stats_bytes = 0, workspace_bytes = 0;
};

// NHWC reduce blocks: `width` channel vectors side by side, `lanes` threads down each.
struct NhwcShape {
  int64_t columns, width, lanes, column_blocks;
};
NhwcShape nhwc_shape(int64_t c, int vec) {
  NhwcShape shape;
  shape.columns = c / vec;
  shape.width = std::min<int64_t>(shape.columns, MFA_GN_THREADS);
  shape.lanes = MFA_GN_THREADS / shape.width;
  shape.column_blocks = ceil_div(shape.columns, shape.width);
  return shape;
}

// Enough reduce work items to fill the device a few times over (warps for NCHW, blocks for NHWC),
// each still reading at least ~1K elements, so that one large group is split across many SMs.
// The workspace also holds the one-pass backward's partials: one per (n, channel, block of a cluster).
Plan plan_for(const mfa_group_norm_descriptor &d, int sm_count, int onepass_cluster) {
  const int64_t sms = std::max(sm_count, 1);
  int64_t wanted, most;
  if (d.layout == MFA_LAYOUT_NCHW) {
    wanted = ceil_div(sms * 64, d.n * d.c);
    most = std::max<int64_t>(1, d.spatial / 1024);
  } else {
    const int vec = d.c % vector_elements(d.dtype) == 0 ? vector_elements(d.dtype) : 1;
    const NhwcShape shape = nhwc_shape(d.c, vec);
    wanted = ceil_div(sms * 4, d.n * shape.column_blocks);
    most = std::max<int64_t>(1, d.spatial / (shape.lanes * 4));
  }
  Plan plan;
  const int64_t tiles = std::clamp<int64_t>(wanted, 1, most);
  plan.tile = ceil_div(ceil_div(d.spatial, tiles), MFA_GN_TILE_MULTIPLE) * MFA_GN_TILE_MULTIPLE;
  plan.tiles = ceil_div(d.spatial, plan.tile);
  plan.partials_bytes =
      ceil_div(d.n * d.c * std::max<int64_t>(plan.tiles, onepass_cluster) * 2 * 4, kWorkspaceAlign) * kWorkspaceAlign;
  plan.stats_bytes = ceil_div(d.n * d.groups * MFA_GN_STATS * 4, kWorkspaceAlign) * kWorkspaceAlign;
  const int64_t coefficients_bytes = d.pass == MFA_PASS_FORWARD ? d.n * d.c * 2 * 4 : 0;
  plan.workspace_bytes = plan.partials_bytes + plan.stats_bytes + coefficients_bytes;
  return plan;
}

// ----- the one-pass plan: blocks per (n, group) -----

// Input streams the one-pass kernel stages: x (and the residual) forward, x' and dy backward.
int64_t staged_streams(const mfa_group_norm_descriptor &d) {
  return d.pass == MFA_PASS_BACKWARD || d.has_residual ? 2 : 1;
}

int64_t round_up(int64_t value, int64_t multiple) { return ceil_div(value, multiple) * multiple; }

// One stream's slice of `slice_units` units of U elements, padded so that the next stream starts aligned.
int64_t slice_bytes(const mfa_group_norm_descriptor &d, int64_t slice_units, int unit) {
  return round_up(slice_units * unit * element_bytes(d.dtype), 16);
}

// The backward sums each channel as it goes (mfa_gn_run_sums) where runs of 32 units, a warp's step,
// never straddle two channels: NCHW with channels of whole runs, and slices of whole runs (below).
bool column_runs(const mfa_group_norm_descriptor &d, int unit) {
  return d.pass == MFA_PASS_BACKWARD && d.layout == MFA_LAYOUT_NCHW && d.spatial % (32 * unit) == 0;
}

// Units per block of a cluster of `cluster` blocks; for a band of groups (onepass_band: d its items) whole
// rows, so that each thread's units lie in one group (units wider than a row: a bound's, never launched).
int64_t onepass_slice_units(const mfa_group_norm_descriptor &d, int64_t cluster, int unit, int band = 1) {
  const int64_t units = ceil_div(d.c / d.groups * d.spatial / unit, cluster);
  if (band > 1) return round_up(units, std::max<int64_t>(d.c / d.groups / unit, 1));
  return column_runs(d, unit) ? round_up(units, 32) : units;
}

// mfa_gn_run_sums' float2 slots: one a warp for each channel a slice can touch (0: not column_runs).
int64_t column_slots(const mfa_group_norm_descriptor &d, int64_t cluster, int unit) {
  if (!column_runs(d, unit)) return 0;
  return (ceil_div(onepass_slice_units(d, cluster, unit), d.spatial / unit) + 1) * MFA_GN_WARPS;
}

// A block's dynamic shared memory (group_norm.cuh's mfa_gn_args): its slice of every stream, the group's
// weight and bias as fp32, then, backward, the column slots and a float2 a channel of the group.
int64_t onepass_smem_bytes(const mfa_group_norm_descriptor &d, int64_t cluster, int unit, int band = 1) {
  const int64_t cpg = d.c / d.groups;
  const int64_t float2s = d.pass == MFA_PASS_BACKWARD ? column_slots(d, cluster, unit) + cpg : 0;
  return staged_streams(d) * slice_bytes(d, onepass_slice_units(d, cluster, unit, band), unit) + 2 * 4 * cpg +
         8 * float2s;
}

// The most any unit width can need (narrower units pad less, but the width is chosen at encode).
int64_t onepass_smem_bound(const mfa_group_norm_descriptor &d, int64_t cluster, int band = 1) {
  int64_t most = 0;
  for (int unit = 1; unit <= vector_elements(d.dtype); unit *= 2)
    most = std::max(most, onepass_smem_bytes(d, cluster, unit, band));
  return most;
}

// Elements per unit: the largest power of two up to 16 bytes that keeps a unit inside one channel's run
// (NCHW) or one group's row of channels (NHWC), with every element tensor aligned to it.
int unit_elements(const mfa_group_norm_descriptor &d, int64_t alignment_bytes) {
  const int64_t run = d.layout == MFA_LAYOUT_NCHW ? d.spatial : d.c / d.groups;
  for (int unit = vector_elements(d.dtype); unit > 1; unit /= 2)
    if (run % unit == 0 && alignment_bytes % (unit * element_bytes(d.dtype)) == 0) return unit;
  return 1;
}

// The bytes of one (n, group) the one-pass kernel stages: its slices of every stream together.
int64_t staged_group_bytes(const mfa_group_norm_descriptor &d) {
  return d.c / d.groups * d.spatial * element_bytes(d.dtype) * staged_streams(d);
}

// Slices of about this size keep several blocks on an SM, one copying while others compute or store;
// below kMinSliceBytes a slice's copies no longer pay for the cluster's barriers.
constexpr int64_t kSliceTargetBytes = int64_t{32} << 10;
constexpr int64_t kMinSliceBytes = int64_t{4} << 10;

// NHWC groups copied in units narrower than 8 bytes (rows of 10 fp16 channels: 4-byte copies). Their
// blocks are bound by issuing the copies (an address computation and a partial-sector request each), so
// they take half-size slices, more blocks sharing the work, even at the price of a cluster per sample
// (cluster_samples). Measured (H200, fp16 2x320x64x64 backward): 4 blocks a sample (40 KB slices) 27.2
// us, 8 blocks 21.3; the diffusion shapes with smaller groups ran fastest as chosen before (2x320x32x32
// backward: 4 blocks a sample, both samples in one cluster, 8.4-9.0 us; 5 blocks a sample 9.6-10.0).
bool narrow_nhwc_copies(const mfa_group_norm_descriptor &d) {
  return d.layout == MFA_LAYOUT_NHWC && unit_elements(d, 16) * element_bytes(d.dtype) < 8;
}
int64_t slice_target_bytes(const mfa_group_norm_descriptor &d) {
  return narrow_nhwc_copies(d) ? kSliceTargetBytes / 2 : kSliceTargetBytes;
}

// NHWC groups whose rows are narrower than a 32-byte sector, in a tensor too large to stay in L2. Measured
// (H200, fp16 16x256x128x128, 8 channels a group: 16-byte rows 512 bytes apart): the one-pass kernel's
// copies, one partial sector each, bound it by L2 requests (L2 82% busy, DRAM 11%) at 11% of the copy
// bandwidth; the three launches read whole rows of C channels and reach 23%. Up to 21 MB (the diffusion
// shapes, 20-byte rows) the one pass ran 2-3x faster than the three launches.
constexpr int64_t kL2ResidentBytes = int64_t{32} << 20;
bool beyond_l2(const mfa_group_norm_descriptor &d) {
  return d.n * d.c * d.spatial * element_bytes(d.dtype) > kL2ResidentBytes;
}
bool scattered_rows_beyond_l2(const mfa_group_norm_descriptor &d) {
  return d.layout == MFA_LAYOUT_NHWC && d.c / d.groups * element_bytes(d.dtype) < 32 && beyond_l2(d);
}

// Threads per block: about two units each (a block's copies all in flight), whole warps, 64 to 256, or to 512 for an
// NHWC backward of single groups (band 1: the kernel's band entries are bounded at 256) within L2 whose slices (of a
// cluster of `cluster` blocks) hold at least 8 units of 8 bytes or more a thread at 256. Measured (H200): four units a
// thread made the diffusion shapes' one-pass blocks 64 threads long chains (fp16 2x1280x16x16 NHWC backward 11.8 us,
// two a thread 9.9 us); one a thread was no faster. 512 threads (fp16, same machine, best of two runs): 2x640x64x64
// NHWC backward 33.1 -> 28.0 us, with SiLU 35.5 -> 32.0; 2x1280x64x64 NHWC backward 50.3 -> 46.5, with SiLU 57.5 ->
// 52.9; but slower forward (2x640x64x64 NHWC 20.5 -> 21.8), with 4-byte units (2x320x64x64 NHWC forward 14.6 -> 16.6,
// one run), with 5 units a thread (2x1280x32x32 NHWC backward 14.9 -> 17.7), in NCHW (2x640x64x64 backward 21.2 ->
// 24.6) and beyond L2 (16x256x128x128 NHWC SiLU backward 288 -> 346).
int onepass_threads(const mfa_group_norm_descriptor &d, int64_t cluster, int unit, int band) {
  const int64_t slice_units = onepass_slice_units(d, cluster, unit, band);
  const bool wide = d.layout == MFA_LAYOUT_NHWC && d.pass == MFA_PASS_BACKWARD && band == 1 &&
                    unit * element_bytes(d.dtype) >= 8 && slice_units >= 8 * int64_t{MFA_GN_THREADS} && !beyond_l2(d);
  const int64_t most = wide ? MFA_GN_ONEPASS_THREADS : MFA_GN_THREADS;
  return static_cast<int>(std::clamp<int64_t>(round_up(ceil_div(slice_units, 2), 32), 64, most));
}

// Groups side by side in a one-pass item (args.band). An NHWC pass over a tensor beyond L2 whose groups'
// rows are narrower than 64 bytes takes bands of adjacent groups (a power of two of them, up to
// MFA_GN_MAX_BAND) with rows of 64 bytes, each group's statistics kept apart: the narrower a row, the more
// of its sectors' requests it takes per byte. Measured (H100, fp16 NHWC forward, the groups of the same
// tensor made wider): 32x512x64x64 with rows of 32 bytes 138-140 us, of 64 bytes 116-117; 32x256x64x64 with
// rows of 16 bytes (three launches) 108-116 us, of 32 bytes 72-74, of 64 bytes 62-65. A band's rows hold
// at most 32 elements (32 units of any width: kernel's mfa_gn_band_of), and its groups a power of two of
// channels. Rows of 128 bytes (the rule at 64 elements, fp16, 16-byte units) were no faster: 16x256x128x128
// forward in bands of 8 117.3 and 123.7 us against 107.0 and 122.8 in bands of 4, 8x512x128x128 in bands
// of 4 120.1 and 117.2 against 119.2 and 118.3 (H200, one process, each pair in turn). forced_band (> 0:
// MFA_GN_BAND) asks for that many where those rules allow.
int onepass_band(const mfa_group_norm_descriptor &d, int forced_band) {
  const int64_t cpg = d.c / d.groups, row_bytes = cpg * element_bytes(d.dtype);
  if (d.layout != MFA_LAYOUT_NHWC || (cpg & (cpg - 1)) != 0) return 1;
  int band = 1;
  if (forced_band > 0)
    band = forced_band;
  else if (beyond_l2(d))
    while (band < MFA_GN_MAX_BAND && band * row_bytes < 64) band *= 2;
  while (band > 1 && (d.groups % band != 0 || band * cpg > 32)) band /= 2;
  return band;
}

// The descriptor of a pass's one-pass items: bands of `band` groups as its groups.
mfa_group_norm_descriptor onepass_items(mfa_group_norm_descriptor d, int band) {
  d.groups /= band;
  return d;
}

// Blocks per (n, group) of the one-pass kernel, 0 for the three-launch path (before sm_90 the caller
// never asks, nor for scattered_rows_beyond_l2). The smallest cluster whose shared memory holds the group
// (with any unit's padding), grown to slices of about kSliceTargetBytes, then until the grid has about two
// blocks per SM (the diffusion shapes have only 64 groups) while slices stay above kMinSliceBytes; at most
// the portable 8 blocks, or, for groups that 8 cannot hold, `most` (16: wide clusters, or 8 where the
// device runs none). Measured (H100, fp16 8x512x128x128, 1 MB groups of x and dy): the NCHW backward in
// 16 blocks took 185-193 us against 265 in three launches, the NHWC SiLU backward 278-289 against 411-413;
// groups that 8 blocks hold gained 2-7% in 16 forward but lost 14-16% backward (16x256x128x128), so they
// stay at 8.
// forced_cluster: -1 chooses; 0 asks for the three-launch path; 1..MFA_GN_CLUSTER_WIDE_MAX that size
// (the three-launch path if the group does not fit it).
int onepass_cluster(const mfa_group_norm_descriptor &d, int sm_count, int forced_cluster, int most, int band = 1) {
  if (forced_cluster == 0) return 0;
  int64_t smallest = 1;
  while (smallest <= MFA_GN_CLUSTER_WIDE_MAX && onepass_smem_bound(d, smallest, band) > MFA_GN_SLICE_MAX_BYTES)
    ++smallest;
  if (d.n * d.groups * MFA_GN_CLUSTER_WIDE_MAX > INT_MAX) return 0;
  if (forced_cluster > 0) return forced_cluster >= smallest ? forced_cluster : 0;
  if (smallest > most || scattered_rows_beyond_l2(d)) return 0;
  most = smallest > MFA_GN_CLUSTER_MAX ? most : MFA_GN_CLUSTER_MAX;
  const int64_t group_bytes = staged_group_bytes(d);
  int64_t cluster = std::max(smallest, ceil_div(group_bytes, slice_target_bytes(d)));
  while (cluster < most && d.n * d.groups * cluster < 2 * int64_t{std::max(sm_count, 1)} &&
         group_bytes / (cluster + 1) >= kMinSliceBytes)
    ++cluster;
  return static_cast<int>(std::min<int64_t>(cluster, most));
}

// Samples a backward cluster holds its group in: every sample where n times `cluster` blocks fit one
// cluster, so that dweight and dbias sum within it (mfa_gn_cluster_param_grads) instead of in a second
// launch (measured, H200: 0.7-1.4 us a call on the diffusion shapes), else 1. Choosing (not forced), `cluster`
// shrinks to fit if the grid then still fits the GPU at once (about a quarter of its block slots spare
// for the clusters' placement within GPCs).
int cluster_samples(const mfa_group_norm_descriptor &d, int sm_count, bool forced, int &cluster) {
  if (d.pass != MFA_PASS_BACKWARD || cluster == 0 || d.n > MFA_GN_CLUSTER_MAX) return 1;
  const int samples = static_cast<int>(d.n);
  if (samples * cluster <= MFA_GN_CLUSTER_MAX) return samples;
  const int fewer = MFA_GN_CLUSTER_MAX / samples;
  const int64_t smem = onepass_smem_bound(d, fewer);
  const int64_t group_bytes = staged_group_bytes(d);
  const bool narrow_slices_grow = narrow_nhwc_copies(d) && group_bytes / fewer > slice_target_bytes(d);
  if (forced || smem > MFA_GN_SLICE_MAX_BYTES || narrow_slices_grow) return 1;
  constexpr int64_t kSmemPerSm = 228 << 10, kReservedPerBlock = 1 << 10;  // Hopper
  const int unit = vector_elements(d.dtype);
  const int64_t threads = onepass_threads(d, fewer, unit, 1);
  const int64_t per_sm = std::min(kSmemPerSm / (smem + kReservedPerBlock), 2048 / threads);
  if (4 * d.n * d.groups * fewer > 3 * per_sm * sm_count) return 1;
  cluster = fewer;
  return samples;
}

// The one-pass plan: blocks per item (0: the three-launch path), samples a cluster holds, groups an item
// holds. A band its clusters cannot hold halves (the backward's two streams: 16x256x128x128 takes bands
// of 2 groups, 1 MB of x and dy; measured, H100, fp16: 336 us in three launches, 273 in bands of 2).
// Bands, on tensors beyond L2, keep a cluster per sample (the dweight and dbias of their groups then take
// the second launch).
struct OnePassChoice {
  int cluster = 0, samples = 1, band = 1;
};
OnePassChoice onepass_choice(const mfa_group_norm_descriptor &d, int sm_count, int forced_cluster, int forced_band,
                             int most) {
  OnePassChoice choice;
  for (choice.band = onepass_band(d, forced_band); choice.band > 1; choice.band /= 2) {
    choice.cluster = onepass_cluster(onepass_items(d, choice.band), sm_count, forced_cluster, most, choice.band);
    if (choice.cluster > 0) return choice;
  }
  choice.cluster = onepass_cluster(d, sm_count, forced_cluster, most);
  choice.samples = cluster_samples(d, sm_count, forced_cluster > 0, choice.cluster);
  return choice;
}

// The bands a caller may ask for (onepass_band takes them where its rules allow).
bool is_band_size(int64_t band) { return band == 1 || band == 2 || band == 4 || band == 8; }

// MFA_GN_BAND forces bands of 1, 2, 4 or 8 groups where onepass_band allows them (tests: small tensors); unset
// or "auto" chooses.
int forced_band_from_environment() {
  const char *text = std::getenv("MFA_GN_BAND");
  if (text == nullptr || std::strcmp(text, "auto") == 0 || *text == 0) return -1;
  char *end = nullptr;
  const long value = std::strtol(text, &end, 10);
  require(*end == 0 && is_band_size(value), MFA_STATUS_INVALID_ARGUMENT, "environment variable MFA_GN_BAND is \"",
          text, "\": use auto, 1, 2, 4 or 8");
  return static_cast<int>(value);
}

// The plan queries' device (sm_count SMs) and forced cluster (-1: chosen).
void require_plan_query(int32_t sm_count, int32_t forced_cluster) {
  require(sm_count >= 1, MFA_STATUS_INVALID_ARGUMENT, "sm_count is ", sm_count, " (must be >= 1)");
  require(forced_cluster >= -1 && forced_cluster <= MFA_GN_CLUSTER_WIDE_MAX, MFA_STATUS_INVALID_ARGUMENT,
          "forced_cluster is ", forced_cluster, " (must be in [-1, ", MFA_GN_CLUSTER_WIDE_MAX, "])");
}

// MFA_GN_CLUSTER forces the one-pass plan for tests and measurements: unset or "auto" chooses, "split" (or 0)
// takes the three-launch path, 1..16 a cluster size.
int forced_cluster_from_environment() {
  const char *text = std::getenv("MFA_GN_CLUSTER");
  if (text == nullptr || std::strcmp(text, "auto") == 0 || *text == 0) return -1;
  if (std::strcmp(text, "split") == 0) return 0;
  char *end = nullptr;
  const long value = std::strtol(text, &end, 10);
  require(*end == 0 && value >= 0 && value <= MFA_GN_CLUSTER_WIDE_MAX, MFA_STATUS_INVALID_ARGUMENT,
          "environment variable MFA_GN_CLUSTER is \"", text, "\": use auto, split or 1..", MFA_GN_CLUSTER_WIDE_MAX);
  return static_cast<int>(value);
}

mfa_gn_divisor divisor_of(int64_t value) {
  mfa_gn_divisor divisor{0, 0, static_cast<unsigned>(value), 0, 0};
  if (value <= 1) return divisor;
  unsigned shift = 0;
  while ((uint64_t{1} << shift) < static_cast<uint64_t>(value)) ++shift;
  divisor.shift = shift;
  const unsigned __int128 numerator = (static_cast<unsigned __int128>(1) << 64) *
                                      ((uint64_t{1} << shift) - static_cast<uint64_t>(value));
  divisor.magic = static_cast<unsigned long long>(numerator / static_cast<uint64_t>(value) + 1);
  if (value < (int64_t{1} << 31))
    divisor.magic32 = static_cast<unsigned>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - value)) / value + 1);
  return divisor;
}

// ----- tensors -----

struct Span {
  const char *name;
  const char *data;
  int64_t bytes;
  bool output;
};

struct GroupNormOperands {
  const char *x = nullptr, *residual = nullptr, *dy = nullptr, *weight = nullptr, *bias = nullptr;
  char *y = nullptr, *x_sum = nullptr, *dweight = nullptr, *dbias = nullptr;
  float *mean = nullptr, *rstd = nullptr;
};

// An [N, C, spatial...] tensor laid out as the descriptor says (strides of extent-1 dimensions are free).
char *check_element_tensor(const mfa_tensor *tensor, const char *name, const mfa_group_norm_descriptor &d,
                           int32_t device_id) {
  const DenseTensor t = check_dense(tensor, name, d.dtype, device_id);
  require(t.ndim >= 2, MFA_STATUS_SHAPE_MISMATCH, name, ".ndim is ", t.ndim, ": expected [N, C, spatial...]");
  int64_t spatial = 1;
  for (int i = 2; i < t.ndim; ++i) spatial *= t.shape[i];
  require(t.shape[0] == d.n && t.shape[1] == d.c && spatial == d.spatial, MFA_STATUS_SHAPE_MISMATCH, name,
          ".shape is ", shape_text(*tensor), ", expected [", d.n, ", ", d.c, ", spatial...] with spatial dimensions of product ",
          d.spatial);
  int64_t expected[kMaxRank];
  if (d.layout == MFA_LAYOUT_NCHW) {
    int64_t step = 1;
    for (int i = t.ndim - 1; i >= 0; --i) expected[i] = step, step *= t.shape[i];
  } else {
    int64_t step = d.c;
    for (int i = t.ndim - 1; i >= 2; --i) expected[i] = step, step *= t.shape[i];
    expected[1] = 1;
    expected[0] = d.c * d.spatial;
  }
  for (int i = 0; i < t.ndim; ++i)
    require(t.shape[i] <= 1 || t.strides[i] == expected[i], MFA_STATUS_BAD_STRIDE, name, ".strides[", i, "] is ",
            t.strides[i], ", expected ", expected[i], d.layout == MFA_LAYOUT_NCHW ? " (NCHW: contiguous)" :
            " (NHWC: channels-last, channels contiguous)");
  return t.data;
}

// mean / rstd: [N, groups] f32, compact.
float *check_stats_tensor(const mfa_tensor *tensor, const char *name, const mfa_group_norm_descriptor &d,
                          int32_t device_id) {
  const DenseTensor t = check_dense(tensor, name, MFA_DTYPE_F32, device_id);
  require(t.ndim == 2 && t.shape[0] == d.n && t.shape[1] == d.groups, MFA_STATUS_SHAPE_MISMATCH, name, ".shape is ",
          shape_text(*tensor), ", expected [", d.n, ", ", d.groups, "]");
  require((d.groups <= 1 || t.strides[1] == 1) && (d.n <= 1 || t.strides[0] == d.groups), MFA_STATUS_BAD_STRIDE, name,
          ".strides are [", t.strides[0], ", ", t.strides[1], "], expected [", d.groups, ", 1] (compact)");
  return reinterpret_cast<float *>(t.data);
}

void require_given(const mfa_tensor *tensor, bool wanted, const char *name, const char *why) {
  if (wanted)
    require(tensor != nullptr, MFA_STATUS_INVALID_ARGUMENT, name, " is NULL (", why, ")");
  else
    require(tensor == nullptr, MFA_STATUS_INVALID_ARGUMENT, name, " is given but ", why);
}

mfa_group_norm_tensors read_tensors(const mfa_group_norm_tensors *tensors) {
  require_arg(tensors, "tensors");
  require_header(tensors->header, MFA_STRUCT_GROUP_NORM_TENSORS, sizeof(mfa_group_norm_tensors), "tensors");
  mfa_group_norm_tensors t = MFA_GROUP_NORM_TENSORS_INIT;
  std::memcpy(&t, tensors, std::min<size_t>(tensors->header.size, sizeof t));
  return t;
}

GroupNormOperands check_operands(const mfa_group_norm_descriptor &d, int32_t ordinal,
                                 const mfa_group_norm_tensors *tensors) {
  const mfa_group_norm_tensors t = read_tensors(tensors);
  const bool forward = d.pass == MFA_PASS_FORWARD, affine = d.weight_dtype != MFA_DTYPE_NONE;
  const char *pass_text = forward ? "the descriptor's pass is FORWARD" : "the descriptor's pass is BACKWARD";
  const char *affine_text = affine ? "descriptor->weight_dtype is set" : "descriptor->weight_dtype is NONE";
  require_given(t.x, true, "x", "always needed");
  require_given(t.weight, affine, "weight", affine_text);
  require_given(t.bias, affine, "bias", affine_text);
  require_given(t.residual, forward && d.has_residual, "residual",
                forward ? (d.has_residual ? "descriptor->has_residual is 1" : "descriptor->has_residual is 0")
                        : pass_text);
  require_given(t.y, forward, "y", pass_text);
  if (!forward || !d.has_residual)
    require_given(t.x_sum, false, "x_sum", forward ? "there is no residual" : pass_text);
  require_given(t.dy, !forward, "dy", pass_text);
  require_given(t.dx, !forward, "dx", pass_text);
  if (!forward) {
    require_given(t.mean, true, "mean", "the backward pass reads the forward's statistics");
    require_given(t.rstd, true, "rstd", "the backward pass reads the forward's statistics");
    require((t.dweight == nullptr) == (t.dbias == nullptr), MFA_STATUS_INVALID_ARGUMENT,
            "dweight and dbias must be given together (", t.dweight ? "dbias" : "dweight", " is NULL)");
    if (!affine) require_given(t.dweight, false, "dweight", affine_text);
  } else {
    require_given(t.dweight, false, "dweight", pass_text);
    require_given(t.dbias, false, "dbias", pass_text);
  }

  GroupNormOperands ops;
  std::vector<Span> spans;
  const int64_t element_span = d.n * d.c * d.spatial * element_bytes(d.dtype);
  const int64_t stats_span = d.n * d.groups * 4;
  const int64_t param_span = affine ? d.c * element_bytes(d.weight_dtype) : 0;
  ops.x = check_element_tensor(t.x, "x", d, ordinal);
  spans.push_back({"x", ops.x, element_span, false});
  if (t.residual) spans.push_back({"residual", ops.residual = check_element_tensor(t.residual, "residual", d, ordinal),
                                   element_span, false});
  if (t.dy) spans.push_back({"dy", ops.dy = check_element_tensor(t.dy, "dy", d, ordinal), element_span, false});
  if (affine) {
    spans.push_back({"weight", ops.weight = check_vector(t.weight, "weight", d.weight_dtype, d.c, ordinal), param_span,
                     false});
    spans.push_back({"bias", ops.bias = check_vector(t.bias, "bias", d.weight_dtype, d.c, ordinal), param_span, false});
  }
  if (t.y) spans.push_back({"y", ops.y = check_element_tensor(t.y, "y", d, ordinal), element_span, true});
  if (t.x_sum) spans.push_back({"x_sum", ops.x_sum = check_element_tensor(t.x_sum, "x_sum", d, ordinal), element_span, true});
  if (t.dx) spans.push_back({"dx", ops.y = check_element_tensor(t.dx, "dx", d, ordinal), element_span, true});
  if (t.mean) ops.mean = check_stats_tensor(t.mean, "mean", d, ordinal);
  if (t.rstd) ops.rstd = check_stats_tensor(t.rstd, "rstd", d, ordinal);
  if (t.mean) spans.push_back({"mean", reinterpret_cast<char *>(ops.mean), stats_span, forward});
  if (t.rstd) spans.push_back({"rstd", reinterpret_cast<char *>(ops.rstd), stats_span, forward});
  if (t.dweight) {
    ops.dweight = const_cast<char *>(check_vector(t.dweight, "dweight", d.weight_dtype, d.c, ordinal));
    ops.dbias = const_cast<char *>(check_vector(t.dbias, "dbias", d.weight_dtype, d.c, ordinal));
    spans.push_back({"dweight", ops.dweight, param_span, true});
    spans.push_back({"dbias", ops.dbias, param_span, true});
  }
  for (const Span &out : spans) {
    if (!out.output) continue;
    for (const Span &other : spans)
      require(&out == &other || !ranges_overlap(out.data, out.bytes, other.data, other.bytes),
              MFA_STATUS_INVALID_ARGUMENT, out.name, " overlaps ", other.name,
              ": outputs may not alias inputs or other outputs");
  }
  return ops;
}

}  // namespace
}  // namespace mfa

// ----- the pipeline -----

struct mfa_group_norm_pipeline {
  std::shared_ptr<mfa::Context> context;
  mfa_group_norm_descriptor descriptor;
  mfa_pipeline_info info;
  mfa::Plan plan;
  int onepass_cluster = 0;  // blocks per (n, group) of the one-pass kernel; 0: the three-launch path
  int cluster_samples = 1;  // samples a one-pass cluster holds its group in (cluster_samples)
  int band = 1;             // groups of a one-pass item (onepass_band)
  mfa::CUfunction functions[mfa::kEntryCount] = {};
};

namespace mfa {
namespace {

// The largest power of two up to 16 that divides every element tensor's address.
int64_t element_alignment(const GroupNormOperands &ops) {
  uintptr_t bits = 16;
  for (const void *pointer : {static_cast<const void *>(ops.x), static_cast<const void *>(ops.residual),
                              static_cast<const void *>(ops.dy), static_cast<const void *>(ops.y),
                              static_cast<const void *>(ops.x_sum)})
    bits |= reinterpret_cast<uintptr_t>(pointer);
  return static_cast<int64_t>(bits & (~bits + 1));
}

// 16-byte vectors on the split path: every element tensor on 16 bytes, and no vector straddling what it
// must not (a channel's run in NCHW, a row of C channels in NHWC).
bool vector_path(const mfa_group_norm_descriptor &d, const GroupNormOperands &ops) {
  const int64_t run = d.layout == MFA_LAYOUT_NCHW ? d.spatial : d.c;
  return run % vector_elements(d.dtype) == 0 && element_alignment(ops) == 16;
}

unsigned grid_of(int64_t blocks, int64_t cap) { return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, cap)); }

void launch(CUfunction function, unsigned grid_x, unsigned grid_y, unsigned grid_z, void *stream, mfa_gn_args &args,
            const char *what) {
  void *params[] = {&args};
  check_cuda(driver().cuLaunchKernel(function, grid_x, grid_y, grid_z, MFA_GN_THREADS, 1, 1, 0,
                                     static_cast<CUstream>(stream), params, nullptr),
             what);
}

// Dynamic shared memory beyond the default 48 KB: the most any plan takes, since the functions are shared
// by every pipeline of the variant (a smaller, shape-dependent value would undercut another pipeline's).
void allow_onepass_launches(const mfa_group_norm_pipeline &pipeline) {
  for (int unit : {1, 2, 4, 8}) {
    const CUfunction function = pipeline.functions[onepass_entry(unit, pipeline.band)];
    check_cuda(driver().cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                           MFA_GN_SLICE_MAX_BYTES),
               "cuFuncSetAttribute(mfa_gn_onepass, MAX_DYNAMIC_SHARED_SIZE_BYTES)");
    if (pipeline.onepass_cluster * pipeline.cluster_samples > MFA_GN_CLUSTER_MAX)
      check_cuda(driver().cuFuncSetAttribute(function,
                                             CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
                 "cuFuncSetAttribute(mfa_gn_onepass, NON_PORTABLE_CLUSTER_SIZE_ALLOWED)");
  }
}

// Whether the device holds at least one cluster of the chosen one-pass launch (a wide cluster needs 16
// SMs of one GPC with room for its blocks), for the widest unit's entry at the most shared memory any
// unit needs.
bool onepass_cluster_fits(const mfa_group_norm_pipeline &pipeline) {
  const mfa_group_norm_descriptor items = onepass_items(pipeline.descriptor, pipeline.band);
  const int cluster = pipeline.onepass_cluster * pipeline.cluster_samples;
  const int unit = unit_elements(pipeline.descriptor, 16);
  const int64_t smem = onepass_smem_bound(items, pipeline.onepass_cluster, pipeline.band);
  const unsigned threads = static_cast<unsigned>(onepass_threads(items, pipeline.onepass_cluster, unit, pipeline.band));
  DependentLaunch launch(static_cast<unsigned>(cluster), threads, static_cast<unsigned>(cluster),
                         static_cast<unsigned>(smem), nullptr);
  launch.config.numAttrs = 1;  // the cluster shape alone: the query launches nothing
  int clusters = 0;
  check_cuda(driver().cuOccupancyMaxActiveClusters(&clusters, pipeline.functions[onepass_entry(unit, pipeline.band)],
                                                   &launch.config),
             "cuOccupancyMaxActiveClusters(mfa_gn_onepass)");
  return clusters >= 1;
}

// Clusters of `cluster` blocks per (n, group) and cluster_samples samples, then (backward, with dweight,
// where a cluster does not hold every sample) the per-channel sums.
void launch_onepass(const mfa_group_norm_pipeline &pipeline, const GroupNormOperands &ops, void *stream,
                    mfa_gn_args &args) {
  // the kernel's groups are the items (bands of pipeline.band groups); its unit lies within one group
  const int band = pipeline.band;
  const mfa_group_norm_descriptor d = onepass_items(pipeline.descriptor, band);
  const int cluster = pipeline.onepass_cluster;
  const int unit = unit_elements(pipeline.descriptor, element_alignment(ops));
  args.groups = d.groups;
  args.cpg = d.c / d.groups;
  args.div_groups = divisor_of(d.groups);
  args.band = band;
  args.slice_units = onepass_slice_units(d, cluster, unit, band);
  // summing by channel as it goes costs the backward without dweight (measured, H200: up to 1.3 us)
  args.column_slots = ops.dweight ? static_cast<int>(column_slots(d, cluster, unit)) : 0;
  args.cluster_samples = pipeline.cluster_samples;
  args.row_units = (d.layout == MFA_LAYOUT_NCHW ? d.spatial : args.cpg) / unit;
  args.div_row_units = divisor_of(args.row_units);
  args.slice_bytes = slice_bytes(d, args.slice_units, unit);
  args.streams = static_cast<int>(staged_streams(d));
  args.tiles = cluster;  // the backward's partials: one per (n, channel, block of the cluster)
  // The kernel waits for the previous grid in the stream itself (griddepcontrol), so it may be scheduled
  // before that grid ends: measured (H200) on the smallest diffusion shapes, whose one-pass kernels last a
  // few us, 4.6 -> 4.0 us a call for 2x320x16x16 (graph of 64).
  void *params[] = {&args};
  DependentLaunch(static_cast<unsigned>(d.n * d.groups * cluster),
                  static_cast<unsigned>(onepass_threads(d, cluster, unit, band)),
                  static_cast<unsigned>(cluster * pipeline.cluster_samples),
                  static_cast<unsigned>(onepass_smem_bytes(d, cluster, unit, band)), stream)
      .start(pipeline.functions[onepass_entry(unit, band)], params, "cuLaunchKernelEx(mfa_gn_onepass)");
  if (d.pass != MFA_PASS_BACKWARD || !ops.dweight || pipeline.cluster_samples == d.n) return;
  DependentLaunch(static_cast<unsigned>(ceil_div(d.c, MFA_GN_THREADS)), MFA_GN_THREADS, 1, 0, stream)
      .start(pipeline.functions[kParamGrads], params, "cuLaunchKernelEx(mfa_gn_param_grads)");
}

void encode(const mfa_group_norm_pipeline &pipeline, void *stream, const GroupNormOperands &ops, void *workspace) {
  const mfa_group_norm_descriptor &d = pipeline.descriptor;
  const Plan &plan = pipeline.plan;
  mfa_gn_args args{};
  args.x = ops.x;
  args.residual = ops.residual;
  args.dy = ops.dy;
  args.weight = ops.weight;
  args.bias = ops.bias;
  args.y = ops.y;
  args.x_sum = ops.x_sum;
  args.mean = ops.mean;
  args.rstd = ops.rstd;
  args.dweight = ops.dweight;
  args.dbias = ops.dbias;
  args.partials = static_cast<float *>(workspace);
  args.group_stats = reinterpret_cast<float *>(static_cast<char *>(workspace) + plan.partials_bytes);
  args.coefficients = reinterpret_cast<float *>(static_cast<char *>(workspace) + plan.partials_bytes + plan.stats_bytes);
  args.n = d.n;
  args.c = d.c;
  args.spatial = d.spatial;
  args.groups = d.groups;
  args.cpg = d.c / d.groups;
  args.tile = plan.tile;
  args.tiles = plan.tiles;
  args.div_c = divisor_of(d.c);
  args.div_spatial = divisor_of(d.spatial);
  args.div_groups = divisor_of(d.groups);
  args.div_cpg = divisor_of(args.cpg);
  args.div_tiles = divisor_of(plan.tiles);
  args.weight_dtype = d.weight_dtype;
  args.eps = d.eps;
  args.band = 1;

  if (pipeline.onepass_cluster > 0) return launch_onepass(pipeline, ops, stream, args);
  const bool vec = vector_path(d, ops);
  const int elements = vec ? vector_elements(d.dtype) : 1;
  const int64_t cap = int64_t{std::max(pipeline.context->info().sm_count, 1)} * 16;
  // reduce
  if (d.layout == MFA_LAYOUT_NCHW) {
    launch(pipeline.functions[vec ? kReduceVec : kReduceScalar],
           grid_of(ceil_div(d.n * d.c * plan.tiles, MFA_GN_WARPS), cap * 2), 1, 1, stream, args,
           "cuLaunchKernel(mfa_gn_reduce)");
  } else {
    const NhwcShape shape = nhwc_shape(d.c, elements);
    require(shape.column_blocks <= 65535, MFA_STATUS_UNSUPPORTED, "descriptor->c is ", d.c,
            ": too many channels for one NHWC launch");
    launch(pipeline.functions[vec ? kReduceVec : kReduceScalar], static_cast<unsigned>(plan.tiles),
           static_cast<unsigned>(shape.column_blocks), static_cast<unsigned>(d.n), stream, args,
           "cuLaunchKernel(mfa_gn_reduce)");
  }
  // finalize
  const int64_t group_blocks = ceil_div(d.n * d.groups, MFA_GN_WARPS);
  if (d.pass == MFA_PASS_FORWARD) {
    launch(pipeline.functions[kFinalize], grid_of(group_blocks, cap), 1, 1, stream, args,
           "cuLaunchKernel(mfa_gn_finalize)");
  } else {
    launch(pipeline.functions[kFinalize], grid_of(std::max(group_blocks, ceil_div(d.c, MFA_GN_THREADS)), cap), 2, 1,
           stream, args, "cuLaunchKernel(mfa_gn_finalize)");
  }
  // apply
  launch(pipeline.functions[vec ? kApplyVec : kApplyScalar],
         grid_of(ceil_div(d.n * d.c * d.spatial / elements, MFA_GN_THREADS), cap), 1, 1, stream, args,
         "cuLaunchKernel(mfa_gn_apply)");
}

// ----- every variant, for `check` and the CPU tests -----

std::vector<mfa_group_norm_descriptor> all_variant_descriptors() {
  std::vector<mfa_group_norm_descriptor> all;
  for (int32_t pass : {MFA_PASS_FORWARD, MFA_PASS_BACKWARD})
    for (int32_t layout : {MFA_LAYOUT_NCHW, MFA_LAYOUT_NHWC})
      for (int32_t dtype : {MFA_DTYPE_F16, MFA_DTYPE_BF16, MFA_DTYPE_F32})
        for (int32_t activation :
             {MFA_ACTIVATION_NONE, MFA_ACTIVATION_SILU, MFA_ACTIVATION_GELU_ERF, MFA_ACTIVATION_GELU_TANH}) {
          mfa_group_norm_descriptor d = MFA_GROUP_NORM_DESCRIPTOR_INIT;
          d.n = d.c = d.spatial = d.groups = 1;
          d.pass = pass;
          d.layout = layout;
          d.dtype = d.weight_dtype = dtype;
          d.activation = activation;
          all.push_back(d);
        }
  return all;
}

}  // namespace
}  // namespace mfa

extern "C" {

MFA_API mfa_status mfa_group_norm_pipeline_create(mfa_context *context, const mfa_group_norm_descriptor *descriptor,
                                                  mfa_group_norm_pipeline **out_pipeline) {
  return mfa::abi_call([&] {
    const mfa_group_norm_descriptor checked = mfa::validate_descriptor(descriptor);
    mfa::require_arg(context, "context");
    mfa::require_arg(out_pipeline, "out_pipeline");
    auto pipeline = std::make_unique<mfa_group_norm_pipeline>();
    pipeline->context = context->impl;
    pipeline->descriptor = checked;
    const int sm_count = pipeline->context->info().sm_count;
    const mfa::GroupNormVariant variant = mfa::variant_for(checked);
    const mfa::CacheLookup lookup = mfa::compile_cached(mfa::source_of(variant, pipeline->context->arch()));
    for (int entry = 0; entry < mfa::kEntryCount; ++entry)
      pipeline->functions[entry] = pipeline->context->function(*lookup.kernel, mfa::kEntries[entry]);
    if (pipeline->context->compute_capability() >= 90) {  // thread-block clusters
      const int forced = mfa::forced_cluster_from_environment(), forced_band = mfa::forced_band_from_environment();
      const auto choose = [&](int most) {
        const mfa::OnePassChoice choice = mfa::onepass_choice(checked, sm_count, forced, forced_band, most);
        pipeline->onepass_cluster = choice.cluster;
        pipeline->cluster_samples = choice.samples;
        pipeline->band = choice.band;
        if (pipeline->onepass_cluster > 0) mfa::allow_onepass_launches(*pipeline);
      };
      choose(MFA_GN_CLUSTER_WIDE_MAX);
      if (pipeline->onepass_cluster > MFA_GN_CLUSTER_MAX && !mfa::onepass_cluster_fits(*pipeline)) {
        mfa::require(forced < 0, MFA_STATUS_UNSUPPORTED, "environment variable MFA_GN_CLUSTER is ", forced,
                     ": this device runs no cluster of that many one-pass group-norm blocks");
        choose(MFA_GN_CLUSTER_MAX);
      }
    }
    pipeline->plan = mfa::plan_for(checked, sm_count, pipeline->onepass_cluster);
    pipeline->info = mfa::pipeline_info(variant.key(), lookup, pipeline->plan.workspace_bytes);
    *out_pipeline = pipeline.release();
  });
}

MFA_API mfa_status mfa_group_norm_pipeline_destroy(mfa_group_norm_pipeline *pipeline) {
  return mfa::abi_call([&] { delete pipeline; });
}

MFA_API mfa_status mfa_group_norm_pipeline_get_info(const mfa_group_norm_pipeline *pipeline,
                                                    mfa_pipeline_info *out_info) {
  return mfa::abi_call([&] {
    mfa::require_arg(pipeline, "pipeline");
    mfa::copy_out(out_info, pipeline->info, MFA_STRUCT_PIPELINE_INFO, "out_info");
  });
}

MFA_API mfa_status mfa_group_norm_encode(const mfa_group_norm_pipeline *pipeline, void *stream,
                                         const mfa_group_norm_tensors *tensors, void *workspace,
                                         uint64_t workspace_bytes) {
  return mfa::abi_call([&] {
    mfa::require_arg(pipeline, "pipeline");
    mfa::require_workspace(workspace, workspace_bytes, pipeline->info.workspace_bytes);  // always > 0 here
    const mfa::GroupNormOperands ops =
        mfa::check_operands(pipeline->descriptor, pipeline->context->ordinal(), tensors);
    pipeline->context->make_current();
    mfa::encode(*pipeline, stream, ops, workspace);
  });
}

MFA_API mfa_status mfa_group_norm_validate(const mfa_group_norm_descriptor *descriptor,
                                           const mfa_group_norm_tensors *tensors) {
  return mfa::abi_call([&] {
    mfa::check_operands(mfa::validate_descriptor(descriptor), mfa::kAnyDevice, tensors);
  });
}

MFA_API mfa_status mfa_group_norm_variant_count(int64_t *out_count) {
  return mfa::abi_call([&] {
    mfa::require_arg(out_count, "out_count");
    *out_count = static_cast<int64_t>(mfa::all_variant_descriptors().size());
  });
}

MFA_API mfa_status mfa_group_norm_variant_descriptor(int64_t index, mfa_group_norm_descriptor *out_descriptor) {
  return mfa::abi_call([&] {
    mfa::copy_out_variant(mfa::all_variant_descriptors(), index, out_descriptor, MFA_STRUCT_GROUP_NORM_DESCRIPTOR);
  });
}

MFA_API mfa_status mfa_group_norm_plan_describe(const mfa_group_norm_descriptor *descriptor, int32_t sm_count,
                                                int32_t vectorized, int32_t forced_cluster, int32_t *out_cluster,
                                                int32_t *out_threads, int32_t *out_vector_elements) {
  return mfa::abi_call([&] {
    const mfa_group_norm_descriptor checked = mfa::validate_descriptor(descriptor);
    mfa::require_plan_query(sm_count, forced_cluster);
    mfa::require_arg(out_cluster, "out_cluster");
    mfa::require_arg(out_threads, "out_threads");
    mfa::require_arg(out_vector_elements, "out_vector_elements");
    const mfa::OnePassChoice choice =
        mfa::onepass_choice(checked, sm_count, forced_cluster, -1, MFA_GN_CLUSTER_WIDE_MAX);
    const int unit = mfa::unit_elements(checked, vectorized ? 16 : mfa::element_bytes(checked.dtype));
    const mfa_group_norm_descriptor items = mfa::onepass_items(checked, choice.band);
    *out_cluster = choice.cluster;
    *out_threads = choice.cluster ? mfa::onepass_threads(items, choice.cluster, unit, choice.band) : 0;
    *out_vector_elements = unit;
  });
}

MFA_API mfa_status mfa_group_norm_plan_band(const mfa_group_norm_descriptor *descriptor, int32_t sm_count,
                                            int32_t forced_cluster, int32_t forced_band, int32_t *out_band) {
  return mfa::abi_call([&] {
    const mfa_group_norm_descriptor checked = mfa::validate_descriptor(descriptor);
    mfa::require_plan_query(sm_count, forced_cluster);
    mfa::require(forced_band == -1 || mfa::is_band_size(forced_band), MFA_STATUS_INVALID_ARGUMENT, "forced_band is ", forced_band, " (must be -1, 1, 2, 4 or 8)");
    mfa::require_arg(out_band, "out_band");
    *out_band = mfa::onepass_choice(checked, sm_count, forced_cluster, forced_band, MFA_GN_CLUSTER_WIDE_MAX).band;
  });
}

MFA_API mfa_status mfa_group_norm_compile_report(const mfa_group_norm_descriptor *descriptor, const char *arch,
                                                 mfa_kernel_report *out_reports, int32_t capacity,
                                                 int32_t *out_count) {
  return mfa::abi_call([&] {
    mfa::KernelReports reports(arch, out_reports, capacity, out_count);
    const mfa::GroupNormVariant variant = mfa::variant_for(mfa::validate_descriptor(descriptor));
    const mfa::CacheLookup lookup = mfa::compile_cached(mfa::source_of(variant, reports.arch()));
    for (const char *entry : mfa::kEntries) reports.add(variant.key(), entry, lookup, 0);
    reports.finish();
  });
}

}  // extern "C"
