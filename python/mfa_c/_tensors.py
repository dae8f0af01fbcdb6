"""Arrays of other libraries as mfa_tensor (DLPack's DLTensor layout).

Device tensors cross without a copy: torch tensors through their own accessors (data_ptr, stride),
others through __cuda_array_interface__ (CuPy) or a DLPack capsule, whose DLTensor has mfa_tensor's
layout and is read as one. numpy arrays are copied into device buffers first
(see gemm.py); TensorView then describes the buffer.
"""

import ctypes
import dataclasses
import sys

import numpy as np

from ._ffi import MFAError, ffi, invalid_argument, lib


@dataclasses.dataclass(frozen=True)
class DType:
    name: str  # as numpy and torch spell it
    mfa: int  # MFA_DTYPE_*
    code: int  # MFA_DTYPE_CODE_* (DLPack)
    bits: int


DTYPES = {dtype.name: dtype for dtype in (
    DType("float16", lib.MFA_DTYPE_F16, lib.MFA_DTYPE_CODE_FLOAT, 16),
    DType("bfloat16", lib.MFA_DTYPE_BF16, lib.MFA_DTYPE_CODE_BFLOAT, 16),
    DType("float32", lib.MFA_DTYPE_F32, lib.MFA_DTYPE_CODE_FLOAT, 32),
)}
_ALIASES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_CUDA_ARRAY_TYPESTRS = {"<f2": "float16", "<f4": "float32"}


def dtype_of(value, argument):
    """The DType named by a string ("float16", "bf16", ...), a numpy dtype or a torch dtype."""
    if isinstance(value, str):
        name = value
    elif str(value).startswith("torch."):
        name = str(value)[len("torch."):]
    else:
        try:
            name = np.dtype(value).name
        except TypeError:
            raise invalid_argument(argument, f"not a dtype: {value!r}") from None
    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise invalid_argument(argument, f"{name} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class TensorView:
    """Where a tensor's elements are: a device address, shape, strides in elements, dtype, device."""

    data: int
    shape: tuple
    strides: tuple
    dtype: DType
    device_id: int
    device_type: int = lib.MFA_DEVICE_CUDA
    owner: object = dataclasses.field(default=None, compare=False, repr=False)  # keeps a DLPack capsule alive

    def __post_init__(self):
        # A dimension of extent 1 is never stepped over, so its stride is free; give it the compact
        # one, which the C checks accept (producers often report 1 there, e.g. torch for x.T).
        strides = list(self.strides)
        for dim in reversed(range(len(self.shape))):
            if self.shape[dim] == 1:
                strides[dim] = strides[dim + 1] * self.shape[dim + 1] if dim + 1 < len(self.shape) else 1
        object.__setattr__(self, "strides", tuple(strides))

    @property
    def ndim(self):
        return len(self.shape)

    def swap_last_dims(self):
        """The same memory seen with the last two dimensions swapped (a transpose, without a copy)."""
        order = (*range(self.ndim - 2), self.ndim - 1, self.ndim - 2)
        return dataclasses.replace(self, shape=tuple(self.shape[i] for i in order),
                                   strides=tuple(self.strides[i] for i in order))

    def broadcast_batch(self, batch):
        """Rank 3 with `batch` matrices; a single matrix repeats through a batch stride of 0."""
        if self.ndim == 2:
            return dataclasses.replace(self, shape=(batch, *self.shape), strides=(0, *self.strides))
        if self.shape[0] == 1 and batch != 1:
            return dataclasses.replace(self, shape=(batch, *self.shape[1:]), strides=(0, *self.strides[1:]))
        return self

    def as_c(self):
        return CTensor(self)


class CTensor:
    """An mfa_tensor and the shape and stride arrays it points to, alive as long as this object."""

    def __init__(self, view):
        self.shape = ffi.new("int64_t[]", view.shape)
        self.strides = ffi.new("int64_t[]", view.strides)
        self.pointer = ffi.new("mfa_tensor *", {
            "data": ffi.cast("void *", view.data),
            "device": {"device_type": view.device_type, "device_id": view.device_id},
            "ndim": view.ndim,
            "dtype": {"code": view.dtype.code, "bits": view.dtype.bits, "lanes": 1},
            "shape": self.shape,
            "strides": self.strides,
            "byte_offset": 0,
        })


def compact_strides(shape):
    """Row-major strides in elements."""
    strides, step = [], 1
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


def is_torch_tensor(value):
    torch = sys.modules.get("torch")  # never imported here: a torch tensor means torch is loaded
    return torch is not None and isinstance(value, torch.Tensor)


def device_view(value, argument, default_device=0):
    """A TensorView of a CUDA tensor: a torch tensor or an object with __cuda_array_interface__.

    __cuda_array_interface__ names no device, so such arrays are taken to be on `default_device`.
    """
    if is_torch_tensor(value):
        return _torch_view(value, argument)
    if isinstance(value, np.ndarray):
        raise invalid_argument(argument, "a numpy array, where a CUDA tensor is needed (mfa_c.gemm copies numpy "
                               "operands when all of them are numpy arrays)")
    if hasattr(value, "__cuda_array_interface__"):
        return _cuda_array_view(value.__cuda_array_interface__, argument, default_device)
    if hasattr(value, "__dlpack__"):
        return _dlpack_view(value, argument)
    raise invalid_argument(argument, "expected a CUDA tensor (torch, __cuda_array_interface__ or __dlpack__) "
                           f"or (for mfa_c.gemm) a numpy array, got {type(value).__name__}")


def _torch_view(tensor, argument):
    if tensor.device.type != "cuda":
        raise invalid_argument(argument, f"a torch tensor on {tensor.device}; move it to a CUDA device "
                               "or pass a numpy array")
    return TensorView(data=tensor.data_ptr(), shape=tuple(tensor.shape), strides=tuple(tensor.stride()),
                      dtype=dtype_of(tensor.dtype, argument), device_id=tensor.device.index)


def _dlpack_view(value, argument):
    """The DLTensor of value.__dlpack__() (the producer orders its work before the legacy default stream)."""
    capsule = value.__dlpack__()
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    tensor = ffi.cast("mfa_tensor *", get_pointer(capsule, b"dltensor"))  # DLManagedTensor starts with it
    if tensor.device.device_type != lib.MFA_DEVICE_CUDA:
        raise invalid_argument(argument, f"a DLPack tensor on device type {tensor.device.device_type}, not CUDA")
    dtype = next((candidate for candidate in DTYPES.values() if tensor.dtype.lanes == 1 and
                  (candidate.code, candidate.bits) == (tensor.dtype.code, tensor.dtype.bits)), None)
    if dtype is None:
        raise MFAError(lib.MFA_STATUS_UNSUPPORTED, f"{argument}: DLPack dtype code {tensor.dtype.code}, "
                       f"{tensor.dtype.bits} bits, {tensor.dtype.lanes} lanes is not float16/bfloat16/float32")
    shape = tuple(tensor.shape[i] for i in range(tensor.ndim))
    strides = (tuple(tensor.strides[i] for i in range(tensor.ndim)) if tensor.strides != ffi.NULL
               else compact_strides(shape))
    data = int(ffi.cast("uintptr_t", tensor.data)) + tensor.byte_offset
    return TensorView(data=data, shape=shape, strides=strides, dtype=dtype, device_id=tensor.device.device_id,
                      owner=capsule)


def _cuda_array_view(interface, argument, device_id):
    typestr = interface["typestr"]
    if typestr not in _CUDA_ARRAY_TYPESTRS:
        raise MFAError(lib.MFA_STATUS_UNSUPPORTED, f"{argument}: __cuda_array_interface__ typestr {typestr!r}; "
                       "float16 ('<f2') and float32 ('<f4') cross this way, bfloat16 only as torch tensors")
    dtype = DTYPES[_CUDA_ARRAY_TYPESTRS[typestr]]
    shape = tuple(interface["shape"])
    byte_strides = interface.get("strides")
    if byte_strides is None:
        strides = compact_strides(shape)
    elif any(stride % (dtype.bits // 8) for stride in byte_strides):
        raise MFAError(lib.MFA_STATUS_BAD_STRIDE, f"{argument}: byte strides {byte_strides} are not "
                       f"multiples of the {dtype.bits // 8}-byte element")
    else:
        strides = tuple(stride // (dtype.bits // 8) for stride in byte_strides)
    return TensorView(data=interface["data"][0], shape=shape, strides=strides, dtype=dtype, device_id=device_id)
