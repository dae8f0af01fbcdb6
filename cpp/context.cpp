#include "context.hpp"

#include <algorithm>
#include <cstring>

#include "errors.hpp"

namespace mfa {

std::string arch_for(int major, int minor) {
  return concat("sm_", major, minor, major == 9 && minor == 0 ? "a" : "");
}

Context::Context(int ordinal) : ordinal_(ordinal), info_(MFA_DEVICE_INFO_INIT) {
  const DriverApi &api = driver();
  int count = 0;
  check_cuda(api.cuDeviceGetCount(&count), "cuDeviceGetCount");
  require(ordinal >= 0 && ordinal < count, MFA_STATUS_NO_DEVICE, "options->device_ordinal is ", ordinal,
          " but the system has ", count, " CUDA device(s)");
  check_cuda(api.cuDeviceGet(&device_, ordinal), "cuDeviceGet");
  auto attribute = [&](int which) {
    int value = 0;
    check_cuda(api.cuDeviceGetAttribute(&value, which, device_), "cuDeviceGetAttribute");
    return value;
  };
  info_.compute_capability_major = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
  info_.compute_capability_minor = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
  require(info_.compute_capability_major >= 8, MFA_STATUS_UNSUPPORTED, "device ", ordinal, " has compute capability ",
          info_.compute_capability_major, ".", info_.compute_capability_minor, "; MFA needs 8.0 (Ampere) or newer");
  info_.sm_count = attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  info_.shared_memory_per_block_optin = attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
  info_.l2_cache_bytes = attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
  check_cuda(api.cuDeviceGetName(info_.name, sizeof info_.name, device_), "cuDeviceGetName");
  size_t total = 0;
  check_cuda(api.cuDeviceTotalMem(&total, device_), "cuDeviceTotalMem");
  info_.total_memory_bytes = static_cast<int64_t>(total);
  check_cuda(api.cuDriverGetVersion(&info_.driver_version), "cuDriverGetVersion");
  arch_ = arch_for(info_.compute_capability_major, info_.compute_capability_minor);
  std::strncpy(info_.arch, arch_.c_str(), sizeof info_.arch - 1);
  check_cuda(api.cuDevicePrimaryCtxRetain(&primary_, device_), "cuDevicePrimaryCtxRetain");
}

Context::~Context() {
  const DriverApi &api = driver();
  if (api.cuCtxSetCurrent(primary_) == CUDA_SUCCESS)
    for (auto &entry : modules_) api.cuModuleUnload(entry.second);
  api.cuDevicePrimaryCtxRelease(device_);
}

void Context::make_current() const { check_cuda(driver().cuCtxSetCurrent(primary_), "cuCtxSetCurrent"); }

CUfunction Context::function(const CompiledKernel &kernel, const char *entry) {
  std::lock_guard<std::mutex> lock(modules_mutex_);
  make_current();
  CUmodule &module = modules_[kernel.key];
  if (!module) {
    const CUresult loaded = driver().cuModuleLoadData(&module, kernel.cubin.data());
    if (loaded != CUDA_SUCCESS) {
      modules_.erase(kernel.key);
      check_cuda(loaded, concat("cuModuleLoadData(", kernel.variant, ")").c_str());
    }
  }
  CUfunction function = nullptr;
  check_cuda(driver().cuModuleGetFunction(&function, module, entry), entry);
  return function;
}

}  // namespace mfa

namespace {

mfa::Context &context_of(mfa_context *context) {
  mfa::require_arg(context, "context");
  return *context->impl;
}

}  // namespace

extern "C" {

MFA_API mfa_status mfa_context_create(const mfa_context_options *options, mfa_context **out_context) {
  return mfa::abi_call([&] {
    mfa::require_arg(out_context, "out_context");
    int ordinal = 0;
    if (options) {
      mfa::require_header(options->header, MFA_STRUCT_CONTEXT_OPTIONS, sizeof(mfa_context_options), "options");
      const uint32_t caller = options->abi_version;
      mfa::require(caller / 10000 == MFA_VERSION_MAJOR && (caller / 100) % 100 <= MFA_VERSION_MINOR,
                   MFA_STATUS_VERSION_MISMATCH, "options->abi_version is ", caller,
                   ": the caller was built against MFA ", caller / 10000, ".", (caller / 100) % 100,
                   ", this library is ", mfa_version_string());
      ordinal = options->device_ordinal;
    }
    auto handle = std::make_unique<mfa_context>();
    handle->impl = std::make_shared<mfa::Context>(ordinal);
    *out_context = handle.release();
  });
}

MFA_API mfa_status mfa_context_destroy(mfa_context *context) {
  return mfa::abi_call([&] { delete context; });
}

MFA_API mfa_status mfa_context_get_info(const mfa_context *context, mfa_device_info *out_info) {
  return mfa::abi_call([&] {
    mfa::require_arg(context, "context");
    mfa::copy_out(out_info, context->impl->info(), MFA_STRUCT_DEVICE_INFO, "out_info");
  });
}

MFA_API mfa_status mfa_context_synchronize(mfa_context *context) {
  return mfa::abi_call([&] {
    context_of(context).make_current();
    mfa::check_cuda(mfa::driver().cuCtxSynchronize(), "cuCtxSynchronize");
  });
}

MFA_API mfa_status mfa_buffer_alloc(mfa_context *context, uint64_t bytes, void **out_device_pointer) {
  return mfa::abi_call([&] {
    mfa::Context &ctx = context_of(context);
    mfa::require_arg(out_device_pointer, "out_device_pointer");
    mfa::require(bytes > 0, MFA_STATUS_INVALID_ARGUMENT, "bytes is 0");
    ctx.make_current();
    mfa::CUdeviceptr pointer = 0;
    mfa::check_cuda(mfa::driver().cuMemAlloc(&pointer, bytes), "cuMemAlloc");
    *out_device_pointer = reinterpret_cast<void *>(pointer);
  });
}

MFA_API mfa_status mfa_buffer_free(mfa_context *context, void *device_pointer) {
  return mfa::abi_call([&] {
    mfa::Context &ctx = context_of(context);
    if (!device_pointer) return;
    ctx.make_current();
    mfa::check_cuda(mfa::driver().cuMemFree(reinterpret_cast<mfa::CUdeviceptr>(device_pointer)), "cuMemFree");
  });
}

MFA_API mfa_status mfa_copy_to_device(mfa_context *context, void *device_dst, const void *host_src, uint64_t bytes) {
  return mfa::abi_call([&] {
    mfa::Context &ctx = context_of(context);
    mfa::require_arg(device_dst, "device_dst");
    mfa::require_arg(host_src, "host_src");
    if (bytes == 0) return;
    ctx.make_current();
    mfa::check_cuda(mfa::driver().cuMemcpyHtoD(reinterpret_cast<mfa::CUdeviceptr>(device_dst), host_src, bytes),
                    "cuMemcpyHtoD");
  });
}

MFA_API mfa_status mfa_copy_to_host(mfa_context *context, void *host_dst, const void *device_src, uint64_t bytes) {
  return mfa::abi_call([&] {
    mfa::Context &ctx = context_of(context);
    mfa::require_arg(host_dst, "host_dst");
    mfa::require_arg(device_src, "device_src");
    if (bytes == 0) return;
    ctx.make_current();
    mfa::check_cuda(mfa::driver().cuMemcpyDtoH(host_dst, reinterpret_cast<mfa::CUdeviceptr>(device_src), bytes),
                    "cuMemcpyDtoH");
  });
}

MFA_API mfa_status mfa_buffer_fill_u8(mfa_context *context, void *device_dst, uint8_t value, uint64_t bytes) {
  return mfa::abi_call([&] {
    mfa::Context &ctx = context_of(context);
    mfa::require_arg(device_dst, "device_dst");
    if (bytes == 0) return;
    ctx.make_current();
    mfa::check_cuda(mfa::driver().cuMemsetD8(reinterpret_cast<mfa::CUdeviceptr>(device_dst), value, bytes),
                    "cuMemsetD8");
    mfa::check_cuda(mfa::driver().cuCtxSynchronize(), "cuCtxSynchronize");
  });
}

}  // extern "C"
