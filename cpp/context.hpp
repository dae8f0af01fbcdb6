// context.hpp: one GPU as the core sees it. A context retains the device's primary CUDA context (the
// one the CUDA runtime and PyTorch use, so their pointers and streams are valid here), loads compiled
// kernels into it, and outlives every pipeline made from it (they hold a reference).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "cache.hpp"
#include "driver.hpp"
#include "mfa.h"

namespace mfa {

class Context {
 public:
  explicit Context(int ordinal);
  ~Context();
  Context(const Context &) = delete;
  Context &operator=(const Context &) = delete;

  const mfa_device_info &info() const { return info_; }
  const std::string &arch() const { return arch_; }
  int32_t ordinal() const { return ordinal_; }
  CUcontext primary() const { return primary_; }
  int compute_capability() const { return info_.compute_capability_major * 10 + info_.compute_capability_minor; }
  // Binds the primary context to the calling thread (cheap; every entry point that touches the GPU calls it).
  void make_current() const;
  // Loads the kernel's module once per context and returns the entry point.
  CUfunction function(const CompiledKernel &kernel, const char *entry);

 private:
  int32_t ordinal_ = 0;
  CUdevice device_ = 0;
  CUcontext primary_ = nullptr;
  mfa_device_info info_;
  std::string arch_;
  std::mutex modules_mutex_;
  std::map<std::string, CUmodule> modules_;
};

// The NVRTC target for a compute capability: Hopper's wgmma and setmaxnreg need the "a" variant.
std::string arch_for(int major, int minor);

}  // namespace mfa

struct mfa_context {
  std::shared_ptr<mfa::Context> impl;
};
