// ptx.cuh: the hardware idioms the kernels use, one small named helper each (inline PTX lives here
// and in ptx_sm90.cuh only). Sources are compiled by NVRTC without the CUDA headers, so 16-bit
// floats travel as raw bits (unsigned short) and pairs of them as one 32-bit register.
#pragma once

// ----- element conversions -----
__device__ __forceinline__ float mfa_f16_to_f32(unsigned short bits) {
  float out;
  asm("{ .reg .f16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }" : "=f"(out) : "h"(bits));
  return out;
}
__device__ __forceinline__ float mfa_bf16_to_f32(unsigned short bits) {
  return __uint_as_float(static_cast<unsigned int>(bits) << 16);
}
__device__ __forceinline__ unsigned short mfa_f32_to_f16(float value) {
  unsigned short out;
  asm("{ .reg .f16 h; cvt.rn.f16.f32 h, %1; mov.b16 %0, h; }" : "=h"(out) : "f"(value));
  return out;
}
__device__ __forceinline__ unsigned short mfa_f32_to_bf16(float value) {
  unsigned short out;
  asm("{ .reg .b16 h; cvt.rn.bf16.f32 h, %1; mov.b16 %0, h; }" : "=h"(out) : "f"(value));
  return out;
}

// ----- fast transcendental -----
// 2^x on the multi-function unit (relative error ~2^-22; 2^-inf = 0, which masked scores rely on).
__device__ __forceinline__ float mfa_exp2_approx(float x) {
  float out;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(out) : "f"(x));
  return out;
}

// ----- shared-memory addressing -----
// The 32-bit shared-window address of a generic pointer into shared memory (what cp.async and
// ldmatrix take).
__device__ __forceinline__ unsigned int mfa_smem_addr(const void *pointer) {
  return static_cast<unsigned int>(__cvta_generic_to_shared(pointer));
}

// ----- asynchronous global -> shared copies (sm_80) -----
// Copies 16 bytes, bypassing L1; only the first src_bytes (0..16) are read, the rest of dst is zeroed.
__device__ __forceinline__ void mfa_cp_async_16_zfill(void *dst, const void *src, unsigned int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(mfa_smem_addr(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
}
// Copies BYTES (4, 8 or 16) bytes, both addresses aligned to BYTES; 16 bypasses L1 (.cg).
template <int BYTES>
__device__ __forceinline__ void mfa_cp_async(void *dst, const void *src) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(mfa_smem_addr(dst)), "l"(src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(mfa_smem_addr(dst)), "l"(src), "n"(BYTES)
                 : "memory");
}
// Closes the group of cp.async this thread issued since its last commit (an empty group is fine).
__device__ __forceinline__ void mfa_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void mfa_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}
// The same for a run-time count, 0 to 7 (more waits for 7).
__device__ __forceinline__ void mfa_cp_async_wait_at_most(int pending) {
  switch (pending) {
    case 0: return mfa_cp_async_wait<0>();
    case 1: return mfa_cp_async_wait<1>();
    case 2: return mfa_cp_async_wait<2>();
    case 3: return mfa_cp_async_wait<3>();
    case 4: return mfa_cp_async_wait<4>();
    case 5: return mfa_cp_async_wait<5>();
    case 6: return mfa_cp_async_wait<6>();
    default: return mfa_cp_async_wait<7>();
  }
}

// ----- warp-wide fragment loads from shared memory -----
// Four 8x8 b16 matrices: lanes 8i..8i+7 give the 16-byte row addresses of matrix i; lane t receives
// elements 2(t%4), 2(t%4)+1 of row t/4 of matrix i in r[i] (for 32-bit data: word t%4 of row t/4).
__device__ __forceinline__ void mfa_ldmatrix_x4(unsigned int (&r)[4], const void *row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(mfa_smem_addr(row)));
}
// As mfa_ldmatrix_x4, each matrix transposed: lane t receives rows 2(t%4), 2(t%4)+1 of column t/4.
__device__ __forceinline__ void mfa_ldmatrix_x4_trans(unsigned int (&r)[4], const void *row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(mfa_smem_addr(row)));
}

// ----- warp-wide matrix multiply-accumulate (sm_80), d += a * b with fp32 accumulators -----
// m16n8k16, fp16 inputs: a is the row-major 16x16 fragment, b the column-major 16x8 one.
__device__ __forceinline__ void mfa_mma_m16n8k16_f16(float (&d)[4], const unsigned int (&a)[4],
                                                     const unsigned int (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// m16n8k16, bf16 inputs (fragments as in mfa_mma_m16n8k16_f16).
__device__ __forceinline__ void mfa_mma_m16n8k16_bf16(float (&d)[4], const unsigned int (&a)[4],
                                                      const unsigned int (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// m16n8k8, tf32 inputs (fp32 bit patterns whose low 13 bits the tensor core ignores).
__device__ __forceinline__ void mfa_mma_m16n8k8_tf32(float (&d)[4], const unsigned int (&a)[4],
                                                     const unsigned int (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// fp32 -> tf32, rounded to nearest (ties away from zero); returns the fp32 bit pattern, low 13 bits 0.
__device__ __forceinline__ unsigned int mfa_f32_to_tf32(float value) {
  unsigned int out;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(out) : "f"(value));
  return out;
}
