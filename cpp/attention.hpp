// attention.hpp: what the attention host code (cpp/attention.cpp: validation, variants, the portable
// path, split-KV, the ABI) asks of the Hopper path's host side (cpp/attention_sm90.cpp).
#pragma once

#include <cstdint>
#include <string>

#include "driver.hpp"
#include "mfa.h"
#include "../cuda/attention.cuh"

namespace mfa::attention {

struct LaunchShape {
  unsigned grid[3];
  unsigned threads;
  size_t shared_bytes;  // dynamic shared memory
};

// The mask kind of a (validated) descriptor's window: MFA_ATTN_MASK_NONE, _CAUSAL or _WINDOW.
int32_t mask_of(const mfa_attention_descriptor &descriptor);

// Whether the Hopper kernel serves this (validated) descriptor; if not, `why` says what it lacks.
bool hopper_supports(const mfa_attention_descriptor &descriptor, std::string *why);

// The kernel file the generated source includes after the variant macros, and the entry points: the
// persistent attention grid, and the kernel that zeroes its tile counter ahead of it.
constexpr const char *kHopperKernelFile = "attention_sm90.cu";
constexpr const char *kHopperEntryPoint = "mfa_attention_sm90";
constexpr const char *kHopperClearEntryPoint = "mfa_attention_sm90_clear";
constexpr unsigned kHopperClearThreads = 32;  // the clearing kernel's __launch_bounds__
constexpr uint64_t kHopperWorkspaceBytes = 256;  // the tile counter's 4 bytes, in the workspaces' 256-byte granule

// Launch shape for a descriptor on a device of `sm_count` SMs.
LaunchShape hopper_launch_shape(const mfa_attention_descriptor &descriptor, int sm_count);

// Fills args.tma_q/k/v/o for the tensors already described in args (pointers, strides, lengths).
// total_q/total_k are the packed token counts for varlen (the dense seq lengths otherwise).
// Returns false with `why` set when the driver refuses a map (alignment of a pointer or stride).
bool hopper_encode_tensor_maps(const DriverApi &driver, const mfa_attention_descriptor &descriptor,
                               long long total_q, long long total_k, mfa_attn_args &args, std::string *why);

}  // namespace mfa::attention
