"""mfa_c: Python bindings of MFA's C ABI (include/mfa.h) through cffi.

    import mfa_c
    c = mfa_c.gemm(a, b, activation="gelu")   # numpy arrays, torch tensors or CuPy arrays
"""

from ._context import CommandList, Context, default_context, gpu_available
from ._ffi import MFAError, check, ffi, lib, text
from .attention import (AttentionPipeline, attention, attention_compile_report, attention_reference,
                        attention_variants)
from .gemm import GemmPipeline, compile_report, gemm, gemm_reference, gemm_variants
from .group_norm import (GroupNormPipeline, group_norm, group_norm_backward, group_norm_compile_report,
                         group_norm_reference, group_norm_variants)

__version__ = text(lib.mfa_version_string())


def version():
    """The library's MFA_VERSION_NUMBER (MAJOR * 10000 + MINOR * 100 + PATCH)."""
    return lib.mfa_version()


def nvrtc_version():
    """The version of the NVRTC that compiles kernels, e.g. 13000 (loads NVRTC)."""
    version_number = ffi.new("int32_t *")
    check(lib.mfa_nvrtc_version(version_number))
    return version_number[0]


def cache_directory():
    """The disk cache of compiled kernels, or "" when it is disabled (MFA_CACHE_DIR=off)."""
    return text(lib.mfa_cache_directory())


def clear_cache(memory=True, disk=False):
    """Empties the in-process and/or the disk cache of compiled kernels."""
    scope = (lib.MFA_CACHE_SCOPE_MEMORY if memory else 0) | (lib.MFA_CACHE_SCOPE_DISK if disk else 0)
    check(lib.mfa_cache_clear(scope))


__all__ = [
    "AttentionPipeline", "attention", "attention_compile_report", "attention_reference", "attention_variants",
    "CommandList", "Context", "GemmPipeline", "MFAError", "__version__", "cache_directory", "clear_cache",
    "compile_report", "default_context", "ffi", "gemm", "gemm_reference", "gemm_variants", "gpu_available",
    "GroupNormPipeline", "group_norm", "group_norm_backward", "group_norm_compile_report", "group_norm_reference",
    "group_norm_variants",
    "lib", "nvrtc_version", "version",
]
