// gemm.cuh: what the GEMM kernels and their host-side launcher (cpp/gemm.cpp) agree on.
//
// Compiled twice: by the host C++ compiler (the argument struct, tile shapes and shared-memory
// formulas) and by NVRTC inside every generated GEMM source (plus the device-side epilogue).
// A generated source defines the MFA_* variant macros, then includes this header and one kernel file
// (gemm_sm80.cu or gemm_sm90.cu); MFA_DUMP_SOURCE=1 writes it out.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define MFA_HOST_DEVICE __host__ __device__
#else
#define MFA_HOST_DEVICE
#endif

// Element types (the values of MFA_DTYPE_* in mfa.h).
#define MFA_GEMM_F16 1
#define MFA_GEMM_BF16 2
#define MFA_GEMM_F32 3

// Inner-product arithmetic a variant uses.
#define MFA_MATH_F16_MMA 0   // fp16 x fp16 -> fp32 on tensor cores
#define MFA_MATH_BF16_MMA 1  // bf16 x bf16 -> fp32 on tensor cores
#define MFA_MATH_TF32X3 2    // fp32 split into tf32 hi + lo, three products (fp32-accurate)
#define MFA_MATH_FFMA 3      // fp32 fused multiply-add on the CUDA cores (IEEE)

// Epilogue activations (the values of MFA_ACTIVATION_* in mfa.h).
#define MFA_ACT_NONE 0
#define MFA_ACT_RELU 1
#define MFA_ACT_GELU_TANH 2
#define MFA_ACT_GELU_ERF 3
#define MFA_ACT_SILU 4

// Kernel parameters. Element (i, k) of op(A) lives at a[i * lda + k] (trans_a = 0) or
// a[k * lda + i] (trans_a = 1); likewise B with (k, j); C is row-major with row stride ldc.
// Strides count elements; a batch stride of 0 broadcasts that operand.
struct mfa_gemm_args {
  const void *a;
  const void *b;
  void *c;
  const void *bias;       // [n] of bias_dtype, or null
  long long lda, ldb, ldc;
  long long batch_stride_a, batch_stride_b, batch_stride_c;
  int m, n, k, batch;
  float alpha, beta;
  int activation;         // MFA_ACT_*
  int bias_dtype;         // MFA_GEMM_* or 0 for none
};

// The opaque 128-byte CUtensorMap that the host encodes and the sm_90 kernel receives by value.
struct alignas(64) mfa_tensor_map {
  unsigned long long opaque[16];
};

// ----- sm_80 portable kernel: block tile and its shared-memory ring -----
// 16-bit inputs: BK = 32 (two k16 mma steps); fp32 inputs: BK = 16 (two k8 tf32 steps or 16 FMAs).
#define MFA_SM80_BM 128
#define MFA_SM80_BN 128
#define MFA_SM80_THREADS 256
#define MFA_SM80_STAGES 3
MFA_HOST_DEVICE constexpr int mfa_sm80_bk(int in_bytes) { return in_bytes == 2 ? 32 : 16; }
// Rows of `cols` elements are padded so that fragment loads of neighbouring rows fall in different
// banks: by 16 bytes (ldmatrix rows land in distinct 16-byte bank groups), except fp32 rows that run
// along M or N (cols != BK), read one word per thread: there the 4 k-rows a thread quad reads must
// start 8 banks apart, hence 32 bytes.
MFA_HOST_DEVICE constexpr int mfa_sm80_pad(int cols, int in_bytes) {
  return (in_bytes == 4 && cols != mfa_sm80_bk(in_bytes) ? 32 : 16) / in_bytes;
}
// One stage holds the A tile and the B tile, each stored in global orientation, rows padded.
MFA_HOST_DEVICE constexpr int mfa_sm80_tile_elems(int rows, int cols, int in_bytes) {
  return rows * (cols + mfa_sm80_pad(cols, in_bytes));
}
MFA_HOST_DEVICE constexpr int mfa_sm80_stage_elems(int trans_a, int trans_b, int in_bytes) {
  return (trans_a ? mfa_sm80_tile_elems(mfa_sm80_bk(in_bytes), MFA_SM80_BM, in_bytes)
                  : mfa_sm80_tile_elems(MFA_SM80_BM, mfa_sm80_bk(in_bytes), in_bytes)) +
         (trans_b ? mfa_sm80_tile_elems(MFA_SM80_BN, mfa_sm80_bk(in_bytes), in_bytes)
                  : mfa_sm80_tile_elems(mfa_sm80_bk(in_bytes), MFA_SM80_BN, in_bytes));
}
MFA_HOST_DEVICE constexpr int mfa_sm80_smem_bytes(int trans_a, int trans_b, int in_bytes) {
  return MFA_SM80_STAGES * mfa_sm80_stage_elems(trans_a, trans_b, in_bytes) * in_bytes;
}

// ----- sm_90a kernel: TMA boxes, wgmma tile, ring depth -----
// A block computes BM x BN tiles with two consumer warpgroups (64 rows each) and one producer
// warpgroup. BN is the variant's choice (128 or 256): a generated source defines MFA_SM90_BN, the host
// passes it to the formulas below. TMA boxes are 64 elements (128 bytes, the swizzle span) wide on the
// contiguous dimension.
#define MFA_SM90_BM 128
#define MFA_SM90_BK 64
#define MFA_SM90_THREADS 384
#define MFA_SM90_BOX 64
#define MFA_SM90_SMEM_LIMIT (227 * 1024)  // opt-in dynamic shared memory of one block on sm_90
MFA_HOST_DEVICE constexpr int mfa_sm90_stage_bytes(int bn) { return (MFA_SM90_BM + bn) * MFA_SM90_BK * 2; }
// As many stages as fit beside 1 KB of alignment slack and two 8-byte mbarriers a stage: 4 of 48 KB
// for 128 x 256, 7 of 32 KB for 128 x 128.
MFA_HOST_DEVICE constexpr int mfa_sm90_stages(int bn) {
  return (MFA_SM90_SMEM_LIMIT - 1024) / (mfa_sm90_stage_bytes(bn) + 2 * 8);
}
// The ring, its mbarriers, and 1 KB so the ring can start on a 1024-byte (swizzle atom) boundary.
MFA_HOST_DEVICE constexpr int mfa_sm90_smem_bytes(int bn) {
  return mfa_sm90_stages(bn) * (mfa_sm90_stage_bytes(bn) + 2 * 8) + 1024;
}

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
// ----- device side: element conversion and the epilogue shared by every path -----
#include "ptx.cuh"

__device__ __forceinline__ float mfa_activate(float x, int activation) {
  switch (activation) {
    case MFA_ACT_RELU: return fmaxf(x, 0.0f);
    case MFA_ACT_GELU_TANH: {
      const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + tanhf(inner));
    }
    case MFA_ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case MFA_ACT_SILU: return x / (1.0f + __expf(-x));
    default: return x;
  }
}

template <int DTYPE>
__device__ __forceinline__ float mfa_load_as_float(const void *base, long long index) {
  if (DTYPE == MFA_GEMM_F32) return static_cast<const float *>(base)[index];
  const unsigned short bits = static_cast<const unsigned short *>(base)[index];
  return DTYPE == MFA_GEMM_F16 ? mfa_f16_to_f32(bits) : mfa_bf16_to_f32(bits);
}

__device__ __forceinline__ float mfa_load_bias(const void *bias, int dtype, int col) {
  switch (dtype) {
    case MFA_GEMM_F16: return mfa_load_as_float<MFA_GEMM_F16>(bias, col);
    case MFA_GEMM_BF16: return mfa_load_as_float<MFA_GEMM_BF16>(bias, col);
    case MFA_GEMM_F32: return mfa_load_as_float<MFA_GEMM_F32>(bias, col);
    default: return 0.0f;
  }
}

template <int DTYPE>
__device__ __forceinline__ void mfa_store_from_float(void *base, long long index, float value) {
  if (DTYPE == MFA_GEMM_F32) {
    static_cast<float *>(base)[index] = value;
  } else {
    static_cast<unsigned short *>(base)[index] =
        DTYPE == MFA_GEMM_F16 ? mfa_f32_to_f16(value) : mfa_f32_to_bf16(value);
  }
}

// Two adjacent elements at base[index], base[index + 1] as one 32-bit (16-bit types) or 64-bit (f32)
// access; index must be even and base aligned to two elements.
template <int DTYPE>
__device__ __forceinline__ void mfa_load_pair_as_float(const void *base, long long index, float &v0, float &v1) {
  if (DTYPE == MFA_GEMM_F32) {
    const float2 pair = *reinterpret_cast<const float2 *>(static_cast<const float *>(base) + index);
    v0 = pair.x;
    v1 = pair.y;
  } else {
    const unsigned bits = *reinterpret_cast<const unsigned *>(static_cast<const unsigned short *>(base) + index);
    v0 = mfa_load_as_float<DTYPE>(&bits, 0);
    v1 = mfa_load_as_float<DTYPE>(&bits, 1);
  }
}

template <int DTYPE>
__device__ __forceinline__ void mfa_store_pair_from_float(void *base, long long index, float v0, float v1) {
  if (DTYPE == MFA_GEMM_F32) {
    *reinterpret_cast<float2 *>(static_cast<float *>(base) + index) = make_float2(v0, v1);
  } else {
    unsigned short halves[2];
    mfa_store_from_float<DTYPE>(halves, 0, v0);
    mfa_store_from_float<DTYPE>(halves, 1, v1);
    *reinterpret_cast<unsigned *>(static_cast<unsigned short *>(base) + index) = halves[0] | halves[1] << 16;
  }
}

// C[row, col] = act(alpha * acc + beta * C[row, col] + bias[col]) for one in-bounds element of
// batch `batch_index`. beta == 0 never reads C, so C may hold anything (NaN included) on entry.
template <int C_DTYPE>
__device__ __forceinline__ void mfa_epilogue_store(const mfa_gemm_args &args, int batch_index, int row,
                                                   int col, float acc) {
  const long long index = batch_index * args.batch_stride_c + (long long)row * args.ldc + col;
  float value = args.alpha * acc;
  if (args.beta != 0.0f) value += args.beta * mfa_load_as_float<C_DTYPE>(args.c, index);
  if (args.bias_dtype) value += mfa_load_bias(args.bias, args.bias_dtype, col);
  mfa_store_from_float<C_DTYPE>(args.c, index, mfa_activate(value, args.activation));
}
#endif
