// gemm_sm90_tf32.cu: the Hopper (sm_90a) fp32-accurate GEMM (3xTF32 on wgmma).
//
// Every fp32 operand x is split into x = hi + lo with hi = tf32(x), lo = tf32(x - hi) (round to
// nearest, ties away: cvt.rna), and the product is lo_a hi_b + hi_a lo_b + hi_a hi_b (lo_a lo_b is
// below fp32 resolution). A persistent grid walks 128 x 128 output tiles; in each block one thread of
// warp 0 streams A and B k-tiles (32 fp32 = 128 bytes of k) by TMA into a ring of shared-memory
// stages, warps 1-3 split each landed B tile into tf32 hi and lo, and two consumer warpgroups (64 rows
// of the tile each) split their A fragments in registers, multiply and accumulate.
//
// Included after gemm.cuh by a generated source that defines MFA_IN_DTYPE 3 (f32), MFA_OUT_DTYPE
// (1 f16, 2 bf16, 3 f32), MFA_MATH 2 (MFA_MATH_TF32X3), MFA_TRANS_A and MFA_TRANS_B (all four
// combinations). PTX ISA section numbers follow the PTX ISA 9.0 document.
//
// ----- why this shape -----
// * wgmma with .tf32 operands has no transpose immediates: both operands must be K-major in shared
//   memory (or A in registers). B is read by wgmma from shared memory, so B_hi and B_lo must exist
//   there; A may come from registers (the m64nNk8 A fragment, 4 registers a thread), so A is split in
//   registers by the thread that owns it and never rewritten in shared memory.
// * After a stage lands (`full`), warps 1-3 of the producer warpgroup (idle otherwise: TMA needs one
//   thread) split the stage's fp32 B tile: hi in place (or into a hi buffer, see transposes), lo into
//   the stage's lo buffer, in the 128B-swizzled K-major layout the B descriptor expects; then
//   fence.proxy.async (their generic stores are read next by wgmma, an async-proxy access) and one
//   arrival per warp on the stage's `ready` mbarrier, which the consumers wait for. So the split is
//   off the consumers' critical path and the two consumer warpgroups are not coupled to each other
//   (no named barrier between them). The lo (and hi) buffers belong to the stage and are freed with
//   it by the stage's `empty` mbarrier, so there is no other hazard.
// * A consumer loads the next stage's A fragments while the wgmma of the current stage run.
// * Accuracy (the lesson of gemm_sm80.cu's MmaMath): the tensor cores' accumulation does not round to
//   nearest, so a sum over all of K inside the wgmma accumulator errs linearly in K. Each k-tile's 12
//   wgmma (4 k8 slices x 3 products, small products first) go into a tile accumulator (scale-d = 0 on
//   the first: no register reset needed), which is then added into the running total with IEEE fp32
//   adds. Registers: 64 (total) + 64 (tile) + 32 (A hi/lo of the stage in flight) + 16 (raw A of the
//   next stage) of the 232 a consumer thread gets.
// * The cost of the per-k-tile promotion: a warpgroup must wait for its own wgmma before the adds, so
//   its tensor work drains once per k-tile (the other warpgroup's queued wgmma fill that gap only if
//   the two run out of phase). A double-buffered tile accumulator would remove the drain but needs 64
//   more registers than a consumer has.
//
// ----- transposes (all four) -----
// A: stored [m][k] (TRANS_A = 0) arrives K-major in one TMA box; stored [k][m] (TRANS_A = 1) arrives
//   as it is stored (M-major, four 32-m boxes); either way the consumers read their A fragments with
//   plain shared loads, so only the address formula differs.
// B: stored [n][k] (TRANS_B = 1) arrives K-major (one box) and is split in place; stored [k][n]
//   (TRANS_B = 0) arrives N-major (four 32-n boxes) and the split transposes it into a separate hi
//   buffer (4x4 blocks through registers), so its stages are 64 KB instead of 48 KB.
#include "ptx_cluster.cuh"
#include "ptx_sm90_tf32.cuh"
#include "gemm_sm90_epilogue.cuh"  // mfa_sm90_epilogue

static_assert(MFA_IN_DTYPE == MFA_GEMM_F32 && MFA_MATH == MFA_MATH_TF32X3, "fp32 inputs, 3xTF32 arithmetic");

namespace mfa_sm90_tf32 {

// ----- the tile and the ring -----
constexpr int BM = 128, BN = 128, BK = 32;       // BK fp32 = 128 bytes: one 128B-swizzle row
constexpr int kThreads = 384;                    // warpgroup 0 loads, 1 and 2 compute
constexpr int kSplitWarps = 3;                   // warps 1-3 of warpgroup 0
constexpr int kSplitThreads = 32 * kSplitWarps;
constexpr int kAcc = BN / 2;                     // f32 accumulator registers of one m64n128 wgmma
constexpr int kSlices = BK / 8;                  // k8 wgmma slices per k-tile
constexpr unsigned kRowBytes = BK * 4;           // 128
constexpr unsigned kBoxMN = 32;                  // MN extent of one MN-major box (128 bytes)
constexpr unsigned kMNBoxBytes = kBoxMN * kRowBytes;  // 4 KB: 32 k-rows x 32 mn
constexpr unsigned kABytes = BM * kRowBytes;     // 16 KB
constexpr unsigned kBBytes = BN * kRowBytes;     // 16 KB
constexpr unsigned kTmaBytes = kABytes + kBBytes;  // bytes TMA delivers into one stage
// Stage layout: A | B as loaded | B lo | (TRANS_B = 0 only) B hi. TRANS_B = 1 writes B hi in place.
constexpr unsigned kAOffset = 0;
constexpr unsigned kBOffset = kABytes;
constexpr unsigned kBLoOffset = kBOffset + kBBytes;
constexpr unsigned kBHiOffset = MFA_TRANS_B ? kBOffset : kBLoOffset + kBBytes;
constexpr unsigned kStageBytes = mfa_sm90_tf32_stage_bytes(MFA_TRANS_B);  // 48 KB or 64 KB
constexpr unsigned kSwizzleAtom = 1024;          // 8 rows of 128 bytes: the 128B-swizzle period
// 4 stages for TRANS_B = 1 (197728 bytes in all), 3 for TRANS_B = 0 (197704 bytes): gemm.cuh.
constexpr int kStages = mfa_sm90_tf32_stages(MFA_TRANS_B);
constexpr int kSmemBytes = mfa_sm90_tf32_smem_bytes(MFA_TRANS_B);
static_assert(kStages >= 2, "at least double buffering");
static_assert(BN == MFA_SM90_TF32_BN && kABytes + 2 * kBBytes + (MFA_TRANS_B ? 0 : kBBytes) == kStageBytes,
              "the stage layout agrees with gemm.cuh");
constexpr int kConsumerWarps = 8;                // arrivals that free a stage

// ----- the tile schedule (as gemm_sm90.cu): tiles t = blockIdx.x, += gridDim.x -----
// Tiles are numbered batch by batch; inside a batch kGroupM consecutive M-tiles form a group walked
// column by column, so concurrently running blocks share A row-blocks and B column-blocks in L2.
constexpr int kGroupM = 8;
struct Tile {
  int m0, n0, batch;
};
struct Schedule {
  int tiles_m, tiles_n, count;
  __device__ explicit Schedule(const mfa_gemm_args &args)
      : tiles_m((args.m + BM - 1) / BM), tiles_n((args.n + BN - 1) / BN), count(tiles_m * tiles_n * args.batch) {}
  __device__ Tile at(int t) const {
    const int per_batch = tiles_m * tiles_n;
    const int batch = t / per_batch;
    const int in_batch = t - batch * per_batch;
    const int group = in_batch / (kGroupM * tiles_n);
    const int first_m = group * kGroupM;
    const int group_rows = min(kGroupM, tiles_m - first_m);
    const int in_group = in_batch - group * kGroupM * tiles_n;
    return {(first_m + in_group % group_rows) * BM, (in_group / group_rows) * BN, batch};
  }
};

// ----- the ring: full[s] (1 producer arrival + kTmaBytes), ready[s] (one arrival a split warp) and
// empty[s] (one arrival a consumer warp) -----
// All roles walk the stages in the same order, k_tiles per tile; waiting for the parity of the phase
// before the current one returns at once, which is how the producer's first pass finds stages free.
struct Ring {
  unsigned base;  // shared address of stage 0 (1024-byte aligned)
  unsigned bars;  // full[0..kStages), empty[0..kStages), ready[0..kStages)
  __device__ unsigned stage(int s) const { return base + s * kStageBytes; }
  __device__ unsigned full(int s) const { return bars + 8 * s; }
  __device__ unsigned empty(int s) const { return bars + 8 * (kStages + s); }
  __device__ unsigned ready(int s) const { return bars + 8 * (2 * kStages + s); }
};
using RingPos = mfa_ring_pos<kStages>;

// ----- shared-memory layouts (every TMA box: CU_TENSOR_MAP_SWIZZLE_128B, 1024-byte aligned) -----
// 128B swizzle: row r (128 bytes) of an atom-aligned region has its 16-byte chunk c stored at chunk
// c ^ (r % 8). So a K-major operand (row = one m or n, 32 k) has element (u, k) at
//   u * 128 + ((k / 4) ^ (u % 8)) * 16 + (k % 4) * 4,
// and an MN-major one (four boxes of 32 mn, row = one k) has element (u, k) at
//   (u / 32) * 4096 + k * 128 + (((u % 32) / 4) ^ (k % 8)) * 16 + (u % 4) * 4.
__device__ __forceinline__ unsigned kmajor_offset(unsigned u, unsigned k) {
  return u * kRowBytes + (((k >> 2) ^ (u & 7)) << 4) + ((k & 3) << 2);
}
__device__ __forceinline__ unsigned mnmajor_offset(unsigned u, unsigned k) {
  return (u >> 5) * kMNBoxBytes + k * kRowBytes + ((((u & 31) >> 2) ^ (k & 7)) << 4) + ((u & 3) << 2);
}

// The B descriptor of k8 slice s: K-major 128B-swizzled, the canonical layout ((8,n),(T,2k)) of
// 9.7.15.5.1.2.1.3 in 16-byte units: SBO = 1024 (8 rows to the next 8), LBO unused for swizzled
// K-major layouts (encoded as 16 bytes), and the slice starts s * 32 bytes into row 0 (wgmma applies
// the swizzle XOR to the addresses it forms, as for 16-bit operands where k16 is also 32 bytes).
__device__ __forceinline__ unsigned long long b_desc(unsigned b_region, int s) {
  return mfa_wgmma_desc_sw128(b_region + s * 32, 16, kSwizzleAtom);
}

// ----- producer: one elected thread of warp 0 streams the k-tiles through the ring -----
// TRANS_A = 0: map_a is {k, m, batch}, one 32 x 128 box at {k0, m0, z} -> K-major A.
// TRANS_A = 1: map_a is {m, k, batch}, four 32 x 32 boxes at {m0 + 32 i, k0, z} -> M-major A.
// B likewise with n: TRANS_B = 1 one box {k0, n0, z}; TRANS_B = 0 four boxes {n0 + 32 i, k0, z}.
__device__ __forceinline__ void produce(const Ring &ring, const mfa_gemm_args &args, const Schedule &schedule,
                                        const mfa_tensor_map &map_a, const mfa_tensor_map &map_b, int k_tiles) {
  mfa_tma_prefetch_map(&map_a);
  mfa_tma_prefetch_map(&map_b);
  RingPos pos;
  mfa_grid_dependency previous_grid;  // waited for right before the first load, as in gemm_sm90.cu
  for (int t = blockIdx.x; t < schedule.count; t += gridDim.x) {
    const Tile tile = schedule.at(t);
    // A batch stride of 0 broadcasts the operand: the host encodes such a map with batch dim 1.
    const int z_a = args.batch_stride_a != 0 ? tile.batch : 0;
    const int z_b = args.batch_stride_b != 0 ? tile.batch : 0;
    for (int kt = 0; kt < k_tiles; ++kt) {
      mfa_mbar_wait(ring.empty(pos.stage), pos.phase ^ 1);
      const unsigned full = ring.full(pos.stage), stage = ring.stage(pos.stage);
      mfa_mbar_arrive_expect_tx(full, kTmaBytes);
      previous_grid.wait();
      const int k0 = kt * BK;
      if (MFA_TRANS_A) {
#pragma unroll
        for (int i = 0; i < BM / (int)kBoxMN; ++i)
          mfa_tma_load_3d(stage + kAOffset + i * kMNBoxBytes, &map_a, full, tile.m0 + i * kBoxMN, k0, z_a);
      } else {
        mfa_tma_load_3d(stage + kAOffset, &map_a, full, k0, tile.m0, z_a);
      }
      if (MFA_TRANS_B) {
        mfa_tma_load_3d(stage + kBOffset, &map_b, full, k0, tile.n0, z_b);
      } else {
#pragma unroll
        for (int i = 0; i < BN / (int)kBoxMN; ++i)
          mfa_tma_load_3d(stage + kBOffset + i * kMNBoxBytes, &map_b, full, tile.n0 + i * kBoxMN, k0, z_b);
      }
      pos.advance();
    }
  }
}

// ----- splitting -----
// x -> hi = tf32(x), lo = tf32(x - hi) (x - hi is exact in fp32), as fp32 bit patterns.
__device__ __forceinline__ void split(float x, unsigned &hi, unsigned &lo) {
  hi = mfa_f32_to_tf32(x);
  lo = mfa_f32_to_tf32(x - __uint_as_float(hi));
}
__device__ __forceinline__ float4 split4(float4 x, float4 &lo) {
  unsigned h[4], l[4];
  split(x.x, h[0], l[0]);
  split(x.y, h[1], l[1]);
  split(x.z, h[2], l[2]);
  split(x.w, h[3], l[3]);
  lo = make_float4(__uint_as_float(l[0]), __uint_as_float(l[1]), __uint_as_float(l[2]), __uint_as_float(l[3]));
  return make_float4(__uint_as_float(h[0]), __uint_as_float(h[1]), __uint_as_float(h[2]), __uint_as_float(h[3]));
}

// TRANS_B = 0: split and transpose 4 k x 4 n block ct (0..255) of the N-major tile `b` (see split_b).
__device__ __forceinline__ void split_b_block(const unsigned char *b, float4 *b_hi, float4 *b_lo, int ct) {
  const unsigned l = ct & 7, h = ct >> 3;
  const unsigned kb = l, nb = ((h >> 3) << 3) + (l ^ (h & 7));
  float v[4][4];  // v[i][j]: k = 4 kb + i, n = 4 nb + j
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float4 x = *reinterpret_cast<const float4 *>(b + mnmajor_offset(4 * nb, 4 * kb + i));
    v[i][0] = x.x;
    v[i][1] = x.y;
    v[i][2] = x.z;
    v[i][3] = x.w;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float4 lo;
    const float4 hi = split4(make_float4(v[0][j], v[1][j], v[2][j], v[3][j]), lo);
    const unsigned offset = kmajor_offset(4 * nb + j, 4 * kb) / 16;
    b_hi[offset] = hi;
    b_lo[offset] = lo;
  }
}

// The kSplitThreads split threads (st = 0..95) split the B tile of one stage (16 KB, 4096 fp32).
// TRANS_B = 1: elementwise on a K-major tile: float4 st + 96 i, hi in place, lo at the same offset of
//   the lo buffer (same layout, so the swizzle never needs to be known). Consecutive lanes take
//   consecutive 16 bytes: conflict-free.
// TRANS_B = 0: the tile arrived N-major ([k][n] in four 32-n boxes); block ct = st + 96 i is the 4 k x 4 n
//   block (kb, nb) = (l, 8 (h / 8) + (l ^ h % 8)) with l = ct % 8, h = ct / 8 (a bijection onto the
//   8 x 32 blocks), reads its 4 k-rows as float4, transposes in registers, and writes 4 K-major n-rows
//   of hi and of lo as float4. The XOR assignment makes each 8-lane phase of the 16-byte accesses
//   touch 8 distinct 16-byte bank groups, on the reads (chunk (nb%8) ^ (k%8)) and on the writes
//   (chunk kb ^ (n%8)), as the 128B swizzle of either layout allows.
__device__ __forceinline__ void split_b(unsigned char *smem_stage, int st) {
  unsigned char *const b = smem_stage + kBOffset;
  float4 *const b_hi = reinterpret_cast<float4 *>(smem_stage + kBHiOffset);
  float4 *const b_lo = reinterpret_cast<float4 *>(smem_stage + kBLoOffset);
  if constexpr (MFA_TRANS_B) {
    const float4 *const raw = reinterpret_cast<const float4 *>(b);
    constexpr int kVecs = kBBytes / 16;
#pragma unroll 4
    for (int i = st; i < kVecs; i += kSplitThreads) {
      float4 lo;
      b_hi[i] = split4(raw[i], lo);
      b_lo[i] = lo;
    }
  } else {
#pragma unroll 1
    for (int ct = st; ct < 256; ct += kSplitThreads) split_b_block(b, b_hi, b_lo, ct);
  }
}
// Split warps (1-3 of warpgroup 0): for every stage the producer fills, in the same order, wait for
// its bytes, split B, fence the stores for the async proxy, and mark the stage ready (one arrival a
// warp, after __syncwarp so that it speaks for the whole warp's stores).
__device__ __forceinline__ void split_stages(const Ring &ring, unsigned char *smem_ring, const Schedule &schedule,
                                             int k_tiles) {
  const int st = static_cast<int>(threadIdx.x) - 32;
  RingPos pos;
  for (int t = blockIdx.x; t < schedule.count; t += gridDim.x) {
    for (int kt = 0; kt < k_tiles; ++kt) {
      mfa_mbar_wait(ring.full(pos.stage), pos.phase);
      split_b(smem_ring + pos.stage * kStageBytes, st);
      mfa_fence_proxy_async_smem();
      __syncwarp();
      if (threadIdx.x % 32 == 0) mfa_mbar_arrive(ring.ready(pos.stage));
      pos.advance();
    }
  }
}

// ----- consumers -----
// This thread's A fragments of one stage, raw fp32: a[4 s + r] is register r of k8 slice s, i.e. the
// element (row, k) with row = 64 w + 16 (t / 32) + (t % 32) / 4 + 8 (r % 2) and
// k = 8 s + t % 4 + 4 (r / 2), t the thread within its warpgroup (the wgmma A fragment layout).
// K-major (TRANS_A = 0): one 8-lane phase reads 8 rows with distinct r % 8, so 8 distinct chunks
// ((2s + r/2) ^ row % 8): conflict-free. M-major (TRANS_A = 1): 2-way conflicts (a small part of the
// stage's shared traffic).
__device__ __forceinline__ void load_a(const unsigned char *smem_stage, int w, int t, float (&a)[4 * kSlices]) {
  const unsigned char *const region = smem_stage + kAOffset;
  const unsigned row0 = 64 * w + 16 * (t / 32) + (t % 32) / 4, k_lane = t % 4;
#pragma unroll
  for (int s = 0; s < kSlices; ++s)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const unsigned row = row0 + 8 * (r % 2), k = 8 * s + k_lane + 4 * (r / 2);
      const unsigned offset = MFA_TRANS_A ? mnmajor_offset(row, k) : kmajor_offset(row, k);
      a[4 * s + r] = *reinterpret_cast<const float *>(region + offset);
    }
}

// One k-tile's products into the tile accumulator: per k8 slice lo_a hi_b, hi_a lo_b, hi_a hi_b (the
// small products first); the first wgmma of the k-tile overwrites it (scale-d = 0).
__device__ __forceinline__ void mma_k_tile(const float (&a)[4 * kSlices], unsigned stage_addr,
                                           float (&tile_acc)[kAcc]) {
  unsigned a_hi[kSlices][4], a_lo[kSlices][4];
#pragma unroll
  for (int s = 0; s < kSlices; ++s)
#pragma unroll
    for (int r = 0; r < 4; ++r) split(a[4 * s + r], a_hi[s][r], a_lo[s][r]);
  const unsigned b_hi = stage_addr + kBHiOffset, b_lo = stage_addr + kBLoOffset;
  mfa_wgmma_fence();
#pragma unroll
  for (int s = 0; s < kSlices; ++s) {
    if (s == 0) mfa_tf32_wgmma_m64n128k8_rs<0>(tile_acc, a_lo[s], b_desc(b_hi, s));
    else mfa_tf32_wgmma_m64n128k8_rs<1>(tile_acc, a_lo[s], b_desc(b_hi, s));
    mfa_tf32_wgmma_m64n128k8_rs<1>(tile_acc, a_hi[s], b_desc(b_lo, s));
    mfa_tf32_wgmma_m64n128k8_rs<1>(tile_acc, a_hi[s], b_desc(b_hi, s));
  }
  mfa_wgmma_commit_group();
}

// Wait until stage `pos` is ready for wgmma, then load this thread's raw A fragments of it. `full`
// (acquire of the TMA bytes, A included) is complete whenever `ready` is; waiting on it too costs one
// try_wait and keeps the consumers' view of A independent of the split warps' barrier chain.
__device__ __forceinline__ void prepare(const Ring &ring, const unsigned char *smem_ring, const RingPos &pos, int w,
                                        int t, float (&a)[4 * kSlices]) {
  mfa_mbar_wait(ring.full(pos.stage), pos.phase);
  mfa_mbar_wait(ring.ready(pos.stage), pos.phase);
  load_a(smem_ring + pos.stage * kStageBytes, w, t, a);
}

// acc = sum over the tile's k-tiles (k_tiles >= 1). Per k-tile: issue its 12 wgmma; while they run,
// wait for the next stage and load its A fragments; wait for the wgmma, hand their stage back, and add
// the tile sum into acc (IEEE adds).
__device__ __forceinline__ void consume(const Ring &ring, const unsigned char *smem_ring, RingPos &pos, int w,
                                        int t, int k_tiles, float (&acc)[kAcc]) {
  float tile_acc[kAcc];
  float a[4 * kSlices];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
  prepare(ring, smem_ring, pos, w, t, a);
  for (int kt = 0; kt < k_tiles; ++kt) {
    mma_k_tile(a, ring.stage(pos.stage), tile_acc);
    const int in_flight = pos.stage;
    pos.advance();
    const bool more = kt + 1 < k_tiles;
    if (more) prepare(ring, smem_ring, pos, w, t, a);
    mfa_wgmma_wait_group<0>();
#pragma unroll
    for (int i = 0; i < kAcc; ++i) mfa_fence_operand(tile_acc[i]);
    // wait_group is .sync.aligned: every lane of the warp is past it, so one arrival speaks for the warp.
    if (threadIdx.x % 32 == 0) mfa_mbar_arrive(ring.empty(in_flight));
#pragma unroll
    for (int i = 0; i < kAcc; ++i) acc[i] += tile_acc[i];
  }
}

// ----- epilogue: gemm_sm90_epilogue.cuh (shared with gemm_sm90.cu), N = kAcc -----

}  // namespace mfa_sm90_tf32

// ----- the kernel -----
// Grid (G, 1, 1) with any G >= 1 (persistent: block b takes tiles b, b + G, ...; G = min(tiles of all
// batches, SM count) is the intended choice), 384 threads, mfa_sm90_tf32::kSmemBytes of dynamic shared
// memory (197728 for TRANS_B = 1, 197704 for TRANS_B = 0). setmaxnreg moves registers from the producer
// warpgroup (40 a thread) to the consumers (232): 128 * 40 + 256 * 232 = 64512 <= 65536.
extern "C" __global__ void __launch_bounds__(384, 1)
mfa_gemm_sm90_tf32(const __grid_constant__ mfa_gemm_args args, const __grid_constant__ mfa_tensor_map map_a,
                   const __grid_constant__ mfa_tensor_map map_b) {
  using namespace mfa_sm90_tf32;
  extern __shared__ unsigned char mfa_sm90_tf32_smem[];
  // Stages from the first 1024-byte boundary (the swizzle pattern's phase is the address bits 7-9),
  // the mbarriers right after them.
  const unsigned raw = mfa_smem_addr(mfa_sm90_tf32_smem);
  const unsigned aligned = (raw + kSwizzleAtom - 1) & ~(kSwizzleAtom - 1);
  unsigned char *const smem_ring = mfa_sm90_tf32_smem + (aligned - raw);
  Ring ring;
  ring.base = aligned;
  ring.bars = aligned + kStages * kStageBytes;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mfa_mbar_init(ring.full(s), 1);
      mfa_mbar_init(ring.empty(s), kConsumerWarps);
      mfa_mbar_init(ring.ready(s), kSplitWarps);
    }
    mfa_fence_mbar_init();
    mfa_fence_proxy_async_smem();
  }
  __syncthreads();
  mfa_grid_launch_dependents();  // programmatic dependent launch, as gemm_sm90.cu's kernel

  const Schedule schedule(args);
  const int k_tiles = (args.k + BK - 1) / BK;

  if (threadIdx.x < 128) {
    mfa_setmaxnreg_dec<40>();
    if (threadIdx.x / 32 == 0) {
      if (mfa_elect_one()) produce(ring, args, schedule, map_a, map_b, k_tiles);
    } else {
      split_stages(ring, smem_ring, schedule, k_tiles);
    }
  } else {
    mfa_setmaxnreg_inc<232>();
    const int w = (threadIdx.x - 128) / 128, t = threadIdx.x % 128;
    constexpr unsigned pair_bytes = MFA_OUT_DTYPE == MFA_GEMM_F32 ? 8 : 4;
    const bool pairs = reinterpret_cast<unsigned long long>(args.c) % pair_bytes == 0 && args.ldc % 2 == 0 &&
                       args.batch_stride_c % 2 == 0;
    RingPos pos;
    float acc[kAcc];
    mfa_grid_dependency_wait();  // before C or the bias is touched
    for (int tt = blockIdx.x; tt < schedule.count; tt += gridDim.x) {
      const Tile tile = schedule.at(tt);
      if (k_tiles > 0) {
        consume(ring, smem_ring, pos, w, t, k_tiles, acc);
      } else {  // k == 0 (the host normally routes it elsewhere): C = act(beta C + bias)
#pragma unroll
        for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
      }
      mfa_sm90_epilogue(args, tile, w, t, pairs, acc);
    }
  }
}
