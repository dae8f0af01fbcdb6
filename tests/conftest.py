"""Shared fixtures and helpers of MFA's test suite.

CPU-only machines (CI) run everything that needs no GPU: the ABI, validation, caches, and the NVRTC
compilation of every kernel variant. Tests that need a GPU carry the `gpu` marker (tests using the `ctx`
or `torch_cuda` fixtures get it automatically) and skip with the reason the context could not be
created, e.g. "no GPU: cannot load the NVIDIA driver library libcuda.so.1 (...)".

Standards every GPU test keeps: float64 references from the same (quantized) inputs, fresh random
inputs per test (the seed is printed on failure; MFA_TEST_SEED=<seed> reproduces it), outputs poisoned
with NaN before each run, relative Frobenius errors within TOLERANCES, and NaN never passes.

Disk caches: libmfa reads MFA_CACHE_DIR once, at its first use in a process. Tests about the cache in
this process therefore use whatever directory mfa_c.cache_directory() reports (CI points MFA_CACHE_DIR at
a fresh directory before pytest starts); tests that need a cache of their own run a subprocess through
the `isolated_cache` fixture, which points MFA_CACHE_DIR at tmp_path. The `shared_cache` fixture runs
subprocesses against this process's cache directory, so that they find what this process compiled.
"""

import dataclasses
import math
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mfa_c

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------------
# Tolerances: relative Frobenius error against a float64 reference, by (input dtype, precision,
# output dtype). The output's own rounding dominates for 16-bit outputs; fp32 outputs must be as good
# as fp32 accumulation of exact products (16-bit inputs, or fp32 inputs in either fp32 mode).

_INPUTS = (("float16", "default"), ("bfloat16", "default"), ("float32", "ieee"), ("float32", "accurate"))
_BY_OUTPUT = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}
TOLERANCES = {(dtype, precision, out): bound for dtype, precision in _INPUTS for out, bound in _BY_OUTPUT.items()}


def tolerance(dtype, precision, out_dtype):
    """The allowed relative error; fp32's "default" precision is "accurate" (mfa.h)."""
    if dtype == "float32" and precision == "default":
        precision = "accurate"
    return TOLERANCES[(dtype, precision, out_dtype)]


def rel_error(out, ref):
    """||out - ref||_F / ||ref||_F in float64; inf where `out` holds a NaN or an infinity, so that NaN never
    passes a tolerance. numpy arrays, or torch tensors (computed on their device). Where the reference is
    all zeros, the absolute error."""
    if _is_torch(out) or _is_torch(ref):
        import torch

        out_t = out if _is_torch(out) else torch.as_tensor(np.asarray(out))
        ref_t = ref if _is_torch(ref) else torch.as_tensor(np.asarray(ref))
        device = out_t.device
        out_t, ref_t = out_t.to(device, torch.float64), ref_t.to(device, torch.float64)
        assert tuple(out_t.shape) == tuple(ref_t.shape), f"shape {tuple(out_t.shape)} != {tuple(ref_t.shape)}"
        assert bool(torch.isfinite(ref_t).all()), "the reference itself is not finite (a test bug)"
        if not bool(torch.isfinite(out_t).all()):
            return math.inf
        difference = float(torch.linalg.vector_norm(out_t - ref_t))
        scale = float(torch.linalg.vector_norm(ref_t))
    else:
        out_a, ref_a = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
        assert out_a.shape == ref_a.shape, f"shape {out_a.shape} != {ref_a.shape}"
        assert np.isfinite(ref_a).all(), "the reference itself is not finite (a test bug)"
        if not np.isfinite(out_a).all():
            return math.inf
        difference = float(np.linalg.norm((out_a - ref_a).ravel()))
        scale = float(np.linalg.norm(ref_a.ravel()))
    return difference / scale if scale > 0 else difference


def _is_torch(value):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


# ------------------------------------------------------------------------------------------------
# The C library, its status codes and messages


lib, ffi = mfa_c.lib, mfa_c.ffi


def last_message():
    return ffi.string(lib.mfa_last_error_message()).decode()


def status_name(status):
    return ffi.string(lib.mfa_status_string(status)).decode()


def assert_status(status, expected, *names):
    """`status` is MFA_STATUS_<expected> and the thread's error message contains every one of `names`
    (the argument, or the field of it, that is wrong)."""
    message = last_message() if status != lib.MFA_STATUS_SUCCESS else ""
    want = getattr(lib, f"MFA_STATUS_{expected}")
    assert status == want, f"expected MFA_STATUS_{expected}, got {status_name(status)}: {message!r}"
    for name in names:
        assert name in message, f"the message does not name {name!r}: {message!r}"
    return message


def library_path():
    """libmfa as installed next to mfa_c (mfa_c/lib/libmfa.so), or MFA_LIBRARY."""
    if os.environ.get("MFA_LIBRARY"):
        return Path(os.environ["MFA_LIBRARY"])
    return Path(mfa_c.__file__).resolve().parent / "lib" / "libmfa.so"


def header_path():
    """mfa.h as installed next to mfa_c (mfa_c/include/mfa.h), or MFA_HEADER."""
    if os.environ.get("MFA_HEADER"):
        return Path(os.environ["MFA_HEADER"])
    return Path(mfa_c.__file__).resolve().parent / "include" / "mfa.h"


# ------------------------------------------------------------------------------------------------
# GPU availability: decided once, by creating the default context.

_gpu = {}


def gpu_context_or_reason():
    """(the default Context, None) on a machine with a usable GPU, else (None, "no GPU: <why>")."""
    if "reason" not in _gpu:
        try:
            _gpu["context"], _gpu["reason"] = mfa_c.default_context(), None
        except mfa_c.MFAError as error:
            _gpu["context"], _gpu["reason"] = None, f"no GPU: {error.message}"
    return _gpu["context"], _gpu["reason"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"ctx", "torch_cuda"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gpu)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        context, reason = gpu_context_or_reason()
        if context is None:
            pytest.skip(reason)


@pytest.fixture
def ctx():
    """The process-wide mfa_c.Context on device 0; skips the test where there is no GPU."""
    context, reason = gpu_context_or_reason()
    if context is None:
        pytest.skip(reason)
    return context


@pytest.fixture
def torch_cuda(ctx):
    """The torch module with CUDA; skips where torch (or its CUDA) is missing. Imported only here."""
    try:
        import torch
    except ImportError as error:
        pytest.skip(f"torch is not installed ({error})")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} has no usable CUDA")
    return torch


# ------------------------------------------------------------------------------------------------
# Random inputs: a fresh seed per test, reported with the failure.


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("MFA_TEST_SEED") or secrets.randbits(63))
    request.node._mfa_seed = seed
    print(f"rng seed: {seed} (reproduce with MFA_TEST_SEED={seed})")
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "_mfa_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("rng seed", f"this test ran with MFA_TEST_SEED={seed}"))


# ------------------------------------------------------------------------------------------------
# Subprocesses (a fresh libmfa: its cache directory, its dump flags, its first compile)


@dataclasses.dataclass
class PythonRunner:
    """Runs `python ...` in a subprocess whose MFA_CACHE_DIR is `directory`."""

    directory: Path
    env: dict

    def run(self, *args, extra_env=None, cwd=None, timeout=3600, check=False):
        env = {**self.env, **(extra_env or {})}
        result = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
                                timeout=timeout)
        if check:
            assert result.returncode == 0, (f"python {' '.join(args)} exited {result.returncode}\n"
                                            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result


def _runner(directory):
    env = dict(os.environ)
    env["MFA_CACHE_DIR"] = str(directory) if str(directory) else "off"
    # The subprocess must import the same mfa_c as this process (a checkout on PYTHONPATH, or installed).
    package_root = str(Path(mfa_c.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    return PythonRunner(Path(directory) if str(directory) else Path(), env)


@pytest.fixture
def isolated_cache(tmp_path):
    """Subprocesses with a disk cache of their own (tmp_path/mfa-cache, empty at first)."""
    return _runner(tmp_path / "mfa-cache")


@pytest.fixture
def shared_cache():
    """Subprocesses sharing this process's disk cache (mfa_c.cache_directory(); "off" if disabled)."""
    return _runner(mfa_c.cache_directory())


# ------------------------------------------------------------------------------------------------
# Device memory without torch: tests of the core (command lists, buffers) run on any GPU machine.


class DeviceArray:
    """A float16/float32 array in memory from mfa_buffer_alloc, visible to mfa_c through
    __cuda_array_interface__ (compact row-major)."""

    def __init__(self, context, shape, dtype):
        self.context, self.shape, self.dtype = context, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        pointer = ffi.new("void **")
        assert_status(lib.mfa_buffer_alloc(context.handle, max(self.nbytes, 1), pointer), "SUCCESS")
        self.pointer = pointer[0]

    @classmethod
    def from_numpy(cls, context, array):
        array = np.ascontiguousarray(array)
        device = cls(context, array.shape, array.dtype)
        device.upload(array)
        return device

    def upload(self, array):
        array = np.ascontiguousarray(array, dtype=self.dtype)
        assert array.shape == self.shape
        assert_status(lib.mfa_copy_to_device(self.context.handle, self.pointer, ffi.from_buffer(array),
                                             self.nbytes), "SUCCESS")

    def numpy(self):
        self.context.synchronize()
        out = np.empty(self.shape, self.dtype)
        assert_status(lib.mfa_copy_to_host(self.context.handle, ffi.from_buffer(out, require_writable=True),
                                           self.pointer, self.nbytes), "SUCCESS")
        return out

    def poison(self):
        """Every byte 0xff: NaN in float16 and float32."""
        assert_status(lib.mfa_buffer_fill_u8(self.context.handle, self.pointer, 0xFF, self.nbytes), "SUCCESS")

    @property
    def address(self):
        return int(ffi.cast("uintptr_t", self.pointer))

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.address, False), "strides": None,
                "version": 3}

    def free(self):
        if self.pointer is not None:
            assert_status(lib.mfa_buffer_free(self.context.handle, self.pointer), "SUCCESS")
            self.pointer = None

    def __del__(self):
        try:
            self.free()
        except Exception:  # noqa: BLE001 - the interpreter may be shutting down
            pass
