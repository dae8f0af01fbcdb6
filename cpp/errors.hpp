// errors.hpp: how failures travel inside the core (exceptions) and cross the ABI (status codes plus a
// thread-local message). Every exported function body runs inside abi_call().
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mfa.h"

namespace mfa {

struct Error : std::runtime_error {
  mfa_status status;
  Error(mfa_status status_, const std::string &message) : std::runtime_error(message), status(status_) {}
};

template <class... Parts>
std::string concat(Parts &&...parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

template <class... Parts>
[[noreturn]] void fail(mfa_status status, Parts &&...parts) {
  throw Error(status, concat(std::forward<Parts>(parts)...));
}

template <class... Parts>
void require(bool condition, mfa_status status, Parts &&...parts) {
  if (!condition) fail(status, std::forward<Parts>(parts)...);
}

// Records a failure for mfa_last_error_message() and returns its status.
mfa_status record_error(mfa_status status, const std::string &message);
void clear_error();

// Runs an ABI entry point: success clears nothing (the message stays until the next failure),
// every exception becomes a status with its message.
template <class Body>
mfa_status abi_call(Body &&body) noexcept {
  try {
    body();
    return MFA_STATUS_SUCCESS;
  } catch (const Error &e) {
    return record_error(e.status, e.what());
  } catch (const std::bad_alloc &) {
    return record_error(MFA_STATUS_OUT_OF_MEMORY, "host memory allocation failed");
  } catch (const std::exception &e) {
    return record_error(MFA_STATUS_INTERNAL, concat("internal error: ", e.what()));
  } catch (...) {
    return record_error(MFA_STATUS_INTERNAL, "internal error: unknown exception");
  }
}

// Null-pointer checks that name the argument, e.g. require_arg(out, "out_context").
inline void require_arg(const void *pointer, const char *name) {
  require(pointer != nullptr, MFA_STATUS_INVALID_ARGUMENT, name, " is NULL");
}

// An encode's workspace: none needed takes any pointer (NULL too); else a 16-byte aligned pointer to at
// least `needed` bytes.
inline void require_workspace(const void *workspace, uint64_t workspace_bytes, uint64_t needed) {
  if (needed == 0) return;
  require_arg(workspace, "workspace");
  require(workspace_bytes >= needed, MFA_STATUS_INVALID_ARGUMENT, "workspace_bytes is ", workspace_bytes,
          ", the pipeline needs ", needed);
  require(reinterpret_cast<uintptr_t>(workspace) % 16 == 0, MFA_STATUS_MISALIGNED, "workspace (", workspace,
          ") is not aligned to 16 bytes");
}

// Checks a descriptor's header: its type tag and a size the library understands.
void require_header(const mfa_struct_header &header, uint32_t type, size_t library_size, const char *name);

// Copies a library-owned struct into the caller's, up to the size the caller declared, keeping the
// caller's header (so callers built against an older, smaller struct are served too).
template <class Struct>
void copy_out(Struct *out, const Struct &value, uint32_t type, const char *name) {
  require_arg(out, name);
  require_header(out->header, type, sizeof(Struct), name);
  const mfa_struct_header header = out->header;
  std::memcpy(static_cast<void *>(out), &value, std::min<size_t>(header.size, sizeof(Struct)));
  out->header = header;
}

// mfa_*_variant_descriptor: the index-th of an operation's variant descriptors, copied out.
template <class Descriptor>
void copy_out_variant(const std::vector<Descriptor> &all, int64_t index, Descriptor *out, uint32_t type) {
  require(index >= 0 && index < static_cast<int64_t>(all.size()), MFA_STATUS_INVALID_ARGUMENT, "index is ", index,
          ", there are ", all.size(), " variants");
  copy_out(out, all[index], type, "out_descriptor");
}

}  // namespace mfa
