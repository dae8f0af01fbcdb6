// gemm_sm90.cu: the Hopper (sm_90a) GEMM path. A persistent grid of blocks walks the output tiles;
// in each block TMA copies A and B tiles into a ring of shared-memory stages, wgmma multiplies them
// straight out of shared memory, and mbarriers hand each stage from the producer warpgroup to the two
// consumer warpgroups and back. With clusters of two blocks, the pair computes vertically adjacent tiles
// that share their B tile: each block loads half of it, multicast into both blocks' rings, so a block
// pulls (128 + BN / 2) x 64 elements from L2 a stage instead of (128 + BN) x 64.
//
// Included after gemm.cuh by a generated source that defines MFA_IN_DTYPE (1 f16, 2 bf16), MFA_OUT_DTYPE (1 f16,
// 2 bf16, 3 f32), MFA_TRANS_A, MFA_TRANS_B, MFA_SM90_BN (a multiple of 16 from 64 to 256, or from 16 with a
// K-major B: the tile's width), MFA_SM90_CLUSTER_M (1 or 2: blocks of a cluster, stacked along M) and, for a
// kernel given C^T = op(B)^T op(A)^T, MFA_SM90_C_TRANSPOSED 1. PTX ISA section numbers below follow the PTX ISA
// 9.0 document.
#include "ptx_cluster.cuh"
#include "ptx_sm90.cuh"
#include "gemm_sm90_epilogue.cuh"  // mfa_sm90_epilogue

// ----- the tile -----
// A block computes C[m0 : m0+128, n0 : n0+BN] of one batch at a time. Warpgroup 0 loads; warpgroups 1
// and 2 each own 64 rows of the tile and one m64nBNk16 f32 accumulator (BN / 2 registers a thread).
// The k loop steps 64 elements (128 bytes: one 128-byte swizzle span) at a time, four k16 wgmma per step.
static_assert(MFA_SM90_BM == 128 && MFA_SM90_BK == 64 && MFA_SM90_BOX == 64,
              "the descriptors and boxes below are worked out for 128-row tiles and a 64-wide k step");
static_assert(MFA_SM90_BN % 16 == 0 && MFA_SM90_BN >= 16 && MFA_SM90_BN <= 256 &&
                  (MFA_TRANS_B == 1 || !mfa_sm90_narrow(MFA_SM90_BN)),
              "the tile's width is wgmma's n: a multiple of 16 (whole n8 blocks of both consumers' halves), "
              "from 64 where B arrives in 64-wide N-major boxes");
static_assert(MFA_SM90_THREADS == 3 * 128, "one producer and two consumer warpgroups");
static_assert(MFA_IN_DTYPE == MFA_GEMM_F16 || MFA_IN_DTYPE == MFA_GEMM_BF16, "16-bit inputs only");
static_assert(MFA_SM90_CLUSTER_M == 1 || (MFA_SM90_CLUSTER_M == 2 && MFA_SM90_BN % 128 == 0),
              "pairs of blocks split B into halves of whole 64-wide boxes");

constexpr int kSm90Stages = mfa_sm90_stages(MFA_SM90_BN);
constexpr int kSm90Acc = MFA_SM90_BN / 2;                          // accumulators a consumer thread holds
constexpr int kSm90WgmmaK = 16;                                    // k of one wgmma
constexpr int kSm90Slices = MFA_SM90_BK / kSm90WgmmaK;             // wgmma per stage and warpgroup
constexpr unsigned kSm90RowBytes = MFA_SM90_BOX * 2;               // 128: one swizzled smem row
constexpr unsigned kSm90BoxBytes = MFA_SM90_BOX * kSm90RowBytes;   // 8 KB: 64 rows; one MN-major box
constexpr unsigned kSm90ABytes = MFA_SM90_BM * kSm90RowBytes;      // 16 KB: A of one stage
constexpr unsigned kSm90BBytes = mfa_sm90_b_region_cols(MFA_SM90_BN) * kSm90RowBytes;  // B's region, whole boxes
constexpr unsigned kSm90StageBytes = kSm90ABytes + kSm90BBytes;    // A region, then B region
constexpr unsigned kSm90SwizzleAtomBytes = 8 * kSm90RowBytes;      // 1 KB: 8 rows, the 128B-swizzle period
constexpr int kSm90Cluster = MFA_SM90_CLUSTER_M;                   // blocks sharing each B tile
constexpr int kSm90ConsumerWarps = 8;                              // warps that read a stage, per block
static_assert(kSm90StageBytes == mfa_sm90_stage_bytes(MFA_SM90_BN), "stage size agrees with gemm.cuh");

// ----- operand layouts in shared memory and their wgmma descriptors -----
// Every operand is written by TMA with CU_TENSOR_MAP_SWIZZLE_128B: box row r (128 bytes) lands at
// r * 128 with its 16-byte chunk c moved to chunk c ^ (r % 8). Regions start on 1024-byte
// boundaries, so the pattern's phase is the address's own bits 7-9 and the descriptor's base offset
// stays 0 (9.7.15.5.1.2.2). wgmma applies the same XOR to the addresses it generates, which is why
// advancing the start address by a k16 slice (below) needs no re-swizzling.
//
// An operand covers EXTENT rows of the output tile (A: 128 m, B: BN n) and 64 k.
// K-major (A with TRANS_A = 0, B with TRANS_B = 1): row r = one m (or n) index, 64 k contiguous; one
//   TMA box of EXTENT rows (the host encodes the map with that box height, at most 256).
//   In 128-bit units this is the canonical 128B-swizzle K-major layout ((8,m),(T,2k)):((8T,SBO),(1,T))
//   of 9.7.15.5.1.2.1.3. SBO (9.7.15.5.1.2.1.2, "offset from the first 8 rows to the next 8 rows")
//   = 8 * 128 = 1024 bytes. LBO (9.7.15.5.1.2.1.1) is "not used, assumed to be 1" for swizzled
//   K-major layouts; we encode 1 (16 bytes). The k16 slice s starts 32 * s bytes into row 0.
// MN-major (A with TRANS_A = 1, B with TRANS_B = 0): row r = one k index, 64 m (or n) contiguous;
//   EXTENT / 64 boxes of 64 rows, 8 KB apart. The canonical layout is
//   ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)): LBO ("offset from the first (swizzle-byte-size/16) rows to
//   the next", i.e. from one 64-element MN chunk to the next) = 8192 bytes, the box pitch; SBO
//   ("offset from the first 8 columns to the next 8 columns", 8 k to the next 8 k) = 8 * 128 = 1024
//   bytes. The k16 slice s starts 16 rows = 2048 * s bytes in. The A operand of one consumer is 64 m
//   wide, a single chunk, so its LBO is never applied; B (n = BN) steps it BN / 64 - 1 times.
// Either way the 64 rows (or the box) of consumer w's A start w * 8 KB into the A region.
// An extent that is not a multiple of 64 (tiles 80 .. 240 wide) fills its last MN-major box partly: the
// box is loaded whole (the columns past the tile belong to the next one, or lie outside B and arrive as
// zeros) and wgmma reads the extent's columns only.
template <bool MN_MAJOR, int EXTENT>
struct mfa_sm90_operand {
  static_assert(EXTENT % 16 == 0 && EXTENT <= 256, "TMA box dimensions are at most 256");
  static constexpr int boxes = (EXTENT + MFA_SM90_BOX - 1) / MFA_SM90_BOX;  // MN-major: 64-wide boxes
  static constexpr unsigned bytes = MN_MAJOR ? boxes * kSm90BoxBytes : EXTENT * kSm90RowBytes;  // a stage's TMA bytes
  static constexpr unsigned lbo = MN_MAJOR ? kSm90BoxBytes : 16;
  static constexpr unsigned sbo = kSm90SwizzleAtomBytes;
  static constexpr unsigned slice_bytes = MN_MAJOR ? kSm90WgmmaK * kSm90RowBytes : kSm90WgmmaK * 2;

  // Descriptor of k16 slice `slice` of the operand whose region starts at shared address `region`.
  static __device__ __forceinline__ unsigned long long desc(unsigned region, int slice) {
    return mfa_wgmma_desc_sw128(region + slice * slice_bytes, lbo, sbo);
  }

  // Issue the TMA load(s) of part `part` of PARTS equal parts of this operand's region for the tile at
  // (mn0, k0) of batch z; with PARTS > 1 each part is multicast to the PARTS blocks of the cluster, whose
  // rings sit at the same offsets. K-major: a part is one (EXTENT / PARTS) x 64 box at {k0, mn0 + its
  // first row, z} (the host encodes the map with that box height). MN-major: 64 x 64 boxes at
  // {mn0 + 64 i, k0, z}, boxes / PARTS of them a part.
  template <int PARTS>
  static __device__ __forceinline__ void load(unsigned region, const mfa_tensor_map &map, unsigned full_bar,
                                              int mn0, int k0, int z, int part) {
    static_assert(MN_MAJOR ? boxes % PARTS == 0 : EXTENT % (8 * PARTS) == 0,
                  "a part is whole boxes (MN-major) or whole 8-row swizzle atoms (K-major)");
    constexpr int rows = EXTENT / PARTS;  // of the operand's extent (m or n) in one part
    const auto copy = [&](unsigned dst, int c0, int c1) {
      if constexpr (PARTS > 1)
        mfa_tma_load_3d_multicast(dst, &map, full_bar, c0, c1, z, (1u << PARTS) - 1);
      else
        mfa_tma_load_3d(dst, &map, full_bar, c0, c1, z);
    };
    if (MN_MAJOR) {
#pragma unroll
      for (int i = part * boxes / PARTS; i < (part + 1) * boxes / PARTS; ++i)
        copy(region + i * kSm90BoxBytes, mn0 + i * MFA_SM90_BOX, k0);
    } else {
      copy(region + part * rows * kSm90RowBytes, k0, mn0 + part * rows);
    }
  }
};
using mfa_sm90_a = mfa_sm90_operand<MFA_TRANS_A == 1, MFA_SM90_BM>;  // stored [k][m] is M-major
using mfa_sm90_b = mfa_sm90_operand<MFA_TRANS_B == 0, MFA_SM90_BN>;  // stored [k][n] is N-major
constexpr unsigned kSm90StageTxBytes = mfa_sm90_a::bytes + mfa_sm90_b::bytes;  // what TMA writes a stage
// imm-trans-a / imm-trans-b (9.7.15.5.2): 1 selects the MN-major layout for that operand.
constexpr int kSm90TransA = MFA_TRANS_A == 1 ? 1 : 0;
constexpr int kSm90TransB = MFA_TRANS_B == 0 ? 1 : 0;

// ----- where a tile is: the tile numbers of the schedule (gemm.cuh, mfa_gemm_schedule) -----
// The schedule's tiles and units are the cluster's: a unit is a cluster, its tile kSm90Cluster block
// tiles stacked along M, block `rank` of the cluster computing the rank-th. Tiles are numbered batch by
// batch. Inside a batch, kSm90GroupM consecutive M-tiles form a group that is walked column by column
// (M fastest), so the clusters running at one time cover a few A row-blocks and a few B column-blocks,
// each read by several blocks while it is still in L2.
constexpr int kSm90GroupM = 8;
constexpr int kSm90UnitRows = MFA_SM90_BM * kSm90Cluster;

// This block's unit of the schedule and its rank in the unit's cluster (the grid is 1-D, clusters of
// kSm90Cluster consecutive blocks).
__device__ __forceinline__ int mfa_sm90_unit() { return blockIdx.x / kSm90Cluster; }
__device__ __forceinline__ int mfa_sm90_rank() { return blockIdx.x % kSm90Cluster; }

struct mfa_sm90_tile {
  int m0, n0, batch;
};

__device__ __forceinline__ mfa_sm90_tile mfa_sm90_tile_at(const mfa_gemm_schedule &s, int t, int rank) {
  const int per_batch = s.tiles_m * s.tiles_n;
  const int batch = t / per_batch;
  const int in_batch = t - batch * per_batch;
  const int group = in_batch / (kSm90GroupM * s.tiles_n);
  const int first_m = group * kSm90GroupM;
  const int group_rows = min(kSm90GroupM, s.tiles_m - first_m);  // the last group may be shorter
  const int in_group = in_batch - group * kSm90GroupM * s.tiles_n;
  return {(first_m + in_group % group_rows) * kSm90UnitRows + rank * MFA_SM90_BM, (in_group / group_rows) * MFA_SM90_BN,
          batch};
}

// ----- the pipeline: a ring of stages, each with a `full` and an `empty` mbarrier -----
// full[s]: 1 arrival (the producer's arrive.expect_tx) plus kSm90StageTxBytes of TMA transactions (with
// clusters, half of B's bytes come from the other block's multicast: they may land before this block's
// expect_tx, which the transaction count allows, since the phase cannot complete without the arrival).
// empty[s]: one arrival from each consumer warp of every block of the cluster once its wgmma have
// finished reading stage s: the producers multicast B into each other's stage s, so stage s is free only
// when every block has consumed it.
// Both start in phase 0. A pass over the ring flips the phase the waiter looks for; try_wait.parity
// with the parity of the phase *before* the current one returns at once (9.7.13.15.16), which is
// how the producer's first pass finds every stage free. Producer and consumers each keep their own
// position in the ring across tiles; both visit the stages in the same order, k_tiles per tile, so
// stage s's n-th fill is its n-th consumption on either side. Both walk the same work items (the
// block's unit of the schedule), k_end - k_begin stages each.
struct mfa_sm90_ring {
  unsigned stages;   // shared address of stage 0 (1024-byte aligned)
  unsigned staging;  // shared address of the epilogue's buffers (below), after the last stage
  unsigned bars;     // shared address of full[0..STAGES), then empty[0..STAGES)

  __device__ unsigned a(int s) const { return stages + s * kSm90StageBytes; }
  __device__ unsigned b(int s) const { return a(s) + kSm90ABytes; }
  __device__ unsigned full(int s) const { return bars + 8 * s; }
  __device__ unsigned empty(int s) const { return bars + 8 * (kSm90Stages + s); }
};

// Lay the ring out in the dynamic shared memory: stages from the first 1024-byte boundary, the
// epilogue's staging buffers and the mbarriers right after them (mfa_sm90_smem_bytes() reserves the
// 1 KB of slack, the buffers and the barriers).
__device__ __forceinline__ mfa_sm90_ring mfa_sm90_ring_at(unsigned char *smem) {
  mfa_sm90_ring ring;
  ring.stages = (mfa_smem_addr(smem) + kSm90SwizzleAtomBytes - 1) & ~(kSm90SwizzleAtomBytes - 1);
  ring.staging = ring.a(kSm90Stages);
  ring.bars = ring.staging + mfa_sm90_staging_bytes(MFA_SM90_BN);
  return ring;
}

// One thread initialises the barriers; the fences publish the initialisation to the other threads
// (fence.mbarrier_init) and to the async proxy that TMA's complete_tx acts in (fence.proxy.async),
// ahead of the block-wide barrier that follows (9.7.13.4).
__device__ __forceinline__ void mfa_sm90_ring_init(const mfa_sm90_ring &ring) {
  for (int s = 0; s < kSm90Stages; ++s) {
    mfa_mbar_init(ring.full(s), 1);
    mfa_mbar_init(ring.empty(s), kSm90ConsumerWarps * kSm90Cluster);
  }
  mfa_fence_mbar_init();
  mfa_fence_proxy_async_smem();
}

// Where a role is in the ring (ptx_sm90.cuh).
using mfa_sm90_ring_pos = mfa_ring_pos<kSm90Stages>;

// ----- producer: one elected thread streams the k tiles of A and B through the ring -----
// It runs ahead of the consumers by up to kSm90Stages stages, across work items: the first stages of
// a block's next item load while the consumers are still in this item's epilogue or fix-up.
// It waits for the previous kernel (programmatic dependent launch) right before its first load, so that
// the first item's arithmetic and the first stage's barriers are done while that kernel still runs.
// Behind one block-wide wait they took 0.9-1.0 us after its release (timer stamps, H200, 128^3 to
// 1024^3 fp16): moved ahead of it, square fp16 NN and NT ran 1.17-1.31x the TFLOPS from 128^3 to 768^3,
// 1.06-1.10x at 1024^3 and 1152^3, the same from 1536^3 up (`bench gemm`, both builds on one H200).
// With clusters it then waits until every stage has been freed once more: the other block's consumers
// arrive on this block's barriers, and the other producer multicasts into this block's ring, so the
// block may exit only after both are done (which frees every stage in both blocks).
__device__ __forceinline__ void mfa_sm90_produce(const mfa_sm90_ring &ring, const mfa_gemm_args &args,
                                                 const mfa_tensor_map &map_a, const mfa_tensor_map &map_b) {
  mfa_sm90_ring_pos pos;
  const int unit = mfa_sm90_unit(), rank = mfa_sm90_rank();
  const int items = mfa_gemm_work_count(args.schedule, unit);
  mfa_grid_dependency previous_grid;
  for (int i = 0; i < items; ++i) {
    const mfa_gemm_work work = mfa_gemm_work_at(args.schedule, unit, i);
    const mfa_sm90_tile tile = mfa_sm90_tile_at(args.schedule, work.tile, rank);
    // A batch stride of 0 broadcasts the operand: the host encodes such a map with batch dim 1.
    const int z_a = args.batch_stride_a != 0 ? tile.batch : 0;
    const int z_b = args.batch_stride_b != 0 ? tile.batch : 0;
    for (int kt = work.k_begin; kt < work.k_end; ++kt) {
      mfa_mbar_wait(ring.empty(pos.stage), pos.phase ^ 1);  // consumers are done with this stage
      mfa_mbar_arrive_expect_tx(ring.full(pos.stage), kSm90StageTxBytes);
      previous_grid.wait();
      const int k0 = kt * MFA_SM90_BK;
      mfa_sm90_a::load<1>(ring.a(pos.stage), map_a, ring.full(pos.stage), tile.m0, k0, z_a, 0);
      mfa_sm90_b::load<kSm90Cluster>(ring.b(pos.stage), map_b, ring.full(pos.stage), tile.n0, k0, z_b, rank);
      pos.advance();
    }
  }
  if (kSm90Cluster == 1) return;
  for (int s = 0; s < kSm90Stages; ++s) {
    mfa_mbar_wait(ring.empty(pos.stage), pos.phase ^ 1);
    pos.advance();
  }
}

// ----- consumer main loop: acc = A[64 rows of warpgroup w] * B over the k tiles of one work item -----
// One wgmma-group (four k16 wgmma) per stage. The group of stage kt stays in flight while the
// thread waits for the group of stage kt-1 (wait_group 1), whose stage it then hands back.
__device__ __forceinline__ void mfa_sm90_release(const mfa_sm90_ring &ring, int stage) {
  // wait_group is .sync.aligned: every lane of this warp is past it, so one arrival speaks for the warp.
  if (threadIdx.x % 32 != 0) return;
  if (kSm90Cluster == 1) {
    mfa_mbar_arrive(ring.empty(stage));
    return;
  }
#pragma unroll
  for (int r = 0; r < kSm90Cluster; ++r) mfa_mbar_arrive_cluster(mfa_cluster_map(ring.empty(stage), r));
}

// One stage's wgmma-group; the first (first_stage, slice 0) overwrites acc (scale-d = 0).
__device__ __forceinline__ void mfa_sm90_mma_stage(const mfa_sm90_ring &ring, int stage, unsigned a_rows,
                                                   bool first_stage, float (&acc)[kSm90Acc]) {
  mfa_wgmma_fence();
#pragma unroll
  for (int s = 0; s < kSm90Slices; ++s) {
    mfa_wgmma_ss<MFA_SM90_BN, MFA_IN_DTYPE, kSm90TransA, kSm90TransB>(
        acc, mfa_sm90_a::desc(ring.a(stage) + a_rows, s), mfa_sm90_b::desc(ring.b(stage), s), !first_stage || s > 0);
  }
  mfa_wgmma_commit_group();
}

// k_tiles >= 1 (the kernel handles k == 0 apart). acc is written by wgmma only: the first stage is
// peeled off the loop so that the loop's entry edge carries only wgmma definitions of acc (the
// epilogue's writes of the previous tile end before the first wgmma.fence); otherwise ptxas sees a
// non-wgmma definition inside the pipelined stage and serialises every wgmma (C7515).
__device__ __forceinline__ void mfa_sm90_consume(const mfa_sm90_ring &ring, mfa_sm90_ring_pos &pos, int w,
                                                 int k_tiles, float (&acc)[kSm90Acc]) {
  const unsigned a_rows = w * kSm90BoxBytes;  // this warpgroup's 64 rows (K-major) or box (MN-major)
  mfa_mbar_wait(ring.full(pos.stage), pos.phase);  // TMA bytes of this stage have landed
  mfa_sm90_mma_stage(ring, pos.stage, a_rows, true, acc);
  int in_flight = pos.stage;  // stage whose wgmma-group may still be reading shared memory
  pos.advance();
  for (int kt = 1; kt < k_tiles; ++kt) {
    mfa_mbar_wait(ring.full(pos.stage), pos.phase);
    mfa_sm90_mma_stage(ring, pos.stage, a_rows, false, acc);
    mfa_wgmma_wait_group<1>();
    mfa_sm90_release(ring, in_flight);
    in_flight = pos.stage;
    pos.advance();
  }
  mfa_wgmma_wait_group<0>();
  mfa_sm90_release(ring, in_flight);
#pragma unroll
  for (int i = 0; i < kSm90Acc; ++i) mfa_fence_operand(acc[i]);  // epilogue reads only after the wait
}

// ----- epilogue: C through shared memory and TMA stores -----
// The arithmetic is gemm_sm90_epilogue.cuh's (shared with gemm_sm90_tf32.cu), N = kSm90Acc. Written
// straight from the wgmma fragment, C leaves in 4-byte pieces, a quad of lanes covering 16 bytes of a
// row: at 2048^3 (one wave of 128 x 256 tiles) those stores took a quarter of the kernel (539 TFLOPS
// against 715 with them left out, H200). Staged instead, each consumer warpgroup writes its 64 rows one
// chunk at a time (64 rows x 128 bytes, one swizzle span: 64 16-bit or 32 fp32 columns) into one of its
// two 8 KB buffers, 128-byte swizzled (a quad's 16 bytes in 8 rows land in 8 different bank groups: no
// conflicts), and one thread stores the chunk with TMA, which leaves out what lies outside C, while the
// warpgroup fills the other buffer. The host encodes C's map (box 128 bytes x 64 rows, SWIZZLE_128B)
// where C's base and strides are 16-byte multiples, as TMA needs; elsewhere (args.c_by_tma == 0) C is
// written element by element (mfa_sm90_epilogue).
constexpr int kSm90OutBytes = MFA_OUT_DTYPE == MFA_GEMM_F32 ? 4 : 2;
constexpr int kSm90ChunkCols = kSm90RowBytes / kSm90OutBytes;
constexpr unsigned kSm90ChunkBytes = 64 * kSm90RowBytes;
static_assert(2 * 2 * kSm90ChunkBytes == MFA_SM90_STAGING_BYTES, "two buffers for each consumer warpgroup");
// A tile whose width is not a whole number of chunks (80 .. 240 wide with 16-bit C, 80, 112, .. with fp32)
// writes the columns past its last whole chunk from registers: a chunk-wide TMA store there would
// overwrite the next tile's first columns.
constexpr int kSm90WholeChunks = mfa_sm90_narrow(MFA_SM90_BN) ? 0 : MFA_SM90_BN / kSm90ChunkCols;
constexpr int kSm90TailBlock = kSm90WholeChunks * kSm90ChunkCols / 8;  // first n8 block of the fragment past them

// A consumer warpgroup's two staging buffers and how many chunks it has stored: the next goes to buffer
// chunks % 2. Thread 0 of the warpgroup issues the stores, so only its bulk async-groups are pending.
struct mfa_sm90_staging {
  unsigned buffers;
  unsigned chunks;

  __device__ unsigned next() const { return buffers + (chunks % 2) * kSm90ChunkBytes; }
};

// Where `byte` of row `row` of a chunk lies in buffer `buffer` (128-byte swizzle).
__device__ __forceinline__ unsigned mfa_sm90_staged_address(unsigned buffer, int row, int byte) {
  return buffer + row * kSm90RowBytes + ((((byte >> 4) ^ (row & 7)) << 4) | (byte & 15));
}

// Columns (col, col + 1) of row `row` of a chunk, `byte` bytes into the row, into buffer `buffer`.
__device__ __forceinline__ void mfa_sm90_stage_pair(unsigned buffer, int row, int byte, float v0, float v1) {
  const unsigned address = mfa_sm90_staged_address(buffer, row, byte);
  if constexpr (kSm90OutBytes == 4)
    mfa_st_shared_v2_f32(address, v0, v1);
  else
    mfa_st_shared_b32(address, mfa_pack_f32x2<MFA_OUT_DTYPE>(v0, v1));
}

// A kernel given C^T (16-bit C): the tile's columns (col, col + 1) are rows of C, so the pair goes to two
// rows of the chunk, at the same byte (`byte`: the tile row's, 2 bytes an element).
__device__ __forceinline__ void mfa_sm90_stage_pair_transposed(unsigned buffer, int col, int byte, float v0,
                                                               float v1) {
  const auto bits = [](float v) {
    return static_cast<unsigned short>(MFA_OUT_DTYPE == MFA_GEMM_F16 ? mfa_f32_to_f16(v) : mfa_f32_to_bf16(v));
  };
  mfa_st_shared_b16(mfa_sm90_staged_address(buffer, col, byte), bits(v0));
  mfa_st_shared_b16(mfa_sm90_staged_address(buffer, col + 1, byte), bits(v1));
}

// Store the accumulators of warpgroup w's 64 rows of the tile (finished but for the activation, applied
// here), chunk by chunk (m64nN fragment layout: gemm_sm90_epilogue.cuh). Per chunk: thread 0 makes sure
// the buffer's previous store has read it (at most one group, the other buffer's, still pending); the
// warpgroup writes it, fences it for the async proxy, and thread 0 stores it. A kernel given C^T (16-bit
// C) stages each chunk transposed: its 64 columns are 64 rows of C, the warpgroup's 64 rows 128 bytes of
// each, the same box of C's map.
__device__ __forceinline__ void mfa_sm90_store_staged(const mfa_tensor_map &map_c, const mfa_sm90_tile &tile, int w,
                                                      mfa_sm90_staging &staging, const float (&acc)[kSm90Acc]) {
  const int t = mfa_warpgroup_thread();
  const int row0 = 16 * (t / 32) + (t % 32) / 4;
  const int byte0 = 2 * (t % 4) * kSm90OutBytes;
  constexpr int blocks_per_chunk = kSm90ChunkCols / 8;  // n8 blocks of the fragment
#pragma unroll
  for (int chunk = 0; chunk < kSm90WholeChunks; ++chunk) {
    if (t == 0) mfa_bulk_wait_group_read<1>();
    mfa_named_barrier_sync(1 + w, 128);
    const unsigned buffer = staging.next();
#pragma unroll
    for (int jj = 0; jj < blocks_per_chunk; ++jj) {
      const int j = chunk * blocks_per_chunk + jj;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float v0 = mfa_gemm_activated<MFA_OUT_DTYPE>(acc[4 * j + 2 * h]);
        const float v1 = mfa_gemm_activated<MFA_OUT_DTYPE>(acc[4 * j + 2 * h + 1]);
        if constexpr (MFA_SM90_C_TRANSPOSED)
          mfa_sm90_stage_pair_transposed(buffer, 8 * jj + 2 * (t % 4), 2 * (row0 + 8 * h), v0, v1);
        else
          mfa_sm90_stage_pair(buffer, row0 + 8 * h, byte0 + 8 * jj * kSm90OutBytes, v0, v1);
      }
    }
    mfa_fence_proxy_async_smem();
    mfa_named_barrier_sync(1 + w, 128);
    if (t == 0) {
      const int cols = tile.n0 + chunk * kSm90ChunkCols, rows = tile.m0 + 64 * w;  // of the tile
      if constexpr (MFA_SM90_C_TRANSPOSED)
        mfa_tma_store_3d(&map_c, buffer, rows, cols, tile.batch);
      else
        mfa_tma_store_3d(&map_c, buffer, cols, rows, tile.batch);
      mfa_bulk_commit_group();
    }
    ++staging.chunks;
  }
}

// The epilogue of one tile for consumer warpgroup w. A kernel that computes C^T (MFA_SM90_C_TRANSPOSED,
// cpp/gemm.cpp) of an fp32 C writes it element by element: a transposed chunk's 64 rows of 4 bytes would
// be two swizzle spans wide.
__device__ __forceinline__ void mfa_sm90_finish_tile(const mfa_gemm_args &args, const mfa_tensor_map &map_c,
                                                     const mfa_sm90_tile &tile, int w, bool pairs,
                                                     mfa_sm90_staging &staging, float (&acc)[kSm90Acc]) {
  const int t = mfa_warpgroup_thread();
  if ((MFA_SM90_C_TRANSPOSED && kSm90OutBytes == 4) || !args.c_by_tma) {
    mfa_sm90_epilogue(args, tile, w, t, pairs, acc);
    return;
  }
  const mfa_sm90_fragment f = mfa_sm90_fragment_of(args, tile, w, t);
  mfa_sm90_epilogue_values(args, f, pairs, acc);
  mfa_sm90_store_staged(map_c, tile, w, staging, acc);
  if constexpr (kSm90TailBlock < kSm90Acc / 4) mfa_sm90_write<kSm90Acc, kSm90TailBlock>(args, f, pairs, acc);
}

// ----- Stream-K fix-up: partial accumulators through the workspace (gemm.cuh, mfa_gemm_schedule) -----
// Each consumer warpgroup moves its own 64 rows independently: flag 2b + w and half w of block b's slot
// belong to warpgroup w of block b (block b = unit * kSm90Cluster + rank: a unit's slot holds its
// cluster's tile). A half is stored in fragment order, float4 q of thread t at q * 128 + t, so each
// warp's 16-byte stores and loads cover 512 contiguous bytes.
constexpr int kSm90HalfTileFloats = 64 * MFA_SM90_BN;

__device__ __forceinline__ float4 *mfa_sm90_partial_half(const mfa_gemm_args &args, int block, int w) {
  return reinterpret_cast<float4 *>(args.partials + static_cast<long long>(2 * block + w) * kSm90HalfTileFloats);
}

// Store this block's partial accumulators in its slot, then raise its flag once all 128 threads of
// the warpgroup have stored (the named barrier), with release semantics (mfa_flag_release).
__device__ __forceinline__ void mfa_sm90_store_partial(const mfa_gemm_args &args, int w, const float (&acc)[kSm90Acc]) {
  float4 *half = mfa_sm90_partial_half(args, blockIdx.x, w);
  const int t = mfa_warpgroup_thread();
#pragma unroll
  for (int q = 0; q < kSm90Acc / 4; ++q)
    mfa_store_cg(half + q * 128 + t, make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
  mfa_named_barrier_sync(1 + w, 128);
  if (t == 0) mfa_flag_release(args.flags + 2 * blockIdx.x + w, args.flag_token);
}

// acc += the partials of units [first, this unit), nearest unit first (the blocks of the same rank): a
// fixed order, so the sum (and the result) is the same on every run. One thread acquires (and lowers)
// every flag; the barrier passes that on.
__device__ __forceinline__ void mfa_sm90_add_partials(const mfa_gemm_args &args, int first, int w,
                                                      float (&acc)[kSm90Acc]) {
  const int t = mfa_warpgroup_thread();
  const int last = blockIdx.x - kSm90Cluster, first_block = first * kSm90Cluster + mfa_sm90_rank();
  if (t == 0)
    for (int block = last; block >= first_block; block -= kSm90Cluster)
      mfa_flag_acquire_and_lower(args.flags + 2 * block + w, args.flag_token);
  mfa_named_barrier_sync(1 + w, 128);
  for (int block = last; block >= first_block; block -= kSm90Cluster) {
    const float4 *half = mfa_sm90_partial_half(args, block, w);
#pragma unroll
    for (int q = 0; q < kSm90Acc / 4; ++q) {
      const float4 p = mfa_load_cg(half + q * 128 + t);
      acc[4 * q] += p.x;
      acc[4 * q + 1] += p.y;
      acc[4 * q + 2] += p.z;
      acc[4 * q + 3] += p.w;
    }
  }
}

// ----- the kernel -----
// Grid args.schedule.units * kSm90Cluster blocks in clusters of kSm90Cluster (at most one block per SM
// and no more clusters than can be resident at once: Stream-K units wait on each other, so all must run
// together; the host sees to it), 384 threads, mfa_sm90_smem_bytes(MFA_SM90_BN) of dynamic shared
// memory, which also keeps it to one block per SM. setmaxnreg moves registers from the producer (40 a
// thread) to the consumers (232): 128 * 40 + 256 * 232 = 64512 <= 65536, the register file a block of
// 384 threads may hold.
// Launched with programmatic dependent launch: everything before the dependency waits (the producer's
// before its first load, the consumers' before their first item) overlaps the end of the previous kernel
// in the stream, and the next kernel may launch (its blocks waiting for SMs) once every block here has
// started.
extern "C" __global__ void __launch_bounds__(MFA_SM90_THREADS, 1)
mfa_gemm_sm90(const __grid_constant__ mfa_gemm_args args, const __grid_constant__ mfa_tensor_map map_a,
              const __grid_constant__ mfa_tensor_map map_b, const __grid_constant__ mfa_tensor_map map_c) {
  extern __shared__ unsigned char mfa_sm90_smem[];  // aligned up to 1024 bytes by mfa_sm90_ring_at
  const mfa_sm90_ring ring = mfa_sm90_ring_at(mfa_sm90_smem);
  if (threadIdx.x == 0) {
    mfa_sm90_ring_init(ring);
    // The maps are parameters, not the previous kernel's output: fetched ahead of the dependency wait.
    mfa_tma_prefetch_map(&map_a);
    mfa_tma_prefetch_map(&map_b);
    if (args.c_by_tma) mfa_tma_prefetch_map(&map_c);  // otherwise the host passes an empty map
  }
  if (kSm90Cluster > 1) {  // the other block's barriers are initialised before anything signals them
    mfa_cluster_arrive();
    mfa_cluster_wait();
  } else {
    __syncthreads();
  }
  mfa_grid_launch_dependents();

  if (mfa_warpgroup_index() == 0) {
    mfa_setmaxnreg_dec<40>();
    if (threadIdx.x / 32 == 0 && mfa_elect_one()) mfa_sm90_produce(ring, args, map_a, map_b);
  } else {
    mfa_setmaxnreg_inc<232>();
    const int w = mfa_warpgroup_index() - 1;
    // Column pairs are two-element aligned when C's base and both strides are even (in elements).
    constexpr unsigned pair_bytes = MFA_OUT_DTYPE == MFA_GEMM_F32 ? 8 : 4;
    const bool pairs = reinterpret_cast<unsigned long long>(args.c) % pair_bytes == 0 && args.ldc % 2 == 0 &&
                       args.batch_stride_c % 2 == 0;
    const mfa_gemm_schedule &schedule = args.schedule;
    mfa_sm90_ring_pos pos;
    mfa_sm90_staging staging{ring.staging + w * 2 * kSm90ChunkBytes, 0};
    float acc[kSm90Acc];
    const int unit = mfa_sm90_unit();
    const int items = mfa_gemm_work_count(schedule, unit);
    mfa_grid_dependency_wait();  // before C, the bias or the Stream-K workspace is touched
    for (int i = 0; i < items; ++i) {
      const mfa_gemm_work work = mfa_gemm_work_at(schedule, unit, i);
      const mfa_sm90_tile tile = mfa_sm90_tile_at(schedule, work.tile, mfa_sm90_rank());  // off the epilogue's path
      if (work.k_end > work.k_begin) {
        mfa_sm90_consume(ring, pos, w, work.k_end - work.k_begin, acc);
      } else {  // k == 0: the product is empty; no stage is ever filled
#pragma unroll
        for (int j = 0; j < kSm90Acc; ++j) acc[j] = 0.0f;
      }
      if (mfa_gemm_work_is_partial(schedule, work)) {  // the tile's finisher completes it
        mfa_sm90_store_partial(args, w, acc);
        continue;
      }
      if (work.k_begin > 0) mfa_sm90_add_partials(args, mfa_gemm_first_contributor(schedule, work.tile), w, acc);
      mfa_sm90_finish_tile(args, map_c, tile, w, pairs, staging, acc);
    }
    if (mfa_warpgroup_thread() == 0) mfa_bulk_wait_group_read<0>();  // the buffers outlive the stores' reads
  }
}
