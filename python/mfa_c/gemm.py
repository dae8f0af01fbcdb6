"""GEMM: C = act(alpha * op(A) @ op(B) + beta * C + bias), batched, and its float64 reference.

gemm() maps its arguments to an mfa_gemm_descriptor, finds (or creates, which compiles) the pipeline for
it in the context's cache and encodes it. numpy arrays go through device buffers; torch tensors and
objects with __cuda_array_interface__ are used in place.
"""

import contextlib
import dataclasses
import math

import numpy as np

from ._context import CachedPipeline, DeviceBuffer, default_context, stream_handle
from ._ffi import MFAError, check, ffi, invalid_argument, lib, names, new_struct, new_struct_array, text, variant_descriptors
from . import gemm_tuning
from ._tensors import DTYPES, TensorView, compact_strides, device_view, dtype_of, is_torch_tensor

# MFA_* values and their names, which are mfa.h's (MFA_GEMM_PATH_HOPPER -> "hopper").
_ACTIVATION_NAMES = names("ACTIVATION_")
_PRECISION_NAMES = names("PRECISION_")
_PATH_NAMES = names("GEMM_PATH_")
_SCHEDULE_NAMES = names("SCHEDULE_")
_CACHE_NAMES = names("CACHE_", exclude="CACHE_SCOPE_")
_DTYPE_NAMES = {dtype.mfa: dtype.name for dtype in DTYPES.values()}

# The argument spellings each accepts.
_ACTIVATIONS = {**{name: value for value, name in _ACTIVATION_NAMES.items()},
                None: lib.MFA_ACTIVATION_NONE, "gelu": lib.MFA_ACTIVATION_GELU_ERF}
_PRECISIONS = {name: value for value, name in _PRECISION_NAMES.items()}
_PATHS = {name: value for value, name in _PATH_NAMES.items()}
_SCHEDULES = {name: value for value, name in _SCHEDULE_NAMES.items()}

# Relative (Frobenius) error allowed against gemm_reference, by output dtype (the bounds of the test
# suite): the output's own rounding dominates for 16-bit outputs (unit roundoff 4.9e-4 for fp16, 3.9e-3
# for bf16); fp32 outputs must be as good as fp32 accumulation of exact products (ieee or 3xTF32).
TOLERANCES = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-5}


def gemm(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None, bias=None, activation=None,
         precision="default", out_dtype=None, path="auto", schedule="auto", tile_n=None, cluster_m=None, stream=None,
         context=None):
    """act(alpha * op(a) @ op(b) + beta * c + bias) on the GPU.

    a: [batch,] M x K (K x M with trans_a), b: [batch,] K x N (N x K with trans_b), c: [batch,] M x N,
    bias: [N]. numpy inputs are copied to the device and back (on the legacy default stream; `stream` is
    not used) and the result is a new array, or `c` written in place. Device tensors are used in place;
    the result is written into `c`, or a new tensor of a's library, and returned. tile_n, cluster_m: as
    GemmPipeline's.
    """
    if beta != 0 and c is None:
        raise invalid_argument("c", f"beta = {beta} reads c, but c is None")
    options = _option_fields(alpha, beta, activation, precision, path, schedule)
    options.update(_tile_fields(tile_n, cluster_m))
    if isinstance(a, np.ndarray):
        return _gemm_host(a, b, c, bias, trans_a, trans_b, out_dtype, options, context)
    return _gemm_device(a, b, c, bias, trans_a, trans_b, out_dtype, options, stream, context)


class GemmPipeline(CachedPipeline):
    """A GEMM compiled for one descriptor, encoded many times.

    GemmPipeline(m, n, k, *, batch=1, dtype="float16", out_dtype=None, bias_dtype=None, trans_a=False,
                 trans_b=False, alpha=1.0, beta=0.0, activation=None, precision="default", path="auto",
                 schedule="auto", tile_n=None, cluster_m=None, context=None)

    tile_n (a multiple of 16 from 64 to 256; 16-bit inputs on the Hopper path) forces the tile's width,
    cluster_m (1, or 2 with tile_n 128 or 256) the blocks of a cluster that share each B tile. Where neither
    is given, the winner `python -m mfa_c tune gemm` stored for this device and problem (gemm_tuning.py)
    applies, else the library's variant table chooses (what is not given).
    """

    def __init__(self, m, n, k, *, context=None, **descriptor):
        self._create(context or default_context(), _pipeline_fields(m, n, k, **descriptor))

    def _create(self, context, fields):
        fields = gemm_tuning.apply_stored(context.name, fields)
        descriptor, tuning = _descriptor_struct(fields)
        handle = ffi.new("mfa_gemm_pipeline **")
        check(lib.mfa_gemm_pipeline_create(context.handle, descriptor, handle))
        del tuning  # read by create only
        self._handle = ffi.gc(handle[0], lib.mfa_gemm_pipeline_destroy)
        self._workspace = None
        self.context = context
        self.batch = fields["batch"]
        self.info = self._read_info()
        if self.info["workspace_bytes"]:
            # Owned by the pipeline, so that command lists can replay it; encodes of one pipeline running
            # at once on several streams share it.
            self._workspace = DeviceBuffer(context, self.info["workspace_bytes"])
        context.adopt(self)

    def _read_info(self):
        info = new_struct("mfa_pipeline_info")
        check(lib.mfa_gemm_pipeline_get_info(self.handle, info))
        return {"variant": text(info.variant), "path": _name(_PATH_NAMES, info.path),
                "schedule": _name(_SCHEDULE_NAMES, info.schedule), "cache": _name(_CACHE_NAMES, info.cache),
                "workspace_bytes": info.workspace_bytes, "compile_ms": info.compile_ms}

    @property
    def handle(self):
        if self._handle is None:
            raise MFAError(lib.MFA_STATUS_INVALID_STATE, "pipeline: closed")
        return self._handle

    def encode(self, a, b, c, bias=None, stream=None):
        """Enqueues the GEMM on device tensors (stream None: torch's current stream for torch tensors,
        else the legacy default stream). Transposes come from the descriptor, not from strides."""
        device = self.context.device
        views = [None if x is None else device_view(x, name, device)
                 for x, name in ((a, "a"), (b, "b"), (c, "c"), (bias, "bias"))]
        self._encode_views(_default_stream(stream, a), *views)

    def _encode_views(self, stream, a, b, c, bias):
        """encode() on TensorViews; a single matrix a or b repeats over the batch."""
        if self.batch > 1:
            a, b = a.broadcast_batch(self.batch), b.broadcast_batch(self.batch)
        a_c, b_c, c_c = a.as_c(), b.as_c(), c.as_c()  # alive until the call returns
        bias_c = bias.as_c() if bias is not None else None
        workspace = self._workspace.pointer if self._workspace else ffi.NULL
        check(lib.mfa_gemm_encode(self.handle, stream_handle(stream), a_c.pointer, b_c.pointer, c_c.pointer,
                                  bias_c.pointer if bias_c else ffi.NULL, workspace,
                                  self.info["workspace_bytes"]))

    def close(self):
        if self._handle is None:
            return
        if self._workspace:
            self._workspace.free()
        ffi.release(self._handle)
        self._handle = None



def gemm_reference(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None, bias=None,
                   activation=None):
    """act(alpha * op(a) @ op(b) + beta * c + bias) in float64 numpy (arrays of any library)."""
    op_a, op_b = _float64(a), _float64(b)
    op_a = np.swapaxes(op_a, -1, -2) if trans_a else op_a
    op_b = np.swapaxes(op_b, -1, -2) if trans_b else op_b
    result = alpha * np.matmul(op_a, op_b)
    if beta != 0:
        if c is None:
            raise invalid_argument("c", f"beta = {beta} reads c, but c is None")
        result += beta * _float64(c)
    if bias is not None:
        result += _float64(bias)
    return reference_activation(activation)(result)


def reference_activation(activation):
    """The float64 numpy function of an activation name (None: the identity)."""
    return _REFERENCE_ACTIVATIONS[_choice(_ACTIVATIONS, activation, "activation")]


def relative_error(result, reference):
    """||result - reference||_F / ||reference||_F in float64 (the absolute error where reference is 0)."""
    reference = np.asarray(reference, dtype=np.float64)
    difference = np.linalg.norm(_float64(result) - reference)
    scale = np.linalg.norm(reference)
    return float(difference / scale if scale else difference)


def gemm_variants():
    """One dict per variant the library generates: the GemmPipeline keywords of its descriptor."""
    return [_descriptor_keywords(descriptor) for descriptor in variant_descriptors("gemm")]


def compile_report(arch="sm_90a", **descriptor):
    """Compiles the kernels a descriptor selects for `arch` (no GPU needed): one dict per kernel."""
    fields = _pipeline_fields(**{"m": 0, "n": 0, "k": 0, **descriptor})
    descriptor_struct, tuning = _descriptor_struct(fields)
    capacity = 8
    while True:
        reports = new_struct_array("mfa_kernel_report", capacity)
        count = ffi.new("int32_t *")
        check(lib.mfa_gemm_compile_report(descriptor_struct, arch.encode(), reports, capacity, count))
        if count[0] <= capacity:
            return [_report_dict(report) for report in reports[0:count[0]]]
        capacity = count[0]


# ------------------------------------------------------------------------------------------------
# Descriptors


def _choice(table, value, argument):
    key = value.lower() if isinstance(value, str) else value
    if key not in table:
        choices = ", ".join(repr(name) for name in table)
        raise invalid_argument(argument, f"{value!r} is not one of {choices}")
    return table[key]


def _name(table, value):
    """The name of an MFA_* value, or the value itself where this package does not know it."""
    return table.get(value, value)


def _option_fields(alpha, beta, activation, precision, path, schedule):
    """Descriptor fields that do not depend on the operands' shapes and types."""
    return {"alpha": float(alpha), "beta": float(beta),
            "activation": _choice(_ACTIVATIONS, activation, "activation"),
            "precision": _choice(_PRECISIONS, precision, "precision"),
            "path": _choice(_PATHS, path, "path"),
            "schedule": _choice(_SCHEDULES, schedule, "schedule")}


def _problem_fields(m, n, k, batch, dtype, out_dtype, bias_dtype, trans_a, trans_b):
    """Descriptor fields of the operands (dtypes as DType, bias_dtype None for no bias)."""
    return {"m": m, "n": n, "k": k, "batch": batch, "a_dtype": dtype.mfa, "b_dtype": dtype.mfa,
            "c_dtype": out_dtype.mfa, "bias_dtype": bias_dtype.mfa if bias_dtype else lib.MFA_DTYPE_NONE,
            "trans_a": int(bool(trans_a)), "trans_b": int(bool(trans_b))}


def _pipeline_fields(m, n, k, *, batch=1, dtype="float16", out_dtype=None, bias_dtype=None, trans_a=False,
                     trans_b=False, alpha=1.0, beta=0.0, activation=None, precision="default", path="auto",
                     schedule="auto", tile_n=None, cluster_m=None):
    """Descriptor fields from GemmPipeline's keywords; "tile_n" and "cluster_m" (when given) go to the
    chained mfa_gemm_tuning (_descriptor_struct)."""
    dtype = dtype_of(dtype, "dtype")
    out_dtype = dtype if out_dtype is None else dtype_of(out_dtype, "out_dtype")
    bias_dtype = None if bias_dtype is None else dtype_of(bias_dtype, "bias_dtype")
    fields = {**_problem_fields(m, n, k, batch, dtype, out_dtype, bias_dtype, trans_a, trans_b),
              **_option_fields(alpha, beta, activation, precision, path, schedule)}
    fields.update(_tile_fields(tile_n, cluster_m))
    return fields


def _tile_fields(tile_n, cluster_m):
    """The mfa_gemm_tuning fields of those keywords that were given."""
    given = {"tile_n": tile_n, "cluster_m": cluster_m}
    return {name: int(value) for name, value in given.items() if value is not None}


def _descriptor_struct(fields):
    """(mfa_gemm_descriptor, the mfa_gemm_tuning its header.next points to or None): keep both alive
    for the call."""
    fields = dict(fields)
    tile = {name: fields.pop(name) for name in ("tile_n", "cluster_m") if name in fields}
    descriptor = new_struct("mfa_gemm_descriptor", **fields)
    if not tile:
        return descriptor, None
    tuning = new_struct("mfa_gemm_tuning", **tile)
    descriptor.header.next = tuning
    return descriptor, tuning


def _descriptor_keywords(descriptor):
    """The _pipeline_fields keywords (sizes aside) that rebuild an mfa_gemm_descriptor."""
    return {"dtype": _name(_DTYPE_NAMES, descriptor.a_dtype), "out_dtype": _name(_DTYPE_NAMES, descriptor.c_dtype),
            "bias_dtype": _DTYPE_NAMES.get(descriptor.bias_dtype), "trans_a": bool(descriptor.trans_a),
            "trans_b": bool(descriptor.trans_b), "alpha": descriptor.alpha, "beta": descriptor.beta,
            "activation": _name(_ACTIVATION_NAMES, descriptor.activation),
            "precision": _name(_PRECISION_NAMES, descriptor.precision), "path": _name(_PATH_NAMES, descriptor.path),
            "schedule": _name(_SCHEDULE_NAMES, descriptor.schedule)}


def _report_dict(report):
    return {"kernel": text(report.kernel), "variant": text(report.variant), "registers": report.registers,
            "spill_store_bytes": report.spill_store_bytes, "spill_load_bytes": report.spill_load_bytes,
            "stack_frame_bytes": report.stack_frame_bytes, "static_shared_bytes": report.static_shared_bytes,
            "dynamic_shared_bytes": report.dynamic_shared_bytes, "compile_ms": report.compile_ms,
            "cache": _name(_CACHE_NAMES, report.cache)}


# ------------------------------------------------------------------------------------------------
# gemm() on numpy arrays and on device tensors


@dataclasses.dataclass(frozen=True)
class _Problem:
    """The operands as the C call takes them (innermost stride 1) and the sizes they imply."""

    a: TensorView
    b: TensorView
    trans_a: bool
    trans_b: bool
    m: int
    n: int
    k: int
    batch: int
    output_shape: tuple

    @classmethod
    def of(cls, a, b, trans_a, trans_b):
        _check_rank(a, "a")
        _check_rank(b, "b")
        a, trans_a = _with_unit_inner_stride(a, trans_a)
        b, trans_b = _with_unit_inner_stride(b, trans_b)
        m, k = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
        n = b.shape[-2] if trans_b else b.shape[-1]
        batch = max(view.shape[0] if view.ndim == 3 else 1 for view in (a, b))
        output_shape = (batch, m, n) if 3 in (a.ndim, b.ndim) else (m, n)
        return cls(a, b, trans_a, trans_b, m, n, k, batch, output_shape)

    def fields(self, out_dtype, bias_dtype, options):
        return {**_problem_fields(self.m, self.n, self.k, self.batch, self.a.dtype, out_dtype, bias_dtype,
                                  self.trans_a, self.trans_b), **options}


def _check_rank(view, argument):
    if view.ndim not in (2, 3):
        raise invalid_argument(argument, f"rank {view.ndim} (shape {view.shape}); expected 2 or 3")


def _with_unit_inner_stride(view, trans):
    """A transposed view (unit stride on the second-to-last dimension) becomes the untransposed one with
    trans flipped; other strides go to C unchanged, which names what it rejects."""
    if view.strides[-1] != 1 and view.strides[-2] == 1:
        return view.swap_last_dims(), not trans
    return view, trans


def _output_dtype(out_dtype, c_dtype, input_dtype):
    """out_dtype if given, else c's dtype if c is given, else the inputs'."""
    if out_dtype is not None:
        return dtype_of(out_dtype, "out_dtype")
    return input_dtype if c_dtype is None else c_dtype


def _gemm_host(a, b, c, bias, trans_a, trans_b, out_dtype, options, context):
    a, b = _host_array(a, "a"), _host_array(b, "b")
    bias = None if bias is None else _host_array(bias, "bias")
    c_host = None if c is None else _host_array(c, "c")
    out_dtype = _output_dtype(out_dtype, None if c is None else _host_dtype(c_host), _host_dtype(a))
    if out_dtype.name == "bfloat16":
        raise MFAError(lib.MFA_STATUS_UNSUPPORTED, "out_dtype: numpy has no native bfloat16; pass torch "
                       "tensors on a CUDA device instead")
    context = context or default_context()
    with contextlib.ExitStack() as buffers:  # frees the device buffers on errors too
        upload = _uploader(context, buffers)
        problem = _Problem.of(upload(a), upload(b), trans_a, trans_b)
        bias_view = None if bias is None else upload(bias)
        result = np.empty(problem.output_shape, out_dtype.name) if c is None else np.empty_like(c_host)
        if c is not None and options["beta"] != 0:
            output = buffers.enter_context(DeviceBuffer.upload(context, c_host))
        else:
            output = buffers.enter_context(DeviceBuffer(context, result.nbytes))
        output_view = _buffer_view(context, output, result.shape, _host_dtype(result))
        fields = problem.fields(out_dtype, None if bias is None else bias_view.dtype, options)
        GemmPipeline._cached(context, fields)._encode_views(None, problem.a, problem.b, output_view, bias_view)
        context.synchronize()
        output.download(result)
    if c is None:
        return result
    c[...] = result
    return c


def _gemm_device(a, b, c, bias, trans_a, trans_b, out_dtype, options, stream, context):
    default_device = context.device if context else 0
    a_view, b_view = device_view(a, "a", default_device), device_view(b, "b", default_device)
    context = context or default_context(a_view.device_id)
    problem = _Problem.of(a_view, b_view, trans_a, trans_b)
    c_view = None if c is None else device_view(c, "c", context.device)
    out_dtype = _output_dtype(out_dtype, None if c is None else c_view.dtype, a_view.dtype)
    if c is None:
        c = _new_device_tensor(a, problem.output_shape, out_dtype)
        c_view = device_view(c, "c", context.device)
    bias_view = None if bias is None else device_view(bias, "bias", context.device)
    fields = problem.fields(out_dtype, None if bias is None else bias_view.dtype, options)
    pipeline = GemmPipeline._cached(context, fields)
    pipeline._encode_views(_default_stream(stream, a), problem.a, problem.b, c_view, bias_view)
    return c


def _host_array(value, argument):
    """A C-contiguous numpy array of a supported dtype (a copy where `value` is strided)."""
    if not isinstance(value, np.ndarray):
        raise invalid_argument(argument, f"expected a numpy array, as a is one, got {type(value).__name__}")
    if value.dtype.name == "bfloat16":
        raise MFAError(lib.MFA_STATUS_UNSUPPORTED, f"{argument}: numpy has no native bfloat16; pass torch "
                       "bfloat16 tensors on a CUDA device instead")
    dtype_of(value.dtype, argument)
    return np.ascontiguousarray(value)


def _host_dtype(array):
    return DTYPES[array.dtype.name]


def _uploader(context, buffers):
    """A function copying a C-contiguous numpy array into a device buffer freed with `buffers`."""
    def upload(array):
        buffer = buffers.enter_context(DeviceBuffer.upload(context, array))
        return _buffer_view(context, buffer, array.shape, _host_dtype(array))
    return upload


def _buffer_view(context, buffer, shape, dtype):
    return TensorView(data=buffer.address, shape=tuple(shape), strides=compact_strides(shape), dtype=dtype,
                      device_id=context.device)


def _new_device_tensor(like, shape, dtype):
    """An uninitialized output of `like`'s library (torch or CuPy) on its device."""
    if is_torch_tensor(like):
        import torch
        return torch.empty(shape, dtype=getattr(torch, dtype.name), device=like.device)
    if type(like).__module__.split(".")[0] == "cupy":
        import cupy
        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype=dtype.name)
    raise invalid_argument("c", f"needed for {type(like).__name__} operands (mfa_c allocates torch and CuPy "
                           "outputs only)")


def _default_stream(stream, tensor):
    """`stream`, or torch's current stream where it is None and `tensor` is a torch tensor."""
    if stream is None and is_torch_tensor(tensor):
        import torch
        return torch.cuda.current_stream(tensor.device)
    return stream


# ------------------------------------------------------------------------------------------------
# The float64 reference


def _float64(value):
    """A float64 numpy copy of a numpy array, a torch tensor (any device) or a CuPy array."""
    if is_torch_tensor(value):
        import torch
        return value.detach().to("cpu", torch.float64).numpy()
    if hasattr(value, "__cuda_array_interface__") and hasattr(value, "get"):
        value = value.get()
    return np.asarray(value, dtype=np.float64)


# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969), with the
# coefficients of his SPECFUN routine CALERF: erf on |x| <= 0.46875, erfc * exp(x^2) on (0.46875, 4] and
# in 1/x^2 beyond. Against math.erfc on 2e6 points in [-10, 26.5] the relative error is below 1e-15.
_ERF_SMALL = ((3.16112374387056560e0, 1.13864154151050156e2, 3.77485237685302021e2, 3.20937758913846947e3,
               1.85777706184603153e-1),
              (2.36012909523441209e1, 2.44024637934444173e2, 1.28261652607737228e3, 2.84423683343917062e3))
_ERFC_MIDDLE = ((5.64188496988670089e-1, 8.88314979438837594e0, 6.61191906371416295e1, 2.98635138197400131e2,
                 8.81952221241769090e2, 1.71204761263407058e3, 2.05107837782607147e3, 1.23033935479799725e3,
                 2.15311535474403846e-8),
                (1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2, 1.62138957456669019e3,
                 3.29079923573345963e3, 4.36261909014324716e3, 3.43936767414372164e3, 1.23033935480374942e3))
_ERFC_LARGE = ((3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
                6.58749161529837803e-4, 1.63153871373020978e-2),
               (2.56852019228982242e0, 1.87295284992346047e0, 5.27905102951428412e-1, 6.05183413124413191e-2,
                2.33520497626869185e-3))
_ONE_OVER_SQRT_PI = 5.6418958354775628695e-1
_ERFC_CHUNK = 1 << 16  # elements: the temporaries stay in cache, ~3x faster than whole 16M arrays
_ERFC_UNDERFLOW = 26.543  # erfc is below the smallest normal double beyond (Cody's XBIG)


def _cody_ratio(t, coefficients):
    """Cody's rational function: the numerator's leading coefficient comes last, the denominator is monic."""
    numerator, denominator = coefficients
    top, bottom = numerator[-1] * t, t
    for p, q in zip(numerator[:len(denominator) - 1], denominator[:-1]):
        top, bottom = (top + p) * t, (bottom + q) * t
    return (top + numerator[len(denominator) - 1]) / (bottom + denominator[-1])


def _exp_minus_square(y):
    """exp(-y^2) without the rounding error of squaring y (Cody's split of y at a multiple of 1/16)."""
    head = np.trunc(y * 16) / 16
    return np.exp(-head * head) * np.exp(-(y - head) * (y + head))


def _erfc(x):
    """The complementary error function of a float64 array (relative error below 1e-15)."""
    flat = np.ravel(x)
    result = np.empty_like(flat)
    for start in range(0, flat.size, _ERFC_CHUNK):
        result[start:start + _ERFC_CHUNK] = _erfc_of_chunk(flat[start:start + _ERFC_CHUNK])
    return result.reshape(np.shape(x))


def _erfc_of_chunk(x):
    y = np.abs(x)
    result = np.where(np.isnan(y), np.nan, 0.0)  # 0 stays where erfc(|x|) underflows
    small, middle = y <= 0.46875, (y > 0.46875) & (y <= 4)
    large = (y > 4) & (y < _ERFC_UNDERFLOW)  # skipping the rest also skips slow subnormal arithmetic
    result[small] = 1 - y[small] * _cody_ratio(y[small] ** 2, _ERF_SMALL)
    result[middle] = _exp_minus_square(y[middle]) * _cody_ratio(y[middle], _ERFC_MIDDLE)
    z = 1 / y[large] ** 2
    result[large] = _exp_minus_square(y[large]) * (_ONE_OVER_SQRT_PI - z * _cody_ratio(z, _ERFC_LARGE)) / y[large]
    return np.where(x < 0, 2 - result, result)


def _gelu_erf(x):
    # erfc(-x / sqrt 2), not 1 + erf(x / sqrt 2): no cancellation for negative x.
    return 0.5 * x * _erfc(-x / math.sqrt(2))


def _sigmoid(z):
    # 1 / (1 + exp(-z)) as exp(-log(1 + exp(-z))): neither overflows, and nothing cancels. The form
    # 0.5 (1 + tanh(z / 2)) cancels for negative z: it made the tanh GELU's reference below x = -6
    # quantized to multiples of 1e-16 (check's 1 x 1 x 1 GEMMs failed on it about once in 400).
    return np.exp(-np.logaddexp(0.0, -z))


def _gelu_tanh(x):
    return x * _sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))


def _silu(x):
    return x * _sigmoid(x)


_REFERENCE_ACTIVATIONS = {
    lib.MFA_ACTIVATION_NONE: lambda x: x,
    lib.MFA_ACTIVATION_RELU: lambda x: np.maximum(x, 0),
    lib.MFA_ACTIVATION_GELU_TANH: _gelu_tanh,
    lib.MFA_ACTIVATION_GELU_ERF: _gelu_erf,
    lib.MFA_ACTIVATION_SILU: _silu,
}
