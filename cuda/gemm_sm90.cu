// gemm_sm90.cu: the Hopper (sm_90a) GEMM path. TMA copies A and B tiles into a ring of shared-memory
// stages; wgmma multiplies them straight out of shared memory; mbarriers hand each stage from the
// producer warpgroup to the two consumer warpgroups and back.
//
// Included after gemm.cuh by a generated source that defines MFA_IN_DTYPE (1 f16, 2 bf16),
// MFA_OUT_DTYPE (1 f16, 2 bf16, 3 f32), MFA_TRANS_A and MFA_TRANS_B. PTX ISA section numbers below
// follow the PTX ISA 9.0 document.
#include "ptx_sm90.cuh"

// ----- the tile -----
// A block computes C[m0 : m0+128, n0 : n0+128] of one batch. Warpgroup 0 loads; warpgroups 1 and 2
// each own 64 rows of the tile and one m64n128 f32 accumulator (64 registers a thread). The k loop
// steps 64 elements (128 bytes: one 128-byte swizzle span) at a time, four k16 wgmma per step.
static_assert(MFA_SM90_BM == 128 && MFA_SM90_BN == 128 && MFA_SM90_BK == 64 && MFA_SM90_BOX == 64,
              "the descriptors and boxes below are worked out for a 128x128x64 tile");
static_assert(MFA_SM90_THREADS == 3 * 128, "one producer and two consumer warpgroups");
static_assert(MFA_IN_DTYPE == MFA_GEMM_F16 || MFA_IN_DTYPE == MFA_GEMM_BF16, "16-bit inputs only");

constexpr int kSm90WgmmaK = 16;                                    // k of one wgmma
constexpr int kSm90Slices = MFA_SM90_BK / kSm90WgmmaK;             // wgmma per stage and warpgroup
constexpr unsigned kSm90RowBytes = MFA_SM90_BOX * 2;               // 128: one swizzled smem row
constexpr unsigned kSm90OperandBytes = MFA_SM90_BM * kSm90RowBytes;  // 16 KB: A (or B) of one stage
constexpr unsigned kSm90StageBytes = 2 * kSm90OperandBytes;        // A region, then B region
constexpr unsigned kSm90HalfBytes = kSm90OperandBytes / 2;         // 8 KB: 64 rows; one MN-major box
constexpr unsigned kSm90SwizzleAtomBytes = 8 * kSm90RowBytes;      // 1 KB: 8 rows, the 128B-swizzle period
constexpr int kSm90ConsumerWarps = 8;                              // arrivals that free a stage
static_assert(kSm90StageBytes == mfa_sm90_stage_bytes(), "stage size agrees with gemm.cuh");

// ----- operand layouts in shared memory and their wgmma descriptors -----
// Every operand is written by TMA with CU_TENSOR_MAP_SWIZZLE_128B: box row r (128 bytes) lands at
// r * 128 with its 16-byte chunk c moved to chunk c ^ (r % 8). Regions start on 1024-byte
// boundaries, so the pattern's phase is the address's own bits 7-9 and the descriptor's base offset
// stays 0 (9.7.15.5.1.2.2). wgmma applies the same XOR to the addresses it generates, which is why
// advancing the start address by a k16 slice (below) needs no re-swizzling.
//
// K-major (A with TRANS_A = 0, B with TRANS_B = 1): row r = one m (or n) index, 64 k contiguous.
//   In 128-bit units this is the canonical 128B-swizzle K-major layout ((8,m),(T,2k)):((8T,SBO),(1,T))
//   of 9.7.15.5.1.2.1.3. SBO (9.7.15.5.1.2.1.2, "offset from the first 8 rows to the next 8 rows")
//   = 8 * 128 = 1024 bytes. LBO (9.7.15.5.1.2.1.1) is "not used, assumed to be 1" for swizzled
//   K-major layouts; we encode 1 (16 bytes). The k16 slice s starts 32 * s bytes into row 0.
// MN-major (A with TRANS_A = 1, B with TRANS_B = 0): row r = one k index, 64 m (or n) contiguous;
//   boxes of 64 rows, the second (m or n 64..127) 8 KB after the first. The canonical layout is
//   ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)): LBO ("offset from the first (swizzle-byte-size/16) rows to
//   the next", i.e. from one 64-element MN chunk to the next) = 8192 bytes, the box pitch; SBO
//   ("offset from the first 8 columns to the next 8 columns", 8 k to the next 8 k) = 8 * 128 = 1024
//   bytes. The k16 slice s starts 16 rows = 2048 * s bytes in. The A operand of one consumer is 64 m
//   wide, a single chunk, so its LBO is never applied; B (n = 128) uses it once.
template <bool MN_MAJOR>
struct mfa_sm90_operand {
  static constexpr unsigned lbo = MN_MAJOR ? kSm90HalfBytes : 16;
  static constexpr unsigned sbo = kSm90SwizzleAtomBytes;
  static constexpr unsigned slice_bytes = MN_MAJOR ? kSm90WgmmaK * kSm90RowBytes : kSm90WgmmaK * 2;

  // Descriptor of k16 slice `slice` of the operand whose region starts at shared address `region`.
  static __device__ __forceinline__ unsigned long long desc(unsigned region, int slice) {
    return mfa_wgmma_desc_sw128(region + slice * slice_bytes, lbo, sbo);
  }

  // Issue the TMA load(s) filling this operand's 16 KB region for the tile at (mn0, k0) of batch z.
  // K-major: one 128 x 64 box at {k0, mn0, z}. MN-major: two 64 x 64 boxes at {mn0, k0, z} and
  // {mn0 + 64, k0, z}, 8 KB apart.
  static __device__ __forceinline__ void load(unsigned region, const mfa_tensor_map &map, unsigned full_bar,
                                              int mn0, int k0, int z) {
    if (MN_MAJOR) {
      mfa_tma_load_3d(region, &map, full_bar, mn0, k0, z);
      mfa_tma_load_3d(region + kSm90HalfBytes, &map, full_bar, mn0 + MFA_SM90_BOX, k0, z);
    } else {
      mfa_tma_load_3d(region, &map, full_bar, k0, mn0, z);
    }
  }
};
using mfa_sm90_a = mfa_sm90_operand<MFA_TRANS_A == 1>;  // stored [k][m] is M-major
using mfa_sm90_b = mfa_sm90_operand<MFA_TRANS_B == 0>;  // stored [k][n] is N-major
// imm-trans-a / imm-trans-b (9.7.15.5.2): 1 selects the MN-major layout for that operand.
constexpr int kSm90TransA = MFA_TRANS_A == 1 ? 1 : 0;
constexpr int kSm90TransB = MFA_TRANS_B == 0 ? 1 : 0;

// ----- the pipeline: a ring of stages, each with a `full` and an `empty` mbarrier -----
// full[s]: 1 arrival (the producer's arrive.expect_tx) plus kSm90StageBytes of TMA transactions.
// empty[s]: one arrival from each consumer warp once its wgmma have finished reading stage s.
// Both start in phase 0. A pass over the ring flips the phase the waiter looks for; try_wait.parity
// with the parity of the phase *before* the current one returns at once (9.7.13.15.16), which is
// how the producer's first pass finds every stage free.
struct mfa_sm90_ring {
  unsigned stages;  // shared address of stage 0 (1024-byte aligned)
  unsigned bars;    // shared address of full[0..STAGES), then empty[0..STAGES)

  __device__ unsigned a(int s) const { return stages + s * kSm90StageBytes; }
  __device__ unsigned b(int s) const { return a(s) + kSm90OperandBytes; }
  __device__ unsigned full(int s) const { return bars + 8 * s; }
  __device__ unsigned empty(int s) const { return bars + 8 * (MFA_SM90_STAGES + s); }
};

// Lay the ring out in the dynamic shared memory: stages from the first 1024-byte boundary, the
// mbarriers right after them (mfa_sm90_smem_bytes() reserves the 1 KB of slack and the barriers).
__device__ __forceinline__ mfa_sm90_ring mfa_sm90_ring_at(unsigned char *smem) {
  mfa_sm90_ring ring;
  ring.stages = (mfa_smem_addr(smem) + kSm90SwizzleAtomBytes - 1) & ~(kSm90SwizzleAtomBytes - 1);
  ring.bars = ring.a(MFA_SM90_STAGES);
  return ring;
}

// One thread initialises the barriers; the fences publish the initialisation to the other threads
// (fence.mbarrier_init) and to the async proxy that TMA's complete_tx acts in (fence.proxy.async),
// ahead of the block-wide barrier that follows (9.7.13.4).
__device__ __forceinline__ void mfa_sm90_ring_init(const mfa_sm90_ring &ring) {
  for (int s = 0; s < MFA_SM90_STAGES; ++s) {
    mfa_mbar_init(ring.full(s), 1);
    mfa_mbar_init(ring.empty(s), kSm90ConsumerWarps);
  }
  mfa_fence_mbar_init();
  mfa_fence_proxy_async_smem();
}

// Where a role is in the ring: the stage it touches next and the parity of that stage's phase.
struct mfa_sm90_ring_pos {
  int stage = 0;
  unsigned phase = 0;
  __device__ void advance() {
    if (++stage == MFA_SM90_STAGES) {
      stage = 0;
      phase ^= 1;
    }
  }
};

// ----- producer: one elected thread streams the k tiles of A and B through the ring -----
__device__ __forceinline__ void mfa_sm90_produce(const mfa_sm90_ring &ring, const mfa_gemm_args &args,
                                                 const mfa_tensor_map &map_a, const mfa_tensor_map &map_b,
                                                 int m0, int n0, int k_tiles) {
  // A batch stride of 0 broadcasts the operand: the host encodes such a map with batch dim 1.
  const int z_a = args.batch_stride_a != 0 ? static_cast<int>(blockIdx.z) : 0;
  const int z_b = args.batch_stride_b != 0 ? static_cast<int>(blockIdx.z) : 0;
  mfa_tma_prefetch_map(&map_a);
  mfa_tma_prefetch_map(&map_b);
  mfa_sm90_ring_pos pos;
  for (int kt = 0; kt < k_tiles; ++kt) {
    mfa_mbar_wait(ring.empty(pos.stage), pos.phase ^ 1);  // consumers are done with this stage
    mfa_mbar_arrive_expect_tx(ring.full(pos.stage), kSm90StageBytes);
    const int k0 = kt * MFA_SM90_BK;
    mfa_sm90_a::load(ring.a(pos.stage), map_a, ring.full(pos.stage), m0, k0, z_a);
    mfa_sm90_b::load(ring.b(pos.stage), map_b, ring.full(pos.stage), n0, k0, z_b);
    pos.advance();
  }
}

// ----- consumer main loop: acc = A[64 rows of warpgroup w] * B over all k tiles -----
// One wgmma-group (four k16 wgmma) per stage. The group of stage kt stays in flight while the
// thread waits for the group of stage kt-1 (wait_group 1), whose stage it then hands back.
__device__ __forceinline__ void mfa_sm90_release(const mfa_sm90_ring &ring, int stage) {
  // wait_group is .sync.aligned: every lane of this warp is past it, so one arrival speaks for the warp.
  if (threadIdx.x % 32 == 0) mfa_mbar_arrive(ring.empty(stage));
}

__device__ __forceinline__ void mfa_sm90_consume(const mfa_sm90_ring &ring, int w, int k_tiles,
                                                 float (&acc)[64]) {
  // The first wgmma overwrites acc (scale-d = 0), so acc is written by wgmma only; zeroing it ahead
  // of the loop would put a non-wgmma definition on the loop's entry edge, inside the stage kept in
  // flight across iterations, and ptxas would answer by serialising every wgmma (C7515).
  if (k_tiles == 0) {
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
    return;
  }
  const unsigned a_rows = w * kSm90HalfBytes;  // this warpgroup's 64 rows (K-major) or box (MN-major)
  mfa_sm90_ring_pos pos;
  int in_flight = -1;  // stage whose wgmma-group may still be reading shared memory
  for (int kt = 0; kt < k_tiles; ++kt) {
    mfa_mbar_wait(ring.full(pos.stage), pos.phase);  // TMA bytes of this stage have landed
    mfa_wgmma_fence();
#pragma unroll
    for (int s = 0; s < kSm90Slices; ++s) {
      mfa_wgmma_m64n128k16_f32<MFA_IN_DTYPE, kSm90TransA, kSm90TransB>(
          acc, mfa_sm90_a::desc(ring.a(pos.stage) + a_rows, s), mfa_sm90_b::desc(ring.b(pos.stage), s),
          kt > 0 || s > 0);
    }
    mfa_wgmma_commit_group();
    mfa_wgmma_wait_group<1>();
    if (in_flight >= 0) mfa_sm90_release(ring, in_flight);
    in_flight = pos.stage;
    pos.advance();
  }
  mfa_wgmma_wait_group<0>();
  if (in_flight >= 0) mfa_sm90_release(ring, in_flight);
#pragma unroll
  for (int i = 0; i < 64; ++i) mfa_fence_operand(acc[i]);  // epilogue reads only after the wait
}

// ----- epilogue: accumulator fragment -> C through the shared epilogue -----
// m64nNk16 D fragment (9.7.15.5.1.1.1, Figure 149): thread t of the warpgroup holds, for each n8
// block j, d[4j + 0..1] at row 16 * (t / 32) + (t % 32) / 4, columns 8j + 2 * (t % 4) + {0, 1}, and
// d[4j + 2..3] at the same columns, 8 rows further down.
__device__ __forceinline__ void mfa_sm90_store(const mfa_gemm_args &args, int row_base, int n0,
                                               const float (&acc)[64]) {
  const int t = mfa_warpgroup_thread();
  const int row0 = row_base + 16 * (t / 32) + (t % 32) / 4;
  const int col0 = n0 + 2 * (t % 4);
  const int batch = static_cast<int>(blockIdx.z);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + 8 * half;
    if (row >= args.m) continue;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int col = col0 + 8 * j + c;
        if (col < args.n) mfa_epilogue_store<MFA_OUT_DTYPE>(args, batch, row, col, acc[4 * j + 2 * half + c]);
      }
    }
  }
}

// ----- the kernel -----
// Grid (ceil(n / 128), ceil(m / 128), batch), 384 threads, mfa_sm90_smem_bytes() of dynamic shared
// memory. setmaxnreg moves registers from the producer (40 a thread) to the consumers (232):
// 128 * 40 + 256 * 232 = 64512 <= 65536, the register file a block of 384 threads may hold.
extern "C" __global__ void __launch_bounds__(MFA_SM90_THREADS, 1)
mfa_gemm_sm90(const __grid_constant__ mfa_gemm_args args, const __grid_constant__ mfa_tensor_map map_a,
              const __grid_constant__ mfa_tensor_map map_b) {
  extern __shared__ unsigned char mfa_sm90_smem[];  // aligned up to 1024 bytes by mfa_sm90_ring_at
  const mfa_sm90_ring ring = mfa_sm90_ring_at(mfa_sm90_smem);
  if (threadIdx.x == 0) mfa_sm90_ring_init(ring);
  __syncthreads();

  const int m0 = static_cast<int>(blockIdx.y) * MFA_SM90_BM;
  const int n0 = static_cast<int>(blockIdx.x) * MFA_SM90_BN;
  const int k_tiles = args.k / MFA_SM90_BK + (args.k % MFA_SM90_BK != 0);  // 0 when k == 0: acc = 0

  if (mfa_warpgroup_index() == 0) {
    mfa_setmaxnreg_dec<40>();
    if (threadIdx.x / 32 == 0 && mfa_elect_one()) mfa_sm90_produce(ring, args, map_a, map_b, m0, n0, k_tiles);
  } else {
    mfa_setmaxnreg_inc<232>();
    const int w = mfa_warpgroup_index() - 1;
    float acc[64];
    mfa_sm90_consume(ring, w, k_tiles, acc);
    mfa_sm90_store(args, m0 + 64 * w, n0, acc);
  }
}
