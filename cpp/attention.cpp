// attention.cpp: the attention forward's host side. A descriptor is validated and names one variant
// per path, "attention.sm80.bf16.d128x128.causal.softcap": the facts that change the kernel's code
// (element type, both head dimensions, the mask kind, soft-capping; on the portable path ".decode", the
// block of at most 16 query rows whose warps share out each key block, decode_rows). LSE, varlen and
// split-KV are run-time facts of the same kernels (a pointer present or not). The generated source is the
// variant macros, cuda/attention.cuh, then the path's kernel file:
//
//   portable  attention_sm80.cu: mfa_attention_sm80 (+ mfa_attention_combine for split-KV)
//   hopper    attention_sm90.cu (cpp/attention_sm90.cpp describes its launch and tensor maps)
//
// Path AUTO takes Hopper on sm_90 when hopper_supports() says yes and the splits resolve to 1.
// Split-KV: when the (batch x heads x query blocks) grid leaves SMs idle and the keys are long (decode),
// the key blocks are shared out over `splits` blocks per query block; each writes fp32 partials (O, LSE)
// into the workspace, which the combine kernel merges.
//
// Tensor rules (both paths): head_dim unit-stride, every other stride >= 0 and a multiple of 8 elements,
// and q/k/v/o 16-byte aligned: the portable kernel copies 16-byte chunks with cp.async, and TMA needs
// the same of its strides. A tensor that breaks them is refused with BAD_STRIDE / MISALIGNED, never read
// with a slower path (a caller fixes it with one contiguous() copy).
#include "attention.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "context.hpp"
#include "errors.hpp"
#include "tensor.hpp"

static_assert(MFA_ATTN_F16 == MFA_DTYPE_F16 && MFA_ATTN_BF16 == MFA_DTYPE_BF16, "dtype values");

namespace mfa {
namespace attention {

int32_t mask_of(const mfa_attention_descriptor &d) {
  if (d.window_left < 0 && d.window_right < 0) return MFA_ATTN_MASK_NONE;
  if (d.window_left < 0 && d.window_right == 0) return MFA_ATTN_MASK_CAUSAL;
  return MFA_ATTN_MASK_WINDOW;
}

namespace {

constexpr int kMaxHeadDim = 256;
constexpr int64_t kWorkspaceAlign = 256;
constexpr const char *kPortableKernelFile = "attention_sm80.cu";
constexpr const char *kPortableEntry = "mfa_attention_sm80";
constexpr const char *kCombineEntry = "mfa_attention_combine";
constexpr int kHopperReportSms = 132;  // compile_report has no device: an H100 SXM's SM count

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ----- the descriptor -----

void require_head_dim(int64_t value, const char *field) {
  require(value >= 8 && value <= kMaxHeadDim && value % 8 == 0, MFA_STATUS_INVALID_ARGUMENT, "descriptor->", field,
          " is ", value, " (must be a multiple of 8 in [8, ", kMaxHeadDim, "])");
}

void require_window_side(int32_t value, const char *field) {
  require(value >= -1, MFA_STATUS_INVALID_ARGUMENT, "descriptor->", field, " is ", value,
          " (must be -1 for unbounded, or >= 0)");
}

mfa_attention_descriptor validate_descriptor(const mfa_attention_descriptor *descriptor) {
  require_arg(descriptor, "descriptor");
  require_header(descriptor->header, MFA_STRUCT_ATTENTION_DESCRIPTOR, sizeof(mfa_attention_descriptor), "descriptor");
  mfa_attention_descriptor d = MFA_ATTENTION_DESCRIPTOR_INIT;
  std::memcpy(&d, descriptor, std::min<size_t>(descriptor->header.size, sizeof d));
  d.header.size = sizeof d;
  require(d.batch >= 1 && d.batch <= 65535, MFA_STATUS_INVALID_ARGUMENT, "descriptor->batch is ", d.batch,
          " (must be in [1, 65535])");
  require(d.seq_q >= 0 && d.seq_q <= INT_MAX / 2, MFA_STATUS_INVALID_ARGUMENT, "descriptor->seq_q is ", d.seq_q,
          " (must be in [0, 2^30))");
  require(d.seq_k >= 0 && d.seq_k <= INT_MAX / 2, MFA_STATUS_INVALID_ARGUMENT, "descriptor->seq_k is ", d.seq_k,
          " (must be in [0, 2^30))");
  require(d.heads_q >= 1 && d.heads_q <= 65535, MFA_STATUS_INVALID_ARGUMENT, "descriptor->heads_q is ", d.heads_q,
          " (must be in [1, 65535])");
  require(d.heads_kv >= 1 && d.heads_kv <= d.heads_q && d.heads_q % d.heads_kv == 0, MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->heads_kv is ", d.heads_kv, ": it must divide heads_q (", d.heads_q, ")");
  require_head_dim(d.head_dim_qk, "head_dim_qk");
  require_head_dim(d.head_dim_v, "head_dim_v");
  require(d.dtype == MFA_DTYPE_F16 || d.dtype == MFA_DTYPE_BF16, MFA_STATUS_INVALID_ARGUMENT, "descriptor->dtype is ",
          d.dtype, " (attention takes MFA_DTYPE_F16 or MFA_DTYPE_BF16)");
  require(d.varlen == 0 || d.varlen == 1, MFA_STATUS_INVALID_ARGUMENT, "descriptor->varlen is ", d.varlen);
  require_window_side(d.window_left, "window_left");
  require_window_side(d.window_right, "window_right");
  require(d.scale == 0.0f || (std::isfinite(d.scale) && d.scale > 0.0f), MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->scale is ", d.scale, " (0 for 1/sqrt(head_dim_qk), else finite and > 0)");
  require(d.softcap == 0.0f || (std::isfinite(d.softcap) && d.softcap > 0.0f), MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->softcap is ", d.softcap, " (0 for off, else finite and > 0)");
  require(d.return_lse == 0 || d.return_lse == 1, MFA_STATUS_INVALID_ARGUMENT, "descriptor->return_lse is ",
          d.return_lse);
  require(d.path >= MFA_ATTENTION_PATH_AUTO && d.path <= MFA_ATTENTION_PATH_HOPPER, MFA_STATUS_INVALID_ARGUMENT,
          "descriptor->path is ", d.path);
  require(d.splits >= 0 && d.splits <= 256, MFA_STATUS_INVALID_ARGUMENT, "descriptor->splits is ", d.splits,
          " (0: the library's choice, 1: no split, up to 256)");
  require(d.reserved == 0, MFA_STATUS_INVALID_ARGUMENT, "descriptor->reserved is ", d.reserved, " (must be 0)");
  return d;
}

float scale_of(const mfa_attention_descriptor &d) {
  return d.scale != 0.0f ? d.scale : 1.0f / std::sqrt(static_cast<float>(d.head_dim_qk));
}

// ----- the variant -----

struct AttentionVariant {
  int32_t path;  // PORTABLE or HOPPER (never AUTO)
  int32_t dtype, d_qk, d_v, mask;
  bool softcap;
  bool decode;  // portable: the 16-row block whose warps share out each key block (decode_rows)

  std::string key() const {
    const char *mask_name = mask == MFA_ATTN_MASK_CAUSAL ? ".causal" : mask == MFA_ATTN_MASK_WINDOW ? ".window" : "";
    return concat("attention.", path == MFA_ATTENTION_PATH_HOPPER ? "sm90" : "sm80", ".", dtype_name(dtype), ".d",
                  d_qk, "x", d_v, mask_name, softcap ? ".softcap" : "", decode ? ".decode" : "");
  }

  std::string source() const {
    return concat("// ", key(), ": generated by MFA ", mfa_version_string(), "\n",
                  "#define MFA_ATTN_DTYPE ", dtype, "\n",
                  "#define MFA_ATTN_D_QK ", d_qk, "\n",
                  "#define MFA_ATTN_D_V ", d_v, "\n",
                  "#define MFA_ATTN_MASK ", mask, "\n",
                  "#define MFA_ATTN_SOFTCAP ", softcap ? 1 : 0, "\n",
                  "#define MFA_ATTN_SM80_DECODE ", decode ? 1 : 0, "\n",
                  "#include \"attention.cuh\"\n",
                  "#include \"ptx.cuh\"\n",
                  "#include \"", path == MFA_ATTENTION_PATH_HOPPER ? kHopperKernelFile : kPortableKernelFile, "\"\n");
  }

  std::vector<const char *> entries() const {
    if (path == MFA_ATTENTION_PATH_HOPPER) return {kHopperEntryPoint, kHopperClearEntryPoint};
    return {kPortableEntry, kCombineEntry};
  }
};

bool decode_rows(const mfa_attention_descriptor &d);

AttentionVariant variant_for(const mfa_attention_descriptor &d, int32_t path) {
  return {path, d.dtype, static_cast<int32_t>(d.head_dim_qk), static_cast<int32_t>(d.head_dim_v), mask_of(d),
          d.softcap > 0.0f, path == MFA_ATTENTION_PATH_PORTABLE && decode_rows(d)};
}

KernelSource source_of(const AttentionVariant &variant, const std::string &arch) {
  return {variant.key(), variant.source(), arch};
}

// ----- the plan: path and split-KV -----

bool is_hopper_arch(const std::string &arch) { return arch == "sm_90a"; }

struct Plan {
  int32_t path = MFA_ATTENTION_PATH_PORTABLE;
  bool pack_gqa = false;
  int splits = 1, kv_blocks_per_split = 0;
  uint64_t o_partial_bytes = 0, workspace_bytes = 0;
};

// GQA packing (portable path): when a head's queries fill less than one block (decode), the query heads
// sharing a key/value head share the block's rows instead, and each K/V block is read once for them.
bool packs_gqa(const mfa_attention_descriptor &d) {
  return d.heads_q > d.heads_kv && d.seq_q < MFA_ATTN_SM80_BLOCK_M;
}

// The query rows of one (batch, head or head group) block column: queries, times the group when packed.
int64_t packed_rows(const mfa_attention_descriptor &d) {
  return d.seq_q * (packs_gqa(d) ? d.heads_q / d.heads_kv : 1);
}

// Decode: every head group's rows fit one mma tile's 16, so the portable kernel runs its decode variant.
bool decode_rows(const mfa_attention_descriptor &d) { return packed_rows(d) <= MFA_ATTN_SM80_DECODE_BLOCK_M; }

int portable_block_m(const mfa_attention_descriptor &d) { return mfa_attn_sm80_block_m(decode_rows(d)); }

int portable_smem_bytes(const mfa_attention_descriptor &d) {
  return mfa_attn_sm80_smem_bytes(static_cast<int>(d.head_dim_qk), static_cast<int>(d.head_dim_v), decode_rows(d));
}

int64_t query_blocks(const mfa_attention_descriptor &d) { return ceil_div(packed_rows(d), portable_block_m(d)); }

int64_t grid_heads(const mfa_attention_descriptor &d) { return packs_gqa(d) ? d.heads_kv : d.heads_q; }

// Key blocks of the portable kernel along the whole key sequence (the unit split-KV shares out).
int64_t key_blocks_of(const mfa_attention_descriptor &d) {
  return ceil_div(d.seq_k, mfa_attn_sm80_block_n(int(d.head_dim_qk), int(d.head_dim_v)));
}

// Splits when the unsplit grid leaves SMs idle: 4-warp blocks to about two an SM, every split getting at
// least 4 key blocks (below that the partials' traffic costs more than the parallelism buys); decode
// blocks, whose warps share each key block, to about one an SM, down to one key block a split, and no
// split left empty. Measured (H200, bf16, GQA 32:4, d128, us a step; one decode block an SM against two):
// batch 1, 4096 keys: 32 splits 8.95, 64 splits 10.07; 16384 keys: 33 splits 15.10, 66 splits 16.60; 65536
// keys: 66 splits 40.8, 132 splits 47.3; batch 8, 4096 keys: 4 splits 23.0, 8 splits 24.3; 16384 keys 70.3
// and 73.1. Three or four K/V stages (one block an SM) measured no faster than two.
int auto_splits(const mfa_attention_descriptor &d, int sm_count) {
  const int64_t blocks = d.batch * grid_heads(d) * query_blocks(d);
  const int64_t key_blocks = key_blocks_of(d);
  const bool decode = decode_rows(d);
  if (blocks == 0 || key_blocks == 0 || (blocks >= sm_count && !decode)) return 1;
  const int64_t most = decode ? key_blocks : key_blocks / 4, per_sm = decode ? 1 : 2;
  const int64_t splits = std::clamp<int64_t>(std::min(int64_t{sm_count} * per_sm / blocks, most), 1, 128);
  return static_cast<int>(ceil_div(key_blocks, ceil_div(key_blocks, splits)));
}

// The Hopper kernel's workspace is its persistent grid's tile counter.
Plan hopper_plan() {
  Plan plan;
  plan.path = MFA_ATTENTION_PATH_HOPPER;
  plan.workspace_bytes = kHopperWorkspaceBytes;
  return plan;
}

Plan plan_for(const mfa_attention_descriptor &d, const std::string &arch, int sm_count) {
  Plan plan;
  int splits = d.splits != 0 ? d.splits : auto_splits(d, std::max(sm_count, 1));
  std::string why;
  const bool hopper_ok = is_hopper_arch(arch) && hopper_supports(d, &why);
  if (d.path == MFA_ATTENTION_PATH_HOPPER) {
    require(is_hopper_arch(arch), MFA_STATUS_UNSUPPORTED, "descriptor->path is HOPPER but the device is ", arch,
            " (the Hopper path needs sm_90a)");
    require(hopper_ok, MFA_STATUS_UNSUPPORTED, "descriptor->path is HOPPER but the Hopper kernel does not serve it: ",
            why);
    require(splits == 1 || d.splits == 0, MFA_STATUS_UNSUPPORTED, "descriptor->splits is ", d.splits,
            ": split-KV runs on the portable path only");
    return hopper_plan();
  }
  // AUTO: Hopper's query blocks are larger still, so shapes with less than one portable block of
  // queries (decode) stay on the portable path, packed and split.
  if (d.path == MFA_ATTENTION_PATH_AUTO && hopper_ok && splits == 1 && d.seq_q >= MFA_ATTN_SM80_BLOCK_M) {
    return hopper_plan();
  }
  const int64_t key_blocks = key_blocks_of(d);
  splits = static_cast<int>(std::clamp<int64_t>(splits, 1, std::max<int64_t>(key_blocks, 1)));
  require(d.batch * splits <= 65535, MFA_STATUS_UNSUPPORTED, "descriptor: batch * splits (", d.batch, " * ", splits,
          ") exceeds 65535 blocks");
  plan.splits = splits;
  plan.pack_gqa = packs_gqa(d);
  plan.kv_blocks_per_split = static_cast<int>(ceil_div(std::max<int64_t>(key_blocks, 1), splits));
  if (splits > 1) {
    const int64_t rows = d.batch * d.heads_q * d.seq_q;
    plan.o_partial_bytes = ceil_div(splits * rows * mfa_attn_round16(int(d.head_dim_v)) * 4, kWorkspaceAlign) *
                           kWorkspaceAlign;
    plan.workspace_bytes = plan.o_partial_bytes + ceil_div(splits * rows * 4, kWorkspaceAlign) * kWorkspaceAlign;
  }
  return plan;
}

// ----- tensors -----

struct Operand {
  const char *name;
  char *data = nullptr;
  int64_t strides[4] = {};  // in elements, in the logical order of the rank (batch, seq, heads, dim)
  int64_t span_bytes = 0;   // from data to one past the last element, for overlap checks
};

int64_t span_bytes(const DenseTensor &t, int bytes) {
  int64_t last = 0;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] == 0) return 0;
    last += (t.shape[i] - 1) * t.strides[i];
  }
  return (last + 1) * bytes;
}

// q, k, v, o: dense [batch, seq, heads, dim], varlen [tokens, heads, dim]; `tokens` is -1 where any
// count is allowed (varlen; the count is read back through `out_tokens`).
Operand check_sequence_tensor(const mfa_tensor *tensor, const char *name, const mfa_attention_descriptor &d,
                              int64_t seq, int64_t heads, int64_t dim, int32_t device, int64_t *out_tokens) {
  const DenseTensor t = check_dense(tensor, name, d.dtype, device);
  Operand op{name};
  if (d.varlen) {
    require(t.ndim == 3 && t.shape[1] == heads && t.shape[2] == dim, MFA_STATUS_SHAPE_MISMATCH, name, ".shape is ",
            shape_text(*tensor), ", expected [tokens, ", heads, ", ", dim, "] (varlen)");
    *out_tokens = t.shape[0];
  } else {
    require(t.ndim == 4 && t.shape[0] == d.batch && t.shape[1] == seq && t.shape[2] == heads && t.shape[3] == dim,
            MFA_STATUS_SHAPE_MISMATCH, name, ".shape is ", shape_text(*tensor), ", expected [", d.batch, ", ", seq,
            ", ", heads, ", ", dim, "] ([batch, seq, heads, head_dim])");
    *out_tokens = seq;
  }
  op.data = t.data;
  if (d.varlen) {
    op.strides[1] = t.strides[0], op.strides[2] = t.strides[1], op.strides[3] = 1;
  } else {
    for (int i = 0; i < 4; ++i) op.strides[i] = t.strides[i];
  }
  op.span_bytes = span_bytes(t, 2);
  if (op.span_bytes == 0) return op;  // empty (no token): never addressed, any strides will do
  require(t.strides[t.ndim - 1] == 1, MFA_STATUS_BAD_STRIDE, name, ".strides[", t.ndim - 1, "] is ",
          t.strides[t.ndim - 1], ": the head dimension must be unit-stride");
  for (int i = 0; i < t.ndim - 1; ++i) {
    require(t.strides[i] >= 0, MFA_STATUS_BAD_STRIDE, name, ".strides[", i, "] is ", t.strides[i],
            " (negative strides are not supported)");
    require(t.shape[i] <= 1 || t.strides[i] % 8 == 0, MFA_STATUS_BAD_STRIDE, name, ".strides[", i, "] is ",
            t.strides[i], ": attention needs strides that are multiples of 8 elements (16 bytes)");
  }
  require(reinterpret_cast<uintptr_t>(t.data) % 16 == 0, MFA_STATUS_MISALIGNED, name, ".data + byte_offset (",
          static_cast<void *>(t.data), ") is not aligned to 16 bytes");
  return op;
}

// lse: fp32, dense [batch, heads_q, seq_q], varlen [heads_q, total_q]; unit stride on the last dimension.
Operand check_lse(const mfa_tensor *tensor, const mfa_attention_descriptor &d, int64_t total_q, int32_t device) {
  const DenseTensor t = check_dense(tensor, "lse", MFA_DTYPE_F32, device);
  Operand op{"lse"};
  if (d.varlen) {
    require(t.ndim == 2 && t.shape[0] == d.heads_q && t.shape[1] == total_q, MFA_STATUS_SHAPE_MISMATCH,
            "lse.shape is ", shape_text(*tensor), ", expected [", d.heads_q, ", ", total_q, "] ([heads_q, total_q])");
  } else {
    require(t.ndim == 3 && t.shape[0] == d.batch && t.shape[1] == d.heads_q && t.shape[2] == d.seq_q,
            MFA_STATUS_SHAPE_MISMATCH, "lse.shape is ", shape_text(*tensor), ", expected [", d.batch, ", ",
            d.heads_q, ", ", d.seq_q, "] ([batch, heads_q, seq_q])");
  }
  op.span_bytes = span_bytes(t, 4);
  require(op.span_bytes == 0 || t.shape[t.ndim - 1] <= 1 || t.strides[t.ndim - 1] == 1, MFA_STATUS_BAD_STRIDE, "lse.strides[", t.ndim - 1,
          "] is ", t.strides[t.ndim - 1], ": the last dimension must be unit-stride");
  for (int i = 0; i < t.ndim; ++i)
    require(t.strides[i] >= 0, MFA_STATUS_BAD_STRIDE, "lse.strides[", i, "] is ", t.strides[i],
            " (negative strides are not supported)");
  op.data = t.data;
  if (d.varlen) {
    op.strides[1] = t.strides[0];
  } else {
    op.strides[0] = t.strides[0], op.strides[1] = t.strides[1];
  }
  return op;
}

// cu_seqlens: int32 [batch + 1], contiguous, in device memory (its values are the caller's contract:
// non-decreasing from 0, the last one the token count; no device-to-host copy checks them).
const int *check_cu_seqlens(const mfa_tensor *tensor, const char *name, const mfa_attention_descriptor &d,
                            int32_t device) {
  require_arg(tensor, name);
  const int32_t type = tensor->device.device_type;
  require(type == MFA_DEVICE_CUDA || type == MFA_DEVICE_CUDA_MANAGED || type == MFA_DEVICE_CUDA_HOST,
          MFA_STATUS_INVALID_ARGUMENT, name, ".device.device_type is ", type, ": cu_seqlens must be in device memory");
  require(type != MFA_DEVICE_CUDA || device == kAnyDevice || tensor->device.device_id == device,
          MFA_STATUS_INVALID_ARGUMENT, name, ".device.device_id is ", tensor->device.device_id,
          " but the context is on device ", device);
  require(tensor->dtype.code == MFA_DTYPE_CODE_INT && tensor->dtype.bits == 32 && tensor->dtype.lanes == 1,
          MFA_STATUS_SHAPE_MISMATCH, name, ".dtype is {code ", int(tensor->dtype.code), ", bits ",
          int(tensor->dtype.bits), ", lanes ", tensor->dtype.lanes, "}, expected int32");
  require(tensor->ndim == 1 && tensor->shape != nullptr && tensor->shape[0] == d.batch + 1, MFA_STATUS_SHAPE_MISMATCH,
          name, ".shape is ", tensor->shape ? shape_text(*tensor) : std::string("NULL"), ", expected [", d.batch + 1,
          "] (batch + 1)");
  require(tensor->strides == nullptr || tensor->strides[0] == 1, MFA_STATUS_BAD_STRIDE, name, ".strides[0] is ",
          tensor->strides ? tensor->strides[0] : 1, " (must be 1)");
  const char *data = static_cast<const char *>(tensor->data) + tensor->byte_offset;
  require(tensor->data != nullptr, MFA_STATUS_INVALID_ARGUMENT, name, ".data is NULL");
  require(reinterpret_cast<uintptr_t>(data) % 4 == 0, MFA_STATUS_MISALIGNED, name, ".data + byte_offset is not 4-byte aligned");
  return reinterpret_cast<const int *>(data);
}

void require_given(const mfa_tensor *tensor, bool wanted, const char *name, const char *why) {
  if (wanted)
    require(tensor != nullptr, MFA_STATUS_INVALID_ARGUMENT, name, " is NULL (", why, ")");
  else
    require(tensor == nullptr, MFA_STATUS_INVALID_ARGUMENT, name, " is given but ", why);
}

struct Operands {
  Operand q, k, v, o, lse;
  const int *cu_seqlens_q = nullptr, *cu_seqlens_k = nullptr;
  int64_t total_q = 0, total_k = 0;
};

Operands check_operands(const mfa_attention_descriptor &d, int32_t device, const mfa_attention_tensors *tensors) {
  require_arg(tensors, "tensors");
  require_header(tensors->header, MFA_STRUCT_ATTENTION_TENSORS, sizeof(mfa_attention_tensors), "tensors");
  mfa_attention_tensors t = MFA_ATTENTION_TENSORS_INIT;
  std::memcpy(&t, tensors, std::min<size_t>(tensors->header.size, sizeof t));
  for (auto [tensor, name] : {std::pair{t.q, "q"}, {t.k, "k"}, {t.v, "v"}, {t.o, "o"}})
    require_given(tensor, true, name, "always needed");
  require_given(t.lse, d.return_lse, "lse", d.return_lse ? "descriptor->return_lse is 1" : "descriptor->return_lse is 0");
  const char *varlen_text = d.varlen ? "descriptor->varlen is 1" : "descriptor->varlen is 0";
  require_given(t.cu_seqlens_q, d.varlen, "cu_seqlens_q", varlen_text);
  require_given(t.cu_seqlens_k, d.varlen, "cu_seqlens_k", varlen_text);

  Operands ops;
  int64_t tokens_k_v = 0, tokens_o = 0;
  ops.q = check_sequence_tensor(t.q, "q", d, d.seq_q, d.heads_q, d.head_dim_qk, device, &ops.total_q);
  ops.k = check_sequence_tensor(t.k, "k", d, d.seq_k, d.heads_kv, d.head_dim_qk, device, &ops.total_k);
  ops.v = check_sequence_tensor(t.v, "v", d, d.seq_k, d.heads_kv, d.head_dim_v, device, &tokens_k_v);
  ops.o = check_sequence_tensor(t.o, "o", d, d.seq_q, d.heads_q, d.head_dim_v, device, &tokens_o);
  require(tokens_k_v == ops.total_k, MFA_STATUS_SHAPE_MISMATCH, "v.shape[0] is ", tokens_k_v, " but k.shape[0] is ",
          ops.total_k, " (the same key tokens)");
  require(tokens_o == ops.total_q, MFA_STATUS_SHAPE_MISMATCH, "o.shape[0] is ", tokens_o, " but q.shape[0] is ",
          ops.total_q, " (the same query tokens)");
  if (d.varlen) {
    require(ops.total_q < INT_MAX && ops.total_k < INT_MAX, MFA_STATUS_UNSUPPORTED,
            "varlen token counts must stay below 2^31 (int32 cu_seqlens)");
    ops.cu_seqlens_q = check_cu_seqlens(t.cu_seqlens_q, "cu_seqlens_q", d, device);
    ops.cu_seqlens_k = check_cu_seqlens(t.cu_seqlens_k, "cu_seqlens_k", d, device);
  }
  if (t.lse) ops.lse = check_lse(t.lse, d, ops.total_q, device);
  const Operand *inputs[] = {&ops.q, &ops.k, &ops.v};
  for (const Operand *out : {&ops.o, &ops.lse}) {
    if (out->data == nullptr) continue;
    for (const Operand *in : inputs)
      require(!ranges_overlap(out->data, out->span_bytes, in->data, in->span_bytes), MFA_STATUS_INVALID_ARGUMENT,
              out->name, " overlaps ", in->name, ": outputs may not alias inputs");
  }
  require(!ranges_overlap(ops.o.data, ops.o.span_bytes, ops.lse.data, ops.lse.span_bytes),
          MFA_STATUS_INVALID_ARGUMENT, "o overlaps lse");
  return ops;
}

}  // namespace
}  // namespace attention
}  // namespace mfa

// ----- the pipeline -----

struct mfa_attention_pipeline {
  std::shared_ptr<mfa::Context> context;
  mfa_attention_descriptor descriptor;
  mfa_pipeline_info info;
  mfa::attention::Plan plan;
  mfa::CUfunction kernel = nullptr, combine = nullptr, clear = nullptr;  // clear: the Hopper tile counter's
  mfa::attention::LaunchShape shape{};
};

namespace mfa {
namespace attention {
namespace {

void load(mfa_attention_pipeline &pipeline, const AttentionVariant &variant, const CacheLookup &lookup) {
  Context &context = *pipeline.context;
  const mfa_attention_descriptor &d = pipeline.descriptor;
  if (variant.path == MFA_ATTENTION_PATH_HOPPER) {
    pipeline.shape = hopper_launch_shape(d, context.info().sm_count);
    pipeline.kernel = context.function(*lookup.kernel, kHopperEntryPoint);
    pipeline.clear = context.function(*lookup.kernel, kHopperClearEntryPoint);
  } else {
    const unsigned blocks_x = static_cast<unsigned>(query_blocks(d));
    const unsigned blocks_z = static_cast<unsigned>(d.batch * pipeline.plan.splits);
    const unsigned threads = mfa_attn_sm80_threads(variant.d_qk, variant.d_v, variant.decode);
    pipeline.shape = {{blocks_x, static_cast<unsigned>(grid_heads(d)), blocks_z}, threads,
                      static_cast<size_t>(portable_smem_bytes(d))};
    pipeline.kernel = context.function(*lookup.kernel, kPortableEntry);
    pipeline.combine = context.function(*lookup.kernel, kCombineEntry);
  }
  check_cuda(driver().cuFuncSetAttribute(pipeline.kernel, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                         static_cast<int>(pipeline.shape.shared_bytes)),
             "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)");
}

mfa_attn_args args_for(const mfa_attention_pipeline &pipeline, const Operands &ops, void *workspace) {
  const mfa_attention_descriptor &d = pipeline.descriptor;
  mfa_attn_args args{};
  args.q = ops.q.data, args.k = ops.k.data, args.v = ops.v.data, args.o = ops.o.data;
  args.lse = reinterpret_cast<float *>(ops.lse.data);
  if (pipeline.plan.path == MFA_ATTENTION_PATH_HOPPER) args.tile_counter = static_cast<int *>(workspace);
  if (pipeline.plan.splits > 1) {
    args.o_partial = static_cast<float *>(workspace);
    args.lse_partial = reinterpret_cast<float *>(static_cast<char *>(workspace) + pipeline.plan.o_partial_bytes);
  }
  args.cu_seqlens_q = ops.cu_seqlens_q, args.cu_seqlens_k = ops.cu_seqlens_k;
  args.q_batch_stride = ops.q.strides[0], args.q_seq_stride = ops.q.strides[1], args.q_head_stride = ops.q.strides[2];
  args.k_batch_stride = ops.k.strides[0], args.k_seq_stride = ops.k.strides[1], args.k_head_stride = ops.k.strides[2];
  args.v_batch_stride = ops.v.strides[0], args.v_seq_stride = ops.v.strides[1], args.v_head_stride = ops.v.strides[2];
  args.o_batch_stride = ops.o.strides[0], args.o_seq_stride = ops.o.strides[1], args.o_head_stride = ops.o.strides[2];
  args.lse_batch_stride = ops.lse.strides[0], args.lse_head_stride = ops.lse.strides[1];
  args.batch = static_cast<int>(d.batch);
  args.heads_q = static_cast<int>(d.heads_q), args.heads_kv = static_cast<int>(d.heads_kv);
  args.seq_q = static_cast<int>(d.seq_q), args.seq_k = static_cast<int>(d.seq_k);
  args.window_left = d.window_left, args.window_right = d.window_right;
  args.scale_log2 = scale_of(d) * 1.4426950408889634f;
  args.softcap = d.softcap;
  args.splits = pipeline.plan.splits;
  args.kv_blocks_per_split = pipeline.plan.kv_blocks_per_split;
  args.pack_gqa = pipeline.plan.pack_gqa ? 1 : 0;
  return args;
}

void launch(CUfunction function, const LaunchShape &shape, void *stream, mfa_attn_args &args, const char *what) {
  void *params[] = {&args};
  check_cuda(driver().cuLaunchKernel(function, shape.grid[0], shape.grid[1], shape.grid[2], shape.threads, 1, 1,
                                     static_cast<unsigned>(shape.shared_bytes), static_cast<CUstream>(stream), params,
                                     nullptr),
             what);
}

void encode(const mfa_attention_pipeline &pipeline, void *stream, const Operands &ops, void *workspace) {
  const mfa_attention_descriptor &d = pipeline.descriptor;
  if (d.seq_q == 0) return;  // no query row: nothing to write
  mfa_attn_args args = args_for(pipeline, ops, workspace);
  if (pipeline.plan.path == MFA_ATTENTION_PATH_HOPPER) {
    std::string why;
    require(hopper_encode_tensor_maps(driver(), d, ops.total_q, ops.total_k, args, &why), MFA_STATUS_MISALIGNED,
            "the Hopper path's tensor maps: ", why);
    void *clear_params[] = {&args.tile_counter};
    DependentLaunch(1, kHopperClearThreads, 1, 0, stream)
        .start(pipeline.clear, clear_params, "cuLaunchKernelEx(mfa_attention_sm90_clear)");
    void *params[] = {&args};
    const LaunchShape &shape = pipeline.shape;
    DependentLaunch(shape.grid[0], shape.threads, 1, static_cast<unsigned>(shape.shared_bytes), stream)
        .start(pipeline.kernel, params, "cuLaunchKernelEx(mfa_attention_sm90)");
    return;
  }
  // (Launched dependent on the previous grid, as the combine is, the decode steps of a graph took 1.02-1.25x
  // the time: H200, GQA 32:4, d128, batch 1 to 64, KV 4096 to 131072.)
  launch(pipeline.kernel, pipeline.shape, stream, args, "cuLaunchKernel(mfa_attention_sm80)");
  if (pipeline.plan.splits > 1) {
    // A block per (group of rows, column slice); groups past the grid's x limit loop. The combine costs
    // 2.6-3.3 us of a decode step in a graph (H200, GQA 32:4, d128, the step timed with its launch left
    // out: KV 4096 batch 1 9.3 -> 6.4 us, KV 16384 batch 1 16.3 -> 13.2, KV 4096 batch 8 24.1 -> 21.5).
    const int64_t rows = d.batch * d.heads_q * d.seq_q;
    const int64_t groups = ceil_div(rows, mfa_attn_combine_rows_per_block(pipeline.plan.splits));
    const unsigned blocks = static_cast<unsigned>(std::clamp<int64_t>(groups, 1, INT32_MAX));
    const unsigned slices = static_cast<unsigned>(ceil_div(d.head_dim_v, MFA_ATTN_COMBINE_SLICE));
    if (pipeline.context->compute_capability() < 90) {
      launch(pipeline.combine, {{blocks, slices, 1}, MFA_ATTN_COMBINE_THREADS, 0}, stream, args,
             "cuLaunchKernel(mfa_attention_combine)");
      return;
    }
    // sm_90+: scheduled while the attention grid runs (its launch latency hidden), waiting on griddepcontrol.
    // Merging inside the attention grid instead ran slower (H100, bf16, GQA 32:4, d128, same process): each
    // split block raising a flag once its partials were out, waiting for its row group's other flags, then
    // merging a 1/splits share of the group's outputs took 1.35x the step's time at batch 1, 4096 keys
    // (13.1 against 9.7 us), 1.18x at 16384 keys, 1.03-1.05x at batch 8 and at 65536 keys. Counting the
    // arrivals by compare-and-swap on a token-stamped word instead took 2.1x, in a build that merged only
    // half its share: the 32 blocks' swaps retry one after another.
    void *params[] = {&args};
    DependentLaunch(blocks, MFA_ATTN_COMBINE_THREADS, 1, 0, stream)
        .grid_y(slices)
        .start(pipeline.combine, params, "cuLaunchKernelEx(mfa_attention_combine)");
  }
}

// ----- every variant, for `check` and the CPU tests -----

// The head-dimension pairs the tests and `check` compile: the common sizes, and one d_v != d_qk.
constexpr int kHeadDims[][2] = {{32, 32}, {64, 64}, {80, 80}, {96, 96}, {128, 128}, {160, 160}, {192, 192},
                                {256, 256}, {192, 128}};

std::vector<mfa_attention_descriptor> all_variant_descriptors() {
  std::vector<mfa_attention_descriptor> all;
  std::string why;
  for (int32_t path : {MFA_ATTENTION_PATH_PORTABLE, MFA_ATTENTION_PATH_HOPPER})
    for (int32_t dtype : {MFA_DTYPE_F16, MFA_DTYPE_BF16})
      for (const auto &dims : kHeadDims)
        for (int32_t mask : {MFA_ATTN_MASK_NONE, MFA_ATTN_MASK_CAUSAL, MFA_ATTN_MASK_WINDOW})
          for (bool softcap : {false, true}) {
            mfa_attention_descriptor d = MFA_ATTENTION_DESCRIPTOR_INIT;
            d.seq_q = d.seq_k = 128;
            d.head_dim_qk = dims[0], d.head_dim_v = dims[1];
            d.dtype = dtype;
            d.window_left = mask == MFA_ATTN_MASK_WINDOW ? 64 : -1;
            d.window_right = mask == MFA_ATTN_MASK_NONE ? -1 : 0;
            d.softcap = softcap ? 30.0f : 0.0f;
            d.path = path;
            d.splits = 1;
            if (path == MFA_ATTENTION_PATH_HOPPER && !hopper_supports(d, &why)) continue;
            all.push_back(d);
            if (path != MFA_ATTENTION_PATH_PORTABLE) continue;
            d.seq_q = 1;  // the decode variant
            all.push_back(d);
          }
  return all;
}

// The path a compile report describes: the descriptor's, AUTO read as "Hopper where it serves".
int32_t report_path(const mfa_attention_descriptor &d, const std::string &arch) {
  if (d.path != MFA_ATTENTION_PATH_AUTO) return d.path;
  std::string why;
  return is_hopper_arch(arch) && hopper_supports(d, &why) && d.splits <= 1 ? MFA_ATTENTION_PATH_HOPPER
                                                                              : MFA_ATTENTION_PATH_PORTABLE;
}

}  // namespace
}  // namespace attention
}  // namespace mfa

extern "C" {

MFA_API mfa_status mfa_attention_pipeline_create(mfa_context *context, const mfa_attention_descriptor *descriptor,
                                                 mfa_attention_pipeline **out_pipeline) {
  namespace at = mfa::attention;
  return mfa::abi_call([&] {
    const mfa_attention_descriptor checked = at::validate_descriptor(descriptor);
    mfa::require_arg(context, "context");
    mfa::require_arg(out_pipeline, "out_pipeline");
    auto pipeline = std::make_unique<mfa_attention_pipeline>();
    pipeline->context = context->impl;
    pipeline->descriptor = checked;
    pipeline->plan = at::plan_for(checked, pipeline->context->arch(), pipeline->context->info().sm_count);
    const at::AttentionVariant variant = at::variant_for(checked, pipeline->plan.path);
    const mfa::CacheLookup lookup = mfa::compile_cached(at::source_of(variant, pipeline->context->arch()));
    at::load(*pipeline, variant, lookup);
    const std::string name = variant.key() + (pipeline->plan.pack_gqa ? ".packgqa" : "") +
                             (pipeline->plan.splits > 1 ? mfa::concat(".split", pipeline->plan.splits) : "");
    pipeline->info = mfa::pipeline_info(name, lookup, pipeline->plan.workspace_bytes);
    *out_pipeline = pipeline.release();
  });
}

MFA_API mfa_status mfa_attention_pipeline_destroy(mfa_attention_pipeline *pipeline) {
  return mfa::abi_call([&] { delete pipeline; });
}

MFA_API mfa_status mfa_attention_pipeline_get_info(const mfa_attention_pipeline *pipeline,
                                                   mfa_pipeline_info *out_info) {
  return mfa::abi_call([&] {
    mfa::require_arg(pipeline, "pipeline");
    mfa::copy_out(out_info, pipeline->info, MFA_STRUCT_PIPELINE_INFO, "out_info");
  });
}

MFA_API mfa_status mfa_attention_encode(const mfa_attention_pipeline *pipeline, void *stream,
                                        const mfa_attention_tensors *tensors, void *workspace,
                                        uint64_t workspace_bytes) {
  return mfa::abi_call([&] {
    mfa::require_arg(pipeline, "pipeline");
    mfa::require_workspace(workspace, workspace_bytes, pipeline->info.workspace_bytes);
    const mfa::attention::Operands ops =
        mfa::attention::check_operands(pipeline->descriptor, pipeline->context->ordinal(), tensors);
    pipeline->context->make_current();
    mfa::attention::encode(*pipeline, stream, ops, workspace);
  });
}

MFA_API mfa_status mfa_attention_validate(const mfa_attention_descriptor *descriptor,
                                          const mfa_attention_tensors *tensors) {
  return mfa::abi_call([&] {
    mfa::attention::check_operands(mfa::attention::validate_descriptor(descriptor), mfa::kAnyDevice, tensors);
  });
}

MFA_API mfa_status mfa_attention_variant_count(int64_t *out_count) {
  return mfa::abi_call([&] {
    mfa::require_arg(out_count, "out_count");
    *out_count = static_cast<int64_t>(mfa::attention::all_variant_descriptors().size());
  });
}

MFA_API mfa_status mfa_attention_variant_descriptor(int64_t index, mfa_attention_descriptor *out_descriptor) {
  return mfa::abi_call([&] {
    mfa::copy_out_variant(mfa::attention::all_variant_descriptors(), index, out_descriptor,
                          MFA_STRUCT_ATTENTION_DESCRIPTOR);
  });
}

MFA_API mfa_status mfa_attention_compile_report(const mfa_attention_descriptor *descriptor, const char *arch,
                                                mfa_kernel_report *out_reports, int32_t capacity,
                                                int32_t *out_count) {
  namespace at = mfa::attention;
  return mfa::abi_call([&] {
    mfa::KernelReports reports(arch, out_reports, capacity, out_count);
    const mfa_attention_descriptor d = at::validate_descriptor(descriptor);
    const int32_t path = at::report_path(d, reports.arch());
    std::string why;
    mfa::require(path != MFA_ATTENTION_PATH_HOPPER || at::hopper_supports(d, &why), MFA_STATUS_UNSUPPORTED,
                 "descriptor->path is HOPPER but the Hopper kernel does not serve it: ", why);
    const at::AttentionVariant variant = at::variant_for(d, path);
    const mfa::CacheLookup lookup = mfa::compile_cached(at::source_of(variant, reports.arch()));
    if (path == MFA_ATTENTION_PATH_HOPPER) {
      reports.add(variant.key(), at::kHopperEntryPoint, lookup,
                  static_cast<int64_t>(at::hopper_launch_shape(d, at::kHopperReportSms).shared_bytes));
      reports.add(variant.key(), at::kHopperClearEntryPoint, lookup, 0);
    } else {
      reports.add(variant.key(), at::kPortableEntry, lookup, at::portable_smem_bytes(d));
      reports.add(variant.key(), at::kCombineEntry, lookup, 0);
    }
    reports.finish();
  });
}

}  // extern "C"
