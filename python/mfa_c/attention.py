"""Attention forward (FlashAttention), and its float64 reference.

    o = mfa_c.attention(q, k, v, causal=True)                       # torch CUDA tensors: zero-copy
    o, lse = mfa_c.attention(q, k, v, window=(127, 0), return_lse=True)
    o = mfa_c.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=mq, max_seqlen_k=mk)

q [batch, seq_q, heads_q, d_qk], k [batch, seq_k, heads_kv, d_qk], v [batch, seq_k, heads_kv, d_v]
(layout="bshd"), or [batch, heads, seq, dim] with layout="bhsd"; varlen: [tokens, heads, dim] packed,
int32 cu_seqlens [batch + 1]. heads_kv divides heads_q (GQA / MQA). window=(left, right), -1 unbounded,
aligned to the bottom right as causal is. lse: fp32 [batch, heads_q, seq_q] (varlen [heads_q, total_q]),
natural log; a row with no visible key gets o = 0 and lse = -inf. numpy arrays are copied through the
device and give numpy results (float16: numpy has no bfloat16).
"""

import contextlib
import math

import numpy as np

from ._context import DeviceBuffer, WorkspacePipeline, default_context
from ._ffi import check, ffi, invalid_argument, lib, new_struct, new_struct_array, variant_descriptors
from ._tensors import DTYPES, DType, TensorView, compact_strides, device_view, dtype_of, is_torch_tensor
from .gemm import _default_stream, _float64, _report_dict

_PATHS = {"auto": lib.MFA_ATTENTION_PATH_AUTO, "portable": lib.MFA_ATTENTION_PATH_PORTABLE,
          "hopper": lib.MFA_ATTENTION_PATH_HOPPER}
_PATH_NAMES = {value: name for name, value in _PATHS.items()}
_DTYPE_NAMES = {dtype.mfa: dtype.name for dtype in DTYPES.values()}
_INT32 = DType("int32", lib.MFA_DTYPE_NONE, lib.MFA_DTYPE_CODE_INT, 32)
_LAYOUTS = ("bshd", "bhsd")

# Relative (Frobenius) error allowed against attention_reference, by element dtype: P is rounded to the
# input type before P V (as every FlashAttention does) and O once more on output.
TOLERANCES = {"float16": 2e-3, "bfloat16": 1.2e-2}


class AttentionPipeline(WorkspacePipeline):
    """The attention forward compiled for one descriptor, encoded many times.

    AttentionPipeline(batch, seq_q, seq_k, heads_q, heads_kv, head_dim_qk, head_dim_v=None, *, dtype="float16",
                      causal=False, window=None, scale=None, softcap=0.0, varlen=False, return_lse=False,
                      path="auto", splits=0, context=None)
    varlen: seq_q / seq_k are the maxima over the sequences.
    """

    _OP = "attention"

    def __init__(self, batch, seq_q, seq_k, heads_q, heads_kv, head_dim_qk, head_dim_v=None, *, context=None,
                 **options):
        self._create(context or default_context(),
                     _descriptor_fields(batch, seq_q, seq_k, heads_q, heads_kv, head_dim_qk, head_dim_v, **options))

    @property
    def variant(self):
        return self.info["variant"]

    def encode(self, q, k, v, o, lse=None, cu_seqlens_q=None, cu_seqlens_k=None, *, layout="bshd", stream=None):
        """Enqueues the forward on device tensors (layout as in mfa_c.attention); stream None: torch's
        current stream for torch tensors."""
        device = self.context.device
        views = _sequence_views(device, layout, q=q, k=k, v=v, o=o)
        if lse is not None:
            views["lse"] = device_view(lse, "lse", device)
        for name, value in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
            if value is not None:
                views[name] = _int32_view(value, name, device)
        self._encode_views(_default_stream(stream, q), views)


def attention(q, k, v, *, causal=False, scale=None, window=None, softcap=0.0, cu_seqlens_q=None, cu_seqlens_k=None,
              max_seqlen_q=None, max_seqlen_k=None, return_lse=False, layout="bshd", path="auto", splits=0, out=None,
              stream=None, context=None):
    """softmax(scale * q k^T (soft-capped) + mask) v; returns o, or (o, lse) with return_lse."""
    _check_layout(layout)
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen and (cu_seqlens_q is None or cu_seqlens_k is None):
        raise invalid_argument("cu_seqlens_q" if cu_seqlens_q is None else "cu_seqlens_k",
                               "varlen needs both cu_seqlens_q and cu_seqlens_k")
    if varlen and layout != "bshd":
        raise invalid_argument("layout", "varlen tensors are packed [tokens, heads, dim]: layout must be 'bshd'")
    options = dict(causal=causal, scale=scale, window=window, softcap=softcap, return_lse=return_lse, path=path,
                   splits=splits)
    if isinstance(q, np.ndarray):
        return _host_call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, layout, options, context)
    view_q = device_view(q, "q", context.device if context else 0)
    context = context or default_context(view_q.device_id)
    views = _sequence_views(context.device, layout, q=q, k=k, v=v)
    shape_q, shape_v = views["q"].shape, views["v"].shape
    if varlen:
        views["cu_seqlens_q"] = _int32_view(cu_seqlens_q, "cu_seqlens_q", context.device)
        views["cu_seqlens_k"] = _int32_view(cu_seqlens_k, "cu_seqlens_k", context.device)
    fields = _fields_of_views(views, varlen, max_seqlen_q, max_seqlen_k, options)
    if out is None:
        out = _empty_like_layout(q, (*shape_q[:-1], shape_v[-1]), layout, varlen)
    views["o"] = _sequence_views(context.device, layout, o=out)["o"]
    lse = None
    if return_lse:
        lse = _empty_lse(q, fields, shape_q, varlen)
        views["lse"] = device_view(lse, "lse", context.device)
    AttentionPipeline._cached(context, fields)._encode_views(_default_stream(stream, q), views)
    return (out, lse) if return_lse else out


def attention_reference(q, k, v, *, causal=False, scale=None, window=None, softcap=0.0, cu_seqlens_q=None,
                        cu_seqlens_k=None, layout="bshd"):
    """(o, lse) in float64 numpy by plain softmax, with attention()'s mask semantics; inputs of any library."""
    _check_layout(layout)
    q, k, v = (_float64(x) for x in (q, k, v))
    if layout == "bhsd":
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    left, right = _window(causal, window)
    if cu_seqlens_q is None:
        o, lse = _reference_dense(q, k, v, scale, left, right, softcap)
        return (o.transpose(0, 2, 1, 3) if layout == "bhsd" else o), lse
    cu_q, cu_k = (np.asarray(_float64(c), dtype=np.int64) for c in (cu_seqlens_q, cu_seqlens_k))
    o = np.zeros((q.shape[0], q.shape[1], v.shape[2]))
    lse = np.full((q.shape[1], q.shape[0]), -np.inf)
    for b in range(len(cu_q) - 1):
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        ob, lb = _reference_dense(q[None, sq], k[None, sk], v[None, sk], scale, left, right, softcap)
        o[sq], lse[:, sq] = ob[0], lb[0]
    return o, lse


def attention_variants():
    """One dict per variant the library generates: AttentionPipeline keywords (sizes aside)."""
    return [{"dtype": _DTYPE_NAMES[d.dtype], "head_dim_qk": d.head_dim_qk, "head_dim_v": d.head_dim_v,
             "window": (d.window_left, d.window_right), "softcap": float(d.softcap), "path": _PATH_NAMES[d.path],
             "seq_q": d.seq_q} for d in variant_descriptors("attention")]


def attention_compile_report(arch="sm_90a", *, batch=1, seq_q=128, seq_k=128, heads_q=1, heads_kv=1, head_dim_qk=64,
                             head_dim_v=None, **options):
    """Compiles the kernels of a descriptor for `arch` without a GPU: one dict per kernel."""
    fields = _descriptor_fields(batch, seq_q, seq_k, heads_q, heads_kv, head_dim_qk, head_dim_v, **options)
    reports = new_struct_array("mfa_kernel_report", 8)
    count = ffi.new("int32_t *")
    check(lib.mfa_attention_compile_report(new_struct("mfa_attention_descriptor", **fields), arch.encode(), reports, 8,
                                           count))
    return [_report_dict(report) for report in reports[0:min(count[0], 8)]]


def attention_validate(descriptor, tensors):
    """mfa_attention_validate (no GPU needed): `descriptor` holds AttentionPipeline arguments by name, `tensors`
    TensorViews by name (q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k); raises MFAError as encode would."""
    fields = _descriptor_fields(**descriptor)
    c_tensors = {name: view.as_c() for name, view in tensors.items() if view is not None}
    struct = new_struct("mfa_attention_tensors", **{name: t.pointer for name, t in c_tensors.items()})
    check(lib.mfa_attention_validate(new_struct("mfa_attention_descriptor", **fields), struct))


def flops(batch, seq_q, seq_k, heads_q, head_dim_qk, head_dim_v=None, causal=False):
    """The FLOP count FlashAttention reports: 2 products of 2 * seq_q * seq_k * d per head, halved when causal."""
    total = 2.0 * batch * heads_q * seq_q * seq_k * (head_dim_qk + (head_dim_v or head_dim_qk))
    return total / 2 if causal else total


# ------------------------------------------------------------------------------------------------


def _check_layout(layout):
    if layout not in _LAYOUTS:
        raise invalid_argument("layout", f"{layout!r} is not one of {', '.join(map(repr, _LAYOUTS))}")


def _window(causal, window):
    """(left, right) of the visible window; causal is right = 0."""
    left, right = (-1, -1) if window is None else (int(window[0]), int(window[1]))
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def _descriptor_fields(batch, seq_q, seq_k, heads_q, heads_kv, head_dim_qk, head_dim_v=None, *, dtype="float16",
                       causal=False, window=None, scale=None, softcap=0.0, varlen=False, return_lse=False,
                       path="auto", splits=0):
    dtype = dtype if isinstance(dtype, DType) else dtype_of(dtype, "dtype")
    if path not in _PATHS:
        raise invalid_argument("path", f"{path!r} is not one of {', '.join(map(repr, _PATHS))}")
    left, right = _window(causal, window)
    return {"batch": int(batch), "seq_q": int(seq_q), "seq_k": int(seq_k), "heads_q": int(heads_q),
            "heads_kv": int(heads_kv), "head_dim_qk": int(head_dim_qk),
            "head_dim_v": int(head_dim_qk if head_dim_v is None else head_dim_v), "dtype": dtype.mfa,
            "varlen": int(bool(varlen)), "window_left": left, "window_right": right,
            "scale": float(scale or 0.0), "softcap": float(softcap or 0.0), "return_lse": int(bool(return_lse)),
            "path": _PATHS[path], "splits": int(splits)}


def _as_bshd(view, layout):
    """A [batch, heads, seq, dim] view read as [batch, seq, heads, dim] (strides permuted, no copy)."""
    if layout == "bshd" or view.ndim != 4:
        return view
    order = (0, 2, 1, 3)
    return TensorView(data=view.data, shape=tuple(view.shape[i] for i in order),
                      strides=tuple(view.strides[i] for i in order), dtype=view.dtype, device_id=view.device_id,
                      owner=view.owner)


def _sequence_views(device, layout, **tensors):
    return {name: _as_bshd(device_view(value, name, device), layout) for name, value in tensors.items()}


def _int32_view(value, argument, device):
    """cu_seqlens as an int32 TensorView: a torch int32 CUDA tensor, or an object with __cuda_array_interface__."""
    if is_torch_tensor(value):
        import torch
        if value.dtype != torch.int32 or value.device.type != "cuda":
            raise invalid_argument(argument, f"expected an int32 CUDA tensor, got {value.dtype} on {value.device}")
        return TensorView(data=value.data_ptr(), shape=tuple(value.shape), strides=tuple(value.stride()),
                          dtype=_INT32, device_id=value.device.index)
    interface = getattr(value, "__cuda_array_interface__", None)
    if interface is None or interface["typestr"] != "<i4":
        raise invalid_argument(argument, f"expected an int32 CUDA tensor, got {type(value).__name__}")
    strides = interface.get("strides")
    return TensorView(data=interface["data"][0], shape=tuple(interface["shape"]),
                      strides=tuple(s // 4 for s in strides) if strides else compact_strides(interface["shape"]),
                      dtype=_INT32, device_id=device)


def _fields_of_views(views, varlen, max_seqlen_q, max_seqlen_k, options):
    q, k, v = views["q"], views["k"], views["v"]
    if varlen:
        batch = views["cu_seqlens_q"].shape[0] - 1
        if max_seqlen_q is None or max_seqlen_k is None:
            raise invalid_argument("max_seqlen_q" if max_seqlen_q is None else "max_seqlen_k",
                                   "varlen needs the longest sequence lengths (no device-to-host copy reads them)")
        seq_q, seq_k, heads_q, heads_kv = max_seqlen_q, max_seqlen_k, q.shape[1], k.shape[1]
    else:
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
            raise invalid_argument("q", f"expected rank-4 q, k, v; got shapes {q.shape}, {k.shape}, {v.shape}")
        batch, seq_q, heads_q = q.shape[:3]
        seq_k, heads_kv = k.shape[1:3]
    return _descriptor_fields(batch, seq_q, seq_k, heads_q, heads_kv, q.shape[-1], v.shape[-1], dtype=q.dtype,
                              varlen=varlen, **options)


def _empty_like_layout(like, bshd_shape, layout, varlen):
    """An uninitialized torch output of bshd_shape, stored in `layout` order."""
    if not is_torch_tensor(like):
        raise invalid_argument("out", f"mfa_c allocates torch outputs only; got {type(like).__name__}")
    import torch
    if varlen or layout == "bshd":
        return torch.empty(bshd_shape, dtype=like.dtype, device=like.device)
    b, s, h, d = bshd_shape
    return torch.empty((b, h, s, d), dtype=like.dtype, device=like.device)


def _empty_lse(like, fields, shape_q, varlen):
    import torch
    shape = (fields["heads_q"], shape_q[0]) if varlen else (fields["batch"], fields["heads_q"], fields["seq_q"])
    return torch.empty(shape, dtype=torch.float32, device=like.device)


def _reference_dense(q, k, v, scale, left, right, softcap):
    """q [b, sq, hq, d], k/v [b, sk, hkv, d] float64 -> (o [b, sq, hq, dv], lse [b, hq, sq])."""
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    scale = scale or 1.0 / math.sqrt(d)
    group = hq // hkv
    k = np.repeat(k, group, axis=2)
    v = np.repeat(v, group, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap:
        s = softcap * np.tanh(s / softcap)
    i = np.arange(sq)[:, None] + (sk - sq)
    j = np.arange(sk)[None, :]
    visible = np.ones((sq, sk), dtype=bool)
    if left >= 0:
        visible &= j >= i - left
    if right >= 0:
        visible &= j <= i + right
    s = np.where(visible, s, -np.inf)
    row_max = s.max(axis=-1, keepdims=True) if sk else np.full(s.shape[:-1] + (1,), -np.inf)
    safe_max = np.where(np.isfinite(row_max), row_max, 0.0)
    p = np.exp(s - safe_max)
    total = p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.einsum("bhqk,bkhd->bqhd", np.where(total > 0, p / np.where(total > 0, total, 1), 0.0), v)
        lse = np.where(total[..., 0] > 0, np.log(np.where(total[..., 0] > 0, total[..., 0], 1)) + safe_max[..., 0],
                       -np.inf)
    return o, lse


def _host_call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, layout, options, context):
    """attention() on numpy arrays: copies them to the device, runs, copies o (and lse) back."""
    context = context or default_context()
    arrays = {}
    for name, value in (("q", q), ("k", k), ("v", v)):
        if not isinstance(value, np.ndarray) or value.dtype != np.float16:
            raise invalid_argument(name, "numpy inputs must all be float16 arrays (numpy has no bfloat16; pass torch "
                                   "tensors for bfloat16)")
        arrays[name] = np.ascontiguousarray(value)
    varlen = cu_seqlens_q is not None
    with contextlib.ExitStack() as buffers:
        def upload(array, dtype):
            buffer = buffers.enter_context(DeviceBuffer.upload(context, array))
            return TensorView(data=buffer.address, shape=array.shape, strides=compact_strides(array.shape),
                              dtype=dtype, device_id=context.device)

        def output(shape, dtype, numpy_dtype):
            buffer = buffers.enter_context(DeviceBuffer(context, int(np.prod(shape)) * np.dtype(numpy_dtype).itemsize))
            view = TensorView(data=buffer.address, shape=tuple(shape), strides=compact_strides(shape), dtype=dtype,
                              device_id=context.device)
            return view, buffer

        views = {name: _as_bshd(upload(array, DTYPES["float16"]), layout) for name, array in arrays.items()}
        if varlen:
            views["cu_seqlens_q"] = upload(np.ascontiguousarray(cu_seqlens_q, dtype=np.int32), _INT32)
            views["cu_seqlens_k"] = upload(np.ascontiguousarray(cu_seqlens_k, dtype=np.int32), _INT32)
        fields = _fields_of_views(views, varlen, max_seqlen_q, max_seqlen_k, options)
        out_shape = (*arrays["q"].shape[:-1], arrays["v"].shape[-1])
        o_view, o_buffer = output(out_shape, DTYPES["float16"], np.float16)
        views["o"] = _as_bshd(o_view, layout)
        if options["return_lse"]:
            lse_shape = ((fields["heads_q"], arrays["q"].shape[0]) if varlen
                         else (fields["batch"], fields["heads_q"], fields["seq_q"]))
            views["lse"], lse_buffer = output(lse_shape, DTYPES["float32"], np.float32)
        AttentionPipeline._cached(context, fields)._encode_views(None, views)
        context.synchronize()
        o = np.empty(out_shape, np.float16)
        o_buffer.download(o)
        if not options["return_lse"]:
            return o
        lse = np.empty(lse_shape, np.float32)
        lse_buffer.download(lse)
        return o, lse
