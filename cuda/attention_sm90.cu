// attention_sm90.cu: the Hopper (sm_90a) attention forward, FlashAttention-3 style (arXiv 2407.08608).
// A tile is 128 (or 192) query rows of one head: a producer warpgroup streams its K and V blocks through
// a ring of shared-memory stages with TMA; two (or three) consumer warpgroups of 64 rows run S = Q K^T and
// O += P V with wgmma, the online softmax in registers between them. Overlap comes from three places:
// the consumers take turns issuing their matrix products (ping-pong: one's softmax runs while the
// other's wgmma do), each consumer issues the next block's S before the current softmax ends, and the
// grid is persistent: while the consumers finish a tile, the producer loads the next one's Q and K/V.
//
// Included after attention.cuh by a generated source that defines MFA_ATTN_DTYPE, MFA_ATTN_D_QK,
// MFA_ATTN_D_V, MFA_ATTN_MASK and MFA_ATTN_SOFTCAP (attention.cuh). PTX ISA sections follow ptx_sm90.cuh.
#include "ptx_cluster.cuh"  // programmatic dependent launch behind the tile counter's clearing kernel
#include "ptx_sm90.cuh"

namespace mfa_attn_sm90 {

// ----- the tile (attention.cuh's Hopper table) -----
constexpr int kDQk = MFA_ATTN_D_QK;
constexpr int kDV = MFA_ATTN_D_V;
constexpr bool kSoftcap = MFA_ATTN_SOFTCAP != 0;
constexpr mfa_attn_sm90_shape kShape = {kDQk, kDV, kSoftcap, MFA_ATTN_MASK};
constexpr int kDVPad = mfa_attn_sm90_pad(kDV);                 // N of the P V wgmma
constexpr int kBoxesQk = mfa_attn_sm90_pad(kDQk) / MFA_ATTN_SM90_BOX;
constexpr int kBoxesV = kDVPad / MFA_ATTN_SM90_BOX;
constexpr int kBlockN = mfa_attn_sm90_block_n(kShape);         // keys per block: N of S, k of P V
constexpr int kStages = mfa_attn_sm90_stages(kShape);
constexpr int kConsumers = mfa_attn_sm90_consumers(kShape);
constexpr int kThreads = mfa_attn_sm90_threads(kShape);
constexpr int kBlockM = mfa_attn_sm90_block_m(kShape);         // query rows of a block
constexpr int kRows = MFA_ATTN_SM90_ROWS;                      // query rows of one consumer warpgroup
constexpr int kSAcc = kBlockN / 2;                             // score floats a consumer thread holds
constexpr int kOAcc = kDVPad / 2;                              // output floats a consumer thread holds
constexpr int kPRegs = kBlockN / 4;                            // 16-bit pairs of P a thread holds
constexpr unsigned kRowBytes = MFA_ATTN_SM90_BOX * 2;          // 128: one swizzled shared-memory row
constexpr unsigned kSwizzleAtomBytes = 8 * kRowBytes;          // 1 KB: 8 rows, the 128B-swizzle period
constexpr unsigned kQBoxBytes = kRows * kRowBytes;             // 64 rows x 64 dims
constexpr unsigned kQConsumerBytes = kBoxesQk * kQBoxBytes;    // one consumer's Q
constexpr unsigned kKVBoxBytes = kBlockN * kRowBytes;          // kBlockN rows x 64 dims
constexpr unsigned kKBytes = kBoxesQk * kKVBoxBytes;
constexpr unsigned kVBytes = kBoxesV * kKVBoxBytes;
constexpr int kConsumerWarps = 4 * kConsumers;                // arrivals that free a stage, Q or the tile slot
// setmaxnreg budgets (producer, consumer): the block's threads share the 65536-register file, so
// 128 * 24 + 256 * 240 = 64512 and 128 * 32 + 384 * 160 = 65536. The producer only issues TMA.
constexpr int kProducerRegisters = kConsumers == 2 ? 24 : 32;
constexpr int kConsumerRegisters = kConsumers == 2 ? 240 : 160;
static_assert(128 * kProducerRegisters + 128 * kConsumers * kConsumerRegisters <= 65536, "register file");
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kLog2e = 1.4426950408889634f;

static_assert(kThreads == 128 * (1 + kConsumers) && kBlockM == kRows * kConsumers, "one producer warpgroup");
static_assert(MFA_ATTN_DTYPE == MFA_ATTN_F16 || MFA_ATTN_DTYPE == MFA_ATTN_BF16, "16-bit inputs only");
static_assert(kStages >= 2, "the ring needs two stages for loads to overlap the math");
static_assert(kBlockN % 16 == 0 && kKVBoxBytes % kSwizzleAtomBytes == 0, "whole k16 slices, 1 KB aligned boxes");
static_assert(mfa_attn_sm90_q_bytes(kShape) == kConsumers * kQConsumerBytes,
              "Q size agrees with attention.cuh");
static_assert(mfa_attn_sm90_k_bytes(kShape) == kKBytes && mfa_attn_sm90_v_bytes(kShape) == kVBytes,
              "K/V stage sizes agree with attention.cuh");

// ----- shared memory: Q, the K/V ring, the mbarriers, the tile slot -----
// [Q of consumer 0][Q of consumer 1]...[stage 0: K, V][stage 1: K, V]..., then the barriers and the slot.
// Every region is a stack of TMA boxes (64 dims wide, 128 bytes a row, CU_TENSOR_MAP_SWIZZLE_128B: chunk
// c of row r lands at chunk c ^ (r % 8)), each starting on a 1024-byte boundary so that the swizzle's
// phase is the address's own bits 7-9 and the wgmma descriptors' base offset stays 0.
// Barriers: q_full (1 arrival + Q's bytes: the tile's index is in the slot and its Q has landed), q_empty
// (one arrival per consumer warp once its tile's last S retired); per stage k_full / v_full (1 arrival +
// the tile's bytes), k_empty / v_empty (one arrival per consumer warp once its wgmma stopped reading the
// tile). K and V have their own barriers because a block's K is consumed (S) one step before its V (P V).
struct smem_layout {
  unsigned base;  // 1024-byte aligned shared address of Q

  __device__ unsigned q(int consumer) const { return base + consumer * kQConsumerBytes; }
  __device__ unsigned k(int stage) const { return base + kConsumers * kQConsumerBytes + stage * (kKBytes + kVBytes); }
  __device__ unsigned v(int stage) const { return k(stage) + kKBytes; }
  __device__ unsigned bars() const { return k(kStages); }
  __device__ unsigned q_full() const { return bars(); }
  __device__ unsigned k_full(int stage) const { return bars() + 8 * (1 + stage); }
  __device__ unsigned k_empty(int stage) const { return bars() + 8 * (1 + kStages + stage); }
  __device__ unsigned v_full(int stage) const { return bars() + 8 * (1 + 2 * kStages + stage); }
  __device__ unsigned v_empty(int stage) const { return bars() + 8 * (1 + 3 * kStages + stage); }
  __device__ unsigned q_empty() const { return bars() + 8 * (1 + 4 * kStages); }
  __device__ unsigned tile_slot() const { return bars() + 8 * (2 + 4 * kStages); }
};

__device__ __forceinline__ smem_layout smem_layout_at(unsigned char *smem) {
  return {(mfa_smem_addr(smem) + kSwizzleAtomBytes - 1) & ~(kSwizzleAtomBytes - 1)};
}

// One thread initialises the barriers; the fences publish them to the other threads and to the async
// proxy in which TMA completes transactions, ahead of the block-wide barrier that follows.
__device__ __forceinline__ void init_barriers(const smem_layout &smem) {
  mfa_mbar_init(smem.q_full(), 1);
  mfa_mbar_init(smem.q_empty(), kConsumerWarps);
  for (int s = 0; s < kStages; ++s) {
    mfa_mbar_init(smem.k_full(s), 1);
    mfa_mbar_init(smem.v_full(s), 1);
    mfa_mbar_init(smem.k_empty(s), kConsumerWarps);
    mfa_mbar_init(smem.v_empty(s), kConsumerWarps);
  }
  mfa_fence_mbar_init();
  mfa_fence_proxy_async_smem();
}

using ring_pos = mfa_ring_pos<kStages>;

// ----- wgmma operands in shared memory (descriptors, 9.7.15.5.1.2) -----
// A slice's descriptor is its region's plus the slice's byte offset in 16-byte units: the start address
// is the descriptor's lowest field and shared addresses stay below 2^18, so the sum never carries into the
// next field. One 64-bit add a wgmma instead of rebuilding every field: the rebuilt descriptors took
// ~90 uniform-datapath instructions of the d64 loop's ~470.
__device__ __forceinline__ unsigned long long desc_at(unsigned long long region_desc, unsigned offset_bytes) {
  return region_desc + (offset_bytes >> 4);
}
// Q and K are K-major (a row = one token, head dims contiguous): the canonical 128B-swizzle K-major
// layout with SBO = 1024 (8 rows to the next 8) and LBO unused (encoded 16). k16 slice s of the head
// dimension lies in box s / 4, 32 bytes per slice into each row.
__device__ __forceinline__ unsigned long long k_major_desc(unsigned region) {
  return mfa_wgmma_desc_sw128(region, 16, kSwizzleAtomBytes);
}
__device__ __forceinline__ constexpr unsigned k_major_slice(unsigned box_bytes, int slice) {
  return (slice / 4) * box_bytes + (slice % 4) * 32;
}
// V is the B operand of P V with N = head dims contiguous: MN-major (imm-trans-b = 1). The canonical
// layout's LBO steps from one 64-wide N chunk to the next (a box: kKVBoxBytes), SBO from 8 k (tokens)
// to the next 8 (1024 bytes). k16 slice s (16 tokens) starts 16 rows = 2048 bytes in.
__device__ __forceinline__ unsigned long long v_desc(unsigned region) {
  return mfa_wgmma_desc_sw128(region, kKVBoxBytes, kSwizzleAtomBytes);
}
__device__ __forceinline__ constexpr unsigned v_slice(int slice) { return slice * 16 * kRowBytes; }

// ----- where a block is: its sequence, its tokens, its range of key blocks -----
struct tile {
  int m0;                // first query row of the block within its sequence
  int head, head_kv, batch;
  int q_token0, k_token0;  // varlen: the sequence's first packed token; dense: 0
  int batch_coord;       // the maps' batch coordinate (varlen maps have one batch)
  int len_q, len_k;
  int n_begin, n_end;    // key blocks [n_begin, n_end) have a visible key for some row of the tile
};

// Key j is visible to query i when i + off - left <= j <= i + off + right (off = len_k - len_q,
// bottom-right alignment; -1: unbounded side). MFA_ATTN_MASK decides at compile time which bounds exist.
struct window {
  int left, right;
};
__device__ __forceinline__ window window_of(const mfa_attn_args &args) {
#if MFA_ATTN_MASK == MFA_ATTN_MASK_CAUSAL
  (void)args;
  return {-1, 0};
#elif MFA_ATTN_MASK == MFA_ATTN_MASK_WINDOW
  return {args.window_left, args.window_right};
#else
  (void)args;
  return {-1, -1};
#endif
}

// Tile indices run over (query tile, head, batch), query tile fastest and heaviest first: under a causal
// mask the last query tiles see the most keys, and starting them first keeps the tail of the grid short
// (FA3's scheduler does the same), while the tiles in flight share the K and V of few heads in L2.
__device__ __forceinline__ int query_tiles(const mfa_attn_args &args) { return (args.seq_q + kBlockM - 1) / kBlockM; }
__device__ __forceinline__ tile tile_of(const mfa_attn_args &args, int index) {
  tile t;
  const int m_tiles = query_tiles(args);
  t.m0 = (m_tiles - 1 - index % m_tiles) * kBlockM;
  t.head = index / m_tiles % args.heads_q;
  t.head_kv = t.head / (args.heads_q / args.heads_kv);
  t.batch = index / m_tiles / args.heads_q;
  if (args.cu_seqlens_q) {
    t.q_token0 = args.cu_seqlens_q[t.batch];
    t.k_token0 = args.cu_seqlens_k[t.batch];
    t.len_q = args.cu_seqlens_q[t.batch + 1] - t.q_token0;
    t.len_k = args.cu_seqlens_k[t.batch + 1] - t.k_token0;
    t.batch_coord = 0;
  } else {
    t.q_token0 = t.k_token0 = 0;
    t.len_q = args.seq_q;
    t.len_k = args.seq_k;
    t.batch_coord = t.batch;
  }
  const window w = window_of(args);
  const int off = t.len_k - t.len_q;
  const int m_last = min(t.m0 + kBlockM, t.len_q) - 1;
  const int key_lo = w.left >= 0 ? max(0, t.m0 + off - w.left) : 0;
  const int key_hi = w.right >= 0 ? min(t.len_k, m_last + off + w.right + 1) : t.len_k;  // exclusive
  t.n_begin = key_lo / kBlockN;
  t.n_end = key_hi > key_lo ? (key_hi + kBlockN - 1) / kBlockN : t.n_begin;
  return t;
}

// A tile has work when it holds query rows (varlen: a shorter sequence has fewer) and they see a key.
__device__ __forceinline__ bool has_rows(const tile &t) { return t.m0 < t.len_q; }
__device__ __forceinline__ bool has_keys(const tile &t) { return t.n_end > t.n_begin; }

// ----- the persistent schedule -----
// gridDim.x blocks, at most one an SM, share out the tiles: block b takes tile b first, then whichever
// index the counter hands out next (args.tile_counter, zeroed ahead of the grid by
// mfa_attention_sm90_clear), so an SM that finishes early takes the next tile, as the hardware's block
// scheduler would. (A persistent grid on a static schedule measured slower than one block a tile: H200,
// bf16, seq 16384, d64 549 -> 502 TFLOPS; it could not move work off a slower SM.)
// The producer thread fetches each index and hands it to the consumers in the tile slot, which travels
// with Q: q_full completes once both are there, and q_empty frees both. A tile without work takes a turn
// of Q's barriers all the same (no bytes), so that Q's phase is the tile's; kNoTile ends the loop.
constexpr int kNoTile = -1;

// ----- producer: one thread loads each tile's Q, then K and V of each key block, last block first -----
__device__ __forceinline__ void load_tile(const smem_layout &smem, const mfa_attn_args &args, const tile &t,
                                          ring_pos &pos) {
  mfa_mbar_arrive_expect_tx(smem.q_full(), kConsumers * kQConsumerBytes);
  for (int consumer = 0; consumer < kConsumers; ++consumer)
    for (int box = 0; box < kBoxesQk; ++box)
      mfa_tma_load_4d(smem.q(consumer) + box * kQBoxBytes, &args.tma_q, smem.q_full(), box * MFA_ATTN_SM90_BOX,
                      t.q_token0 + t.m0 + consumer * kRows, t.head, t.batch_coord);
  for (int n = t.n_end - 1; n >= t.n_begin; --n) {
    const int token = t.k_token0 + n * kBlockN;
    mfa_mbar_wait(smem.k_empty(pos.stage), pos.phase ^ 1);
    mfa_mbar_arrive_expect_tx(smem.k_full(pos.stage), kKBytes);
    for (int box = 0; box < kBoxesQk; ++box)
      mfa_tma_load_4d(smem.k(pos.stage) + box * kKVBoxBytes, &args.tma_k, smem.k_full(pos.stage),
                      box * MFA_ATTN_SM90_BOX, token, t.head_kv, t.batch_coord);
    mfa_mbar_wait(smem.v_empty(pos.stage), pos.phase ^ 1);
    mfa_mbar_arrive_expect_tx(smem.v_full(pos.stage), kVBytes);
    for (int box = 0; box < kBoxesV; ++box)
      mfa_tma_load_4d(smem.v(pos.stage) + box * kKVBoxBytes, &args.tma_v, smem.v_full(pos.stage),
                      box * MFA_ATTN_SM90_BOX, token, t.head_kv, t.batch_coord);
    pos.advance();
  }
}

__device__ __forceinline__ void produce(const smem_layout &smem, const mfa_attn_args &args) {
  mfa_tma_prefetch_map(&args.tma_q);
  mfa_tma_prefetch_map(&args.tma_k);
  mfa_tma_prefetch_map(&args.tma_v);
  const int tiles = query_tiles(args) * args.heads_q * args.batch;
  ring_pos pos;
  for (int index = blockIdx.x, q_parity = 0;; q_parity ^= 1) {
    mfa_mbar_wait(smem.q_empty(), q_parity ^ 1);
    mfa_st_shared_b32(smem.tile_slot(), static_cast<unsigned>(index < tiles ? index : kNoTile));
    if (index >= tiles) {
      mfa_mbar_arrive(smem.q_full());  // release: the consumers see kNoTile
      return;
    }
    const tile t = tile_of(args, index);
    if (has_rows(t) && has_keys(t)) {
      load_tile(smem, args, t, pos);
    } else {
      mfa_mbar_arrive(smem.q_full());
    }
    // Claimed once this tile's last load is issued, a stage or two before its consumers finish: claimed
    // as the tile starts, causal grids ran 5-9% slower at seq 16384 (H200, bf16, d128 and d256), blocks
    // deep in a long tile holding the last tiles while other SMs idled.
    index = gridDim.x + atomicAdd(args.tile_counter, 1);
  }
}

// ----- consumers: the matrix products -----
// wait_group is .sync.aligned: every lane of the warp is past it, so one arrival speaks for the warp.
__device__ __forceinline__ void release(unsigned empty_bar) {
  if (threadIdx.x % 32 == 0) mfa_mbar_arrive(empty_bar);
}

// S = Q K^T for this consumer's 64 rows and one key block: one k16 wgmma per 16 head dims.
__device__ __forceinline__ void issue_scores(float (&s)[kSAcc], unsigned q_region, unsigned k_region) {
  const unsigned long long q = k_major_desc(q_region), k = k_major_desc(k_region);
#pragma unroll
  for (int slice = 0; slice < kBoxesQk * 4; ++slice)
    mfa_wgmma_ss<kBlockN, MFA_ATTN_DTYPE, 0, 0>(s, desc_at(q, k_major_slice(kQBoxBytes, slice)),
                                                desc_at(k, k_major_slice(kKVBoxBytes, slice)), slice > 0);
  mfa_wgmma_commit_group();
}

// O += P V: P from registers (p[4i .. 4i+3] is the k16 A fragment of keys 16i .. 16i+15), V MN-major.
__device__ __forceinline__ void issue_pv(float (&o)[kOAcc], const unsigned (&p)[kPRegs], unsigned v_region) {
  const unsigned long long v = v_desc(v_region);
#pragma unroll
  for (int slice = 0; slice < kBlockN / 16; ++slice) {
    const unsigned a[4] = {p[4 * slice], p[4 * slice + 1], p[4 * slice + 2], p[4 * slice + 3]};
    mfa_wgmma_rs<kDVPad, MFA_ATTN_DTYPE, 1>(o, a, desc_at(v, v_slice(slice)), 1);
  }
  mfa_wgmma_commit_group();
}

template <int N>
__device__ __forceinline__ void fence_all(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) mfa_fence_operand(r[i]);
}
template <int N>
__device__ __forceinline__ void fence_all(unsigned (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) mfa_fence_operand(r[i]);
}

// Ping-pong (FA3 section 3.1): named barrier 1 + w is consumer w's turn to issue wgmma. A consumer waits
// for its turn (its 128 threads plus the previous consumer's 128 arrivals), issues, and passes the turn to
// the next in the cycle, so the tensor cores run one consumer's products while the others do softmax.
// Every consumer of a block takes the same number of turns (they share the key-block range).
__device__ __forceinline__ void wait_turn(int w) { mfa_named_barrier_sync(1 + w, 256); }
__device__ __forceinline__ void pass_turn(int w) { mfa_named_barrier_arrive(1 + (w + 1) % kConsumers, 256); }

// ----- consumers: the softmax, in the exp2 domain -----
// The accumulator layout of wgmma m64nNk16 (9.7.15.5.1.1): warp q of the warpgroup owns rows 16q ..
// 16q+15; thread t holds rows 16q + t/4 (r = 0) and 16q + t/4 + 8 (r = 1), at columns 8j + 2(t%4) + e:
// element 4j + 2r + e. So a thread's row values are spread over the 4 threads of its quad.
__device__ __forceinline__ int acc_index(int j, int r, int e) { return 4 * j + 2 * r + e; }

struct row_state {
  float m[2];  // running maximum of the row's transformed scores (y below), -inf before any visible key
  float l[2];  // this thread's share of the running sum of exp2(y * mult - max * mult)
};

// Scores become y with the exp2-domain logit y * mult: plain, y = q.k and mult = scale * log2(e);
// soft-capped, y = tanh(q.k * scale / softcap) and mult = softcap * log2(e) (mult > 0 either way, so
// maxima of y are maxima of the logits). tanh(x) = 1 - 2 / (2^(2x log2 e) + 1), pre = 2 scale log2(e) /
// softcap: accurate to ~1e-7 absolute, where tanh.approx's 2^-11 relative error, times a cap of 30,
// would move logits by up to 1e-2 (more than fp16's tolerance allows).
struct score_transform {
  float pre, mult;
};
__device__ __forceinline__ score_transform score_transform_of(const mfa_attn_args &args) {
#if MFA_ATTN_SOFTCAP
  return {2.0f * args.scale_log2 / args.softcap, args.softcap * kLog2e};
#else
  return {1.0f, args.scale_log2};
#endif
}

// Soft-capping (before the mask, as the contract says) and, when MASKED, the mask: -inf where key col0 +
// column is past the sequence or outside row's window. `row` is the query index of the thread's first row.
// MASKED is a template argument so that blocks without a mask carry none of its compares: with a run-time
// flag ptxas if-converted the mask into every block (an ISETP, a LOP3 and two FSEL an element pair: a
// quarter of the d64 loop's instructions).
template <bool MASKED>
__device__ __forceinline__ void transform_and_mask(float (&s)[kSAcc], const score_transform &f, int row, int col0,
                                                   int len_k, int off, const window &w) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float &x = s[acc_index(j, r, e)];
#if MFA_ATTN_SOFTCAP
        x = 1.0f - __fdividef(2.0f, mfa_exp2_approx(x * f.pre) + 1.0f);
#endif
        if constexpr (MASKED) {
          const int col = col0 + 8 * j + 2 * (lane % 4) + e;
          const int i = row + 8 * r;
          const bool visible = col < len_k && (w.left < 0 || col >= i + off - w.left) &&
                               (w.right < 0 || col <= i + off + w.right);
          if (!visible) x = MFA_ATTN_NEG_INF;
        }
      }
  (void)f, (void)row, (void)col0, (void)len_k, (void)off, (void)w, (void)lane;
}

// Online softmax over one block: new row maxima (quad shuffles), s turned into P = exp2(y * mult -
// max * mult) in place, the sums updated; returns in `rescale` the factor O must be multiplied by.
// A row with no visible key so far keeps max -inf; its exponent base is then 0, so masked scores give
// exp2(-inf) = 0 and no inf - inf appears.
__device__ __forceinline__ void online_softmax(float (&s)[kSAcc], row_state &st, float mult, float (&rescale)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m = st.m[r];
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) m = fmaxf(m, fmaxf(s[acc_index(j, r, 0)], s[acc_index(j, r, 1)]));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    const float base = m == MFA_ATTN_NEG_INF ? 0.0f : m * mult;
    rescale[r] = mfa_exp2_approx(st.m[r] * mult - base);
    st.m[r] = m;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float &x = s[acc_index(j, r, e)];
        x = mfa_exp2_approx(fmaf(x, mult, -base));
        sum += x;
      }
    st.l[r] = st.l[r] * rescale[r] + sum;
  }
}

// P in 16 bits as the register A operand of P V: the k16 A fragment (see mfa_wgmma_rs) of keys 16i ..
// 16i+15 holds exactly the accumulator elements 8i .. 8i+7 of S in order, so the conversion is pairwise.
__device__ __forceinline__ void scores_to_p(const float (&s)[kSAcc], unsigned (&p)[kPRegs]) {
#pragma unroll
  for (int i = 0; i < kPRegs; ++i) p[i] = mfa_pack_f32x2<MFA_ATTN_DTYPE>(s[2 * i], s[2 * i + 1]);
}

__device__ __forceinline__ void rescale_o(float (&o)[kOAcc], const float (&rescale)[2]) {
#pragma unroll
  for (int j = 0; j < kDVPad / 8; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int e = 0; e < 2; ++e) o[acc_index(j, r, e)] *= rescale[r];
}

// ----- consumers: the epilogue -----
// The accumulator layout leaves a row's 16-byte chunks of O spread over the row's quad, 4 bytes (one
// column pair) a lane: lane p holds piece p of every chunk. Two butterfly exchanges within the quad give
// lane q the four pieces of chunk 4g + q of each group of four chunks, stored as one 16-byte vector:
// a quarter of the store instructions. With 4-byte stores, each touching 8 rows, a tile's epilogue took
// longer than a key block: 2.6 us at d128, 4.1 us at d256 (H200, globaltimer stamps, seq 2048).
// x[c]: this lane's piece of chunk 4g + c; returns the pieces of chunk 4g + q in order.
__device__ __forceinline__ uint4 quad_transpose(const unsigned (&x)[4]) {
  const int q = threadIdx.x % 4;
  const bool hi = q & 2, odd = q & 1;
  // With lane q ^ 2: keep the two chunks of this lane's half (2 * hi + l), trade the other two.
  const unsigned keep0 = hi ? x[2] : x[0], keep1 = hi ? x[3] : x[1];
  const unsigned got0 = __shfl_xor_sync(0xffffffffu, hi ? x[0] : x[2], 2);
  const unsigned got1 = __shfl_xor_sync(0xffffffffu, hi ? x[1] : x[3], 2);
  // keep_l / got_l: pieces q / q ^ 2 of chunk 4g + 2 * hi + l. With lane q ^ 1: keep chunk l = odd.
  const unsigned own = odd ? keep1 : keep0, own_far = odd ? got1 : got0;  // pieces q, q ^ 2 of chunk q
  const unsigned near = __shfl_xor_sync(0xffffffffu, odd ? keep0 : keep1, 1);    // piece q ^ 1
  const unsigned near_far = __shfl_xor_sync(0xffffffffu, odd ? got0 : got1, 1);  // piece q ^ 3
  // Piece p is the one from lane p: p ^ q = 0 own, 1 near, 2 own_far, 3 near_far.
  const unsigned a = hi ? own_far : own, b = hi ? near_far : near, c = hi ? own : own_far,
                 d = hi ? near : near_far;
  return make_uint4(odd ? b : a, odd ? a : b, odd ? d : c, odd ? c : d);
}

// O / l in the element type, stored straight from the registers (rows past the sequence skipped:
// varlen packs sequences, so a TMA store box could not be bounded by the sequence); LSE = (max * mult +
// log2 l) * ln 2. A row without a visible key has l = 0: O = 0, LSE = -inf. The quad exchanges run on
// every lane; only the stores are predicated.
__device__ __forceinline__ void store_rows(const mfa_attn_args &args, const tile &t, int row, const float (&o)[kOAcc],
                                           const row_state &st, float mult) {
  using elem = unsigned short;
  const int q = threadIdx.x % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = st.l[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int i = row + 8 * r;
    const bool stored = i < t.len_q;
    const float inverse = l > 0.0f ? 1.0f / l : 0.0f;
    const long long token = t.q_token0 + i;
    elem *out = static_cast<elem *>(args.o) + (args.cu_seqlens_q ? 0 : t.batch * args.o_batch_stride) +
                token * args.o_seq_stride + t.head * args.o_head_stride;
#pragma unroll
    for (int g = 0; g < kDVPad / 32; ++g) {
      unsigned x[4];
#pragma unroll
      for (int c = 0; c < 4; ++c)
        x[c] = mfa_pack_f32x2<MFA_ATTN_DTYPE>(o[acc_index(4 * g + c, r, 0)] * inverse,
                                              o[acc_index(4 * g + c, r, 1)] * inverse);
      const uint4 chunk = quad_transpose(x);
      const int col = 8 * (4 * g + q);
      if (stored && col < kDV) *reinterpret_cast<uint4 *>(out + col) = chunk;
    }
    if (stored && args.lse && q == 0) {
      const long long at = args.cu_seqlens_q ? t.head * args.lse_head_stride + token
                                             : t.batch * args.lse_batch_stride + t.head * args.lse_head_stride + i;
      args.lse[at] = l > 0.0f ? (st.m[r] * mult + __log2f(l)) * kLn2 : MFA_ATTN_NEG_INF;
    }
  }
}

// The key blocks of a tile that need no element mask: [begin, end). Blocks above it reach
// past the sequence's keys or the window's right bound for some row of the tile, blocks below it cross the
// window's left bound.
struct unmasked_range {
  int begin, end;
};
__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }
__device__ __forceinline__ unmasked_range unmasked_range_of(const tile &t, const window &w) {
  const int off = t.len_k - t.len_q;
  const int m_last = min(t.m0 + kBlockM, t.len_q) - 1;
  // Block n is unmasked when (n + 1) * kBlockN <= len_k, (n + 1) * kBlockN - 1 <= m0 + off + right and
  // n * kBlockN >= m_last + off - left.
  int end = t.len_k / kBlockN;
  if (w.right >= 0) end = min(end, floor_div(t.m0 + off + w.right + 1, kBlockN));
  const int begin = w.left >= 0 ? -floor_div(-(m_last + off - w.left), kBlockN) : 0;
  return {begin, end};
}

// ----- consumer main loop (FA3 algorithm 2 with ping-pong) -----
// Blocks are visited from the last (n_end - 1, where the causal diagonal and the sequence's end lie)
// down to n_begin, in the producer's order. Step n: issue S_n = Q K_n and O += P_{n+1} V_{n+1} in one
// turn, then the softmax of S_n runs while P V is still on the tensor cores; O is rescaled only after
// that product retired. The first block has no P V before it and the last P V none after it.
// (Rescaling O inside the turn, between the two issues, as FA3 does, measured 3-4% slower here at d128
// non-causal on an H200.)
struct consumer {
  const smem_layout &smem;
  const mfa_attn_args &args;
  const tile &t;
  int w;                    // this consumer warpgroup
  int row;                  // query index of this thread's first row
  float o[kOAcc];
  row_state st;
  unsigned p[kPRegs];       // P of the block whose V is at pos.previous()
  float rescale[2];
  ring_pos &pos;            // the next K/V stage, carried from tile to tile

  __device__ consumer(const smem_layout &smem, const mfa_attn_args &args, const tile &t, int w, ring_pos &pos)
      : smem(smem), args(args), t(t), w(w),
        row(t.m0 + w * kRows + (threadIdx.x % 128) / 32 * 16 + threadIdx.x % 32 / 4),
        st{{MFA_ATTN_NEG_INF, MFA_ATTN_NEG_INF}, {0.0f, 0.0f}}, pos(pos) {
#pragma unroll
    for (int i = 0; i < kOAcc; ++i) o[i] = 0.0f;
  }

  // The window and the score transform come from the parameters where they are used rather than living
  // in registers: the persistent tile loop left the d64 window variant (three consumers, 160 registers)
  // two registers short.
  __device__ window win() const { return window_of(args); }
  __device__ score_transform f() const { return score_transform_of(args); }

  // Scores of block n (retired, in s) to P: soft-capping, the mask when MASKED, the online softmax.
  template <bool MASKED>
  __device__ __forceinline__ void softmax(float (&s)[kSAcc], int n) {
    transform_and_mask<MASKED>(s, f(), row, n * kBlockN, t.len_k, t.len_k - t.len_q, win());
    online_softmax(s, st, f().mult, rescale);
  }

  // S of block n retired: its K stage is free, and after the tile's last S so is Q (with the tile slot), so
  // that the next tile's Q loads while this one's last softmax and P V run.
  __device__ __forceinline__ void release_k(int n) {
    release(smem.k_empty(pos.stage));
    if (n == t.n_begin) release(smem.q_empty());
  }

  // The first (last-indexed) block: S only. It holds the diagonal or the sequence's end, so it is masked.
  __device__ __forceinline__ void first_block() {
    float s[kSAcc];
    wait_turn(w);
    mfa_mbar_wait(smem.k_full(pos.stage), pos.phase);
    mfa_wgmma_fence();
    issue_scores(s, smem.q(w), smem.k(pos.stage));
    pass_turn(w);
    mfa_wgmma_wait_group<0>();
    fence_all(s);
    release_k(t.n_end - 1);
    softmax<true>(s, t.n_end - 1);
    scores_to_p(s, p);
    pos.advance();
  }

  template <bool MASKED>
  __device__ __forceinline__ void step(int n) {
    float s[kSAcc];
    const ring_pos v_pos = pos.previous();
    wait_turn(w);
    mfa_mbar_wait(smem.k_full(pos.stage), pos.phase);
    fence_all(o);
    mfa_wgmma_fence();
    issue_scores(s, smem.q(w), smem.k(pos.stage));
    mfa_mbar_wait(smem.v_full(v_pos.stage), v_pos.phase);
    issue_pv(o, p, smem.v(v_pos.stage));
    pass_turn(w);
    mfa_wgmma_wait_group<1>();  // S_n retired; P V may still run
    fence_all(s);
    release_k(n);
    softmax<MASKED>(s, n);
    mfa_wgmma_wait_group<0>();  // P V retired: O and P are free to change
    fence_all(o);
    fence_all(p);
    release(smem.v_empty(v_pos.stage));
    rescale_o(o, rescale);
    scores_to_p(s, p);
    pos.advance();
  }

  // The last P V, then O and the LSE out.
  __device__ __forceinline__ void finish() {
    const ring_pos v_pos = pos.previous();
    wait_turn(w);
    mfa_mbar_wait(smem.v_full(v_pos.stage), v_pos.phase);
    fence_all(o);
    mfa_wgmma_fence();
    issue_pv(o, p, smem.v(v_pos.stage));
    pass_turn(w);
    mfa_wgmma_wait_group<0>();
    fence_all(o);
    fence_all(p);
    release(smem.v_empty(v_pos.stage));
    store_rows(args, t, row, o, st, f().mult);
  }

  // The unmasked blocks run in a loop of their own, so that only the blocks that need it carry the mask
  // (a causal tile's diagonal, the sequence's last block). One masked step in the code, not one above and
  // one below the unmasked range: a third copy of the step spilled registers. The variants with the most
  // live values (run-time window bounds, soft-capping) keep a single, masked step: a second copy spilled
  // there (d64 window, d256 causal soft-capped).
  __device__ __forceinline__ void run() {
    first_block();
    constexpr bool kSplit = MFA_ATTN_MASK != MFA_ATTN_MASK_WINDOW && !kSoftcap;
    const unmasked_range unmasked = unmasked_range_of(t, win());
    for (int n = t.n_end - 2; n >= t.n_begin; --n) {
      if (kSplit && n >= unmasked.begin && n < unmasked.end) {
        for (; n >= max(unmasked.begin, t.n_begin); --n) step<false>(n);
        if (n < t.n_begin) break;
      }
      step<true>(n);
    }
    finish();
  }
};

// A tile without a visible key (a window, an empty key sequence): O = 0, LSE = -inf, nothing loaded.
__device__ __forceinline__ void store_empty(const mfa_attn_args &args, const tile &t, int w) {
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  float o[kOAcc];
#pragma unroll
  for (int i = 0; i < kOAcc; ++i) o[i] = 0.0f;
  const row_state st = {{MFA_ATTN_NEG_INF, MFA_ATTN_NEG_INF}, {0.0f, 0.0f}};
  store_rows(args, t, t.m0 + w * kRows + warp * 16 + lane / 4, o, st, 1.0f);
}

// Every tile the producer hands this consumer warpgroup, until it hands none.
__device__ __forceinline__ void consume(const smem_layout &smem, const mfa_attn_args &args, int w) {
  ring_pos pos;
  for (unsigned q_parity = 0;; q_parity ^= 1) {
    mfa_mbar_wait(smem.q_full(), q_parity);
    const int index = mfa_ld_shared_b32(smem.tile_slot());
    if (index == kNoTile) return;
    const tile t = tile_of(args, index);
    if (has_rows(t) && has_keys(t)) {
      consumer(smem, args, t, w, pos).run();  // frees Q and the slot once its last S retired
      continue;
    }
    __syncwarp();  // every lane has read the slot before its warp frees it
    release(smem.q_empty());
    if (has_rows(t)) store_empty(args, t, w);
  }
}

}  // namespace mfa_attn_sm90

// ----- the kernels -----
// Persistent: min(tiles, SMs) blocks of mfa_attn_sm90_threads threads with mfa_attn_sm90_smem_bytes of
// dynamic shared memory (one block an SM); setmaxnreg moves registers from the producer to the consumers.
// Launched dependent on mfa_attention_sm90_clear: a block sets up its barriers while that kernel and the
// one before it end, then waits for both before it touches global memory.
extern "C" __global__ void __launch_bounds__(mfa_attn_sm90::kThreads, 1)
    mfa_attention_sm90(const __grid_constant__ mfa_attn_args args) {
  using namespace mfa_attn_sm90;
  extern __shared__ unsigned char mfa_attn_sm90_smem[];  // aligned up to 1024 bytes by smem_layout_at
  const smem_layout smem = smem_layout_at(mfa_attn_sm90_smem);
  if (threadIdx.x == 0) init_barriers(smem);
  __syncthreads();
  mfa_grid_dependency_wait();

  if (mfa_warpgroup_index() == 0) {
    mfa_setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x / 32 == 0 && mfa_elect_one()) produce(smem, args);
  } else {
    mfa_setmaxnreg_inc<kConsumerRegisters>();
    const int w = mfa_warpgroup_index() - 1;
    if (w == kConsumers - 1) pass_turn(w);  // consumer 0 issues first
    consume(smem, args, w);
  }
}

// The tile counter, zeroed ahead of every launch (the workspace is plain scratch memory between encodes,
// and a replayed command list resets it too): a kernel rather than a memset node, so that the attention
// grid, launched dependent on it, sets up while it waits for the previous grid (which may still read the
// counter). GEMM's Stream-K flags need no such kernel: they are raised to a token of the launch
// (cpp/gemm.cpp, attach_workspace), where a counter the blocks add to has no room for one.
extern "C" __global__ void __launch_bounds__(32) mfa_attention_sm90_clear(int *tile_counter) {
  mfa_grid_dependency_wait();
  mfa_grid_launch_dependents();
  if (threadIdx.x == 0) *tile_counter = 0;
}
