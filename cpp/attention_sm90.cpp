// attention_sm90.cpp: the host side of the Hopper attention kernel (cuda/attention_sm90.cu): which
// descriptors it serves, its launch shape, and the TMA tensor maps of Q, K and V.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "attention.hpp"
#include "errors.hpp"

namespace mfa::attention {

static_assert(sizeof(mfa_attn_tensor_map) == sizeof(CUtensorMap), "tensor map layouts must agree");

namespace {

constexpr int64_t kElementBytes = 2;  // f16 and bf16, the only types of the Hopper path
constexpr unsigned long long kTmaStrideLimit = 1ull << 40;

// The head dimensions the kernel's wgmma shapes cover: each padded to whole 64-element boxes, the value
// one an N of m64nNk16 (64, 128, 192, 256). Below 64 the padding would waste half the tensor work or
// more; the portable kernel serves those.
bool head_dim_supported(int64_t d) { return d >= 64 && d <= 256 && d % 8 == 0; }

mfa_attn_sm90_shape sm90_shape_of(const mfa_attention_descriptor &d) {
  return {static_cast<int>(d.head_dim_qk), static_cast<int>(d.head_dim_v), d.softcap > 0.0f, mask_of(d)};
}

// The query tiles (128 or 192 rows, attention.cuh) of every head of every sequence (varlen: of the
// longest sequence; tiles past a shorter one's end cost a counter fetch). The persistent grid
// (attention_sm90.cu) runs at most one block an SM, each taking tiles until none is left.
int64_t hopper_tile_count(const mfa_attention_descriptor &d) {
  const int64_t block_m = mfa_attn_sm90_block_m(sm90_shape_of(d));
  return std::max<int64_t>(1, (d.seq_q + block_m - 1) / block_m) * d.heads_q * d.batch;
}

// Callers may pass no `why` (they only ask whether); a refusal explains itself when they do.
bool refuse(std::string *why, std::string reason) {
  if (why) *why = std::move(reason);
  return false;
}

// One operand's 4-D view (dim, token, head, batch) with byte strides, as cuTensorMapEncodeTiled takes it.
struct TmaView {
  const void *data;
  unsigned long long dims[4];
  unsigned long long strides[3];  // of dims 1..3; dim 0 is contiguous
};

// A dimension of extent 1 is never stepped, so its stride is free; the caller's may be anything (0, or
// not a multiple of 16), so it is replaced by the packed one. Extents of 0 (empty tensors) become 1:
// the kernel issues no load for them.
TmaView make_view(const void *data, int64_t dim, int64_t tokens, int64_t heads, int64_t batch, long long token_stride,
                  long long head_stride, long long batch_stride) {
  TmaView view{data, {}, {}};
  const int64_t extents[4] = {dim, std::max<int64_t>(tokens, 1), std::max<int64_t>(heads, 1),
                              std::max<int64_t>(batch, 1)};
  const long long element_strides[3] = {token_stride, head_stride, batch_stride};
  for (int i = 0; i < 4; ++i) view.dims[i] = static_cast<unsigned long long>(extents[i]);
  unsigned long long packed = (static_cast<unsigned long long>(dim) * kElementBytes + 15) / 16 * 16;
  for (int i = 0; i < 3; ++i) {
    view.strides[i] =
        extents[i + 1] == 1 ? packed : static_cast<unsigned long long>(element_strides[i]) * kElementBytes;
    packed = view.strides[i] * view.dims[i + 1];
  }
  return view;
}

// TMA's limits (cuTensorMapEncodeTiled): a 16-byte aligned base, byte strides multiples of 16 below 2^40.
bool tma_addressable(const TmaView &view, const char *name, std::string *why) {
  if (reinterpret_cast<uintptr_t>(view.data) % 16 != 0) {
    return refuse(why, concat(name, ": the Hopper path's TMA loads need a 16-byte aligned base address"));
  }
  for (unsigned long long stride : view.strides) {
    if (stride % 16 != 0 || stride >= kTmaStrideLimit) {
      return refuse(
          why, concat(name, ": the Hopper path's TMA loads need strides that are multiples of 16 bytes (8 elements)",
                      " below 2^40 bytes; got ", stride, " bytes"));
    }
  }
  return true;
}

// Boxes of one 128-byte swizzle span (64 elements) of the head dimension by `box_rows` tokens, with
// the 128-byte swizzle the kernel's wgmma descriptors assume; out-of-range elements read as zeros.
bool encode(const DriverApi &driver, int32_t dtype, const TmaView &view, unsigned box_rows, const char *name,
            mfa_attn_tensor_map *out, std::string *why) {
  if (!tma_addressable(view, name, why)) return false;
  const unsigned box[4] = {MFA_ATTN_SM90_BOX, box_rows, 1, 1};
  const unsigned element_strides[4] = {1, 1, 1, 1};
  const int type = dtype == MFA_DTYPE_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  CUtensorMap map;
  const CUresult result =
      driver.cuTensorMapEncodeTiled(&map, type, 4, const_cast<void *>(view.data), view.dims, view.strides, box,
                                    element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    return refuse(why,
                  concat(name, ": the driver refused its TMA tensor map (cuTensorMapEncodeTiled error ", result, ")"));
  }
  static_assert(sizeof(map) == sizeof(*out), "tensor map sizes agree");
  std::copy(map.opaque, map.opaque + 16, out->opaque);
  return true;
}

}  // namespace

bool hopper_supports(const mfa_attention_descriptor &d, std::string *why) {
  if (d.dtype != MFA_DTYPE_F16 && d.dtype != MFA_DTYPE_BF16) {
    return refuse(why, "the Hopper path takes f16 and bf16 only");
  }
  if (!head_dim_supported(d.head_dim_qk) || !head_dim_supported(d.head_dim_v)) {
    return refuse(why, concat("the Hopper path takes head dimensions of 64 to 256 (multiples of 8); got head_dim_qk ",
                              d.head_dim_qk, ", head_dim_v ", d.head_dim_v));
  }
  if (mfa_attn_sm90_stages(sm90_shape_of(d)) < 2) {
    return refuse(why, concat("head_dim_qk ", d.head_dim_qk, " with head_dim_v ", d.head_dim_v,
                              " leaves no room for two K/V stages in shared memory"));
  }
  if (d.splits > 1) {
    return refuse(why, "the Hopper kernel computes whole rows: split-KV (splits > 1) runs on the portable path");
  }
  if (hopper_tile_count(d) > INT32_MAX / 2) {  // tile indices and the counter are 32-bit, with room past the end
    return refuse(why, concat("the Hopper path numbers its query tiles (of every head and sequence) in 32 bits: ",
                              hopper_tile_count(d), " tiles are too many"));
  }
  // The online softmax takes row maxima of the scaled scores: a negative scale would turn them into minima.
  if (d.scale < 0.0f) {
    return refuse(why, "the Hopper path needs a non-negative scale");
  }
  return true;
}

LaunchShape hopper_launch_shape(const mfa_attention_descriptor &d, int sm_count) {
  const mfa_attn_sm90_shape shape = sm90_shape_of(d);
  const int64_t blocks = std::clamp<int64_t>(hopper_tile_count(d), 1, std::max(sm_count, 1));
  return {{static_cast<unsigned>(blocks), 1, 1}, static_cast<unsigned>(mfa_attn_sm90_threads(shape)),
          static_cast<size_t>(mfa_attn_sm90_smem_bytes(shape))};
}

// Varlen maps run over the packed tokens with a batch extent of 1 (sequence b starts at token
// cu_seqlens[b]). O is written by the consumers' own 16-byte stores (rows masked to each sequence's
// length), so tma_o stays zero; the tensor rules (attention.cpp: 16-byte aligned, strides multiples of 8
// elements) keep those stores aligned.
bool hopper_encode_tensor_maps(const DriverApi &driver, const mfa_attention_descriptor &d, long long total_q,
                               long long total_k, mfa_attn_args &args, std::string *why) {
  const bool varlen = d.varlen != 0;
  const int64_t batch = varlen ? 1 : d.batch;
  const int block_n = mfa_attn_sm90_block_n(sm90_shape_of(d));
  const TmaView q = make_view(args.q, d.head_dim_qk, total_q, d.heads_q, batch, args.q_seq_stride, args.q_head_stride,
                              args.q_batch_stride);
  const TmaView k = make_view(args.k, d.head_dim_qk, total_k, d.heads_kv, batch, args.k_seq_stride, args.k_head_stride,
                              args.k_batch_stride);
  const TmaView v = make_view(args.v, d.head_dim_v, total_k, d.heads_kv, batch, args.v_seq_stride, args.v_head_stride,
                              args.v_batch_stride);
  args.tma_o = mfa_attn_tensor_map{};
  // Q boxes are 64 rows: one per consumer warpgroup, each its own 128B-swizzled region.
  return encode(driver, d.dtype, q, 64, "q", &args.tma_q, why) &&
         encode(driver, d.dtype, k, block_n, "k", &args.tma_k, why) &&
         encode(driver, d.dtype, v, block_n, "v", &args.tma_v, why);
}

}  // namespace mfa::attention
