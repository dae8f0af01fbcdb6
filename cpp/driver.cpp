#include "driver.hpp"

#include <cstdlib>
#include <string>

#include "dynamic_library.hpp"
#include "errors.hpp"

namespace mfa {

namespace {

mfa_status status_of(CUresult result) {
  if (result == CUDA_ERROR_OUT_OF_MEMORY) return MFA_STATUS_OUT_OF_MEMORY;
  if (result == CUDA_ERROR_NO_DEVICE || result == CUDA_ERROR_INVALID_DEVICE) return MFA_STATUS_NO_DEVICE;
  return MFA_STATUS_DEVICE_ERROR;
}

std::string describe(const DriverApi &api, CUresult result, const char *call) {
  const char *name = "?";
  const char *text = "?";
  api.cuGetErrorName(result, &name);
  api.cuGetErrorString(result, &text);
  return concat(call, " failed: ", name, " (", text, ")");
}

template <class Function>
void bind(void *library, const char *symbol, Function &function) {
  mfa::bind(library, symbol, function, MFA_STATUS_DRIVER_NOT_FOUND, "the NVIDIA driver (libcuda.so.1; CUDA 12+ needed)");
}

DriverApi load_driver() {
  const char *override_path = std::getenv("MFA_CUDA_DRIVER_LIBRARY");
  const char *path = override_path ? override_path : "libcuda.so.1";
  void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  require(library != nullptr, MFA_STATUS_DRIVER_NOT_FOUND, "cannot load the NVIDIA driver library ", path, " (",
          dlerror(), "): is an NVIDIA GPU driver installed?");
  DriverApi api{};
  bind(library, "cuInit", api.cuInit);
  bind(library, "cuDriverGetVersion", api.cuDriverGetVersion);
  bind(library, "cuGetErrorName", api.cuGetErrorName);
  bind(library, "cuGetErrorString", api.cuGetErrorString);
  bind(library, "cuDeviceGetCount", api.cuDeviceGetCount);
  bind(library, "cuDeviceGet", api.cuDeviceGet);
  bind(library, "cuDeviceGetName", api.cuDeviceGetName);
  bind(library, "cuDeviceGetAttribute", api.cuDeviceGetAttribute);
  bind(library, "cuDeviceTotalMem_v2", api.cuDeviceTotalMem);
  bind(library, "cuDevicePrimaryCtxRetain", api.cuDevicePrimaryCtxRetain);
  bind(library, "cuDevicePrimaryCtxRelease_v2", api.cuDevicePrimaryCtxRelease);
  bind(library, "cuCtxSetCurrent", api.cuCtxSetCurrent);
  bind(library, "cuCtxSynchronize", api.cuCtxSynchronize);
  bind(library, "cuModuleLoadData", api.cuModuleLoadData);
  bind(library, "cuModuleUnload", api.cuModuleUnload);
  bind(library, "cuModuleGetFunction", api.cuModuleGetFunction);
  bind(library, "cuFuncSetAttribute", api.cuFuncSetAttribute);
  bind(library, "cuLaunchKernel", api.cuLaunchKernel);
  bind(library, "cuLaunchKernelEx", api.cuLaunchKernelEx);
  bind(library, "cuOccupancyMaxActiveClusters", api.cuOccupancyMaxActiveClusters);
  bind(library, "cuMemAlloc_v2", api.cuMemAlloc);
  bind(library, "cuMemFree_v2", api.cuMemFree);
  bind(library, "cuMemcpyHtoD_v2", api.cuMemcpyHtoD);
  bind(library, "cuMemcpyDtoH_v2", api.cuMemcpyDtoH);
  bind(library, "cuMemsetD8_v2", api.cuMemsetD8);
  bind(library, "cuMemsetD32Async", api.cuMemsetD32Async);
  bind(library, "cuStreamCreate", api.cuStreamCreate);
  bind(library, "cuStreamDestroy_v2", api.cuStreamDestroy);
  bind(library, "cuStreamSynchronize", api.cuStreamSynchronize);
  bind(library, "cuStreamBeginCapture_v2", api.cuStreamBeginCapture);
  bind(library, "cuStreamEndCapture", api.cuStreamEndCapture);
  bind(library, "cuGraphInstantiateWithFlags", api.cuGraphInstantiateWithFlags);
  bind(library, "cuGraphGetNodes", api.cuGraphGetNodes);
  bind(library, "cuGraphLaunch", api.cuGraphLaunch);
  bind(library, "cuGraphExecDestroy", api.cuGraphExecDestroy);
  bind(library, "cuGraphDestroy", api.cuGraphDestroy);
  bind(library, "cuTensorMapEncodeTiled", api.cuTensorMapEncodeTiled);
  const CUresult init = api.cuInit(0);
  if (init != CUDA_SUCCESS) fail(status_of(init), describe(api, init, "cuInit"), ": no usable NVIDIA GPU");
  return api;
}

}  // namespace

const DriverApi &driver() { return load_once(load_driver); }

void check_cuda(CUresult result, const char *call) {
  if (result == CUDA_SUCCESS) return;
  // The driver is loaded whenever a call could have produced a result.
  fail(status_of(result), describe(driver(), result, call));
}

}  // namespace mfa
