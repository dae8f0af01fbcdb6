// nvrtc.hpp: run-time compilation of generated kernel sources with NVRTC, loaded with dlopen
// (the pip wheel nvidia-cuda-nvrtc, the CUDA toolkit, or MFA_NVRTC_LIBRARY), and the resource report
// ptxas writes for each entry point.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mfa {

struct NamedSource {
  const char *name;
  const char *text;
};

struct CompileOutput {
  std::string cubin;
  std::string log;  // NVRTC's and ptxas's messages, the resource report included
};

// NVRTC's version as major * 1000 + minor * 10 (CUDA's convention: 13.0 -> 13000).
int nvrtc_version();

// Compiles `source` for `arch` (e.g. "sm_90a") to a cubin; `headers` are the files it may #include.
// Throws Error(MFA_STATUS_COMPILE_FAILED) with the log on failure.
CompileOutput nvrtc_compile(const std::string &source, const std::string &source_name,
                            const std::vector<NamedSource> &headers, const std::vector<std::string> &options);

struct KernelResources {
  int registers = 0;
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  int stack_frame_bytes = 0;
  long long static_shared_bytes = 0;
  bool found = false;
};

// Reads one entry point's figures out of a ptxas -v log.
KernelResources parse_resources(const std::string &log, const std::string &entry);

}  // namespace mfa
