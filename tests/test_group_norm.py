"""Group normalization: descriptor and tensor validation (CPU), NVRTC compilation of every variant (CPU),
the one-pass plan (CPU), and forward/backward against float64 references on the GPU (torch; numpy
in/out too), with every plan the host can choose forced through MFA_GN_CLUSTER."""

import math

import numpy as np
import pytest

import mfa_c
from mfa_c._tensors import DTYPES, TensorView
from mfa_c.gemm import _float64
from mfa_c.group_norm import TOLERANCES, _layout_strides, group_norm_band, group_norm_plan, group_norm_validate
from conftest import rel_error

DTYPE_NAMES = ["float16", "bfloat16", "float32"]
LAYOUTS = ["nchw", "nhwc"]
ACTIVATIONS = [None, "silu", "gelu", "gelu_tanh"]

# ================================================================================================
# CPU: validation. Tensors describe made-up device addresses: validate reads only the structs.

N, C, H, W, G = 2, 12, 5, 3, 4
BASE = {"x": 0x1000000, "residual": 0x2000000, "weight": 0x3000000, "bias": 0x3100000, "y": 0x4000000,
        "x_sum": 0x5000000, "mean": 0x6000000, "rstd": 0x6100000, "dy": 0x7000000, "dx": 0x8000000,
        "dweight": 0x9000000, "dbias": 0x9100000}


def view(name, shape, dtype="float16", strides=None, **changes):
    fields = dict(data=BASE[name], shape=tuple(shape), strides=strides or _layout_strides(tuple(shape), "nchw"),
                  dtype=DTYPES[dtype], device_id=0)
    fields.update(changes)
    return TensorView(**fields)


def forward_tensors(layout="nchw", dtype="float16", residual=False):
    shape = (N, C, H, W)
    strides = _layout_strides(shape, layout)
    tensors = {"x": view("x", shape, dtype, strides), "weight": view("weight", (C,), dtype),
               "bias": view("bias", (C,), dtype), "y": view("y", shape, dtype, strides),
               "mean": view("mean", (N, G), "float32"), "rstd": view("rstd", (N, G), "float32")}
    if residual:
        tensors["residual"] = view("residual", shape, dtype, strides)
        tensors["x_sum"] = view("x_sum", shape, dtype, strides)
    return tensors


def backward_tensors(layout="nchw", dtype="float16"):
    shape = (N, C, H, W)
    strides = _layout_strides(shape, layout)
    return {"dy": view("dy", shape, dtype, strides), "x": view("x", shape, dtype, strides),
            "weight": view("weight", (C,), dtype), "bias": view("bias", (C,), dtype),
            "mean": view("mean", (N, G), "float32"), "rstd": view("rstd", (N, G), "float32"),
            "dx": view("dx", shape, dtype, strides), "dweight": view("dweight", (C,), dtype),
            "dbias": view("dbias", (C,), dtype)}


def validate(tensors, **descriptor):
    fields = dict(n=N, c=C, spatial=H * W, groups=G, dtype="float16", layout="nchw")
    fields.update(descriptor)
    group_norm_validate(fields, tensors)


def expect_error(status, *words, tensors, **descriptor):
    with pytest.raises(mfa_c.MFAError) as caught:
        validate(tensors, **descriptor)
    assert caught.value.status_name == f"MFA_STATUS_{status}", str(caught.value)
    for word in words:
        assert word in caught.value.message, f"{caught.value.message!r} does not name {word!r}"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_valid_tensors_pass(layout, dtype):
    validate(forward_tensors(layout, dtype), dtype=dtype, layout=layout)
    validate(forward_tensors(layout, dtype, residual=True), dtype=dtype, layout=layout, residual=True)
    validate(backward_tensors(layout, dtype), dtype=dtype, layout=layout, pass_="backward")
    stats_free = {k: v for k, v in forward_tensors(layout, dtype).items() if k not in ("mean", "rstd")}
    validate(stats_free, dtype=dtype, layout=layout)
    grads_free = {k: v for k, v in backward_tensors(layout, dtype).items() if k not in ("dweight", "dbias")}
    validate(grads_free, dtype=dtype, layout=layout, pass_="backward")


def test_no_affine_and_f32_weights():
    tensors = {k: v for k, v in forward_tensors().items() if k not in ("weight", "bias")}
    validate(tensors, weight_dtype=None)
    tensors = forward_tensors()
    tensors["weight"] = view("weight", (C,), "float32")
    tensors["bias"] = view("bias", (C,), "float32")
    validate(tensors, weight_dtype="float32")


def test_spatial_dimensions_of_any_rank():
    for shape in [(N, C), (N, C, H * W), (N, C, 1, H, W)]:
        for layout in LAYOUTS:
            tensors = forward_tensors(layout)
            strides = _layout_strides(shape, layout)
            tensors["x"] = view("x", shape, strides=strides)
            tensors["y"] = view("y", shape, strides=strides)
            validate(tensors, layout=layout, spatial=math.prod(shape[2:]))


@pytest.mark.parametrize("descriptor, status, words", [
    (dict(groups=5), "INVALID_ARGUMENT", ["descriptor->groups is 5", "divide c"]),
    (dict(groups=0), "INVALID_ARGUMENT", ["descriptor->groups is 0"]),
    (dict(n=0), "INVALID_ARGUMENT", ["descriptor->n is 0"]),
    (dict(spatial=0), "INVALID_ARGUMENT", ["descriptor->spatial is 0"]),
    (dict(eps=0.0), "INVALID_ARGUMENT", ["descriptor->eps"]),
    (dict(eps=float("nan")), "INVALID_ARGUMENT", ["descriptor->eps"]),
    (dict(weight_dtype="bfloat16"), "UNSUPPORTED", ["descriptor->weight_dtype"]),
])
def test_bad_descriptors(descriptor, status, words):
    expect_error(status, *words, tensors=forward_tensors(), **descriptor)


def test_bad_descriptor_fields_through_the_c_struct():
    descriptor = mfa_c.ffi.new("mfa_group_norm_descriptor *")
    for field, value, words in [("layout", 7, "descriptor->layout is 7"), ("activation", 1, "RELU"),
                                ("activation", 9, "descriptor->activation is 9"), ("pass", 2, "descriptor->pass is 2"),
                                ("has_residual", 2, "descriptor->has_residual is 2"),
                                ("dtype", 9, "descriptor->dtype is 9"), ("reserved", 1, "descriptor->reserved")]:
        from mfa_c._ffi import new_struct
        descriptor = new_struct("mfa_group_norm_descriptor", n=N, c=C, spatial=H * W, groups=G, **{field: value})
        tensors = mfa_c.ffi.new("mfa_group_norm_tensors *")
        status = mfa_c.lib.mfa_group_norm_validate(descriptor, tensors)
        message = mfa_c.ffi.string(mfa_c.lib.mfa_last_error_message()).decode()
        assert status != 0 and words in message, (field, value, message)
    assert mfa_c.lib.mfa_group_norm_validate(mfa_c.ffi.NULL, mfa_c.ffi.NULL) == mfa_c.lib.MFA_STATUS_INVALID_ARGUMENT
    assert "descriptor is NULL" in mfa_c.ffi.string(mfa_c.lib.mfa_last_error_message()).decode()


def _with(tensors, **changes):
    tensors = dict(tensors)
    for name, value in changes.items():
        if value is None:
            tensors.pop(name, None)
        else:
            tensors[name] = value
    return tensors


FWD = forward_tensors()
NHWC = forward_tensors("nhwc")
BWD = backward_tensors()


@pytest.mark.parametrize("tensors, descriptor, status, words", [
    (_with(FWD, x=None), {}, "INVALID_ARGUMENT", ["x is NULL"]),
    (_with(FWD, y=None), {}, "INVALID_ARGUMENT", ["y is NULL"]),
    (_with(FWD, weight=None), {}, "INVALID_ARGUMENT", ["weight is NULL"]),
    (FWD, dict(weight_dtype=None), "INVALID_ARGUMENT", ["weight is given"]),
    (FWD, dict(residual=True), "INVALID_ARGUMENT", ["residual is NULL"]),
    (_with(FWD, residual=view("residual", (N, C, H, W))), {}, "INVALID_ARGUMENT", ["residual is given"]),
    (_with(FWD, x_sum=view("x_sum", (N, C, H, W))), {}, "INVALID_ARGUMENT", ["x_sum is given"]),
    (_with(FWD, dy=view("dy", (N, C, H, W))), {}, "INVALID_ARGUMENT", ["dy is given"]),
    (_with(FWD, x=view("x", (N, C + 1, H, W))), {}, "SHAPE_MISMATCH", ["x.shape is [2, 13, 5, 3]"]),
    (_with(FWD, y=view("y", (N, C, H, W + 1))), {}, "SHAPE_MISMATCH", ["y.shape"]),
    (_with(FWD, x=view("x", (N * C * H * W,))), {}, "SHAPE_MISMATCH", ["x.ndim is 1"]),
    (_with(FWD, x=view("x", (N, C, H, W), "float32")), {}, "SHAPE_MISMATCH", ["x.dtype"]),
    (_with(FWD, weight=view("weight", (C,), "float32")), {}, "SHAPE_MISMATCH", ["weight.dtype"]),
    (_with(FWD, weight=view("weight", (C + 1,))), {}, "SHAPE_MISMATCH", ["weight.shape"]),
    (_with(FWD, mean=view("mean", (N, G + 1), "float32")), {}, "SHAPE_MISMATCH", ["mean.shape"]),
    (_with(FWD, rstd=view("rstd", (N, G), "float16")), {}, "SHAPE_MISMATCH", ["rstd.dtype"]),
    (_with(FWD, rstd=view("rstd", (N, G), "float32", strides=(1, N))), {}, "BAD_STRIDE", ["rstd.strides"]),
    (NHWC, {}, "BAD_STRIDE", ["x.strides", "NCHW"]),
    (FWD, dict(layout="nhwc"), "BAD_STRIDE", ["x.strides", "NHWC"]),
    (_with(FWD, x=view("x", (N, C, H, W), strides=(C * H * W * 2, H * W * 2, W * 2, 2))), {}, "BAD_STRIDE",
     ["x.strides"]),
    (_with(FWD, x=view("x", (N, C, H, W), data=BASE["x"] + 1)), {}, "MISALIGNED", ["x.data"]),
    (_with(FWD, x=view("x", (N, C, H, W), device_type=mfa_c.lib.MFA_DEVICE_CPU)), {}, "INVALID_ARGUMENT",
     ["x.device.device_type", "copy it to the GPU"]),
    (_with(FWD, y=view("y", (N, C, H, W), data=BASE["x"] + 64)), {}, "INVALID_ARGUMENT", ["y overlaps x"]),
    (_with(FWD, mean=view("mean", (N, G), "float32", data=BASE["rstd"])), {}, "INVALID_ARGUMENT",
     ["overlaps"]),
    (_with(BWD, mean=None), dict(pass_="backward"), "INVALID_ARGUMENT", ["mean is NULL"]),
    (_with(BWD, dy=None), dict(pass_="backward"), "INVALID_ARGUMENT", ["dy is NULL"]),
    (_with(BWD, dbias=None), dict(pass_="backward"), "INVALID_ARGUMENT", ["dweight and dbias"]),
    (_with(BWD, y=view("y", (N, C, H, W))), dict(pass_="backward"), "INVALID_ARGUMENT", ["y is given"]),
    (BWD, dict(pass_="backward", residual=True), "INVALID_ARGUMENT", ["has_residual", "x_sum"]),
    (_with(BWD, dx=view("dx", (N, C, H, W), data=BASE["dy"])), dict(pass_="backward"), "INVALID_ARGUMENT",
     ["dx overlaps dy"]),
])
def test_bad_tensors(tensors, descriptor, status, words):
    expect_error(status, *words, tensors=tensors, **descriptor)


def test_python_argument_errors():
    with pytest.raises(mfa_c.MFAError, match="^MFA_STATUS_INVALID_ARGUMENT: activation:"):
        mfa_c.group_norm_compile_report(activation="relu6")
    with pytest.raises(mfa_c.MFAError, match="^MFA_STATUS_INVALID_ARGUMENT: layout:"):
        mfa_c.group_norm_compile_report(layout="nchwc")


# ================================================================================================
# CPU: every variant compiles for sm_90a without spills.

VARIANTS = mfa_c.group_norm_variants()


def test_variant_list_covers_pass_layout_dtype_activation():
    keys = {(v["pass_"], v["layout"], v["dtype"], v["activation"]) for v in VARIANTS}
    assert len(keys) == len(VARIANTS) == 48


@pytest.mark.parametrize("index", range(len(VARIANTS)),
                         ids=[f"{v['pass_']}-{v['layout']}-{v['dtype']}-{v['activation']}" for v in VARIANTS])
def test_variant_compiles_for_sm90a(index):
    reports = mfa_c.group_norm_compile_report("sm_90a", **VARIANTS[index])
    assert [r["kernel"] for r in reports] == ["mfa_gn_reduce_vec", "mfa_gn_reduce_scalar", "mfa_gn_finalize",
                                              "mfa_gn_apply_vec", "mfa_gn_apply_scalar", "mfa_gn_onepass_1",
                                              "mfa_gn_onepass_2", "mfa_gn_onepass_4", "mfa_gn_onepass_8",
                                              "mfa_gn_param_grads", "mfa_gn_onepass_bands_1", "mfa_gn_onepass_bands_2",
                                              "mfa_gn_onepass_bands_4", "mfa_gn_onepass_bands_8"]
    for report in reports:
        print(f"{report['variant']} {report['kernel']}: {report['registers']} registers, "
              f"{report['static_shared_bytes']} B smem, spills {report['spill_store_bytes']}/{report['spill_load_bytes']}")
        assert report["spill_store_bytes"] == 0 and report["spill_load_bytes"] == 0, report
        assert report["stack_frame_bytes"] == 0, report
        # MFA_GN_THREADS a block; the one-pass kernel wants at least two blocks an SM (one copies while the
        # other computes); its forward stays at the 64 that let six 32 KB-slice blocks share one
        most = 255 if "onepass" not in report["kernel"] else 64 if report["variant"].startswith("group_norm.fwd") else 128
        assert 0 < report["registers"] <= most, report
        # the one-pass kernel's slices are dynamic: its static part is the sums' scratch only (the forward
        # NHWC's, MFA_GN_MAX_BAND groups' of fp32 moments: 1056 bytes)
        assert report["static_shared_bytes"] <= (1536 if "onepass" in report["kernel"] else 48 * 1024), report
    assert len({r["variant"] for r in reports}) == 1


# ================================================================================================
# CPU: the one-pass plan (cpp/group_norm.cpp onepass_cluster, through mfa_group_norm_plan_describe).

CLUSTER_MAX, WIDE_MAX, THREADS, SLICE_MAX_BYTES = 8, 16, 256, 110 * 1024  # group_norm.cuh
ONEPASS_THREADS = 512  # group_norm.cuh: NHWC backward blocks of many wide units
ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
SD_SHAPES = [(2, c, s, s) for c, s in ((320, 64), (640, 32), (1280, 16))]
LARGE_SHAPES = [(16, 256, 128, 128), (8, 512, 128, 128)]  # 64 MB and 128 MB of fp16
PLAN_SHAPES = SD_SHAPES + LARGE_SHAPES + [
    (1, 3, 1, 1), (2, 3, 7, 7), (1, 12, 5, 9), (3, 6, 1, 1), (4, 10, 3, 3), (8, 512, 64, 64), (1, 64, 512, 1024),
    (65535, 4, 1, 1), (2, 1 << 20, 1, 1), (1, 32, 1, 1 << 18), (2, 64, 33, 1), (2, 4096, 8, 8)]


def _smem_bytes(cluster, c, spatial, groups, dtype, streams, layout="nchw", band=1):
    """The most a one-pass block's dynamic shared memory may take (onepass_smem_bound): its slice of every
    stream, padded to 16 bytes, and the group's weight and bias as fp32, for the widest-padding unit; the
    backward (2 streams) adds a float2 a channel of the group and, where NCHW channels are whole runs of
    32 units (slices rounded to runs), a float2 a warp for each channel a slice touches. A band of groups
    (NHWC forward) is an item of band * cpg channels, its slices whole rows."""
    cpg = c // groups * band

    def of(unit):
        runs = streams == 2 and layout == "nchw" and spatial % (32 * unit) == 0
        units = -(-(cpg * spatial // unit) // cluster)
        units = -(-units // 32) * 32 if runs else units
        units = -(-units // (cpg // unit)) * (cpg // unit) if band > 1 else units
        slots = (-(-units // (spatial // unit)) + 1) * THREADS // 32 if runs else 0
        float2s = cpg + slots if streams == 2 else 0
        return streams * -(-(units * unit * ELEMENT_BYTES[dtype]) // 16) * 16 + 8 * cpg + 8 * float2s
    return max(of(unit) for unit in (1, 2, 4, 8) if unit * ELEMENT_BYTES[dtype] <= 16)


@pytest.mark.parametrize("sm_count", [1, 16, 132])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_every_shape_gets_a_legal_plan(sm_count, layout, dtype, pass_):
    streams = 1 if pass_ == "forward" else 2
    for shape in PLAN_SHAPES:
        n, c, spatial = shape[0], shape[1], math.prod(shape[2:])
        for groups in sorted({1, c, math.gcd(c, 32)}):
            for vectorized in (True, False):
                plan = group_norm_plan(n, c, spatial, groups, sm_count=sm_count, vectorized=vectorized, dtype=dtype,
                                       layout=layout, pass_=pass_)
                what = (shape, groups, vectorized, plan)
                unit = plan["vector_elements"]
                assert unit in (1, 2, 4, 8) and unit * ELEMENT_BYTES[dtype] <= 16, what
                assert vectorized or unit == 1, what
                run = spatial if layout == "nchw" else c // groups
                assert run % unit == 0, what  # a unit stays inside one channel (NCHW) or one group's row (NHWC)
                band, cpg = plan["band"], c // groups
                if band > 1:  # onepass_band: NHWC beyond L2, 64-byte rows of at most 32 elements (or halved to fit)
                    assert layout == "nhwc" and plan["cluster"] > 0, what
                    assert n * c * spatial * ELEMENT_BYTES[dtype] > 32 << 20, what
                    assert cpg & (cpg - 1) == 0 and groups % band == 0 and band * cpg <= 32, what
                    assert band in (2, 4, 8) and band // 2 * cpg * ELEMENT_BYTES[dtype] < 64, what
                    # a thread's units keep one column (mfa_gn_column_walk): the item's row divides the block
                    assert plan["threads"] % (band * cpg // unit) == 0, what
                # wide clusters (up to 16 blocks) only for items that 8 blocks cannot hold
                portable = _smem_bytes(CLUSTER_MAX, c, spatial, groups, dtype, streams, layout, band) <= SLICE_MAX_BYTES
                if plan["cluster"] == 0:
                    # the three-launch path only where the largest cluster's shared memory cannot hold the group
                    assert plan["threads"] == 0, what
                    scattered = (layout == "nhwc" and c // groups * ELEMENT_BYTES[dtype] < 32 and
                                 n * c * spatial * ELEMENT_BYTES[dtype] > 32 << 20)  # scattered_rows_beyond_l2
                    assert (_smem_bytes(WIDE_MAX, c, spatial, groups, dtype, streams, layout) > SLICE_MAX_BYTES or
                            n * groups * WIDE_MAX >= 2 ** 31 or scattered), what
                    continue
                assert 1 <= plan["cluster"] <= (CLUSTER_MAX if portable else WIDE_MAX), what
                assert plan["threads"] % 32 == 0 and 64 <= plan["threads"] <= ONEPASS_THREADS, what
                if plan["threads"] > THREADS:  # onepass_threads: NHWC backward within L2, units of 8+ bytes
                    assert layout == "nhwc" and pass_ == "backward" and unit * ELEMENT_BYTES[dtype] >= 8, what
                    assert band == 1, what  # the band entries are bounded at 256 threads
                    assert n * c * spatial * ELEMENT_BYTES[dtype] <= 32 << 20, what
                smem = _smem_bytes(plan["cluster"], c, spatial, groups, dtype, streams, layout, band)
                assert smem <= SLICE_MAX_BYTES, what
                assert n * groups * plan["cluster"] < 2 ** 31, what  # the grid


def test_plan_fills_the_device_on_the_diffusion_shapes():
    """Every diffusion shape runs in one pass, with about two blocks an SM where slices stay >= 4 KB; the
    backward's clusters hold their group in both samples (dweight summed within the cluster) where the
    grid still fits the GPU at once: all but the 64x64 shapes of 640 and 1280 channels (320 KB and 640 KB
    groups of dy and x). NHWC rows of 10 fp16 channels (4-byte copies) take slices of at most 16 KB where
    8 blocks allow, whether or not both samples then fit one cluster (narrow_nhwc_copies)."""
    for pass_ in ("forward", "backward"):
        for layout in LAYOUTS:
            for n, c, h, w in SD_SHAPES + [(2, 320, 32, 32), (2, 640, 64, 64), (2, 1280, 64, 64)]:
                plan = group_norm_plan(n, c, h * w, 32, layout=layout, pass_=pass_)
                group_bytes = c // 32 * h * w * 2 * (1 if pass_ == "forward" else 2)
                run = h * w if layout == "nchw" else c // 32
                widest = max(u for u in (1, 2, 4, 8) if run % u == 0)  # NHWC C = 320: 10-channel rows, 2
                assert plan["cluster"] > 0 and plan["vector_elements"] == widest, (n, c, h, w, layout, plan)
                narrow = layout == "nhwc" and c == 320
                if narrow:
                    assert plan["cluster"] >= min(CLUSTER_MAX, -(-group_bytes // (16 << 10))), (n, c, h, w, plan)
                    if pass_ == "backward":  # both samples in one cluster unless its slices exceed 16 KB
                        held = group_bytes // (CLUSTER_MAX // n) <= 16 << 10
                        assert (n * plan["cluster"] <= CLUSTER_MAX) == held, (n, c, h, w, plan)
                elif pass_ == "backward":
                    assert (n * plan["cluster"] <= CLUSTER_MAX) == (h < 64 or c == 320), (n, c, h, w, plan)
                if pass_ == "backward" and n * plan["cluster"] <= CLUSTER_MAX:
                    continue
                assert n * 32 * plan["cluster"] >= 2 * 132 or group_bytes // (plan["cluster"] + 1) < 4096, plan


def test_plan_widens_nhwc_blocks_of_many_wide_units():
    """512 threads where an NHWC backward block of a tensor within L2 would hold at least 8 units of 8 bytes
    or more a thread at 256 (onepass_threads): the 64x64 diffusion shapes of 640 and 1280 channels; 256 at
    most forward, in NCHW, for 4-byte units (320 channels), for fewer units a thread (32x32) and beyond L2."""
    for pass_ in ("forward", "backward"):
        for layout in LAYOUTS:
            for n, c, h, w in [(2, c, s, s) for c in (320, 640, 1280) for s in (64, 32)] + LARGE_SHAPES:
                plan = group_norm_plan(n, c, h * w, 32, layout=layout, pass_=pass_)
                wide = layout == "nhwc" and pass_ == "backward" and c >= 640 and h == 64 and n == 2
                assert plan["threads"] == ONEPASS_THREADS if wide else plan["threads"] <= THREADS, (c, h, layout, plan)


def test_plan_keeps_the_large_fp16_tensors_on_chip():
    """In one pass. NHWC takes bands of 64-byte rows (4 groups of 8 channels, 2 of 16), 1 MB items in 16
    blocks, halved where the backward's two streams would not fit (16x256x128x128: bands of 2 groups,
    8x512x128x128: single groups); the 1 MB backward groups (x and dy) of 8x512x128x128, which 8 blocks
    cannot hold, in 16 blocks too."""
    bands = {("forward", 256): 4, ("forward", 512): 2, ("backward", 256): 2, ("backward", 512): 1}
    for pass_ in ("forward", "backward"):
        for layout in LAYOUTS:
            for n, c, h, w in LARGE_SHAPES:
                plan = group_norm_plan(n, c, h * w, 32, layout=layout, pass_=pass_)
                band = bands[pass_, c] if layout == "nhwc" else 1
                assert plan["band"] == band, (layout, pass_, plan)
                wide = (pass_ == "backward" and c == 512) or band > 1
                assert plan["cluster"] == (WIDE_MAX if wide else CLUSTER_MAX), (layout, pass_, plan)
                assert plan["vector_elements"] == 8, (layout, plan)
    assert group_norm_plan(2, 320, 64 * 64, 32, pass_="backward", cluster=16)["cluster"] == 16


def test_bench_rows_name_the_forced_cluster(monkeypatch):
    """A bench row's plan is the one its pipelines run: MFA_GN_CLUSTER forces both."""
    from types import SimpleNamespace
    from mfa_c.bench_group_norm import _plan_text
    context = SimpleNamespace(sm_count=132, compute_capability=(9, 0))
    monkeypatch.delenv("MFA_GN_CLUSTER", raising=False)
    chosen = _plan_text(context, (2, 320, 64, 64), 32, "fp16", "nchw", "backward")
    assert chosen.startswith("one pass: cluster 4 x "), chosen
    monkeypatch.setenv("MFA_GN_CLUSTER", "16")
    assert _plan_text(context, (2, 320, 64, 64), 32, "fp16", "nchw", "backward").startswith("one pass: cluster 16 x ")
    monkeypatch.setenv("MFA_GN_CLUSTER", "split")
    assert _plan_text(context, (2, 320, 64, 64), 32, "fp16", "nchw", "backward") == "3 launches"


def test_forced_plans():
    n, c, spatial, groups = 2, 64, 16 * 16, 8  # 2048 elements a group: 256 units of 8
    assert group_norm_plan(n, c, spatial, groups, cluster="split")["cluster"] == 0
    for cluster in range(1, WIDE_MAX + 1):
        for pass_ in ("forward", "backward"):
            plan = group_norm_plan(n, c, spatial, groups, cluster=cluster, pass_=pass_)
            assert plan["cluster"] == cluster and plan["threads"] >= 64, plan
    # a forced cluster too small for the group falls back to the three-launch path
    assert group_norm_plan(1, 32, 1 << 11, 1, cluster=1)["cluster"] == 0  # 128 KB of fp16 > one block
    assert group_norm_plan(1, 32, 1 << 11, 1, cluster=2)["cluster"] == 2
    with pytest.raises(mfa_c.MFAError, match="forced_cluster is 17"):
        group_norm_plan(n, c, spatial, groups, cluster=17)
    # bands: asked for, taken where the rules allow (NHWC forward, 2^k channels a group, rows of <= 32
    # elements), on any tensor
    for band in (1, 2, 4, 8):  # 8 channels a group: rows of 32 channels at most
        assert group_norm_band(n, c, spatial, groups, band=band, layout="nhwc") == min(band, 4)
        assert group_norm_band(n, c, spatial, groups, band=band, layout="nchw") == 1
        assert group_norm_band(n, c, spatial, groups, band=band, layout="nhwc", pass_="backward") == min(band, 4)
    assert group_norm_band(2, 64, spatial, 16, band=8, layout="nhwc", dtype="float32") == 8  # 8 x 4 channels
    assert group_norm_band(2, 40, spatial, 4, band=2, layout="nhwc") == 1  # 10 channels a group
    assert group_norm_band(2, 16, spatial, 2, band=4, layout="nhwc") == 2  # two groups: a band of 2 at most
    for band in (2, 4, 8):  # 2 channels a group: item rows narrower than the widest unit (8)
        assert group_norm_band(2, 32, 25, 16, band=band, layout="nhwc") == band
    assert group_norm_band(n, c, spatial, groups, layout="nhwc") == 1  # chosen: a small tensor stays in L2
    assert group_norm_band(1, 32, 1 << 11, 1, cluster=1, band=1) == 1
    with pytest.raises(mfa_c.MFAError, match="forced_band is 3"):
        group_norm_band(n, c, spatial, groups, band=3)
    with pytest.raises(mfa_c.MFAError, match="sm_count is 0"):
        group_norm_plan(n, c, spatial, groups, sm_count=0)
    with pytest.raises(mfa_c.MFAError, match="descriptor->groups is 5"):
        group_norm_plan(n, c, spatial, 5)


def test_variant_compiles_for_sm80():
    assert mfa_c.group_norm_compile_report("sm_80", dtype="bfloat16", layout="nhwc", pass_="backward",
                                           activation="gelu_tanh")


# ================================================================================================
# GPU: against float64 (torch autograd in float64 for the backward).


def _torch_input(torch, rng, shape, dtype, layout, scale=1.0, offset=0.0):
    values = torch.from_numpy(offset + scale * rng.standard_normal(shape)).to("cuda", getattr(torch, dtype))
    return values.contiguous(memory_format=torch.channels_last) if layout == "nhwc" and len(shape) == 4 else values


def _affine(torch, rng, c, dtype):
    weight = torch.from_numpy(1 + 0.5 * rng.standard_normal(c)).to("cuda", getattr(torch, dtype))
    bias = torch.from_numpy(0.5 * rng.standard_normal(c)).to("cuda", getattr(torch, dtype))
    return weight, bias


def _check_forward(torch, rng, shape, groups, dtype, layout, activation=None, residual=False, scale=1.0, offset=0.0,
                   affine=True):
    x = _torch_input(torch, rng, shape, dtype, layout, scale, offset)
    r = _torch_input(torch, rng, shape, dtype, layout) if residual else None
    weight, bias = _affine(torch, rng, shape[1], dtype) if affine else (None, None)
    y = torch.full_like(x, float("nan"))
    x_sum = torch.full_like(x, float("nan")) if residual else None
    out, mean, rstd = mfa_c.group_norm(x, groups, weight, bias, activation=activation, residual=r, out=y,
                                       x_sum=x_sum, return_stats=True)
    assert out is y
    summed = (x + r) if residual else x  # rounded to dtype, as the kernel rounds it
    ref_y, ref_mean, ref_rstd = mfa_c.group_norm_reference(summed, groups, weight, bias, activation=activation)
    tolerance = TOLERANCES[dtype]
    assert rel_error(y, ref_y) <= tolerance
    # The mean's error is measured against the spread (1 / rstd): a mean near zero has no relative
    # accuracy to keep, while normalizing needs it to a fraction of a standard deviation. The public
    # mean is an f32, so its own rounding (half an ulp: 2^-24 relative) is allowed on top.
    mean_error = np.abs(_float64(mean) - ref_mean)
    assert bool(np.all(mean_error <= 1e-5 / ref_rstd + np.abs(ref_mean) * 2.0 ** -24)), float(np.max(mean_error))
    assert rel_error(rstd, ref_rstd) <= 1e-4
    if residual:
        assert torch.equal(x_sum, summed)
    return x, weight, bias, y


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_forward(ctx, torch_cuda, rng, dtype, layout, activation):
    _check_forward(torch_cuda, rng, (2, 64, 16, 16), 32, dtype, layout, activation)


@pytest.mark.parametrize("shape, groups", [((2, 3, 7, 7), 1), ((2, 3, 7, 7), 3), ((3, 6, 1, 1), 2),
                                           ((1, 12, 5, 9), 12), ((2, 20, 7, 7), 4), ((4, 10, 3, 3), 5),
                                           ((2, 16), 4), ((1, 24, 33, 1), 6)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_odd_shapes(ctx, torch_cuda, rng, shape, groups, layout, dtype):
    _check_forward(torch_cuda, rng, shape, groups, dtype, layout, "silu")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_residual_and_no_affine(ctx, torch_cuda, rng, dtype, layout):
    _check_forward(torch_cuda, rng, (2, 32, 9, 9), 8, dtype, layout, "silu", residual=True)
    _check_forward(torch_cuda, rng, (2, 32, 9, 9), 8, dtype, layout, None, affine=False)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_group_one_sample(ctx, torch_cuda, rng, layout):
    """N = 1 with groups of 2^24 elements: the reduction of one group is split over many blocks."""
    _check_forward(torch_cuda, rng, (1, 64, 512, 1024), 2, "float32", layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_mean(ctx, torch_cuda, rng, layout):
    """mean 1e4, spread 1: statistics without cancellation."""
    _check_forward(torch_cuda, rng, (2, 32, 64, 64), 8, "float32", layout, offset=1e4)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_constant_input(ctx, torch_cuda, dtype, layout):
    torch = torch_cuda
    x = torch.full((2, 8, 4, 4), 3.0, device="cuda", dtype=getattr(torch, dtype))
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.ones(8, device="cuda", dtype=x.dtype)
    bias = torch.arange(8, device="cuda", dtype=x.dtype)
    y, mean, rstd = mfa_c.group_norm(x, 4, weight, bias, eps=1e-5, return_stats=True)
    assert torch.all(mean == 3.0)
    assert torch.allclose(rstd.double(), torch.full_like(rstd.double(), 1 / math.sqrt(1e-5)), rtol=1e-5)
    assert torch.equal(y.float(), bias.float().view(1, 8, 1, 1).expand_as(y))


def _torch_backward_reference(torch, x, weight, bias, dy, groups, activation, dtype=None):
    """(dx, dweight, dbias) by torch autograd in float64, or in `dtype` (the precision reference)."""
    dtype = dtype or torch.float64
    x64 = x.detach().to(dtype).requires_grad_(True)
    w64 = weight.detach().to(dtype).requires_grad_(True) if weight is not None else None
    b64 = bias.detach().to(dtype).requires_grad_(True) if bias is not None else None
    y = torch.nn.functional.group_norm(x64, groups, w64, b64, eps=1e-5)
    y = {None: lambda t: t, "silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
         "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh")}[activation](y)
    y.backward(dy.to(dtype))
    return x64.grad, (w64.grad if w64 is not None else None), (b64.grad if b64 is not None else None)


def _assert_like_the_precision_reference(ours, ref64, ref_precision, what, floor):
    """The rule for ill-conditioned results (as FlashAttention-3 tests): our error against float64 at most
    twice that of the same computation done by torch in the inputs' precision, plus a tiny floor. A fixed
    relative tolerance is the wrong test where the result is a cancellation of much larger terms (dx of
    a two-element group is ~1e-5 of its terms)."""
    ours_error, theirs_error = rel_error(ours, ref64), rel_error(ref_precision, ref64)
    assert ours_error <= 2 * theirs_error + floor, (
        f"{what}: error {ours_error:.3g} vs float64, torch in the input precision {theirs_error:.3g}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape, groups", [((2, 64, 16, 16), 32), ((2, 6, 7, 7), 3), ((3, 10, 1, 1), 5)])
def test_backward(ctx, torch_cuda, rng, shape, groups, dtype, layout, activation):
    torch = torch_cuda
    x = _torch_input(torch, rng, shape, dtype, layout)
    dy = _torch_input(torch, rng, shape, dtype, layout)
    weight, bias = _affine(torch, rng, shape[1], dtype)
    _, mean, rstd = mfa_c.group_norm(x, groups, weight, bias, activation=activation, return_stats=True)
    dx, dweight, dbias = mfa_c.group_norm_backward(dy, x, weight, bias, mean, rstd, groups, activation=activation)
    refs = _torch_backward_reference(torch, x, weight, bias, dy, groups, activation)
    tolerance = TOLERANCES[dtype] * (1 if dtype != "float32" else 10)
    if shape[1] // groups * math.prod(shape[2:]) >= 16:  # well-conditioned: a fixed tolerance
        for ours, ref, what in zip((dx, dweight, dbias), refs, ("dx", "dweight", "dbias")):
            assert rel_error(ours, ref) <= tolerance, what
    else:  # tiny groups: dx cancels (two elements: to ~eps / var of its terms); compare with torch in dtype
        precision = _torch_backward_reference(torch, x, weight, bias, dy, groups, activation, dtype=x.dtype)
        # dx's floor: the roundings of the terms that cancel, rstd * w * dy, relative to dx itself. The terms pass
        # through about a dozen roundings (x^, both means, rstd); measured up to 21 units of roundoff of the terms
        # (fp32, seed 3025362239624319751), where torch's own error happened to be 5x smaller.
        terms = _float64(rstd).repeat(shape[1] // groups, axis=1).reshape(shape[0], shape[1], *[1] * (len(shape) - 2))
        terms = np.linalg.norm(terms * _float64(weight).reshape(1, -1, *[1] * (len(shape) - 2)) * _float64(dy))
        unit_roundoff = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}[dtype]
        dx_floor = 32 * unit_roundoff * terms / np.linalg.norm(_float64(refs[0]))
        floors = (max(dx_floor, TOLERANCES[dtype] / 10), TOLERANCES[dtype] / 10, TOLERANCES[dtype] / 10)
        for ours, ref, theirs, what, floor in zip((dx, dweight, dbias), refs, precision, ("dx", "dweight", "dbias"),
                                                  floors):
            _assert_like_the_precision_reference(ours, ref, theirs, what, floor=floor)
    again = mfa_c.group_norm_backward(dy, x, weight, bias, mean, rstd, groups, activation=activation)
    for first, second in zip((dx, dweight, dbias), again):  # the same bits (NaN would fail)
        assert torch.equal(first, second)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_large_mean(ctx, torch_cuda, rng, layout):
    """mean 1e4, spread 1: the backward reads an fp32 mean (rounded by up to 5e-4); it should do as well
    as torch's own fp32 backward (which has the same limit), measured against float64."""
    torch = torch_cuda
    shape, groups = (2, 32, 16, 16), 8
    x = _torch_input(torch, rng, shape, "float32", layout, offset=1e4)
    dy = _torch_input(torch, rng, shape, "float32", layout)
    weight, bias = _affine(torch, rng, shape[1], "float32")
    _, mean, rstd = mfa_c.group_norm(x, groups, weight, bias, return_stats=True)
    ours = mfa_c.group_norm_backward(dy, x, weight, bias, mean, rstd, groups)
    refs = _torch_backward_reference(torch, x, weight, bias, dy, groups, None)
    precision = _torch_backward_reference(torch, x, weight, bias, dy, groups, None, dtype=torch.float32)
    for mine, ref, theirs, what in zip(ours, refs, precision, ("dx", "dweight", "dbias")):
        _assert_like_the_precision_reference(mine, ref, theirs, what, floor=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_large_group(ctx, torch_cuda, rng, layout):
    torch = torch_cuda
    shape = (1, 32, 256, 512)
    x = _torch_input(torch, rng, shape, "float32", layout)
    dy = _torch_input(torch, rng, shape, "float32", layout)
    weight, bias = _affine(torch, rng, 32, "float32")
    _, mean, rstd = mfa_c.group_norm(x, 2, weight, bias, return_stats=True)
    dx, dweight, dbias = mfa_c.group_norm_backward(dy, x, weight, bias, mean, rstd, 2)
    ref = _torch_backward_reference(torch, x, weight, bias, dy, 2, None)
    for ours, theirs in zip((dx, dweight, dbias), ref):
        assert rel_error(ours, theirs) <= 1e-4


def test_numpy_in_numpy_out(ctx, rng):
    x = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
    weight = rng.standard_normal(8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    y, mean, rstd = mfa_c.group_norm(x, 4, weight, bias, return_stats=True, activation="silu")
    ref_y, ref_mean, ref_rstd = mfa_c.group_norm_reference(x, 4, weight, bias, activation="silu")
    assert isinstance(y, np.ndarray) and rel_error(y, ref_y) <= 1e-5 and rel_error(mean, ref_mean) <= 1e-5
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dweight, dbias = mfa_c.group_norm_backward(dy, x, weight, bias, mean, rstd, 4, activation="silu")
    assert isinstance(dx, np.ndarray) and dx.shape == x.shape and dweight.shape == (8,)
    assert np.isfinite(dx).all()


def test_errors_on_the_gpu_path(ctx, torch_cuda):
    torch = torch_cuda
    x = torch.randn(2, 6, 4, 4, device="cuda", dtype=torch.float16)
    with pytest.raises(mfa_c.MFAError, match="descriptor->groups is 4"):
        mfa_c.group_norm(x, 4)
    # The descriptor's weight_dtype is weight's (f32 weights are legal for f16 x): the first argument that
    # disagrees, in the order of the signature (x, weight, bias), is bias.
    with pytest.raises(mfa_c.MFAError, match="bias.dtype"):
        mfa_c.group_norm(x, 3, torch.ones(6, device="cuda"), torch.zeros(6, device="cuda", dtype=torch.float16))
    with pytest.raises(mfa_c.MFAError, match="descriptor->weight_dtype"):  # bf16 weights for f16 x: weight first
        mfa_c.group_norm(x, 3, torch.ones(6, device="cuda", dtype=torch.bfloat16),
                         torch.zeros(6, device="cuda", dtype=torch.float32))
    with pytest.raises(mfa_c.MFAError, match="neither NCHW"):
        mfa_c.group_norm(x.transpose(2, 3), 3)


# ================================================================================================
# GPU: the one-pass kernel against the three-launch path and float64, every plan forced, both passes.

FORCED_PLANS = ["split", 1, 2, 3, 4, 5, 6, 7, 8, 12, 16]  # 12, 16: wide, non-portable clusters


def _forward_with_plan(torch, monkeypatch, plan, x, groups, weight, bias, layout, activation=None, residual=None,
                       band="auto"):
    """(y, mean, rstd, x_sum) from a fresh pipeline created under MFA_GN_CLUSTER=plan (and MFA_GN_BAND=band),
    outputs NaN-poisoned."""
    monkeypatch.setenv("MFA_GN_CLUSTER", str(plan))
    monkeypatch.setenv("MFA_GN_BAND", str(band))
    n, c = x.shape[:2]
    dtype = str(x.dtype).removeprefix("torch.")
    pipeline = mfa_c.GroupNormPipeline(n, c, math.prod(x.shape[2:]), groups, dtype=dtype,
                                       weight_dtype=dtype if weight is not None else None, layout=layout,
                                       activation=activation, residual=residual is not None)
    monkeypatch.delenv("MFA_GN_CLUSTER")
    monkeypatch.delenv("MFA_GN_BAND")
    outputs = {"y": torch.full_like(x, float("nan")),
               "mean": torch.full((n, groups), float("nan"), device="cuda"),
               "rstd": torch.full((n, groups), float("nan"), device="cuda")}
    inputs = {"x": x}
    if weight is not None:
        inputs.update(weight=weight, bias=bias)
    if residual is not None:
        inputs["residual"] = residual
        outputs["x_sum"] = torch.full_like(x, float("nan"))
    pipeline.encode(**inputs, **outputs)
    torch.cuda.synchronize()
    pipeline.close()
    return outputs["y"], outputs["mean"], outputs["rstd"], outputs.get("x_sum")


def _assert_forward_close(y, mean, rstd, reference, dtype, what):
    ref_y, ref_mean, ref_rstd = reference
    assert rel_error(y, ref_y) <= TOLERANCES[dtype], what
    mean_error = np.abs(_float64(mean) - ref_mean)
    assert bool(np.all(mean_error <= 1e-5 / ref_rstd + np.abs(ref_mean) * 2.0 ** -24)), (what, float(np.max(mean_error)))
    assert rel_error(rstd, ref_rstd) <= 1e-4, what


def _fits(plan, shape, groups, dtype, layout, pass_="forward"):
    n, c = shape[:2]
    return group_norm_plan(n, c, math.prod(shape[2:]), groups, dtype=dtype, layout=layout, pass_=pass_,
                           cluster=plan)["cluster"] == (0 if plan == "split" else plan)


# Shapes: every unit width of the one-pass kernel (NHWC channels per group 8/16 vs 3/10; NCHW spatial a
# multiple of 8 or not), a group smaller than one block, groups = 1 and = C, spatial 1; NCHW channels of
# one and of several runs of 32 units, which the backward sums channel by channel (column_runs), with
# slices that end inside a channel.
PLAN_CASES = [((2, 64, 16, 16), 8), ((2, 40, 9, 7), 4), ((2, 320, 8, 8), 32), ((3, 6, 1, 1), 2),
              ((1, 48, 12, 12), 1), ((2, 24, 5, 5), 24), ((4, 128, 1, 1), 16), ((2, 32, 32, 32), 4)]


@pytest.mark.parametrize("shape, groups", PLAN_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_every_plan_matches_float64(ctx, torch_cuda, rng, monkeypatch, shape, groups, dtype, layout):
    """The one-pass kernel at every cluster size (that holds the group) and the three-launch path, on the
    same input: each within tolerance of float64, one-pass and split within tolerance of each other."""
    torch = torch_cuda
    x = _torch_input(torch, rng, shape, dtype, layout)
    residual = _torch_input(torch, rng, shape, dtype, layout)
    weight, bias = _affine(torch, rng, shape[1], dtype)
    summed = x + residual
    reference = mfa_c.group_norm_reference(summed, groups, weight, bias, activation="silu")
    ran = {}
    for plan in FORCED_PLANS:
        if not _fits(plan, shape, groups, dtype, layout):
            continue
        y, mean, rstd, x_sum = _forward_with_plan(torch, monkeypatch, plan, x, groups, weight, bias, layout, "silu",
                                                  residual)
        _assert_forward_close(y, mean, rstd, reference, dtype, f"plan {plan}")
        assert torch.equal(x_sum, summed), f"plan {plan}: x_sum"
        ran[plan] = y
    assert "split" in ran and len(ran) >= 2, sorted(map(str, ran))  # the fallback and at least one cluster
    for plan, y in ran.items():
        assert rel_error(y, _float64(ran["split"])) <= TOLERANCES[dtype], f"plan {plan} vs split"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_onepass_without_affine_each_activation(ctx, torch_cuda, rng, monkeypatch, dtype, layout):
    torch = torch_cuda
    shape, groups = (2, 32, 12, 12), 8
    x = _torch_input(torch, rng, shape, dtype, layout)
    for activation in ACTIVATIONS:
        reference = mfa_c.group_norm_reference(x, groups, activation=activation)
        for plan in ("split", 2):
            y, mean, rstd, _ = _forward_with_plan(torch, monkeypatch, plan, x, groups, None, None, layout, activation)
            _assert_forward_close(y, mean, rstd, reference, dtype, (plan, activation))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_onepass_element_wise_path_on_misaligned_tensors(ctx, torch_cuda, rng, monkeypatch, layout):
    """Tensors 2 bytes off 16-byte alignment: the one-pass kernel copies one element at a time."""
    torch = torch_cuda
    shape, groups = (2, 64, 8, 8), 4
    numel = math.prod(shape)
    storage = torch.from_numpy(rng.standard_normal(numel + 1)).to("cuda", torch.float16)
    if layout == "nchw":
        x = storage[1:].view(shape)
    else:
        n, c, h, w = shape
        x = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    assert x.data_ptr() % 16 != 0
    weight, bias = _affine(torch, rng, shape[1], "float16")
    reference = mfa_c.group_norm_reference(x, groups, weight, bias, activation="gelu")
    for plan in ("split", 1, 4):
        y, mean, rstd, _ = _forward_with_plan(torch, monkeypatch, plan, x, groups, weight, bias, layout, "gelu")
        _assert_forward_close(y, mean, rstd, reference, "float16", plan)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_onepass_large_mean_and_constant_input(ctx, torch_cuda, rng, monkeypatch, dtype, layout):
    torch = torch_cuda
    shape, groups = (2, 32, 16, 16), 8
    offset = 1e4 if dtype == "float32" else 1e3  # 16-bit types: the offset must leave the spread representable
    x = _torch_input(torch, rng, shape, dtype, layout, offset=offset)
    reference = mfa_c.group_norm_reference(x, groups)
    constant = torch.full(shape, 3.0, device="cuda", dtype=x.dtype)
    if layout == "nhwc":
        constant = constant.contiguous(memory_format=torch.channels_last)
    bias = torch.arange(shape[1], device="cuda", dtype=x.dtype)
    weight = torch.ones_like(bias)
    for plan in ("split", 1, 3, 8):
        y, mean, rstd, _ = _forward_with_plan(torch, monkeypatch, plan, x, groups, None, None, layout)
        _assert_forward_close(y, mean, rstd, reference, dtype, plan)
        y, mean, rstd, _ = _forward_with_plan(torch, monkeypatch, plan, constant, groups, weight, bias, layout)
        assert torch.all(mean == 3.0), plan
        assert torch.allclose(rstd.double(), torch.full_like(rstd.double(), 1 / math.sqrt(1e-5)), rtol=1e-5), plan
        assert torch.equal(y.float(), bias.float().view(1, -1, 1, 1).expand_as(y)), plan


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_onepass_outliers_at_the_pivot_candidates(ctx, torch_cuda, rng, monkeypatch, dtype, layout):
    """Outliers of 1000 standard deviations at a group's first, middle or last element (where the pivot is
    drawn from): the shifted sums of 16-bit inputs keep their accuracy on every plan."""
    torch = torch_cuda
    shape, groups = (2, 32, 16, 16), 4
    x = _torch_input(torch, rng, shape, dtype, layout)
    cpg, spatial = shape[1] // groups, shape[2] * shape[3]
    for g, e in ((0, 0), (1, (cpg * spatial - 1) // 2), (2, cpg * spatial - 1), (3, 0)):
        channel, position = g * cpg + e // spatial, e % spatial
        x[0, channel, position // shape[3], position % shape[3]] = 1000.0
    reference = mfa_c.group_norm_reference(x, groups)
    for plan in ("split", 1, 3):
        y, mean, rstd, _ = _forward_with_plan(torch, monkeypatch, plan, x, groups, None, None, layout)
        _assert_forward_close(y, mean, rstd, reference, dtype, plan)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 320, 32, 32), (2, 1280, 16, 16)])  # element-wise and vector paths
def test_onepass_forward_is_deterministic(ctx, torch_cuda, rng, monkeypatch, shape, layout):
    torch = torch_cuda
    x = _torch_input(torch, rng, shape, "float16", layout)
    weight, bias = _affine(torch, rng, shape[1], "float16")
    for plan in (3, 8):
        first = _forward_with_plan(torch, monkeypatch, plan, x, 32, weight, bias, layout, "silu")[:3]
        second = _forward_with_plan(torch, monkeypatch, plan, x, 32, weight, bias, layout, "silu")[:3]
        for a, b in zip(first, second):
            assert torch.equal(a, b), plan


# NHWC groups of 4, 8, 2 and 8 channels (fp16 rows of 8 to 16 bytes); the last with blocks left empty by
# slices of whole rows (33 positions of 4 units in 8 blocks).
BAND_CASES = [((2, 64, 16, 16), 16), ((3, 128, 9, 7), 16), ((2, 32, 5, 5), 16), ((1, 256, 33, 1), 32)]


def _banded_input(torch, rng, shape, groups, dtype):
    """An NHWC input whose groups are offset by different means (-20 to 20: a band that mixed its groups'
    statistics would fail), and the affine parameters."""
    c = shape[1]
    offsets = torch.from_numpy(rng.uniform(-20.0, 20.0, groups)).repeat_interleave(c // groups).to("cuda")
    x = _torch_input(torch, rng, shape, dtype, "nhwc")
    x = (x + offsets.to(x.dtype).view(1, c, 1, 1)).contiguous(memory_format=torch.channels_last)
    return x, *_affine(torch, rng, c, dtype)


@pytest.mark.parametrize("shape, groups", BAND_CASES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_bands_match_float64(ctx, torch_cuda, rng, monkeypatch, shape, groups, dtype):
    """The NHWC forward with bands of adjacent groups in one cluster (MFA_GN_BAND, as large tensors take
    them), at several cluster sizes, with a residual and SiLU: every group's statistics its own, within
    tolerance of float64, and the same bits run after run."""
    torch = torch_cuda
    n, c, spatial = shape[0], shape[1], math.prod(shape[2:])
    x, weight, bias = _banded_input(torch, rng, shape, groups, dtype)
    residual = _torch_input(torch, rng, shape, dtype, "nhwc")
    summed = x + residual
    reference = mfa_c.group_norm_reference(summed, groups, weight, bias, activation="silu")
    ran = []
    for band in (2, 4, 8):
        for plan in (1, 3, 8):
            if group_norm_band(n, c, spatial, groups, cluster=plan, band=band, dtype=dtype, layout="nhwc") != band:
                continue
            run = [_forward_with_plan(torch, monkeypatch, plan, x, groups, weight, bias, "nhwc", "silu", residual, band)
                   for _ in range(2)]
            y, mean, rstd, x_sum = run[0]
            _assert_forward_close(y, mean, rstd, reference, dtype, (band, plan))
            assert torch.equal(x_sum, summed), (band, plan)
            for first, second in zip(run[0], run[1]):
                assert torch.equal(first, second), (band, plan)
            ran.append((band, plan))
    assert len(ran) >= 3, ran


def _backward_with_plan(torch, monkeypatch, plan, dy, x, weight, bias, mean, rstd, groups, layout, activation,
                        band="auto"):
    """(dx, dweight, dbias) from a fresh backward pipeline created under MFA_GN_CLUSTER=plan (and
    MFA_GN_BAND=band), outputs NaN-poisoned."""
    monkeypatch.setenv("MFA_GN_CLUSTER", str(plan))
    monkeypatch.setenv("MFA_GN_BAND", str(band))
    n, c = x.shape[:2]
    dtype = str(x.dtype).removeprefix("torch.")
    pipeline = mfa_c.GroupNormPipeline(n, c, math.prod(x.shape[2:]), groups, dtype=dtype, layout=layout,
                                       activation=activation, pass_="backward")
    monkeypatch.delenv("MFA_GN_CLUSTER")
    monkeypatch.delenv("MFA_GN_BAND")
    dx = torch.full_like(x, float("nan"))
    dweight, dbias = torch.full_like(weight, float("nan")), torch.full_like(bias, float("nan"))
    pipeline.encode(dy=dy, x=x, weight=weight, bias=bias, mean=mean, rstd=rstd, dx=dx, dweight=dweight, dbias=dbias)
    torch.cuda.synchronize()
    pipeline.close()
    return dx, dweight, dbias


@pytest.mark.parametrize("shape, groups", PLAN_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_every_backward_plan_matches_float64(ctx, torch_cuda, rng, monkeypatch, shape, groups, dtype, layout):
    """The backward at every cluster size that holds the group and on the three-launch path: each no
    worse against float64 than twice the split path's error (plus a floor), and the same bits twice."""
    torch = torch_cuda
    x = _torch_input(torch, rng, shape, dtype, layout)
    dy = _torch_input(torch, rng, shape, dtype, layout)
    weight, bias = _affine(torch, rng, shape[1], dtype)
    _, mean, rstd = mfa_c.group_norm(x, groups, weight, bias, activation="silu", return_stats=True)
    refs = _torch_backward_reference(torch, x, weight, bias, dy, groups, "silu")
    floor = TOLERANCES[dtype] * (1 if dtype != "float32" else 10)
    split_errors, ran = None, []
    for plan in FORCED_PLANS:
        if not _fits(plan, shape, groups, dtype, layout, "backward"):
            continue
        grads = _backward_with_plan(torch, monkeypatch, plan, dy, x, weight, bias, mean, rstd, groups, layout, "silu")
        errors = [rel_error(ours, ref) for ours, ref in zip(grads, refs)]
        if plan == "split":
            split_errors = errors
        for error, split_error, what in zip(errors, split_errors, ("dx", "dweight", "dbias")):
            assert error <= 2 * split_error + floor, (plan, what, error, split_error)
        again = _backward_with_plan(torch, monkeypatch, plan, dy, x, weight, bias, mean, rstd, groups, layout, "silu")
        for first, second in zip(grads, again):
            assert torch.equal(first, second), plan
        ran.append(plan)
    assert ran[0] == "split" and len(ran) >= 2, ran


@pytest.mark.parametrize("shape, groups", BAND_CASES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_backward_bands_match_float64(ctx, torch_cuda, rng, monkeypatch, shape, groups, dtype):
    """The NHWC backward with bands of adjacent groups (MFA_GN_BAND) at several cluster sizes: no worse
    against float64 than twice the split path's error (plus a floor), and the same bits twice."""
    torch = torch_cuda
    n, c, spatial = shape[0], shape[1], math.prod(shape[2:])
    x, weight, bias = _banded_input(torch, rng, shape, groups, dtype)
    dy = _torch_input(torch, rng, shape, dtype, "nhwc")
    _, mean, rstd = mfa_c.group_norm(x, groups, weight, bias, activation="silu", return_stats=True)
    refs = _torch_backward_reference(torch, x, weight, bias, dy, groups, "silu")
    floor = TOLERANCES[dtype] * (1 if dtype != "float32" else 10)
    split = _backward_with_plan(torch, monkeypatch, "split", dy, x, weight, bias, mean, rstd, groups, "nhwc", "silu")
    split_errors = [rel_error(ours, ref) for ours, ref in zip(split, refs)]
    ran = []
    for band in (2, 4, 8):
        for plan in (1, 3, 8):
            if group_norm_band(n, c, spatial, groups, cluster=plan, band=band, dtype=dtype, layout="nhwc",
                               pass_="backward") != band:
                continue
            runs = [_backward_with_plan(torch, monkeypatch, plan, dy, x, weight, bias, mean, rstd, groups, "nhwc",
                                        "silu", band) for _ in range(2)]
            for ours, ref, split_error, what in zip(runs[0], refs, split_errors, ("dx", "dweight", "dbias")):
                error = rel_error(ours, ref)
                assert error <= 2 * split_error + floor, (band, plan, what, error, split_error)
            for first, second in zip(*runs):
                assert torch.equal(first, second), (band, plan)
            ran.append((band, plan))
    assert len(ran) >= 3, ran


@pytest.mark.parametrize("layout", LAYOUTS)
def test_onepass_backward_on_misaligned_tensors(ctx, torch_cuda, rng, monkeypatch, layout):
    torch = torch_cuda
    shape, groups = (2, 64, 8, 8), 4
    n, c, h, w = shape
    tensors = []
    for _ in range(2):
        storage = torch.from_numpy(rng.standard_normal(math.prod(shape) + 1)).to("cuda", torch.float16)
        tensors.append(storage[1:].view(shape) if layout == "nchw" else storage[1:].view(n, h, w, c).permute(0, 3, 1, 2))
    x, dy = tensors
    weight, bias = _affine(torch, rng, c, "float16")
    _, mean, rstd = mfa_c.group_norm(x, groups, weight, bias, activation="gelu", return_stats=True)
    refs = _torch_backward_reference(torch, x, weight, bias, dy, groups, "gelu")
    for plan in ("split", 1, 4):
        grads = _backward_with_plan(torch, monkeypatch, plan, dy, x, weight, bias, mean, rstd, groups, layout, "gelu")
        for ours, ref, what in zip(grads, refs, ("dx", "dweight", "dbias")):
            assert rel_error(ours, ref) <= TOLERANCES["float16"], (plan, what)


@pytest.mark.parametrize("shape", SD_SHAPES + LARGE_SHAPES[:1])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_benchmark_shapes(ctx, torch_cuda, rng, shape, layout):
    """The benchmark's shapes on their default (one-pass) plan, fp16 with SiLU, against float64."""
    torch = torch_cuda
    _check_forward(torch, rng, shape, 32, "float16", layout, "silu")


@pytest.mark.parametrize("shape", SD_SHAPES[:1])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_benchmark_shapes_backward(ctx, torch_cuda, rng, shape, layout):
    """The backward on a diffusion shape's default plan (NCHW: channels of 16 runs, summed as they go),
    fp16 with SiLU, against float64."""
    torch = torch_cuda
    x = _torch_input(torch, rng, shape, "float16", layout)
    dy = _torch_input(torch, rng, shape, "float16", layout)
    weight, bias = _affine(torch, rng, shape[1], "float16")
    _, mean, rstd = mfa_c.group_norm(x, 32, weight, bias, activation="silu", return_stats=True)
    grads = mfa_c.group_norm_backward(dy, x, weight, bias, mean, rstd, 32, activation="silu")
    refs = _torch_backward_reference(torch, x, weight, bias, dy, 32, "silu")
    for ours, ref, what in zip(grads, refs, ("dx", "dweight", "dbias")):
        assert rel_error(ours, ref) <= TOLERANCES["float16"], what


def test_bad_forced_plan_names_the_variable(ctx, monkeypatch):
    monkeypatch.setenv("MFA_GN_CLUSTER", "17")
    with pytest.raises(mfa_c.MFAError, match="MFA_GN_CLUSTER"):
        mfa_c.GroupNormPipeline(2, 8, 16, 4)
    monkeypatch.setenv("MFA_GN_CLUSTER", "auto")
    monkeypatch.setenv("MFA_GN_BAND", "3")
    with pytest.raises(mfa_c.MFAError, match="MFA_GN_BAND"):
        mfa_c.GroupNormPipeline(2, 8, 16, 4)
