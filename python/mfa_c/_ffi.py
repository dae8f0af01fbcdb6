"""cffi in ABI mode over libmfa: the declarations come from mfa.h, the code from ffi.dlopen.

Where the files are: MFA_LIBRARY / MFA_HEADER when set (developers point them at a build tree), else
the copies scikit-build-core installs next to this package (lib/libmfa.so, include/mfa.h); the header
also falls back to the source tree's include/mfa.h, so a checkout needs only MFA_LIBRARY.
"""

import importlib.util
import os
from pathlib import Path

import cffi

from . import _header

_PACKAGE = Path(__file__).resolve().parent
_NVRTC_WHEEL_LIBRARIES = ("cu13/lib/libnvrtc.so.13", "cuda_nvrtc/lib/libnvrtc.so.12")


class MFAError(Exception):
    """A failed MFA call: `status` (int), `status_name` ("MFA_STATUS_..."), `message` (what failed)."""

    def __init__(self, status, message):
        self.status = int(status)
        self.status_name = ffi.string(lib.mfa_status_string(self.status)).decode()
        self.message = message
        super().__init__(f"{self.status_name}: {message}")

    def __reduce__(self):  # pickles (multiprocessing, pytest-xdist) with the constructor's arguments
        return type(self), (self.status, self.message)


def check(status):
    """Raises MFAError, with the C library's message, when a call's status is not success."""
    if status != lib.MFA_STATUS_SUCCESS:
        raise MFAError(status, ffi.string(lib.mfa_last_error_message()).decode())


def invalid_argument(argument, problem):
    """The error for a Python argument rejected before it reaches C; the message starts with its name."""
    return MFAError(lib.MFA_STATUS_INVALID_ARGUMENT, f"{argument}: {problem}")


def new_struct(ctype, **fields):
    """ffi.new("<ctype> *") initialized as mfa.h's *_INIT macro initializes it, then `fields` set."""
    struct = ffi.new(f"{ctype} *")
    _initialize(struct, ctype, fields)
    return struct


def new_struct_array(ctype, count):
    """ffi.new("<ctype>[count]") with every element initialized as mfa.h's *_INIT macro does."""
    array = ffi.new(f"{ctype}[]", count)
    for element in array:
        _initialize(element, ctype, {})
    return array


def _initialize(struct, ctype, fields):
    init = HEADER.struct_inits[ctype]
    struct.header.type = init.struct_type
    struct.header.size = ffi.sizeof(ctype)
    field_names = [name for name, _ in ffi.typeof(ctype).fields[1:]]
    defaults = {name: value for name, value in zip(field_names, init.values) if value is not None}
    for name, value in {**defaults, **fields}.items():
        setattr(struct, name, value)


def variant_descriptors(op):
    """Every descriptor the library enumerates for an operation ("gemm", "group_norm")."""
    count = ffi.new("int64_t *")
    check(getattr(lib, f"mfa_{op}_variant_count")(count))
    descriptors = [new_struct(f"mfa_{op}_descriptor") for _ in range(count[0])]
    for index, descriptor in enumerate(descriptors):
        check(getattr(lib, f"mfa_{op}_variant_descriptor")(index, descriptor))
    return descriptors


def text(char_pointer_or_array):
    """A C string (const char * or char[N]) as str."""
    return ffi.string(char_pointer_or_array).decode()


def names(prefix, exclude=None):
    """{value: lowercase suffix} of the constants MFA_<prefix>*, except MFA_<exclude>*; for example
    names("GEMM_PATH_")[2] == "hopper"."""
    return {value: name[len("MFA_" + prefix):].lower() for name, value in HEADER.constants.items()
            if name.startswith("MFA_" + prefix) and not (exclude and name.startswith("MFA_" + exclude))}


def _located(environment_variable, *candidates):
    if os.environ.get(environment_variable):
        return Path(os.environ[environment_variable])
    existing = [path for path in candidates if path.exists()]
    return existing[0] if existing else candidates[0]


def _nvrtc_from_wheel():
    """libnvrtc from the nvidia-cuda-nvrtc pip wheel (a `nvidia` namespace package), or None."""
    spec = importlib.util.find_spec("nvidia")
    for directory in (spec.submodule_search_locations or ()) if spec else ():
        for relative in _NVRTC_WHEEL_LIBRARIES:
            if Path(directory, relative).exists():
                return Path(directory, relative)
    return None


def _load():
    header_path = _located("MFA_HEADER", _PACKAGE / "include" / "mfa.h",
                           _PACKAGE.parent.parent / "include" / "mfa.h")
    library_path = _located("MFA_LIBRARY", _PACKAGE / "lib" / "libmfa.so")
    try:
        header = _header.parse(header_path.read_text())
    except OSError as error:
        raise ImportError(f"mfa_c: cannot read mfa.h at {header_path} ({error}); set MFA_HEADER") from error
    api = cffi.FFI()
    api.cdef(header.cdef)
    if "MFA_NVRTC_LIBRARY" not in os.environ:
        wheel_nvrtc = _nvrtc_from_wheel()
        if wheel_nvrtc:
            os.environ["MFA_NVRTC_LIBRARY"] = str(wheel_nvrtc)  # read by the C core when NVRTC loads
    try:
        library = api.dlopen(str(library_path))
    except OSError as error:
        raise ImportError(f"mfa_c: cannot load libmfa at {library_path} ({error}); build it and set "
                          "MFA_LIBRARY=/path/to/build/libmfa.so") from error
    return header, api, library, library_path


HEADER, ffi, lib, LIBRARY_PATH = _load()
