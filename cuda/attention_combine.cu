// attention_combine.cu: the split-KV merge. Split s left, for every query row, its output normalized
// over its own keys, O_s (fp32, [splits][rows][round16(d_v)]), and their log-sum-exp lse_s. The row's
// LSE is log sum_s exp(lse_s) and its output sum_s exp(lse_s - LSE) O_s; a split that saw no key has
// lse_s = -inf and weight 0, and a row no split saw keeps O = 0, LSE = -inf.
// One warp per row (b, h, i). The lanes share out the splits for the LSE (a warp reduction) and leave
// the weights in shared memory, then share out the columns, each lane summing its columns over the
// splits with several loads in flight (with few rows, the decode case, a chain of one dependent load
// per split made this kernel cost as much as the attention itself).

namespace mfa_attn_combine {

constexpr int DV = mfa_attn_round16(MFA_ATTN_D_V);
constexpr int kMaxSplits = 256;  // cpp/attention.cpp caps descriptor->splits there

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ void combine_row(const mfa_attn_args &args, long long row, long long rows, float *weights) {
  const int lane = threadIdx.x % 32;
  const long long per_batch = static_cast<long long>(args.heads_q) * args.seq_q;
  const int batch = static_cast<int>(row / per_batch);
  const int head = static_cast<int>(row % per_batch / args.seq_q), i = static_cast<int>(row % args.seq_q);
  long long token = i;
  if (args.cu_seqlens_q) {
    const int start = args.cu_seqlens_q[batch];
    if (i >= args.cu_seqlens_q[batch + 1] - start) return;  // past this sequence's end
    token += start;
  }

  float lse_max = MFA_ATTN_NEG_INF;
  for (int s = lane; s < args.splits; s += 32) {
    weights[s] = args.lse_partial[s * rows + row];
    lse_max = fmaxf(lse_max, weights[s]);
  }
  lse_max = warp_max(lse_max);
  const float base = lse_max == MFA_ATTN_NEG_INF ? 0.0f : lse_max;
  float total = 0.0f;
  for (int s = lane; s < args.splits; s += 32) {
    weights[s] = __expf(weights[s] - base);
    total += weights[s];
  }
  total = warp_sum(total);
  const float lse = total > 0.0f ? base + __logf(total) : MFA_ATTN_NEG_INF;
  const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
  __syncwarp();

  typedef unsigned short Elem;
  Elem *const out = static_cast<Elem *>(args.o) + batch * args.o_batch_stride * (args.cu_seqlens_q == nullptr) +
                    token * args.o_seq_stride + head * args.o_head_stride;
  for (int col = lane * 2; col < MFA_ATTN_D_V; col += 64) {
    float x = 0.0f, y = 0.0f;
#pragma unroll 8
    for (int s = 0; s < args.splits; ++s) {
      const float2 part = *reinterpret_cast<const float2 *>(args.o_partial + (s * rows + row) * DV + col);
      x += weights[s] * part.x;
      y += weights[s] * part.y;
    }
    x *= inverse;
    y *= inverse;
#if MFA_ATTN_DTYPE == MFA_ATTN_F16
    const unsigned bits = mfa_f32_to_f16(x) | (static_cast<unsigned>(mfa_f32_to_f16(y)) << 16);
#else
    const unsigned bits = mfa_f32_to_bf16(x) | (static_cast<unsigned>(mfa_f32_to_bf16(y)) << 16);
#endif
    *reinterpret_cast<unsigned *>(out + col) = bits;
  }
  if (args.lse && lane == 0) {
    const long long at = args.cu_seqlens_q ? head * args.lse_head_stride + token
                                           : batch * args.lse_batch_stride + head * args.lse_head_stride + i;
    args.lse[at] = lse;
  }
}

}  // namespace mfa_attn_combine

extern "C" __global__ void __launch_bounds__(MFA_ATTN_COMBINE_THREADS)
    mfa_attention_combine(const __grid_constant__ mfa_attn_args args) {
  const long long rows = static_cast<long long>(args.batch) * args.heads_q * args.seq_q;
  const long long warps = static_cast<long long>(gridDim.x) * (MFA_ATTN_COMBINE_THREADS / 32);
  __shared__ float weights[MFA_ATTN_COMBINE_THREADS / 32][mfa_attn_combine::kMaxSplits];
  for (long long row = blockIdx.x * (MFA_ATTN_COMBINE_THREADS / 32) + threadIdx.x / 32; row < rows; row += warps) {
    mfa_attn_combine::combine_row(args, row, rows, weights[threadIdx.x / 32]);
    __syncwarp();  // the next row rewrites this warp's weights
  }
}
