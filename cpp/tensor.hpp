// tensor.hpp: checking DLPack-style tensors against what an operation expects, with messages that name
// the argument, the field and the value.
#pragma once

#include <cstdint>
#include <string>

#include "mfa.h"

namespace mfa {

// A validated [batch,] rows x cols operand with unit stride on its last dimension.
struct MatrixOperand {
  char *data = nullptr;       // data + byte_offset
  int64_t row_stride = 0;     // elements
  int64_t batch_stride = 0;   // elements; 0 when a rank-2 tensor is broadcast over the batch
  int64_t bytes_spanned = 0;  // from data to one past the last element, for overlap checks
};

struct MatrixExpectation {
  const char *name;           // "a", "b", "c"
  int32_t dtype;              // MFA_DTYPE_*
  int64_t batch, rows, cols;
  bool writable;              // outputs may not overlap themselves nor broadcast over the batch
  int32_t device_id;          // the context's device, or kAnyDevice
};

constexpr int32_t kAnyDevice = -1;

MatrixOperand check_matrix(const mfa_tensor *tensor, const MatrixExpectation &expected);

// A contiguous vector of `length` elements (bias); returns its data pointer.
const char *check_vector(const mfa_tensor *tensor, const char *name, int32_t dtype, int64_t length,
                         int32_t device_id);

// A tensor of any rank from 1 to kMaxRank, after the checks every operand gets (not NULL, device
// memory of the context's device, dtype, shape array): its shape and strides in elements (compact
// row-major where strides is NULL) and data + byte_offset, aligned to its elements. The caller checks
// the shape and the strides it needs (group_norm.cpp: layouts of [N, C, spatial...] tensors).
constexpr int kMaxRank = 8;
struct DenseTensor {
  char *data = nullptr;
  int ndim = 0;
  int64_t shape[kMaxRank] = {};
  int64_t strides[kMaxRank] = {};
};
DenseTensor check_dense(const mfa_tensor *tensor, const char *name, int32_t dtype, int32_t device_id);

// "[2, 3, 4]"
std::string shape_text(const mfa_tensor &tensor);

int element_bytes(int32_t dtype);
const char *dtype_name(int32_t dtype);
bool is_float_dtype(int32_t dtype);  // f16, bf16 or f32
// "gelu_erf": how variant keys name MFA_ACTIVATION_* values
const char *activation_name(int32_t activation);

// Whether two byte ranges share memory.
bool ranges_overlap(const char *a, int64_t a_bytes, const char *b, int64_t b_bytes);

}  // namespace mfa
