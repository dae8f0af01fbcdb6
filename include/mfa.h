/*
 * mfa.h: the stable C ABI of MFA, GPU kernels of modern AI (GEMM first; attention, convolution and
 * normalization to follow).
 *
 * Rules this header keeps (see docs in README.md):
 *   - every symbol, type and macro starts with mfa_ / MFA_;
 *   - every function returns an mfa_status; on failure mfa_last_error_message() names the argument
 *     and the value that failed (thread-local), and nothing the caller owns is freed or overwritten;
 *   - handles are opaque, created and destroyed in pairs; destroy(NULL) is a no-op;
 *   - descriptor structs start with mfa_struct_header {type, size, next} and have an *_INIT macro,
 *     so fields can be appended without breaking callers built against an older header;
 *   - fixed-width types only, no enums in structs, no bool, no backend (CUDA, Metal) types:
 *     streams cross as void*;
 *   - two phases: a pipeline is created once (validation, code generation, compilation), then
 *     encoded many times (cheap, allocation-free, safe inside stream capture).
 *
 * Thread safety: a context may be used from many threads at once; a pipeline is immutable once
 * created and may be encoded from many threads; a command list belongs to one thread while it records.
 *
 * The header parses with cffi's cdef after the C preprocessor (it includes only stdint.h/stddef.h).
 */
#ifndef MFA_H
#define MFA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MFA_BUILDING_LIBRARY) && defined(__GNUC__)
#define MFA_API __attribute__((visibility("default")))
#else
#define MFA_API
#endif

/* ---------------------------------------------------------------------------------------------
 * Versions. The ABI is the major version (it names the SONAME, libmfa.so.MAJOR); a minor version
 * only appends functions, fields and status codes.
 * ------------------------------------------------------------------------------------------- */
#define MFA_VERSION_MAJOR 0
#define MFA_VERSION_MINOR 3
#define MFA_VERSION_PATCH 0
#define MFA_VERSION_NUMBER (MFA_VERSION_MAJOR * 10000 + MFA_VERSION_MINOR * 100 + MFA_VERSION_PATCH)

/* The library's MFA_VERSION_NUMBER (it may differ from the header a caller compiled against). */
MFA_API uint32_t mfa_version(void);
/* "MAJOR.MINOR.PATCH"; a static string. */
MFA_API const char *mfa_version_string(void);

/* ---------------------------------------------------------------------------------------------
 * Status codes. Only ever appended, never renumbered.
 * ------------------------------------------------------------------------------------------- */
typedef int32_t mfa_status;
#define MFA_STATUS_SUCCESS 0
#define MFA_STATUS_INVALID_ARGUMENT 1   /* a null pointer, a bad size, a bad enum value */
#define MFA_STATUS_SHAPE_MISMATCH 2     /* a tensor's shape or dtype disagrees with the descriptor */
#define MFA_STATUS_UNSUPPORTED 3        /* a valid request this build or device cannot run */
#define MFA_STATUS_BAD_STRIDE 4         /* negative, overlapping or non-unit innermost strides */
#define MFA_STATUS_MISALIGNED 5         /* a pointer not aligned to its element size */
#define MFA_STATUS_VERSION_MISMATCH 6   /* caller built against a newer minor or another major */
#define MFA_STATUS_DRIVER_NOT_FOUND 7   /* libcuda could not be loaded: no NVIDIA driver */
#define MFA_STATUS_NVRTC_NOT_FOUND 8    /* libnvrtc could not be loaded */
#define MFA_STATUS_NO_DEVICE 9          /* the device ordinal does not exist */
#define MFA_STATUS_COMPILE_FAILED 10    /* NVRTC rejected a generated kernel (message has its log) */
#define MFA_STATUS_DEVICE_ERROR 11      /* a CUDA driver call failed (message names it) */
#define MFA_STATUS_OUT_OF_MEMORY 12
#define MFA_STATUS_INVALID_STATE 13     /* e.g. ending a command list that is not recording */
#define MFA_STATUS_INTERNAL 14

/* A static name for a status, e.g. "MFA_STATUS_SHAPE_MISMATCH". */
MFA_API const char *mfa_status_string(mfa_status status);
/* The message of the last failing call on this thread; "" when none. Valid until the next failing
 * call on the same thread. */
MFA_API const char *mfa_last_error_message(void);

/* ---------------------------------------------------------------------------------------------
 * Extensible structs.
 * ------------------------------------------------------------------------------------------- */
typedef struct mfa_struct_header {
  uint32_t type; /* MFA_STRUCT_* */
  uint32_t size; /* sizeof the whole struct as the caller compiled it */
  const void *next; /* reserved for chained extensions; must be NULL */
} mfa_struct_header;

#define MFA_STRUCT_CONTEXT_OPTIONS 1
#define MFA_STRUCT_DEVICE_INFO 2
#define MFA_STRUCT_GEMM_DESCRIPTOR 3
#define MFA_STRUCT_PIPELINE_INFO 4
#define MFA_STRUCT_KERNEL_REPORT 5

#define MFA_HEADER_INIT(TYPE, STRUCT) {(TYPE), (uint32_t)sizeof(STRUCT), NULL}

/* ---------------------------------------------------------------------------------------------
 * Tensors: laid out exactly as DLPack's DLTensor, so a DLTensor* may be passed as an mfa_tensor*.
 * ------------------------------------------------------------------------------------------- */
#define MFA_DEVICE_CPU 1          /* kDLCPU */
#define MFA_DEVICE_CUDA 2         /* kDLCUDA */
#define MFA_DEVICE_CUDA_HOST 3    /* kDLCUDAHost */
#define MFA_DEVICE_CUDA_MANAGED 13 /* kDLCUDAManaged */

#define MFA_DTYPE_CODE_INT 0
#define MFA_DTYPE_CODE_UINT 1
#define MFA_DTYPE_CODE_FLOAT 2
#define MFA_DTYPE_CODE_BFLOAT 4

typedef struct mfa_device {
  int32_t device_type; /* MFA_DEVICE_* (DLDeviceType) */
  int32_t device_id;
} mfa_device;

typedef struct mfa_dtype {
  uint8_t code;  /* MFA_DTYPE_CODE_* (DLDataTypeCode) */
  uint8_t bits;
  uint16_t lanes; /* 1 */
} mfa_dtype;

typedef struct mfa_tensor {
  void *data;
  mfa_device device;
  int32_t ndim;
  mfa_dtype dtype;
  int64_t *shape;
  int64_t *strides; /* in elements; NULL means compact row-major */
  uint64_t byte_offset;
} mfa_tensor;

/* Element types as descriptors name them. */
#define MFA_DTYPE_NONE 0
#define MFA_DTYPE_F16 1
#define MFA_DTYPE_BF16 2
#define MFA_DTYPE_F32 3

/* ---------------------------------------------------------------------------------------------
 * Context: one GPU, shared with the process's other CUDA users (it retains the device's primary
 * context, as the CUDA runtime and PyTorch do, so their pointers and streams work here).
 * ------------------------------------------------------------------------------------------- */
typedef struct mfa_context mfa_context;

typedef struct mfa_context_options {
  mfa_struct_header header;
  uint32_t abi_version;   /* MFA_VERSION_NUMBER of the caller's header; checked at create */
  int32_t device_ordinal; /* 0-based */
} mfa_context_options;
#define MFA_CONTEXT_OPTIONS_INIT \
  {MFA_HEADER_INIT(MFA_STRUCT_CONTEXT_OPTIONS, mfa_context_options), MFA_VERSION_NUMBER, 0}

typedef struct mfa_device_info {
  mfa_struct_header header;
  char name[256];
  char arch[16];            /* the NVRTC target the library compiles for, e.g. "sm_90a" */
  int32_t sm_count;
  int32_t compute_capability_major;
  int32_t compute_capability_minor;
  int32_t driver_version;   /* e.g. 13000 */
  int64_t total_memory_bytes;
  int64_t shared_memory_per_block_optin;
  int64_t l2_cache_bytes;
} mfa_device_info;
#define MFA_DEVICE_INFO_INIT {MFA_HEADER_INIT(MFA_STRUCT_DEVICE_INFO, mfa_device_info), {0}, {0}, 0, 0, 0, 0, 0, 0, 0}

/* Loads the driver, retains the device's primary context. Options may be NULL (device 0). */
MFA_API mfa_status mfa_context_create(const mfa_context_options *options, mfa_context **out_context);
MFA_API mfa_status mfa_context_destroy(mfa_context *context);
MFA_API mfa_status mfa_context_get_info(const mfa_context *context, mfa_device_info *out_info);
/* Waits for all work on the device. */
MFA_API mfa_status mfa_context_synchronize(mfa_context *context);

/* ---------------------------------------------------------------------------------------------
 * Buffers: device memory for programs without an allocator of their own.
 * ------------------------------------------------------------------------------------------- */
MFA_API mfa_status mfa_buffer_alloc(mfa_context *context, uint64_t bytes, void **out_device_pointer);
MFA_API mfa_status mfa_buffer_free(mfa_context *context, void *device_pointer);
/* Synchronous copies; a NULL stream means the legacy default stream. */
MFA_API mfa_status mfa_copy_to_device(mfa_context *context, void *device_dst, const void *host_src, uint64_t bytes);
MFA_API mfa_status mfa_copy_to_host(mfa_context *context, void *host_dst, const void *device_src, uint64_t bytes);
MFA_API mfa_status mfa_buffer_fill_u8(mfa_context *context, void *device_dst, uint8_t value, uint64_t bytes);

/* ---------------------------------------------------------------------------------------------
 * GEMM: C = act(alpha * op(A) * op(B) + beta * C + bias), batched.
 *   op(A) is M x K: A is stored [batch,] M x K (trans_a = 0) or [batch,] K x M (trans_a = 1).
 *   op(B) is K x N: B is stored [batch,] K x N (trans_b = 0) or [batch,] N x K (trans_b = 1).
 *   C is [batch,] M x N; bias is [N] (added to every row). Tensors have rank 2 or 3, unit stride
 *   on the last dimension, positive row strides at least the row length; a batch stride of 0
 *   broadcasts A or B over the batch.
 *   K = 0 gives act(beta * C + bias); M or N = 0 does nothing.
 * ------------------------------------------------------------------------------------------- */
#define MFA_ACTIVATION_NONE 0
#define MFA_ACTIVATION_RELU 1
#define MFA_ACTIVATION_GELU_TANH 2
#define MFA_ACTIVATION_GELU_ERF 3
#define MFA_ACTIVATION_SILU 4

#define MFA_PRECISION_DEFAULT 0  /* fp16/bf16: tensor cores; fp32: ACCURATE */
#define MFA_PRECISION_IEEE 1     /* fp32 only: plain fp32 FMA */
#define MFA_PRECISION_ACCURATE 2 /* fp32 only: 3xTF32 split products on tensor cores */

#define MFA_GEMM_PATH_AUTO 0     /* the fastest path the device and the operands allow */
#define MFA_GEMM_PATH_PORTABLE 1 /* sm_80+: cp.async + mma.sync (or FFMA for IEEE fp32) */
#define MFA_GEMM_PATH_HOPPER 2   /* sm_90a: TMA + wgmma; UNSUPPORTED elsewhere */

#define MFA_SCHEDULE_AUTO 0
#define MFA_SCHEDULE_DATA_PARALLEL 1
#define MFA_SCHEDULE_STREAM_K 2 /* Hopper path: Stream-K even where AUTO would run data-parallel */

typedef struct mfa_gemm_descriptor {
  mfa_struct_header header;
  int64_t m, n, k;
  int64_t batch;         /* >= 1 */
  int32_t a_dtype;       /* MFA_DTYPE_*; a_dtype == b_dtype */
  int32_t b_dtype;
  int32_t c_dtype;       /* output (and beta input) type: F16, BF16 or F32 */
  int32_t bias_dtype;    /* MFA_DTYPE_NONE for no bias, else c_dtype or F32 */
  int32_t trans_a;       /* 0 or 1 */
  int32_t trans_b;
  float alpha;
  float beta;
  int32_t activation;    /* MFA_ACTIVATION_* */
  int32_t precision;     /* MFA_PRECISION_* */
  int32_t path;          /* MFA_GEMM_PATH_* */
  int32_t schedule;      /* MFA_SCHEDULE_* */
} mfa_gemm_descriptor;
#define MFA_GEMM_DESCRIPTOR_INIT                                                              \
  {MFA_HEADER_INIT(MFA_STRUCT_GEMM_DESCRIPTOR, mfa_gemm_descriptor), 0, 0, 0, 1, MFA_DTYPE_F16, \
   MFA_DTYPE_F16, MFA_DTYPE_F16, MFA_DTYPE_NONE, 0, 0, 1.0f, 0.0f, MFA_ACTIVATION_NONE,          \
   MFA_PRECISION_DEFAULT, MFA_GEMM_PATH_AUTO, MFA_SCHEDULE_AUTO}

/* Tuning of the Hopper GEMM, chained to a descriptor through header.next (a descriptor's next is NULL
 * or one mfa_gemm_tuning, whose own next is NULL). Without it the library chooses from its variant
 * table; `python -m mfa_c tune gemm` measures every tile on the device and stores the winner, which
 * mfa_c's pipelines pass here. The variant key names the tile either way ("...nn.128x64"). */
#define MFA_STRUCT_GEMM_TUNING 10

typedef struct mfa_gemm_tuning {
  mfa_struct_header header;
  int32_t tile_n;    /* 16-bit inputs on the Hopper path: the tile's width, a multiple of 16 from 64 to 256
                      * (rows: 128; 0.3.0 took 64, 128, 192 and 256 only), or 16, 32 or 48 where the
                      * kernel reads B K-major (NT, TT, or a problem of at most 64 rows and more columns,
                      * which runs as C^T; else MFA_STATUS_INVALID_ARGUMENT); 0: the library's choice,
                      * which is such a narrow tile for fewer than 64 columns with a K-major B.
                      * Other inputs and paths accept 0 only. */
  int32_t cluster_m; /* 16-bit inputs on the Hopper path: blocks of a thread-block cluster, stacked along
                      * M, that share each B tile by TMA multicast: 1, or 2 with tile_n 128 or 256;
                      * 0: the library's choice (for the given tile_n, if any). Since 0.3.0; it was a
                      * reserved 0 before, so 0.2 callers keep their meaning. */
} mfa_gemm_tuning;
#define MFA_GEMM_TUNING_INIT {MFA_HEADER_INIT(MFA_STRUCT_GEMM_TUNING, mfa_gemm_tuning), 0, 0}

typedef struct mfa_gemm_pipeline mfa_gemm_pipeline;

typedef struct mfa_pipeline_info {
  mfa_struct_header header;
  char variant[160];        /* the variant key, readable: "gemm.sm90.f16mma.f16-f16.nt.128x256" */
  int32_t path;             /* MFA_GEMM_PATH_* that encode uses for aligned operands */
  int32_t schedule;         /* MFA_SCHEDULE_* chosen */
  int32_t cache;            /* MFA_CACHE_*: where the compiled code came from */
  int32_t reserved;
  uint64_t workspace_bytes; /* what encode needs; 0 means pass NULL */
  double compile_ms;        /* time spent generating and compiling (0 on a memory-cache hit) */
} mfa_pipeline_info;
#define MFA_PIPELINE_INFO_INIT {MFA_HEADER_INIT(MFA_STRUCT_PIPELINE_INFO, mfa_pipeline_info), {0}, 0, 0, 0, 0, 0, 0.0}

#define MFA_CACHE_COMPILED 0 /* compiled by NVRTC in this call */
#define MFA_CACHE_MEMORY 1   /* found in this process's cache */
#define MFA_CACHE_DISK 2     /* loaded from the disk cache */

/* Validates the descriptor, generates and compiles the variant (or finds it in a cache). */
MFA_API mfa_status mfa_gemm_pipeline_create(mfa_context *context, const mfa_gemm_descriptor *descriptor,
                                            mfa_gemm_pipeline **out_pipeline);
MFA_API mfa_status mfa_gemm_pipeline_destroy(mfa_gemm_pipeline *pipeline);
MFA_API mfa_status mfa_gemm_pipeline_get_info(const mfa_gemm_pipeline *pipeline, mfa_pipeline_info *out_info);

/* Enqueues the GEMM on a CUDA stream (CUstream / cudaStream_t as void*; NULL: the legacy default
 * stream). Tensors must be device-accessible; bias may be NULL only if the descriptor has none;
 * workspace may be NULL when the pipeline needs none, else it is device memory of at least
 * info.workspace_bytes, 256-byte aligned, with any contents (nothing needs clearing), that no other
 * encode uses at the same time. Safe inside stream capture. */
MFA_API mfa_status mfa_gemm_encode(const mfa_gemm_pipeline *pipeline, void *stream, const mfa_tensor *a,
                                   const mfa_tensor *b, const mfa_tensor *c, const mfa_tensor *bias,
                                   void *workspace, uint64_t workspace_bytes);

/* Checks tensors against a descriptor exactly as encode does, without a device or a pipeline (the
 * tensors' device ids are not compared with any context). */
MFA_API mfa_status mfa_gemm_validate(const mfa_gemm_descriptor *descriptor, const mfa_tensor *a, const mfa_tensor *b,
                                     const mfa_tensor *c, const mfa_tensor *bias);

/* How the Hopper kernel's persistent units share out the work of a descriptor (m, n, k, batch and
 * schedule are read) on a device of `sm_count` SMs with tiles of 128 x tile_n (as mfa_gemm_tuning's tile_n;
 * 0: the descriptor's chained mfa_gemm_tuning, else the library's own choice for that device): the
 * MFA_SCHEDULE_* chosen, the workspace it needs, and every unit's work items, unit by unit in the order
 * each unit runs them. A unit is a block, or, where the tuning (or the library) chooses cluster_m 2, a
 * cluster of two blocks (sm_count / 2 of them) whose tiles are 256 x tile_n, each block computing one
 * 128-row half. A 16-bit problem of at most 64 rows and more columns, and with tile_n 0 an NN one with a
 * 16-bit C whose tiles fill the SMs better so, runs as C^T = op(B)^T op(A)^T: its tiles, and tile_n, are
 * those of that problem (n rows, m columns). Needs no GPU: the CPU tests use it to check that every k step
 * of every tile is computed once. A k step is 64 elements. */
typedef struct mfa_gemm_work_item {
  int32_t block;             /* the persistent unit: 0 .. units - 1 */
  int32_t tile;              /* the output (unit) tile, in the kernel's numbering (batch-major) */
  int32_t k_begin;           /* k steps [k_begin, k_end) of the tile */
  int32_t k_end;
  int32_t partial;           /* 1: stores its partial sums in workspace slot `block`, for the tile's finisher */
  int32_t first_contributor; /* k_end is the tile's last step and k_begin > 0: adds the partial sums of
                              * units [first_contributor, block); otherwise -1 */
} mfa_gemm_work_item;
MFA_API mfa_status mfa_gemm_schedule_describe(const mfa_gemm_descriptor *descriptor, int32_t sm_count,
                                              int32_t tile_n, int32_t *out_schedule,
                                              uint64_t *out_workspace_bytes, mfa_gemm_work_item *out_items,
                                              int64_t capacity, int64_t *out_count);

/* ---------------------------------------------------------------------------------------------
 * Command lists: record encodes once (as a CUDA graph), replay them with one launch.
 *   begin hands out a recording stream; pass it to *_encode calls; end seals the list.
 * ------------------------------------------------------------------------------------------- */
typedef struct mfa_command_list mfa_command_list;

MFA_API mfa_status mfa_command_list_create(mfa_context *context, mfa_command_list **out_list);
MFA_API mfa_status mfa_command_list_destroy(mfa_command_list *list);
MFA_API mfa_status mfa_command_list_begin(mfa_command_list *list, void **out_recording_stream);
MFA_API mfa_status mfa_command_list_end(mfa_command_list *list);
MFA_API mfa_status mfa_command_list_launch(mfa_command_list *list, void *stream);
/* Number of kernel launches recorded (0 before end). */
MFA_API mfa_status mfa_command_list_get_count(const mfa_command_list *list, int64_t *out_count);

/* ---------------------------------------------------------------------------------------------
 * Compilation without a GPU: compile a variant for an architecture (e.g. "sm_90a") and report its
 * resources, the integrity check `python -m mfa_c check` and the CPU tests run.
 * ------------------------------------------------------------------------------------------- */
typedef struct mfa_kernel_report {
  mfa_struct_header header;
  char kernel[96];          /* entry point name */
  char variant[160];
  int32_t registers;
  int32_t spill_store_bytes;
  int32_t spill_load_bytes;
  int32_t stack_frame_bytes;
  int64_t static_shared_bytes;
  int64_t dynamic_shared_bytes; /* what the launch asks for */
  double compile_ms;
  int32_t cache;               /* MFA_CACHE_* */
  int32_t reserved;
} mfa_kernel_report;
#define MFA_KERNEL_REPORT_INIT \
  {MFA_HEADER_INIT(MFA_STRUCT_KERNEL_REPORT, mfa_kernel_report), {0}, {0}, 0, 0, 0, 0, 0, 0, 0.0, 0, 0}

/* Number of GEMM variants the library can generate (every path, input, output and transpose, then each
 * activation for every path, input and output); variant i is described by mfa_gemm_variant_descriptor
 * (sizes 0). */
MFA_API mfa_status mfa_gemm_variant_count(int64_t *out_count);
MFA_API mfa_status mfa_gemm_variant_descriptor(int64_t index, mfa_gemm_descriptor *out_descriptor);

/* Compiles the kernels a descriptor selects for `arch` ("sm_80", "sm_90a", ...) without a device,
 * filling up to `capacity` reports (one per kernel entry point). */
MFA_API mfa_status mfa_gemm_compile_report(const mfa_gemm_descriptor *descriptor, const char *arch,
                                           mfa_kernel_report *out_reports, int32_t capacity,
                                           int32_t *out_count);

/* The version of the NVRTC that compiles kernels (e.g. 13000); loads NVRTC if needed. */
MFA_API mfa_status mfa_nvrtc_version(int32_t *out_version);

/* Caches of compiled kernels: in memory (per process) and on disk (MFA_CACHE_DIR, else
 * $XDG_CACHE_HOME/mfa, else ~/.cache/mfa; MFA_CACHE_DIR=off disables it). */
#define MFA_CACHE_SCOPE_MEMORY 1
#define MFA_CACHE_SCOPE_DISK 2
/* Empties the caches named by the scope bits; pipelines already created keep their kernels. */
MFA_API mfa_status mfa_cache_clear(int32_t scope_bits);
/* The disk cache's directory, or "" when disabled. */
MFA_API const char *mfa_cache_directory(void);

/* ---------------------------------------------------------------------------------------------
 * GROUP NORM: y = act((x' - mean_g) * rstd_g * weight[c] + bias[c]), x' = x (+ residual), over groups
 * of C / groups channels of each sample, for x of shape [N, C, spatial...] (spatial: any number of
 * dimensions, product `spatial`, 1 for [N, C]) in one of two dense layouts:
 *   NCHW: compact row-major; NHWC: channels-last (stride 1 on C, C on the last spatial dimension, ...,
 *   spatial * C on N). Strides of dimensions of extent 1 are not checked.
 * Statistics are fp32 (Chan/Welford merges, biased variance), rstd = 1 / sqrt(var + eps), taken of
 * x' - p with p the group's first element of x' (a pivot: y = ((x' - p) - mean_p) * rstd ..., so a mean
 * large against the spread cancels exactly instead of costing its fp32 rounding);
 * mean (= p + mean_p, rounded to fp32) and rstd are [N, groups] fp32, compact. The backward reads that
 * rounded mean: for a mean large against the spread its accuracy is that of an fp32 mean (as any
 * backward given fp32 statistics).
 * Backward (pass BACKWARD): from dy, x' (the x_sum of a residual forward), weight, bias, mean, rstd
 * computes dx, dweight, dbias (dweight/dbias may be NULL to skip them). A fused activation is recomputed
 * from x', mean, rstd, weight, bias. Deterministic: the same bits run after run.
 * ------------------------------------------------------------------------------------------- */
#define MFA_STRUCT_GROUP_NORM_DESCRIPTOR 6
#define MFA_STRUCT_GROUP_NORM_TENSORS 7

#define MFA_LAYOUT_NCHW 0 /* compact [N, C, spatial...] */
#define MFA_LAYOUT_NHWC 1 /* channels-last */

#define MFA_PASS_FORWARD 0
#define MFA_PASS_BACKWARD 1

typedef struct mfa_group_norm_descriptor {
  mfa_struct_header header;
  int64_t n, c, spatial; /* n >= 1 (at most 65535), c >= 1, spatial >= 1 */
  int64_t groups;        /* divides c */
  int32_t dtype;         /* F16, BF16 or F32: x, residual, y, x_sum, dy, dx */
  int32_t weight_dtype;  /* NONE (no affine: weight 1, bias 0), dtype or F32: weight, bias, dweight, dbias */
  int32_t layout;        /* MFA_LAYOUT_* */
  int32_t activation;    /* MFA_ACTIVATION_NONE, SILU, GELU_ERF or GELU_TANH (not RELU) */
  int32_t has_residual;  /* forward only: 0 or 1 */
  int32_t pass;          /* MFA_PASS_* */
  float eps;             /* > 0 and finite */
  int32_t reserved;      /* 0 */
} mfa_group_norm_descriptor;
#define MFA_GROUP_NORM_DESCRIPTOR_INIT                                                                \
  {MFA_HEADER_INIT(MFA_STRUCT_GROUP_NORM_DESCRIPTOR, mfa_group_norm_descriptor), 0, 0, 1, 1,            \
   MFA_DTYPE_F16, MFA_DTYPE_F16, MFA_LAYOUT_NCHW, MFA_ACTIVATION_NONE, 0, MFA_PASS_FORWARD, 1.0e-5f, 0}

/* The tensors of one encode; those a pass does not use must be NULL.
 *   forward:  x, residual (iff has_residual), weight, bias (iff weight_dtype != NONE) -> y, and the
 *             optional outputs x_sum (x + residual, only with a residual), mean, rstd.
 *   backward: dy, x, weight, bias, mean, rstd -> dx, and the optional dweight, dbias (given together). */
typedef struct mfa_group_norm_tensors {
  mfa_struct_header header;
  const mfa_tensor *x, *residual, *weight, *bias;
  const mfa_tensor *y, *x_sum, *mean, *rstd;
  const mfa_tensor *dy, *dx, *dweight, *dbias;
} mfa_group_norm_tensors;
#define MFA_GROUP_NORM_TENSORS_INIT                                                                     \
  {MFA_HEADER_INIT(MFA_STRUCT_GROUP_NORM_TENSORS, mfa_group_norm_tensors), NULL, NULL, NULL, NULL, NULL, \
   NULL, NULL, NULL, NULL, NULL, NULL, NULL}

typedef struct mfa_group_norm_pipeline mfa_group_norm_pipeline;

/* Validates the descriptor, generates and compiles its variant (or finds it in a cache). The info's
 * workspace_bytes is what encode needs (always > 0: per-block partial statistics). */
MFA_API mfa_status mfa_group_norm_pipeline_create(mfa_context *context, const mfa_group_norm_descriptor *descriptor,
                                                  mfa_group_norm_pipeline **out_pipeline);
MFA_API mfa_status mfa_group_norm_pipeline_destroy(mfa_group_norm_pipeline *pipeline);
MFA_API mfa_status mfa_group_norm_pipeline_get_info(const mfa_group_norm_pipeline *pipeline,
                                                    mfa_pipeline_info *out_info);
/* Enqueues the pass on a stream (NULL: the legacy default stream); safe inside stream capture. The
 * workspace (device memory of at least info.workspace_bytes) must not be used by another encode
 * running at the same time. */
MFA_API mfa_status mfa_group_norm_encode(const mfa_group_norm_pipeline *pipeline, void *stream,
                                         const mfa_group_norm_tensors *tensors, void *workspace,
                                         uint64_t workspace_bytes);
/* Checks tensors against a descriptor exactly as encode does, without a device or a pipeline. */
MFA_API mfa_status mfa_group_norm_validate(const mfa_group_norm_descriptor *descriptor,
                                           const mfa_group_norm_tensors *tensors);
/* Every variant the library generates (sizes 1), for `check` and the CPU tests. */
MFA_API mfa_status mfa_group_norm_variant_count(int64_t *out_count);
MFA_API mfa_status mfa_group_norm_variant_descriptor(int64_t index, mfa_group_norm_descriptor *out_descriptor);
/* The launch plan of the descriptor's pass on a device of `sm_count` SMs (sm_90+), for tests and
 * tuning: the one-pass kernel runs a cluster of *out_cluster blocks of *out_threads threads per
 * item ((n, group), or n and a band of groups: mfa_group_norm_plan_band), copying units of *out_vector_elements elements (up to 16 bytes: as wide as the shape
 * allows, and 1 with `vectorized` = 0: tensors aligned to their element size only); *out_cluster 0 is
 * the three-launch path (a group too large for a cluster's shared memory). Clusters of more than 8
 * blocks (groups that 8 cannot hold) are checked against the device when a pipeline is made, which
 * takes the three-launch path where the device runs none.
 * forced_cluster: -1 chooses, 0 asks for the three-launch path, 1..16 a cluster size (as the environment
 * variable MFA_GN_CLUSTER = auto, split, 1..16 does for pipelines). */
MFA_API mfa_status mfa_group_norm_plan_describe(const mfa_group_norm_descriptor *descriptor, int32_t sm_count,
                                                int32_t vectorized, int32_t forced_cluster, int32_t *out_cluster,
                                                int32_t *out_threads, int32_t *out_vector_elements);
/* The groups side by side in one cluster's item of that plan (*out_band: 1, or 2, 4, 8 in NHWC passes
 * over tensors beyond L2 whose groups' rows of channels are narrower than 64 bytes: adjacent groups
 * share a cluster, which reads wider rows); mfa_group_norm_plan_describe's cluster and threads
 * are those of such an item. forced_cluster as there; forced_band: -1 chooses, 1, 2, 4 or 8 asks for
 * that band where the shape allows one (as the environment variable MFA_GN_BAND does for pipelines). */
MFA_API mfa_status mfa_group_norm_plan_band(const mfa_group_norm_descriptor *descriptor, int32_t sm_count,
                                            int32_t forced_cluster, int32_t forced_band, int32_t *out_band);
/* As mfa_gemm_compile_report: compiles the descriptor's kernels for `arch` without a device. */
MFA_API mfa_status mfa_group_norm_compile_report(const mfa_group_norm_descriptor *descriptor, const char *arch,
                                                 mfa_kernel_report *out_reports, int32_t capacity,
                                                 int32_t *out_count);

/* ---------------------------------------------------------------------------------------------
 * ATTENTION (forward): O = softmax(scale * Q K^T [soft-capped] + mask) V, one pass over K and V with
 * an online softmax, optionally returning the natural-log LSE of every query row.
 *   Dense:  q [batch, seq_q, heads_q, head_dim_qk], k [batch, seq_k, heads_kv, head_dim_qk],
 *           v [batch, seq_k, heads_kv, head_dim_v], o [batch, seq_q, heads_q, head_dim_v]: logical
 *           dimensions in this order with any strides (so [batch, heads, seq, dim] storage is a
 *           permutation of strides), unit stride on the head dimension.
 *   Varlen: q [total_q, heads_q, head_dim_qk], k/v [total_k, heads_kv, ...], o like q; int32
 *           cu_seqlens_q / cu_seqlens_k [batch + 1] (device memory, non-decreasing from 0) place
 *           sequence b at tokens [cu[b], cu[b + 1]); seq_q / seq_k are the callers' maxima (no
 *           device-to-host copy sizes the grid). A sequence may have length 0.
 *   GQA/MQA: heads_kv divides heads_q; query head h reads key/value head h / (heads_q / heads_kv).
 *   Masks (bottom-right aligned when the lengths differ): key j is visible to query i when
 *     i + seq_k - seq_q - window_left <= j <= i + seq_k - seq_q + window_right (-1: unbounded side);
 *     causal means window_right = 0. A row with no visible key gets output 0 and LSE -inf.
 *   Soft-capping (softcap > 0): s = softcap * tanh(scale * q.k / softcap), before the mask.
 *   lse: fp32 [batch, heads_q, seq_q] (varlen: [heads_q, total_q]), any strides, unit on the last.
 *   Decode: with few query rows the key/value length is split over blocks (split-KV) and merged.
 * ------------------------------------------------------------------------------------------- */
#define MFA_STRUCT_ATTENTION_DESCRIPTOR 8
#define MFA_STRUCT_ATTENTION_TENSORS 9

#define MFA_ATTENTION_PATH_AUTO 0
#define MFA_ATTENTION_PATH_PORTABLE 1 /* sm_80+: cp.async + mma.sync */
#define MFA_ATTENTION_PATH_HOPPER 2   /* sm_90a: TMA + wgmma; UNSUPPORTED elsewhere or for its limits */

typedef struct mfa_attention_descriptor {
  mfa_struct_header header;
  int64_t batch;                   /* >= 1 */
  int64_t seq_q, seq_k;            /* dense: the lengths; varlen: the maxima (>= 0) */
  int64_t heads_q, heads_kv;       /* heads_kv divides heads_q */
  int64_t head_dim_qk, head_dim_v; /* multiples of 8 in [8, 256] */
  int32_t dtype;                   /* MFA_DTYPE_F16 or BF16: q, k, v, o */
  int32_t varlen;                  /* 1: packed sequences with cu_seqlens */
  int32_t window_left;             /* -1 unbounded, else >= 0 */
  int32_t window_right;            /* -1 unbounded, else >= 0; causal: 0 */
  float scale;                     /* 0: 1 / sqrt(head_dim_qk) */
  float softcap;                   /* 0: off, else > 0 */
  int32_t return_lse;              /* 1: encode writes lse */
  int32_t path;                    /* MFA_ATTENTION_PATH_* */
  int32_t splits;                  /* split-KV: 0 the library's choice, 1 never, > 1 that many */
  int32_t reserved;                /* 0 */
} mfa_attention_descriptor;
#define MFA_ATTENTION_DESCRIPTOR_INIT                                                                 \
  {MFA_HEADER_INIT(MFA_STRUCT_ATTENTION_DESCRIPTOR, mfa_attention_descriptor), 1, 0, 0, 1, 1, 64, 64, \
   MFA_DTYPE_F16, 0, -1, -1, 0.0f, 0.0f, 0, MFA_ATTENTION_PATH_AUTO, 0, 0}

/* The tensors of one encode; lse only with return_lse, cu_seqlens_* only with varlen, else NULL. */
typedef struct mfa_attention_tensors {
  mfa_struct_header header;
  const mfa_tensor *q, *k, *v, *o, *lse;
  const mfa_tensor *cu_seqlens_q, *cu_seqlens_k;
} mfa_attention_tensors;
#define MFA_ATTENTION_TENSORS_INIT \
  {MFA_HEADER_INIT(MFA_STRUCT_ATTENTION_TENSORS, mfa_attention_tensors), NULL, NULL, NULL, NULL, NULL, NULL, NULL}

typedef struct mfa_attention_pipeline mfa_attention_pipeline;

/* Validates the descriptor, generates and compiles its kernels (or finds them in a cache); the info's
 * workspace_bytes is what encode needs (split-KV partials, or the Hopper path's tile counter; 0: pass
 * NULL). Encodes sharing a workspace must not run concurrently. */
MFA_API mfa_status mfa_attention_pipeline_create(mfa_context *context, const mfa_attention_descriptor *descriptor,
                                                 mfa_attention_pipeline **out_pipeline);
MFA_API mfa_status mfa_attention_pipeline_destroy(mfa_attention_pipeline *pipeline);
MFA_API mfa_status mfa_attention_pipeline_get_info(const mfa_attention_pipeline *pipeline,
                                                   mfa_pipeline_info *out_info);
/* Enqueues the forward pass on a stream (NULL: the legacy default stream); safe inside stream capture. */
MFA_API mfa_status mfa_attention_encode(const mfa_attention_pipeline *pipeline, void *stream,
                                        const mfa_attention_tensors *tensors, void *workspace,
                                        uint64_t workspace_bytes);
/* Checks tensors against a descriptor exactly as encode does, without a device or a pipeline. */
MFA_API mfa_status mfa_attention_validate(const mfa_attention_descriptor *descriptor,
                                          const mfa_attention_tensors *tensors);
/* Every variant the library generates, for `check` and the CPU tests. */
MFA_API mfa_status mfa_attention_variant_count(int64_t *out_count);
MFA_API mfa_status mfa_attention_variant_descriptor(int64_t index, mfa_attention_descriptor *out_descriptor);
/* As mfa_gemm_compile_report: compiles the descriptor's kernels for `arch` without a device. */
MFA_API mfa_status mfa_attention_compile_report(const mfa_attention_descriptor *descriptor, const char *arch,
                                                mfa_kernel_report *out_reports, int32_t capacity,
                                                int32_t *out_count);

#ifdef __cplusplus
}
#endif
#endif /* MFA_H */
