#include "tensor.hpp"

#include <string>

#include "errors.hpp"

namespace mfa {

namespace {

struct DlDtype {
  uint8_t code, bits;
};

DlDtype dlpack_dtype(int32_t dtype) {
  switch (dtype) {
    case MFA_DTYPE_F16: return {MFA_DTYPE_CODE_FLOAT, 16};
    case MFA_DTYPE_BF16: return {MFA_DTYPE_CODE_BFLOAT, 16};
    case MFA_DTYPE_F32: return {MFA_DTYPE_CODE_FLOAT, 32};
    default: fail(MFA_STATUS_INTERNAL, "no DLPack type for dtype ", dtype);
  }
}

void check_common(const mfa_tensor *tensor, const char *name, int32_t dtype, int32_t device_id, int max_ndim = 3) {
  require_arg(tensor, name);
  const int32_t type = tensor->device.device_type;
  require(type == MFA_DEVICE_CUDA || type == MFA_DEVICE_CUDA_MANAGED || type == MFA_DEVICE_CUDA_HOST,
          MFA_STATUS_INVALID_ARGUMENT, name, ".device.device_type is ", type,
          type == MFA_DEVICE_CPU ? " (CPU memory): copy it to the GPU first" : ", not a CUDA device type");
  require(type != MFA_DEVICE_CUDA || device_id == kAnyDevice || tensor->device.device_id == device_id, MFA_STATUS_INVALID_ARGUMENT, name,
          ".device.device_id is ", tensor->device.device_id, " but the context is on device ", device_id);
  const DlDtype want = dlpack_dtype(dtype);
  require(tensor->dtype.code == want.code && tensor->dtype.bits == want.bits && tensor->dtype.lanes == 1,
          MFA_STATUS_SHAPE_MISMATCH, name, ".dtype is {code ", int(tensor->dtype.code), ", bits ",
          int(tensor->dtype.bits), ", lanes ", tensor->dtype.lanes, "} but the descriptor says ", dtype_name(dtype));
  require(tensor->ndim >= 1 && tensor->ndim <= max_ndim, MFA_STATUS_SHAPE_MISMATCH, name, ".ndim is ", tensor->ndim);
  require(tensor->shape != nullptr, MFA_STATUS_INVALID_ARGUMENT, name, ".shape is NULL");
  for (int i = 0; i < tensor->ndim; ++i)
    require(tensor->shape[i] >= 0, MFA_STATUS_SHAPE_MISMATCH, name, ".shape[", i, "] is ", tensor->shape[i]);
}

int64_t stride_of(const mfa_tensor &tensor, int dim) {
  if (tensor.strides) return tensor.strides[dim];
  int64_t stride = 1;
  for (int i = tensor.ndim - 1; i > dim; --i) stride *= tensor.shape[i];
  return stride;
}

char *data_of(const mfa_tensor &tensor, const char *name, int32_t dtype, bool empty) {
  char *data = static_cast<char *>(tensor.data) + tensor.byte_offset;
  require(empty || tensor.data != nullptr, MFA_STATUS_INVALID_ARGUMENT, name, ".data is NULL");
  require(reinterpret_cast<uintptr_t>(data) % element_bytes(dtype) == 0, MFA_STATUS_MISALIGNED, name,
          ".data + byte_offset (", static_cast<void *>(data), ") is not aligned to its ", element_bytes(dtype),
          "-byte elements");
  return data;
}

}  // namespace

std::string shape_text(const mfa_tensor &tensor) {
  std::string text = "[";
  for (int i = 0; i < tensor.ndim; ++i) text += (i ? ", " : "") + std::to_string(tensor.shape[i]);
  return text + "]";
}

DenseTensor check_dense(const mfa_tensor *tensor, const char *name, int32_t dtype, int32_t device_id) {
  check_common(tensor, name, dtype, device_id, kMaxRank);
  DenseTensor dense;
  dense.ndim = tensor->ndim;
  bool empty = false;
  for (int i = 0; i < tensor->ndim; ++i) {
    dense.shape[i] = tensor->shape[i];
    dense.strides[i] = stride_of(*tensor, i);
    empty = empty || tensor->shape[i] == 0;
  }
  dense.data = data_of(*tensor, name, dtype, empty);
  return dense;
}

int element_bytes(int32_t dtype) { return dtype == MFA_DTYPE_F32 ? 4 : 2; }

const char *dtype_name(int32_t dtype) {
  switch (dtype) {
    case MFA_DTYPE_NONE: return "none";
    case MFA_DTYPE_F16: return "f16";
    case MFA_DTYPE_BF16: return "bf16";
    case MFA_DTYPE_F32: return "f32";
    default: return "unknown";
  }
}

bool is_float_dtype(int32_t dtype) {
  return dtype == MFA_DTYPE_F16 || dtype == MFA_DTYPE_BF16 || dtype == MFA_DTYPE_F32;
}

const char *activation_name(int32_t activation) {
  switch (activation) {
    case MFA_ACTIVATION_RELU: return "relu";
    case MFA_ACTIVATION_SILU: return "silu";
    case MFA_ACTIVATION_GELU_ERF: return "gelu_erf";
    case MFA_ACTIVATION_GELU_TANH: return "gelu_tanh";
    default: return "none";
  }
}

bool ranges_overlap(const char *a, int64_t a_bytes, const char *b, int64_t b_bytes) {
  return a_bytes > 0 && b_bytes > 0 && a < b + b_bytes && b < a + a_bytes;
}

MatrixOperand check_matrix(const mfa_tensor *tensor, const MatrixExpectation &expected) {
  const char *name = expected.name;
  check_common(tensor, name, expected.dtype, expected.device_id);
  const mfa_tensor &t = *tensor;
  const bool batched = t.ndim == 3;
  const int64_t batch = batched ? t.shape[0] : 1;
  const bool shape_ok = t.ndim >= 2 && t.shape[t.ndim - 2] == expected.rows && t.shape[t.ndim - 1] == expected.cols &&
                        (batch == expected.batch || (!batched && !expected.writable));
  require(shape_ok, MFA_STATUS_SHAPE_MISMATCH, name, ".shape is ", shape_text(t), ", expected [",
          expected.batch > 1 ? std::to_string(expected.batch) + ", " : std::string(), expected.rows, ", ",
          expected.cols, "]");
  const int row_dim = t.ndim - 2, col_dim = t.ndim - 1;
  const int64_t col_stride = stride_of(t, col_dim);
  MatrixOperand operand;
  operand.row_stride = stride_of(t, row_dim);
  operand.batch_stride = batched ? stride_of(t, 0) : 0;
  require(expected.cols <= 1 || col_stride == 1, MFA_STATUS_BAD_STRIDE, name, ".strides[", col_dim, "] is ",
          col_stride, ": the last dimension must have unit stride (pass the transposed operand with trans set)");
  require(operand.row_stride >= 0 && operand.batch_stride >= 0, MFA_STATUS_BAD_STRIDE, name,
          " has a negative stride");
  require(expected.rows <= 1 || operand.row_stride >= expected.cols, MFA_STATUS_BAD_STRIDE, name, ".strides[",
          row_dim, "] is ", operand.row_stride, ", less than its row length ", expected.cols, " (rows overlap)");
  const int64_t matrix_span = (expected.rows - 1) * operand.row_stride + expected.cols;
  if (expected.writable && batch > 1)
    require(operand.batch_stride >= matrix_span, MFA_STATUS_BAD_STRIDE, name, ".strides[0] is ",
            operand.batch_stride, ": the output's batches overlap (each spans ", matrix_span, " elements)");
  const bool empty = expected.rows == 0 || expected.cols == 0 || batch == 0;
  operand.data = data_of(t, name, expected.dtype, empty);
  operand.bytes_spanned = empty ? 0 : ((batch - 1) * operand.batch_stride + matrix_span) * element_bytes(expected.dtype);
  // Strides of a dimension of extent 1 address nothing; canonical values keep them from defeating the
  // alignment tests of the fast paths (8 elements keeps every row start on 16 bytes).
  if (expected.rows <= 1) operand.row_stride = (expected.cols + 7) / 8 * 8;
  if (batch <= 1) operand.batch_stride = 0;
  return operand;
}

const char *check_vector(const mfa_tensor *tensor, const char *name, int32_t dtype, int64_t length,
                         int32_t device_id) {
  check_common(tensor, name, dtype, device_id);
  const mfa_tensor &t = *tensor;
  require(t.ndim == 1 && t.shape[0] == length, MFA_STATUS_SHAPE_MISMATCH, name, ".shape is ", shape_text(t),
          ", expected [", length, "]");
  require(length <= 1 || stride_of(t, 0) == 1, MFA_STATUS_BAD_STRIDE, name, ".strides[0] is ", stride_of(t, 0),
          ", expected 1");
  return data_of(t, name, dtype, length == 0);
}

}  // namespace mfa
