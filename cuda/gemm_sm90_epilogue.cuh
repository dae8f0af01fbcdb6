// gemm_sm90_epilogue.cuh: the lean epilogue of the Hopper GEMMs, C = act(alpha * acc + beta * C + bias),
// in place on a consumer thread's wgmma accumulators, then stored. Shared by gemm_sm90.cu (16-bit
// inputs, N = MFA_SM90_BN / 2 accumulators) and gemm_sm90_tf32.cu (3xTF32, N = 64); included after
// gemm.cuh by both, so MFA_OUT_DTYPE names C's element type.
//
// m64nN f32 D fragment (9.7.15.5.1.1.1, Figure 149, PTX ISA 9.0): thread t of the warpgroup holds, for
// each n8 block j, acc[4j + 0..1] at row 16 * (t / 32) + (t % 32) / 4, columns 8j + 2 * (t % 4) + {0, 1},
// and acc[4j + 2..3] at the same columns, 8 rows further down. So acc[4j + 2h + c] is element
// (row0 + 8h, col0 + 8j + c) below, and sits at C index index0 + 8h * ldc + 8j + c.
// The passes keep the order of operations of mfa_epilogue_store (gemm.cuh): the result is the same,
// but every choice that is uniform over the block (beta, bias type) is made once per tile, the activation
// at compile time, bias values are loaded once per column, and column pairs move as one access where C
// allows.
//
// MFA_SM90_C_TRANSPOSED 1 (kernels given C^T = op(B)^T op(A)^T: gemm_sm90_tf32.cu's NN variant, so that
// both of its operands arrive K-major, and gemm_sm90.cu's for thin problems, so that the weight's columns
// fill the 128-row tiles, and for NN problems whose B fills the SMs better K-major): the kernel's rows are
// C's columns and its columns C's rows, so
// element (row, col) of its tile is C[col][row] and the bias (one value per column of C) goes by row.
// Neighbouring columns are then a row of C apart: no pair accesses.
#pragma once

#ifndef MFA_SM90_C_TRANSPOSED
#define MFA_SM90_C_TRANSPOSED 0
#endif

struct mfa_sm90_fragment {
  int row0, col0;      // this thread's first row and column of the tile
  long long index0;    // C index of (row0, col0) in the tile's batch
  long long row_step;  // from row0 to row0 + 8: 8 * ldc (8 when C is transposed)
#if MFA_SM90_C_TRANSPOSED
  long long col_step;  // ldc
  __device__ long long col_offset() const { return col_step; }  // from one column to the next
#else
  __device__ static constexpr int col_offset() { return 1; }
#endif

  __device__ bool row_in(const mfa_gemm_args &args, int h) const { return row0 + 8 * h < args.m; }
  __device__ int col(int j) const { return col0 + 8 * j; }
  __device__ long long index(int j, int h) const { return index0 + h * row_step + 8 * j * col_offset(); }
};

// The fragment of thread t (0..127) of consumer warpgroup w (64 rows each) in the tile at (m0, n0) of
// batch `batch`; TILE is any type with those three members.
template <class TILE>
__device__ __forceinline__ mfa_sm90_fragment mfa_sm90_fragment_of(const mfa_gemm_args &args, const TILE &tile, int w,
                                                                  int t) {
  mfa_sm90_fragment f;
  f.row0 = tile.m0 + 64 * w + 16 * (t / 32) + (t % 32) / 4;
  f.col0 = tile.n0 + 2 * (t % 4);
#if MFA_SM90_C_TRANSPOSED
  f.col_step = args.ldc;
  f.index0 = tile.batch * args.batch_stride_c + f.row0 + f.col0 * f.col_step;
  f.row_step = 8;
#else
  f.index0 = tile.batch * args.batch_stride_c + static_cast<long long>(f.row0) * args.ldc + f.col0;
  f.row_step = 8 * args.ldc;
#endif
  return f;
}

// Call body(j, h, col, pair) for each in-bounds (row0 + 8h, col = col(j)) element pair of the fragment,
// j = FIRST..N/4-1 and h = 0..1 in that order: pair says that both columns are in bounds and may move as
// one access; otherwise only col is known to be (col + 1 < n tells whether the second one is).
template <int N, int FIRST = 0, class BODY>
__device__ __forceinline__ void mfa_sm90_for_each_pair(const mfa_gemm_args &args, const mfa_sm90_fragment &f,
                                                       bool pairs, BODY &&body) {
#pragma unroll
  for (int j = FIRST; j < N / 4; ++j) {
    const int col = f.col(j);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (!f.row_in(args, h) || col >= args.n) continue;
      body(j, h, col, !MFA_SM90_C_TRANSPOSED && pairs && col + 1 < args.n);
    }
  }
}

// acc = alpha * acc + beta * C (C is read only when beta != 0, so it may hold NaN otherwise).
template <int N>
__device__ __forceinline__ void mfa_sm90_blend(const mfa_gemm_args &args, const mfa_sm90_fragment &f, bool pairs,
                                               float (&acc)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] *= args.alpha;
  if (args.beta == 0.0f) return;
  mfa_sm90_for_each_pair<N>(args, f, pairs, [&](int j, int h, int col, bool pair) {
    float c0, c1 = 0.0f;
    if (pair) {
      mfa_load_pair_as_float<MFA_OUT_DTYPE>(args.c, f.index(j, h), c0, c1);
    } else {
      c0 = mfa_load_as_float<MFA_OUT_DTYPE>(args.c, f.index(j, h));
      if (col + 1 < args.n) c1 = mfa_load_as_float<MFA_OUT_DTYPE>(args.c, f.index(j, h) + f.col_offset());
    }
    acc[4 * j + 2 * h] += args.beta * c0;
    acc[4 * j + 2 * h + 1] += args.beta * c1;
  });
}

// acc += bias[col], each bias element loaded once (both rows of a column share it); by row when C is
// transposed (every column of a row shares it).
template <int BIAS_DTYPE, int N>
__device__ __forceinline__ void mfa_sm90_add_bias(const mfa_gemm_args &args, const mfa_sm90_fragment &f,
                                                  float (&acc)[N]) {
  if constexpr (MFA_SM90_C_TRANSPOSED) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (!f.row_in(args, h)) continue;
      const float bias = mfa_load_as_float<BIAS_DTYPE>(args.bias, f.row0 + 8 * h);
#pragma unroll
      for (int j = 0; j < N / 4; ++j) {
        acc[4 * j + 2 * h] += bias;
        acc[4 * j + 2 * h + 1] += bias;
      }
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < N / 4; ++j) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      if (f.col(j) + c >= args.n) continue;
      const float bias = mfa_load_as_float<BIAS_DTYPE>(args.bias, f.col(j) + c);
      acc[4 * j + c] += bias;
      acc[4 * j + 2 + c] += bias;
    }
  }
}

// Store the in-bounds elements (of n8 blocks FIRST on), activated: column pairs as one access when `pairs`
// (C's base, row and batch strides even, so every even column index is two-element aligned), single
// elements otherwise. The activation is applied as each value leaves for C rather than in a pass of its
// own over the accumulators: that pass, its exponentials interleaved across all of them, spilled 8 bytes
// in the 128 x 256 bf16 -> fp32 SiLU kernel.
template <int N, int FIRST = 0>
__device__ __forceinline__ void mfa_sm90_write(const mfa_gemm_args &args, const mfa_sm90_fragment &f, bool pairs,
                                               const float (&acc)[N]) {
  mfa_sm90_for_each_pair<N, FIRST>(args, f, pairs, [&](int j, int h, int col, bool pair) {
    const float v0 = mfa_gemm_activated<MFA_OUT_DTYPE>(acc[4 * j + 2 * h]);
    const float v1 = mfa_gemm_activated<MFA_OUT_DTYPE>(acc[4 * j + 2 * h + 1]);
    if (pair) {
      mfa_store_pair_from_float<MFA_OUT_DTYPE>(args.c, f.index(j, h), v0, v1);
    } else {
      mfa_store_from_float<MFA_OUT_DTYPE>(args.c, f.index(j, h), v0);
      if (col + 1 < args.n) mfa_store_from_float<MFA_OUT_DTYPE>(args.c, f.index(j, h) + f.col_offset(), v1);
    }
  });
}

// acc = alpha * acc + beta * C + bias: the epilogue's arithmetic before the activation.
template <int N>
__device__ __forceinline__ void mfa_sm90_epilogue_values(const mfa_gemm_args &args, const mfa_sm90_fragment &f,
                                                         bool pairs, float (&acc)[N]) {
  mfa_sm90_blend(args, f, pairs, acc);
  switch (args.bias_dtype) {
    case MFA_GEMM_F16: mfa_sm90_add_bias<MFA_GEMM_F16>(args, f, acc); break;
    case MFA_GEMM_BF16: mfa_sm90_add_bias<MFA_GEMM_BF16>(args, f, acc); break;
    case MFA_GEMM_F32: mfa_sm90_add_bias<MFA_GEMM_F32>(args, f, acc); break;
    default: break;
  }
}

// The whole epilogue of one tile for thread t (0..127) of consumer warpgroup w, C written element by element.
template <int N, class TILE>
__device__ __forceinline__ void mfa_sm90_epilogue(const mfa_gemm_args &args, const TILE &tile, int w, int t,
                                                  bool pairs, float (&acc)[N]) {
  const mfa_sm90_fragment f = mfa_sm90_fragment_of(args, tile, w, t);
  mfa_sm90_epilogue_values(args, f, pairs, acc);
  mfa_sm90_write(args, f, pairs, acc);
}
