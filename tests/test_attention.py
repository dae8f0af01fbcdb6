"""Attention forward: descriptor and tensor validation (CPU), NVRTC compilation of every variant on both paths
(CPU), and the forward against a float64 plain-softmax reference on the GPU (torch), both paths."""

import concurrent.futures
import math
import os

import numpy as np
import pytest

import mfa_c
from mfa_c._ffi import ffi, new_struct
from mfa_c._tensors import DTYPES, TensorView, compact_strides
from mfa_c.attention import (_INT32, TOLERANCES, _descriptor_fields, AttentionPipeline, attention, attention_compile_report,
                             attention_reference, attention_validate, attention_variants)
from conftest import rel_error

# ================================================================================================
# CPU: validation. Tensors describe made-up device addresses: validate reads only the structs.

B, SQ, SK, HQ, HKV, D = 2, 17, 33, 8, 2, 64
BASE = {"q": 0x1000000, "k": 0x2000000, "v": 0x3000000, "o": 0x4000000, "lse": 0x5000000,
        "cu_seqlens_q": 0x6000000, "cu_seqlens_k": 0x6100000}


def view(name, shape, dtype="float16", strides=None, **changes):
    fields = dict(data=BASE[name], shape=tuple(shape), strides=strides or compact_strides(tuple(shape)),
                  dtype=_INT32 if dtype == "int32" else DTYPES[dtype], device_id=0)
    fields.update(changes)
    return TensorView(**fields)


def dense_tensors(dtype="float16", lse=False, d_v=D):
    tensors = {"q": view("q", (B, SQ, HQ, D), dtype), "k": view("k", (B, SK, HKV, D), dtype),
               "v": view("v", (B, SK, HKV, d_v), dtype), "o": view("o", (B, SQ, HQ, d_v), dtype)}
    if lse:
        tensors["lse"] = view("lse", (B, HQ, SQ), "float32")
    return tensors


def varlen_tensors(total_q=40, total_k=70, lse=False):
    tensors = {"q": view("q", (total_q, HQ, D)), "k": view("k", (total_k, HKV, D)), "v": view("v", (total_k, HKV, D)),
               "o": view("o", (total_q, HQ, D)), "cu_seqlens_q": view("cu_seqlens_q", (B + 1,), "int32"),
               "cu_seqlens_k": view("cu_seqlens_k", (B + 1,), "int32")}
    if lse:
        tensors["lse"] = view("lse", (HQ, total_q), "float32")
    return tensors


def descriptor(**changes):
    fields = dict(batch=B, seq_q=SQ, seq_k=SK, heads_q=HQ, heads_kv=HKV, head_dim_qk=D)
    fields.update(changes)
    return fields


def expect_error(status, *words, tensors, **changes):
    with pytest.raises(mfa_c.MFAError) as caught:
        attention_validate(descriptor(**changes), tensors)
    assert caught.value.status_name == f"MFA_STATUS_{status}", str(caught.value)
    for word in words:
        assert word in caught.value.message, f"{caught.value.message!r} does not name {word!r}"


def bhsd_strides(b, s, h, d):
    """Strides, in [b, s, h, d] order, of a tensor stored as [b, h, s, d]."""
    return (h * s * d, d, s * d, 1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_valid_tensors_pass(dtype):
    attention_validate(descriptor(dtype=dtype), dense_tensors(dtype))
    attention_validate(descriptor(dtype=dtype, return_lse=True, causal=True), dense_tensors(dtype, lse=True))
    attention_validate(descriptor(head_dim_v=128), dense_tensors(d_v=128))
    attention_validate(descriptor(varlen=True, return_lse=True), varlen_tensors(lse=True))
    bhsd = {name: view(name, (B, s, h, D), strides=bhsd_strides(B, s, h, D))
            for name, s, h in (("q", SQ, HQ), ("k", SK, HKV), ("v", SK, HKV), ("o", SQ, HQ))}
    attention_validate(descriptor(), bhsd)
    padded = dense_tensors()  # rows of a wider buffer: seq stride 8 elements past the packed one
    padded["q"] = view("q", (B, SQ, HQ, D), strides=(SQ * (HQ * D + 8), HQ * D + 8, D, 1))
    attention_validate(descriptor(), padded)


@pytest.mark.parametrize("changes, status, words", [
    (dict(batch=0), "INVALID_ARGUMENT", ["descriptor->batch is 0"]),
    (dict(seq_q=-1), "INVALID_ARGUMENT", ["descriptor->seq_q is -1"]),
    (dict(seq_k=-3), "INVALID_ARGUMENT", ["descriptor->seq_k is -3"]),
    (dict(heads_q=0), "INVALID_ARGUMENT", ["descriptor->heads_q is 0"]),
    (dict(heads_kv=3), "INVALID_ARGUMENT", ["descriptor->heads_kv is 3", "divide heads_q"]),
    (dict(head_dim_qk=60), "INVALID_ARGUMENT", ["descriptor->head_dim_qk is 60", "multiple of 8"]),
    (dict(head_dim_qk=264), "INVALID_ARGUMENT", ["descriptor->head_dim_qk is 264"]),
    (dict(head_dim_v=4), "INVALID_ARGUMENT", ["descriptor->head_dim_v is 4"]),
    (dict(dtype="float32"), "INVALID_ARGUMENT", ["descriptor->dtype is 3"]),
    (dict(window=(-2, 0)), "INVALID_ARGUMENT", ["descriptor->window_left is -2"]),
    (dict(window=(4, -5)), "INVALID_ARGUMENT", ["descriptor->window_right is -5"]),
    (dict(scale=-1.0), "INVALID_ARGUMENT", ["descriptor->scale"]),
    (dict(scale=float("nan")), "INVALID_ARGUMENT", ["descriptor->scale"]),
    (dict(softcap=-2.0), "INVALID_ARGUMENT", ["descriptor->softcap"]),
    (dict(softcap=float("inf")), "INVALID_ARGUMENT", ["descriptor->softcap"]),
    (dict(splits=-1), "INVALID_ARGUMENT", ["descriptor->splits is -1"]),
    (dict(splits=1000), "INVALID_ARGUMENT", ["descriptor->splits is 1000"]),
])
def test_bad_descriptors(changes, status, words):
    expect_error(status, *words, tensors=dense_tensors(), **changes)


def test_bad_descriptor_fields_through_the_c_struct():
    for field, value, words in [("varlen", 2, "descriptor->varlen is 2"), ("return_lse", 3, "descriptor->return_lse is 3"),
                                ("path", 7, "descriptor->path is 7"), ("reserved", 1, "descriptor->reserved")]:
        struct = new_struct("mfa_attention_descriptor", **_descriptor_fields(**descriptor()))
        setattr(struct, field, value)
        c_tensors = {name: t.as_c() for name, t in dense_tensors().items()}
        tensors = new_struct("mfa_attention_tensors", **{name: t.pointer for name, t in c_tensors.items()})
        status = mfa_c.lib.mfa_attention_validate(struct, tensors)
        message = mfa_c.ffi.string(mfa_c.lib.mfa_last_error_message()).decode()
        assert status == mfa_c.lib.MFA_STATUS_INVALID_ARGUMENT and words in message, message


def _with(tensors, **replacements):
    return {**tensors, **replacements}


@pytest.mark.parametrize("make, changes, status, words", [
    (lambda: _with(dense_tensors(), q=view("q", (B, SQ, HQ, 32))), {}, "SHAPE_MISMATCH", ["q.shape", "[2, 17, 8, 64]"]),
    (lambda: _with(dense_tensors(), k=view("k", (B, SK, 4, D))), {}, "SHAPE_MISMATCH", ["k.shape"]),
    (lambda: _with(dense_tensors(), v=view("v", (B, SK + 1, HKV, D))), {}, "SHAPE_MISMATCH", ["v.shape"]),
    (lambda: _with(dense_tensors(), o=view("o", (B, SQ, HQ, 128))), {}, "SHAPE_MISMATCH", ["o.shape"]),
    (lambda: _with(dense_tensors(), q=view("q", (B, SQ, HQ, D), "bfloat16")), {}, "SHAPE_MISMATCH", ["q.dtype"]),
    (lambda: _with(dense_tensors(), k=view("k", (B, SK, HKV, D), strides=(SK * HKV * D * 2, HKV * D * 2, D * 2, 2))),
     {}, "BAD_STRIDE", ["k.strides[3]", "unit-stride"]),
    (lambda: _with(dense_tensors(), v=view("v", (B, SK, HKV, D), strides=(SK * HKV * 68, HKV * 68, 68, 1))),
     {}, "BAD_STRIDE", ["v.strides[2] is 68", "multiples of 8"]),
    (lambda: _with(dense_tensors(), q=view("q", (B, SQ, HQ, D), data=BASE["q"] + 2)), {}, "MISALIGNED", ["q.data"]),
    (lambda: dense_tensors(), dict(return_lse=True), "INVALID_ARGUMENT", ["lse is NULL"]),
    (lambda: dense_tensors(lse=True), {}, "INVALID_ARGUMENT", ["lse is given", "return_lse is 0"]),
    (lambda: _with(dense_tensors(lse=True), lse=view("lse", (B, SQ, HQ), "float32")), dict(return_lse=True),
     "SHAPE_MISMATCH", ["lse.shape", "[batch, heads_q, seq_q]"]),
    (lambda: _with(dense_tensors(lse=True), lse=view("lse", (B, HQ, SQ))), dict(return_lse=True),
     "SHAPE_MISMATCH", ["lse.dtype"]),
    (lambda: _with(dense_tensors(), o=view("o", (B, SQ, HQ, D), data=BASE["q"])), {}, "INVALID_ARGUMENT",
     ["o overlaps q"]),
    (lambda: {k: v for k, v in dense_tensors().items() if k != "v"}, {}, "INVALID_ARGUMENT", ["v is NULL"]),
    (lambda: dense_tensors(), dict(varlen=True), "INVALID_ARGUMENT", ["cu_seqlens_q is NULL"]),
    (lambda: varlen_tensors(), {}, "INVALID_ARGUMENT", ["cu_seqlens_q is given", "varlen is 0"]),
    (lambda: _with(varlen_tensors(), cu_seqlens_k=view("cu_seqlens_k", (B,), "int32")), dict(varlen=True),
     "SHAPE_MISMATCH", ["cu_seqlens_k.shape", "batch + 1"]),
    (lambda: _with(varlen_tensors(), cu_seqlens_q=view("cu_seqlens_q", (B + 1,), "float32")), dict(varlen=True),
     "SHAPE_MISMATCH", ["cu_seqlens_q.dtype", "int32"]),
    (lambda: _with(varlen_tensors(), v=view("v", (71, HKV, D))), dict(varlen=True), "SHAPE_MISMATCH",
     ["v.shape[0] is 71", "k.shape[0] is 70"]),
    (lambda: _with(varlen_tensors(lse=True), lse=view("lse", (HQ, 41), "float32")), dict(varlen=True, return_lse=True),
     "SHAPE_MISMATCH", ["lse.shape", "[heads_q, total_q]"]),
])
def test_bad_tensors(make, changes, status, words):
    expect_error(status, *words, tensors=make(), **changes)


# ================================================================================================
# CPU: every variant compiles for sm_90a without spills; keys are readable and distinct.

VARIANTS = attention_variants()


def test_variant_enumeration_covers_the_options():
    keys = {(v["path"], v["dtype"], v["head_dim_qk"], v["head_dim_v"], v["window"], v["softcap"], v["seq_q"])
            for v in VARIANTS}
    assert len(keys) == len(VARIANTS)
    portable = [v for v in VARIANTS if v["path"] == "portable"]
    assert {v["seq_q"] for v in portable} == {1, 128}  # the decode variant beside the 64-row one
    assert {v["head_dim_qk"] for v in portable} >= {32, 64, 80, 96, 128, 160, 192, 256}
    assert any(v["head_dim_qk"] != v["head_dim_v"] for v in portable)
    assert {v["window"] for v in portable} == {(-1, -1), (-1, 0), (64, 0)}
    assert {v["softcap"] > 0 for v in portable} == {False, True}
    assert {v["dtype"] for v in portable} == {"float16", "bfloat16"}


def _report(variant):
    options = dict(variant)
    return attention_compile_report("sm_90a", **options)


@pytest.fixture(scope="module")
def all_reports():
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        return list(pool.map(_report, VARIANTS))


def test_every_variant_compiles_without_spills(all_reports):
    keys = []
    for variant, reports in zip(VARIANTS, all_reports):
        expected = {"mfa_attention_sm80", "mfa_attention_combine"} if variant["path"] == "portable" else \
            {"mfa_attention_sm90", "mfa_attention_sm90_clear"}
        assert {r["kernel"] for r in reports} == expected, (variant, reports)
        for report in reports:
            assert report["spill_store_bytes"] == 0 and report["spill_load_bytes"] == 0, report
            assert report["stack_frame_bytes"] == 0, report
            assert (1 if report["kernel"] == "mfa_attention_sm90_clear" else 16) <= report["registers"] <= 255, report
            limit = 227 * 1024
            assert report["static_shared_bytes"] + report["dynamic_shared_bytes"] <= limit, report
        keys.append(reports[0]["variant"])
    assert len(set(keys)) == len(keys), "variant keys must be distinct"
    for key, variant in zip(keys, VARIANTS):
        dtype = {"float16": "f16", "bfloat16": "bf16"}[variant["dtype"]]
        path = {"portable": "sm80", "hopper": "sm90"}[variant["path"]]
        assert key.startswith(f"attention.{path}.{dtype}.d{variant['head_dim_qk']}x{variant['head_dim_v']}"), key
        assert ("causal" in key) == (variant["window"] == (-1, 0)), key
        assert ("window" in key) == (variant["window"] == (64, 0)), key
        assert ("softcap" in key) == (variant["softcap"] > 0), key
        assert ("decode" in key) == (variant["seq_q"] == 1), key


def test_hopper_variants_exist_for_the_benchmark_head_dims():
    hopper = {(v["dtype"], v["head_dim_qk"]) for v in VARIANTS if v["path"] == "hopper"}
    for dtype in ("float16", "bfloat16"):
        for d in (64, 128, 256):
            assert (dtype, d) in hopper, f"no Hopper variant for {dtype} d={d}"


def test_compile_report_names_an_unserved_hopper_request():
    with pytest.raises(mfa_c.MFAError) as caught:
        attention_compile_report("sm_90a", head_dim_qk=32, path="hopper")
    assert caught.value.status_name == "MFA_STATUS_UNSUPPORTED" and "HOPPER" in caught.value.message


# ================================================================================================
# GPU: against the float64 reference. Inputs are N(0, 1) (scores of spread ~1 after the 1/sqrt(d)
# scale); outputs are poisoned with NaN first; rel_error of anything non-finite is inf.


def torch_dtype(torch, name):
    return getattr(torch, name)


def random_tensor(torch, rng, shape, dtype):
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to("cuda", torch_dtype(torch, dtype))


def poisoned(torch, shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def run_pipeline(torch, q, k, v, *, layout="bshd", cu=None, max_seqlen=None, lse=True, **options):
    """Runs an AttentionPipeline on poisoned o / lse; returns (o, lse, pipeline). q/k/v as given (layout)."""
    bshd = (lambda t: t.permute(0, 2, 1, 3)) if layout == "bhsd" else (lambda t: t)
    qv, kv = bshd(q), bshd(k)
    if cu is None:
        batch, seq_q, heads_q, d = qv.shape
        seq_k, heads_kv = kv.shape[1], kv.shape[2]
        o_shape = (*q.shape[:-1], v.shape[-1])
        lse_shape = (batch, heads_q, seq_q)
    else:
        batch = cu[0].numel() - 1
        (seq_q, seq_k), heads_q, heads_kv, d = max_seqlen, q.shape[1], k.shape[1], q.shape[-1]
        o_shape = (q.shape[0], heads_q, v.shape[-1])
        lse_shape = (heads_q, q.shape[0])
    pipeline = AttentionPipeline(batch, seq_q, seq_k, heads_q, heads_kv, d, v.shape[-1], dtype=q.dtype,
                                 varlen=cu is not None, return_lse=lse, **options)
    o = poisoned(torch, o_shape, q.dtype)
    lse_out = poisoned(torch, lse_shape, torch.float32) if lse else None
    pipeline.encode(q, k, v, o, lse_out, *(cu or (None, None)), layout=layout)
    torch.cuda.synchronize()
    return o, lse_out, pipeline


def check_against_reference(torch, q, k, v, o, lse, *, layout="bshd", cu=None, causal=False, window=None, scale=None,
                            softcap=0.0, tolerance=None):
    ref_o, ref_lse = attention_reference(q, k, v, causal=causal, window=window, scale=scale, softcap=softcap,
                                         cu_seqlens_q=None if cu is None else cu[0].cpu().numpy(),
                                         cu_seqlens_k=None if cu is None else cu[1].cpu().numpy(), layout=layout)
    dtype = str(q.dtype).split(".")[1]
    error = rel_error(o.cpu().double().numpy(), ref_o)
    assert error <= (tolerance or TOLERANCES[dtype]), f"o: relative error {error:.3g} ({dtype})"
    if lse is not None:
        got = lse.cpu().double().numpy()
        assert not np.isnan(got).any(), "lse holds NaN"
        assert np.array_equal(np.isneginf(got), np.isneginf(ref_lse)), "lse: -inf where the reference differs"
        finite = np.isfinite(ref_lse)
        assert np.isfinite(got[finite]).all(), "lse: a visible row's LSE is not finite"
        if finite.any():
            difference = np.abs(got[finite] - ref_lse[finite]).max()
            assert difference <= 2e-3 * max(1.0, np.abs(ref_lse[finite]).max()), f"lse: max difference {difference:.3g}"
    return ref_o, ref_lse


def hopper_available(ctx):
    return ctx.arch == "sm_90a"


PATHS = ["portable", "hopper"]


def skip_unless_path(ctx, path, **descriptor):
    if path == "hopper":
        if not hopper_available(ctx):
            pytest.skip(f"the Hopper path needs sm_90a; this device is {ctx.arch}")
        try:
            AttentionPipeline(**descriptor, path="hopper")
        except mfa_c.MFAError as error:
            if error.status_name == "MFA_STATUS_UNSUPPORTED":
                pytest.skip(f"hopper_supports says no: {error.message}")
            raise


def dense_case(torch, rng, *, dtype="float16", batch=2, seq_q=127, seq_k=127, heads_q=4, heads_kv=4, d=64, d_v=None,
               layout="bshd"):
    d_v = d_v or d
    shape = (lambda s, h, dim: (batch, h, s, dim)) if layout == "bhsd" else (lambda s, h, dim: (batch, s, h, dim))
    return (random_tensor(torch, rng, shape(seq_q, heads_q, d), dtype),
            random_tensor(torch, rng, shape(seq_k, heads_kv, d), dtype),
            random_tensor(torch, rng, shape(seq_k, heads_kv, d_v), dtype))


def descriptor_of(q, k, v, layout="bshd"):
    if layout == "bhsd":
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    return dict(batch=q.shape[0], seq_q=q.shape[1], seq_k=k.shape[1], heads_q=q.shape[2], heads_kv=k.shape[2],
                head_dim_qk=q.shape[3], head_dim_v=v.shape[3], dtype=str(q.dtype).split(".")[1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("d, d_v", [(32, 32), (64, 64), (80, 80), (96, 96), (128, 128), (160, 160), (192, 192),
                                    (256, 256), (192, 128), (64, 128), (40, 40)])
def test_head_dims(torch_cuda, ctx, rng, path, dtype, d, d_v):
    q, k, v = dense_case(torch_cuda, rng, dtype=dtype, seq_q=131, seq_k=200, d=d, d_v=d_v)
    skip_unless_path(ctx, path, **descriptor_of(q, k, v))
    o, lse, pipeline = run_pipeline(torch_cuda, q, k, v, path=path)
    assert ("sm90" if path == "hopper" else "sm80") in pipeline.variant
    check_against_reference(torch_cuda, q, k, v, o, lse)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seq_q, seq_k", [(1, 1), (1, 17), (17, 1), (17, 127), (127, 17), (1000, 1000), (127, 1000),
                                          (1000, 127), (64, 64), (65, 129)])
@pytest.mark.parametrize("causal", [False, True])
def test_lengths_and_causal(torch_cuda, ctx, rng, path, seq_q, seq_k, causal):
    q, k, v = dense_case(torch_cuda, rng, dtype="bfloat16", batch=1, seq_q=seq_q, seq_k=seq_k, heads_q=2, heads_kv=2,
                         d=128)
    skip_unless_path(ctx, path, **descriptor_of(q, k, v), causal=causal)
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, causal=causal, path=path)
    _, ref_lse = check_against_reference(torch_cuda, q, k, v, o, lse, causal=causal)
    if causal and seq_q > seq_k:  # bottom-right alignment: the first seq_q - seq_k rows see nothing
        assert np.isneginf(ref_lse[:, :, :seq_q - seq_k]).all()
        assert torch_cuda.all(o[:, :seq_q - seq_k] == 0), "fully masked rows must be exactly 0"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("window", [(16, 0), (0, 0), (32, 32), (-1, 5), (100, -1), (3, 200)])
@pytest.mark.parametrize("seq_q, seq_k", [(300, 300), (70, 260), (260, 70)])
def test_windows(torch_cuda, ctx, rng, path, window, seq_q, seq_k):
    q, k, v = dense_case(torch_cuda, rng, batch=1, seq_q=seq_q, seq_k=seq_k, heads_q=2, heads_kv=1, d=64)
    skip_unless_path(ctx, path, **descriptor_of(q, k, v), window=window)
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, window=window, path=path)
    check_against_reference(torch_cuda, q, k, v, o, lse, window=window)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("softcap, scale, causal", [(30.0, None, False), (5.0, 0.5, True), (1.0, None, False)])
def test_softcap_and_scale(torch_cuda, ctx, rng, path, softcap, scale, causal):
    q, k, v = dense_case(torch_cuda, rng, seq_q=150, seq_k=190, d=128)
    q = q * 3  # larger scores, so that the cap bends them
    skip_unless_path(ctx, path, **descriptor_of(q, k, v), softcap=softcap)
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, softcap=softcap, scale=scale, causal=causal, path=path)
    check_against_reference(torch_cuda, q, k, v, o, lse, softcap=softcap, scale=scale, causal=causal)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("heads_q, heads_kv", [(16, 2), (8, 1), (6, 3)])
@pytest.mark.parametrize("seq_q", [97, 5, 40])  # below 64 queries the portable path packs the GQA group
def test_gqa_and_mqa(torch_cuda, ctx, rng, path, heads_q, heads_kv, seq_q):
    q, k, v = dense_case(torch_cuda, rng, dtype="bfloat16", seq_q=seq_q, seq_k=300, heads_q=heads_q,
                         heads_kv=heads_kv, d=128)
    skip_unless_path(ctx, path, **descriptor_of(q, k, v), causal=True)
    o, lse, pipeline = run_pipeline(torch_cuda, q, k, v, causal=True, window=(50, 0), path=path)
    if path == "portable":
        assert ("packgqa" in pipeline.variant) == (seq_q < 64), pipeline.variant
    check_against_reference(torch_cuda, q, k, v, o, lse, causal=True, window=(50, 0))


@pytest.mark.parametrize("path", PATHS)
def test_bhsd_layout_and_padded_strides(torch_cuda, ctx, rng, path):
    q, k, v = dense_case(torch_cuda, rng, seq_q=100, seq_k=140, heads_q=4, heads_kv=2, d=64, layout="bhsd")
    skip_unless_path(ctx, path, **descriptor_of(q, k, v, "bhsd"))
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, layout="bhsd", path=path)
    assert o.shape == q.shape
    check_against_reference(torch_cuda, q, k, v, o, lse, layout="bhsd")
    # Rows of wider buffers (token stride 8 elements past the packed one) and a non-compact batch.
    wide_q = random_tensor(torch_cuda, rng, (3, 100, 4, 72), "float16")[::2, :, :, :64]
    wide_k = random_tensor(torch_cuda, rng, (2, 140, 2, 80), "float16")[:, :, :, 8:72]
    wide_v = random_tensor(torch_cuda, rng, (2, 140, 2, 64), "float16")
    o, lse, _ = run_pipeline(torch_cuda, wide_q, wide_k, wide_v, path=path)
    check_against_reference(torch_cuda, wide_q, wide_k, wide_v, o, lse)


def varlen_case(torch, rng, lengths_q, lengths_k, heads_q=4, heads_kv=2, d=64, dtype="float16"):
    cu_q = np.concatenate([[0], np.cumsum(lengths_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lengths_k)]).astype(np.int32)
    q = random_tensor(torch, rng, (int(cu_q[-1]), heads_q, d), dtype)
    k = random_tensor(torch, rng, (int(cu_k[-1]), heads_kv, d), dtype)
    v = random_tensor(torch, rng, (int(cu_k[-1]), heads_kv, d), dtype)
    cu = (torch.from_numpy(cu_q).cuda(), torch.from_numpy(cu_k).cuda())
    return q, k, v, cu, (max(lengths_q), max(lengths_k))


# 32 query heads give the Hopper path more tiles than an H100 or H200 has SMs, so that its persistent blocks
# take tiles past a sequence's end (skipped) and rows without a key (stored as 0) from the tile counter.
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads_q, heads_kv", [(4, 2), (32, 8)])
def test_varlen(torch_cuda, ctx, rng, path, causal, heads_q, heads_kv):
    lengths_q, lengths_k = [5, 0, 1, 130, 64, 17, 1], [7, 3, 0, 200, 64, 17, 300]
    q, k, v, cu, max_seqlen = varlen_case(torch_cuda, rng, lengths_q, lengths_k, heads_q=heads_q, heads_kv=heads_kv)
    if path == "hopper":
        skip_unless_path(ctx, path, batch=len(lengths_q), seq_q=max_seqlen[0], seq_k=max_seqlen[1], heads_q=heads_q,
                         heads_kv=heads_kv, head_dim_qk=64, varlen=True, causal=causal)
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, cu=cu, max_seqlen=max_seqlen, causal=causal, path=path)
    _, ref_lse = check_against_reference(torch_cuda, q, k, v, o, lse, cu=cu, causal=causal)
    # sequence 2 has one query and no key: output 0, LSE -inf
    row = int(cu[0][2])
    assert torch_cuda.all(o[row] == 0) and bool(torch_cuda.isneginf(lse[:, row]).all())


@pytest.mark.parametrize("seq_q", [1, 4, 16])
@pytest.mark.parametrize("seq_k, batch", [(32768, 1), (4096, 3), (777, 2)])
def test_split_kv_decode_equals_unsplit(torch_cuda, ctx, rng, seq_q, seq_k, batch):
    q, k, v = dense_case(torch_cuda, rng, dtype="bfloat16", batch=batch, seq_q=seq_q, seq_k=seq_k, heads_q=8,
                         heads_kv=1, d=128)
    o_auto, lse_auto, auto = run_pipeline(torch_cuda, q, k, v, causal=True, path="portable")
    assert ".split" in auto.variant and auto.info["workspace_bytes"] > 0, auto.info
    splits = int(auto.variant.rsplit(".split", 1)[1])
    rows = batch * 8 * seq_q
    aligned = lambda n: (n + 255) // 256 * 256
    assert auto.info["workspace_bytes"] == aligned(splits * rows * 128 * 4) + aligned(splits * rows * 4), auto.info
    o_one, lse_one, one = run_pipeline(torch_cuda, q, k, v, causal=True, path="portable", splits=1)
    assert ".split" not in one.variant and one.info["workspace_bytes"] == 0
    o_many, lse_many, _ = run_pipeline(torch_cuda, q, k, v, causal=True, path="portable", splits=7)
    for o, lse in ((o_auto, lse_auto), (o_one, lse_one), (o_many, lse_many)):
        check_against_reference(torch_cuda, q, k, v, o, lse, causal=True)
    assert rel_error(o_auto, o_one) <= 1e-2 and rel_error(o_many, o_one) <= 1e-2
    assert float((lse_auto - lse_one).abs().max()) <= 1e-3


@pytest.mark.parametrize("splits", [2, 9, 17, 33, 100, 256])
@pytest.mark.parametrize("d_qk, d_v", [(80, 80), (64, 256)])
def test_split_kv_combine_row_mappings(torch_cuda, ctx, rng, splits, d_qk, d_v):
    # The combine gives a row 1, 2, 4 or 8 warps by the split count (past 64 splits, several rounds of
    # loads); d_v 256 takes two column slices, d_v 80 leaves lanes of its slice idle. 15 rows: no whole
    # number of the blocks' 8, 4, 2 rows. Deterministic: a second run gives the same bits.
    q, k, v = dense_case(torch_cuda, rng, dtype="bfloat16", batch=1, seq_q=5, seq_k=16384 + 7, heads_q=3,
                         heads_kv=1, d=d_qk, d_v=d_v)
    o, lse, pipeline = run_pipeline(torch_cuda, q, k, v, path="portable", splits=splits)
    assert pipeline.variant.endswith(f".split{splits}"), pipeline.variant
    check_against_reference(torch_cuda, q, k, v, o, lse)
    o_again, lse_again, _ = run_pipeline(torch_cuda, q, k, v, path="portable", splits=splits)
    assert torch_cuda.equal(o, o_again) and torch_cuda.equal(lse, lse_again)


def test_decode_splits_to_one_block_an_sm(ctx):
    # Decode blocks (a head group's 8 packed rows) split to about one an SM, none left without key blocks;
    # a grid that already holds one an SM does not split.
    key_blocks = 16384 // 64
    one = AttentionPipeline(1, 1, 16384, 32, 4, 128, dtype="bfloat16", context=ctx)
    splits = -(-key_blocks // -(-key_blocks // (ctx.sm_count // 4)))
    assert one.variant.endswith(f".split{splits}"), one.variant
    full = AttentionPipeline(-(-ctx.sm_count // 4), 1, 16384, 32, 4, 128, dtype="bfloat16", context=ctx)
    assert ".decode" in full.variant and ".split" not in full.variant, full.variant


def test_split_kv_with_empty_splits_and_masked_rows(torch_cuda, ctx, rng):
    # window (0, 0): each row sees one key, so most splits see nothing; seq_q > seq_k masks the first rows.
    q, k, v = dense_case(torch_cuda, rng, batch=1, seq_q=8, seq_k=5000, heads_q=4, heads_kv=4, d=64)
    o, lse, pipeline = run_pipeline(torch_cuda, q, k, v, window=(0, 0), path="portable", splits=16)
    check_against_reference(torch_cuda, q, k, v, o, lse, window=(0, 0))
    q, k, v = dense_case(torch_cuda, rng, batch=2, seq_q=12, seq_k=3, heads_q=2, heads_kv=2, d=64)
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, causal=True, path="portable", splits=3)
    check_against_reference(torch_cuda, q, k, v, o, lse, causal=True)
    assert torch_cuda.all(o[:, :9] == 0) and bool(torch_cuda.isneginf(lse[:, :, :9]).all())


def test_split_kv_varlen(torch_cuda, ctx, rng):
    q, k, v, cu, max_seqlen = varlen_case(torch_cuda, rng, [1, 3, 0, 2], [5000, 0, 7, 1200], heads_q=8, heads_kv=1,
                                          d=128, dtype="bfloat16")
    o, lse, pipeline = run_pipeline(torch_cuda, q, k, v, cu=cu, max_seqlen=max_seqlen, causal=True, path="portable")
    assert ".split" in pipeline.variant
    check_against_reference(torch_cuda, q, k, v, o, lse, cu=cu, causal=True)


@pytest.mark.parametrize("options", [dict(), dict(causal=True), dict(window=(64, 16), softcap=20.0)])
def test_hopper_and_portable_agree(torch_cuda, ctx, rng, options):
    q, k, v = dense_case(torch_cuda, rng, dtype="bfloat16", batch=2, seq_q=1000, seq_k=1000, heads_q=4, heads_kv=2,
                         d=128)
    skip_unless_path(ctx, "hopper", **descriptor_of(q, k, v), **options)
    o_h, lse_h, _ = run_pipeline(torch_cuda, q, k, v, path="hopper", **options)
    o_p, lse_p, _ = run_pipeline(torch_cuda, q, k, v, path="portable", **options)
    assert rel_error(o_h, o_p) <= TOLERANCES["bfloat16"]
    assert float((lse_h - lse_p).abs().max()) <= 1e-3


def test_auto_path_choice(torch_cuda, ctx, rng):
    q, k, v = dense_case(torch_cuda, rng, batch=2, seq_q=512, seq_k=512, heads_q=16, heads_kv=16, d=128)
    _, _, pipeline = run_pipeline(torch_cuda, q, k, v)
    hopper_ok = hopper_available(ctx)
    if hopper_ok:
        try:
            AttentionPipeline(**descriptor_of(q, k, v), path="hopper")
        except mfa_c.MFAError as error:
            if error.status_name != "MFA_STATUS_UNSUPPORTED":
                raise
            hopper_ok = False
    assert ("sm90" in pipeline.variant) == hopper_ok, pipeline.variant


def test_one_call_api_torch_numpy_and_lse(torch_cuda, ctx, rng):
    q, k, v = dense_case(torch_cuda, rng, batch=1, seq_q=33, seq_k=70, heads_q=2, heads_kv=1, d=64)
    o, lse = attention(q, k, v, causal=True, return_lse=True)
    check_against_reference(torch_cuda, q, k, v, o, lse, causal=True)
    o_np, lse_np = attention(q.cpu().numpy(), k.cpu().numpy(), v.cpu().numpy(), causal=True, return_lse=True)
    assert isinstance(o_np, np.ndarray) and rel_error(o_np, o.cpu().numpy()) <= 1e-3
    assert np.allclose(lse_np, lse.cpu().numpy(), atol=1e-4)
    qb, kb, vb = (t.permute(0, 2, 1, 3).contiguous() for t in (q, k, v))
    o_b = attention(qb, kb, vb, causal=True, layout="bhsd")
    assert o_b.shape == (1, 2, 33, 64)
    assert rel_error(o_b.permute(0, 2, 1, 3), o) <= 1e-3
    q, k, v, cu, (mq, mk) = varlen_case(torch_cuda, rng, [3, 0, 40], [9, 4, 40])
    o = attention(q, k, v, cu_seqlens_q=cu[0], cu_seqlens_k=cu[1], max_seqlen_q=mq, max_seqlen_k=mk)
    check_against_reference(torch_cuda, q, k, v, o, None, cu=cu)


def test_empty_queries_and_keys(torch_cuda, ctx, rng):
    q, k, v = dense_case(torch_cuda, rng, batch=1, seq_q=0, seq_k=10, d=64)
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, path="portable")
    assert o.numel() == 0
    q, k, v = dense_case(torch_cuda, rng, batch=1, seq_q=10, seq_k=0, d=64)
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, path="portable")
    assert torch_cuda.all(o == 0) and bool(torch_cuda.isneginf(lse).all())


# The two forwards that keep state in their workspace: split-KV's partials (the split forward, then its
# combine) and the Hopper path's tile counter (its clearing kernel, then the persistent grid, here with more
# tiles than an H100 or H200 has SMs: a counter left unreset would skip tiles). Returns q, k, v and the shape.
def workspace_case(torch, ctx, rng, path):
    shape = dict(seq_q=4, seq_k=4096, heads_q=8, heads_kv=1, d=128) if path == "portable" else \
        dict(seq_q=500, seq_k=520, heads_q=64, heads_kv=8, d=64)
    q, k, v = dense_case(torch, rng, dtype="bfloat16", batch=1, **shape)
    if path == "hopper":
        skip_unless_path(ctx, path, **descriptor_of(q, k, v), causal=True)
    return q, k, v, shape


# A replayed command list starts each forward from a fresh workspace state, on new inputs each time.
@pytest.mark.parametrize("path", PATHS)
def test_command_list_replays_the_forward(torch_cuda, ctx, rng, path):
    q, k, v, shape = workspace_case(torch_cuda, ctx, rng, path)
    pipeline = AttentionPipeline(**descriptor_of(q, k, v), causal=True, return_lse=True, path=path)
    assert pipeline.info["workspace_bytes"] > 0
    assert (".split" in pipeline.variant) == (path == "portable"), pipeline.variant
    o = poisoned(torch_cuda, q.shape[:-1] + (v.shape[-1],), q.dtype)
    lse = poisoned(torch_cuda, (1, shape["heads_q"], shape["seq_q"]), torch_cuda.float32)
    commands = mfa_c.CommandList(ctx)
    with commands.record() as stream:
        pipeline.encode(q, k, v, o, lse, stream=stream)
    assert commands.count == 2
    for replay in range(3):
        if replay:  # new inputs: a replay that kept the last one's partials or tile counter would show it
            for tensor in (q, k, v):
                tensor.copy_(torch_cuda.randn_like(tensor))
        o.fill_(float("nan"))
        lse.fill_(float("nan"))
        commands.launch()
        torch_cuda.cuda.synchronize()
        check_against_reference(torch_cuda, q, k, v, o, lse, causal=True)
    commands.close()


# Both workspaces are required: without one, or with too few bytes, encode refuses before it launches
# anything, so the (poisoned) output stays untouched.
@pytest.mark.parametrize("path", PATHS)
def test_encode_refuses_a_missing_workspace(torch_cuda, ctx, rng, path):
    q, k, v, _ = workspace_case(torch_cuda, ctx, rng, path)
    pipeline = AttentionPipeline(**descriptor_of(q, k, v), causal=True, path=path)
    needed, workspace = pipeline.info["workspace_bytes"], pipeline._workspace
    o = poisoned(torch_cuda, q.shape[:-1] + (v.shape[-1],), q.dtype)
    try:
        pipeline._workspace = type("NoWorkspace", (), {"pointer": ffi.NULL})()
        with pytest.raises(mfa_c.MFAError) as caught:
            pipeline.encode(q, k, v, o)
        assert caught.value.status_name == "MFA_STATUS_INVALID_ARGUMENT" and "workspace" in caught.value.message
        pipeline._workspace = workspace
        pipeline.info["workspace_bytes"] = needed - 1
        with pytest.raises(mfa_c.MFAError) as caught:
            pipeline.encode(q, k, v, o)
        assert f"the pipeline needs {needed}" in caught.value.message, caught.value.message
    finally:
        pipeline._workspace, pipeline.info["workspace_bytes"] = workspace, needed
    torch_cuda.cuda.synchronize()
    assert bool(torch_cuda.isnan(o).all()), "a refused encode wrote o"


def test_nan_inputs_never_pass(torch_cuda, ctx, rng):
    q, k, v = dense_case(torch_cuda, rng, batch=1, seq_q=20, seq_k=20, d=64)
    v[0, 3, 0, 5] = float("nan")
    o, lse, _ = run_pipeline(torch_cuda, q, k, v, path="portable")
    assert bool(torch_cuda.isnan(o).any()), "a NaN in v must reach o"
    ref, _ = attention_reference(q, k, v.nan_to_num())
    assert rel_error(o.cpu().numpy(), ref) == math.inf


def test_encode_refuses_bad_tensors_and_touches_nothing(torch_cuda, ctx, rng):
    q, k, v = dense_case(torch_cuda, rng, batch=1, seq_q=20, seq_k=20, d=64)
    pipeline = AttentionPipeline(**descriptor_of(q, k, v))
    o = poisoned(torch_cuda, (1, 20, 4, 64), q.dtype)
    with pytest.raises(mfa_c.MFAError) as caught:
        pipeline.encode(q, k[:, :10], v, o)
    assert caught.value.status_name == "MFA_STATUS_SHAPE_MISMATCH" and "k.shape" in caught.value.message
    torch_cuda.cuda.synchronize()
    assert bool(torch_cuda.isnan(o).all()), "o was written on error"
