// cache.hpp: compiled kernels, kept in memory for the process and on disk across processes.
// A variant is compiled once per (source, options, architecture, NVRTC version, MFA version): all of
// them are hashed into the key, next to the readable variant name, so a stale entry is never used.
#pragma once

#include <memory>
#include <string>

#include "mfa.h"

namespace mfa {

struct KernelSource {
  std::string variant;  // readable, e.g. "gemm.sm80.f16.f16.nn"
  std::string text;     // the generated source (MFA_DUMP_SOURCE=1 writes it out)
  std::string arch;     // NVRTC target, e.g. "sm_90a"
};

struct CompiledKernel {
  std::string key;      // "<variant>-<hash>", also the disk entry's directory name
  std::string variant;
  std::string cubin;
  std::string log;      // ptxas's resource report
};

struct CacheLookup {
  std::shared_ptr<const CompiledKernel> kernel;
  int32_t origin = MFA_CACHE_COMPILED;  // MFA_CACHE_*
  double milliseconds = 0.0;            // spent finding or compiling it
};

// Finds the kernel in memory, then on disk, else compiles it (and stores it in both). Thread-safe.
CacheLookup compile_cached(const KernelSource &source);

// The disk cache's directory ("" when MFA_CACHE_DIR=off or no home directory is known).
const std::string &cache_directory();

void clear_caches(int32_t scope_bits);

// The info of a pipeline that runs one compiled variant: its name, where the kernel came from, the time
// spent on it (0 on a memory-cache hit) and the workspace encode needs.
mfa_pipeline_info pipeline_info(const std::string &variant, const CacheLookup &lookup, uint64_t workspace_bytes);

// The output side of every mfa_*_compile_report: checks the caller's arguments, fills one report per
// entry point while there is room (keeping each report's header), and counts them all.
class KernelReports {
 public:
  KernelReports(const char *arch, mfa_kernel_report *out_reports, int32_t capacity, int32_t *out_count);
  const std::string &arch() const { return arch_; }
  void add(const std::string &variant, const char *entry, const CacheLookup &lookup, int64_t dynamic_shared_bytes);
  void finish() const { *out_count_ = count_; }

 private:
  std::string arch_;
  mfa_kernel_report *out_reports_;
  int32_t capacity_, count_ = 0;
  int32_t *out_count_;
};

}  // namespace mfa
