// attention_combine.cu: the split-KV merge. Split s left, for every query row, its output normalized
// over its own keys, O_s (fp32, [splits][rows][round16(d_v)]), and their log-sum-exp lse_s. The row's
// LSE is log sum_s exp(lse_s) and its output sum_s exp(lse_s - LSE) O_s; a split that saw no key has
// lse_s = -inf and weight 0, and a row no split saw keeps O = 0, LSE = -inf.
//
// The merge runs after the attention grid, so its whole time is added: it is built for latency, about
// one memory round trip a row. A block's 8 warps take rows and a slice of 128 columns (a lane's 4 of
// them, one 16-byte load a split); a row gets as many warps as keep each to at most 8 splits
// (mfa_attn_combine_warps_per_row), which share the splits out (part p of P: p, p + P, ...). A warp
// issues its first loads of O_s before it reads the LSEs, so that both are in flight together, derives
// the row's LSE itself (lanes over the splits, shuffle trees: no block barrier) and scales its splits'
// O_s; the parts of a row meet in shared memory, added in part order (the same bits run after run).
// Measured (H200 ncu, before: a block per row, its threads over column pairs and a quarter of the
// splits each, the LSE through block reductions first): a 99-split decode step of 32 rows 15.1 -> 6.5 us.

namespace mfa_attn_combine {

constexpr int THREADS = MFA_ATTN_COMBINE_THREADS, WARPS = THREADS / 32;
constexpr int DV = mfa_attn_round16(MFA_ATTN_D_V);
constexpr int kMaxSplits = 256;  // cpp/attention.cpp caps descriptor->splits there
constexpr int kLseLoads = kMaxSplits / 32;
constexpr int kBatch = 8;  // O_s loads a warp keeps in flight: at most one round of them for 64 splits
static_assert(MFA_ATTN_COMBINE_SLICE == 32 * 4, "a lane's columns are one float4");

struct Shared {
  float weights[WARPS][kMaxSplits];
  float4 sums[WARPS][32];
};

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The row's LSE as every warp derives it: lanes over the splits, then shuffle trees. The weights
// exp(lse_s - base) go to the warp's own row of shared memory, which only its lanes read.
struct RowLse {
  float base, total;
};

__device__ __forceinline__ RowLse row_lse(const mfa_attn_args &args, long long row, long long rows,
                                          float (&weights)[kMaxSplits]) {
  const int lane = threadIdx.x % 32;
  float lse[kLseLoads];
  float lse_max = MFA_ATTN_NEG_INF;
#pragma unroll
  for (int i = 0; i < kLseLoads; ++i) {
    const int s = lane + 32 * i;
    lse[i] = s < args.splits ? args.lse_partial[s * rows + row] : MFA_ATTN_NEG_INF;
    lse_max = fmaxf(lse_max, lse[i]);
  }
  lse_max = warp_max(lse_max);
  RowLse r;
  r.base = lse_max == MFA_ATTN_NEG_INF ? 0.0f : lse_max;
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kLseLoads; ++i) {
    const float weight = __expf(lse[i] - r.base);  // exp(-inf) = 0: splits past the count and empty ones
    weights[lane + 32 * i] = weight;
    total += weight;
  }
  r.total = warp_sum(total);
  __syncwarp();  // the weights' stores before any lane reads them
  return r;
}

__device__ __forceinline__ float4 load_part(const float *partial, long long split_stride, int s, int splits,
                                            bool active) {
  return active && s < splits ? *reinterpret_cast<const float4 *>(partial + s * split_stride)
                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

// Part `part` of `parts` of the row's weighted sum: splits part, part + parts, ..., kBatch loads a round.
__device__ __forceinline__ float4 weighted_sum(const mfa_attn_args &args, long long row, long long rows, int col,
                                               int part, int parts, float (&weights)[kMaxSplits], RowLse &lse) {
  const bool active = col < DV;
  const float *const partial = args.o_partial + row * DV + col;
  const long long split_stride = rows * DV;
  float4 loaded[kBatch];
#pragma unroll
  for (int b = 0; b < kBatch; ++b) loaded[b] = load_part(partial, split_stride, part + b * parts, args.splits, active);
  lse = row_lse(args, row, rows, weights);
  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int first = part;; first += kBatch * parts) {
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int s = first + b * parts;
      const float weight = s < args.splits ? weights[s] : 0.0f;
      sum.x += weight * loaded[b].x, sum.y += weight * loaded[b].y;
      sum.z += weight * loaded[b].z, sum.w += weight * loaded[b].w;
    }
    const int next = first + kBatch * parts;
    if (next >= args.splits) return sum;
#pragma unroll
    for (int b = 0; b < kBatch; ++b) loaded[b] = load_part(partial, split_stride, next + b * parts, args.splits, active);
  }
}

struct RowPlace {
  int batch, head, i;
  long long token;
  bool live;  // a row of the problem, within its sequence (varlen rows run to the longest one)
};

__device__ __forceinline__ RowPlace place_of(const mfa_attn_args &args, long long row, long long rows) {
  const long long per_batch = static_cast<long long>(args.heads_q) * args.seq_q;
  RowPlace p;
  p.live = row < rows;
  row = p.live ? row : 0;
  p.batch = static_cast<int>(row / per_batch);
  p.head = static_cast<int>(row % per_batch / args.seq_q);
  p.i = static_cast<int>(row % args.seq_q);
  p.token = p.i;
  if (args.cu_seqlens_q) {
    const int start = args.cu_seqlens_q[p.batch];
    p.live = p.live && p.i < args.cu_seqlens_q[p.batch + 1] - start;
    p.token += start;
  }
  return p;
}

__device__ __forceinline__ void store_row(const mfa_attn_args &args, const RowPlace &p, int col, float4 sum,
                                          const RowLse &lse) {
  const float inverse = lse.total > 0.0f ? 1.0f / lse.total : 0.0f;
  using mfa_attn_sm80::Elem;
  Elem *const out = static_cast<Elem *>(args.o) + p.batch * args.o_batch_stride * (args.cu_seqlens_q == nullptr) +
                    p.token * args.o_seq_stride + p.head * args.o_head_stride;
  if (col < MFA_ATTN_D_V) {  // d_v is a multiple of 8: a lane's 4 columns are all in or all out
    *reinterpret_cast<unsigned *>(out + col) = mfa_attn_sm80::pack(sum.x * inverse, sum.y * inverse);
    *reinterpret_cast<unsigned *>(out + col + 2) = mfa_attn_sm80::pack(sum.z * inverse, sum.w * inverse);
  }
  if (args.lse && col == 0) {
    const long long at = args.cu_seqlens_q ? p.head * args.lse_head_stride + p.token
                                           : p.batch * args.lse_batch_stride + p.head * args.lse_head_stride + p.i;
    args.lse[at] = lse.total > 0.0f ? lse.base + __logf(lse.total) : MFA_ATTN_NEG_INF;
  }
}

}  // namespace mfa_attn_combine

// Grid: (row groups of mfa_attn_combine_rows_per_block(splits), slices of 128 columns).
extern "C" __global__ void __launch_bounds__(MFA_ATTN_COMBINE_THREADS)
    mfa_attention_combine(const __grid_constant__ mfa_attn_args args) {
  using namespace mfa_attn_combine;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  mfa_grid_dependency_wait();  // launched dependent on the attention grid (sm_90+): its partials, complete
#endif
  __shared__ Shared shared;
  const long long rows = static_cast<long long>(args.batch) * args.heads_q * args.seq_q;
  const int parts = mfa_attn_combine_warps_per_row(args.splits);
  const int rows_per_block = mfa_attn_combine_rows_per_block(args.splits);
  const int warp = threadIdx.x / 32, part = warp % parts;
  const int col = blockIdx.y * MFA_ATTN_COMBINE_SLICE + threadIdx.x % 32 * 4;
  for (long long row0 = static_cast<long long>(blockIdx.x) * rows_per_block; row0 < rows;
       row0 += static_cast<long long>(gridDim.x) * rows_per_block) {
    const long long row = row0 + warp / parts;
    const RowPlace place = place_of(args, row, rows);
    RowLse lse{};
    float4 sum{};
    if (place.live) sum = weighted_sum(args, row, rows, col, part, parts, shared.weights[warp], lse);
    shared.sums[warp][threadIdx.x % 32] = sum;
    __syncthreads();
    if (place.live && part == 0) {
      for (int other = 1; other < parts; ++other) {
        const float4 add = shared.sums[warp + other][threadIdx.x % 32];
        sum.x += add.x, sum.y += add.y, sum.z += add.z, sum.w += add.w;
      }
      store_row(args, place, col, sum, lse);
    }
    __syncthreads();  // the next rows rewrite the sums
  }
}
