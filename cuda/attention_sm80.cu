// attention_sm80.cu: the portable FlashAttention-2 forward (cp.async + ldmatrix + mma.sync; sm_80 and
// later, Hopper included), and the split-KV combine (attention_combine.cu, included at the end).
//
// One block owns BLOCK_M = 64 query rows of one (batch, head), 16 per warp, and walks the key blocks its
// mask leaves visible (split-KV: its split's share of them). The decode variant's block owns 16 rows that
// all its warps share, each warp taking WARP_N = 16 keys of every key block; at the end the warps' partial
// softmaxes (O, running max, sum) merge in shared memory. With args.pack_gqa (decode under GQA) the rows
// are (query, head) pairs of the heads sharing one key/value head, so each K/V block is read once for all
// of them. Per key block, per warp:
//   S = Q K^T          Q from shared memory, the warp's keys of K block j in shared memory (mma.sync
//                      m16n8k16, fp32 sums)
//   online softmax     exp2 domain: scores scaled by scale * log2(e); the running row max m and sum l;
//                      O is rescaled by 2^(m_old - m_new); masks only on blocks that cross a boundary
//   O += P V           P stays in registers, re-packed as the A operand; V block j in shared memory
// K and V have two stages each: blocks j + 1 load while block j is multiplied, so a block always has its
// next 2 tiles in flight (decode is a stream of K/V reads; a single stage left it latency-bound; three or
// four stages in the decode block measured no faster).
// Epilogue: O / l and LSE = (m + log2 l) ln 2, or, split-KV, unnormalized-free partials (O / l, LSE) in
// fp32 for the combine. A row that sees no key gets O = 0 and LSE = -inf (its running max stays -inf
// and every exponential is taken against 0 instead, so no inf - inf ever occurs).

namespace mfa_attn_sm80 {

static_assert(MFA_ATTN_D_QK % 8 == 0 && MFA_ATTN_D_QK >= 8 && MFA_ATTN_D_QK <= 256, "d_qk: multiple of 8, <= 256");
static_assert(MFA_ATTN_D_V % 8 == 0 && MFA_ATTN_D_V >= 8 && MFA_ATTN_D_V <= 256, "d_v: multiple of 8, <= 256");

// ----- the variant -----
constexpr bool kDecode = MFA_ATTN_SM80_DECODE != 0;
constexpr int BLOCK_M = mfa_attn_sm80_block_m(kDecode);
constexpr int THREADS = mfa_attn_sm80_threads(MFA_ATTN_D_QK, MFA_ATTN_D_V, kDecode);
constexpr int BLOCK_N = mfa_attn_sm80_block_n(MFA_ATTN_D_QK, MFA_ATTN_D_V);
// Warps that share a key block (decode) and the keys each multiplies.
constexpr int KEY_WARPS = mfa_attn_sm80_key_warps(MFA_ATTN_D_QK, MFA_ATTN_D_V, kDecode), WARP_N = BLOCK_N / KEY_WARPS;
// Head dimensions padded to the mma's k = 16 (the padding is zero-filled on load, so it adds nothing).
constexpr int DQK = mfa_attn_round16(MFA_ATTN_D_QK), DV = mfa_attn_round16(MFA_ATTN_D_V);
constexpr int LD_QK = DQK + MFA_ATTN_SM80_PAD, LD_V = DV + MFA_ATTN_SM80_PAD;
constexpr bool kSoftcap = MFA_ATTN_SOFTCAP != 0;
constexpr bool kMasked = MFA_ATTN_MASK != MFA_ATTN_MASK_NONE;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
static_assert(THREADS / 32 / KEY_WARPS * 16 == BLOCK_M && WARP_N % 16 == 0, "16 query rows, 16k keys a warp");
static_assert(2 * (BLOCK_M * LD_QK + 2 * BLOCK_N * (LD_QK + LD_V)) ==
                  mfa_attn_sm80_smem_bytes(MFA_ATTN_D_QK, MFA_ATTN_D_V, kDecode), "attention.cuh disagrees");

typedef unsigned short Elem;  // fp16 / bf16 bits

__device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if MFA_ATTN_DTYPE == MFA_ATTN_F16
  mfa_mma_m16n8k16_f16(d, a, b);
#else
  mfa_mma_m16n8k16_bf16(d, a, b);
#endif
}
__device__ __forceinline__ Elem from_float(float x) {
#if MFA_ATTN_DTYPE == MFA_ATTN_F16
  return mfa_f32_to_f16(x);
#else
  return mfa_f32_to_bf16(x);
#endif
}
__device__ __forceinline__ unsigned pack(float lo, float hi) {
  return static_cast<unsigned>(from_float(lo)) | (static_cast<unsigned>(from_float(hi)) << 16);
}

// ----- one (batch, head, query block, split): where its rows and keys are -----
struct Sequence {
  long long q_token0, k_token0;  // first token of the sequence in q/o and in k/v
  int len_q, len_k;
};

__device__ __forceinline__ Sequence sequence_of(const mfa_attn_args &args, int batch) {
  Sequence s;
  if (args.cu_seqlens_q) {
    s.q_token0 = args.cu_seqlens_q[batch];
    s.k_token0 = args.cu_seqlens_k[batch];
    s.len_q = args.cu_seqlens_q[batch + 1] - static_cast<int>(s.q_token0);
    s.len_k = args.cu_seqlens_k[batch + 1] - static_cast<int>(s.k_token0);
  } else {
    s.q_token0 = s.k_token0 = 0;
    s.len_q = args.seq_q;
    s.len_k = args.seq_k;
  }
  return s;
}

// The visible window of query row i is [i + shift - left, i + shift + right], shift = len_k - len_q
// (bottom-right alignment); -1 leaves a side unbounded.
struct Window {
  int left, right, shift;
};

__device__ __forceinline__ Window window_of(const mfa_attn_args &args, const Sequence &s) {
#if MFA_ATTN_MASK == MFA_ATTN_MASK_CAUSAL
  return {-1, 0, s.len_k - s.len_q};
#elif MFA_ATTN_MASK == MFA_ATTN_MASK_WINDOW
  return {args.window_left, args.window_right, s.len_k - s.len_q};
#else
  return {-1, -1, s.len_k - s.len_q};
#endif
}

// Key blocks [first, last) that hold a visible key for some row of [row0, row_last].
__device__ __forceinline__ void key_block_range(const Window &w, int row0, int row_last, int len_k, int &first,
                                                int &last) {
  const int lo = w.left < 0 ? 0 : max(0, row0 + w.shift - w.left);
  const int hi = w.right < 0 ? len_k : min(len_k, row_last + w.shift + w.right + 1);
  first = lo / BLOCK_N;
  last = hi > lo ? (hi + BLOCK_N - 1) / BLOCK_N : first;
}

// Whether every (row, key) of the block is visible, so that no element needs the mask.
__device__ __forceinline__ bool block_fully_visible(const Window &w, int row0, int row_last, int key0, int len_k) {
  if (key0 + BLOCK_N > len_k) return false;
  if (w.left >= 0 && key0 < row_last + w.shift - w.left) return false;
  if (w.right >= 0 && key0 + BLOCK_N - 1 > row0 + w.shift + w.right) return false;
  return true;
}

// ----- global -> shared copies: ROWS x D_PAD tiles, 16-byte chunks, zero-filled outside the tensor -----
// A thread keeps one column chunk and walks rows kRowsPerPass apart, so that a copy costs a pointer step:
// a chunk's row and column from its index (a division and a 64-bit multiply each) had taken ~45
// instructions a 16-byte copy, leaving the (then one-warp) decode block issue-bound (a warp instruction
// every 2.1 cycles, H200 ncu). Tiles wholly inside the tensor skip the zero-fill's operand selects.
template <int ROWS, int D_PAD, int LD>
__device__ __forceinline__ void load_tile(Elem *tile, const Elem *base, long long row_stride, int rows_valid,
                                          int d_valid) {
  constexpr int kChunksPerRow = D_PAD / 8, kRowsPerPass = THREADS / kChunksPerRow;
  constexpr int kPasses = (ROWS + kRowsPerPass - 1) / kRowsPerPass;
  static_assert(kRowsPerPass >= 1, "a pass copies whole rows");
  const int row0 = threadIdx.x / kChunksPerRow, col = threadIdx.x % kChunksPerRow * 8;
  if (row0 >= kRowsPerPass) return;  // the threads past a pass's whole rows
  const Elem *src = base + row0 * row_stride + col;
  Elem *const dst = tile + row0 * LD + col;
  const long long step = kRowsPerPass * row_stride;
  if (rows_valid >= ROWS && col < d_valid) {
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass, src += step)
      if (row0 + pass * kRowsPerPass < ROWS) mfa_cp_async<16>(dst + pass * kRowsPerPass * LD, src);
    return;
  }
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass, src += step) {
    const int row = row0 + pass * kRowsPerPass;
    const bool valid = row < rows_valid && col < d_valid;
    if (row < ROWS) mfa_cp_async_16_zfill(dst + pass * kRowsPerPass * LD, valid ? src : base, valid ? 16u : 0u);
  }
}

// The Q tile: packed row m is query m / group of head m % group of the block's head group.
__device__ __forceinline__ void load_q(Elem *tile, const Elem *q, const mfa_attn_args &args, int row0, int rows_valid,
                                       int group) {
  constexpr int kChunksPerRow = DQK / 8;
  for (int chunk = threadIdx.x; chunk < BLOCK_M * kChunksPerRow; chunk += THREADS) {
    const int row = chunk / kChunksPerRow, col = chunk % kChunksPerRow * 8;
    const bool valid = row < rows_valid && col < MFA_ATTN_D_QK;
    const int m = row0 + row;
    const Elem *src = valid ? q + (m / group) * args.q_seq_stride + (m % group) * args.q_head_stride + col : q;
    mfa_cp_async_16_zfill(tile + row * LD_QK + col, src, valid ? 16u : 0u);
  }
}

// The decode variant's merge of its key warps' partial softmaxes of the same rows into warp 0's, through
// `scratch` (shared memory the K/V stages free once every warp is past the key loop): O and the row sums
// rescaled to the larger running max, warp by warp. Lane l of every warp holds the same rows and columns.
// Returns whether this warp goes on to the epilogue (warp 0).
constexpr int kMergeFloats = DV / 2 + 4;  // a thread's O fragment, two row maxes, two row sums
static_assert((KEY_WARPS - 1) * kMergeFloats * 32 * 4 <= 2 * 2 * BLOCK_N * (LD_QK + LD_V),
              "the merge fits the K/V stages");
__device__ __forceinline__ bool merge_key_warps(float (&o_acc)[DV / 8][4], float (&row_max)[2], float (&row_sum)[2],
                                                float *scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // every warp is done with the K/V stages
  if (warp > 0) {
    float *const mine = scratch + (warp - 1) * kMergeFloats * 32 + lane;
#pragma unroll
    for (int n = 0; n < DV / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) mine[(n * 4 + e) * 32] = o_acc[n][e];
#pragma unroll
    for (int r = 0; r < 2; ++r) mine[(DV / 2 + r) * 32] = row_max[r], mine[(DV / 2 + 2 + r) * 32] = row_sum[r];
  }
  __syncthreads();
  if (warp > 0) return false;
  for (int w = 1; w < KEY_WARPS; ++w) {
    const float *const theirs = scratch + (w - 1) * kMergeFloats * 32 + lane;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float their_max = theirs[(DV / 2 + r) * 32], both = fmaxf(row_max[r], their_max);
      const float base = both == MFA_ATTN_NEG_INF ? 0.0f : both;  // neither has seen a visible key
      const float mine_scale = mfa_exp2_approx(row_max[r] - base), their_scale = mfa_exp2_approx(their_max - base);
      row_sum[r] = row_sum[r] * mine_scale + theirs[(DV / 2 + 2 + r) * 32] * their_scale;
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) {
        o_acc[n][2 * r] = o_acc[n][2 * r] * mine_scale + theirs[(n * 4 + 2 * r) * 32] * their_scale;
        o_acc[n][2 * r + 1] = o_acc[n][2 * r + 1] * mine_scale + theirs[(n * 4 + 2 * r + 1) * 32] * their_scale;
      }
      row_max[r] = both;
    }
  }
  return true;
}

// ----- the block -----
__device__ __forceinline__ void attention_block(const mfa_attn_args &args) {
  extern __shared__ __align__(16) unsigned char mfa_attn_smem[];
  Elem *const sQ = reinterpret_cast<Elem *>(mfa_attn_smem);
  auto sK = [&](int block) { return sQ + BLOCK_M * LD_QK + block % 2 * (BLOCK_N * LD_QK); };
  auto sV = [&](int block) { return sQ + (BLOCK_M + 2 * BLOCK_N) * LD_QK + block % 2 * (BLOCK_N * LD_V); };

  const int splits = args.splits;
  const int batch = blockIdx.z / splits, split = blockIdx.z % splits;
  // Packed: the block's rows run over (query, head) of the group; else over the queries of one head.
  const int group = args.pack_gqa ? args.heads_q / args.heads_kv : 1;
  const int kv_head = args.pack_gqa ? blockIdx.y : blockIdx.y / (args.heads_q / args.heads_kv);
  const int head0 = args.pack_gqa ? kv_head * group : blockIdx.y;  // the head of packed row 0
  const Sequence seq = sequence_of(args, batch);
  const int rows = seq.len_q * group, m0 = blockIdx.x * BLOCK_M;
  if (m0 >= rows) return;  // varlen: past this sequence's end
  const int row0 = m0 / group, row_last = (min(m0 + BLOCK_M, rows) - 1) / group;  // the queries it spans
  const Window window = window_of(args, seq);
  int first, last;
  key_block_range(window, row0, row_last, seq.len_k, first, last);
  if (splits > 1) {
    first = max(first, split * args.kv_blocks_per_split);
    last = min(last, (split + 1) * args.kv_blocks_per_split);
    last = max(last, first);
  }

  const Elem *const q = static_cast<const Elem *>(args.q) + batch * args.q_batch_stride * (args.cu_seqlens_q == nullptr) +
                        seq.q_token0 * args.q_seq_stride + head0 * args.q_head_stride;
  const Elem *const k = static_cast<const Elem *>(args.k) + batch * args.k_batch_stride * (args.cu_seqlens_k == nullptr) +
                        seq.k_token0 * args.k_seq_stride + kv_head * args.k_head_stride;
  const Elem *const v = static_cast<const Elem *>(args.v) + batch * args.v_batch_stride * (args.cu_seqlens_k == nullptr) +
                        seq.k_token0 * args.v_seq_stride + kv_head * args.v_head_stride;
  auto load_kv = [&](int block) {
    load_tile<BLOCK_N, DQK, LD_QK>(sK(block), k + block * BLOCK_N * args.k_seq_stride, args.k_seq_stride,
                                   seq.len_k - block * BLOCK_N, MFA_ATTN_D_QK);
    load_tile<BLOCK_N, DV, LD_V>(sV(block), v + block * BLOCK_N * args.v_seq_stride, args.v_seq_stride,
                                 seq.len_k - block * BLOCK_N, MFA_ATTN_D_V);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_warp = warp / KEY_WARPS, warp_key0 = warp % KEY_WARPS * WARP_N;  // its rows and keys of a block
  const int lane_row = lane / 4, quad = lane % 4;  // mma fragment coordinates: row, column pair
  // This thread's two rows (lane_row and lane_row + 8 of the warp's 16): packed indices, and queries.
  const int my_m[2] = {m0 + row_warp * 16 + lane_row, m0 + row_warp * 16 + lane_row + 8};
  const int my_row[2] = {my_m[0] / group, my_m[1] / group};

  float o_acc[DV / 8][4];
  for (int n = 0; n < DV / 8; ++n)
    for (int e = 0; e < 4; ++e) o_acc[n][e] = 0.0f;
  float row_max[2] = {MFA_ATTN_NEG_INF, MFA_ATTN_NEG_INF}, row_sum[2] = {0.0f, 0.0f};

  // Softcap: s -> softcap * tanh(s * scale / softcap), then into the exp2 domain.
  const float cap_in = kSoftcap ? args.scale_log2 / (kLog2e * args.softcap) : 0.0f;
  const float cap_out = kSoftcap ? args.softcap * kLog2e : 0.0f;

  load_q(sQ, q, args, m0, rows - m0, group);
  if (first < last) load_kv(first);
  mfa_cp_async_commit();

  for (int block = first; block < last; ++block) {
    __syncthreads();  // every warp is done with block - 1, whose stage block + 1 now takes
    if (block + 1 < last) load_kv(block + 1);
    mfa_cp_async_commit();  // possibly empty: "block has landed" is always "at most 1 group pending"
    mfa_cp_async_wait<1>();
    __syncthreads();  // K and V of this block (and Q) landed for every thread
    const Elem *const tile_k = sK(block), *const tile_v = sV(block);

    // S = Q K^T for the warp's 16 rows x WARP_N keys.
    float s[WARP_N / 8][4];
    for (int n = 0; n < WARP_N / 8; ++n)
      for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DQK / 16; ++kk) {
      unsigned a[4];
      mfa_ldmatrix_x4(a, sQ + (row_warp * 16 + lane % 16) * LD_QK + kk * 16 + lane / 16 * 8);
#pragma unroll
      for (int n = 0; n < WARP_N / 16; ++n) {
        unsigned b[4];
        mfa_ldmatrix_x4(b, tile_k + (warp_key0 + n * 16 + lane % 8 + lane / 16 * 8) * LD_QK + kk * 16 +
                               lane / 8 % 2 * 8);
        const unsigned b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        mma(s[2 * n], a, b0);
        mma(s[2 * n + 1], a, b1);
      }
    }

    // Scores into the exp2 domain (soft-capped), masked where the block crosses a boundary.
    const int key0 = block * BLOCK_N;
    const bool needs_mask = !block_fully_visible(window, row0, row_last, key0, seq.len_k);
#pragma unroll
    for (int n = 0; n < WARP_N / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = kSoftcap ? cap_out * (1.0f - 2.0f / (mfa_exp2_approx(2.0f * kLog2e * cap_in * s[n][e]) + 1.0f))
                           : s[n][e] * args.scale_log2;
        if (needs_mask) {
          const int key = key0 + warp_key0 + n * 8 + quad * 2 + e % 2, row = my_row[e / 2];
          const bool visible = key < seq.len_k &&
                               (!kMasked || window.left < 0 || key >= row + window.shift - window.left) &&
                               (!kMasked || window.right < 0 || key <= row + window.shift + window.right);
          if (!visible) x = MFA_ATTN_NEG_INF;
        }
        s[n][e] = x;
      }

    // Online softmax: new running max, rescale of O and of the sum, probabilities.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float block_max = row_max[r];
      for (int n = 0; n < WARP_N / 8; ++n) block_max = fmaxf(block_max, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 1));
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 2));
      const float base = block_max == MFA_ATTN_NEG_INF ? 0.0f : block_max;  // a row with nothing visible yet
      const float rescale = mfa_exp2_approx(row_max[r] - base);
      row_max[r] = block_max;
      float sum = 0.0f;
      for (int n = 0; n < WARP_N / 8; ++n) {
        s[n][2 * r] = mfa_exp2_approx(s[n][2 * r] - base);
        s[n][2 * r + 1] = mfa_exp2_approx(s[n][2 * r + 1] - base);
        sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * rescale + sum;  // this thread's columns; the quad is summed at the end
      for (int n = 0; n < DV / 8; ++n) {
        o_acc[n][2 * r] *= rescale;
        o_acc[n][2 * r + 1] *= rescale;
      }
    }

    // O += P V: the score fragments of keys 16kk..16kk+15 are exactly the A fragment of that k-step.
#pragma unroll
    for (int kk = 0; kk < WARP_N / 16; ++kk) {
      const unsigned p[4] = {pack(s[2 * kk][0], s[2 * kk][1]), pack(s[2 * kk][2], s[2 * kk][3]),
                             pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < DV / 16; ++n) {
        unsigned b[4];
        mfa_ldmatrix_x4_trans(b, tile_v + (warp_key0 + kk * 16 + lane % 8 + lane / 8 % 2 * 8) * LD_V + n * 16 +
                                     lane / 16 * 8);
        const unsigned b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        mma(o_acc[2 * n], p, b0);
        mma(o_acc[2 * n + 1], p, b1);
      }
    }
  }

  // ----- epilogue -----
  if (KEY_WARPS > 1 && !merge_key_warps(o_acc, row_max, row_sum, reinterpret_cast<float *>(sK(0)))) return;
  const bool partial = splits > 1;
  const long long partial_rows = static_cast<long long>(args.batch) * args.heads_q * args.seq_q;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
    const float lse = sum > 0.0f ? (row_max[r] + log2f(sum)) * kLn2 : MFA_ATTN_NEG_INF;
    if (my_m[r] >= rows) continue;
    const int row = my_row[r], head = head0 + my_m[r] % group;
    if (partial) {
      const long long index =
          split * partial_rows + (static_cast<long long>(batch) * args.heads_q + head) * args.seq_q + row;
      float *const out = args.o_partial + index * DV;
      for (int n = 0; n < DV / 8; ++n) {
        const int col = n * 8 + quad * 2;
        *reinterpret_cast<float2 *>(out + col) = make_float2(o_acc[n][2 * r] * inverse, o_acc[n][2 * r + 1] * inverse);
      }
      if (quad == 0) args.lse_partial[index] = lse;
      continue;
    }
    const long long token = seq.q_token0 + row;
    Elem *const out = static_cast<Elem *>(args.o) + batch * args.o_batch_stride * (args.cu_seqlens_q == nullptr) +
                      token * args.o_seq_stride + head * args.o_head_stride;
    for (int n = 0; n < DV / 8; ++n) {
      const int col = n * 8 + quad * 2;
      if (col < MFA_ATTN_D_V)
        *reinterpret_cast<unsigned *>(out + col) = pack(o_acc[n][2 * r] * inverse, o_acc[n][2 * r + 1] * inverse);
    }
    if (args.lse && quad == 0) {
      const long long at = args.cu_seqlens_q ? head * args.lse_head_stride + token
                                             : batch * args.lse_batch_stride + head * args.lse_head_stride + row;
      args.lse[at] = lse;
    }
  }
}

}  // namespace mfa_attn_sm80

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include "ptx_cluster.cuh"  // programmatic dependent launch of the split-KV combine
#endif

extern "C" __global__ void __launch_bounds__(mfa_attn_sm80::THREADS, 1)
    mfa_attention_sm80(const __grid_constant__ mfa_attn_args args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  mfa_grid_launch_dependents();  // the combine may be scheduled now; it waits for this grid's partials
#endif
  mfa_attn_sm80::attention_block(args);
}

#include "attention_combine.cu"
