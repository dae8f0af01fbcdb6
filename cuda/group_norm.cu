// group_norm.cu: group normalization, forward and backward (layout, dtype, activation and pass come
// from the generated source's macros; see group_norm.cuh for the fused forward and the three launches
// of the split path).
//
//   entry point            grid                                 work
//   mfa_gn_fused_vec       a cluster of 1..8 blocks per         forward in one pass: x read once into
//                          (n, group)                           registers, DSMEM statistics, y; 16-byte
//   mfa_gn_fused_scalar    as above                             loads, or one element per load
//   mfa_gn_reduce_vec      NCHW: warps over (n, c, tile)        per-(n, c, tile) partials, 16-byte loads
//                          NHWC: (tile, channel block, n)
//   mfa_gn_reduce_scalar   as above, one element per load       any alignment
//   mfa_gn_finalize        forward: a warp per (n, group)       fixed-order merge of the partials
//                          backward: y = 0 groups, y = 1 channels (dweight, dbias)
//   mfa_gn_apply_vec       grid-stride over 16-byte vectors     y (+ x_sum) or dx
//   mfa_gn_apply_scalar    grid-stride over elements
//
// Statistics: Welford per thread (one element at a time, or a vector's own moments merged at once),
// then Chan's merge across lanes, threads, tiles and channels, always in the same order. No
// E[x^2] - E[x]^2: inputs with a large mean keep their variance.
// Pivot: the statistics are those of x' - p, p the group's first element of x' (an exact value of the
// element type), and y uses ((x' - p) - mean_p) * rstd. For x' near p (the case that matters: a mean
// large against the spread), x' - p is exact (Sterbenz), so the large part cancels exactly and an fp32
// mean of 1e4 costs no 1e-3 rounding in y. The public mean is p + mean_p rounded to fp32.
#include "ptx.cuh"
#include "group_norm.cuh"
#include "activation.cuh"

#if MFA_GN_DTYPE == MFA_GN_F32
#define MFA_GN_VEC 4
#else
#define MFA_GN_VEC 8
#endif

// ----- elements: VEC consecutive elements at base[index] as fp32 -----

__device__ __forceinline__ float mfa_gn_from_bits(unsigned short bits) {
  return MFA_GN_DTYPE == MFA_GN_F16 ? mfa_f16_to_f32(bits) : mfa_bf16_to_f32(bits);
}
__device__ __forceinline__ unsigned short mfa_gn_to_bits(float value) {
  return MFA_GN_DTYPE == MFA_GN_F16 ? mfa_f32_to_f16(value) : mfa_f32_to_bf16(value);
}
// A value as the element type stores it (x + residual is rounded once, as the caller's own sum would be).
__device__ __forceinline__ float mfa_gn_round(float value) {
  if constexpr (MFA_GN_DTYPE == MFA_GN_F32) return value;
  else return mfa_gn_from_bits(mfa_gn_to_bits(value));
}

// A packet: VEC elements as loaded and stored, raw (a 16-byte vector) or, one element, as fp32. The
// fused forward holds the group as packets: 16-bit data stays packed, 8 elements in 4 registers.
template <int VEC>
struct mfa_gn_packet {
  uint4 bits;
};
template <>
struct mfa_gn_packet<1> {
  float value;
};

template <int VEC>
__device__ __forceinline__ mfa_gn_packet<VEC> mfa_gn_load_packet(const void *base, long long index) {
  if constexpr (VEC == 1) {
    if constexpr (MFA_GN_DTYPE == MFA_GN_F32) return {static_cast<const float *>(base)[index]};
    else return {mfa_gn_from_bits(static_cast<const unsigned short *>(base)[index])};
  } else {
    static_assert(VEC == MFA_GN_VEC, "a packet is one element or one 16-byte vector");
    return {*reinterpret_cast<const uint4 *>(static_cast<const char *>(base) + index * (16 / VEC))};
  }
}

template <int VEC>
__device__ __forceinline__ void mfa_gn_store_packet(void *base, long long index, const mfa_gn_packet<VEC> &packet) {
  if constexpr (VEC == 1) {
    if constexpr (MFA_GN_DTYPE == MFA_GN_F32) static_cast<float *>(base)[index] = packet.value;
    else static_cast<unsigned short *>(base)[index] = mfa_gn_to_bits(packet.value);
  } else {
    *reinterpret_cast<uint4 *>(static_cast<char *>(base) + index * (16 / VEC)) = packet.bits;
  }
}

template <int VEC>
__device__ __forceinline__ void mfa_gn_unpack(const mfa_gn_packet<VEC> &packet, float (&v)[VEC]) {
  if constexpr (VEC == 1) {
    v[0] = packet.value;
  } else if constexpr (MFA_GN_DTYPE == MFA_GN_F32) {
    v[0] = __uint_as_float(packet.bits.x), v[1] = __uint_as_float(packet.bits.y);
    v[2] = __uint_as_float(packet.bits.z), v[3] = __uint_as_float(packet.bits.w);
  } else {
    const unsigned words[4] = {packet.bits.x, packet.bits.y, packet.bits.z, packet.bits.w};
    for (int j = 0; j < 4; ++j) {
      v[2 * j] = mfa_gn_from_bits(static_cast<unsigned short>(words[j] & 0xffffu));
      v[2 * j + 1] = mfa_gn_from_bits(static_cast<unsigned short>(words[j] >> 16));
    }
  }
}

template <int VEC>
__device__ __forceinline__ mfa_gn_packet<VEC> mfa_gn_pack(const float (&v)[VEC]) {
  if constexpr (VEC == 1) {
    return {v[0]};
  } else if constexpr (MFA_GN_DTYPE == MFA_GN_F32) {
    return {make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]))};
  } else {
    unsigned words[4];
    for (int j = 0; j < 4; ++j)
      words[j] = static_cast<unsigned>(mfa_gn_to_bits(v[2 * j])) |
                 static_cast<unsigned>(mfa_gn_to_bits(v[2 * j + 1])) << 16;
    return {make_uint4(words[0], words[1], words[2], words[3])};
  }
}

// VEC consecutive elements at base[index] as fp32, and back.
template <int VEC>
__device__ __forceinline__ void mfa_gn_load(const void *base, long long index, float (&v)[VEC]) {
  mfa_gn_unpack<VEC>(mfa_gn_load_packet<VEC>(base, index), v);
}
template <int VEC>
__device__ __forceinline__ void mfa_gn_store(void *base, long long index, const float (&v)[VEC]) {
  mfa_gn_store_packet<VEC>(base, index, mfa_gn_pack<VEC>(v));
}

// weight / bias / dweight / dbias: [c] of a run-time dtype (0: absent, read as `absent`).
__device__ __forceinline__ float mfa_gn_param(const void *p, int dtype, long long c, float absent) {
  if (p == nullptr) return absent;
  if (dtype == MFA_GN_F32) return static_cast<const float *>(p)[c];
  const unsigned short bits = static_cast<const unsigned short *>(p)[c];
  return dtype == MFA_GN_F16 ? mfa_f16_to_f32(bits) : mfa_bf16_to_f32(bits);
}
__device__ __forceinline__ void mfa_gn_param_store(void *p, int dtype, long long c, float value) {
  if (dtype == MFA_GN_F32) static_cast<float *>(p)[c] = value;
  else static_cast<unsigned short *>(p)[c] = dtype == MFA_GN_F16 ? mfa_f32_to_f16(value) : mfa_f32_to_bf16(value);
}

// ----- the fused activation and its derivative: activation.cuh's, at the variant's constant -----

__device__ __forceinline__ float mfa_gn_activate(float x) { return mfa_activate(x, MFA_GN_ACTIVATION); }
__device__ __forceinline__ float mfa_gn_activate_grad(float x) { return mfa_activate_grad(x, MFA_GN_ACTIVATION); }

// ----- what a pass accumulates -----

#if MFA_GN_PASS == MFA_GN_FORWARD
// Moments of x' = x (+ residual): count, mean, and M2 = sum (x' - mean)^2.
struct mfa_gn_acc {
  float count, mean, m2;
};
struct mfa_gn_channel {
  float pivot;  // the group's pivot p: statistics are of x' - p
};

__device__ __forceinline__ mfa_gn_acc mfa_gn_zero() { return {0.0f, 0.0f, 0.0f}; }

// Chan et al.'s merge of two sets of moments (a first: the order is fixed by every caller).
__device__ __forceinline__ mfa_gn_acc mfa_gn_merge(mfa_gn_acc a, mfa_gn_acc b) {
  if (b.count == 0.0f) return a;
  if (a.count == 0.0f) return b;
  const float count = a.count + b.count;
  const float delta = b.mean - a.mean;
  const float weight_b = __fdividef(b.count, count);  // no IEEE-division slow path (a call, with stack)
  return {count, a.mean + delta * weight_b, a.m2 + b.m2 + delta * delta * a.count * weight_b};
}

__device__ __forceinline__ mfa_gn_acc mfa_gn_shfl_down(mfa_gn_acc a, int offset) {
  return {__shfl_down_sync(0xffffffffu, a.count, offset), __shfl_down_sync(0xffffffffu, a.mean, offset),
          __shfl_down_sync(0xffffffffu, a.m2, offset)};
}

__device__ __forceinline__ float mfa_gn_input(float x, float residual, bool has_residual) {
  return has_residual ? mfa_gn_round(x + residual) : x;
}

// The pivot of (n, group): x' at the group's first element (its first channel, position 0).
__device__ __forceinline__ float mfa_gn_pivot(const mfa_gn_args &args, long long n, long long group) {
  const long long c = group * args.cpg;
#if MFA_GN_LAYOUT == MFA_GN_NCHW
  const long long index = (n * args.c + c) * args.spatial;
#else
  const long long index = n * args.spatial * args.c + c;
#endif
  float x[1], residual[1] = {0.0f};
  mfa_gn_load<1>(args.x, index, x);
  if (args.residual) mfa_gn_load<1>(args.residual, index, residual);
  return mfa_gn_input(x[0], residual[0], args.residual != nullptr);
}

__device__ __forceinline__ mfa_gn_channel mfa_gn_channel_of(const mfa_gn_args &args, long long n, long long c) {
  return {mfa_gn_pivot(args, n, mfa_gn_div(c, args.div_cpg))};
}

// One element (Welford's update).
__device__ __forceinline__ void mfa_gn_add(mfa_gn_acc &acc, const mfa_gn_channel &ch, float v0, float v1,
                                           bool has_second) {
  const float v = mfa_gn_input(v0, v1, has_second) - ch.pivot;
  acc.count += 1.0f;
  const float delta = v - acc.mean;
  acc.mean += __fdividef(delta, acc.count);
  acc.m2 += delta * (v - acc.mean);
}

// VEC consecutive elements of one channel: their own moments (two passes over registers), merged once.
template <int VEC>
__device__ __forceinline__ void mfa_gn_add_vec(mfa_gn_acc &acc, const mfa_gn_channel &ch, const float (&v0)[VEC],
                                               const float (&v1)[VEC], bool has_second) {
  float v[VEC], sum = 0.0f;
  for (int j = 0; j < VEC; ++j) {
    v[j] = mfa_gn_input(v0[j], v1[j], has_second) - ch.pivot;
    sum += v[j];
  }
  const float mean = sum * (1.0f / VEC);
  float m2 = 0.0f;
  for (int j = 0; j < VEC; ++j) m2 += (v[j] - mean) * (v[j] - mean);
  acc = mfa_gn_merge(acc, {static_cast<float>(VEC), mean, m2});
}

__device__ __forceinline__ void mfa_gn_store_partial(float *partial, const mfa_gn_acc &acc) {
  partial[0] = acc.mean;
  partial[1] = acc.m2;
}

#else  // backward
// Sums over a channel's elements: a = dy^ * xhat, b = dy^ (dy^: dy through the activation's derivative).
struct mfa_gn_acc {
  float a, b;
};
struct mfa_gn_channel {
  float mean, rstd, weight, bias;
};

__device__ __forceinline__ mfa_gn_acc mfa_gn_zero() { return {0.0f, 0.0f}; }
__device__ __forceinline__ mfa_gn_acc mfa_gn_merge(mfa_gn_acc x, mfa_gn_acc y) { return {x.a + y.a, x.b + y.b}; }
__device__ __forceinline__ mfa_gn_acc mfa_gn_shfl_down(mfa_gn_acc x, int offset) {
  return {__shfl_down_sync(0xffffffffu, x.a, offset), __shfl_down_sync(0xffffffffu, x.b, offset)};
}

__device__ __forceinline__ mfa_gn_channel mfa_gn_channel_of(const mfa_gn_args &args, long long n, long long c) {
  const long long group = n * args.groups + mfa_gn_div(c, args.div_cpg);
  return {args.mean[group], args.rstd[group], mfa_gn_param(args.weight, args.weight_dtype, c, 1.0f),
          mfa_gn_param(args.bias, args.weight_dtype, c, 0.0f)};
}

// dy^ of one element from dy and x'.
__device__ __forceinline__ float mfa_gn_dy_hat(const mfa_gn_channel &ch, float dy, float xhat) {
#if MFA_GN_ACTIVATION == MFA_ACT_NONE
  return dy;
#else
  return dy * mfa_gn_activate_grad(xhat * ch.weight + ch.bias);
#endif
}

// v0 = dy, v1 = x'.
__device__ __forceinline__ void mfa_gn_add(mfa_gn_acc &acc, const mfa_gn_channel &ch, float v0, float v1, bool) {
  const float xhat = (v1 - ch.mean) * ch.rstd;
  const float dy_hat = mfa_gn_dy_hat(ch, v0, xhat);
  acc.a += dy_hat * xhat;
  acc.b += dy_hat;
}

template <int VEC>
__device__ __forceinline__ void mfa_gn_add_vec(mfa_gn_acc &acc, const mfa_gn_channel &ch, const float (&v0)[VEC],
                                               const float (&v1)[VEC], bool) {
  for (int j = 0; j < VEC; ++j) mfa_gn_add(acc, ch, v0[j], v1[j], true);
}

__device__ __forceinline__ void mfa_gn_store_partial(float *partial, const mfa_gn_acc &acc) {
  partial[0] = acc.a;
  partial[1] = acc.b;
}
#endif

// Lane 0 receives the merge of the warp's 32 accumulators (a fixed tree: deterministic).
__device__ __forceinline__ mfa_gn_acc mfa_gn_warp_merge(mfa_gn_acc acc) {
  for (int offset = 16; offset > 0; offset >>= 1) acc = mfa_gn_merge(acc, mfa_gn_shfl_down(acc, offset));
  return acc;
}

// The two element streams a pass reads: forward x and residual (maybe null), backward dy and x'.
__device__ __forceinline__ const void *mfa_gn_first(const mfa_gn_args &args) {
  return MFA_GN_PASS == MFA_GN_FORWARD ? args.x : args.dy;
}
__device__ __forceinline__ const void *mfa_gn_second(const mfa_gn_args &args) {
  return MFA_GN_PASS == MFA_GN_FORWARD ? args.residual : args.x;
}

// ----- reduce: partials[n][c][tile] -----

#if MFA_GN_LAYOUT == MFA_GN_NCHW
// A warp per (n, c, tile): a contiguous run of at most `tile` positions of one channel.
template <int VEC>
__device__ __forceinline__ void mfa_gn_reduce_pass(const mfa_gn_args &args) {
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(gridDim.x) * MFA_GN_WARPS;
  const long long items = args.n * args.c * args.tiles;
  const void *first = mfa_gn_first(args);
  const void *second = mfa_gn_second(args);
  const bool has_second = second != nullptr;
  for (long long item = static_cast<long long>(blockIdx.x) * MFA_GN_WARPS + (threadIdx.x >> 5); item < items;
       item += warps) {
    const long long row = mfa_gn_div(item, args.div_tiles);  // n * c + channel
    const long long tile = item - row * args.tiles;
    const long long n = mfa_gn_div(row, args.div_c);
    const mfa_gn_channel channel = mfa_gn_channel_of(args, n, row - n * args.c);
    const long long begin = tile * args.tile;
    const long long end = min(args.spatial, begin + args.tile);
    mfa_gn_acc acc = mfa_gn_zero();
    for (long long s = begin + lane * VEC; s < end; s += 32 * VEC) {
      float v0[VEC], v1[VEC] = {};
      mfa_gn_load<VEC>(first, row * args.spatial + s, v0);
      if (has_second) mfa_gn_load<VEC>(second, row * args.spatial + s, v1);
      mfa_gn_add_vec<VEC>(acc, channel, v0, v1, has_second);
    }
    acc = mfa_gn_warp_merge(acc);
    if (lane == 0) mfa_gn_store_partial(args.partials + item * 2, acc);
  }
}
#else
// A block per (tile, block of channel vectors, n): each thread owns one column of VEC channels and
// walks rows (spatial positions) of the tile, `lanes` threads per column; then the block merges the
// lanes of each channel in order. Rows are contiguous: loads stay coalesced.
template <int VEC>
__device__ __forceinline__ void mfa_gn_reduce_pass(const mfa_gn_args &args) {
  __shared__ mfa_gn_acc lane_acc[MFA_GN_THREADS * VEC];
  const long long columns = args.c / VEC;
  const int width = static_cast<int>(min(columns, static_cast<long long>(MFA_GN_THREADS)));
  const int lanes = MFA_GN_THREADS / width;
  const int lane = threadIdx.x / width;
  const long long column = static_cast<long long>(blockIdx.y) * width + threadIdx.x % width;
  const long long n = blockIdx.z, tile = blockIdx.x;
  const void *first = mfa_gn_first(args);
  const void *second = mfa_gn_second(args);
  const bool has_second = second != nullptr;
  mfa_gn_acc acc[VEC];
  for (int j = 0; j < VEC; ++j) acc[j] = mfa_gn_zero();
  if (lane < lanes && column < columns) {
    mfa_gn_channel channel[VEC];
    for (int j = 0; j < VEC; ++j) channel[j] = mfa_gn_channel_of(args, n, column * VEC + j);
    const long long end = min(args.spatial, (tile + 1) * args.tile);
    for (long long s = tile * args.tile + lane; s < end; s += lanes) {
      const long long index = (n * args.spatial + s) * args.c + column * VEC;
      float v0[VEC], v1[VEC] = {};
      mfa_gn_load<VEC>(first, index, v0);
      if (has_second) mfa_gn_load<VEC>(second, index, v1);
      for (int j = 0; j < VEC; ++j) mfa_gn_add(acc[j], channel[j], v0[j], v1[j], has_second);
    }
  }
  for (int j = 0; j < VEC; ++j) lane_acc[threadIdx.x * VEC + j] = acc[j];
  __syncthreads();
  for (int k = threadIdx.x; k < width * VEC; k += MFA_GN_THREADS) {
    const long long c = static_cast<long long>(blockIdx.y) * width * VEC + k;
    if (c >= args.c) break;
    mfa_gn_acc total = lane_acc[k];
    for (int l = 1; l < lanes; ++l) total = mfa_gn_merge(total, lane_acc[l * width * VEC + k]);
    mfa_gn_store_partial(args.partials + ((n * args.c + c) * args.tiles + tile) * 2, total);
  }
}
#endif

// ----- finalize -----

// The partial of (n, c, tile) as moments, or as sums.
__device__ __forceinline__ const float *mfa_gn_partial(const mfa_gn_args &args, long long n, long long c,
                                                       long long tile) {
  return args.partials + ((n * args.c + c) * args.tiles + tile) * 2;
}

// A warp per (n, group): merges the group's cpg * tiles partials in a fixed order (channel-major,
// tile-minor per lane, then the warp's tree), `part_of(c, tile, partial)` making each an accumulator, and
// hands the group's total to `finish(item, n, group, total)` on lane 0.
template <class PartOf, class Finish>
__device__ __forceinline__ void mfa_gn_merge_group_partials(const mfa_gn_args &args, PartOf part_of, Finish finish) {
  const int lane = threadIdx.x & 31;
  const long long items = args.n * args.groups;
  const long long parts = args.cpg * args.tiles;
  for (long long item = static_cast<long long>(blockIdx.x) * MFA_GN_WARPS + (threadIdx.x >> 5); item < items;
       item += static_cast<long long>(gridDim.x) * MFA_GN_WARPS) {
    const long long n = mfa_gn_div(item, args.div_groups), group = item - n * args.groups;
    mfa_gn_acc acc = mfa_gn_zero();
    for (long long k = lane; k < parts; k += 32) {
      const long long q = mfa_gn_div(k, args.div_tiles), c = group * args.cpg + q, tile = k - q * args.tiles;
      acc = mfa_gn_merge(acc, part_of(c, tile, mfa_gn_partial(args, n, c, tile)));
    }
    acc = mfa_gn_warp_merge(acc);
    if (lane == 0) finish(item, n, group, acc);
  }
}

#if MFA_GN_PASS == MFA_GN_FORWARD
// A warp per (n, group) merges the moments of x' - p, writes (p, mean_p, rstd) for apply and
// mean = p + mean_p, rstd.
__device__ __forceinline__ void mfa_gn_finalize_pass(const mfa_gn_args &args) {
  const auto moments = [&](long long, long long tile, const float *partial) -> mfa_gn_acc {
    return {static_cast<float>(min(args.tile, args.spatial - tile * args.tile)), partial[0], partial[1]};
  };
  const auto write_stats = [&](long long item, long long n, long long group, const mfa_gn_acc &acc) {
    const float variance = fmaxf(acc.m2 / acc.count, 0.0f);
    const float rstd = 1.0f / sqrtf(variance + args.eps);
    const float pivot = mfa_gn_pivot(args, n, group);
    args.group_stats[item * MFA_GN_STATS] = pivot;
    args.group_stats[item * MFA_GN_STATS + 1] = acc.mean;
    args.group_stats[item * MFA_GN_STATS + 2] = rstd;
    if (args.mean) args.mean[item] = pivot + acc.mean;
    if (args.rstd) args.rstd[item] = rstd;
  };
  mfa_gn_merge_group_partials(args, moments, write_stats);
}
#else
// blockIdx.y == 0: a warp per (n, group): s1 = sum weight * dy^, s2 = sum weight * dy^ * xhat, stored as
// rstd * s1 / M and rstd * s2 / M (M = cpg * spatial), so that dx = rstd * weight * dy^ - k1 - xhat * k2.
// blockIdx.y == 1: a thread per channel: dweight = sum over n and tiles of a, dbias of b.
__device__ __forceinline__ void mfa_gn_finalize_pass(const mfa_gn_args &args) {
  if (blockIdx.y == 0) {
    const float inverse_count = 1.0f / static_cast<float>(args.cpg * args.spatial);
    const auto weighted_sums = [&](long long c, long long, const float *partial) -> mfa_gn_acc {
      const float weight = mfa_gn_param(args.weight, args.weight_dtype, c, 1.0f);
      return {weight * partial[0], weight * partial[1]};
    };
    const auto write_coefficients = [&](long long item, long long, long long, const mfa_gn_acc &acc) {
      const float rstd = args.rstd[item];
      args.group_stats[item * MFA_GN_STATS] = rstd * acc.b * inverse_count;
      args.group_stats[item * MFA_GN_STATS + 1] = rstd * acc.a * inverse_count;
    };
    mfa_gn_merge_group_partials(args, weighted_sums, write_coefficients);
    return;
  }
  if (args.dweight == nullptr) return;
  for (long long c = static_cast<long long>(blockIdx.x) * MFA_GN_THREADS + threadIdx.x; c < args.c;
       c += static_cast<long long>(gridDim.x) * MFA_GN_THREADS) {
    mfa_gn_acc acc = mfa_gn_zero();
    for (long long n = 0; n < args.n; ++n)
      for (long long tile = 0; tile < args.tiles; ++tile) {
        const float *partial = mfa_gn_partial(args, n, c, tile);
        acc = mfa_gn_merge(acc, {partial[0], partial[1]});
      }
    mfa_gn_param_store(args.dweight, args.weight_dtype, c, acc.a);
    mfa_gn_param_store(args.dbias, args.weight_dtype, c, acc.b);
  }
}
#endif

// ----- apply: elementwise over VEC-element vectors -----

template <int VEC>
__device__ __forceinline__ void mfa_gn_apply_pass(const mfa_gn_args &args) {
  const long long vectors = args.n * args.c * args.spatial / VEC;
  for (long long i = static_cast<long long>(blockIdx.x) * MFA_GN_THREADS + threadIdx.x; i < vectors;
       i += static_cast<long long>(gridDim.x) * MFA_GN_THREADS) {
    const long long e = i * VEC;
#if MFA_GN_LAYOUT == MFA_GN_NCHW
    const long long row = mfa_gn_div(e, args.div_spatial);  // a vector never straddles two channels
    const long long n = mfa_gn_div(row, args.div_c), c0 = row - n * args.c;
    constexpr int channel_step = 0;
#else
    const long long position = mfa_gn_div(e, args.div_c);  // n * spatial + s
    const long long n = mfa_gn_div(position, args.div_spatial), c0 = e - position * args.c;
    constexpr int channel_step = 1;
#endif
    long long group = mfa_gn_div(c0, args.div_cpg);
    long long next_group_start = (group + 1) * args.cpg;
    float out[VEC];
#if MFA_GN_PASS == MFA_GN_FORWARD
    float x[VEC], residual[VEC] = {};
    mfa_gn_load<VEC>(args.x, e, x);
    const bool has_residual = args.residual != nullptr;
    if (has_residual) mfa_gn_load<VEC>(args.residual, e, residual);
    for (int j = 0; j < VEC; ++j) {
      const long long c = c0 + j * channel_step;
      if (c == next_group_start) ++group, next_group_start += args.cpg;
      const float *stats = args.group_stats + (n * args.groups + group) * MFA_GN_STATS;  // p, mean_p, rstd
      x[j] = mfa_gn_input(x[j], residual[j], has_residual);
      const float normalized = ((x[j] - stats[0]) - stats[1]) * stats[2];
      out[j] = mfa_gn_activate(normalized * mfa_gn_param(args.weight, args.weight_dtype, c, 1.0f) +
                               mfa_gn_param(args.bias, args.weight_dtype, c, 0.0f));
    }
    if (args.x_sum) mfa_gn_store<VEC>(args.x_sum, e, x);
#else
    float dy[VEC], x[VEC];
    mfa_gn_load<VEC>(args.dy, e, dy);
    mfa_gn_load<VEC>(args.x, e, x);
    for (int j = 0; j < VEC; ++j) {
      const long long c = c0 + j * channel_step;
      if (c == next_group_start) ++group, next_group_start += args.cpg;
      const long long g = n * args.groups + group;
      const mfa_gn_channel channel = {args.mean[g], args.rstd[g], mfa_gn_param(args.weight, args.weight_dtype, c, 1.0f),
                                      mfa_gn_param(args.bias, args.weight_dtype, c, 0.0f)};
      const float *k = args.group_stats + g * MFA_GN_STATS;
      const float xhat = (x[j] - channel.mean) * channel.rstd;
      const float dy_hat = mfa_gn_dy_hat(channel, dy[j], xhat);
      out[j] = channel.rstd * channel.weight * dy_hat - k[0] - xhat * k[1];
    }
#endif
    mfa_gn_store<VEC>(args.y, e, out);
  }
}

// ----- fused forward: a cluster per (n, group), the group held in registers -----
//
// Block `rank` of the cluster of (n, group) owns the group's vectors i = r * K * T + rank * T + thread
// (K blocks of T threads, r < SLOTS): for each r the cluster reads K * T consecutive vectors, coalesced.
//   1. load x (+ residual) into registers, write x_sum; Welford moments of x' - p per thread
//   2. merge: warps (shuffle tree), the block's warps in order, then the cluster's blocks in rank order
//      through distributed shared memory: every block merges the same values in the same order, so all
//      hold the same bits and the result is deterministic
//   3. normalize the registers, activate, write y
// x is read from HBM once and there is one launch; groups larger than the cluster's registers take the
// three-launch path.
#if MFA_GN_PASS == MFA_GN_FORWARD && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include "ptx_cluster.cuh"
#define MFA_GN_HAS_FUSED 1

// Where vector i of (n, group) lives: its element index and its first channel (NHWC: the VEC elements
// are VEC consecutive channels; NCHW: one channel, as the spatial size is a multiple of VEC).
struct mfa_gn_place {
  long long index, channel;
};

template <int VEC>
__device__ __forceinline__ mfa_gn_place mfa_gn_place_of(const mfa_gn_args &args, long long n, long long group,
                                                        long long i) {
  const long long first_channel = group * args.cpg;
#if MFA_GN_LAYOUT == MFA_GN_NCHW
  const long long element = i * VEC;  // within the group's contiguous cpg * spatial elements
  return {(n * args.c + first_channel) * args.spatial + element, first_channel + mfa_gn_div(element, args.div_spatial)};
#else
  const long long position = mfa_gn_div(i, args.div_row), column = i - position * args.row_vectors;
  return {(n * args.spatial + position) * args.c + first_channel + column * VEC, first_channel + column * VEC};
#endif
}

// The cluster's merge of its blocks' moments (each block's at `published` in its own shared memory),
// called by a whole warp: lane k reads block k's (the distributed-shared-memory latencies overlap instead
// of adding up), then the lanes' values merge in rank order, the same order in every block.
__device__ __forceinline__ mfa_gn_acc mfa_gn_cluster_merge(const mfa_gn_acc *published, unsigned blocks) {
  const unsigned lane = threadIdx.x & 31;
  mfa_gn_acc mine = mfa_gn_zero();
  if (lane < blocks) {
    const unsigned remote = mfa_cluster_map(mfa_smem_addr(published), lane);
    mine = {mfa_cluster_load_f32(remote), mfa_cluster_load_f32(remote + 4), mfa_cluster_load_f32(remote + 8)};
  }
  mfa_gn_acc total = mfa_gn_zero();
  for (unsigned rank = 0; rank < blocks; ++rank)
    total = mfa_gn_merge(total, {__shfl_sync(0xffffffffu, mine.count, rank), __shfl_sync(0xffffffffu, mine.mean, rank),
                                 __shfl_sync(0xffffffffu, mine.m2, rank)});
  return total;
}

// Moments of the whole group; every thread of every block of the cluster returns the same bits.
__device__ __forceinline__ mfa_gn_acc mfa_gn_group_moments(mfa_gn_acc acc) {
  __shared__ mfa_gn_acc warp_acc[MFA_GN_FUSED_THREADS / 32];
  __shared__ mfa_gn_acc block_acc, group_acc;
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  acc = mfa_gn_warp_merge(acc);
  if ((threadIdx.x & 31) == 0) warp_acc[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    mfa_gn_acc total = warp_acc[0];
    for (int w = 1; w < warps; ++w) total = mfa_gn_merge(total, warp_acc[w]);
    block_acc = total;
  }
  mfa_cluster_arrive();  // releases block_acc to the cluster
  mfa_cluster_wait();
  if (threadIdx.x < 32) {
    const mfa_gn_acc total = mfa_gn_cluster_merge(&block_acc, mfa_cluster_blocks());
    if (threadIdx.x == 0) group_acc = total;
  }
  // Second phase: no block leaves (its shared memory) while another may still read its block_acc; the
  // wait is at the kernel's end, so the writes of y overlap it.
  mfa_cluster_arrive();
  __syncthreads();
  return group_acc;
}

// The element index of this thread's slot r (vector first + r * stride of the group), -1 past the group's
// end. Recomputed where used rather than kept in registers across the cluster barrier (16 64-bit
// indices would spill on the element-wise path).
template <int VEC>
__device__ __forceinline__ long long mfa_gn_slot_index(const mfa_gn_args &args, long long n, long long group,
                                                       long long i, long long vectors) {
  return i < vectors ? mfa_gn_place_of<VEC>(args, n, group, i).index : -1;
}

// x' = x + residual (rounded to the element type) in the held packets, and x_sum; residual loads first.
template <int VEC, int SLOTS>
__device__ __forceinline__ void mfa_gn_add_residual(const mfa_gn_args &args, const long long (&index)[SLOTS],
                                                    mfa_gn_packet<VEC> (&held)[SLOTS]) {
  mfa_gn_packet<VEC> residual[SLOTS];
#pragma unroll
  for (int r = 0; r < SLOTS; ++r)
    if (index[r] >= 0) residual[r] = mfa_gn_load_packet<VEC>(args.residual, index[r]);
#pragma unroll
  for (int r = 0; r < SLOTS; ++r) {
    if (index[r] < 0) continue;
    float x[VEC], add[VEC];
    mfa_gn_unpack<VEC>(held[r], x);
    mfa_gn_unpack<VEC>(residual[r], add);
    for (int j = 0; j < VEC; ++j) x[j] = mfa_gn_input(x[j], add[j], true);
    held[r] = mfa_gn_pack<VEC>(x);
  }
  if (args.x_sum == nullptr) return;
#pragma unroll
  for (int r = 0; r < SLOTS; ++r)
    if (index[r] >= 0) mfa_gn_store_packet<VEC>(args.x_sum, index[r], held[r]);
}

template <int VEC>
__device__ __forceinline__ void mfa_gn_fused_forward(const mfa_gn_args &args) {
  constexpr int SLOTS = mfa_gn_fused_slots(VEC);
  const long long blocks = mfa_cluster_blocks();
  const long long item = blockIdx.x / blocks;  // n * groups + group
  const long long n = mfa_gn_div(item, args.div_groups), group = item - n * args.groups;
  const long long vectors = args.cpg * args.spatial / VEC;
  const long long first = static_cast<long long>(mfa_cluster_rank()) * blockDim.x + threadIdx.x;
  const long long stride = blocks * blockDim.x;
  const bool has_residual = args.residual != nullptr;
  const mfa_gn_channel pivot = {mfa_gn_pivot(args, n, group)};

  // 1. load and accumulate. Each loop holds loads only, or stores last: a store between two loads (x_sum
  // may alias x, as far as the compiler knows) would keep it from issuing the later load before the
  // arithmetic on the earlier one, serializing the slots' memory latencies (measured: 4x slower).
  mfa_gn_packet<VEC> held[SLOTS];
  long long index[SLOTS];
#pragma unroll
  for (int r = 0; r < SLOTS; ++r) {
    const long long i = first + r * stride;
    index[r] = mfa_gn_slot_index<VEC>(args, n, group, i, vectors);
    if (index[r] >= 0) held[r] = mfa_gn_load_packet<VEC>(args.x, index[r]);
  }
  if (has_residual) mfa_gn_add_residual<VEC, SLOTS>(args, index, held);
  mfa_gn_acc acc = mfa_gn_zero();
#pragma unroll
  for (int r = 0; r < SLOTS; ++r) {
    if (first + r * stride >= vectors) continue;
    float v[VEC], none[VEC] = {};
    mfa_gn_unpack<VEC>(held[r], v);
    mfa_gn_add_vec<VEC>(acc, pivot, v, none, false);
  }

  // 2. the group's statistics
  const mfa_gn_acc moments = mfa_gn_group_moments(acc);
  const float rstd = 1.0f / sqrtf(fmaxf(moments.m2 / moments.count, 0.0f) + args.eps);

  // 3. normalize the registers in place (weight and bias loads free to overlap), then store
#pragma unroll
  for (int r = 0; r < SLOTS; ++r) {
    if (first + r * stride >= vectors) continue;
    const long long channel = mfa_gn_place_of<VEC>(args, n, group, first + r * stride).channel;
    float v[VEC];
    mfa_gn_unpack<VEC>(held[r], v);
    for (int j = 0; j < VEC; ++j) {
      const long long c = channel + (MFA_GN_LAYOUT == MFA_GN_NHWC ? j : 0);
      const float normalized = ((v[j] - pivot.pivot) - moments.mean) * rstd;
      v[j] = mfa_gn_activate(normalized * mfa_gn_param(args.weight, args.weight_dtype, c, 1.0f) +
                             mfa_gn_param(args.bias, args.weight_dtype, c, 0.0f));
    }
    held[r] = mfa_gn_pack<VEC>(v);
  }
#pragma unroll
  for (int r = 0; r < SLOTS; ++r) {
    const long long index = mfa_gn_slot_index<VEC>(args, n, group, first + r * stride, vectors);
    if (index >= 0) mfa_gn_store_packet<VEC>(args.y, index, held[r]);
  }
  if (mfa_cluster_rank() == 0 && threadIdx.x == 0) {
    if (args.mean) args.mean[item] = pivot.pivot + moments.mean;
    if (args.rstd) args.rstd[item] = rstd;
  }
  mfa_cluster_wait();
}
#endif

// ----- entry points -----

extern "C" __global__ void __launch_bounds__(MFA_GN_THREADS) mfa_gn_reduce_vec(const mfa_gn_args args) {
  mfa_gn_reduce_pass<MFA_GN_VEC>(args);
}
extern "C" __global__ void __launch_bounds__(MFA_GN_THREADS) mfa_gn_reduce_scalar(const mfa_gn_args args) {
  mfa_gn_reduce_pass<1>(args);
}
extern "C" __global__ void __launch_bounds__(MFA_GN_THREADS) mfa_gn_finalize(const mfa_gn_args args) {
  mfa_gn_finalize_pass(args);
}
extern "C" __global__ void __launch_bounds__(MFA_GN_THREADS) mfa_gn_apply_vec(const mfa_gn_args args) {
  mfa_gn_apply_pass<MFA_GN_VEC>(args);
}
extern "C" __global__ void __launch_bounds__(MFA_GN_THREADS) mfa_gn_apply_scalar(const mfa_gn_args args) {
  mfa_gn_apply_pass<1>(args);
}

// The fused entries exist in every variant so that the host finds the same functions everywhere; it
// launches them only for a forward variant on sm_90+ (where they have a body).
extern "C" __global__ void __launch_bounds__(MFA_GN_FUSED_THREADS, 1) mfa_gn_fused_vec(const mfa_gn_args args) {
#ifdef MFA_GN_HAS_FUSED
  mfa_gn_fused_forward<MFA_GN_VEC>(args);
#endif
}
extern "C" __global__ void __launch_bounds__(MFA_GN_FUSED_THREADS, 1) mfa_gn_fused_scalar(const mfa_gn_args args) {
#ifdef MFA_GN_HAS_FUSED
  mfa_gn_fused_forward<1>(args);
#endif
}
