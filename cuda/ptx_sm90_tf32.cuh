// ptx_sm90_tf32.cuh: the Hopper (sm_90a) idioms that only the fp32-accurate (3xTF32) GEMM needs.
// The generic ones (elect.sync, setmaxnreg, mbarriers, fences, TMA, wgmma fence/commit/wait, the
// 128B-swizzle descriptor) come from ptx_sm90.cuh, shared with the 16-bit path; what stays here is the
// tf32 wgmma with A from registers. Section numbers follow the PTX ISA 9.0 document (9.7.15 wgmma).
#pragma once

#include "ptx_sm90.cuh"  // mfa_smem_addr, mfa_f32_to_tf32 (ptx.cuh) and the shared sm_90a helpers

#define MFA_TF32_ACC8(d, i)                                                                   \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])

// D(64x128, f32) = A(64x8, tf32, registers) * B(8x128, tf32, K-major shared memory via desc_b)
// + (SCALE_D ? D : 0). A fragment (9.7.15.5.1.1, the m16n8k8 tf32 layout per warp): thread t of the
// warpgroup holds a[0] = (row 16 (t/32) + (t%32)/4, k = t%4), a[1] = row + 8, a[2] = k + 4,
// a[3] = row + 8, k + 4. D fragment as for every m64nN f32 wgmma (see gemm_sm90_epilogue.cuh). tf32
// operands have no transpose immediates: both must be K-major.
template <int SCALE_D>
__device__ __forceinline__ void mfa_tf32_wgmma_m64n128k8_rs(float (&d)[64], const unsigned (&a)[4],
                                                            unsigned long long desc_b) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"
      " wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32\n"
      " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "  %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "  %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "  %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63},"
      " {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
      : MFA_TF32_ACC8(d, 0), MFA_TF32_ACC8(d, 8), MFA_TF32_ACC8(d, 16), MFA_TF32_ACC8(d, 24),
        MFA_TF32_ACC8(d, 32), MFA_TF32_ACC8(d, 40), MFA_TF32_ACC8(d, 48), MFA_TF32_ACC8(d, 56)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(SCALE_D)
      : "memory");
}
#undef MFA_TF32_ACC8
