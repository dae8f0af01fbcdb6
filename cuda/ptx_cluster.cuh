// ptx_cluster.cuh: thread-block clusters (sm_90+): a block's rank in its cluster, distributed shared
// memory reads, and the cluster barrier, one named helper each (PTX ISA 9.0: 9.7.9.13 mapa,
// 9.7.9.8 ld.shared::cluster, 9.7.13.2 barrier.cluster, 10.13 %cluster_ctarank / %cluster_nctarank);
// and programmatic dependent launch (9.7.15.x griddepcontrol), sm_90's other inter-block mechanism.
// Include only from code compiled for sm_90 or later.
#pragma once

#include "ptx.cuh"  // mfa_smem_addr

__device__ __forceinline__ unsigned mfa_cluster_rank() {
  unsigned rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

__device__ __forceinline__ unsigned mfa_cluster_blocks() {
  unsigned count;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(count));
  return count;
}

// The shared::cluster address of `smem_addr` (a shared-window address of this block) in block `rank`.
__device__ __forceinline__ unsigned mfa_cluster_map(unsigned smem_addr, unsigned rank) {
  unsigned out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(out) : "r"(smem_addr), "r"(rank));
  return out;
}

__device__ __forceinline__ float mfa_cluster_load_f32(unsigned cluster_addr) {
  float value;
  // volatile (kept in order with the barriers), no memory clobber: several loads may be in flight at once
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(value) : "r"(cluster_addr));
  return value;
}

// Every thread of every block of the cluster calls both, in this order: arrive (release: this thread's
// earlier shared-memory writes become visible to the cluster) then wait (acquire). Not .aligned: a
// caller may reach them right after a branch taken by one thread.
__device__ __forceinline__ void mfa_cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release;" : : : "memory");
}
__device__ __forceinline__ void mfa_cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire;" : : : "memory");
}
// An arrive that orders no memory: for a barrier that only keeps blocks (and their shared memory)
// alive, such as the one before a kernel's exit. A release arrive compiles to MEMBAR.ALL.GPU, which would
// first wait for every global store this thread issued (measured in the group-norm one-pass kernel).
__device__ __forceinline__ void mfa_cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed;" : : : "memory");
}

// Programmatic dependent launch: a grid launched with programmatic stream serialization may start while
// the previous grid in its stream still runs. mfa_grid_dependency_wait() returns once that grid has
// completed and its memory is visible (call it before touching global memory);
// mfa_grid_launch_dependents() lets the next such grid start once every block of this one has called it
// (or exited).
__device__ __forceinline__ void mfa_grid_dependency_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void mfa_grid_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;"); }

// The dependency wait of a thread that reaches it at every step of a loop, such as a producer's, which
// waits right before its first load so that the work ahead of that load overlaps the previous grid:
// the first call waits, the others test a register.
struct mfa_grid_dependency {
  bool resolved = false;
  __device__ void wait() {
    if (resolved) return;
    mfa_grid_dependency_wait();
    resolved = true;
  }
};
