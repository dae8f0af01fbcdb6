// gemm_sm80.cu: the portable GEMM for sm_80 and later (cp.async + mma.sync; Hopper runs it too).
//
// One block computes a BM x BN tile of C[batch]. It walks K in BK-wide k-tiles through a ring of
// STAGES shared-memory stages: while it multiplies k-tile kt, the copies of k-tiles up to
// kt + STAGES - 1 are in flight. Tiles keep their global orientation in shared memory, so every
// transpose combination is copied as contiguous rows; the fragment loads absorb the orientation.
// Elements outside the matrices are zero-filled on the way in (they add nothing to the sums) and
// skipped on the way out. The arithmetic is one of
//   F16 / BF16 MMA  8 warps as 2 x 4, each 64 x 32 of C as m16n8k16 tensor-core products;
//   TF32X3          the same warp tiling with m16n8k8 tf32 products of hi/lo operand splits;
//   FFMA            16 x 16 threads, each an 8 x 8 grid of C by fp32 fused multiply-adds.
// The epilogue stages the fp32 sums in shared memory, then every element of C leaves through
// mfa_epilogue_store (alpha, beta, bias, activation, conversion) with row-contiguous accesses.

namespace mfa_sm80 {

static_assert((MFA_MATH == MFA_MATH_F16_MMA && MFA_IN_DTYPE == MFA_GEMM_F16) ||
                  (MFA_MATH == MFA_MATH_BF16_MMA && MFA_IN_DTYPE == MFA_GEMM_BF16) ||
                  ((MFA_MATH == MFA_MATH_TF32X3 || MFA_MATH == MFA_MATH_FFMA) && MFA_IN_DTYPE == MFA_GEMM_F32),
              "MFA_MATH does not fit MFA_IN_DTYPE");

// ----- the variant -----
constexpr int kInBytes = MFA_IN_DTYPE == MFA_GEMM_F32 ? 4 : 2;
template <int BYTES> struct ElementBits { using type = unsigned short; };  // 16-bit floats as raw bits
template <> struct ElementBits<4> { using type = float; };
using Elem = ElementBits<kInBytes>::type;

constexpr int BM = MFA_SM80_BM, BN = MFA_SM80_BN, BK = mfa_sm80_bk(kInBytes);
constexpr int STAGES = MFA_SM80_STAGES, THREADS = MFA_SM80_THREADS;
// Elements in 16 bytes: one cp.async, one ldmatrix row, half the k extent of one mma.
constexpr int kChunk = 16 / kInBytes;

// ----- shared-memory layout -----
// One operand's k-tile in its global orientation: [U][BK] when K is contiguous in global memory
// ("k-major": A without transpose, B transposed), else [BK][U]; U is BM for A and BN for B.
template <int U, bool K_MAJOR>
struct SmemTile {
  static constexpr bool kKMajor = K_MAJOR;
  static constexpr int ROWS = K_MAJOR ? U : BK, COLS = K_MAJOR ? BK : U;
  static constexpr int LD = COLS + mfa_sm80_pad(COLS, kInBytes);
  static constexpr int ELEMS = mfa_sm80_tile_elems(ROWS, COLS, kInBytes);
  // Offset of element (u, k), u along M (A) or N (B), k within the k-tile.
  __device__ static int at(int u, int k) { return K_MAJOR ? u * LD + k : k * LD + u; }
};
using TileA = SmemTile<BM, !MFA_TRANS_A>;
using TileB = SmemTile<BN, MFA_TRANS_B != 0>;
// A stage is the A tile followed by the B tile; the ring is STAGES stages.
constexpr int kStageElems = TileA::ELEMS + TileB::ELEMS;
static_assert(kStageElems == mfa_sm80_stage_elems(MFA_TRANS_A, MFA_TRANS_B, kInBytes), "gemm.cuh disagrees");
static_assert((TileA::LD * kInBytes) % 16 == 0 && (TileB::LD * kInBytes) % 16 == 0 &&
                  (TileA::ELEMS * kInBytes) % 16 == 0 && (kStageElems * kInBytes) % 16 == 0,
              "16-byte copies and ldmatrix rows need 16-byte aligned rows");

// The epilogue stages half the block's rows of fp32 sums at a time in the (then idle) ring; rows are
// padded by 8 floats, which keeps the mma layout's 8-byte stores conflict-free.
constexpr int kStagingLD = BN + 8;
static_assert(BM / 2 * kStagingLD * 4 <= mfa_sm80_smem_bytes(MFA_TRANS_A, MFA_TRANS_B, kInBytes),
              "the staged half tile must fit in the ring");

template <int N> struct alignas(4 * N) Floats { float v[N]; };  // for 8- and 16-byte shared accesses

// Copies one operand's k-tiles from global memory into ring stages, VEC elements at a time.
template <class Tile, int VEC> struct TileCopy;

// ----- the block: prologue, k-tile loop, epilogue -----
template <int VEC, class Math>
__device__ __forceinline__ void gemm_block(const mfa_gemm_args &args) {
  extern __shared__ __align__(16) unsigned char mfa_sm80_ring[];
  Elem *const ring = reinterpret_cast<Elem *>(mfa_sm80_ring);
  auto tile_a = [&](int kt) { return ring + kt % STAGES * kStageElems; };
  auto tile_b = [&](int kt) { return tile_a(kt) + TileA::ELEMS; };

  const int batch = blockIdx.z, block_m = blockIdx.y * BM, block_n = blockIdx.x * BN;
  TileCopy<TileA, VEC> copy_a(args.a, args.lda, batch * args.batch_stride_a, args.m, args.k);
  TileCopy<TileB, VEC> copy_b(args.b, args.ldb, batch * args.batch_stride_b, args.n, args.k);
  const int k_tiles = (args.k + BK - 1) / BK;  // k = 0: no k-tiles, C = act(beta * C + bias)

  // Starts bringing k-tile kt into its stage. Every call commits one cp.async group, empty past the
  // last k-tile, so that "k-tile kt has landed" is always "at most STAGES - 2 groups pending".
  auto fetch = [&](int kt) {
    if (kt < k_tiles) {
      copy_a.fetch(block_m, kt * BK, tile_a(kt));
      copy_b.fetch(block_n, kt * BK, tile_b(kt));
    }
    mfa_cp_async_commit();
  };
  // Finishes what fetch started where the copy goes through registers (the scalar path).
  auto deposit = [&](int kt) {
    if (kt < k_tiles) {
      copy_a.deposit(tile_a(kt));
      copy_b.deposit(tile_b(kt));
    }
  };

  Math math;
  for (int kt = 0; kt < STAGES - 1; ++kt) {
    fetch(kt);
    deposit(kt);
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    mfa_cp_async_wait<STAGES - 2>();  // this thread's copies of k-tile kt have landed,
    __syncthreads();                  // everyone's have, and everyone is done with k-tile kt - 1,
    fetch(kt + STAGES - 1);           // whose stage this refills
    math.multiply(tile_a(kt), tile_b(kt));
    deposit(kt + STAGES - 1);         // after the math, so the loads' latency hides behind it
  }

  // Epilogue, half the rows at a time: the warps stage their sums, then consecutive threads take
  // consecutive columns of C (coalesced, and one inlined mfa_epilogue_store rather than one per
  // accumulator register).
  mfa_cp_async_wait<0>();  // no copy may land in the staging area
  float *const staging = reinterpret_cast<float *>(mfa_sm80_ring);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    __syncthreads();  // the ring (or the previous half) has been read by everyone
    math.stage(half, staging);
    __syncthreads();
#pragma unroll 4
    for (int index = threadIdx.x; index < BM / 2 * BN; index += THREADS) {
      const int r = index / BN, c = index % BN;
      const int row = block_m + half * BM / 2 + r, col = block_n + c;
      if (row < args.m && col < args.n)
        mfa_epilogue_store<MFA_OUT_DTYPE>(args, batch, row, col, staging[r * kStagingLD + c]);
    }
  }
}

// ----- pipeline stages: global -> shared copies -----
// The operand in its global orientation is a rows x cols row-major matrix with row stride ld. A
// thread copies pieces of VEC elements, all in one column of the tile, every kRowStep-th row;
// consecutive threads take consecutive pieces of a row (coalesced).
//   VEC = kChunk: 16-byte cp.async, zero-filled past the matrix edge; deposit has nothing to do.
//   VEC = 1: element loads into registers; deposit stores them once the current k-tile's math is done.
template <class Tile, int VEC>
struct TileCopy {
  static_assert(VEC == 1 || VEC == kChunk, "pieces are single elements or 16 bytes");
  static constexpr int kPerRow = Tile::COLS / VEC;
  static constexpr int kRowStep = THREADS / kPerRow;
  static constexpr int kPerThread = Tile::ROWS / kRowStep;
  static_assert(THREADS % kPerRow == 0 && Tile::ROWS % kRowStep == 0, "pieces divide evenly among the threads");

  const Elem *base;
  long long ld;
  int rows, cols;
  Elem staged[VEC == 1 ? kPerThread : 1];

  // op(A) is m x k and op(B) is k x n: u_extent is m (A) or n (B).
  __device__ TileCopy(const void *pointer, long long ld, long long batch_offset, int u_extent, int k)
      : base(static_cast<const Elem *>(pointer) + batch_offset),
        ld(ld),
        rows(Tile::kKMajor ? u_extent : k),
        cols(Tile::kKMajor ? k : u_extent) {}

  // Where this thread's first piece sits in the tile; piece i is kRowStep * i rows further down.
  __device__ static int first_row() { return threadIdx.x / kPerRow; }
  __device__ static int first_col() { return threadIdx.x % kPerRow * VEC; }

  // Starts copying the k-tile at k0 of the block's rows (A) or columns (B) from u0 into `tile`.
  __device__ void fetch(int u0, int k0, Elem *tile) {
    const int row = (Tile::kKMajor ? u0 : k0) + first_row(), col = (Tile::kKMajor ? k0 : u0) + first_col();
    const int inside_cols = min(max(cols - col, 0), VEC);  // elements of a piece left of the matrix edge
    const Elem *src = base + (row * ld + col);
    Elem *const dst = tile + first_row() * Tile::LD + first_col();
#pragma unroll
    for (int i = 0; i < kPerThread; ++i, src += kRowStep * ld) {
      const int inside = row + kRowStep * i < rows ? inside_cols : 0;
      if constexpr (VEC == 1) {
        staged[i] = inside ? *src : Elem(0);
      } else {
        mfa_cp_async_16_zfill(dst + kRowStep * i * Tile::LD, inside ? src : base, inside * kInBytes);
      }
    }
  }
  __device__ void deposit(Elem *tile) const {
    if constexpr (VEC == 1) {
      Elem *const dst = tile + first_row() * Tile::LD + first_col();
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) dst[kRowStep * i * Tile::LD] = staged[i];
    }
  }
};

// ----- tensor-core math: 8 warps as 2 x 4, each a 64 x 32 tile of m16n8 accumulators -----
template <int MATH>
struct MmaMath {
  static constexpr bool kSplit = MATH == MFA_MATH_TF32X3;
  static constexpr int WM = 64, WN = 32, MI = WM / 16, NI = WN / 8;
  static constexpr int KSTEP = 2 * kChunk;  // m16n8k16 for 16-bit inputs, m16n8k8 for tf32
  static_assert(2 * WM == BM && 4 * WN == BN && 8 * 32 == THREADS && BK % KSTEP == 0, "warp tiling");
  // TF32X3 keeps two sums per output: [1] collects one k-tile's three products on the tensor cores,
  // [0] the running total, added to with IEEE fp32 adds after every k-tile. The tensor cores' own
  // accumulation does not round to nearest: summing all of K there gave an error growing linearly with
  // K (measured on H100: 2.4e-6 at 1024^3 and 9.6e-6 at 4096^3, against cuBLAS SGEMM's 5.7e-7 and
  // 1.1e-6), while each short per-tile chain only errs relative to its own small partial sum.
  static constexpr int kSums = kSplit ? 2 : 1;

  float acc[kSums][MI][NI][4] = {};
  const int lane = threadIdx.x % 32, warp_m = threadIdx.x / 32 / 4, warp_n = threadIdx.x / 32 % 4;

  // The 16 (u) x KSTEP (k) block of a tile at (u0, k0) as four registers: r[q] holds the 8 x KSTEP/2
  // sub-block at (u0 + 8 (q % 2), k0 + KSTEP/2 (q / 2)), lane l the 32 bits at (l / 4, l % 4). That is
  // the A fragment of an m16n8 mma for A, and two n8 B fragments, {r0, r2} and {r1, r3}, for B.
  template <class Tile>
  __device__ void load_fragment(const Elem *tile, int u0, int k0, unsigned int (&r)[4]) const {
    if constexpr (kInBytes == 2 || Tile::kKMajor) {
      const int q = lane / 8, row = lane % 8;  // the lane addresses row `row` of matrix q
      const int u = u0 + 8 * (q % 2), k = k0 + kChunk * (q / 2);
      if constexpr (Tile::kKMajor) {
        mfa_ldmatrix_x4(r, tile + Tile::at(u + row, k));
      } else {
        mfa_ldmatrix_x4_trans(r, tile + Tile::at(u, k + row));
      }
    } else {  // fp32 rows along u: ldmatrix cannot transpose 32-bit words, so one word per lane
#pragma unroll
      for (int q = 0; q < 4; ++q)
        r[q] = __float_as_uint(tile[Tile::at(u0 + 8 * (q % 2) + lane / 4, k0 + 4 * (q / 2) + lane % 4)]);
    }
  }

  // TF32X3: x becomes hi = tf32(x), lo receives tf32(x - hi) (x - hi is exact in fp32).
  template <int N>
  __device__ static void split_tf32(unsigned int (&x)[N], unsigned int (&lo)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float value = __uint_as_float(x[i]);
      x[i] = mfa_f32_to_tf32(value);
      lo[i] = mfa_f32_to_tf32(value - __uint_as_float(x[i]));
    }
  }

  // One m16n8 output tile += a * b over one k step.
  __device__ void product(int i, int j, const unsigned int (&a)[4], const unsigned int (&a_lo)[4],
                          const unsigned int (&b)[2], const unsigned int (&b_lo)[2]) {
    if constexpr (MATH == MFA_MATH_F16_MMA) {
      mfa_mma_m16n8k16_f16(acc[0][i][j], a, b);
    } else if constexpr (MATH == MFA_MATH_BF16_MMA) {
      mfa_mma_m16n8k16_bf16(acc[0][i][j], a, b);
    } else {  // (hi_a + lo_a)(hi_b + lo_b) less lo_a lo_b, which is below fp32 resolution
      mfa_mma_m16n8k8_tf32(acc[1][i][j], a_lo, b);
      mfa_mma_m16n8k8_tf32(acc[1][i][j], a, b_lo);
      mfa_mma_m16n8k8_tf32(acc[1][i][j], a, b);
    }
  }

  // acc += this warp's share of one k-tile: per k step, its B fragments once, then row by row of A.
  __device__ void multiply(const Elem *tile_a, const Elem *tile_b) {
#pragma unroll
    for (int k0 = 0; k0 < BK; k0 += KSTEP) {
      unsigned int b[NI][2], b_lo[NI][2];
#pragma unroll
      for (int j = 0; j < NI; j += 2) {
        unsigned int r[4];
        load_fragment<TileB>(tile_b, warp_n * WN + 8 * j, k0, r);
        b[j][0] = r[0];  // matrices 0 and 2: n-tile j; 1 and 3: n-tile j + 1
        b[j][1] = r[2];
        b[j + 1][0] = r[1];
        b[j + 1][1] = r[3];
        if constexpr (kSplit) {
          split_tf32(b[j], b_lo[j]);
          split_tf32(b[j + 1], b_lo[j + 1]);
        }
      }
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        unsigned int a[4], a_lo[4];
        load_fragment<TileA>(tile_a, warp_m * WM + 16 * i, k0, a);
        if constexpr (kSplit) split_tf32(a, a_lo);
#pragma unroll
        for (int j = 0; j < NI; ++j) product(i, j, a, a_lo, b[j], b_lo[j]);
      }
    }
    if constexpr (kSplit) promote_tile_sums();
  }

  __device__ void promote_tile_sums() {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc[0][i][j][e] += acc[1][i][j][e];
          acc[1][i][j][e] = 0.0f;
        }
  }

  __device__ float sum(int i, int j, int e) const { return acc[0][i][j][e]; }

  // Stages block rows [half BM/2, half BM/2 + BM/2): the sums of the warps in warp row `half`.
  // Accumulators e, e + 1 (e even) of tile (i, j) are the warp's row 16 i + lane / 4 + 4 e,
  // columns 8 j + 2 (lane % 4) + {0, 1}.
  __device__ void stage(int half, float *staging) const {
    static_assert(WM == BM / 2, "a half of the block is one warp row");
    if (warp_m != half) return;
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int row = 16 * i + lane / 4 + 4 * e, col = warp_n * WN + 8 * j + 2 * (lane % 4);
          *reinterpret_cast<Floats<2> *>(staging + row * kStagingLD + col) = {{sum(i, j, e), sum(i, j, e + 1)}};
        }
  }
};

// ----- CUDA-core math: 16 x 16 threads, each an 8 x 8 grid of outputs -----
struct FfmaMath {
  static constexpr int T = 8, Q = 16;  // outputs per thread along u, threads along u
  static_assert(T * Q == BM && T * Q == BN && Q * Q == THREADS && BK % 4 == 0, "thread tiling");

  float acc[T][T] = {};
  const int ty = threadIdx.x / Q, tx = threadIdx.x % Q;  // thread coordinates along M and N

  // The u of thread q's i-th output, chosen so that its shared reads are conflict-free 16-byte loads:
  // k-major tiles interleave the threads (u = q + 16 i) and each reads 4 k's of a row; tiles with rows
  // along u give each thread 4 adjacent u's in each half (u = 4 q + i % 4 + 64 (i / 4)).
  template <class Tile>
  __device__ static int u_of(int q, int i) { return Tile::kKMajor ? q + Q * i : 4 * q + i % 4 + T * Q / 2 * (i / 4); }

  // Thread q's T u's by the 4 k's from k0 of a tile, as out[i][kk].
  template <class Tile>
  __device__ static void load_strip(const float *tile, int q, int k0, float (&out)[T][4]) {
    if constexpr (Tile::kKMajor) {
#pragma unroll
      for (int i = 0; i < T; ++i) {
        const Floats<4> v = *reinterpret_cast<const Floats<4> *>(tile + Tile::at(u_of<Tile>(q, i), k0));
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) out[i][kk] = v.v[kk];
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int i = 0; i < T; i += 4) {
          const Floats<4> v = *reinterpret_cast<const Floats<4> *>(tile + Tile::at(u_of<Tile>(q, i), k0 + kk));
#pragma unroll
          for (int c = 0; c < 4; ++c) out[i + c][kk] = v.v[c];
        }
    }
  }

  __device__ void multiply(const float *tile_a, const float *tile_b) {
#pragma unroll
    for (int k0 = 0; k0 < BK; k0 += 4) {
      float a[T][4], b[T][4];
      load_strip<TileA>(tile_a, ty, k0, a);
      load_strip<TileB>(tile_b, tx, k0, b);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int i = 0; i < T; ++i)
#pragma unroll
          for (int j = 0; j < T; ++j) acc[i][j] = fmaf(a[i][kk], b[j][kk], acc[i][j]);
    }
  }

  // Stages block rows [half BM/2, half BM/2 + BM/2): outputs i = half T/2 .. half T/2 + T/2 - 1 of
  // every thread (both u_of mappings put the first T/2 in the upper half).
  __device__ void stage(int half, float *staging) const {
#pragma unroll
    for (int i = half * T / 2; i < half * T / 2 + T / 2; ++i)
#pragma unroll
      for (int j = 0; j < T; ++j)
        staging[(u_of<TileA>(ty, i) - half * BM / 2) * kStagingLD + u_of<TileB>(tx, j)] = acc[i][j];
  }
};

template <int MATH> struct MathFor { using type = MmaMath<MATH>; };
template <> struct MathFor<MFA_MATH_FFMA> { using type = FfmaMath; };
using Math = MathFor<MFA_MATH>::type;

}  // namespace mfa_sm80

// ----- entry points -----
// a, b 16-byte aligned; lda, ldb and the batch strides multiples of 16 bytes' worth of elements.
extern "C" __global__ void __launch_bounds__(MFA_SM80_THREADS) mfa_gemm_sm80_vec(const mfa_gemm_args args) {
  mfa_sm80::gemm_block<mfa_sm80::kChunk, mfa_sm80::Math>(args);
}
// Any element-aligned a, b and any strides.
extern "C" __global__ void __launch_bounds__(MFA_SM80_THREADS) mfa_gemm_sm80_scalar(const mfa_gemm_args args) {
  mfa_sm80::gemm_block<1, mfa_sm80::Math>(args);
}
