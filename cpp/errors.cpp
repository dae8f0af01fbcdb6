#include "errors.hpp"

#include <cstring>

namespace mfa {

namespace {
thread_local std::string last_message;
}

mfa_status record_error(mfa_status status, const std::string &message) {
  last_message = message;
  return status;
}

void clear_error() { last_message.clear(); }

void require_header(const mfa_struct_header &header, uint32_t type, size_t library_size, const char *name) {
  require(header.type == type, MFA_STATUS_INVALID_ARGUMENT, name, "->header.type is ", header.type, ", expected ",
          type, " (initialize it with its *_INIT macro)");
  require(header.size >= sizeof(mfa_struct_header), MFA_STATUS_INVALID_ARGUMENT, name, "->header.size is ",
          header.size, ", too small for any version of this struct");
  // A caller built against a newer header may pass a larger struct; the fields this library does not
  // know must then be zero, or the caller asked for something this version cannot do.
  if (header.size > library_size) {
    const unsigned char *bytes = reinterpret_cast<const unsigned char *>(&header);
    for (size_t i = library_size; i < header.size; ++i)
      require(bytes[i] == 0, MFA_STATUS_VERSION_MISMATCH, name, " sets fields (byte ", i,
              ") that this library version (", MFA_VERSION_MAJOR, ".", MFA_VERSION_MINOR, ") does not know");
  }
  require(header.next == nullptr, MFA_STATUS_INVALID_ARGUMENT, name, "->header.next must be NULL");
}

}  // namespace mfa

extern "C" {

MFA_API const char *mfa_last_error_message(void) { return mfa::last_message.c_str(); }

MFA_API const char *mfa_status_string(mfa_status status) {
  switch (status) {
    case MFA_STATUS_SUCCESS: return "MFA_STATUS_SUCCESS";
    case MFA_STATUS_INVALID_ARGUMENT: return "MFA_STATUS_INVALID_ARGUMENT";
    case MFA_STATUS_SHAPE_MISMATCH: return "MFA_STATUS_SHAPE_MISMATCH";
    case MFA_STATUS_UNSUPPORTED: return "MFA_STATUS_UNSUPPORTED";
    case MFA_STATUS_BAD_STRIDE: return "MFA_STATUS_BAD_STRIDE";
    case MFA_STATUS_MISALIGNED: return "MFA_STATUS_MISALIGNED";
    case MFA_STATUS_VERSION_MISMATCH: return "MFA_STATUS_VERSION_MISMATCH";
    case MFA_STATUS_DRIVER_NOT_FOUND: return "MFA_STATUS_DRIVER_NOT_FOUND";
    case MFA_STATUS_NVRTC_NOT_FOUND: return "MFA_STATUS_NVRTC_NOT_FOUND";
    case MFA_STATUS_NO_DEVICE: return "MFA_STATUS_NO_DEVICE";
    case MFA_STATUS_COMPILE_FAILED: return "MFA_STATUS_COMPILE_FAILED";
    case MFA_STATUS_DEVICE_ERROR: return "MFA_STATUS_DEVICE_ERROR";
    case MFA_STATUS_OUT_OF_MEMORY: return "MFA_STATUS_OUT_OF_MEMORY";
    case MFA_STATUS_INVALID_STATE: return "MFA_STATUS_INVALID_STATE";
    case MFA_STATUS_INTERNAL: return "MFA_STATUS_INTERNAL";
    default: return "MFA_STATUS_UNKNOWN";
  }
}

MFA_API uint32_t mfa_version(void) { return MFA_VERSION_NUMBER; }

#define MFA_STRINGIFY2(x) #x
#define MFA_STRINGIFY(x) MFA_STRINGIFY2(x)
MFA_API const char *mfa_version_string(void) {
  return MFA_STRINGIFY(MFA_VERSION_MAJOR) "." MFA_STRINGIFY(MFA_VERSION_MINOR) "." MFA_STRINGIFY(MFA_VERSION_PATCH);
}

}  // extern "C"
