"""Group normalization, forward and backward, and its float64 reference.

    y = mfa_c.group_norm(x, 32, weight, bias, activation="silu")            # torch CUDA: zero-copy
    y, mean, rstd = mfa_c.group_norm(x, 32, weight, bias, return_stats=True)
    dx, dweight, dbias = mfa_c.group_norm_backward(dy, x, weight, bias, mean, rstd, 32)

x is [N, C, spatial...], NCHW (contiguous) or NHWC (channels-last); the layout is read from the strides
unless `layout` names it. numpy arrays are copied through the device and give numpy results (float16 and
float32: numpy has no bfloat16).
"""

import contextlib
import math

import numpy as np

from ._context import DeviceBuffer, WorkspacePipeline, default_context
from ._ffi import MFAError, check, ffi, invalid_argument, lib, names, new_struct, new_struct_array, variant_descriptors
from ._tensors import DTYPES, DType, TensorView, device_view, dtype_of, is_torch_tensor
from .gemm import _REFERENCE_ACTIVATIONS, _default_stream, _float64, _report_dict

_ACTIVATIONS = {None: lib.MFA_ACTIVATION_NONE, "none": lib.MFA_ACTIVATION_NONE, "silu": lib.MFA_ACTIVATION_SILU,
                "gelu": lib.MFA_ACTIVATION_GELU_ERF, "gelu_erf": lib.MFA_ACTIVATION_GELU_ERF,
                "gelu_tanh": lib.MFA_ACTIVATION_GELU_TANH}
_LAYOUTS = {"nchw": lib.MFA_LAYOUT_NCHW, "nhwc": lib.MFA_LAYOUT_NHWC}
_LAYOUT_NAMES = {value: name for name, value in _LAYOUTS.items()}
_ACTIVATION_NAMES = names("ACTIVATION_")
_PASS_NAMES = {lib.MFA_PASS_FORWARD: "forward", lib.MFA_PASS_BACKWARD: "backward"}
_DTYPE_NAMES = {dtype.mfa: dtype.name for dtype in DTYPES.values()}

# Relative (Frobenius) error allowed against group_norm_reference, by element dtype: the output's own
# rounding dominates for 16-bit outputs; fp32 statistics and fp32 outputs stay near fp32 rounding.
TOLERANCES = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-5}


class GroupNormPipeline(WorkspacePipeline):
    """A group-norm pass compiled for one descriptor, encoded many times.

    GroupNormPipeline(n, c, spatial, groups, *, dtype="float16", weight_dtype=<dtype>, layout="nchw",
                      activation=None, residual=False, pass_="forward", eps=1e-5, context=None)
    weight_dtype None: no affine (weight 1, bias 0).
    """

    _OP = "group_norm"

    def __init__(self, n, c, spatial, groups, *, context=None, **descriptor):
        self._create(context or default_context(), _descriptor_fields(n, c, spatial, groups, **descriptor))

    def encode(self, stream=None, **tensors):
        """Enqueues the pass on device tensors given by name (x, residual, weight, bias, y, x_sum, mean,
        rstd, dy, dx, dweight, dbias; see mfa.h); stream None: torch's current stream for torch tensors."""
        device = self.context.device
        views = {name: device_view(value, name, device) for name, value in tensors.items() if value is not None}
        first = next((value for value in tensors.values() if value is not None), None)
        self._encode_views(_default_stream(stream, first), views)


def group_norm(x, groups, weight=None, bias=None, *, eps=1e-5, activation=None, residual=None, return_stats=False,
               layout=None, out=None, x_sum=None, stream=None, context=None):
    """act(group_norm(x (+ residual)) * weight + bias) over `groups` groups of channels.

    Returns y, or (y, mean, rstd) with return_stats (fp32, [N, groups]). With a residual, pass `x_sum` (a
    tensor like x) to receive x + residual, the input group_norm_backward wants.
    """
    if isinstance(x, np.ndarray):
        return _host_call(_forward, x, groups, weight, bias, residual=residual, out=out, x_sum=x_sum, eps=eps,
                          activation=activation, return_stats=return_stats, layout=layout, context=context)
    return _forward(x, groups, weight, bias, residual=residual, out=out, x_sum=x_sum, eps=eps, activation=activation,
                    return_stats=return_stats, layout=layout, stream=stream, context=context)


def group_norm_backward(dy, x, weight, bias, mean, rstd, groups, *, activation=None, eps=1e-5, layout=None, dx=None,
                        stream=None, context=None):
    """(dx, dweight, dbias) of group_norm at x (the forward's x_sum where it had a residual); dweight and
    dbias are None without a weight. `eps` only names the pipeline (the statistics come in mean/rstd)."""
    if isinstance(x, np.ndarray):
        return _host_call(_backward, dy, x, weight, bias, mean, rstd, groups, activation=activation, eps=eps,
                          layout=layout, context=context)
    return _backward(dy, x, weight, bias, mean, rstd, groups, activation=activation, eps=eps, layout=layout, dx=dx,
                     stream=stream, context=context)


def group_norm_reference(x, groups, weight=None, bias=None, *, eps=1e-5, activation=None, residual=None):
    """(y, mean, rstd) in float64 numpy; x as [N, C, spatial...] (any library; layout does not matter)."""
    x = _float64(x)
    if residual is not None:
        x = x + _float64(residual)
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    mean = grouped.mean(axis=2)
    rstd = 1.0 / np.sqrt(grouped.var(axis=2) + eps)
    normalized = ((grouped - mean[:, :, None]) * rstd[:, :, None]).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        normalized = normalized * _float64(weight).reshape(shape)
    if bias is not None:
        normalized = normalized + _float64(bias).reshape(shape)
    return _REFERENCE_ACTIVATIONS[_choice(_ACTIVATIONS, activation, "activation")](normalized), mean, rstd


def group_norm_variants():
    """One dict per variant the library generates: GroupNormPipeline keywords (sizes aside)."""
    return [{"dtype": _DTYPE_NAMES[d.dtype], "weight_dtype": _DTYPE_NAMES.get(d.weight_dtype),
             "layout": _LAYOUT_NAMES[d.layout], "activation": _ACTIVATION_NAMES[d.activation],
             "residual": bool(d.has_residual), "pass_": _PASS_NAMES[getattr(d, "pass")]}
            for d in variant_descriptors("group_norm")]


def group_norm_compile_report(arch="sm_90a", *, n=1, c=1, spatial=1, groups=1, **descriptor):
    """Compiles the kernels of a descriptor for `arch` without a GPU: one dict per kernel."""
    fields = _descriptor_fields(n, c, spatial, groups, **descriptor)
    capacity = 16
    reports = new_struct_array("mfa_kernel_report", capacity)
    count = ffi.new("int32_t *")
    check(lib.mfa_group_norm_compile_report(new_struct("mfa_group_norm_descriptor", **fields), arch.encode(),
                                            reports, capacity, count))
    return [_report_dict(report) for report in reports[0:min(count[0], capacity)]]


_FORCED_CLUSTER = {None: -1, "auto": -1, "split": 0}


def _forced_cluster(cluster):
    """The C ABI's forced_cluster for a plan query's `cluster` (None/"auto", "split" or a size)."""
    return _FORCED_CLUSTER[cluster] if cluster in _FORCED_CLUSTER else int(cluster)


def group_norm_plan(n, c, spatial, groups, *, sm_count=132, vectorized=True, cluster=None, **descriptor):
    """A pass's launch plan on an sm_90+ device of `sm_count` SMs (no GPU needed): {"cluster": blocks per
    item of the one-pass kernel, 0 for the three-launch path; "threads": per block; "vector_elements": per
    copy; "band": groups an item holds (1, or a band of adjacent NHWC groups)}. vectorized=False: the
    tensors are aligned to their element size only. `cluster` forces one ("split", or 1..16) as the
    environment variable MFA_GN_CLUSTER does for pipelines."""
    fields = _descriptor_fields(n, c, spatial, groups, **descriptor)
    forced = _forced_cluster(cluster)
    out = [ffi.new("int32_t *") for _ in range(4)]
    check(lib.mfa_group_norm_plan_describe(new_struct("mfa_group_norm_descriptor", **fields), int(sm_count),
                                           int(bool(vectorized)), forced, *out[:3]))
    check(lib.mfa_group_norm_plan_band(new_struct("mfa_group_norm_descriptor", **fields), int(sm_count), forced, -1,
                                       out[3]))
    return {"cluster": out[0][0], "threads": out[1][0], "vector_elements": out[2][0], "band": out[3][0]}


def group_norm_band(n, c, spatial, groups, *, sm_count=132, cluster=None, band=None, **descriptor):
    """The groups a one-pass item holds where `band` (1, 2, 4 or 8) is asked for, as the environment variable
    MFA_GN_BAND does for pipelines (None: chosen), and `cluster` as in group_norm_plan: at most `band`,
    halved where the shape or the clusters' shared memory allow no wider (mfa_group_norm_plan_band)."""
    fields = _descriptor_fields(n, c, spatial, groups, **descriptor)
    forced = _forced_cluster(cluster)
    out = ffi.new("int32_t *")
    check(lib.mfa_group_norm_plan_band(new_struct("mfa_group_norm_descriptor", **fields), int(sm_count), forced,
                                       -1 if band is None else int(band), out))
    return out[0]


def group_norm_validate(descriptor, tensors):
    """mfa_group_norm_validate (no GPU needed): `descriptor` holds GroupNormPipeline keywords (n, c,
    spatial, groups, dtype, ...), `tensors` TensorViews by name (x, y, ...); raises MFAError as encode would."""
    fields = _descriptor_fields(**descriptor)
    c_tensors = {name: view.as_c() for name, view in tensors.items() if view is not None}
    struct = new_struct("mfa_group_norm_tensors", **{name: t.pointer for name, t in c_tensors.items()})
    check(lib.mfa_group_norm_validate(new_struct("mfa_group_norm_descriptor", **fields), struct))


_TENSOR_NAMES = ("x", "residual", "weight", "bias", "y", "x_sum", "mean", "rstd", "dy", "dx", "dweight", "dbias")


# ------------------------------------------------------------------------------------------------


def _choice(table, value, argument):
    key = value.lower() if isinstance(value, str) else value
    if key not in table:
        raise invalid_argument(argument, f"{value!r} is not one of {', '.join(repr(k) for k in table)}")
    return table[key]


_UNSET = object()


def _dtype(value, argument):
    return value if isinstance(value, DType) else dtype_of(value, argument)


def _descriptor_fields(n, c, spatial, groups, *, dtype="float16", weight_dtype=_UNSET, layout="nchw",
                       activation=None, residual=False, pass_="forward", eps=1e-5):
    dtype = _dtype(dtype, "dtype")
    if weight_dtype is _UNSET:
        weight_dtype = dtype
    weight = lib.MFA_DTYPE_NONE if weight_dtype is None else _dtype(weight_dtype, "weight_dtype").mfa
    passes = {"forward": lib.MFA_PASS_FORWARD, "backward": lib.MFA_PASS_BACKWARD}
    return {"n": int(n), "c": int(c), "spatial": int(spatial), "groups": int(groups), "dtype": dtype.mfa,
            "weight_dtype": weight, "layout": _choice(_LAYOUTS, layout, "layout"),
            "activation": _choice(_ACTIVATIONS, activation, "activation"), "has_residual": int(bool(residual)),
            "pass": _choice(passes, pass_, "pass_"), "eps": float(eps)}


def infer_layout(view, argument="x"):
    """"nchw" for a compact tensor, "nhwc" for a channels-last one (either where both read the same)."""
    if view.ndim < 2:
        raise invalid_argument(argument, f"rank {view.ndim} (shape {view.shape}); expected [N, C, spatial...]")
    if _strides_match(view, "nchw"):
        return "nchw"
    if _strides_match(view, "nhwc"):
        return "nhwc"
    raise MFAError(lib.MFA_STATUS_BAD_STRIDE, f"{argument}: strides {view.strides} for shape {view.shape} are "
                   "neither NCHW (contiguous) nor NHWC (channels-last)")


def _layout_strides(shape, layout):
    strides = [0] * len(shape)
    if layout == "nchw":
        step = 1
        for i in reversed(range(len(shape))):
            strides[i], step = step, step * shape[i]
    else:
        step = shape[1]
        for i in reversed(range(2, len(shape))):
            strides[i], step = step, step * shape[i]
        strides[1], strides[0] = 1, step
    return tuple(strides)


def _strides_match(view, layout):
    expected = _layout_strides(view.shape, layout)
    return all(extent <= 1 or stride == want for extent, stride, want in zip(view.shape, view.strides, expected))


def _spatial(shape):
    return math.prod(shape[2:])


def _new_like(x, view, layout, dtype=None, shape=None):
    """An uninitialized torch tensor shaped like x (or `shape`) in `layout`, of x's dtype (or `dtype`)."""
    import torch
    torch_dtype = getattr(torch, (dtype or view.dtype).name)
    shape = shape or view.shape
    if shape != view.shape or layout == "nchw":
        return torch.empty(shape, dtype=torch_dtype, device=x.device)
    return torch.empty_strided(shape, _layout_strides(shape, layout), dtype=torch_dtype, device=x.device)


def _require_torch(value, argument):
    if not is_torch_tensor(value):
        raise invalid_argument(argument, f"mfa_c allocates torch outputs only; got {type(value).__name__} (pass "
                               "torch CUDA tensors or numpy arrays)")


def _forward(x, groups, weight, bias, *, residual, out, x_sum, eps, activation, return_stats, layout, stream=None,
             context=None):
    view, context, layout, weight, bias = _device_call(x, weight, bias, layout, context)
    views = _device_views(context, view, (("residual", residual), ("weight", weight), ("bias", bias), ("y", out),
                                          ("x_sum", x_sum)))
    if out is None:
        _require_torch(x, "out")
        out = _new_like(x, view, layout)
        views["y"] = device_view(out, "y", context.device)
    mean = rstd = None
    if return_stats:
        _require_torch(x, "return_stats")
        mean = _new_like(x, view, "nchw", DTYPES["float32"], (view.shape[0], groups))
        rstd = _new_like(x, view, "nchw", DTYPES["float32"], (view.shape[0], groups))
        views["mean"], views["rstd"] = device_view(mean, "mean", context.device), device_view(rstd, "rstd", context.device)
    fields = _descriptor_fields(view.shape[0], view.shape[1] if view.ndim > 1 else 0, _spatial(view.shape), groups,
                                dtype=view.dtype, weight_dtype=views["weight"].dtype if "weight" in views else None,
                                layout=layout, activation=activation, residual=residual is not None, eps=eps)
    GroupNormPipeline._cached(context, fields)._encode_views(_default_stream(stream, x), views)
    return (out, mean, rstd) if return_stats else out


def _device_call(x, weight, bias, layout, context):
    """(x's view, context, layout, weight, bias) of a call on device tensors: the context of x's device
    unless one is given, the layout read off x's strides unless given, the affine pair completed."""
    view = device_view(x, "x", context.device if context else 0)
    context = context or default_context(view.device_id)
    weight, bias = _affine(x, weight, bias, view)
    return view, context, layout or infer_layout(view), weight, bias


def _device_views(context, x_view, named_tensors):
    """{"x": x_view, name: view} for each (name, tensor) given (not None), in that order."""
    views = {"x": x_view}
    for name, value in named_tensors:
        if value is not None:
            views[name] = device_view(value, name, context.device)
    return views


def _affine(x, weight, bias, view):
    """weight and bias as given, the missing one of a pair made (ones / zeros like the other)."""
    if (weight is None) == (bias is None):
        return weight, bias
    import torch
    given = weight if weight is not None else bias
    _require_torch(given, "weight" if weight is None else "bias")
    return (weight if weight is not None else torch.ones_like(bias)), (bias if bias is not None else torch.zeros_like(weight))


def _backward(dy, x, weight, bias, mean, rstd, groups, *, activation, eps, layout, dx=None, stream=None, context=None):
    view, context, layout, weight, bias = _device_call(x, weight, bias, layout, context)
    views = _device_views(context, view, (("dy", dy), ("weight", weight), ("bias", bias), ("mean", mean),
                                          ("rstd", rstd), ("dx", dx)))
    if dx is None:
        _require_torch(x, "dx")
        dx = _new_like(x, view, layout)
        views["dx"] = device_view(dx, "dx", context.device)
    dweight = dbias = None
    if weight is not None:
        _require_torch(weight, "dweight")
        import torch
        dweight, dbias = torch.empty_like(weight), torch.empty_like(bias)
        views["dweight"], views["dbias"] = device_view(dweight, "dweight", context.device), device_view(dbias, "dbias", context.device)
    fields = _descriptor_fields(view.shape[0], view.shape[1] if view.ndim > 1 else 0, _spatial(view.shape), groups,
                                dtype=view.dtype, weight_dtype=views["weight"].dtype if "weight" in views else None,
                                layout=layout, activation=activation, pass_="backward", eps=eps)
    GroupNormPipeline._cached(context, fields)._encode_views(_default_stream(stream, x), views)
    return dx, dweight, dbias


def _host_call(function, *args, context=None, **keywords):
    """Runs a group-norm function on numpy arrays: every array is copied to a device buffer, the outputs are
    allocated as buffers and copied back (numpy arrays are C-contiguous: NCHW unless `layout` says NHWC, in
    which case they are read as channels-last data of the same logical shape: pass arrays whose memory is
    N, spatial..., C permuted to [N, C, spatial...] views)."""
    context = context or default_context()
    with contextlib.ExitStack() as buffers:
        uploads = []

        def upload(value, argument):
            if value is None or not isinstance(value, np.ndarray):
                return value
            if value.dtype.name not in DTYPES:
                raise invalid_argument(argument, f"dtype {value.dtype} is not float16/float32")
            buffer = buffers.enter_context(DeviceBuffer.upload(context, np.ascontiguousarray(value)))
            strides = tuple(s // value.itemsize for s in value.strides) if _strided_ok(value) else None
            view = TensorView(data=buffer.address, shape=value.shape, strides=strides or _layout_strides(value.shape, "nchw"),
                              dtype=DTYPES[value.dtype.name], device_id=context.device)
            uploads.append(view)
            return _HostTensor(view, buffer, value)

        def output(shape, dtype, like_strides):
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype.name).itemsize
            buffer = buffers.enter_context(DeviceBuffer(context, nbytes))
            view = TensorView(data=buffer.address, shape=tuple(shape), strides=like_strides, dtype=dtype,
                              device_id=context.device)
            return _HostTensor(view, buffer, None)

        names = ("x", "groups", "weight", "bias") if function is _forward else ("dy", "x", "weight", "bias", "mean", "rstd", "groups")
        converted = [upload(value, name) if name != "groups" else value for value, name in zip(args, names)]
        keywords = {name: upload(value, name) if name in ("residual",) else value for name, value in keywords.items()}
        x = converted[0] if function is _forward else converted[1]
        layout = keywords.get("layout") or infer_layout(x.view)
        keywords["layout"] = layout
        groups = converted[1] if function is _forward else converted[6]
        n = x.view.shape[0]
        outputs = {}
        if function is _forward:
            outputs["out"] = output(x.view.shape, x.view.dtype, _layout_strides(x.view.shape, layout))
            if keywords.get("residual") is not None:
                outputs["x_sum"] = output(x.view.shape, x.view.dtype, _layout_strides(x.view.shape, layout))
            stats = keywords.pop("return_stats")
            outputs["mean"] = output((n, groups), DTYPES["float32"], (groups, 1))
            outputs["rstd"] = output((n, groups), DTYPES["float32"], (groups, 1))
            views = {"x": x.view, "y": outputs["out"].view, "mean": outputs["mean"].view, "rstd": outputs["rstd"].view}
            for name, value in (("residual", keywords["residual"]), ("weight", converted[2]), ("bias", converted[3]),
                                ("x_sum", outputs.get("x_sum"))):
                if value is not None:
                    views[name] = value.view
            fields = _descriptor_fields(n, x.view.shape[1], _spatial(x.view.shape), groups, dtype=x.view.dtype,
                                        weight_dtype=views["weight"].dtype if "weight" in views else None,
                                        layout=layout, activation=keywords["activation"],
                                        residual=keywords["residual"] is not None, eps=keywords["eps"])
            GroupNormPipeline._cached(context, fields)._encode_views(None, views)
            context.synchronize()
            y = outputs["out"].download()
            if keywords.get("x_sum") is not None and keywords["x_sum"] is not None:
                keywords["x_sum"][...] = outputs["x_sum"].download()
            return (y, outputs["mean"].download(), outputs["rstd"].download()) if stats else y
        dy, _, weight, bias, mean, rstd, _ = converted
        outputs["dx"] = output(x.view.shape, x.view.dtype, _layout_strides(x.view.shape, layout))
        views = {"dy": dy.view, "x": x.view, "mean": mean.view, "rstd": rstd.view, "dx": outputs["dx"].view}
        if weight is not None:
            views["weight"], views["bias"] = weight.view, bias.view
            outputs["dweight"] = output(weight.view.shape, weight.view.dtype, (1,))
            outputs["dbias"] = output(bias.view.shape, bias.view.dtype, (1,))
            views["dweight"], views["dbias"] = outputs["dweight"].view, outputs["dbias"].view
        fields = _descriptor_fields(n, x.view.shape[1], _spatial(x.view.shape), groups, dtype=x.view.dtype,
                                    weight_dtype=weight.view.dtype if weight is not None else None, layout=layout,
                                    activation=keywords["activation"], pass_="backward", eps=keywords["eps"])
        GroupNormPipeline._cached(context, fields)._encode_views(None, views)
        context.synchronize()
        return (outputs["dx"].download(), outputs["dweight"].download() if weight is not None else None,
                outputs["dbias"].download() if weight is not None else None)


def _strided_ok(array):
    """Whether a numpy array's own strides (in elements, non-negative, dense) can describe its device copy:
    only for C-contiguous arrays (np.ascontiguousarray made the copy compact)."""
    return array.flags.c_contiguous


class _HostTensor:
    """A device copy of (or a device output for) a numpy array."""

    def __init__(self, view, buffer, array):
        self.view, self.buffer, self.array = view, buffer, array

    def download(self):
        result = np.empty(self.view.shape, self.view.dtype.name)
        self.buffer.download(result)
        return result
