// attention.cuh: what the attention kernels (attention_sm80.cu, attention_sm90.cu, the split-KV combine)
// and their host side (cpp/attention.cpp) agree on: the argument struct and the variant macros' values.
//
// Compiled by the host C++ compiler (the struct, shared-memory formulas) and by NVRTC inside every
// generated attention source, which defines the MFA_ATTN_* variant macros first.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define MFA_ATTN_HOST_DEVICE __host__ __device__ inline
#else
#define MFA_ATTN_HOST_DEVICE inline
#endif

// Element types (the values of MFA_DTYPE_* in mfa.h).
#define MFA_ATTN_F16 1
#define MFA_ATTN_BF16 2

// The variant macros every generated attention source defines before including this file and its
// kernel file (cpp/attention.cpp writes them; the variant key names the same facts):
//   MFA_ATTN_DTYPE    MFA_ATTN_F16 or MFA_ATTN_BF16
//   MFA_ATTN_D_QK     head_dim of q and k, exact (a multiple of 8 in [8, 256])
//   MFA_ATTN_D_V      head_dim of v and o, exact
//   MFA_ATTN_MASK     MFA_ATTN_MASK_NONE, _CAUSAL (window (-1, 0): compile-time bounds) or _WINDOW
//                     (bounds from args.window_left / window_right, either may be -1)
//   MFA_ATTN_SOFTCAP  0 or 1 (args.softcap > 0)
//   MFA_ATTN_SM80_DECODE  0 or 1 (portable path: the block of at most 16 query rows whose warps share
//                         each key block)
// LSE (args.lse non-null), varlen (args.cu_seqlens_q non-null), split-KV (args.splits > 1, portable
// path only) and GQA packing (args.pack_gqa, portable path only) are run-time facts of the same kernels.
#define MFA_ATTN_MASK_NONE 0
#define MFA_ATTN_MASK_CAUSAL 1
#define MFA_ATTN_MASK_WINDOW 2

// The portable (sm_80) kernel's tile table, the one source of truth for the host and the kernel:
// 4 warps, 16 query rows each; the decode variant (MFA_ATTN_SM80_DECODE 1: at most 16 packed query rows
// a head group) one 16-row query tile that every warp shares, each warp taking its own 16 keys of every
// key block (the warps' partial softmaxes merged in shared memory at the end), so that a split's key
// blocks are not multiplied by idle rows and every warp of the block reads and multiplies. Key blocks of
// 64, or 32 when a head dimension passes 128: the O accumulator (d_v / 2 floats a thread) then leaves
// room for the score tile without spilling. Decode blocks of twice the keys (8 warps, two K/V stages of
// 64 KB at d 128) ran every decode step slower (H200, bf16, GQA 32:4, same process: 1.16x the time at
// batch 1, 4096 keys; 1.04-1.08x at 16384 and 65536 keys and at batch 8; 1.01x at batch 64).
#define MFA_ATTN_SM80_THREADS 128
#define MFA_ATTN_SM80_BLOCK_M 64
#define MFA_ATTN_SM80_DECODE_BLOCK_M 16
#define MFA_ATTN_SM80_PAD 8  // elements each shared row is padded by: ldmatrix rows then avoid bank conflicts
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_round16(int d) { return (d + 15) / 16 * 16; }
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm80_block_n(int d_qk, int d_v) {
  return (d_qk > 128 || d_v > 128) ? 32 : 64;
}
// Warps that share a key block's columns (16 keys each, one mma k-step of P V), and the block's threads.
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm80_key_warps(int d_qk, int d_v, bool decode) {
  return decode ? mfa_attn_sm80_block_n(d_qk, d_v) / 16 : 1;
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm80_threads(int d_qk, int d_v, bool decode) {
  return decode ? 32 * mfa_attn_sm80_key_warps(d_qk, d_v, decode) : MFA_ATTN_SM80_THREADS;
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm80_block_m(bool decode) {
  return decode ? MFA_ATTN_SM80_DECODE_BLOCK_M : MFA_ATTN_SM80_BLOCK_M;
}
// Dynamic shared memory: the Q tile and two stages of K and V tiles (at most 101 KB: d 256; two blocks
// fit an SM of sm_90).
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm80_smem_bytes(int d_qk, int d_v, bool decode) {
  return 2 * (mfa_attn_sm80_block_m(decode) * (mfa_attn_round16(d_qk) + MFA_ATTN_SM80_PAD) +
              2 * mfa_attn_sm80_block_n(d_qk, d_v) *
                  (mfa_attn_round16(d_qk) + mfa_attn_round16(d_v) + 2 * MFA_ATTN_SM80_PAD));
}
// Masked scores and the LSE of rows that see no key (2^-inf = 0 in the softmax).
#define MFA_ATTN_NEG_INF __int_as_float(0xff800000u)

// The split-KV combine kernel: a block of 8 warps over (rows, a slice of 128 columns of d_v), as many
// warps a row as it takes for each to hold at most 8 splits' loads (up to 8 warps: 64 splits a round).
#define MFA_ATTN_COMBINE_THREADS 256
#define MFA_ATTN_COMBINE_SLICE 128
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_combine_warps_per_row(int splits) {
  return splits <= 8 ? 1 : splits <= 16 ? 2 : splits <= 32 ? 4 : 8;
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_combine_rows_per_block(int splits) {
  return MFA_ATTN_COMBINE_THREADS / 32 / mfa_attn_combine_warps_per_row(splits);
}

// A tensor map as the driver's cuTensorMapEncodeTiled fills it (CUtensorMap: 128 opaque bytes, 64-byte
// aligned); only the Hopper path reads these, the host leaves them zero otherwise.
struct alignas(64) mfa_attn_tensor_map {
  unsigned long long opaque[16];
};

// Kernel parameters (passed by value as a __grid_constant__ parameter).
// Element strides; head_dim is unit-stride. Dense inputs: q is [batch, seq_q, heads_q, d_qk] through
// the strides (any permutation of batch/seq/heads); varlen: batch sequences packed along the token
// dimension (stride_*_batch unused), sequence b's tokens at [cu_seqlens_*[b], cu_seqlens_*[b + 1]).
struct mfa_attn_args {
  const void *q, *k, *v;
  void *o;                    // [.., seq_q, heads_q, d_v] through o's strides, same dtype as q
  float *lse;                 // natural-log LSE, [batch, heads_q, seq_q] (varlen [heads_q, total_q]), or null
  float *o_partial;           // split-KV workspace: [splits][batch * heads_q * seq_q][round16(d_v)] fp32
  float *lse_partial;         // split-KV workspace: [splits][batch * heads_q * seq_q] fp32
  const int *cu_seqlens_q;    // [batch + 1] or null (dense)
  const int *cu_seqlens_k;    // [batch + 1] or null (dense)
  int *tile_counter;          // Hopper path: the persistent grid's next tile (workspace, zeroed ahead of the grid)
  long long q_batch_stride, q_seq_stride, q_head_stride;
  long long k_batch_stride, k_seq_stride, k_head_stride;
  long long v_batch_stride, v_seq_stride, v_head_stride;
  long long o_batch_stride, o_seq_stride, o_head_stride;
  long long lse_batch_stride, lse_head_stride;  // lse element (b, h, i) at b * batch + h * head + i
  int batch, heads_q, heads_kv;  // heads_kv divides heads_q (GQA/MQA)
  int seq_q, seq_k;              // dense: the lengths; varlen: the callers' max_seqlen bounds
  int window_left, window_right; // -1: unbounded; causal is window_right = 0 (bottom-right aligned)
  float scale_log2;              // softmax scale * log2(e): scores live in the exp2 domain
  float softcap;                 // > 0: s = softcap * tanh(s * scale / softcap); 0: off
  int splits;                    // split-KV: key blocks are shared out over `splits` (1: no split)
  int kv_blocks_per_split;       // key blocks (of the variant's block_n) each split takes
  int pack_gqa;                  // portable path: 1 packs the heads_q / heads_kv query heads that share a
                                 // key/value head into a block's rows (row m: query m / group, head m % group)
                                 // so decode reads each K/V block once for all of them; grid.y is heads_kv
  mfa_attn_tensor_map tma_q, tma_k, tma_v, tma_o;  // Hopper path only
};

// ----- Hopper path (attention_sm90.cu, cpp/attention_sm90.cpp): the tile table, one source of truth -----
// Warpgroup 0 loads (TMA); each consumer warpgroup owns 64 query rows (one wgmma m64) of the tile.
// Head dimensions are padded to whole 64-element TMA boxes (128 bytes, one 128B-swizzle span; TMA
// zero-fills the columns past the real dimension, which adds nothing to Q K^T and leaves O's padding
// unused). Tiles follow FlashAttention-3's hopper/tile_size.h:
//   padded dims <= 64 without soft-capping: three consumers (192 query rows) of 160 registers: the small O
//     accumulator leaves room, and a third warpgroup gives the tensor cores more independent work per
//     block (measured on an H200, bf16, 16k tokens, seq 16384: 391 TFLOPS with two consumers, 441 with
//     three, cuDNN 473; again after the masking rework, 473 with two consumers and key blocks of 176
//     against 548-553 with three). Soft-capping's extra live values spill at 160 registers, so it keeps two;
//   otherwise two consumers (128 rows) of 240 registers, key blocks of 128, or 80 once a padded dimension
//     passes 128: the O accumulator (d_v / 2 floats a thread) plus the score tile, its 16-bit copy P and the
//     next block's scores then fit without spilling. Unmasked, two consumers with dims up to 128 take key
//     blocks of 176 (FlashAttention-3's choice; two stages fit): bf16 d128 seq 8192 581 -> 615 TFLOPS
//     on an H200, same process. Masked variants keep 128, whose diagonal blocks waste less.
// The ring holds as many K/V stages (up to 4) as fit beside Q in the 227 KB a block may use.
// Variant macros read: MFA_ATTN_DTYPE, MFA_ATTN_D_QK, MFA_ATTN_D_V, MFA_ATTN_MASK, MFA_ATTN_SOFTCAP.
// The Hopper kernel computes whole rows (no split-KV): it expects args.splits == 1 and ignores
// o_partial / lse_partial (hopper_supports refuses descriptors with splits > 1).
#define MFA_ATTN_SM90_BOX 64  // elements of one TMA box row (128 bytes of a 16-bit type)
#define MFA_ATTN_SM90_ROWS 64  // query rows of one consumer warpgroup
#define MFA_ATTN_SM90_SMEM_LIMIT (227 * 1024)
#define MFA_ATTN_SM90_MAX_STAGES 4
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_pad(int d) {
  return (d + MFA_ATTN_SM90_BOX - 1) / MFA_ATTN_SM90_BOX * MFA_ATTN_SM90_BOX;
}
// The facts of a variant that its Hopper tile depends on.
struct mfa_attn_sm90_shape {
  int d_qk, d_v;
  bool softcap;
  int mask;  // MFA_ATTN_MASK_*
};
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_consumers(mfa_attn_sm90_shape s) {
  return (mfa_attn_sm90_pad(s.d_qk) <= 64 && mfa_attn_sm90_pad(s.d_v) <= 64 && !s.softcap) ? 3 : 2;
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_threads(mfa_attn_sm90_shape s) {
  return 128 * (1 + mfa_attn_sm90_consumers(s));
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_block_m(mfa_attn_sm90_shape s) {
  return MFA_ATTN_SM90_ROWS * mfa_attn_sm90_consumers(s);
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_block_n(mfa_attn_sm90_shape s) {
  return (mfa_attn_sm90_pad(s.d_qk) > 128 || mfa_attn_sm90_pad(s.d_v) > 128)             ? 80
         : s.mask == MFA_ATTN_MASK_NONE && mfa_attn_sm90_consumers(s) == 2 && !s.softcap ? 176
                                                                                          : 128;
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_q_bytes(mfa_attn_sm90_shape s) {
  return mfa_attn_sm90_block_m(s) * mfa_attn_sm90_pad(s.d_qk) * 2;
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_k_bytes(mfa_attn_sm90_shape s) {
  return mfa_attn_sm90_block_n(s) * mfa_attn_sm90_pad(s.d_qk) * 2;
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_v_bytes(mfa_attn_sm90_shape s) {
  return mfa_attn_sm90_block_n(s) * mfa_attn_sm90_pad(s.d_v) * 2;
}
// Shared memory besides the tiles: 1 KB to align the swizzled regions, the mbarriers (8 bytes each: Q's
// full/empty, full/empty of K and of V per stage), then the tile slot (the index of the tile whose Q is
// loaded, which the producer hands the consumers).
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_overhead(int stages) { return 1024 + 8 * (2 + 4 * stages) + 4; }
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_smem_for(mfa_attn_sm90_shape s, int stages) {
  return mfa_attn_sm90_q_bytes(s) + stages * (mfa_attn_sm90_k_bytes(s) + mfa_attn_sm90_v_bytes(s)) +
         mfa_attn_sm90_overhead(stages);
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_stages(mfa_attn_sm90_shape s) {
  int stages = MFA_ATTN_SM90_MAX_STAGES;
  while (stages > 0 && mfa_attn_sm90_smem_for(s, stages) > MFA_ATTN_SM90_SMEM_LIMIT) --stages;
  return stages;  // < 2: no overlap of loads and math; hopper_supports refuses such shapes
}
MFA_ATTN_HOST_DEVICE constexpr int mfa_attn_sm90_smem_bytes(mfa_attn_sm90_shape s) {
  return mfa_attn_sm90_smem_for(s, mfa_attn_sm90_stages(s));
}
