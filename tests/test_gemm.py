"""GEMM: descriptor and tensor validation (CPU), NVRTC compilation of every variant (CPU), and results
against float64 references on the GPU (torch tensors for speed; numpy inputs too)."""

import concurrent.futures
import contextlib
import json
import math
import os
import re

import numpy as np
import pytest

import mfa_c
from mfa_c._ffi import new_struct
from conftest import REPO, assert_status, ffi, lib, rel_error, tolerance

INPUTS = [("float16", "default"), ("bfloat16", "default"), ("float32", "ieee"), ("float32", "accurate")]
INPUT_IDS = ["f16", "bf16", "f32ieee", "f32acc"]
OUTPUTS = ["float16", "bfloat16", "float32"]
TRANSPOSES = ["NN", "NT", "TN", "TT"]
ACTIVATIONS = ["none", "relu", "gelu_tanh", "gelu_erf", "silu"]
PATHS = ["portable", "hopper"]


def paths_for(dtype, precision):
    """IEEE fp32 runs on the CUDA cores (portable path) only; everything else also has a Hopper kernel."""
    return ["portable"] if precision == "ieee" else PATHS


def assert_names(message, name):
    """The message names the argument: "^x" means it starts with "x" (Python-level errors read
    "argument: problem"), anything else must occur in it."""
    if name.startswith("^"):
        assert message.startswith(name[1:]), f"{message!r} does not start with {name[1:]!r}"
    else:
        assert name in message, f"{message!r} does not name {name!r}"


# ================================================================================================
# CPU: validation of descriptors and tensors. The tensors point at made-up device addresses:
# mfa_gemm_validate and mfa_gemm_compile_report only read the structs, never the memory.

DTYPE_BITS = {lib.MFA_DTYPE_F16: (lib.MFA_DTYPE_CODE_FLOAT, 16), lib.MFA_DTYPE_BF16: (lib.MFA_DTYPE_CODE_BFLOAT, 16),
              lib.MFA_DTYPE_F32: (lib.MFA_DTYPE_CODE_FLOAT, 32)}
ADDRESS = {"a": 0x1000000, "b": 0x2000000, "c": 0x3000000, "bias": 0x4000000}
M, N, K = 64, 48, 32
NULL = object()  # a tensor argument passed as NULL


class FakeTensor:
    """An mfa_tensor (and the shape/stride arrays it points to) describing memory that does not exist."""

    def __init__(self, shape, dtype, data, strides=None, byte_offset=0, device_type=lib.MFA_DEVICE_CUDA,
                 device_id=0, ndim=None, lanes=1, shape_null=False):
        code, bits = DTYPE_BITS.get(dtype, DTYPE_BITS[lib.MFA_DTYPE_F16])
        self.shape = ffi.new("int64_t[]", list(shape))
        self.strides = ffi.new("int64_t[]", list(strides)) if strides is not None else ffi.NULL
        self.struct = ffi.new("mfa_tensor *", {
            "data": ffi.cast("void *", data), "device": {"device_type": device_type, "device_id": device_id},
            "ndim": len(shape) if ndim is None else ndim, "dtype": {"code": code, "bits": bits, "lanes": lanes},
            "shape": ffi.NULL if shape_null else self.shape, "strides": self.strides, "byte_offset": byte_offset})

    def snapshot(self):
        arrays = [bytes(ffi.buffer(self.struct)), bytes(ffi.buffer(self.shape))]
        return arrays + ([bytes(ffi.buffer(self.strides))] if self.strides != ffi.NULL else [])


NOT_A_TUNING = new_struct("mfa_pipeline_info")  # a struct of another type, to chain by mistake


def make_descriptor(**fields):
    descriptor = ffi.new("mfa_gemm_descriptor *")
    descriptor.header.type = lib.MFA_STRUCT_GEMM_DESCRIPTOR
    descriptor.header.size = ffi.sizeof("mfa_gemm_descriptor")
    defaults = dict(m=M, n=N, k=K, batch=1, a_dtype=lib.MFA_DTYPE_F16, b_dtype=lib.MFA_DTYPE_F16,
                    c_dtype=lib.MFA_DTYPE_F16, bias_dtype=lib.MFA_DTYPE_NONE, alpha=1.0)
    for name, value in {**defaults, **fields}.items():
        if name == "header_type":
            descriptor.header.type = value
        elif name == "header_size":
            descriptor.header.size = value
        elif name == "header_next":
            descriptor.header.next = value
        else:
            setattr(descriptor, name, value)
    return descriptor


def make_tensors(descriptor, overrides):
    """Tensors that fit `descriptor`, with per-tensor keyword overrides (NULL: pass NULL; bias is
    present exactly where the descriptor has a bias dtype, unless overridden)."""
    d = descriptor
    batch = (d.batch,) if d.batch > 1 else ()
    shapes = {"a": (*batch, *((d.k, d.m) if d.trans_a else (d.m, d.k))),
              "b": (*batch, *((d.n, d.k) if d.trans_b else (d.k, d.n))),
              "c": (*batch, d.m, d.n), "bias": (d.n,)}
    dtypes = {"a": d.a_dtype, "b": d.b_dtype, "c": d.c_dtype, "bias": d.bias_dtype}
    tensors = {}
    for name in ("a", "b", "c", "bias"):
        override = overrides.get(name, {} if name != "bias" or d.bias_dtype != lib.MFA_DTYPE_NONE else NULL)
        if override is NULL:
            tensors[name] = None
        else:
            tensors[name] = FakeTensor(**{"shape": shapes[name], "dtype": dtypes[name], "data": ADDRESS[name],
                                          **override})
    return tensors


def case(id, expected, *names, desc=None, **tensors):
    return pytest.param(desc or {}, tensors, expected, names, id=id)


F16, BF16, F32, NONE = lib.MFA_DTYPE_F16, lib.MFA_DTYPE_BF16, lib.MFA_DTYPE_F32, lib.MFA_DTYPE_NONE

DESCRIPTOR_CASES = [
    case("m negative", "INVALID_ARGUMENT", "descriptor->m is -1", desc=dict(m=-1)),
    case("n negative", "INVALID_ARGUMENT", "descriptor->n is -5", desc=dict(n=-5)),
    case("k negative", "INVALID_ARGUMENT", "descriptor->k is -1", desc=dict(k=-1)),
    case("m 2^31", "INVALID_ARGUMENT", "descriptor->m", desc=dict(m=1 << 31)),
    case("batch 0", "INVALID_ARGUMENT", "descriptor->batch is 0", desc=dict(batch=0)),
    case("batch negative", "INVALID_ARGUMENT", "descriptor->batch is -2", desc=dict(batch=-2)),
    case("batch 65536", "INVALID_ARGUMENT", "descriptor->batch", desc=dict(batch=65536)),
    case("a_dtype none", "INVALID_ARGUMENT", "descriptor->a_dtype is 0", desc=dict(a_dtype=0, b_dtype=0)),
    case("a_dtype 4", "INVALID_ARGUMENT", "descriptor->a_dtype is 4", desc=dict(a_dtype=4, b_dtype=4)),
    case("a_dtype negative", "INVALID_ARGUMENT", "descriptor->a_dtype is -1", desc=dict(a_dtype=-1)),
    case("c_dtype 7", "INVALID_ARGUMENT", "descriptor->c_dtype is 7", desc=dict(c_dtype=7)),
    case("c_dtype none", "INVALID_ARGUMENT", "descriptor->c_dtype is 0", desc=dict(c_dtype=0)),
    case("a f16 b bf16", "UNSUPPORTED", "descriptor->b_dtype", desc=dict(b_dtype=BF16)),
    case("a f32 b f16", "UNSUPPORTED", "descriptor->b_dtype", desc=dict(a_dtype=F32)),
    case("bias bf16 for f16 c", "UNSUPPORTED", "descriptor->bias_dtype", desc=dict(bias_dtype=BF16)),
    case("bias f16 for f32 c", "UNSUPPORTED", "descriptor->bias_dtype", desc=dict(c_dtype=F32, bias_dtype=F16)),
    case("trans_a 2", "INVALID_ARGUMENT", "descriptor->trans_a is 2", desc=dict(trans_a=2)),
    case("trans_b -1", "INVALID_ARGUMENT", "descriptor->trans_b is -1", desc=dict(trans_b=-1)),
    case("activation 9", "INVALID_ARGUMENT", "descriptor->activation is 9", desc=dict(activation=9)),
    case("activation -1", "INVALID_ARGUMENT", "descriptor->activation is -1", desc=dict(activation=-1)),
    case("precision 3", "INVALID_ARGUMENT", "descriptor->precision is 3", desc=dict(precision=3)),
    case("ieee with f16", "UNSUPPORTED", "descriptor->precision", desc=dict(precision=lib.MFA_PRECISION_IEEE)),
    case("accurate with bf16", "UNSUPPORTED", "descriptor->precision",
         desc=dict(a_dtype=BF16, b_dtype=BF16, precision=lib.MFA_PRECISION_ACCURATE)),
    case("path 3", "INVALID_ARGUMENT", "descriptor->path is 3", desc=dict(path=3)),
    case("hopper with ieee f32", "UNSUPPORTED", "descriptor->path",
         desc=dict(a_dtype=F32, b_dtype=F32, c_dtype=F32, precision=lib.MFA_PRECISION_IEEE,
                   path=lib.MFA_GEMM_PATH_HOPPER)),
    case("schedule 3", "UNSUPPORTED", "descriptor->schedule is 3", desc=dict(schedule=3)),
    case("schedule -1", "UNSUPPORTED", "descriptor->schedule is -1", desc=dict(schedule=-1)),
    case("alpha nan", "INVALID_ARGUMENT", "alpha", desc=dict(alpha=math.nan)),
    case("beta inf", "INVALID_ARGUMENT", "beta", desc=dict(beta=math.inf)),
    case("header type", "INVALID_ARGUMENT", "descriptor->header.type",
         desc=dict(header_type=lib.MFA_STRUCT_PIPELINE_INFO)),
    case("header size 4", "INVALID_ARGUMENT", "descriptor->header.size", desc=dict(header_size=4)),
    # next may chain an mfa_gemm_tuning only (test_gemm_tiles.py); any other struct is refused by its type
    case("header next", "INVALID_ARGUMENT", "descriptor->header.next", desc=dict(header_next=NOT_A_TUNING)),
]

TENSOR_CASES = [
    # accepted
    case("compact", "SUCCESS"),
    case("padded row stride", "SUCCESS", a=dict(strides=(K + 8, 1)), c=dict(strides=(N + 1, 1))),
    case("transposes", "SUCCESS", desc=dict(trans_a=1, trans_b=1)),
    case("bias of c's dtype", "SUCCESS", desc=dict(bias_dtype=F16)),
    case("f32 bias for f16 c", "SUCCESS", desc=dict(bias_dtype=F32)),
    case("f32 everything", "SUCCESS", desc=dict(a_dtype=F32, b_dtype=F32, c_dtype=F32, bias_dtype=F32)),
    case("bf16 in, f32 out", "SUCCESS", desc=dict(a_dtype=BF16, b_dtype=BF16, c_dtype=F32)),
    case("batched, padded batch strides", "SUCCESS", desc=dict(batch=3),
         a=dict(strides=(M * K + 64, K, 1)), c=dict(strides=(M * (N + 2) + 5, N + 2, 1))),
    case("batched, rank-2 b broadcast", "SUCCESS", desc=dict(batch=3), b=dict(shape=(K, N))),
    case("batched, rank-2 a broadcast", "SUCCESS", desc=dict(batch=3), a=dict(shape=(M, K))),
    case("batched, batch stride 0 input", "SUCCESS", desc=dict(batch=3), a=dict(strides=(0, K, 1))),
    case("element-aligned offset", "SUCCESS", a=dict(byte_offset=2), c=dict(byte_offset=6)),
    case("pinned host memory", "SUCCESS", a=dict(device_type=lib.MFA_DEVICE_CUDA_HOST)),
    case("managed memory", "SUCCESS", b=dict(device_type=lib.MFA_DEVICE_CUDA_MANAGED)),
    case("another device id", "SUCCESS", c=dict(device_id=3)),
    case("single row, any row stride", "SUCCESS", desc=dict(m=1), a=dict(strides=(0, 1)), c=dict(strides=(5, 1))),
    case("c right after a", "SUCCESS", c=dict(data=ADDRESS["a"] + M * K * 2)),
    case("M = 0 with NULL data", "SUCCESS", desc=dict(m=0), a=dict(data=0), c=dict(data=0)),
    case("K = 0 with NULL data", "SUCCESS", desc=dict(k=0), a=dict(data=0), b=dict(data=0)),
    # shapes
    case("a wrong cols", "SHAPE_MISMATCH", "a.shape", f"[{M}, {K + 1}]", a=dict(shape=(M, K + 1))),
    case("b wrong rows", "SHAPE_MISMATCH", "b.shape", b=dict(shape=(K + 1, N))),
    case("c wrong rows", "SHAPE_MISMATCH", "c.shape", c=dict(shape=(M + 1, N))),
    case("a not stored transposed", "SHAPE_MISMATCH", "a.shape", desc=dict(trans_a=1), a=dict(shape=(M, K))),
    case("b not stored transposed", "SHAPE_MISMATCH", "b.shape", desc=dict(trans_b=1), b=dict(shape=(K, N))),
    case("a rank 1", "SHAPE_MISMATCH", "a.shape", a=dict(shape=(M * K,))),
    case("a ndim 4", "SHAPE_MISMATCH", "a.ndim is 4", a=dict(shape=(1, 1, M, K))),
    case("a ndim 0", "SHAPE_MISMATCH", "a.ndim is 0", a=dict(shape=(), ndim=0)),
    case("a negative extent", "SHAPE_MISMATCH", "a.shape[0] is -64", a=dict(shape=(-M, K))),
    case("a batch 2 of 3", "SHAPE_MISMATCH", "a.shape", desc=dict(batch=3), a=dict(shape=(2, M, K))),
    case("c rank 2 for batch 3", "SHAPE_MISMATCH", "c.shape", desc=dict(batch=3), c=dict(shape=(M, N))),
    case("bias wrong length", "SHAPE_MISMATCH", "bias.shape", desc=dict(bias_dtype=F32), bias=dict(shape=(N + 1,))),
    case("bias rank 2", "SHAPE_MISMATCH", "bias.shape", desc=dict(bias_dtype=F32), bias=dict(shape=(1, N))),
    # dtypes (mfa.h has no separate dtype status: a tensor that disagrees with the descriptor)
    case("a f32 for f16", "SHAPE_MISMATCH", "a.dtype", a=dict(dtype=F32)),
    case("b bf16 for f16", "SHAPE_MISMATCH", "b.dtype", b=dict(dtype=BF16)),
    case("c f16 for f32", "SHAPE_MISMATCH", "c.dtype", desc=dict(c_dtype=F32), c=dict(dtype=F16)),
    case("a lanes 2", "SHAPE_MISMATCH", "a.dtype", a=dict(lanes=2)),
    case("bias f16 for f32", "SHAPE_MISMATCH", "bias.dtype", desc=dict(bias_dtype=F32), bias=dict(dtype=F16)),
    # strides
    case("a column stride 2", "BAD_STRIDE", "a.strides[1] is 2", a=dict(strides=(2 * K, 2))),
    case("b column stride 0", "BAD_STRIDE", "b.strides[1] is 0", b=dict(strides=(N, 0))),
    case("a negative row stride", "BAD_STRIDE", "a has a negative stride", a=dict(strides=(-K, 1))),
    case("a negative batch stride", "BAD_STRIDE", "a has a negative stride", desc=dict(batch=3),
         a=dict(strides=(-M * K, K, 1))),
    case("a overlapping rows", "BAD_STRIDE", "a.strides[0] is 31", a=dict(strides=(K - 1, 1))),
    case("c overlapping rows", "BAD_STRIDE", "c.strides[0] is 0", c=dict(strides=(0, 1))),
    case("c overlapping batches", "BAD_STRIDE", "c.strides[0]", desc=dict(batch=3),
         c=dict(strides=(M * N - 1, N, 1))),
    case("c broadcast over the batch", "BAD_STRIDE", "c.strides[0] is 0", desc=dict(batch=3),
         c=dict(strides=(0, N, 1))),
    case("bias stride 2", "BAD_STRIDE", "bias.strides[0] is 2", desc=dict(bias_dtype=F32), bias=dict(strides=(2,))),
    # alignment
    case("a byte_offset 1", "MISALIGNED", "a.data + byte_offset", a=dict(byte_offset=1)),
    case("b odd address", "MISALIGNED", "b.data + byte_offset", b=dict(data=ADDRESS["b"] + 1)),
    case("f32 c on 2 bytes", "MISALIGNED", "c.data + byte_offset", desc=dict(c_dtype=F32), c=dict(byte_offset=2)),
    case("f32 bias on 2 bytes", "MISALIGNED", "bias.data", desc=dict(bias_dtype=F32), bias=dict(byte_offset=2)),
    # devices
    case("a in CPU memory", "INVALID_ARGUMENT", "a.device.device_type", "copy it to the GPU",
         a=dict(device_type=lib.MFA_DEVICE_CPU)),
    case("c in CPU memory", "INVALID_ARGUMENT", "c.device.device_type", "copy it to the GPU",
         c=dict(device_type=lib.MFA_DEVICE_CPU)),
    case("b unknown device type", "INVALID_ARGUMENT", "b.device.device_type is 99", b=dict(device_type=99)),
    # aliasing
    case("c is a", "INVALID_ARGUMENT", "c overlaps a", c=dict(data=ADDRESS["a"])),
    case("c inside b", "INVALID_ARGUMENT", "c overlaps b", c=dict(data=ADDRESS["b"] + 64)),
    case("a ends inside c", "INVALID_ARGUMENT", "c overlaps a", c=dict(data=ADDRESS["a"] + M * K * 2 - 2)),
    # missing and unexpected arguments
    case("a NULL", "INVALID_ARGUMENT", "a is NULL", a=NULL),
    case("b NULL", "INVALID_ARGUMENT", "b is NULL", b=NULL),
    case("c NULL", "INVALID_ARGUMENT", "c is NULL", c=NULL),
    case("bias NULL with a bias dtype", "INVALID_ARGUMENT", "bias is NULL", desc=dict(bias_dtype=F32), bias=NULL),
    case("bias without a bias dtype", "INVALID_ARGUMENT", "bias is given", "bias_dtype",
         bias=dict(shape=(N,), dtype=F16)),
    case("a.data NULL", "INVALID_ARGUMENT", "a.data is NULL", a=dict(data=0)),
    case("c.shape NULL", "INVALID_ARGUMENT", "c.shape is NULL", c=dict(shape_null=True)),
]


def _validate(descriptor, tensors):
    arguments = [tensors[name].struct if tensors[name] else ffi.NULL for name in ("a", "b", "c", "bias")]
    return lib.mfa_gemm_validate(descriptor, *arguments)


@pytest.mark.parametrize("desc, tensors, expected, names", DESCRIPTOR_CASES + TENSOR_CASES)
def test_validate(desc, tensors, expected, names):
    descriptor = make_descriptor(**desc)
    arguments = make_tensors(descriptor, tensors)
    before = [bytes(ffi.buffer(descriptor))] + [t.snapshot() for t in arguments.values() if t]
    assert_status(_validate(descriptor, arguments), expected, *names)
    after = [bytes(ffi.buffer(descriptor))] + [t.snapshot() for t in arguments.values() if t]
    assert after == before, "validation wrote into its arguments"


@pytest.mark.parametrize("desc, tensors, expected, names", DESCRIPTOR_CASES)
def test_compile_report_rejects_bad_descriptors_before_compiling(desc, tensors, expected, names):
    descriptor = make_descriptor(**desc)
    reports = ffi.new("mfa_kernel_report[]", 2)
    count = ffi.new("int32_t *", -7)
    before = bytes(ffi.buffer(reports))
    assert_status(lib.mfa_gemm_compile_report(descriptor, b"sm_90a", reports, 2, count), expected, *names)
    assert count[0] == -7 and bytes(ffi.buffer(reports)) == before


@pytest.mark.parametrize("arguments, expected, name", [
    (dict(m=-1), "INVALID_ARGUMENT", "descriptor->m is -1"),
    (dict(batch=0), "INVALID_ARGUMENT", "descriptor->batch is 0"),
    (dict(dtype="int8"), "INVALID_ARGUMENT", "^dtype:"),
    (dict(out_dtype="float64"), "INVALID_ARGUMENT", "^out_dtype:"),
    (dict(bias_dtype="bfloat16"), "UNSUPPORTED", "descriptor->bias_dtype"),
    (dict(activation="swish"), "INVALID_ARGUMENT", "^activation:"),
    (dict(precision="tf32"), "INVALID_ARGUMENT", "^precision:"),
    (dict(path="fastest"), "INVALID_ARGUMENT", "^path:"),
    (dict(precision="ieee"), "UNSUPPORTED", "descriptor->precision"),
    (dict(dtype="float32", precision="ieee", path="hopper"), "UNSUPPORTED", "descriptor->path"),
    (dict(path="hopper", arch="sm_80"), "UNSUPPORTED", "descriptor->path is HOPPER"),
    (dict(arch="compute_90"), "INVALID_ARGUMENT", "arch is \"compute_90\""),
])
def test_compile_report_argument_errors(arguments, expected, name):
    with pytest.raises(mfa_c.MFAError) as caught:
        mfa_c.compile_report(**{"arch": "sm_90a", **arguments})
    assert caught.value.status_name == f"MFA_STATUS_{expected}", str(caught.value)
    assert_names(caught.value.message, name)


# ================================================================================================
# CPU: every variant compiles for sm_90a without spills, within the register file and shared memory.

VARIANTS = mfa_c.gemm_variants()
SMEM_LIMIT = {"sm_90a": 227 * 1024, "sm_80": 163 * 1024}  # opt-in maximum per block: H100, A100


def variant_id(variant):
    trans = ("T" if variant["trans_a"] else "N") + ("T" if variant["trans_b"] else "N")
    activation = "" if variant["activation"] == "none" else f"-{variant['activation']}"
    return f"{variant['path']}-{variant['dtype']}-{variant['precision']}-{variant['out_dtype']}-{trans}{activation}"


def test_variant_list_covers_every_input_output_transpose_path_and_activation():
    count = ffi.new("int64_t *")
    assert_status(lib.mfa_gemm_variant_count(count), "SUCCESS")
    listed = [(v["path"], v["dtype"], v["precision"], v["out_dtype"], v["trans_a"], v["trans_b"], v["activation"])
              for v in VARIANTS]
    plain = {(path, dtype, precision, out, ta, tb, "none") for dtype, precision in INPUTS
             for path in paths_for(dtype, precision) for out in OUTPUTS for ta in (False, True) for tb in (False, True)}
    # each activation for every path, input and output, NN
    activated = {(path, dtype, precision, out, False, False, activation) for dtype, precision in INPUTS
                 for path in paths_for(dtype, precision) for out in OUTPUTS
                 for activation in ACTIVATIONS if activation != "none"}
    assert len(VARIANTS) == count[0] == len(listed) == 84 * 2
    assert len(set(listed)) == len(listed)
    assert set(listed) == plain | activated


def _threads_per_block(kernel):
    """The kernel's block size, from cuda/gemm.cuh (MFA_SM90_THREADS / MFA_SM80_THREADS); None outside a
    source tree."""
    header = REPO / "cuda" / "gemm.cuh"
    if not header.exists():
        return None
    macro = "MFA_SM90_THREADS" if "sm90" in kernel else "MFA_SM80_THREADS"
    match = re.search(rf"#define {macro} (\d+)", header.read_text())
    return int(match.group(1)) if match else None


@pytest.fixture(scope="session")
def warm_sm90a_cache(request):
    """Compiles the variants this session's compile tests will ask for, all at once on a thread pool
    (NVRTC runs concurrently; errors are left for the tests themselves to raise)."""
    indices = sorted({item.callspec.params["index"] for item in request.session.items
                      if getattr(item, "originalname", "") == "test_variant_compiles_for_sm90a"})

    def compile_one(index):
        with contextlib.suppress(mfa_c.MFAError):
            mfa_c.compile_report(arch="sm_90a", **VARIANTS[index])

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(compile_one, indices))


def check_reports(reports, arch):
    assert reports, "no kernels reported"
    limit = SMEM_LIMIT[arch]
    for report in reports:
        print(f"{report['variant']} {report['kernel']}: {report['registers']} registers, "
              f"{report['static_shared_bytes']} + {report['dynamic_shared_bytes']} B smem, "
              f"{report['stack_frame_bytes']} B stack, spills {report['spill_store_bytes']}/"
              f"{report['spill_load_bytes']} B, {report['compile_ms']:.0f} ms ({report['cache']})")
    for report in reports:
        name = f"{report['variant']} {report['kernel']}"
        assert report["spill_store_bytes"] == 0 and report["spill_load_bytes"] == 0, f"{name} spills"
        assert 0 < report["registers"] <= 255, name
        assert report["dynamic_shared_bytes"] <= limit, name
        assert report["static_shared_bytes"] + report["dynamic_shared_bytes"] <= limit, name
        threads = _threads_per_block(report["kernel"])
        if threads:  # registers are allocated per warp, 8 per thread at a time; 64K per SM
            assert -(-report["registers"] // 8) * 8 * threads <= 65536, f"{name}: the block exceeds the register file"


@pytest.mark.parametrize("index", range(len(VARIANTS)), ids=[variant_id(v) for v in VARIANTS])
def test_variant_compiles_for_sm90a(warm_sm90a_cache, index):
    variant = VARIANTS[index]
    reports = mfa_c.compile_report(arch="sm_90a", **variant)
    check_reports(reports, "sm_90a")
    hopper_kernels = {r["kernel"] for r in reports if "sm90" in r["kernel"]}
    expected = set()
    if variant["path"] == "hopper":
        expected = {"mfa_gemm_sm90_tf32"} if variant["dtype"] == "float32" else {"mfa_gemm_sm90"}
    assert hopper_kernels == expected, [r["kernel"] for r in reports]


def test_variant_names_are_distinct(warm_sm90a_cache):
    """Every descriptor variant compiles to its own module (the hopper ones add an sm90 kernel to the
    portable module of the same types and transposes)."""
    names = {(report["variant"], "sm90" in report["kernel"])
             for variant in VARIANTS for report in mfa_c.compile_report(arch="sm_90a", **variant)}
    # 4 inputs x 3 outputs x 4 transposes, and x 4 activations (NN)
    assert len({variant for variant, hopper in names if not hopper}) == 48 + 48
    # f16, bf16 and accurate fp32 inputs x 3 outputs x 4 transposes, and x 4 activations (NN)
    assert len({variant for variant, hopper in names if hopper}) == 36 + 36


def test_portable_variant_compiles_for_sm_80():
    reports = mfa_c.compile_report(arch="sm_80", dtype="float16", out_dtype="float32", trans_b=True)
    check_reports(reports, "sm_80")
    assert not [r for r in reports if "sm90" in r["kernel"]]


# ================================================================================================
# CPU: the package's float64 reference (used by `check`) against an independent one

ERF = np.vectorize(math.erf)


def sigmoid_np(z):
    """e^z / (e^z + 1) for z < 0, 1 / (1 + e^-z) otherwise: no overflow, no cancellation."""
    low, high = np.exp(np.minimum(z, 0.0)), np.exp(np.minimum(-z, 0.0))
    return low / (low + high)

REFERENCE_ACTIVATIONS_NP = {
    "none": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu_tanh": lambda x: x * sigmoid_np(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)),
    "gelu_erf": lambda x: 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0))),
    "silu": lambda x: x * sigmoid_np(x),
}


def numpy_reference(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None, bias=None, activation="none"):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = np.swapaxes(a, -1, -2) if trans_a else a
    b = np.swapaxes(b, -1, -2) if trans_b else b
    result = alpha * np.matmul(a, b)
    if beta:
        result = result + beta * np.asarray(c, np.float64)
    if bias is not None:
        result = result + np.asarray(bias, np.float64)
    return REFERENCE_ACTIVATIONS_NP[activation](result)


@pytest.mark.parametrize("activation", ACTIVATIONS + ["gelu", None])
def test_gemm_reference_matches_an_independent_float64_computation(rng, activation):
    a = rng.standard_normal((3, 13, 9)).astype(np.float32)
    b = rng.standard_normal((11, 9)).astype(np.float16)
    c = rng.standard_normal((3, 13, 11))
    bias = rng.standard_normal(11)
    got = mfa_c.gemm_reference(a, b, trans_a=False, trans_b=True, alpha=0.3, beta=-0.75, c=c, bias=bias,
                               activation=activation)
    name = {"gelu": "gelu_erf", None: "none"}.get(activation, activation)
    want = numpy_reference(a, b, False, True, 0.3, -0.75, c, bias, name)
    assert got.dtype == np.float64 and got.shape == (3, 13, 11)
    assert rel_error(got, want) < 1e-13


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu_erf", "silu"])
def test_gemm_reference_keeps_relative_accuracy_in_the_activations_tails(activation):
    """Element by element, where the activation is a tiny fraction of x: a reference that cancels there
    (0.5 (1 + tanh u) once) is quantized to multiples of 1e-16 and fails check's 1 x 1 x 1 GEMMs."""
    x = np.array([-40.0, -20.0, -12.0, -8.0, -6.5, -3.0, 0.5, 4.0])
    if activation == "gelu_erf":
        x = x[x > -30]  # math.erfc's own relative accuracy holds where its result is normal
        want = np.array([0.5 * v * math.erfc(-v / math.sqrt(2.0)) for v in x])
    else:
        want = REFERENCE_ACTIVATIONS_NP[activation](x)
    got = mfa_c.gemm_reference(x.reshape(-1, 1), np.ones((1, 1)), activation=activation)[:, 0]
    assert np.all(np.abs(got - want) <= 1e-12 * np.abs(want)), (got, want)


# ================================================================================================
# GPU: results against float64 references. Inputs are quantized to their dtype first, and the
# reference is computed (in float64, on the GPU) from exactly those values. Outputs start as NaN.

GUARD = 7.0  # fills the memory around a padded output: a write outside the matrix changes it


class Inputs:
    """Random device tensors from the test's rng, in a few memory layouts."""

    def __init__(self, torch, rng):
        self.torch = torch
        self.generator = torch.Generator(device="cuda")
        self.generator.manual_seed(int(rng.integers(2 ** 62)))

    def randn(self, shape, dtype, layout="compact", scale=1.0):
        torch = self.torch
        target = getattr(torch, dtype)

        def fresh(size):
            return (torch.randn(size, generator=self.generator, device="cuda", dtype=torch.float32) * scale).to(target)

        *batch, rows, cols = shape
        if layout == "compact":
            return fresh(tuple(shape))
        if layout == "padded":  # 16-byte rows (fast paths), extra rows between batches
            ld = -(-cols // 8) * 8 + 8
            return fresh((*batch, rows + 3, ld))[..., :rows, :cols]
        if layout == "misaligned":  # one element past a 16-byte boundary, odd leading dimension
            ld = cols + 1 if cols % 2 == 0 else cols + 2
            matrix = rows * ld
            flat = fresh(math.prod(batch) * matrix + 1)
            strides = (*([matrix] if batch else []), ld, 1)
            view = flat[1:].as_strided(tuple(shape), strides)
            assert view.data_ptr() % 16 != 0
            return view
        raise ValueError(layout)

    def operands(self, m, n, k, dtype, trans, layout="compact", batch=(), scale=1.0):
        shape_a = (*batch, k, m) if trans[0] == "T" else (*batch, m, k)
        shape_b = (*batch, n, k) if trans[1] == "T" else (*batch, k, n)
        return self.randn(shape_a, dtype, layout, scale), self.randn(shape_b, dtype, layout, scale)


def poisoned_output(torch, shape, dtype, layout="compact"):
    """(c, storage): c all NaN; with layout "padded", c sits inside a larger GUARD-filled storage whose rows
    are 16-byte multiples (as TMA stores need), at least one element wider than c's."""
    target = getattr(torch, dtype)
    if layout != "padded":
        c = torch.full(tuple(shape), math.nan, dtype=target, device="cuda")
        return c, c
    *batch, rows, cols = shape
    per_16_bytes = 128 // torch.finfo(target).bits
    storage = torch.full((*batch, rows + 2, (cols // per_16_bytes + 1) * per_16_bytes), GUARD, dtype=target,
                         device="cuda")
    c = storage[..., :rows, :cols]
    c.fill_(math.nan)
    return c, storage


def assert_guard_intact(torch, storage, c):
    if storage is c:
        return
    outside = torch.ones(storage.shape, dtype=torch.bool, device=storage.device)
    outside[..., :c.shape[-2], :c.shape[-1]] = False
    assert bool((storage[outside] == GUARD).all()), "the GEMM wrote outside its output"


def torch_reference(torch, a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None, bias=None,
                    activation="none"):
    op_a = a.double().transpose(-1, -2) if trans_a else a.double()
    op_b = b.double().transpose(-1, -2) if trans_b else b.double()
    result = alpha * torch.matmul(op_a, op_b)
    if beta:
        result = result + beta * c.double()
    if bias is not None:
        result = result + bias.double()
    activations = {
        "none": lambda x: x,
        "relu": lambda x: torch.clamp_min(x, 0.0),
        # 0.5 (1 + tanh(u)) = sigmoid(2u): without the cancellation that zeroes float64's tail below x = -6
        "gelu_tanh": lambda x: x * torch.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)),
        "gelu_erf": lambda x: 0.5 * x * torch.erfc(-x / math.sqrt(2.0)),  # 1 + erf: the same cancellation
        "silu": lambda x: x * torch.sigmoid(x),
    }
    return activations[{"gelu": "gelu_erf", None: "none"}.get(activation, activation)](result)


def skip_unless_hopper_applies(ctx, path):
    if path == "hopper" and ctx.arch != "sm_90a":
        pytest.skip(f"the hopper path needs an sm_90a GPU; this one compiles for {ctx.arch}")


def run_and_check(torch, a, b, *, dtype, precision, out_dtype, trans="NN", alpha=1.0, beta=0.0, c0=None,
                  bias=None, activation="none", path="auto", layout="compact", context_note="", tile_n=None,
                  cluster_m=None, schedule="auto"):
    """Runs mfa_c.gemm into a NaN-poisoned (or, for beta != 0, a copy of c0) output, checks it is written
    in place, finite, within tolerance of the float64 reference, and nothing around it changed."""
    shape = (*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]),
             a.shape[-1] if trans[0] == "T" else a.shape[-2], b.shape[-2] if trans[1] == "T" else b.shape[-1])
    c, storage = poisoned_output(torch, shape, out_dtype, layout)
    if beta:
        c.copy_(c0)  # c is an input too
    out = mfa_c.gemm(a, b, trans_a=trans[0] == "T", trans_b=trans[1] == "T", alpha=alpha, beta=beta, c=c,
                     bias=bias, activation=activation, precision=precision, path=path, schedule=schedule,
                     tile_n=tile_n, cluster_m=cluster_m)
    torch.cuda.synchronize()
    assert out is c or out.data_ptr() == c.data_ptr(), "the result was not written into c"
    assert out.dtype == getattr(torch, out_dtype)
    reference = torch_reference(torch, a, b, trans[0] == "T", trans[1] == "T", alpha, beta, c0, bias, activation)
    error = rel_error(out, reference)
    bound = tolerance(dtype, precision, out_dtype)
    print(f"relative error {error:.3g} (bound {bound:g}) {context_note}")
    assert not bool(torch.isnan(out).any()), f"NaN in the result {context_note}"
    assert error <= bound, f"relative error {error:.3g} > {bound:g} {context_note}"
    assert_guard_intact(torch, storage, c)
    return out


def variant_params():
    params = []
    for (dtype, precision), input_id in zip(INPUTS, INPUT_IDS):
        for out_dtype in OUTPUTS:
            for trans in TRANSPOSES:
                for path in paths_for(dtype, precision):
                    for layout in ("compact", "padded"):
                        params.append(pytest.param(dtype, precision, out_dtype, trans, path, layout,
                                                   id=f"{input_id}-{out_dtype}-{trans}-{path}-{layout}"))
    return params


@pytest.mark.parametrize("dtype, precision, out_dtype, trans, path, layout", variant_params())
def test_every_variant_at_an_odd_shape(ctx, torch_cuda, rng, dtype, precision, out_dtype, trans, path, layout):
    skip_unless_hopper_applies(ctx, path)
    torch = torch_cuda
    m, n, k = 127, 255, 1000
    inputs = Inputs(torch, rng)
    a, b = inputs.operands(m, n, k, dtype, trans, layout)
    activation = str(rng.choice(ACTIVATIONS))
    bias_dtype = str(rng.choice([out_dtype, "float32"]))
    bias = inputs.randn((1, n), bias_dtype)[0]
    run_and_check(torch, a, b, dtype=dtype, precision=precision, out_dtype=out_dtype, trans=trans,
                  alpha=1 / math.sqrt(k), bias=bias, activation=activation, path=path, layout=layout,
                  context_note=f"(activation {activation}, {bias_dtype} bias)")


@pytest.mark.parametrize("activation", ACTIVATIONS + ["gelu"])
@pytest.mark.parametrize("dtype, precision, out_dtype", [("float16", "default", "float16"),
                                                         ("bfloat16", "default", "float32"),
                                                         ("float32", "accurate", "float32")])
def test_every_activation(ctx, torch_cuda, rng, activation, dtype, precision, out_dtype):
    torch = torch_cuda
    m, n, k = 200, 136, 320
    inputs = Inputs(torch, rng)
    a, b = inputs.operands(m, n, k, dtype, "NN")
    bias = inputs.randn((1, n), "float32")[0]
    # alpha = 1/sqrt(k) keeps the pre-activations near N(0, 2), where the activations differ most
    run_and_check(torch, a, b, dtype=dtype, precision=precision, out_dtype=out_dtype, alpha=1 / math.sqrt(k),
                  bias=bias, activation=activation)


def size_params():
    params = []
    squares = [(s, s, s) for s in (1, 7, 127, 255, 1000, 1023, 4096)]
    others = [(1, 4096, 7), (1000, 7, 1023), (7, 1000, 4096), (4096, 1, 255)]
    for m, n, k in squares + others:
        for (dtype, precision), input_id in zip(INPUTS, INPUT_IDS):
            if (m, n, k) == (4096, 4096, 4096) and input_id not in ("f16", "f32acc"):
                continue
            for path in paths_for(dtype, precision):
                params.append(pytest.param(m, n, k, dtype, precision, path, id=f"{m}x{n}x{k}-{input_id}-{path}"))
    return params


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("out_dtype", OUTPUTS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_single_element_with_every_epilogue_term(ctx, torch_cuda, rng, dtype, out_dtype, path):
    """1 x 1 x 1 GEMMs, each term of the epilogue in play: one element leaves no room in a norm for an
    error to hide (`python -m mfa_c check` once caught bf16 -> f16 here). The tolerance grows by the
    result's conditioning, as check's does: terms that cancel to near 0 once missed fp32's 1e-5 (1.9e-5)."""
    from mfa_c import cli

    skip_unless_hopper_applies(ctx, path)
    torch = torch_cuda
    inputs = Inputs(torch, rng)
    keywords = {"trans_a": False, "trans_b": False, "alpha": 1.25, "beta": 0.5, "activation": "gelu_tanh"}
    for trial in range(16):
        a, b = inputs.operands(1, 1, 1, dtype, "NN")
        c0, bias = inputs.randn((1, 1), out_dtype), inputs.randn((1, 1), out_dtype)[0]
        c = c0.clone()
        out = mfa_c.gemm(a, b, c=c, bias=bias, path=path, **keywords)
        torch.cuda.synchronize()
        operands = {name: value.double().cpu().numpy() for name, value in dict(a=a, b=b, c=c0, bias=bias).items()}
        pre = mfa_c.gemm_reference(**operands, **{**keywords, "activation": None})
        reference = mfa_c.gemm_reference(**operands, **keywords)
        conditioning = cli._conditioning(operands, keywords, pre, reference)
        terms = dict(a=a.item(), b=b.item(), c=c0.item(), bias=bias.item(), ours=out.item(), ref=reference.item(),
                     conditioning=conditioning)
        # a result near zero may round to a subnormal of the output type: its own rounding is allowed
        rounding = rel_error(torch.from_numpy(reference).to(out.dtype), reference)
        bound = tolerance(dtype, "default", out_dtype) * conditioning + 2 * rounding
        assert rel_error(out, reference) <= bound, (trial, terms)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("activation, xs", [
    # results down to ~1e-33, normal fp32 numbers; -6.4 once came out 7.6e-5 off (a fast exponential)
    ("gelu_tanh", (-9.0, -8.0, -6.3984375, -2.0, 0.5, 3.0)),
    ("silu", (-75.0, -40.0, -20.0, -10.0, 0.5, 20.0)),
    # 1 + erff(x / sqrt 2) gave 0 below x = -5.4 and 4.7e-2 at x = -5
    ("gelu_erf", (-9.0, -6.0, -5.0, -4.0, -2.0, 0.5, 3.0)),
])
def test_activations_keep_fp32_accuracy_in_their_tails(ctx, torch_cuda, activation, xs, path):
    """act(x) for exact fp16 pre-activations x (a = x, b = 1) into fp32: relative error within fp32's
    tolerance where the result is a tiny fraction of x (no cancellation, no fast-exponential error)."""
    skip_unless_hopper_applies(ctx, path)
    torch = torch_cuda
    a = torch.tensor(xs, dtype=torch.float16, device="cuda").reshape(-1, 1)
    b = torch.ones((1, 8), dtype=torch.float16, device="cuda")
    c = torch.full((len(xs), 8), math.nan, dtype=torch.float32, device="cuda")
    mfa_c.gemm(a, b, c=c, activation=activation, path=path)
    torch.cuda.synchronize()
    reference = torch_reference(torch, a, b, activation=activation)
    error = ((c.double() - reference).abs() / reference.abs()).max().item()
    assert error <= tolerance("float16", "default", "float32"), (activation, error)


@pytest.mark.parametrize("m, n, k, dtype, precision, path", size_params())
def test_sizes(ctx, torch_cuda, rng, m, n, k, dtype, precision, path):
    skip_unless_hopper_applies(ctx, path)
    torch = torch_cuda
    a, b = Inputs(torch, rng).operands(m, n, k, dtype, "NN")
    run_and_check(torch, a, b, dtype=dtype, precision=precision, out_dtype=dtype, path=path)


@pytest.mark.parametrize("mode", ["padded", "rank-2 b", "rank-2 a"])
@pytest.mark.parametrize("trans", ["NN", "TT", "TN"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype, precision", INPUTS, ids=INPUT_IDS)
def test_batched(ctx, torch_cuda, rng, mode, trans, path, dtype, precision):
    if path not in paths_for(dtype, precision):
        pytest.skip("IEEE fp32 runs on the portable path only")
    skip_unless_hopper_applies(ctx, path)
    torch = torch_cuda
    m, n, k, batch = 67, 45, 129, 3
    inputs = Inputs(torch, rng)
    layout = "padded" if mode == "padded" else "compact"
    a, b = inputs.operands(m, n, k, dtype, trans, layout, batch=(batch,))
    if mode == "rank-2 b":
        b = b[1]
    elif mode == "rank-2 a":
        a = a[2]
    out = run_and_check(torch, a, b, dtype=dtype, precision=precision, out_dtype=dtype, trans=trans,
                        path=path, layout=layout, bias=inputs.randn((1, n), dtype)[0], activation="relu")
    assert tuple(out.shape) == (batch, m, n)


@pytest.mark.parametrize("out_dtype", OUTPUTS)
@pytest.mark.parametrize("dtype, precision", INPUTS, ids=INPUT_IDS)
def test_beta_accumulates_into_c_in_place(ctx, torch_cuda, rng, out_dtype, dtype, precision):
    torch = torch_cuda
    m, n, k = 127, 255, 100
    inputs = Inputs(torch, rng)
    a, b = inputs.operands(m, n, k, dtype, "NT")
    c0 = inputs.randn((m, n), out_dtype)
    bias = inputs.randn((1, n), out_dtype)[0]
    activation = str(rng.choice(ACTIVATIONS))
    run_and_check(torch, a, b, dtype=dtype, precision=precision, out_dtype=out_dtype, trans="NT", alpha=-1.5,
                  beta=0.5, c0=c0, bias=bias, activation=activation, context_note=f"(activation {activation})")


@pytest.mark.parametrize("beta, with_bias", [(0.0, False), (0.0, True), (0.5, False), (0.5, True)])
@pytest.mark.parametrize("out_dtype", OUTPUTS)
@pytest.mark.parametrize("path", PATHS)
def test_k_zero_gives_the_epilogue_alone(ctx, torch_cuda, rng, beta, with_bias, out_dtype, path):
    skip_unless_hopper_applies(ctx, path)
    torch = torch_cuda
    m, n = 64, 72
    inputs = Inputs(torch, rng)
    a = torch.empty((m, 0), dtype=torch.float16, device="cuda")
    b = torch.empty((0, n), dtype=torch.float16, device="cuda")
    c0 = inputs.randn((m, n), out_dtype) if beta else None
    bias = inputs.randn((1, n), out_dtype)[0] if with_bias else None
    run_and_check(torch, a, b, dtype="float16", precision="default", out_dtype=out_dtype, beta=beta, c0=c0,
                  bias=bias, activation="silu", path=path)


@pytest.mark.parametrize("m, n", [(0, 64), (64, 0), (0, 0)])
def test_empty_output_is_a_no_op(ctx, torch_cuda, rng, m, n):
    torch = torch_cuda
    k = 32
    inputs = Inputs(torch, rng)
    a, b = inputs.randn((m, k), "float16"), inputs.randn((k, n), "float16")
    storage = torch.full((m + 3, n + 3), GUARD, dtype=torch.float16, device="cuda")
    c = storage[:m, :n]
    bias = inputs.randn((1, n), "float16")[0] if n else torch.empty(0, dtype=torch.float16, device="cuda")
    out = mfa_c.gemm(a, b, c=c, beta=0.5, bias=bias, activation="relu")
    torch.cuda.synchronize()
    assert out.data_ptr() == c.data_ptr() and tuple(out.shape) == (m, n)
    assert bool((storage == GUARD).all())
    fresh = mfa_c.gemm(a, b)
    assert tuple(fresh.shape) == (m, n) and fresh.dtype == torch.float16


@pytest.mark.parametrize("trans", TRANSPOSES)
@pytest.mark.parametrize("dtype, precision", INPUTS, ids=INPUT_IDS)
def test_misaligned_operands_are_still_correct(ctx, torch_cuda, rng, trans, dtype, precision):
    """Element-aligned but not 16-byte aligned pointers and odd leading dimensions: the scalar kernel."""
    torch = torch_cuda
    m, n, k = 127, 255, 300
    a, b = Inputs(torch, rng).operands(m, n, k, dtype, trans, "misaligned")
    run_and_check(torch, a, b, dtype=dtype, precision=precision, out_dtype=dtype, trans=trans)


@pytest.mark.parametrize("which", ["a", "b", "both", "batched"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_transposed_views_work_without_copies(ctx, torch_cuda, rng, which, dtype):
    torch = torch_cuda
    m, n, k = 257, 129, 1030
    inputs = Inputs(torch, rng)
    batch = (2,) if which == "batched" else ()
    # Stored transposed, passed as untransposed views (unit stride on the second-to-last dimension).
    a_stored, b_stored = inputs.operands(m, n, k, dtype, "TT", batch=batch)
    a = a_stored.transpose(-1, -2) if which in ("a", "both", "batched") else a_stored.transpose(-1, -2).contiguous()
    b = b_stored.transpose(-1, -2) if which in ("b", "both", "batched") else b_stored.transpose(-1, -2).contiguous()
    c, _ = poisoned_output(torch, (*batch, m, n), dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    allocated = torch.cuda.memory_allocated()
    out = mfa_c.gemm(a, b, c=c)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - allocated
    assert extra < min(a.numel(), b.numel()) * a.element_size() // 2, f"{extra} bytes allocated: a copy was made"
    assert out.data_ptr() == c.data_ptr()
    error = rel_error(out, torch_reference(torch, a, b))
    assert error <= tolerance(dtype, "default", dtype), error


class DLPackOnly:
    """A device array that speaks DLPack alone (as JAX's do): mfa_c must read its DLTensor as is."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __dlpack__(self, stream=None):
        return self.tensor.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_dlpack_operands_are_read_in_place(ctx, torch_cuda, rng, dtype):
    torch = torch_cuda
    a_stored, b = Inputs(torch, rng).operands(130, 70, 257, dtype, "TN")
    a = a_stored.transpose(-1, -2)  # a strided view: the capsule's strides must be honoured
    c, _ = poisoned_output(torch, (130, 70), dtype)
    out = mfa_c.gemm(DLPackOnly(a), DLPackOnly(b), c=DLPackOnly(c))
    torch.cuda.synchronize()
    assert isinstance(out, DLPackOnly)
    error = rel_error(c, torch_reference(torch, a, b))
    assert error <= tolerance(dtype, "default", dtype), error


@pytest.mark.parametrize("out_dtype", ["float32", "torch.float32", "numpy.float32", None])
def test_new_output_tensor(ctx, torch_cuda, rng, out_dtype):
    torch = torch_cuda
    a, b = Inputs(torch, rng).operands(33, 65, 40, "float16", "NN")
    spelled = {"torch.float32": torch.float32, "numpy.float32": np.float32}.get(out_dtype, out_dtype)
    out = mfa_c.gemm(a, b, out_dtype=spelled)
    torch.cuda.synchronize()
    want = torch.float16 if out_dtype is None else torch.float32
    assert isinstance(out, torch.Tensor) and out.device == a.device and out.dtype == want
    assert tuple(out.shape) == (33, 65)
    error = rel_error(out, torch_reference(torch, a, b))
    assert error <= tolerance("float16", "default", str(want).split(".")[1]), error


def test_gemm_uses_torchs_current_stream(ctx, torch_cuda, rng):
    """With torch's current stream a side stream, the GEMM must run there: while the default stream is
    kept busy, a copy of c made on the side stream right after the GEMM sees its result, not the NaN."""
    torch = torch_cuda
    if not hasattr(torch.cuda, "_sleep"):
        pytest.skip("torch.cuda._sleep is not available to keep the default stream busy")
    a, b = Inputs(torch, rng).operands(512, 512, 512, "float16", "NN")
    stream = torch.cuda.Stream()
    c, _ = poisoned_output(torch, (512, 512), "float16")
    torch.cuda.synchronize()
    torch.cuda._sleep(100_000_000)  # on the default stream: a GEMM wrongly queued there would wait
    with torch.cuda.stream(stream):
        mfa_c.gemm(a, b, c=c)
        result = c.clone()
    torch.cuda.synchronize()
    assert rel_error(result, torch_reference(torch, a, b)) <= tolerance("float16", "default", "float16")


@contextlib.contextmanager
def fp32_matmul_without_tf32(torch):
    """torch.matmul in true fp32 (torch.backends.cuda.matmul.allow_tf32 = False)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("size", [1024, 4096])
def test_fp32_accurate_is_as_accurate_as_cublas_fp32(ctx, torch_cuda, rng, size):
    """3xTF32 must be no worse than cuBLAS's plain fp32 on the same inputs (5% margin: at these sizes the
    ratio of the two errors hardly moves from one seed to the next)."""
    torch = torch_cuda
    a, b = Inputs(torch, rng).operands(size, size, size, "float32", "NN")
    reference = torch_reference(torch, a, b)
    c, _ = poisoned_output(torch, (size, size), "float32")
    ours = rel_error(mfa_c.gemm(a, b, c=c, precision="accurate"), reference)
    with fp32_matmul_without_tf32(torch):
        theirs = rel_error(torch.matmul(a, b), reference)
    print(f"{size}^3 fp32: mfa accurate {ours:.3g}, torch.matmul (no TF32) {theirs:.3g}, ratio {ours / theirs:.3f}")
    assert ours <= tolerance("float32", "accurate", "float32")
    assert ours <= 1.05 * theirs


# ------------------------------------------------------------------------------------------------
# numpy inputs (no torch needed)


@pytest.mark.parametrize("layout", ["contiguous", "transposed view", "strided"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_numpy_inputs_give_numpy_outputs(ctx, rng, layout, dtype):
    m, n, k = 70, 90, 130
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    if layout == "transposed view":
        a = np.ascontiguousarray(a.T).T
    elif layout == "strided":
        b = np.repeat(b, 2, axis=1)[:, ::2]
    assert layout == "contiguous" or not (a.flags.c_contiguous and b.flags.c_contiguous)
    bias = rng.standard_normal(n).astype(np.float32)
    out = mfa_c.gemm(a, b, bias=bias, alpha=0.1, activation="gelu_tanh")
    assert isinstance(out, np.ndarray) and out.dtype == np.dtype(dtype) and out.shape == (m, n)
    error = rel_error(out, numpy_reference(a, b, alpha=0.1, bias=bias, activation="gelu_tanh"))
    assert error <= tolerance(dtype, "default", dtype), error


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_numpy_output_written_in_place(ctx, rng, beta):
    m, n, k = 33, 17, 65
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c = c0.copy() if beta else np.full((m, n), np.nan, np.float32)
    out = mfa_c.gemm(a, b, c=c, beta=beta, alpha=-1.5)
    assert out is c
    error = rel_error(c, numpy_reference(a, b, alpha=-1.5, beta=beta, c=c0))
    assert error <= tolerance("float32", "default", "float32"), error


def test_numpy_batched_with_broadcast(ctx, rng):
    a = rng.standard_normal((3, 20, 40)).astype(np.float16)
    b = rng.standard_normal((40, 24)).astype(np.float16)
    out = mfa_c.gemm(a, b)
    assert out.shape == (3, 20, 24) and out.dtype == np.float16
    assert rel_error(out, numpy_reference(a, b)) <= tolerance("float16", "default", "float16")


# ------------------------------------------------------------------------------------------------
# Pipelines, dispatch, and errors on a GPU


def test_pipeline_info_reports_the_path(ctx):
    hopper_here = ctx.arch == "sm_90a"
    cases = [(dict(dtype="float16"), "hopper" if hopper_here else "portable"),
             (dict(dtype="bfloat16", trans_a=True), "hopper" if hopper_here else "portable"),
             (dict(dtype="float16", path="portable"), "portable"),
             (dict(dtype="float32"), "hopper" if hopper_here else "portable"),
             (dict(dtype="float32", precision="ieee"), "portable")]
    for fields, expected in cases:
        with mfa_c.GemmPipeline(256, 256, 256, context=ctx, **fields) as pipeline:
            info = pipeline.info
            assert info["path"] == expected, (fields, info)
            assert set(info) >= {"variant", "path", "schedule", "cache", "workspace_bytes", "compile_ms"}
            assert info["variant"] and info["cache"] in ("compiled", "memory", "disk") and info["compile_ms"] >= 0
    if not hopper_here:
        with pytest.raises(mfa_c.MFAError) as caught:
            mfa_c.GemmPipeline(256, 256, 256, dtype="float16", path="hopper", context=ctx)
        assert caught.value.status == lib.MFA_STATUS_UNSUPPORTED and "path" in caught.value.message


DISPATCH_CASES = ["f16 aligned auto", "f16 aligned portable", "f16 misaligned", "f32 aligned", "f32 aligned portable",
                  "f16 K=0"]


def dispatch_call(torch, case, inputs):
    """The gemm call of a dispatch case: 256 x 256 x (256 or 0), its dtype, layout and path from its name."""
    dtype = "float32" if case.startswith("f32") else "float16"
    layout = "misaligned" if "misaligned" in case else "padded"
    k = 0 if "K=0" in case else 256
    a, b = inputs.operands(256, 256, k, dtype, "NN", layout)
    c, _ = poisoned_output(torch, (256, 256), dtype)
    path = "portable" if "portable" in case else "auto"
    return lambda: mfa_c.gemm(a, b, c=c, path=path)


# Run by launched_kernels in a subprocess: torch's profiler (CUPTI) leaves an exit handler behind that
# aborted 4 of 12 heavily loaded test processes at exit ("free(): invalid pointer" in
# libkineto::callback_switchboard, under cuDevicePrimaryCtxRelease), after their tests had passed. The
# child prints its findings and leaves by os._exit, before any exit handler runs.
_PROFILE_DISPATCH = """
import json, os, sys
import numpy as np, torch
from torch.profiler import ProfilerActivity, profile
sys.path.insert(0, sys.argv[1])
from test_gemm import DISPATCH_CASES, Inputs, dispatch_call
inputs = Inputs(torch, np.random.default_rng(int(sys.argv[2])))
calls = {case: dispatch_call(torch, case, inputs) for case in DISPATCH_CASES}
found = {}
for case, call in calls.items():
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        torch.ones(1024, device="cuda").mul_(2)  # a kernel of torch's own, so that the profiler is known to work
        call()
        torch.cuda.synchronize()
    found[case] = sorted({event.key for event in profiler.key_averages()})
print("KERNELS " + json.dumps(found), flush=True)
os._exit(0)
"""
_launched = {}


def launched_kernels(runner, rng, case):
    """The names of the mfa_ kernels the dispatch case launched (torch's profiler in a subprocess), or skips
    where the profiler records no CUDA kernel."""
    if not _launched:
        result = runner.run("-c", _PROFILE_DISPATCH, str(REPO / "tests"), str(int(rng.integers(2 ** 62))), check=True)
        lines = [line for line in result.stdout.splitlines() if line.startswith("KERNELS ")]
        assert lines, f"no kernel list from the profiling subprocess\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        _launched.update(json.loads(lines[-1][len("KERNELS "):]))
    names = _launched[case]
    if not any("elementwise" in name.lower() or "mul" in name.lower() for name in names):
        pytest.skip("torch's profiler recorded no CUDA kernels here")
    return {name for name in names if name.startswith("mfa_")}


@pytest.mark.parametrize("case", DISPATCH_CASES)
def test_dispatch_picks_the_fastest_legal_kernel(ctx, torch_cuda, rng, shared_cache, case):
    kernels = launched_kernels(shared_cache, rng, case)
    if "misaligned" in case:
        expected = "mfa_gemm_sm80_scalar"
    elif ctx.arch == "sm_90a" and case == "f16 aligned auto":
        expected = "mfa_gemm_sm90"
    elif ctx.arch == "sm_90a" and case == "f32 aligned":
        expected = "mfa_gemm_sm90_tf32"
    else:
        expected = "mfa_gemm_sm80_vec"
    assert kernels == {expected}


def test_gemm_argument_errors(ctx, torch_cuda, rng):
    torch = torch_cuda
    a, b = Inputs(torch, rng).operands(64, 32, 48, "float16", "NN")
    wrong_c = torch.empty((64, 33), dtype=torch.float16, device="cuda")
    errors = {
        "bad activation": (lambda: mfa_c.gemm(a, b, activation="swish"), "INVALID_ARGUMENT", "^activation:"),
        "list input": (lambda: mfa_c.gemm([[1.0]], b), "INVALID_ARGUMENT", "^a:"),
        "beta without c": (lambda: mfa_c.gemm(a, b, beta=1.0), "INVALID_ARGUMENT", "^c:"),
        "inner dims differ": (lambda: mfa_c.gemm(a, b[:40]), "SHAPE_MISMATCH", "b.shape"),
        # a and b must share a dtype: b disagrees with the descriptor a's dtype implies
        "mixed dtypes": (lambda: mfa_c.gemm(a, b.float()), "SHAPE_MISMATCH", "b.dtype"),
        "rank 4": (lambda: mfa_c.gemm(a[None, None], b), "INVALID_ARGUMENT", "^a:"),
        "no unit stride": (lambda: mfa_c.gemm(torch.cat([a, a], 1)[:, ::2], b), "BAD_STRIDE", "a.strides[1] is 2"),
        "CPU tensor": (lambda: mfa_c.gemm(a.cpu(), b), "INVALID_ARGUMENT", "^a:"),
        "c of the wrong shape": (lambda: mfa_c.gemm(a, b, c=wrong_c), "SHAPE_MISMATCH", "c.shape"),
        "f16 with ieee": (lambda: mfa_c.gemm(a, b, precision="ieee"), "UNSUPPORTED", "descriptor->precision"),
        "c aliasing a": (lambda: mfa_c.gemm(a[:, :32], b[:32], c=a[:, :32]), "INVALID_ARGUMENT", "c overlaps a"),
    }
    for label, (call, expected, name) in errors.items():
        with pytest.raises(mfa_c.MFAError) as caught:
            call()
        assert caught.value.status_name == f"MFA_STATUS_{expected}", f"{label}: {caught.value}"
        assert_names(caught.value.message, name)


def test_pipeline_encode_checks_its_tensors(ctx, torch_cuda, rng):
    torch = torch_cuda
    inputs = Inputs(torch, rng)
    pipeline = mfa_c.GemmPipeline(64, 32, 48, dtype="float16", context=ctx)
    a, b = inputs.operands(64, 32, 48, "float16", "NN")
    c, _ = poisoned_output(torch, (64, 32), "float16")
    pipeline.encode(a, b, c)
    torch.cuda.synchronize()
    assert rel_error(c, torch_reference(torch, a, b)) <= tolerance("float16", "default", "float16")
    bad = {"a.shape": (a[:, :40], b, c), "c.dtype": (a, b, c.float()), "^a:": (a.cpu().numpy(), b, c)}
    for name, arguments in bad.items():
        with pytest.raises(mfa_c.MFAError) as caught:
            pipeline.encode(*arguments)
        assert_names(caught.value.message, name)
    pipeline.close()
