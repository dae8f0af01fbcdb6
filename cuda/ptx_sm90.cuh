// ptx_sm90.cuh: the Hopper (sm_90a) idioms, one named helper each, so that kernels read as names and
// the inline PTX lives in one place. Section numbers follow the PTX ISA 9.0 document: 9.7.9.15
// prefetch, 9.7.9.25.5.2 cp.async.bulk.tensor, 9.7.13.4 membar/fence, 9.7.13.14 elect.sync,
// 9.7.13.15 mbarrier, 9.7.15 wgmma, 9.7.13.1 bar.sync, 9.7.19.5 setmaxnreg. Shared-memory operands are 32-bit
// shared-window addresses (the "r" constraint), produced by mfa_smem_addr (ptx.cuh).
#pragma once

#include "ptx.cuh"  // mfa_smem_addr

// ----- thread roles -----

// Index of the calling thread's warpgroup (4 consecutive warps, 128 threads) within the block.
__device__ __forceinline__ int mfa_warpgroup_index() { return static_cast<int>(threadIdx.x) / 128; }
// Index of the calling thread within its warpgroup, 0..127.
__device__ __forceinline__ int mfa_warpgroup_thread() { return static_cast<int>(threadIdx.x) % 128; }
// True in exactly one lane of the (fully converged) warp: elect.sync with a full member mask.
__device__ __forceinline__ bool mfa_elect_one() {
  unsigned elected;
  asm volatile(
      "{ .reg .pred p; elect.sync _|p, 0xffffffff; selp.u32 %0, 1, 0, p; }" : "=r"(elected) : : "memory");
  return elected != 0;
}

// ----- register reallocation between warpgroups (setmaxnreg, 9.7.19.5, sm_90a) -----

// Lower this warpgroup's per-thread register budget to REGS (multiple of 8, 24..256).
template <int REGS>
__device__ __forceinline__ void mfa_setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" : : "n"(REGS));
}
// Raise this warpgroup's per-thread register budget to REGS (taken from the pool others released).
template <int REGS>
__device__ __forceinline__ void mfa_setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" : : "n"(REGS));
}

// ----- mbarriers (9.7.13.15) and the fences around them (9.7.13.4) -----

// Initialise the mbarrier at `bar` to expect `count` arrivals per phase; its current phase is 0.
__device__ __forceinline__ void mfa_mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" : : "r"(bar), "r"(count) : "memory");
}
// Release this thread's earlier mbarrier.init to the other threads of the cluster (and so of the CTA).
__device__ __forceinline__ void mfa_fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" : : : "memory");
}
// Order this thread's earlier generic-proxy shared-memory accesses before later async-proxy ones.
__device__ __forceinline__ void mfa_fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;" : : : "memory");
}
// One arrival on `bar` (release at CTA scope) that also raises its pending transaction count by `bytes`.
__device__ __forceinline__ void mfa_mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" : : "r"(bar), "r"(bytes) : "memory");
}
// One arrival on `bar` (release at CTA scope).
__device__ __forceinline__ void mfa_mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" : : "r"(bar) : "memory");
}
// One arrival on the mbarrier at `cluster_bar`, a shared::cluster address (mfa_cluster_map) that may be
// another block's of the cluster. Release at CTA scope (the default), as for a local arrival: it tells
// the other block's TMA that this block's wgmma (already waited for) have read a stage. A .cluster
// release compiles to MEMBAR.ALL.GPU, which waited for the wgmma group still in flight: the 128 x 128
// pairs ran at 235 TFLOPS against 660 for single blocks (H200, 4096^3).
__device__ __forceinline__ void mfa_mbar_arrive_cluster(unsigned cluster_bar) {
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" : : "r"(cluster_bar) : "memory");
}
// True once the phase of `bar` with parity `parity` has completed (acquire at CTA scope); may
// suspend the thread for a system-dependent time before returning false.
__device__ __forceinline__ bool mfa_mbar_try_wait(unsigned bar, unsigned parity) {
  unsigned done;
  asm volatile(
      "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Block until the phase of `bar` with parity `parity` has completed.
__device__ __forceinline__ void mfa_mbar_wait(unsigned bar, unsigned parity) {
  while (!mfa_mbar_try_wait(bar, parity)) {
  }
}

// Where a role is in a ring of STAGES mbarrier-guarded stages: the stage it touches next and the parity
// of that stage's phase. A pass over the ring flips the parity; waiting on the parity before the current
// phase returns at once, which is how a producer finds every stage free on its first pass.
template <int STAGES>
struct mfa_ring_pos {
  int stage = 0;
  unsigned phase = 0;
  __device__ void advance() {
    if (++stage == STAGES) {
      stage = 0;
      phase ^= 1;
    }
  }
  // The position one step back: the stage touched last.
  __device__ mfa_ring_pos previous() const {
    return stage == 0 ? mfa_ring_pos{STAGES - 1, phase ^ 1u} : mfa_ring_pos{stage - 1, phase};
  }
};

// ----- named barriers (bar.sync, 9.7.13.1): synchronise a subset of the block's warps -----

// Wait until `threads` threads (a multiple of 32, every warp of them whole) have arrived at barrier
// `id` (1..15; 0 is __syncthreads's); orders their earlier memory accesses before their later ones.
__device__ __forceinline__ void mfa_named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" : : "r"(id), "r"(threads) : "memory");
}

// ----- signalling between blocks through global memory (the memory consistency model, chapter 8) -----
// A producer block writes data, makes its threads' writes visible to one thread (a barrier), which
// raises a flag with release semantics at GPU scope; a consumer thread spins on the flag with acquire
// loads, then shares what it acquired with its block (a barrier). Release and acquire are cumulative,
// so the data written before the producer's barrier is visible after the consumer's. The data moves
// with .cg accesses (cached in L2 only): a block never sees an L1 line of another block's writes.

// flag = token, ordered after every memory access this thread has observed (fence.acq_rel.gpu + a
// relaxed store at GPU scope: a release pattern of chapter 8; CUTLASS's barrier arrive has the same shape).
__device__ __forceinline__ void mfa_flag_release(unsigned long long *flag, unsigned long long token) {
  asm volatile("fence.acq_rel.gpu;\n st.relaxed.gpu.global.b64 [%0], %1;" : : "l"(flag), "l"(token) : "memory");
}
// Spin until *flag == token (the acquiring load orders this thread's later accesses after the release),
// then lower the flag to 0: the flag's one reader leaves it as a later launch with the same token (a
// replayed command list) must find it.
__device__ __forceinline__ void mfa_flag_acquire_and_lower(unsigned long long *flag, unsigned long long token) {
  unsigned long long value;
  do {
    asm volatile("ld.acquire.gpu.global.b64 %0, [%1];" : "=l"(value) : "l"(flag) : "memory");
  } while (value != token);
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" : : "l"(flag), "l"(0ull) : "memory");
}
// 16-byte global store and load, cached in L2 only (the .cg cache operator of st and ld).
__device__ __forceinline__ void mfa_store_cg(float4 *address, float4 v) {
  asm volatile("st.global.cg.v4.f32 [%0], {%1, %2, %3, %4};"
               :
               : "l"(address), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}
__device__ __forceinline__ float4 mfa_load_cg(const float4 *address) {
  float4 v;
  asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "l"(address)
               : "memory");
  return v;
}

// ----- TMA: bulk copies (cp.async.bulk, 9.7.9.25.4.1) and bulk tensor copies (cp.async.bulk.tensor,
// 9.7.9.25.5.2) -----

// Copy `bytes` (a multiple of 16) from global memory at `src` into shared memory at `dst`, both 16-byte
// aligned; completion adds the bytes to the transaction count of mbarrier `bar`.
__device__ __forceinline__ void mfa_bulk_load(unsigned dst, const void *src, unsigned bytes, unsigned bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :
               : "r"(dst), "l"(reinterpret_cast<unsigned long long>(src)), "r"(bytes), "r"(bar)
               : "memory");
}

// Pull the tensor map (a __grid_constant__ kernel parameter) into the TMA unit's descriptor cache.
__device__ __forceinline__ void mfa_tma_prefetch_map(const void *map) {
  asm volatile("prefetch.tensormap [%0];" : : "l"(reinterpret_cast<unsigned long long>(map)) : "memory");
}
// Copy the box at coordinates {c0, c1, c2} of `map` into shared memory at `dst`; completion adds
// the box's bytes to the transaction count of mbarrier `bar` (out-of-range elements arrive as zeros).
__device__ __forceinline__ void mfa_tma_load_3d(unsigned dst, const void *map, unsigned bar, int c0, int c1,
                                                int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];"
      :
      : "r"(dst), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// As mfa_tma_load_3d, but the box lands at offset `dst` of every block of the cluster named in `cta_mask`
// (bit r: rank r), each block's mbarrier at offset `bar` receiving the complete_tx (.multicast::cluster).
__device__ __forceinline__ void mfa_tma_load_3d_multicast(unsigned dst, const void *map, unsigned bar, int c0, int c1,
                                                          int c2, unsigned short cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3, %4}], [%5], %6;"
      :
      : "r"(dst), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "h"(cta_mask)
      : "memory");
}

// 2-, 4- and 8-byte stores to shared memory at a shared-window address, and a 4-byte load.
__device__ __forceinline__ void mfa_st_shared_b16(unsigned address, unsigned short value) {
  asm volatile("st.shared.b16 [%0], %1;" : : "r"(address), "h"(value) : "memory");
}
__device__ __forceinline__ void mfa_st_shared_b32(unsigned address, unsigned value) {
  asm volatile("st.shared.b32 [%0], %1;" : : "r"(address), "r"(value) : "memory");
}
__device__ __forceinline__ int mfa_ld_shared_b32(unsigned address) {
  int value;
  asm volatile("ld.shared.b32 %0, [%1];" : "=r"(value) : "r"(address) : "memory");
  return value;
}
__device__ __forceinline__ void mfa_st_shared_v2_f32(unsigned address, float x, float y) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};" : : "r"(address), "f"(x), "f"(y) : "memory");
}
// Copy shared memory at `src` into the box at {c0, c1, c2} of `map` (elements outside the tensor are
// not written), as part of this thread's current bulk async-group.
__device__ __forceinline__ void mfa_tma_store_3d(const void *map, unsigned src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];"
               :
               : "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(src)
               : "memory");
}
// Close this thread's current bulk async-group (cp.async.bulk.commit_group, 9.7.9.25.6.1).
__device__ __forceinline__ void mfa_bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Wait until at most N of this thread's bulk async-groups are pending their reads of shared memory
// (.read: the source may be overwritten; the global writes may still be in flight).
template <int N>
__device__ __forceinline__ void mfa_bulk_wait_group_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" : : "n"(N) : "memory");
}

// ----- wgmma (9.7.15 "Asynchronous Warpgroup Level Matrix Multiply-Accumulate") -----

// Shared-memory matrix descriptor (9.7.15.5.1.2.2 "Matrix Descriptor Format"): bits 0-13 start
// address, 16-29 leading-dimension byte offset, 32-45 stride-dimension byte offset, each encoded as
// (x & 0x3FFFF) >> 4; bits 49-51 base offset, left 0, which requires the 128B swizzle pattern to start
// on a 1024-byte boundary (start-address bits 7-9 zero); bits 62-63 swizzle mode (1 = 128-byte).
__device__ __forceinline__ unsigned long long mfa_wgmma_desc_sw128(unsigned smem_addr, unsigned lbo_bytes,
                                                                   unsigned sbo_bytes) {
  return static_cast<unsigned long long>((smem_addr & 0x3FFFF) >> 4) |
         static_cast<unsigned long long>((lbo_bytes & 0x3FFFF) >> 4) << 16 |
         static_cast<unsigned long long>((sbo_bytes & 0x3FFFF) >> 4) << 32 | 1ull << 62;
}
// Order this warpgroup's earlier register accesses before the wgmma.mma_async that follow.
__device__ __forceinline__ void mfa_wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" : : : "memory");
}
// Close the wgmma.mma_async issued since the last commit into one wgmma-group.
__device__ __forceinline__ void mfa_wgmma_commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;" : : : "memory");
}
// Wait until at most N of this warpgroup's wgmma-groups are still pending.
template <int N>
__device__ __forceinline__ void mfa_wgmma_wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" : : "n"(N) : "memory");
}
// Pin an accumulator register in program order (no instruction moves its reads/writes across this).
__device__ __forceinline__ void mfa_fence_operand(float &reg) { asm volatile("" : "+f"(reg) : : "memory"); }

// ----- wgmma.mma_async: one m64nNk16 product, f32 accumulators, f16 or bf16 operands -----
// The N/2 accumulators a thread holds are the asm's first operands (%0 ..); the PTX list (MFA_WGMMA_B<n>)
// and the "+f" constraints (MFA_ACC<n>, passed by name so that the shape macros expand them last) of
// every shape are built from runs of eight (MFA_WGMMA_R<i>: "%i, .., %i+7"; MFA_ACC8), so each is
// spelled once. The operands after them are numbered from N/2 on, which the preprocessor cannot
// count: each shape passes its numbers. The scale-a and scale-b immediates are 1 (no negation).
#define MFA_WGMMA_R0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define MFA_WGMMA_R8 "%8, %9, %10, %11, %12, %13, %14, %15"
#define MFA_WGMMA_R16 "%16, %17, %18, %19, %20, %21, %22, %23"
#define MFA_WGMMA_R24 "%24, %25, %26, %27, %28, %29, %30, %31"
#define MFA_WGMMA_R32 "%32, %33, %34, %35, %36, %37, %38, %39"
#define MFA_WGMMA_R40 "%40, %41, %42, %43, %44, %45, %46, %47"
#define MFA_WGMMA_R48 "%48, %49, %50, %51, %52, %53, %54, %55"
#define MFA_WGMMA_R56 "%56, %57, %58, %59, %60, %61, %62, %63"
#define MFA_WGMMA_R64 "%64, %65, %66, %67, %68, %69, %70, %71"
#define MFA_WGMMA_R72 "%72, %73, %74, %75, %76, %77, %78, %79"
#define MFA_WGMMA_R80 "%80, %81, %82, %83, %84, %85, %86, %87"
#define MFA_WGMMA_R88 "%88, %89, %90, %91, %92, %93, %94, %95"
#define MFA_WGMMA_R96 "%96, %97, %98, %99, %100, %101, %102, %103"
#define MFA_WGMMA_R104 "%104, %105, %106, %107, %108, %109, %110, %111"
#define MFA_WGMMA_R112 "%112, %113, %114, %115, %116, %117, %118, %119"
#define MFA_WGMMA_R120 "%120, %121, %122, %123, %124, %125, %126, %127"
#define MFA_WGMMA_B8 MFA_WGMMA_R0
#define MFA_WGMMA_B16 MFA_WGMMA_B8 ", " MFA_WGMMA_R8
#define MFA_WGMMA_B24 MFA_WGMMA_B16 ", " MFA_WGMMA_R16
#define MFA_WGMMA_B32 MFA_WGMMA_B24 ", " MFA_WGMMA_R24
#define MFA_WGMMA_B40 MFA_WGMMA_B32 ", " MFA_WGMMA_R32
#define MFA_WGMMA_B48 MFA_WGMMA_B40 ", " MFA_WGMMA_R40
#define MFA_WGMMA_B56 MFA_WGMMA_B48 ", " MFA_WGMMA_R48
#define MFA_WGMMA_B64 MFA_WGMMA_B56 ", " MFA_WGMMA_R56
#define MFA_WGMMA_B72 MFA_WGMMA_B64 ", " MFA_WGMMA_R64
#define MFA_WGMMA_B80 MFA_WGMMA_B72 ", " MFA_WGMMA_R72
#define MFA_WGMMA_B88 MFA_WGMMA_B80 ", " MFA_WGMMA_R80
#define MFA_WGMMA_B96 MFA_WGMMA_B88 ", " MFA_WGMMA_R88
#define MFA_WGMMA_B104 MFA_WGMMA_B96 ", " MFA_WGMMA_R96
#define MFA_WGMMA_B112 MFA_WGMMA_B104 ", " MFA_WGMMA_R104
#define MFA_WGMMA_B120 MFA_WGMMA_B112 ", " MFA_WGMMA_R112
#define MFA_WGMMA_B128 MFA_WGMMA_B120 ", " MFA_WGMMA_R120
#define MFA_ACC8(d, i)                                                                                                \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),                         \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define MFA_ACC8_0(d) MFA_ACC8(d, 0)
#define MFA_ACC16(d) MFA_ACC8(d, 0), MFA_ACC8(d, 8)
#define MFA_ACC24(d) MFA_ACC16(d), MFA_ACC8(d, 16)
#define MFA_ACC32(d) MFA_ACC24(d), MFA_ACC8(d, 24)
#define MFA_ACC40(d) MFA_ACC32(d), MFA_ACC8(d, 32)
#define MFA_ACC48(d) MFA_ACC40(d), MFA_ACC8(d, 40)
#define MFA_ACC56(d) MFA_ACC48(d), MFA_ACC8(d, 48)
#define MFA_ACC64(d) MFA_ACC56(d), MFA_ACC8(d, 56)
#define MFA_ACC72(d) MFA_ACC64(d), MFA_ACC8(d, 64)
#define MFA_ACC80(d) MFA_ACC72(d), MFA_ACC8(d, 72)
#define MFA_ACC88(d) MFA_ACC80(d), MFA_ACC8(d, 80)
#define MFA_ACC96(d) MFA_ACC88(d), MFA_ACC8(d, 88)
#define MFA_ACC104(d) MFA_ACC96(d), MFA_ACC8(d, 96)
#define MFA_ACC112(d) MFA_ACC104(d), MFA_ACC8(d, 104)
#define MFA_ACC120(d) MFA_ACC112(d), MFA_ACC8(d, 112)
#define MFA_ACC128(d) MFA_ACC120(d), MFA_ACC8(d, 120)

// Both operands from shared memory: the accumulators, then desc-a, desc-b, scale-d (a predicate: 0
// overwrites D), imm-trans-a, imm-trans-b at the numbers given.
#define MFA_WGMMA_SS(SHAPE_TYPE, BODY, ACCS, DESC_A, DESC_B, SCALE_D, TRANS_A_, TRANS_B_)                             \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " SCALE_D ", 0;\n"                                                 \
               " wgmma.mma_async.sync.aligned." SHAPE_TYPE "\n"                                                       \
               " {" BODY "}, " DESC_A ", " DESC_B ", p, 1, 1, " TRANS_A_ ", " TRANS_B_ ";\n}\n"                       \
               : ACCS(d)                                                                                              \
               : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TRANS_A), "n"(TRANS_B)                                   \
               : "memory")
// A from registers (a[0..3], the k16 fragment), B from shared memory: the accumulators, then the four A
// registers, desc-b, scale-d, imm-trans-b at the numbers given.
#define MFA_WGMMA_RS(SHAPE_TYPE, BODY, ACCS, A0, DESC_B, SCALE_D, TRANS_B_)                                           \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " SCALE_D ", 0;\n"                                                 \
               " wgmma.mma_async.sync.aligned." SHAPE_TYPE "\n"                                                       \
               " {" BODY "}, " A0 ", " DESC_B ", p, 1, 1, " TRANS_B_ ";\n}\n"                                         \
               : ACCS(d)                                                                                              \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(TRANS_B)                  \
               : "memory")
// The f16 or bf16 form of a shape ("m64nNk16").
#define MFA_WGMMA_TYPED(FORM, SHAPE, ...)                                                                             \
  do {                                                                                                                \
    if constexpr (IN_DTYPE == 1) FORM(SHAPE ".f32.f16.f16", __VA_ARGS__);                                             \
    else FORM(SHAPE ".f32.bf16.bf16", __VA_ARGS__);                                                                   \
  } while (0)

// D(64xN, f32) = A(64x16) * B(16xN) + (scale_d ? D : 0), A and B read from shared memory through
// descriptors; IN_DTYPE 1 = f16, 2 = bf16. TRANS_A = 1: A is M-major, TRANS_B = 1: B is N-major
// (imm-trans-a / imm-trans-b, 9.7.15.5.1.2 "Shared Memory Matrix Layout"); 0 means K-major.
// N: the GEMM tile's width (a multiple of 16 from 64 to 256; gemm_sm90.cu) and attention's score tile
// S = Q K^T (80, 128, 176: the key block, attention_sm90.cu).
template <int N, int IN_DTYPE, int TRANS_A, int TRANS_B>
__device__ __forceinline__ void mfa_wgmma_ss(float (&d)[N / 2], unsigned long long desc_a, unsigned long long desc_b,
                                             int scale_d) {
  static_assert(IN_DTYPE == 1 || IN_DTYPE == 2, "wgmma operands are f16 or bf16");
  if constexpr (N == 16)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n16k16", MFA_WGMMA_B8, MFA_ACC8_0, "%8", "%9", "%10", "%11", "%12");
  else if constexpr (N == 32)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n32k16", MFA_WGMMA_B16, MFA_ACC16, "%16", "%17", "%18", "%19", "%20");
  else if constexpr (N == 48)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n48k16", MFA_WGMMA_B24, MFA_ACC24, "%24", "%25", "%26", "%27", "%28");
  else if constexpr (N == 64)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n64k16", MFA_WGMMA_B32, MFA_ACC32, "%32", "%33", "%34", "%35", "%36");
  else if constexpr (N == 80)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n80k16", MFA_WGMMA_B40, MFA_ACC40, "%40", "%41", "%42", "%43", "%44");
  else if constexpr (N == 96)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n96k16", MFA_WGMMA_B48, MFA_ACC48, "%48", "%49", "%50", "%51", "%52");
  else if constexpr (N == 112)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n112k16", MFA_WGMMA_B56, MFA_ACC56, "%56", "%57", "%58", "%59", "%60");
  else if constexpr (N == 128)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n128k16", MFA_WGMMA_B64, MFA_ACC64, "%64", "%65", "%66", "%67", "%68");
  else if constexpr (N == 144)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n144k16", MFA_WGMMA_B72, MFA_ACC72, "%72", "%73", "%74", "%75", "%76");
  else if constexpr (N == 160)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n160k16", MFA_WGMMA_B80, MFA_ACC80, "%80", "%81", "%82", "%83", "%84");
  else if constexpr (N == 176)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n176k16", MFA_WGMMA_B88, MFA_ACC88, "%88", "%89", "%90", "%91", "%92");
  else if constexpr (N == 192)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n192k16", MFA_WGMMA_B96, MFA_ACC96, "%96", "%97", "%98", "%99", "%100");
  else if constexpr (N == 208)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n208k16", MFA_WGMMA_B104, MFA_ACC104, "%104", "%105", "%106", "%107", "%108");
  else if constexpr (N == 224)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n224k16", MFA_WGMMA_B112, MFA_ACC112, "%112", "%113", "%114", "%115", "%116");
  else if constexpr (N == 240)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n240k16", MFA_WGMMA_B120, MFA_ACC120, "%120", "%121", "%122", "%123", "%124");
  else if constexpr (N == 256)
    MFA_WGMMA_TYPED(MFA_WGMMA_SS, "m64n256k16", MFA_WGMMA_B128, MFA_ACC128, "%128", "%129", "%130", "%131", "%132");
  else
    static_assert(N == 64, "shared-memory wgmma shapes: m64nNk16, N a multiple of 16 from 16 to 256");
}

// D(64xN, f32) = A(64x16) * B(16xN) + (scale_d ? D : 0) with A from registers: a[0..3] hold the
// 16-bit pairs of the k16 A fragment (9.7.15.5.1.1: thread t of warp q holds rows 16q + t/4 and
// 16q + t/4 + 8, columns 2(t%4) + {0,1} and 8 + 2(t%4) + {0,1}, in the order a0 (row, col), a1 (row+8,
// col), a2 (row, col+8), a3 (row+8, col+8)). B from shared memory, TRANS_B = 1: N-major.
// N = 64 .. 256: attention's O += P V (N = the value head dimension, padded to 64).
template <int N, int IN_DTYPE, int TRANS_B>
__device__ __forceinline__ void mfa_wgmma_rs(float (&d)[N / 2], const unsigned (&a)[4], unsigned long long desc_b,
                                             int scale_d) {
  static_assert(IN_DTYPE == 1 || IN_DTYPE == 2, "wgmma operands are f16 or bf16");
  if constexpr (N == 64)
    MFA_WGMMA_TYPED(MFA_WGMMA_RS, "m64n64k16", MFA_WGMMA_B32, MFA_ACC32, "{%32, %33, %34, %35}", "%36", "%37", "%38");
  else if constexpr (N == 128)
    MFA_WGMMA_TYPED(MFA_WGMMA_RS, "m64n128k16", MFA_WGMMA_B64, MFA_ACC64, "{%64, %65, %66, %67}", "%68", "%69", "%70");
  else if constexpr (N == 192)
    MFA_WGMMA_TYPED(MFA_WGMMA_RS, "m64n192k16", MFA_WGMMA_B96, MFA_ACC96, "{%96, %97, %98, %99}", "%100", "%101",
                    "%102");
  else if constexpr (N == 256)
    MFA_WGMMA_TYPED(MFA_WGMMA_RS, "m64n256k16", MFA_WGMMA_B128, MFA_ACC128, "{%128, %129, %130, %131}", "%132", "%133",
                    "%134");
  else
    static_assert(N == 64, "register-A wgmma shapes: m64n{64,128,192,256}k16");
}
#undef MFA_WGMMA_R0
#undef MFA_WGMMA_R8
#undef MFA_WGMMA_R16
#undef MFA_WGMMA_R24
#undef MFA_WGMMA_R32
#undef MFA_WGMMA_R40
#undef MFA_WGMMA_R48
#undef MFA_WGMMA_R56
#undef MFA_WGMMA_R64
#undef MFA_WGMMA_R72
#undef MFA_WGMMA_R80
#undef MFA_WGMMA_R88
#undef MFA_WGMMA_R96
#undef MFA_WGMMA_R104
#undef MFA_WGMMA_R112
#undef MFA_WGMMA_R120
#undef MFA_WGMMA_B32
#undef MFA_WGMMA_B40
#undef MFA_WGMMA_B64
#undef MFA_WGMMA_B88
#undef MFA_WGMMA_B96
#undef MFA_WGMMA_B128
#undef MFA_ACC8
#undef MFA_ACC32
#undef MFA_ACC40
#undef MFA_ACC64
#undef MFA_ACC88
#undef MFA_ACC96
#undef MFA_ACC128
#undef MFA_WGMMA_SS
#undef MFA_WGMMA_RS
#undef MFA_WGMMA_TYPED

// ===== attention (attention_sm90.cu): the idioms its consumers and producer add to the above =====

// Signal barrier `id` (see mfa_named_barrier_sync) without waiting: counts this warp's threads toward
// `threads`, so a warpgroup can let another one pass while it goes on (FA3's ping-pong hand-off).
__device__ __forceinline__ void mfa_named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" : : "r"(id), "r"(threads) : "memory");
}

// As mfa_tma_load_3d with a 4-D box at {c0, c1, c2, c3} (attention's (dim, token, head, batch) maps).
__device__ __forceinline__ void mfa_tma_load_4d(unsigned dst, const void *map, unsigned bar, int c0, int c1, int c2,
                                                int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];"
      :
      : "r"(dst), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// Two floats rounded to 16 bits (DTYPE 1 f16, 2 bf16) in one register: lo in bits 0-15, hi in 16-31,
// the order of a wgmma register fragment pair (cvt.rn.{f16x2,bf16x2}.f32 d, hi, lo, 9.7.9.21).
template <int DTYPE>
__device__ __forceinline__ unsigned mfa_pack_f32x2(float lo, float hi) {
  unsigned packed;
  if constexpr (DTYPE == 1) asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
  else asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
  return packed;
}

// Pin a 32-bit register in program order: keeps a wgmma's register A operand alive (and unmodified)
// until after the wait_group that retires the wgmma reading it.
__device__ __forceinline__ void mfa_fence_operand(unsigned &reg) { asm volatile("" : "+r"(reg) : : "memory"); }
