#include "nvrtc.hpp"

#include <cstdlib>
#include <regex>
#include <sstream>

#include "dynamic_library.hpp"
#include "errors.hpp"

namespace mfa {

namespace {

using nvrtcResult = int;
struct _nvrtcProgram;
using nvrtcProgram = _nvrtcProgram *;

struct NvrtcApi {
  nvrtcResult (*nvrtcVersion)(int *, int *);
  const char *(*nvrtcGetErrorString)(nvrtcResult);
  nvrtcResult (*nvrtcCreateProgram)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                                    const char *const *);
  nvrtcResult (*nvrtcCompileProgram)(nvrtcProgram, int, const char *const *);
  nvrtcResult (*nvrtcGetProgramLogSize)(nvrtcProgram, size_t *);
  nvrtcResult (*nvrtcGetProgramLog)(nvrtcProgram, char *);
  nvrtcResult (*nvrtcGetCUBINSize)(nvrtcProgram, size_t *);
  nvrtcResult (*nvrtcGetCUBIN)(nvrtcProgram, char *);
  nvrtcResult (*nvrtcDestroyProgram)(nvrtcProgram *);
};

// Where NVRTC may be: an explicit path first, then the names the system loader resolves (the CUDA
// toolkit, or a pip wheel whose directory the Python package exported), newest major first.
std::vector<std::string> nvrtc_candidates() {
  std::vector<std::string> paths;
  if (const char *path = std::getenv("MFA_NVRTC_LIBRARY")) paths.emplace_back(path);
  for (const char *name : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"}) paths.emplace_back(name);
  for (const char *var : {"CUDA_HOME", "CUDA_PATH"})
    if (const char *home = std::getenv(var)) paths.push_back(std::string(home) + "/lib64/libnvrtc.so");
  paths.emplace_back("/usr/local/cuda/lib64/libnvrtc.so");
  return paths;
}

template <class Function>
void bind(void *library, const char *symbol, Function &function) {
  mfa::bind(library, symbol, function, MFA_STATUS_NVRTC_NOT_FOUND, "the NVRTC library");
}

NvrtcApi load_nvrtc() {
  std::string tried;
  void *library = nullptr;
  for (const std::string &path : nvrtc_candidates()) {
    library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library) break;
    tried += "\n  " + path + ": " + dlerror();
  }
  require(library != nullptr, MFA_STATUS_NVRTC_NOT_FOUND,
          "NVRTC (the CUDA run-time compiler) was not found. Install it with `pip install nvidia-cuda-nvrtc` "
          "(or the CUDA toolkit), or point MFA_NVRTC_LIBRARY at libnvrtc.so. Tried:",
          tried);
  NvrtcApi api{};
  bind(library, "nvrtcVersion", api.nvrtcVersion);
  bind(library, "nvrtcGetErrorString", api.nvrtcGetErrorString);
  bind(library, "nvrtcCreateProgram", api.nvrtcCreateProgram);
  bind(library, "nvrtcCompileProgram", api.nvrtcCompileProgram);
  bind(library, "nvrtcGetProgramLogSize", api.nvrtcGetProgramLogSize);
  bind(library, "nvrtcGetProgramLog", api.nvrtcGetProgramLog);
  bind(library, "nvrtcGetCUBINSize", api.nvrtcGetCUBINSize);
  bind(library, "nvrtcGetCUBIN", api.nvrtcGetCUBIN);
  bind(library, "nvrtcDestroyProgram", api.nvrtcDestroyProgram);
  return api;
}

const NvrtcApi &nvrtc() { return load_once(load_nvrtc); }

void check_nvrtc(nvrtcResult result, const char *call) {
  if (result != 0) fail(MFA_STATUS_COMPILE_FAILED, call, " failed: ", nvrtc().nvrtcGetErrorString(result));
}

// Owns one NVRTC program for the length of a compilation.
struct Program {
  nvrtcProgram handle = nullptr;
  ~Program() {
    if (handle) nvrtc().nvrtcDestroyProgram(&handle);
  }
  std::string log() const {
    size_t size = 0;
    check_nvrtc(nvrtc().nvrtcGetProgramLogSize(handle, &size), "nvrtcGetProgramLogSize");
    std::string text(size, '\0');
    check_nvrtc(nvrtc().nvrtcGetProgramLog(handle, text.data()), "nvrtcGetProgramLog");
    while (!text.empty() && (text.back() == '\0' || text.back() == '\n')) text.pop_back();
    return text;
  }
};

}  // namespace

int nvrtc_version() {
  int major = 0, minor = 0;
  check_nvrtc(nvrtc().nvrtcVersion(&major, &minor), "nvrtcVersion");
  return major * 1000 + minor * 10;
}

CompileOutput nvrtc_compile(const std::string &source, const std::string &source_name,
                            const std::vector<NamedSource> &headers, const std::vector<std::string> &options) {
  const NvrtcApi &api = nvrtc();
  std::vector<const char *> header_texts, header_names, option_texts;
  for (const NamedSource &header : headers) {
    header_names.push_back(header.name);
    header_texts.push_back(header.text);
  }
  for (const std::string &option : options) option_texts.push_back(option.c_str());
  Program program;
  check_nvrtc(api.nvrtcCreateProgram(&program.handle, source.c_str(), source_name.c_str(),
                                     static_cast<int>(headers.size()), header_texts.data(), header_names.data()),
              "nvrtcCreateProgram");
  const nvrtcResult result =
      api.nvrtcCompileProgram(program.handle, static_cast<int>(option_texts.size()), option_texts.data());
  CompileOutput output;
  output.log = program.log();
  require(result == 0, MFA_STATUS_COMPILE_FAILED, "NVRTC could not compile ", source_name, " (",
          api.nvrtcGetErrorString(result), "):\n", output.log);
  size_t size = 0;
  check_nvrtc(api.nvrtcGetCUBINSize(program.handle, &size), "nvrtcGetCUBINSize");
  output.cubin.resize(size);
  check_nvrtc(api.nvrtcGetCUBIN(program.handle, output.cubin.data()), "nvrtcGetCUBIN");
  return output;
}

KernelResources parse_resources(const std::string &log, const std::string &entry) {
  KernelResources resources;
  std::istringstream lines(log);
  std::string line;
  bool in_entry = false;
  const std::regex frame(R"((\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads)");
  const std::regex used(R"(Used (\d+) registers)");
  const std::regex smem(R"((\d+) bytes smem)");
  std::smatch match;
  while (std::getline(lines, line)) {
    if (line.find("Compiling entry function") != std::string::npos ||
        line.find("Function properties for") != std::string::npos) {
      const size_t quote = line.find('\'');
      const std::string name = quote != std::string::npos
                                   ? line.substr(quote + 1, line.find('\'', quote + 1) - quote - 1)
                                   : line.substr(line.rfind(' ') + 1);
      in_entry = name == entry;
      continue;
    }
    if (!in_entry) continue;
    if (std::regex_search(line, match, frame)) {
      resources.stack_frame_bytes = std::stoi(match[1]);
      resources.spill_store_bytes = std::stoi(match[2]);
      resources.spill_load_bytes = std::stoi(match[3]);
    }
    if (std::regex_search(line, match, used)) {
      resources.registers = std::stoi(match[1]);
      resources.found = true;
      if (std::regex_search(line, match, smem)) resources.static_shared_bytes = std::stoll(match[1]);
    }
  }
  return resources;
}

}  // namespace mfa
