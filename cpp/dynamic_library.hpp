// dynamic_library.hpp: the two libraries MFA loads at run time (the CUDA driver, NVRTC) are tables of
// function pointers, bound once with dlsym on first use.
#pragma once

#include <dlfcn.h>

#include <mutex>

#include "errors.hpp"

namespace mfa {

// Binds `function` to `symbol`, or fails with `missing` naming what lacks it.
template <class Function>
void bind(void *library, const char *symbol, Function &function, mfa_status missing, const char *library_name) {
  function = reinterpret_cast<Function>(dlsym(library, symbol));
  require(function != nullptr, missing, library_name, " lacks ", symbol, ": it is too old for MFA");
}

// The table `load` returns, loaded by the first caller; a failed load is retried by the next call, so
// each call reports the reason afresh.
template <class Api>
const Api &load_once(Api (*load)()) {
  static std::mutex mutex;
  static Api api{};
  static bool loaded = false;
  std::lock_guard<std::mutex> lock(mutex);
  if (!loaded) {
    api = load();
    loaded = true;
  }
  return api;
}

}  // namespace mfa
