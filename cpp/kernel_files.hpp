// kernel_files.hpp: the sources under cuda/, embedded into the library at build time (CMake writes
// kernel_files.cpp), so a generated kernel can #include them without any file on disk.
#pragma once

#include <cstddef>

#include "nvrtc.hpp"

namespace mfa {
extern const NamedSource kKernelFiles[];
extern const size_t kKernelFileCount;
}  // namespace mfa
