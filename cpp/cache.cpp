#include "cache.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "errors.hpp"
#include "kernel_files.hpp"
#include "nvrtc.hpp"

namespace mfa {

namespace {

std::vector<std::string> compile_options(const std::string &arch) {
  std::vector<std::string> options{"--gpu-architecture=" + arch, "-std=c++17", "--ptxas-options=-v", "-DNDEBUG"};
  // NVRTC 12.9+ keeps a cache of its own, and a hit there prints no ptxas report: our cache is the one
  // that counts, and every compilation it asks for must report its resources.
  if (nvrtc_version() >= 12090) options.emplace_back("--no-cache");
  return options;
}

std::vector<NamedSource> kernel_headers() {
  return std::vector<NamedSource>(kKernelFiles, kKernelFiles + kKernelFileCount);
}

// Two FNV-1a 64-bit passes with different offsets: 128 bits, ample for a cache of kernel variants.
struct Hasher {
  unsigned long long a = 14695981039346656037ull, b = 1099511628211ull * 31;
  void add(const std::string &text) {
    for (unsigned char c : text) {
      a = (a ^ c) * 1099511628211ull;
      b = (b ^ c) * 1099511628211ull + 0x9e3779b97f4a7c15ull;
    }
    a = (a ^ 0xff) * 1099511628211ull;  // separator, so ("ab","c") and ("a","bc") differ
  }
  std::string hex() const {
    char text[33];
    std::snprintf(text, sizeof text, "%016llx%016llx", a, b);
    return text;
  }
};

std::string cache_key(const KernelSource &source) {
  Hasher hasher;
  hasher.add(source.text);
  hasher.add(source.arch);
  for (const std::string &option : compile_options(source.arch)) hasher.add(option);
  for (const NamedSource &header : kernel_headers()) {
    hasher.add(header.name);
    hasher.add(header.text);
  }
  hasher.add(std::to_string(nvrtc_version()));
  hasher.add(mfa_version_string());
  return source.variant + "-" + hasher.hex();
}

double elapsed_ms(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

bool read_file(const std::string &path, std::string &out) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  std::ostringstream bytes;
  bytes << file.rdbuf();
  out = bytes.str();
  return true;
}

bool write_file(const std::string &path, const std::string &bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(file);
}

bool make_directories(const std::string &path) {
  for (size_t slash = path.find('/', 1); ; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) return false;
    if (slash == std::string::npos) return true;
  }
}

void remove_tree(const std::string &path) {
  for (const char *name : {"kernel.cubin", "kernel.cu", "ptxas.log"}) std::remove((path + "/" + name).c_str());
  rmdir(path.c_str());
}

std::shared_ptr<const CompiledKernel> load_from_disk(const std::string &key) {
  const std::string &root = cache_directory();
  if (root.empty()) return nullptr;
  auto kernel = std::make_shared<CompiledKernel>();
  const std::string entry = root + "/" + key;
  if (!read_file(entry + "/kernel.cubin", kernel->cubin) || kernel->cubin.empty()) return nullptr;
  read_file(entry + "/ptxas.log", kernel->log);
  kernel->key = key;
  return kernel;
}

// Writes the entry into a private directory, then renames it into place: readers in other processes
// see either no entry or a whole one. The cache is an optimization, so failures are silent.
void store_on_disk(const CompiledKernel &kernel, const std::string &source_text) {
  const std::string &root = cache_directory();
  if (root.empty() || !make_directories(root)) return;
  std::ostringstream scratch_name;
  scratch_name << root << "/.tmp-" << kernel.key << "-" << getpid() << "-" << std::this_thread::get_id();
  const std::string scratch = scratch_name.str();
  if (mkdir(scratch.c_str(), 0755) != 0) return;
  const bool written = write_file(scratch + "/kernel.cu", source_text) &&
                       write_file(scratch + "/ptxas.log", kernel.log) &&
                       write_file(scratch + "/kernel.cubin", kernel.cubin);
  if (!written || std::rename(scratch.c_str(), (root + "/" + kernel.key).c_str()) != 0) remove_tree(scratch);
}

void dump_source(const KernelSource &source) {
  const char *flag = std::getenv("MFA_DUMP_SOURCE");
  if (!flag || std::string(flag) == "0" || std::string(flag).empty()) return;
  const char *dir = std::getenv("MFA_DUMP_DIR");
  const std::string root = dir ? dir : "mfa_dump";
  make_directories(root);
  const std::string path = root + "/" + source.variant + "." + source.arch + ".cu";
  if (write_file(path, source.text)) std::fprintf(stderr, "mfa: wrote generated source %s\n", path.c_str());
}

struct MemoryCache {
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<const CompiledKernel>> kernels;
};

MemoryCache &memory_cache() {
  static MemoryCache cache;
  return cache;
}

}  // namespace

const std::string &cache_directory() {
  static const std::string directory = [] {
    if (const char *dir = std::getenv("MFA_CACHE_DIR")) return std::string(dir) == "off" ? std::string() : dir;
    if (const char *xdg = std::getenv("XDG_CACHE_HOME")) return std::string(xdg) + "/mfa";
    if (const char *home = std::getenv("HOME")) return std::string(home) + "/.cache/mfa";
    return std::string();
  }();
  return directory;
}

CacheLookup compile_cached(const KernelSource &source) {
  const auto start = std::chrono::steady_clock::now();
  dump_source(source);
  const std::string key = cache_key(source);
  MemoryCache &memory = memory_cache();
  {
    std::lock_guard<std::mutex> lock(memory.mutex);
    auto found = memory.kernels.find(key);
    if (found != memory.kernels.end()) return {found->second, MFA_CACHE_MEMORY, elapsed_ms(start)};
  }
  CacheLookup lookup;
  if (auto kernel = load_from_disk(key)) {
    std::const_pointer_cast<CompiledKernel>(kernel)->variant = source.variant;
    lookup = {kernel, MFA_CACHE_DISK, 0.0};
  } else {
    auto compiled = std::make_shared<CompiledKernel>();
    CompileOutput output = nvrtc_compile(source.text, source.variant + ".cu", kernel_headers(),
                                         compile_options(source.arch));
    compiled->key = key;
    compiled->variant = source.variant;
    compiled->cubin = std::move(output.cubin);
    compiled->log = std::move(output.log);
    store_on_disk(*compiled, source.text);
    lookup = {compiled, MFA_CACHE_COMPILED, 0.0};
  }
  lookup.milliseconds = elapsed_ms(start);
  std::lock_guard<std::mutex> lock(memory.mutex);
  // Two threads may compile the same key at once; the first stored wins, both results are equal.
  auto inserted = memory.kernels.emplace(key, lookup.kernel);
  lookup.kernel = inserted.first->second;
  return lookup;
}

mfa_pipeline_info pipeline_info(const std::string &variant, const CacheLookup &lookup, uint64_t workspace_bytes) {
  mfa_pipeline_info info = MFA_PIPELINE_INFO_INIT;
  std::strncpy(info.variant, variant.c_str(), sizeof info.variant - 1);
  info.cache = lookup.origin;
  info.workspace_bytes = workspace_bytes;
  info.compile_ms = lookup.origin == MFA_CACHE_MEMORY ? 0.0 : lookup.milliseconds;
  return info;
}

void clear_caches(int32_t scope_bits) {
  if (scope_bits & MFA_CACHE_SCOPE_MEMORY) {
    std::lock_guard<std::mutex> lock(memory_cache().mutex);
    memory_cache().kernels.clear();
  }
  if ((scope_bits & MFA_CACHE_SCOPE_DISK) && !cache_directory().empty()) {
    // Only entries this library wrote: <variant>-<hash>/ holding the three known files.
    const std::string root = cache_directory();
    if (DIR *dir = opendir(root.c_str())) {
      std::vector<std::string> entries;
      while (dirent *entry = readdir(dir))
        if (entry->d_name[0] != '.') entries.emplace_back(entry->d_name);
      closedir(dir);
      for (const std::string &name : entries) remove_tree(root + "/" + name);
    }
  }
}

KernelReports::KernelReports(const char *arch, mfa_kernel_report *out_reports, int32_t capacity, int32_t *out_count)
    : out_reports_(out_reports), capacity_(capacity), out_count_(out_count) {
  require_arg(arch, "arch");
  require_arg(out_count, "out_count");
  require(capacity >= 0 && (capacity == 0 || out_reports), MFA_STATUS_INVALID_ARGUMENT,
          "out_reports is NULL with capacity ", capacity);
  arch_ = arch;
  require(arch_.rfind("sm_", 0) == 0, MFA_STATUS_INVALID_ARGUMENT, "arch is \"", arch_, "\", expected e.g. \"sm_90a\"");
}

void KernelReports::add(const std::string &variant, const char *entry, const CacheLookup &lookup,
                        int64_t dynamic_shared_bytes) {
  if (count_++ >= capacity_) return;
  mfa_kernel_report &report = out_reports_[count_ - 1];
  require_header(report.header, MFA_STRUCT_KERNEL_REPORT, sizeof(mfa_kernel_report), "out_reports[i]");
  static const char *origins[] = {"compiled", "from memory", "from disk"};
  const KernelResources resources = parse_resources(lookup.kernel->log, entry);
  require(resources.found, MFA_STATUS_INTERNAL, "no resource report for ", entry, " in the ptxas log of ", variant,
          " (", origins[lookup.origin], "):\n", lookup.kernel->log);
  const mfa_struct_header header = report.header;
  report = MFA_KERNEL_REPORT_INIT;
  report.header = header;
  std::strncpy(report.kernel, entry, sizeof report.kernel - 1);
  std::strncpy(report.variant, variant.c_str(), sizeof report.variant - 1);
  report.registers = resources.registers;
  report.spill_store_bytes = resources.spill_store_bytes;
  report.spill_load_bytes = resources.spill_load_bytes;
  report.stack_frame_bytes = resources.stack_frame_bytes;
  report.static_shared_bytes = resources.static_shared_bytes;
  report.dynamic_shared_bytes = dynamic_shared_bytes;
  report.compile_ms = lookup.milliseconds;
  report.cache = lookup.origin;
}

}  // namespace mfa

extern "C" {

MFA_API mfa_status mfa_cache_clear(int32_t scope_bits) {
  return mfa::abi_call([&] {
    mfa::require((scope_bits & ~(MFA_CACHE_SCOPE_MEMORY | MFA_CACHE_SCOPE_DISK)) == 0, MFA_STATUS_INVALID_ARGUMENT,
                 "scope_bits has unknown bits: ", scope_bits);
    mfa::clear_caches(scope_bits);
  });
}

MFA_API const char *mfa_cache_directory(void) { return mfa::cache_directory().c_str(); }

MFA_API mfa_status mfa_nvrtc_version(int32_t *out_version) {
  return mfa::abi_call([&] {
    mfa::require_arg(out_version, "out_version");
    *out_version = mfa::nvrtc_version();
  });
}

}  // extern "C"
