// group_norm.cu: group normalization, forward and backward (layout, dtype, activation and pass come
// from the generated source's macros; see group_norm.cuh for the one-pass path and the three launches
// of the split path).
//
//   entry point            grid                                 work
//   mfa_gn_onepass_U       a cluster of 1..8 blocks per         forward or backward in one pass: the
//                          (n, group)                           group staged in shared memory (units of
//                                                               U elements), DSMEM sums, y or dx
//   mfa_gn_param_grads     a thread per channel                 backward after one pass: dweight, dbias
//   mfa_gn_reduce_vec      NCHW: warps over (n, c, tile)        per-(n, c, tile) partials, 16-byte loads
//                          NHWC: (tile, channel block, n)
//   mfa_gn_reduce_scalar   as above, one element per load       any alignment
//   mfa_gn_finalize        forward: a warp per (n, group)       fixed-order merge of the partials
//                          backward: y = 0 groups, y = 1 channels (dweight, dbias)
//   mfa_gn_apply_vec       grid-stride over 16-byte vectors     y (+ x_sum) or dx
//   mfa_gn_apply_scalar    grid-stride over elements
//
// Statistics: per thread, then Chan's merge across lanes, threads, tiles (the one-pass path: blocks of a
// cluster) and channels, always in the same order; the 16-bit one pass adds its shifted sums instead.
// Per thread, 16-bit inputs take shifted sums of x' - p (sum and sum of squares), fp32 inputs Welford
// (split path) or two passes over shared memory (one pass), for their tighter tolerance. Never E[x^2] -
// E[x]^2 about zero: inputs with a large mean keep their variance.
// Pivot: the statistics are those of x' - p, p the median of x' at the group's first, middle and last
// elements (an exact value of the element type that no single outlier can be). For x' near p (the case
// that matters: a mean large against the spread), x' - p is exact (Sterbenz), so the large part cancels
// exactly and an fp32 mean of 1e4 costs no 1e-3 rounding in y. The public mean is p + mean_p rounded to
// fp32.
#include "ptx.cuh"
#include "group_norm.cuh"
#include "activation.cuh"

#if MFA_GN_DTYPE == MFA_GN_F32
#define MFA_GN_VEC 4
#else
#define MFA_GN_VEC 8
#endif
// 16-bit inputs and outputs: shifted sums, folded scale and shift, fast activations (see below).
constexpr bool kSixteenBit = MFA_GN_DTYPE != MFA_GN_F32;
// The most threads a one-pass block has (cpp/group_norm.cpp onepass_threads: the NHWC backward of single
// groups alone takes more than MFA_GN_THREADS; the other entries keep their code as compiled for 256, and
// bands, which run beyond L2, their registers: at a bound of 512, NVRTC 13.x's ptxas gave the SiLU and
// tanh-GELU backward's onepass_bands_8 40 registers and spilled 12-16 bytes).
#define MFA_GN_ONEPASS_BLOCK(BANDS) \
  (MFA_GN_LAYOUT == MFA_GN_NHWC && MFA_GN_PASS == MFA_GN_BACKWARD && !(BANDS) ? MFA_GN_ONEPASS_THREADS : MFA_GN_THREADS)

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

// A packet: VEC elements as loaded and stored, raw (a 16-byte vector) or, one element, as fp32.
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

// weight / bias / dweight / dbias: [c] of a run-time dtype (0: absent, read as `absent`). The raw bits
// and their value apart, so that a load can be issued well before its value is needed.
__device__ __forceinline__ unsigned mfa_gn_param_bits(const void *p, int dtype, long long c) {
  if (p == nullptr) return 0;
  if (dtype == MFA_GN_F32) return static_cast<const unsigned *>(p)[c];
  return static_cast<const unsigned short *>(p)[c];
}
__device__ __forceinline__ float mfa_gn_param_value(unsigned bits, const void *p, int dtype, float absent) {
  if (p == nullptr) return absent;
  if (dtype == MFA_GN_F32) return __uint_as_float(bits);
  return dtype == MFA_GN_F16 ? mfa_f16_to_f32(bits) : mfa_bf16_to_f32(bits);
}
__device__ __forceinline__ float mfa_gn_param(const void *p, int dtype, long long c, float absent) {
  return mfa_gn_param_value(mfa_gn_param_bits(p, dtype, c), p, dtype, absent);
}
__device__ __forceinline__ void mfa_gn_param_store(void *p, int dtype, long long c, float value) {
  if (dtype == MFA_GN_F32) static_cast<float *>(p)[c] = value;
  else static_cast<unsigned short *>(p)[c] = dtype == MFA_GN_F16 ? mfa_f32_to_f16(value) : mfa_f32_to_bf16(value);
}

// ----- the fused activation and its derivative: activation.cuh's, at the variant's constant -----

__device__ __forceinline__ float mfa_gn_activate(float x) { return mfa_activate(x, MFA_GN_ACTIVATION, kSixteenBit); }
__device__ __forceinline__ float mfa_gn_activate_grad(float x) { return mfa_activate_grad(x, MFA_GN_ACTIVATION); }

// ----- what a pass accumulates -----

// Sums merged by addition: the backward's (sum dy^ xhat, sum dy^) and the 16-bit forward one pass's
// (sum d, sum d^2) of d = x' - p (the count is the group's size).
struct mfa_gn_pair {
  float a, b;
};
__device__ __forceinline__ mfa_gn_pair mfa_gn_merge(mfa_gn_pair x, mfa_gn_pair y) { return {x.a + y.a, x.b + y.b}; }
__device__ __forceinline__ mfa_gn_pair mfa_gn_shfl_down(mfa_gn_pair x, int offset) {
  return {__shfl_down_sync(0xffffffffu, x.a, offset), __shfl_down_sync(0xffffffffu, x.b, offset)};
}
__device__ __forceinline__ mfa_gn_pair mfa_gn_shfl(mfa_gn_pair x, int lane) {
  return {__shfl_sync(0xffffffffu, x.a, lane), __shfl_sync(0xffffffffu, x.b, lane)};
}

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
__device__ __forceinline__ mfa_gn_acc mfa_gn_shfl(mfa_gn_acc a, int lane) {
  return {__shfl_sync(0xffffffffu, a.count, lane), __shfl_sync(0xffffffffu, a.mean, lane),
          __shfl_sync(0xffffffffu, a.m2, lane)};
}

__device__ __forceinline__ float mfa_gn_input(float x, float residual, bool has_residual) {
  return has_residual ? mfa_gn_round(x + residual) : x;
}

// x' at element e of (n, group), counted channel-major: channel e / spatial, position e % spatial. Its
// raw bits (x and residual: loads issued, values unused) and their value apart, as parameters.
struct mfa_gn_element_bits {
  unsigned x, residual;
};
__device__ __forceinline__ unsigned mfa_gn_bits_at(const void *base, long long index) {
  if constexpr (MFA_GN_DTYPE == MFA_GN_F32) return static_cast<const unsigned *>(base)[index];
  else return static_cast<const unsigned short *>(base)[index];
}
__device__ __forceinline__ float mfa_gn_value_of_bits(unsigned bits) {
  if constexpr (MFA_GN_DTYPE == MFA_GN_F32) return __uint_as_float(bits);
  else return mfa_gn_from_bits(static_cast<unsigned short>(bits));
}
__device__ __forceinline__ mfa_gn_element_bits mfa_gn_group_element_bits(const mfa_gn_args &args, long long n,
                                                                         long long group, long long e) {
#if MFA_GN_LAYOUT == MFA_GN_NCHW
  const long long index = (n * args.c + group * args.cpg) * args.spatial + e;
#else
  const long long j = mfa_gn_div(e, args.div_spatial), position = e - j * args.spatial;
  const long long index = (n * args.spatial + position) * args.c + group * args.cpg + j;
#endif
  return {mfa_gn_bits_at(args.x, index), args.residual ? mfa_gn_bits_at(args.residual, index) : 0u};
}
__device__ __forceinline__ float mfa_gn_element_value(const mfa_gn_args &args, const mfa_gn_element_bits &bits) {
  return mfa_gn_input(mfa_gn_value_of_bits(bits.x), mfa_gn_value_of_bits(bits.residual), args.residual != nullptr);
}
__device__ __forceinline__ float mfa_gn_group_element(const mfa_gn_args &args, long long n, long long group,
                                                      long long e) {
  return mfa_gn_element_value(args, mfa_gn_group_element_bits(args, n, group, e));
}

// The pivot of (n, group): the median of x' at the group's first, middle and last elements (candidates
// 0, 1, 2 of the group's `last` + 1), a value of the group that no single outlier can be (shifted sums
// lose precision as the pivot's distance from the mean, in standard deviations, squared).
__device__ __forceinline__ long long mfa_gn_pivot_position(long long last, int candidate) {
  return candidate == 0 ? 0 : candidate == 1 ? last / 2 : last;
}
__device__ __forceinline__ float mfa_gn_median3(float a, float b, float c) {
  return fmaxf(fminf(a, b), fminf(fmaxf(a, b), c));
}
__device__ __forceinline__ float mfa_gn_pivot(const mfa_gn_args &args, long long n, long long group) {
  const long long last = args.cpg * args.spatial - 1;
  return mfa_gn_median3(mfa_gn_group_element(args, n, group, mfa_gn_pivot_position(last, 0)),
                        mfa_gn_group_element(args, n, group, mfa_gn_pivot_position(last, 1)),
                        mfa_gn_group_element(args, n, group, mfa_gn_pivot_position(last, 2)));
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

// 16-bit inputs (both paths): statistics by shifted sums (d = x' - p: sum d, sum d^2; M2 = sum d^2 -
// (sum d)^2 / n, whose relative error is 2^-24 (1 + ((mean - p) / sd)^2), kept near 2^-24 by the
// median-of-three pivot) and y folded to one multiply-add a channel (scale and shift precomputed; their
// rounding stays below 2^-13 of y's spread, since 16-bit inputs bound mean / spread by 2^11). fp32 inputs
// keep Welford (split path) or two passes over shared memory (one pass), and the exact
// ((x' - p) - mean_p) * rstd form, for their 1e-6 tolerance at a mean of 1e4. Measured: per-element
// Welford (a division each) and per-element statistics and parameter loads made the split path
// issue-bound at 22-30% of the copy bandwidth; a second pass over shared memory cost the issue-bound
// one-pass kernel time.
struct mfa_gn_sums {
  float count, sum, squares;
};
// One element's d = x' - p (the caller counts: per element, or per vector).
__device__ __forceinline__ void mfa_gn_sum_add(mfa_gn_sums &sums, float d) {
  sums.sum += d;
  sums.squares = fmaf(d, d, sums.squares);
}
__device__ __forceinline__ mfa_gn_acc mfa_gn_moments_of(const mfa_gn_sums &sums) {
  if (sums.count == 0.0f) return mfa_gn_zero();
  const float mean = sums.sum / sums.count;
  return {sums.count, mean, fmaxf(sums.squares - sums.sum * mean, 0.0f)};
}

#else  // backward
// Sums over a channel's elements: a = dy^ * xhat, b = dy^ (dy^: dy through the activation's derivative).
typedef mfa_gn_pair mfa_gn_acc;
struct mfa_gn_channel {
  float mean, rstd, weight, bias;
};

__device__ __forceinline__ mfa_gn_acc mfa_gn_zero() { return {0.0f, 0.0f}; }

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
template <class Acc>
__device__ __forceinline__ Acc mfa_gn_warp_merge(Acc acc) {
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
#if MFA_GN_PASS == MFA_GN_FORWARD
    mfa_gn_sums sums = {0.0f, 0.0f, 0.0f};
#endif
    for (long long s = begin + lane * VEC; s < end; s += 32 * VEC) {
      float v0[VEC], v1[VEC] = {};
      mfa_gn_load<VEC>(first, row * args.spatial + s, v0);
      if (has_second) mfa_gn_load<VEC>(second, row * args.spatial + s, v1);
#if MFA_GN_PASS == MFA_GN_FORWARD
      if constexpr (kSixteenBit) {
        for (int j = 0; j < VEC; ++j) mfa_gn_sum_add(sums, mfa_gn_input(v0[j], v1[j], has_second) - channel.pivot);
        sums.count += VEC;
        continue;
      }
#endif
      mfa_gn_add_vec<VEC>(acc, channel, v0, v1, has_second);
    }
#if MFA_GN_PASS == MFA_GN_FORWARD
    if constexpr (kSixteenBit) acc = mfa_gn_moments_of(sums);
#endif
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
#if MFA_GN_PASS == MFA_GN_FORWARD
    mfa_gn_sums sums[VEC] = {};
#endif
    for (long long s = tile * args.tile + lane; s < end; s += lanes) {
      const long long index = (n * args.spatial + s) * args.c + column * VEC;
      float v0[VEC], v1[VEC] = {};
      mfa_gn_load<VEC>(first, index, v0);
      if (has_second) mfa_gn_load<VEC>(second, index, v1);
#if MFA_GN_PASS == MFA_GN_FORWARD
      if constexpr (kSixteenBit) {
        for (int j = 0; j < VEC; ++j) {
          mfa_gn_sum_add(sums[j], mfa_gn_input(v0[j], v1[j], has_second) - channel[j].pivot);
          sums[j].count += 1.0f;
        }
        continue;
      }
#endif
      for (int j = 0; j < VEC; ++j) mfa_gn_add(acc[j], channel[j], v0[j], v1[j], has_second);
    }
#if MFA_GN_PASS == MFA_GN_FORWARD
    if constexpr (kSixteenBit)
      for (int j = 0; j < VEC; ++j) acc[j] = mfa_gn_moments_of(sums[j]);
#endif
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
// hands the group's total to `finish(item, n, group, total, lane)` on every lane.
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
    acc = mfa_gn_shfl(mfa_gn_warp_merge(acc), 0);
    finish(item, n, group, acc, lane);
  }
}

#if MFA_GN_PASS == MFA_GN_FORWARD
// A warp per (n, group) merges the moments of x' - p, writes (p, mean_p, rstd) for apply and
// mean = p + mean_p, rstd.
__device__ __forceinline__ void mfa_gn_finalize_pass(const mfa_gn_args &args) {
  const auto moments = [&](long long, long long tile, const float *partial) -> mfa_gn_acc {
    return {static_cast<float>(min(args.tile, args.spatial - tile * args.tile)), partial[0], partial[1]};
  };
  const auto write_stats = [&](long long item, long long n, long long group, const mfa_gn_acc &acc, int lane) {
    const float variance = fmaxf(acc.m2 / acc.count, 0.0f);
    const float rstd = 1.0f / sqrtf(variance + args.eps);
    const float pivot = mfa_gn_pivot(args, n, group);
    if (lane == 0) {
      args.group_stats[item * MFA_GN_STATS] = pivot;
      args.group_stats[item * MFA_GN_STATS + 1] = acc.mean;
      args.group_stats[item * MFA_GN_STATS + 2] = rstd;
      if (args.mean) args.mean[item] = pivot + acc.mean;
      if (args.rstd) args.rstd[item] = rstd;
    }
    if constexpr (kSixteenBit)  // apply's per-channel scale and shift
      for (long long j = lane; j < args.cpg; j += 32) {
        const long long c = group * args.cpg + j;
        const float scale = rstd * mfa_gn_param(args.weight, args.weight_dtype, c, 1.0f);
        args.coefficients[(n * args.c + c) * 2] = scale;
        args.coefficients[(n * args.c + c) * 2 + 1] =
            mfa_gn_param(args.bias, args.weight_dtype, c, 0.0f) - (pivot + acc.mean) * scale;
      }
  };
  mfa_gn_merge_group_partials(args, moments, write_stats);
}
#else
// A thread per channel: dweight = sum over n and tiles of a, dbias of b (the tiles are the one-pass
// path's cluster ranks there), in a fixed order.
__device__ __forceinline__ void mfa_gn_param_grads_pass(const mfa_gn_args &args) {
  if (args.dweight == nullptr) return;
  constexpr int BATCH = 16;  // loads in flight a thread (one at a time: the 8x512x128x128 NHWC backward +15%)
  const long long parts = args.n * args.tiles;
  for (long long c = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; c < args.c;
       c += static_cast<long long>(gridDim.x) * blockDim.x) {
    mfa_gn_acc acc = mfa_gn_zero();
    long long n = 0, tile = 0;  // of part k0 + i
    for (long long k0 = 0; k0 < parts; k0 += BATCH) {
      float2 held[BATCH];
#pragma unroll
      for (int i = 0; i < BATCH; ++i) {
        if (k0 + i < parts) held[i] = *reinterpret_cast<const float2 *>(mfa_gn_partial(args, n, c, tile));
        if (++tile == args.tiles) tile = 0, ++n;
      }
#pragma unroll
      for (int i = 0; i < BATCH; ++i)
        if (k0 + i < parts) acc = mfa_gn_merge(acc, {held[i].x, held[i].y});
    }
    mfa_gn_param_store(args.dweight, args.weight_dtype, c, acc.a);
    mfa_gn_param_store(args.dbias, args.weight_dtype, c, acc.b);
  }
}

// blockIdx.y == 0: a warp per (n, group): s1 = sum weight * dy^, s2 = sum weight * dy^ * xhat, stored as
// rstd * s1 / M and rstd * s2 / M (M = cpg * spatial), so that dx = rstd * weight * dy^ - k1 - xhat * k2.
// blockIdx.y == 1: dweight and dbias.
__device__ __forceinline__ void mfa_gn_finalize_pass(const mfa_gn_args &args) {
  if (blockIdx.y == 1) return mfa_gn_param_grads_pass(args);
  const float inverse_count = 1.0f / static_cast<float>(args.cpg * args.spatial);
  const auto weighted_sums = [&](long long c, long long, const float *partial) -> mfa_gn_acc {
    const float weight = mfa_gn_param(args.weight, args.weight_dtype, c, 1.0f);
    return {weight * partial[0], weight * partial[1]};
  };
  const auto write_coefficients = [&](long long item, long long, long long, const mfa_gn_acc &acc, int lane) {
    if (lane != 0) return;
    const float rstd = args.rstd[item];
    args.group_stats[item * MFA_GN_STATS] = rstd * acc.b * inverse_count;
    args.group_stats[item * MFA_GN_STATS + 1] = rstd * acc.a * inverse_count;
  };
  mfa_gn_merge_group_partials(args, weighted_sums, write_coefficients);
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
    // NHWC vectors: their VEC channels' (scale, shift) pairs as 16-byte loads (c0 and C are multiples of
    // VEC): 8-byte loads of one pair a lane, 64 bytes apart across the warp, made the apply L1-bound
    // (measured: 27% of DRAM and 26% of SM throughput on the 128 MB NHWC tensor).
    float2 pairs[VEC];
    if constexpr (kSixteenBit) {
      const float *k = args.coefficients + (n * args.c + c0) * 2;
      if constexpr (MFA_GN_LAYOUT == MFA_GN_NHWC && VEC > 1) {
        for (int j = 0; j < VEC; j += 2) {
          const float4 two = reinterpret_cast<const float4 *>(k)[j / 2];
          pairs[j] = make_float2(two.x, two.y), pairs[j + 1] = make_float2(two.z, two.w);
        }
      } else {
        for (int j = 0; j < VEC; ++j) pairs[j] = reinterpret_cast<const float2 *>(k)[j * channel_step];
      }
    }
    for (int j = 0; j < VEC; ++j) {
      const long long c = c0 + j * channel_step;
      x[j] = mfa_gn_input(x[j], residual[j], has_residual);
      if constexpr (kSixteenBit) {
        out[j] = mfa_gn_activate(fmaf(x[j], pairs[j].x, pairs[j].y));
        continue;
      }
      if (c == next_group_start) ++group, next_group_start += args.cpg;
      const float *stats = args.group_stats + (n * args.groups + group) * MFA_GN_STATS;  // p, mean_p, rstd
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

// ----- one pass: a cluster per (n, group), the group staged in shared memory -----
//
// Block `rank` of the cluster working on (n, group) holds the group's units [rank * slice_units, ...) (a
// unit: U elements copied at once) of each input stream in shared memory:
//   1. stage: cp.async copies every unit of the slice (no registers hold data in flight, so a block keeps
//      its whole slice's loads outstanding), in the NCHW backward as chunks (of 16-byte units: one bulk
//      copy each) that its first pass (dy^ and the sums) takes in turn as they land; the group's weight
//      and bias and a few scalars into a table
//   2. one merge over the cluster: each block's sums in a fixed order, published in shared memory, read
//      back by every block through distributed shared memory in rank order (all hold the same bits)
//      forward: the moments of x' - p; backward: sum w dy^ xhat and sum w dy^
//   3. write y = act(x' * scale + shift), or dx, unit by unit from shared memory
// Each input is read from HBM once and each output written once; a cluster barrier at the end keeps every
// block's shared memory alive while the others may still read its sums.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include "ptx_cluster.cuh"
#include "ptx_sm90.cuh"
#define MFA_GN_HAS_ONEPASS 1

#if MFA_GN_DTYPE == MFA_GN_F32
typedef float mfa_gn_elem;
#else
typedef unsigned short mfa_gn_elem;
#endif

// U consecutive elements as one copy moves them, as 32-bit words (a 2-byte unit in the low half of one).
template <int U>
struct mfa_gn_unit {
  static constexpr int BYTES = U * static_cast<int>(sizeof(mfa_gn_elem));
  unsigned w[BYTES >= 4 ? BYTES / 4 : 1];
};

template <int U>
__device__ __forceinline__ mfa_gn_unit<U> mfa_gn_unit_load(const mfa_gn_elem *at) {
  mfa_gn_unit<U> unit;
  if constexpr (mfa_gn_unit<U>::BYTES == 16) {
    const uint4 r = *reinterpret_cast<const uint4 *>(at);
    unit.w[0] = r.x, unit.w[1] = r.y, unit.w[2] = r.z, unit.w[3] = r.w;
  } else if constexpr (mfa_gn_unit<U>::BYTES == 8) {
    const uint2 r = *reinterpret_cast<const uint2 *>(at);
    unit.w[0] = r.x, unit.w[1] = r.y;
  } else if constexpr (mfa_gn_unit<U>::BYTES == 4) {
    unit.w[0] = *reinterpret_cast<const unsigned *>(at);
  } else {
    unit.w[0] = *reinterpret_cast<const unsigned short *>(at);
  }
  return unit;
}

template <int U>
__device__ __forceinline__ void mfa_gn_unit_store(mfa_gn_elem *at, const mfa_gn_unit<U> &unit) {
  if constexpr (mfa_gn_unit<U>::BYTES == 16)
    *reinterpret_cast<uint4 *>(at) = make_uint4(unit.w[0], unit.w[1], unit.w[2], unit.w[3]);
  else if constexpr (mfa_gn_unit<U>::BYTES == 8)
    *reinterpret_cast<uint2 *>(at) = make_uint2(unit.w[0], unit.w[1]);
  else if constexpr (mfa_gn_unit<U>::BYTES == 4)
    *reinterpret_cast<unsigned *>(at) = unit.w[0];
  else
    *reinterpret_cast<unsigned short *>(at) = static_cast<unsigned short>(unit.w[0]);
}

// Two 16-bit elements of a word as fp32, and back (one conversion instruction a pair where the type has it).
__device__ __forceinline__ void mfa_gn_unpack_pair(unsigned word, float &lo, float &hi) {
  if constexpr (MFA_GN_DTYPE == MFA_GN_BF16) {
    lo = __uint_as_float(word << 16), hi = __uint_as_float(word & 0xffff0000u);
  } else {
    asm("{ .reg .f16 l, h; mov.b32 {l, h}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h; }"
        : "=f"(lo), "=f"(hi) : "r"(word));
  }
}
__device__ __forceinline__ unsigned mfa_gn_pack_pair(float lo, float hi) {
  unsigned word;
  if constexpr (MFA_GN_DTYPE == MFA_GN_BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(word) : "f"(hi), "f"(lo));
  else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(word) : "f"(hi), "f"(lo));
  return word;
}

template <int U>
__device__ __forceinline__ void mfa_gn_unit_floats(const mfa_gn_elem *slice, int u, float (&v)[U]) {
  const mfa_gn_unit<U> unit = mfa_gn_unit_load<U>(slice + u * U);
  if constexpr (MFA_GN_DTYPE == MFA_GN_F32) {
#pragma unroll
    for (int k = 0; k < U; ++k) v[k] = __uint_as_float(unit.w[k]);
  } else if constexpr (U == 1) {
    v[0] = mfa_gn_from_bits(static_cast<unsigned short>(unit.w[0]));
  } else {
#pragma unroll
    for (int k = 0; k < U; k += 2) mfa_gn_unpack_pair(unit.w[k / 2], v[k], v[k + 1]);
  }
}

template <int U>
__device__ __forceinline__ mfa_gn_unit<U> mfa_gn_unit_of(const float (&v)[U]) {
  mfa_gn_unit<U> unit;
  if constexpr (MFA_GN_DTYPE == MFA_GN_F32) {
#pragma unroll
    for (int k = 0; k < U; ++k) unit.w[k] = __float_as_uint(v[k]);
  } else if constexpr (U == 1) {
    unit.w[0] = mfa_gn_to_bits(v[0]);
  } else {
#pragma unroll
    for (int k = 0; k < U; k += 2) unit.w[k / 2] = mfa_gn_pack_pair(v[k], v[k + 1]);
  }
  return unit;
}

// Whether the slice is copied in chunks that the first pass takes as they land (MFA_GN_MAX_CHUNKS). The
// forward in chunks too was not kept (H200, fp16, same process): NHWC 1.02-1.03x the time on the 128 MB
// tensors and 1.06-1.10x on 2x320x64x64 and 2x640x16x16, NCHW 0.98-1.05x.
constexpr bool kChunkedStage = MFA_GN_PASS == MFA_GN_BACKWARD && MFA_GN_LAYOUT == MFA_GN_NCHW;
// Whether a chunk of each stream lands by one bulk copy (cp.async.bulk) on the chunk's mbarrier (the NCHW
// backward: its slices are contiguous, and 16-byte units keep them 16-byte aligned). One thread issues
// them, where a cp.async per unit took 2 of the fp16 backward's 35 instructions an element and 13% of its
// warps' stall samples (ncu, H200, 2x1280x64x64). With a multiply an element less in each of its passes
// (mfa_gn_run_sums, dx), against cp.async (H200, fp16, same process, each build timed as either package):
// 0.93-0.97x the time on 2x320 .. 2x1280 at 16^2 .. 64^2, 0.98-1.00x on 16x256x128x128. The forward kept
// cp.async: bulk copies ran it 0.96-0.99x at 2x320x64x64, 2x640x64x64 and 2x1280x32x32, but 1.00x at
// 2x1280x64x64, 1.04x at 2x640x16x16 and 1.01-1.02x on the 128 MB tensor.
template <int U>
constexpr bool kBulkStage =
    MFA_GN_LAYOUT == MFA_GN_NCHW && MFA_GN_PASS == MFA_GN_BACKWARD && U * sizeof(mfa_gn_elem) == 16;
__shared__ unsigned long long mfa_gn_chunk_landed[MFA_GN_MAX_CHUNKS];
__device__ __forceinline__ unsigned mfa_gn_chunk_bar(int k) { return mfa_smem_addr(&mfa_gn_chunk_landed[k]); }

// An item's groups (args.band, in the entries for bands: NHWC's; elsewhere 1, a constant) and
// the one this thread's units belong to: blocks are whole warps and slices whole rows of at most 32 units,
// so thread t always reads column t % row_units of a row, which lies in group (t % row_units) / (row_units /
// groups).
constexpr bool kHasBands = MFA_GN_LAYOUT == MFA_GN_NHWC;
struct mfa_gn_band {
  int groups, row_units, mine;
  long long cpg;  // channels of one group
};
template <bool BANDS>
__device__ __forceinline__ mfa_gn_band mfa_gn_band_of(const mfa_gn_args &args) {
  if constexpr (!BANDS) {
    return {1, 1, 0, args.cpg};
  } else {
    const int row_units = static_cast<int>(args.row_units);
    return {args.band, row_units, static_cast<int>(threadIdx.x & (row_units - 1)) / (row_units / args.band),
            static_cast<int>(args.cpg) / args.band};
  }
}

// Where an item (n, group, or n and a band of groups) and a block's slice of it are.
struct mfa_gn_slice {
  long long item, n, group;
  long long base;   // element index of the group's first element
  unsigned first;   // the slice's first unit within the group (a group holds < 2^31 elements)
  int units;        // units in the slice
  unsigned rank, blocks;               // within (n, group)
  unsigned first_rank, cluster_blocks;  // the cluster rank of (n, group)'s first block; the cluster's blocks
  int chunk_units, chunks;              // the slice's copies in chunks (mfa_gn_stage_item)
  mfa_gn_band band;                     // the item's groups
};

template <int U>
__device__ __forceinline__ mfa_gn_slice mfa_gn_slice_of(const mfa_gn_args &args, long long item, unsigned rank,
                                                        unsigned blocks) {
  mfa_gn_slice s;
  s.rank = rank;
  s.blocks = blocks;
  s.item = item;
  s.n = mfa_gn_div(item, args.div_groups);
  s.group = item - s.n * args.groups;
#if MFA_GN_LAYOUT == MFA_GN_NCHW
  s.base = (s.n * args.c + s.group * args.cpg) * args.spatial;
#else
  s.base = s.n * args.spatial * args.c + s.group * args.cpg;
#endif
  const long long first = static_cast<long long>(rank) * args.slice_units;
  const long long group_units = args.cpg * args.spatial / U;
  s.first = static_cast<unsigned>(min(first, group_units));
  s.units = static_cast<int>(max(0ll, min(args.slice_units, group_units - first)));
  s.chunk_units = s.units, s.chunks = 1;
  if constexpr (kChunkedStage) {
    const int strides = (s.units + blockDim.x - 1) / blockDim.x;  // of a unit a thread
    s.chunk_units = max(2, (strides + MFA_GN_MAX_CHUNKS - 1) / MFA_GN_MAX_CHUNKS) * blockDim.x;
    s.chunks = max(1, (s.units + s.chunk_units - 1) / s.chunk_units);
  }
  return s;
}

// The element offset (from the group's first element) of the slice's unit u, and the group channel of its
// element k: 32-bit arithmetic within the group, one wide multiply for NHWC's row stride.
template <int U>
__device__ __forceinline__ long long mfa_gn_unit_offset(const mfa_gn_args &args, const mfa_gn_slice &s, int u) {
  const unsigned unit = s.first + u;
#if MFA_GN_LAYOUT == MFA_GN_NCHW
  return unit * U;
#else
  const unsigned position = mfa_gn_div32(unit, args.div_row_units);
  return static_cast<long long>(position) * args.c + (unit - position * static_cast<unsigned>(args.row_units)) * U;
#endif
}
template <int U>
__device__ __forceinline__ int mfa_gn_unit_channel(const mfa_gn_args &args, const mfa_gn_slice &s, int u) {
  const unsigned unit = s.first + u;
#if MFA_GN_LAYOUT == MFA_GN_NCHW
  return static_cast<int>(mfa_gn_div32(unit, args.div_row_units));  // all U elements: one channel
#else
  return static_cast<int>(unit - mfa_gn_div32(unit, args.div_row_units) * static_cast<unsigned>(args.row_units)) * U;
#endif
}
__device__ __forceinline__ int mfa_gn_element_channel(int unit_channel, int k) {
  return MFA_GN_LAYOUT == MFA_GN_NHWC ? unit_channel + k : unit_channel;
}

// A thread's units u, u + blockDim.x, ... of a band item (NHWC): its rows' units divide the block's width
// and its slices start on a row, so they lie in one column (the same channels for all of them) and their
// offsets step by whole rows. The band loops carry no division and keep their channels' parameters in
// registers: the offset, the channel and its parameters' loads took 50 of the forward y loop's 75
// instructions a unit (ncu SASS, H200, fp16 16x256x128x128 NHWC). They are loops of their own beside the
// general ones, which stay as they were: both written as one loop through lambdas, the general loops'
// SASS changed and the fp16 NCHW backward ran 2-3% slower (H200, same process). Walking the general NHWC
// loops too (offset and column stepped, the column wrapping past the row's end) was not kept: 0.94-0.95x
// the time of the 2x320x64x64 backward, but 1.15-1.16x that of 2x1280x32x32 (H200, fp16, same process).
struct mfa_gn_column_walk {
  long long offset;  // of the current unit, from the group's first element
  long long step;    // elements to the thread's next unit
  __device__ void next() { offset += step; }
};
template <int U>
__device__ __forceinline__ mfa_gn_column_walk mfa_gn_column_walk_from(const mfa_gn_args &args, const mfa_gn_slice &s,
                                                                      int u) {
  return {mfa_gn_unit_offset<U>(args, s, u), static_cast<long long>(blockDim.x / args.row_units) * args.c};
}
// A per-channel table's values (weight, scale, ...) for a unit's U elements, from the unit's channel.
template <int U>
__device__ __forceinline__ void mfa_gn_unit_table(const float *table, int channel, float (&out)[U]) {
#pragma unroll
  for (int k = 0; k < U; ++k) out[k] = table[mfa_gn_element_channel(channel, k)];
}

// The group's first element in an element tensor.
__device__ __forceinline__ mfa_gn_elem *mfa_gn_group_of(const void *tensor, const mfa_gn_slice &s) {
  return const_cast<mfa_gn_elem *>(static_cast<const mfa_gn_elem *>(tensor)) + s.base;
}

// Copies units [begin, end) of the slice of `source` into shared memory: cp.async for 4 to 16-byte units,
// otherwise (2-byte elements one at a time) loads batched ahead of their stores. `begin` is a whole
// number of block strides (chunks are). (An L2 prefetch of 128 or 256 bytes a copy, cp.async's .L2::128B /
// .L2::256B, was not kept: fp16 forward 1.06-1.07x the time on 16x256x128x128, 0.97-0.98x on
// 8x512x128x128, NCHW and NHWC alike; H100, one process.)
template <int U, bool BANDS>
__device__ __forceinline__ void mfa_gn_stage(const mfa_gn_args &args, const mfa_gn_slice &s, const void *source,
                                             mfa_gn_elem *slice, int begin, int end) {
  constexpr int BYTES = U * sizeof(mfa_gn_elem);
  const mfa_gn_elem *from = mfa_gn_group_of(source, s);
  if constexpr (BYTES >= 4 && BANDS) {
    mfa_gn_column_walk walk = mfa_gn_column_walk_from<U>(args, s, begin + threadIdx.x);
    for (int u = begin + threadIdx.x; u < end; u += blockDim.x, walk.next())
      mfa_cp_async<BYTES>(slice + u * U, from + walk.offset);
  } else if constexpr (BYTES >= 4) {
    for (int u = begin + threadIdx.x; u < end; u += blockDim.x)
      mfa_cp_async<BYTES>(slice + u * U, from + mfa_gn_unit_offset<U>(args, s, u));
  } else {
    constexpr int BATCH = 8;
    for (int u0 = begin + threadIdx.x; u0 < end; u0 += BATCH * blockDim.x) {
      mfa_gn_elem held[BATCH];
#pragma unroll
      for (int b = 0; b < BATCH; ++b) {
        const int u = u0 + b * blockDim.x;
        if (u < end) held[b] = from[mfa_gn_unit_offset<U>(args, s, u)];
      }
#pragma unroll
      for (int b = 0; b < BATCH; ++b)
        if (u0 + b * blockDim.x < end) slice[u0 + b * blockDim.x] = held[b];
    }
  }
}

// The group's weight and bias as fp32 (table[0, cpg) and table[cpg, 2 cpg)) and the scalars: forward the
// three pivot candidates of mfa_gn_pivot, backward the group's mean and rstd. Each thread loads its entry
// (channel threadIdx.x, scalar threadIdx.x) before the slice's copies are issued and stores it after, so
// that these scattered loads do not queue behind the slice (H200, fp16 2x1280x16x16 forward: 4.6 -> 4.2 us).
struct mfa_gn_table_entry {
  unsigned weight, bias;
#if MFA_GN_PASS == MFA_GN_FORWARD
  mfa_gn_element_bits pivot_candidate;
#else
  float statistic;  // mean, rstd
#endif
};

__device__ __forceinline__ mfa_gn_table_entry mfa_gn_table_load(const mfa_gn_args &args, const mfa_gn_slice &s) {
  mfa_gn_table_entry entry = {};
  const long long c = s.group * args.cpg + threadIdx.x;
  if (threadIdx.x < args.cpg) {
    entry.weight = mfa_gn_param_bits(args.weight, args.weight_dtype, c);
    entry.bias = mfa_gn_param_bits(args.bias, args.weight_dtype, c);
  }
#if MFA_GN_PASS == MFA_GN_FORWARD
  const mfa_gn_band &band = s.band;
  if (threadIdx.x < 3 * band.groups) {  // candidate threadIdx.x % 3 of the item's group threadIdx.x / 3
    const int group = band.groups == 1 ? 0 : threadIdx.x / 3, candidate = threadIdx.x - 3 * group;
    const long long size = band.cpg * args.spatial;  // elements, counted channel-major from the item's first
    entry.pivot_candidate = mfa_gn_group_element_bits(args, s.n, s.group,
                                                      group * size + mfa_gn_pivot_position(size - 1, candidate));
  }
#else
  if (threadIdx.x < 2 * s.band.groups) {  // group threadIdx.x / 2 of the item: mean, rstd
    const long long g = s.band.groups == 1 ? s.item : s.item * s.band.groups + (threadIdx.x >> 1);
    entry.statistic = (threadIdx.x & 1) == 0 ? args.mean[g] : args.rstd[g];
  }
#endif
  return entry;
}

__device__ __forceinline__ void mfa_gn_table_store(const mfa_gn_args &args, const mfa_gn_slice &s,
                                                   const mfa_gn_table_entry &entry, float *table, float *scalars) {
  if (threadIdx.x < args.cpg) {
    table[threadIdx.x] = mfa_gn_param_value(entry.weight, args.weight, args.weight_dtype, 1.0f);
    table[args.cpg + threadIdx.x] = mfa_gn_param_value(entry.bias, args.bias, args.weight_dtype, 0.0f);
  }
  for (long long j = threadIdx.x + blockDim.x; j < args.cpg; j += blockDim.x) {  // groups wider than the block
    table[j] = mfa_gn_param(args.weight, args.weight_dtype, s.group * args.cpg + j, 1.0f);
    table[args.cpg + j] = mfa_gn_param(args.bias, args.weight_dtype, s.group * args.cpg + j, 0.0f);
  }
#if MFA_GN_PASS == MFA_GN_FORWARD
  if (threadIdx.x < 3 * s.band.groups)
    scalars[threadIdx.x] = mfa_gn_element_value(args, entry.pivot_candidate);
#else
  if (threadIdx.x < 2 * s.band.groups) scalars[threadIdx.x] = entry.statistic;
#endif
}

// The merge of every thread's accumulator over the blocks of (n, group), per group of the item where it
// holds several (fp32 forward: moments; 16-bit forward and backward: sums): the warps' fixed shuffle
// trees, the warps in order, then the blocks in rank order, read by every block through distributed
// shared memory, so that every thread of every block has the same bits. Returns the total of the thread's
// group; *totals (unless null) points to every group's, in shared memory. (A returned pointer alone cost
// the variants without bands registers: fp16 NCHW backward onepass_1 32 -> 48.) Its cluster barrier also
// publishes the blocks' earlier shared-memory stores.
template <bool BANDS = false, class Acc>
__device__ __forceinline__ Acc mfa_gn_cluster_merge(Acc acc, const mfa_gn_slice &s, const Acc **totals = nullptr) {
  constexpr int FIELDS = sizeof(Acc) / sizeof(float), MAX_GROUPS = BANDS ? MFA_GN_MAX_BAND : 1;
  __shared__ Acc warp_acc[MFA_GN_ONEPASS_BLOCK(BANDS) / 32 * MAX_GROUPS];
  __shared__ Acc block_acc[MAX_GROUPS], cluster_acc[MAX_GROUPS];
  // (one group: the code as it was before bands, constant indices included)
  const mfa_gn_band &band = s.band;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, groups = BANDS ? band.groups : 1;
  if (groups == 1) {
    acc = mfa_gn_warp_merge(acc);
    if (lane == 0) warp_acc[warp] = acc;
  } else {  // lanes of one column first (lane % row_units), then the columns of each group
    const int columns = band.row_units / groups;
    for (int offset = 16; offset >= band.row_units; offset >>= 1)
      acc = mfa_gn_merge(acc, mfa_gn_shfl_down(acc, offset));
    for (int offset = columns >> 1; offset > 0; offset >>= 1) acc = mfa_gn_merge(acc, mfa_gn_shfl_down(acc, offset));
    if (lane < band.row_units && lane % columns == 0) warp_acc[warp * groups + lane / columns] = acc;
  }
  __syncthreads();
  if (groups == 1 ? threadIdx.x == 0 : threadIdx.x < groups) {  // thread g merges group g
    const int g = groups == 1 ? 0 : threadIdx.x;
    Acc total = warp_acc[g];
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) total = mfa_gn_merge(total, warp_acc[w * groups + g]);
    block_acc[g] = cluster_acc[g] = total;
  }
  const int mine = groups == 1 ? 0 : band.mine;
  if (totals) *totals = cluster_acc;
  if (s.cluster_blocks == 1) {  // no cluster barrier (its release is a GPU-wide memory barrier) for one block
    __syncthreads();
    return cluster_acc[mine];
  }
  mfa_cluster_arrive();  // releases block_acc to the cluster
  mfa_cluster_wait();
  const unsigned blocks = s.blocks;
  const auto merge_blocks = [&](int g) {  // lane k reads block k: the remote latencies overlap
    Acc theirs = {};
    if (lane < static_cast<int>(blocks)) {
      const unsigned remote = mfa_cluster_map(mfa_smem_addr(&block_acc[g]), s.first_rank + lane);
      float *fields = reinterpret_cast<float *>(&theirs);
#pragma unroll
      for (int i = 0; i < FIELDS; ++i) fields[i] = mfa_cluster_load_f32(remote + 4 * i);
    }
    Acc total = {};
    for (unsigned rank = 0; rank < blocks; ++rank) total = mfa_gn_merge(total, mfa_gn_shfl(theirs, rank));
    if (lane == 0) cluster_acc[g] = total;
  };
  if (groups == 1) {
    if (warp == 0) merge_blocks(0);
  } else {  // warp w merges groups w, w + warps, ... (blocks of 64 threads have 2 warps for up to 8 groups)
    for (int g = warp; g < groups; g += static_cast<int>(blockDim.x >> 5)) merge_blocks(g);
  }
  __syncthreads();
  return cluster_acc[mine];
}

// No block leaves (with its shared memory) while another may still read its published accumulator.
__device__ __forceinline__ void mfa_gn_cluster_exit(unsigned blocks) {
  if (blocks == 1) return;
  mfa_cluster_arrive_relaxed();
  mfa_cluster_wait();
}

extern __shared__ __align__(16) unsigned char mfa_gn_shared[];

// The block's slices: `streams` consecutive regions of args.slice_bytes (x, then the residual or dy).
struct mfa_gn_buffer {
  mfa_gn_elem *first, *second;
};

__device__ __forceinline__ mfa_gn_buffer mfa_gn_buffer_of(const mfa_gn_args &args) {
  return {reinterpret_cast<mfa_gn_elem *>(mfa_gn_shared), reinterpret_cast<mfa_gn_elem *>(mfa_gn_shared + args.slice_bytes)};
}

// The block's input streams into `buffer`: x, and the residual (forward, if any) or dy, in s.chunks
// chunks of whole block-strides of units (one unless kChunkedStage), each chunk of both streams one
// cp.async group (kBulkStage: two bulk copies on the chunk's mbarrier), so that the first pass over the
// slice (mfa_gn_each_landed_chunk) works on a chunk while the later ones are in flight. (All copies are
// still issued at once: the whole slice stays outstanding.)
template <int U, bool BANDS>
__device__ __forceinline__ void mfa_gn_stage_item(const mfa_gn_args &args, const mfa_gn_slice &s,
                                                  const mfa_gn_buffer &buffer) {
  if constexpr (kBulkStage<U>) {  // the backward: x and dy
    if (threadIdx.x != 0) return;
    for (int k = 0; k < s.chunks; ++k) mfa_mbar_init(mfa_gn_chunk_bar(k), 1);
    mfa_fence_mbar_init();
    for (int k = 0; k < s.chunks; ++k) {
      const int begin = k * s.chunk_units, units = min(s.chunk_units, s.units - begin);
      const unsigned bytes = static_cast<unsigned>(max(units, 0)) * 16u;
      mfa_mbar_arrive_expect_tx(mfa_gn_chunk_bar(k), 2 * bytes);
      if (bytes == 0) continue;
      const long long offset = static_cast<long long>(s.first + begin) * U;
      mfa_bulk_load(mfa_smem_addr(buffer.first + begin * U), mfa_gn_group_of(args.x, s) + offset, bytes,
                    mfa_gn_chunk_bar(k));
      mfa_bulk_load(mfa_smem_addr(buffer.second + begin * U), mfa_gn_group_of(args.dy, s) + offset, bytes,
                    mfa_gn_chunk_bar(k));
    }
    return;
  }
  constexpr bool kForward = MFA_GN_PASS == MFA_GN_FORWARD;
  const auto stage_chunk = [&](int begin, int end) {
    mfa_gn_stage<U, BANDS>(args, s, args.x, buffer.first, begin, end);
    if (!kForward || args.residual)
      mfa_gn_stage<U, BANDS>(args, s, kForward ? args.residual : args.dy, buffer.second, begin, end);
    mfa_cp_async_commit();
  };
  if constexpr (!kChunkedStage) return stage_chunk(0, s.units);
  for (int k = 0; k < s.chunks; ++k) stage_chunk(k * s.chunk_units, min((k + 1) * s.chunk_units, s.units));
}

// Calls chunk(begin, end) for each chunk of the slice in order, once it has landed.
template <int U, class Chunk>
__device__ __forceinline__ void mfa_gn_each_landed_chunk(const mfa_gn_slice &s, Chunk chunk) {
  if constexpr (!kChunkedStage) return chunk(0, s.units);  // one chunk, landed before mfa_gn_item
  for (int k = 0; k < s.chunks; ++k) {
    if constexpr (kBulkStage<U>) {
      mfa_mbar_wait(mfa_gn_chunk_bar(k), 0);  // the whole chunk
    } else {
      mfa_cp_async_wait_at_most(s.chunks - 1 - k);  // this thread's copies of it, then every thread's
      __syncthreads();
    }
    chunk(k * s.chunk_units, min((k + 1) * s.chunk_units, s.units));
  }
}

#if MFA_GN_PASS == MFA_GN_FORWARD
// What the cluster merges for a group: 16-bit, the shifted sums (M2 = sum d^2 - (sum d)^2 / M at the
// end, M the group's size: Chan's merge at every step of the trees, a division each, cost ~150
// instructions a thread, against ~40 elementwise ones per 8-element unit); fp32, the moments, each
// thread's M2 about its own mean by a second pass over shared memory, then Chan's merge.
#if MFA_GN_DTYPE != MFA_GN_F32
using mfa_gn_total = mfa_gn_pair;
#else
using mfa_gn_total = mfa_gn_acc;
#endif

// The totals of every group of the item (s.band.groups) from every thread's sums over the cluster.
template <int U, bool BANDS>
__device__ __forceinline__ const mfa_gn_total *mfa_gn_group_totals(const mfa_gn_slice &s, const mfa_gn_elem *xs,
                                                                  const mfa_gn_sums &sums, float pivot) {
  const mfa_gn_total *totals = nullptr;
#if MFA_GN_DTYPE != MFA_GN_F32
  mfa_gn_cluster_merge<BANDS>(mfa_gn_pair{sums.sum, sums.squares}, s, &totals);
#else
  mfa_gn_acc acc = mfa_gn_moments_of(sums);
  const float center = pivot + acc.mean;  // its rounding moves M2 by a negligible (error)^2 * count
  acc.m2 = 0.0f;
  for (int u = threadIdx.x; u < s.units; u += blockDim.x) {
    float v[U];
    mfa_gn_unit_floats<U>(xs, u, v);
#pragma unroll
    for (int k = 0; k < U; ++k) acc.m2 = fmaf(v[k] - center, v[k] - center, acc.m2);
  }
  mfa_gn_cluster_merge<BANDS>(acc, s, &totals);
#endif
  return totals;
}

// A group's mean of x' - p and rstd from its total.
struct mfa_gn_group_stats {
  float mean_p, rstd;
};
__device__ __forceinline__ mfa_gn_group_stats mfa_gn_stats_of(const mfa_gn_args &args, const mfa_gn_band &band,
                                                              const mfa_gn_total &total) {
#if MFA_GN_DTYPE != MFA_GN_F32
  const float count = static_cast<float>(band.cpg * args.spatial);
  const float mean = total.a / count;
  const mfa_gn_acc moments = {count, mean, fmaxf(total.b - total.a * mean, 0.0f)};
#else
  const mfa_gn_acc moments = total;
#endif
  return {moments.mean, 1.0f / sqrtf(fmaxf(moments.m2 / moments.count, 0.0f) + args.eps)};
}

__device__ __forceinline__ float mfa_gn_pivot_of(const float *scalars, int group) {
  return mfa_gn_median3(scalars[3 * group], scalars[3 * group + 1], scalars[3 * group + 2]);
}

// One item (n, group, or a band of groups) from its staged slices: statistics, cluster merge, y.
template <int U, bool BANDS>
__device__ __forceinline__ void mfa_gn_item(const mfa_gn_args &args, const mfa_gn_slice &s,
                                            const mfa_gn_buffer &buffer, float *table, const float *scalars) {
  mfa_gn_elem *xs = buffer.first;
  const bool has_residual = args.residual != nullptr;
  const mfa_gn_band &band = s.band;
  const float pivot = mfa_gn_pivot_of(scalars, band.mine);

  // 1. x' = x + residual (rounded as the caller's own sum would be; kept, and written to x_sum), and the
  // moments of this thread's x' - p (kSixteenBit: shifted sums; fp32: its mean, then the squares about
  // it), merged over the cluster (mfa_gn_group_totals).
  mfa_gn_sums sums = {0.0f, 0.0f, 0.0f};
  for (int u = threadIdx.x; u < s.units; u += blockDim.x) {
    float v[U];
    mfa_gn_unit_floats<U>(xs, u, v);
    if (has_residual) {
      float add[U];
      mfa_gn_unit_floats<U>(buffer.second, u, add);
#pragma unroll
      for (int k = 0; k < U; ++k) v[k] = mfa_gn_round(v[k] + add[k]);
      const mfa_gn_unit<U> summed = mfa_gn_unit_of<U>(v);
      mfa_gn_unit_store<U>(xs + u * U, summed);
      if (args.x_sum) mfa_gn_unit_store<U>(mfa_gn_group_of(args.x_sum, s) + mfa_gn_unit_offset<U>(args, s, u), summed);
    }
    if constexpr (!kSixteenBit) sums.count += U;  // 16-bit: the group's size, once
#pragma unroll
    for (int k = 0; k < U; ++k) {
      if constexpr (kSixteenBit) mfa_gn_sum_add(sums, v[k] - pivot);
      else sums.sum += v[k] - pivot;
    }
  }
  const mfa_gn_total *totals = mfa_gn_group_totals<U, BANDS>(s, xs, sums, pivot);
  const mfa_gn_group_stats mine = mfa_gn_stats_of(args, band, totals[band.mine]);
  const auto stats_of = [&](int group) {
    return band.groups == 1 ? mine : mfa_gn_stats_of(args, band, totals[group]);
  };

  // 2. y = act(x' * scale + shift) per channel (kSixteenBit; fp32: ((x' - p) - mean_p) * scale + b) with
  // scale = rstd * w, shift = b - (p + mean_p) * scale, rstd, p and mean_p those of the channel's group.
  float *scale = table, *shift = table + args.cpg;
  for (int j = threadIdx.x; j < args.cpg; j += blockDim.x) {
    const int group = band.groups == 1 ? 0 : j / static_cast<int>(band.cpg);
    const mfa_gn_group_stats stats = stats_of(group);
    scale[j] *= stats.rstd;
    if (kSixteenBit) shift[j] -= (mfa_gn_pivot_of(scalars, group) + stats.mean_p) * scale[j];
  }
  __syncthreads();
  mfa_gn_elem *y = mfa_gn_group_of(args.y, s);
  if constexpr (BANDS) {
    const int channel = mfa_gn_unit_channel<U>(args, s, threadIdx.x);
    float unit_scale[U], unit_shift[U];
    mfa_gn_unit_table<U>(scale, channel, unit_scale);
    mfa_gn_unit_table<U>(shift, channel, unit_shift);
    mfa_gn_column_walk walk = mfa_gn_column_walk_from<U>(args, s, threadIdx.x);
    for (int u = threadIdx.x; u < s.units; u += blockDim.x, walk.next()) {
      float v[U];
      mfa_gn_unit_floats<U>(xs, u, v);
#pragma unroll
      for (int k = 0; k < U; ++k) {
        const float centered = kSixteenBit ? v[k] : (v[k] - pivot) - mine.mean_p;
        v[k] = mfa_gn_activate(fmaf(centered, unit_scale[k], unit_shift[k]));
      }
      mfa_gn_unit_store<U>(y + walk.offset, mfa_gn_unit_of<U>(v));
    }
  } else {
    // (NCHW with its channel stepped and its output pointer advanced, fewer instructions a unit in a kernel
    // issuing on 65% of its cycles, ran 1.00-1.02x the time on the 128 MB tensors and the diffusion shapes:
    // H200, fp16, same process)
    for (int u = threadIdx.x; u < s.units; u += blockDim.x) {
      float v[U];
      mfa_gn_unit_floats<U>(xs, u, v);
      const int channel = mfa_gn_unit_channel<U>(args, s, u);
#pragma unroll
      for (int k = 0; k < U; ++k) {
        const int j = mfa_gn_element_channel(channel, k);
        const float centered = kSixteenBit ? v[k] : (v[k] - pivot) - mine.mean_p;
        v[k] = mfa_gn_activate(fmaf(centered, scale[j], shift[j]));
      }
      mfa_gn_unit_store<U>(y + mfa_gn_unit_offset<U>(args, s, u), mfa_gn_unit_of<U>(v));
    }
  }
  if (s.rank == 0 && threadIdx.x < band.groups) {
    const int group = threadIdx.x;
    const mfa_gn_group_stats stats = stats_of(group);
    if (args.mean) args.mean[s.item * band.groups + group] = mfa_gn_pivot_of(scalars, group) + stats.mean_p;
    if (args.rstd) args.rstd[s.item * band.groups + group] = stats.rstd;
  }
}

#else  // backward
// dx = rstd * w * dy^ - k1 - xhat * k2 with k1 = rstd * sum(w dy^) / M, k2 = rstd * sum(w dy^ xhat) / M
// (M = cpg * spatial) and dy^ = dy * act'(xhat * w + b). dweight and dbias sum (dy^ xhat, dy^) per channel
// over every sample: each block sums its slice's, then, where the cluster holds the group in every sample
// (args.cluster_samples == n), the cluster adds them up through distributed shared memory
// (mfa_gn_cluster_param_grads); otherwise they go to partials[n][c][rank] for mfa_gn_param_grads, a second
// launch. dy^ is computed once, rounded to the element type (as an unfused autograd's activation backward
// would store it) and kept in place of dy: the activation's derivative three times over made SiLU's
// backward 2-4x slower than none.

// The slice's (sum dy^ xhat, sum dy^) of group channel j: into `channels` (shared memory, read by the
// cluster) or, where that is null, the partials of mfa_gn_param_grads.
__device__ __forceinline__ void mfa_gn_store_channel_partial(const mfa_gn_args &args, const mfa_gn_slice &s,
                                                             float2 *channels, long long j, float a, float b) {
  if (channels) {
    channels[j] = make_float2(a, b);
    return;
  }
  float *partial = args.partials + ((s.n * args.c + s.group * args.cpg + j) * args.tiles + s.rank) * 2;
  partial[0] = a;
  partial[1] = b;
}

// dweight and dbias of the group's channels where the cluster holds the group in every sample: the sum
// of every block's `channels` in cluster rank order, block r writing channels r, r + blocks, ... (the
// cluster merge's barrier published them; the exit barrier keeps them alive while read).
__device__ __forceinline__ void mfa_gn_cluster_param_grads(const mfa_gn_args &args, const mfa_gn_slice &s,
                                                           const float2 *channels) {
  const unsigned blocks = s.cluster_blocks, rank = s.first_rank + s.rank;
  for (long long j = rank + static_cast<long long>(threadIdx.x) * blocks; j < args.cpg;
       j += static_cast<long long>(blockDim.x) * blocks) {
    const unsigned local = mfa_smem_addr(channels + j);
    float a = 0.0f, b = 0.0f;
    for (unsigned r = 0; r < blocks; ++r) {
      const unsigned remote = mfa_cluster_map(local, r);
      a += mfa_cluster_load_f32(remote);
      b += mfa_cluster_load_f32(remote + 4);
    }
    mfa_gn_param_store(args.dweight, args.weight_dtype, s.group * args.cpg + j, a);
    mfa_gn_param_store(args.dbias, args.weight_dtype, s.group * args.cpg + j, b);
  }
}

// A warp per column of the group: (sum dy^ xhat, sum dy^) over the slice's elements of each channel, 0
// where it has none. NCHW: a column is a channel, a run of units, and only the few columns the slice
// touches take a warp (a warp's shuffle tree per column of the group cost the diffusion shapes' backward
// more than its elementwise work); NHWC: a column is V channels (a unit, or half of one of 8), every
// row_units-th unit, read once for its V channels.
template <int U>
__device__ __forceinline__ void mfa_gn_channel_partials(const mfa_gn_args &args, const mfa_gn_slice &s,
                                                        const mfa_gn_elem *xs, const mfa_gn_elem *dy_hats,
                                                        float mean, float rstd, const float *scalars,
                                                        float2 *channels) {
  // NHWC reads its units as halves of at most 4 channels: 16 running sums a lane for units of 8 made
  // NVRTC 13.5 spill (fp16 NHWC backward, 48 registers).
  constexpr int V = MFA_GN_LAYOUT == MFA_GN_NHWC && U > 4 ? 4 : U, SPLIT = U / V;  // elements read at once
  constexpr int CHANNELS = MFA_GN_LAYOUT == MFA_GN_NHWC ? V : 1;  // per column
  const int lane = threadIdx.x & 31;
  // 32-bit: a group on this path holds < 2^31 units; below, in reads of V elements
  const int columns = static_cast<int>(args.cpg / CHANNELS), row_units = static_cast<int>(args.row_units) * SPLIT;
  const int first = static_cast<int>(s.first) * SPLIT, units = s.units * SPLIT;
  int touched_begin = 0, touched_end = columns;
#if MFA_GN_LAYOUT == MFA_GN_NCHW
  touched_begin = units > 0 ? first / row_units : columns;
  touched_end = units > 0 ? (first + units - 1) / row_units + 1 : columns;
  for (int column = threadIdx.x; column < columns; column += blockDim.x)
    if (column < touched_begin || column >= touched_end)
      mfa_gn_store_channel_partial(args, s, channels, column, 0.0f, 0.0f);
#endif
  for (int column = touched_begin + (threadIdx.x >> 5); column < touched_end; column += blockDim.x >> 5) {
#if MFA_GN_LAYOUT == MFA_GN_NCHW
    const int begin = max(0, column * row_units - first), end = min(units, (column + 1) * row_units - first);
    const int step = 1;
#else
    const int begin = ((column - first % row_units) % row_units + row_units) % row_units;
    const int end = units, step = row_units;
#endif
    if (s.band.groups > 1) {  // the column's group's (scalars: each group's mean and rstd), not the thread's
      const int group = column * CHANNELS / static_cast<int>(s.band.cpg);
      mean = scalars[2 * group], rstd = scalars[2 * group + 1];
    }
    float a[CHANNELS] = {}, b[CHANNELS] = {};
    for (int u = begin + lane * step; u < end; u += 32 * step) {
      float x[V], dy_hat[V];
      mfa_gn_unit_floats<V>(xs, u, x);
      mfa_gn_unit_floats<V>(dy_hats, u, dy_hat);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        a[k % CHANNELS] = fmaf(dy_hat[k], (x[k] - mean) * rstd, a[k % CHANNELS]);
        b[k % CHANNELS] += dy_hat[k];
      }
    }
#pragma unroll
    for (int i = 0; i < CHANNELS; ++i) {
      for (int offset = 16; offset > 0; offset >>= 1) {
        a[i] += __shfl_down_sync(0xffffffffu, a[i], offset);
        b[i] += __shfl_down_sync(0xffffffffu, b[i], offset);
      }
      if (lane == 0)
        mfa_gn_store_channel_partial(args, s, channels, static_cast<long long>(column) * CHANNELS + i, a[i], b[i]);
    }
  }
}

// dy^ of unit u's elements in place of dy (rounded to the element type, stored back when there is an
// activation), from their xhat, weight and bias.
template <int U>
__device__ __forceinline__ void mfa_gn_dy_hat(mfa_gn_elem *dys, int u, const float (&xhat)[U], float (&dy)[U],
                                              const float *weight, const float *bias, int channel) {
  if constexpr (MFA_GN_ACTIVATION != MFA_ACT_NONE) {
#pragma unroll
    for (int k = 0; k < U; ++k) {
      const int j = mfa_gn_element_channel(channel, k);
      dy[k] = mfa_gn_round(dy[k] * mfa_gn_activate_grad(fmaf(xhat[k], weight[j], bias[j])));
    }
    mfa_gn_unit_store<U>(dys + u * U, mfa_gn_unit_of<U>(dy));
  }
}

// Phase 1 where every run of 32 units (one warp-wide step of the elementwise loops) lies in one channel
// (args.column_slots: NCHW, channels and slices whole runs): a warp's runs visit the slice's channels in
// order, summing (dy^ xhat, dy^) per channel and flushing each channel's sums to slots[column][warp]
// when it moves on. The channels' sums are the partials of dweight and dbias, and weighted they give the
// group's sums: the backward needs no second pass over the slice for its parameter gradients (measured,
// H200: without it, fp16 16x256x128x128 took 146 us instead of 191). Returns the block's
// (sum w dy^ xhat, sum w dy^), spread over the lanes of warp 0.
template <int U>
__device__ __forceinline__ mfa_gn_acc mfa_gn_run_sums(const mfa_gn_args &args, const mfa_gn_slice &s,
                                                      const mfa_gn_elem *xs, mfa_gn_elem *dys, const float *weight,
                                                      const float *bias, float mean, float rstd, float2 *slots,
                                                      float2 *channels) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int first_column = static_cast<int>(mfa_gn_div32(s.first, args.div_row_units));
  const int touched =
      s.units > 0 ? static_cast<int>(mfa_gn_div32(s.first + s.units - 1, args.div_row_units)) - first_column + 1 : 0;
  for (int j = lane; j < touched; j += 32) slots[j * warps + warp] = make_float2(0.0f, 0.0f);  // columns it skips
  __syncwarp();
  int column = -1;
  // (sum dy^ (x' - mean), sum dy^) of this lane's runs in `column`: rstd, a factor of every xhat, is applied
  // once a column (without an activation xhat itself is never needed)
  mfa_gn_acc sum = mfa_gn_zero();
  const auto flush = [&] {
    const mfa_gn_acc total = mfa_gn_warp_merge(sum);
    if (lane == 0) slots[(column - first_column) * warps + warp] = make_float2(total.a * rstd, total.b);
  };
  mfa_gn_each_landed_chunk<U>(s, [&](int begin, int end) {  // chunks of whole block-strides: of `warps` runs
    for (int run = begin / 32 + warp; run * 32 < end; run += warps) {
      const int run_column = static_cast<int>(mfa_gn_div32(s.first + run * 32, args.div_row_units));
      if (run_column != column) {
        if (column >= 0) flush();
        column = run_column, sum = mfa_gn_zero();
      }
      const int u = run * 32 + lane;
      float centered[U], dy[U];
      mfa_gn_unit_floats<U>(xs, u, centered);
      mfa_gn_unit_floats<U>(dys, u, dy);
#pragma unroll
      for (int k = 0; k < U; ++k) centered[k] -= mean;
      if constexpr (MFA_GN_ACTIVATION != MFA_ACT_NONE) {
        float xhat[U];
#pragma unroll
        for (int k = 0; k < U; ++k) xhat[k] = centered[k] * rstd;
        mfa_gn_dy_hat<U>(dys, u, xhat, dy, weight, bias, column);
      }
#pragma unroll
      for (int k = 0; k < U; ++k) {
        sum.a = fmaf(dy[k], centered[k], sum.a);
        sum.b += dy[k];
      }
    }
  });
  if (column >= 0) flush();
  __syncthreads();
  mfa_gn_acc sums = mfa_gn_zero();
  // (true whenever this runs, but without the test NVRTC 13.5 spilled the fp32 SiLU variant)
  if (args.dweight)
    for (int j = threadIdx.x; j < args.cpg; j += blockDim.x)
      if (j < first_column || j >= first_column + touched)
        mfa_gn_store_channel_partial(args, s, channels, j, 0.0f, 0.0f);
  if (warp != 0) return sums;
  for (int j = lane; j < touched; j += 32) {
    float2 total = slots[j * warps];
    for (int w = 1; w < warps; ++w) total.x += slots[j * warps + w].x, total.y += slots[j * warps + w].y;
    if (args.dweight) mfa_gn_store_channel_partial(args, s, channels, first_column + j, total.x, total.y);
    sums.a = fmaf(weight[first_column + j], total.x, sums.a);
    sums.b = fmaf(weight[first_column + j], total.y, sums.b);
  }
  return sums;
}

template <int U, bool BANDS>
__device__ __forceinline__ void mfa_gn_item(const mfa_gn_args &args, const mfa_gn_slice &s,
                                            const mfa_gn_buffer &buffer, float *table, const float *scalars) {
  mfa_gn_elem *xs = buffer.first, *dys = buffer.second;  // dy, then dy^
  const float *weight = table, *bias = table + args.cpg;
  const float mean = scalars[2 * s.band.mine], rstd = scalars[2 * s.band.mine + 1];  // of this thread's group
  // after the table: mfa_gn_run_sums' slots, then (the cluster holds every sample) the block's channel sums
  float2 *const slots = reinterpret_cast<float2 *>(table + 2 * args.cpg);
  float2 *const channels = args.cluster_samples == args.n ? slots + args.column_slots : nullptr;

  // 1. the group's sums, and the slice's per channel for dweight and dbias
  mfa_gn_acc sums = mfa_gn_zero();  // (sum w dy^ xhat, sum w dy^)
  // (the column runs exist in NCHW only; compiled into the NHWC variants, the unused path took 10 more
  // registers a thread there, and 2x1280x32x32 NHWC backward 1.19x the time)
  if (MFA_GN_LAYOUT == MFA_GN_NCHW && args.column_slots) {
    if constexpr (MFA_GN_LAYOUT == MFA_GN_NCHW)
      sums = mfa_gn_run_sums<U>(args, s, xs, dys, weight, bias, mean, rstd, slots, channels);
  } else {
    mfa_gn_each_landed_chunk<U>(s, [&](int begin, int end) {
      if constexpr (BANDS) {  // one column: its weights in registers (dy^ reads the table, with an activation)
        const int channel = mfa_gn_unit_channel<U>(args, s, threadIdx.x);
        float unit_weight[U];
        mfa_gn_unit_table<U>(weight, channel, unit_weight);
        for (int u = begin + threadIdx.x; u < end; u += blockDim.x) {
          float xhat[U], dy[U];
          mfa_gn_unit_floats<U>(xs, u, xhat);
          mfa_gn_unit_floats<U>(dys, u, dy);
#pragma unroll
          for (int k = 0; k < U; ++k) xhat[k] = (xhat[k] - mean) * rstd;
          mfa_gn_dy_hat<U>(dys, u, xhat, dy, weight, bias, channel);
#pragma unroll
          for (int k = 0; k < U; ++k) {
            const float g = unit_weight[k] * dy[k];
            sums.a = fmaf(g, xhat[k], sums.a);
            sums.b += g;
          }
        }
      } else {
        for (int u = begin + threadIdx.x; u < end; u += blockDim.x) {
          float xhat[U], dy[U];
          mfa_gn_unit_floats<U>(xs, u, xhat);
          mfa_gn_unit_floats<U>(dys, u, dy);
#pragma unroll
          for (int k = 0; k < U; ++k) xhat[k] = (xhat[k] - mean) * rstd;
          const int channel = mfa_gn_unit_channel<U>(args, s, u);
          mfa_gn_dy_hat<U>(dys, u, xhat, dy, weight, bias, channel);
#pragma unroll
          for (int k = 0; k < U; ++k) {
            const float g = weight[mfa_gn_element_channel(channel, k)] * dy[k];
            sums.a = fmaf(g, xhat[k], sums.a);
            sums.b += g;
          }
        }
      }
    });
    if (channels && args.dweight) {  // the merge's barrier publishes them to the cluster
      __syncthreads();                // every dy^ stored
      mfa_gn_channel_partials<U>(args, s, xs, dys, mean, rstd, scalars, channels);
    }
  }
  sums = mfa_gn_cluster_merge<BANDS>(sums, s);
  const float inverse_count = 1.0f / static_cast<float>(s.band.cpg * args.spatial);
  const float k1 = rstd * sums.b * inverse_count, k2 = rstd * sums.a * inverse_count;

  // 2. dx = (rstd w) dy^ + (x' - mean) (-rstd k2) - k1: three instructions an element
  mfa_gn_elem *dx = mfa_gn_group_of(args.y, s);
  const float centered_scale = -rstd * k2;
  if constexpr (BANDS) {
    float scaled_weight[U];  // rstd w of the column's channels
    mfa_gn_unit_table<U>(weight, mfa_gn_unit_channel<U>(args, s, threadIdx.x), scaled_weight);
#pragma unroll
    for (int k = 0; k < U; ++k) scaled_weight[k] *= rstd;
    mfa_gn_column_walk walk = mfa_gn_column_walk_from<U>(args, s, threadIdx.x);
    for (int u = threadIdx.x; u < s.units; u += blockDim.x, walk.next()) {
      float x[U], dy_hat[U];
      mfa_gn_unit_floats<U>(xs, u, x);
      mfa_gn_unit_floats<U>(dys, u, dy_hat);
#pragma unroll
      for (int k = 0; k < U; ++k) x[k] = fmaf(scaled_weight[k], dy_hat[k], fmaf(x[k] - mean, centered_scale, -k1));
      mfa_gn_unit_store<U>(dx + walk.offset, mfa_gn_unit_of<U>(x));
    }
  } else {
    for (int u = threadIdx.x; u < s.units; u += blockDim.x) {
      float x[U], dy_hat[U];
      mfa_gn_unit_floats<U>(xs, u, x);
      mfa_gn_unit_floats<U>(dys, u, dy_hat);
      const int channel = mfa_gn_unit_channel<U>(args, s, u);
#pragma unroll
      for (int k = 0; k < U; ++k) {
        const int j = mfa_gn_element_channel(channel, k);
        x[k] = fmaf(rstd * weight[j], dy_hat[k], fmaf(x[k] - mean, centered_scale, -k1));
      }
      mfa_gn_unit_store<U>(dx + mfa_gn_unit_offset<U>(args, s, u), mfa_gn_unit_of<U>(x));
    }
  }
  if (!args.dweight) return;

  // 3. dweight and dbias: summed over the cluster, or the slice's channel sums for mfa_gn_param_grads,
  // after dx's stores are issued (their drain overlaps this pass; before the merge it cost up to 8%)
  if (channels) mfa_gn_cluster_param_grads(args, s, channels);
  else if (!args.column_slots) mfa_gn_channel_partials<U>(args, s, xs, dys, mean, rstd, scalars, nullptr);
}
#endif

// A cluster per (n, group). (A persistent grid staging item i + 1 while computing item i measured slower
// on the 128 MB NCHW tensor, 128 us against 92: half the blocks an SM, each cluster in lockstep per item.
// A cooperative grid holding one sample at a time, every block a contiguous chunk of it (full-line copies
// in NHWC too) and the group sums merged through global partials and arrival counts, spent 16-20 us a
// sample in its two grid barriers: 330 us for the 128 MB tensors, H200. A standalone form of it that sums
// unit u + 1 before waiting for unit u's exchange, units of 2-4 MB in rings of 3-6 bulk-copied slices,
// ran 154-158 us on the 128 MB fp16 NCHW tensors, and 130-142 us with the exchange left out: one or two
// blocks an SM streaming in lockstep stay far below the clusters' 84-92 us. A backward with no staging,
// its blocks reading x and dy for the sums and again (from L2) for dx, a cluster of 4 or 8 per group,
// ran fp16 NCHW 2x1280x64x64 in 31.0 us and 2x640x64x64 in 15.2 (H200, graphs of cold-L2 copies of its
// own; these kernels 35.1 and 19.1 in the benchmark's) before its dweight and dbias were even finished,
// still 1.6-1.75x a copy of the same bytes in those graphs (17.7 and 9.7 us), whose reads and writes
// overlap where a group's sums must be read in full before any of its dx is written.)
template <int U, bool BANDS>
__device__ __forceinline__ void mfa_gn_onepass(const mfa_gn_args &args) {
  // Launched with programmatic stream serialization: the block may be resident before the previous grid
  // in the stream is done (its launch latency hidden); it works out its slice meanwhile, waits for that
  // grid right before its first read of global memory, and only then lets the next grid launch. Against
  // both at the top: 0.90-0.99x the time of fp16 2x320 .. 2x1280 at 16^2 .. 64^2 (H200, one call); with
  // the launch let go first, the backward's param-grads kernel came early and those backwards took up
  // to 1.5x the time.
  __shared__ float scalars[BANDS ? 3 * MFA_GN_MAX_BAND : 3];  // forward: pivot candidates; backward: mean, rstd
  // A cluster per (n, group), or (cluster_samples > 1, backward) per group, holding it in cluster_samples
  // samples, blocks / cluster_samples blocks each.
  const unsigned cluster_blocks = mfa_cluster_blocks(), cluster_rank = mfa_cluster_rank();
  unsigned blocks = cluster_blocks, sample = 0;
  long long item = blockIdx.x / cluster_blocks;
  if (MFA_GN_PASS == MFA_GN_BACKWARD && args.cluster_samples > 1) {  // the forward's stay 1: no divisions
    blocks = cluster_blocks / args.cluster_samples, sample = cluster_rank / blocks;
    item += sample * args.groups;
  }
  mfa_gn_slice s = mfa_gn_slice_of<U>(args, item, cluster_rank - sample * blocks, blocks);
  s.first_rank = sample * blocks;
  s.cluster_blocks = cluster_blocks;
  s.band = mfa_gn_band_of<BANDS>(args);
  const mfa_gn_buffer buffer = mfa_gn_buffer_of(args);
  float *table = reinterpret_cast<float *>(mfa_gn_shared + args.streams * args.slice_bytes);
  mfa_grid_dependency_wait();
  mfa_grid_launch_dependents();
  const mfa_gn_table_entry entry = mfa_gn_table_load(args, s);
  mfa_gn_stage_item<U, BANDS>(args, s, buffer);
  mfa_gn_table_store(args, s, entry, table, scalars);
  static_assert(!kBulkStage<U> || kChunkedStage, "bulk copies are waited for by chunk, after the barrier below");
  if (!kChunkedStage) mfa_cp_async_wait<0>();  // its one chunk: the whole slice
  // the table (and the slice, unless its chunks are waited for as the first pass goes; the bulk copies'
  // mbarriers, initialised by thread 0: a wait on one not yet initialised is undefined)
  __syncthreads();
  mfa_gn_item<U, BANDS>(args, s, buffer, table, scalars);
  mfa_gn_cluster_exit(cluster_blocks);
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

// The one-pass entries, one per unit of U elements, and for items of several groups (args.band > 1:
// "bands", NHWC only), exist in every variant so that the host finds the same functions
// everywhere; it launches them only on sm_90+ (where they have a body) and with units of at most 16 bytes.
// Bands have entries of their own: their run-time group arithmetic in the single-group kernel cost the
// diffusion shapes (H100, fp16 2x1280x16x16 NHWC forward 4.92 -> 5.1-5.3 us).
#ifdef MFA_GN_HAS_ONEPASS
#define MFA_GN_ONEPASS_BODY(U, BANDS) \
  if constexpr (U * sizeof(mfa_gn_elem) <= 16 && (!BANDS || kHasBands)) mfa_gn_onepass<U, BANDS>(args);
#else
#define MFA_GN_ONEPASS_BODY(U, BANDS)
#endif
#define MFA_GN_ONEPASS_ENTRY(NAME, U, BANDS)                                                               \
  extern "C" __global__ void __launch_bounds__(MFA_GN_ONEPASS_BLOCK(BANDS)) NAME(const mfa_gn_args args) { \
    MFA_GN_ONEPASS_BODY(U, BANDS)                                                                          \
  }
MFA_GN_ONEPASS_ENTRY(mfa_gn_onepass_1, 1, false)
MFA_GN_ONEPASS_ENTRY(mfa_gn_onepass_2, 2, false)
MFA_GN_ONEPASS_ENTRY(mfa_gn_onepass_4, 4, false)
MFA_GN_ONEPASS_ENTRY(mfa_gn_onepass_8, 8, false)
MFA_GN_ONEPASS_ENTRY(mfa_gn_onepass_bands_1, 1, true)
MFA_GN_ONEPASS_ENTRY(mfa_gn_onepass_bands_2, 2, true)
MFA_GN_ONEPASS_ENTRY(mfa_gn_onepass_bands_4, 4, true)
MFA_GN_ONEPASS_ENTRY(mfa_gn_onepass_bands_8, 8, true)
// After the one-pass backward, launched before it ends (programmatic dependent launch, as the one-pass
// kernel): its wait returns once the partials are written.
extern "C" __global__ void __launch_bounds__(MFA_GN_THREADS) mfa_gn_param_grads(const mfa_gn_args args) {
#if MFA_GN_PASS == MFA_GN_BACKWARD
#ifdef MFA_GN_HAS_ONEPASS
  mfa_grid_dependency_wait();
  mfa_grid_launch_dependents();  // the next pass's blocks may wait on the SMs meanwhile
#endif
  mfa_gn_param_grads_pass(args);
#endif
}
