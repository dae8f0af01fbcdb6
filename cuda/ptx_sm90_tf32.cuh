// ptx_sm90_tf32.cuh: the Hopper (sm_90a) idioms of the fp32-accurate (3xTF32) GEMM, one named helper
// each. Self-contained on purpose (it needs only ptx.cuh): gemm_sm90.cu's ptx_sm90.cuh holds the same
// ideas for the 16-bit path, and every name here carries the mfa_tf32_ prefix so the two can never
// clash. Section numbers follow the PTX ISA 9.0 document: 9.7.9.25.5.2 cp.async.bulk.tensor,
// 9.7.13.4 fence, 9.7.13.14 elect.sync, 9.7.13.15 mbarrier, 9.7.15 wgmma,
// 9.7.19.5 setmaxnreg. Shared-memory operands are 32-bit shared-window addresses ("r").
#pragma once

#include "ptx.cuh"  // mfa_smem_addr, mfa_f32_to_tf32

// ----- thread roles and registers -----

// True in exactly one lane of the (fully converged) warp: elect.sync with a full member mask.
__device__ __forceinline__ bool mfa_tf32_elect_one() {
  unsigned elected;
  asm volatile(
      "{ .reg .pred p; elect.sync _|p, 0xffffffff; selp.u32 %0, 1, 0, p; }" : "=r"(elected) : : "memory");
  return elected != 0;
}
// Lower this warpgroup's per-thread register budget to REGS (setmaxnreg.dec, sm_90a).
template <int REGS>
__device__ __forceinline__ void mfa_tf32_setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" : : "n"(REGS));
}
// Raise this warpgroup's per-thread register budget to REGS (setmaxnreg.inc, sm_90a).
template <int REGS>
__device__ __forceinline__ void mfa_tf32_setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" : : "n"(REGS));
}

// ----- mbarriers and fences -----

// Initialise the mbarrier at `bar` to expect `count` arrivals per phase; its current phase is 0.
__device__ __forceinline__ void mfa_tf32_mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" : : "r"(bar), "r"(count) : "memory");
}
// Release this thread's earlier mbarrier.init to the other threads of the cluster (and so of the CTA).
__device__ __forceinline__ void mfa_tf32_fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" : : : "memory");
}
// Order this thread's earlier generic-proxy shared-memory accesses before later async-proxy ones
// (wgmma operand reads, TMA writes).
__device__ __forceinline__ void mfa_tf32_fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;" : : : "memory");
}
// One arrival on `bar` that also raises its pending transaction count by `bytes`.
__device__ __forceinline__ void mfa_tf32_mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" : : "r"(bar), "r"(bytes) : "memory");
}
// One arrival on `bar` (release at CTA scope).
__device__ __forceinline__ void mfa_tf32_mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" : : "r"(bar) : "memory");
}
// Block until the phase of `bar` with parity `parity` has completed (acquire at CTA scope).
__device__ __forceinline__ void mfa_tf32_mbar_wait(unsigned bar, unsigned parity) {
  unsigned done;
  do {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// ----- TMA -----

// Pull the tensor map (a __grid_constant__ kernel parameter) into the TMA unit's descriptor cache.
__device__ __forceinline__ void mfa_tf32_tma_prefetch_map(const void *map) {
  asm volatile("prefetch.tensormap [%0];" : : "l"(reinterpret_cast<unsigned long long>(map)) : "memory");
}
// Copy the box at {c0, c1, c2} of `map` to shared `dst`, completing bytes on mbarrier `bar` (zeros off the edge).
__device__ __forceinline__ void mfa_tf32_tma_load_3d(unsigned dst, const void *map, unsigned bar, int c0, int c1,
                                                     int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];"
      :
      : "r"(dst), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// ----- wgmma -----

// Matrix descriptor (9.7.15.5.1.2.2) of a 128B-swizzled operand at `smem_addr` (1024-byte atoms,
// base offset 0): start, LBO, SBO as (x & 0x3FFFF) >> 4 in bits 0-13, 16-29, 32-45; mode 1 in bits 62-63.
__device__ __forceinline__ unsigned long long mfa_tf32_desc_sw128(unsigned smem_addr, unsigned lbo_bytes,
                                                                  unsigned sbo_bytes) {
  return static_cast<unsigned long long>((smem_addr & 0x3FFFF) >> 4) |
         static_cast<unsigned long long>((lbo_bytes & 0x3FFFF) >> 4) << 16 |
         static_cast<unsigned long long>((sbo_bytes & 0x3FFFF) >> 4) << 32 | 1ull << 62;
}
// Order this warpgroup's earlier register writes (accumulators, A fragments) before the next wgmma.
__device__ __forceinline__ void mfa_tf32_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" : : : "memory"); }
// Close the wgmma.mma_async issued since the last commit into one wgmma-group.
__device__ __forceinline__ void mfa_tf32_wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" : : : "memory");
}
// Wait until at most N of this warpgroup's wgmma-groups are pending.
template <int N>
__device__ __forceinline__ void mfa_tf32_wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" : : "n"(N) : "memory");
}
// Pin a register in program order (no instruction moves its reads or writes across this point).
__device__ __forceinline__ void mfa_tf32_fence_operand(float &reg) { asm volatile("" : "+f"(reg) : : "memory"); }

#define MFA_TF32_ACC8(d, i)                                                                   \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])

// D(64x128, f32) = A(64x8, tf32, registers) * B(8x128, tf32, K-major shared memory via desc_b)
// + (SCALE_D ? D : 0). A fragment (9.7.15.5.1.1, the m16n8k8 tf32 layout per warp): thread t of the
// warpgroup holds a[0] = (row 16 (t/32) + (t%32)/4, k = t%4), a[1] = row + 8, a[2] = k + 4,
// a[3] = row + 8, k + 4. D fragment as for every m64nN f32 wgmma (see the epilogue). tf32 operands
// have no transpose immediates: both must be K-major.
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
