// attention_combine.cu: the split-KV merge. Split s left, for every query row, its output normalized
// over its own keys, O_s (fp32, [splits][rows][round16(d_v)]), and their log-sum-exp lse_s. The row's
// LSE is log sum_s exp(lse_s) and its output sum_s exp(lse_s - LSE) O_s; a split that saw no key has
// lse_s = -inf and weight 0, and a row no split saw keeps O = 0, LSE = -inf.
// One block per row (b, h, i): its threads share out the splits for the LSE (block reductions, in a fixed
// order), leave the weights in shared memory, then share out (column pair, split group): thread t sums
// pair t % PAIRS over the splits g, g + GROUPS, ... of its group g = t / PAIRS with all those loads in
// flight, and the groups' sums meet in shared memory in group order. (A warp per row, its lanes over the
// columns and every split's load after the last, took 9.4 us of a 4096-key decode's 23, H200 ncu.)

namespace mfa_attn_combine {

constexpr int THREADS = MFA_ATTN_COMBINE_THREADS, WARPS = THREADS / 32;
constexpr int DV = mfa_attn_round16(MFA_ATTN_D_V);
constexpr int PAIRS = DV / 2, GROUPS = THREADS / PAIRS;  // d_v <= 256: PAIRS <= 128, GROUPS >= 2
constexpr int kMaxSplits = 256;  // cpp/attention.cpp caps descriptor->splits there
static_assert(GROUPS >= 1, "a group holds every column pair");  // threads past GROUPS * PAIRS sit out

struct Shared {
  float weights[kMaxSplits];
  float warp_values[WARPS];
  float2 sums[GROUPS][PAIRS];
};

template <class Op>
__device__ __forceinline__ float block_reduce(float x, Op op, float *warp_values) {
  for (int offset = 16; offset > 0; offset /= 2) x = op(x, __shfl_xor_sync(0xffffffffu, x, offset));
  if (threadIdx.x % 32 == 0) warp_values[threadIdx.x / 32] = x;
  __syncthreads();
  float total = warp_values[0];
  for (int w = 1; w < WARPS; ++w) total = op(total, warp_values[w]);
  __syncthreads();  // warp_values is reused by the next reduction
  return total;
}

__device__ __forceinline__ void combine_row(const mfa_attn_args &args, long long row, long long rows, Shared &shared) {
  const long long per_batch = static_cast<long long>(args.heads_q) * args.seq_q;
  const int batch = static_cast<int>(row / per_batch);
  const int head = static_cast<int>(row % per_batch / args.seq_q), i = static_cast<int>(row % args.seq_q);
  long long token = i;
  if (args.cu_seqlens_q) {
    const int start = args.cu_seqlens_q[batch];
    if (i >= args.cu_seqlens_q[batch + 1] - start) return;  // past this sequence's end (the whole block)
    token += start;
  }

  float lse_max = MFA_ATTN_NEG_INF;
  for (int s = threadIdx.x; s < args.splits; s += THREADS) {
    shared.weights[s] = args.lse_partial[s * rows + row];
    lse_max = fmaxf(lse_max, shared.weights[s]);
  }
  lse_max = block_reduce(lse_max, [](float a, float b) { return fmaxf(a, b); }, shared.warp_values);
  const float base = lse_max == MFA_ATTN_NEG_INF ? 0.0f : lse_max;
  float total = 0.0f;
  for (int s = threadIdx.x; s < args.splits; s += THREADS) {
    shared.weights[s] = __expf(shared.weights[s] - base);
    total += shared.weights[s];
  }
  total = block_reduce(total, [](float a, float b) { return a + b; }, shared.warp_values);  // also orders weights
  const float lse = total > 0.0f ? base + __logf(total) : MFA_ATTN_NEG_INF;
  const float inverse = total > 0.0f ? 1.0f / total : 0.0f;

  const int pair = threadIdx.x % PAIRS, group = threadIdx.x / PAIRS, col = 2 * pair;
  float2 sum = make_float2(0.0f, 0.0f);
  const bool active = group < GROUPS && col < MFA_ATTN_D_V;
  if (active) {
#pragma unroll 8
    for (int s = group; s < args.splits; s += GROUPS) {
      const float2 part = *reinterpret_cast<const float2 *>(args.o_partial + (s * rows + row) * DV + col);
      sum.x += shared.weights[s] * part.x;
      sum.y += shared.weights[s] * part.y;
    }
  }
  if (active) shared.sums[group][pair] = sum;
  __syncthreads();
  if (group == 0 && active) {
    for (int g = 1; g < GROUPS; ++g) sum.x += shared.sums[g][pair].x, sum.y += shared.sums[g][pair].y;
    using mfa_attn_sm80::Elem;
    Elem *const out = static_cast<Elem *>(args.o) + batch * args.o_batch_stride * (args.cu_seqlens_q == nullptr) +
                      token * args.o_seq_stride + head * args.o_head_stride;
    *reinterpret_cast<unsigned *>(out + col) = mfa_attn_sm80::pack(sum.x * inverse, sum.y * inverse);
  }
  if (args.lse && threadIdx.x == 0) {
    const long long at = args.cu_seqlens_q ? head * args.lse_head_stride + token
                                           : batch * args.lse_batch_stride + head * args.lse_head_stride + i;
    args.lse[at] = lse;
  }
  __syncthreads();  // the next row rewrites the weights and sums
}

}  // namespace mfa_attn_combine

extern "C" __global__ void __launch_bounds__(MFA_ATTN_COMBINE_THREADS)
    mfa_attention_combine(const __grid_constant__ mfa_attn_args args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  mfa_grid_dependency_wait();  // launched dependent on the attention grid (sm_90+): its partials, complete
#endif
  const long long rows = static_cast<long long>(args.batch) * args.heads_q * args.seq_q;
  __shared__ mfa_attn_combine::Shared shared;
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) mfa_attn_combine::combine_row(args, row, rows, shared);
}
