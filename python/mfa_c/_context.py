"""Contexts (one GPU each), device buffers, command lists and stream handles."""

import contextlib
import functools
import threading
import weakref

from ._ffi import MFAError, check, ffi, invalid_argument, lib, names, new_struct, text

_CACHE_NAMES = names("CACHE_", exclude="CACHE_SCOPE_")


class Closeable:
    """Something holding a C handle: close() releases it, and a `with` block closes it at the end."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class CachedPipeline(Closeable):
    """A pipeline class whose instances the one-call API (mfa_c.gemm, mfa_c.group_norm) shares per
    context and descriptor; subclasses define _create(context, fields)."""

    @classmethod
    def _cached(cls, context, fields):
        """The context's pipeline for these descriptor fields, created on first use."""
        key = (cls.__name__, *fields.items())
        pipeline = context.pipelines.get(key)
        if pipeline is None:
            pipeline = cls.__new__(cls)
            pipeline._create(context, fields)
            context.pipelines[key] = pipeline
        return pipeline


class WorkspacePipeline(CachedPipeline):
    """A pipeline of the C API mfa_<_OP>_pipeline_create / _get_info / _encode / _destroy that owns a
    workspace of its info's workspace_bytes; subclasses set _OP ("attention", "group_norm")."""

    _OP = None

    def _create(self, context, fields):
        op = self._OP
        descriptor = new_struct(f"mfa_{op}_descriptor", **fields)
        handle = ffi.new(f"mfa_{op}_pipeline **")
        check(getattr(lib, f"mfa_{op}_pipeline_create")(context.handle, descriptor, handle))
        self._handle = ffi.gc(handle[0], getattr(lib, f"mfa_{op}_pipeline_destroy"))
        self.context = context
        self.fields = dict(fields)
        info = new_struct("mfa_pipeline_info")
        check(getattr(lib, f"mfa_{op}_pipeline_get_info")(self._handle, info))
        self.info = {"variant": text(info.variant), "cache": _CACHE_NAMES.get(info.cache, info.cache),
                     "workspace_bytes": info.workspace_bytes, "compile_ms": info.compile_ms}
        # Owned by the pipeline so that command lists can replay it; encodes of one pipeline must not run
        # concurrently on several streams (they share the workspace, e.g. attention's split-KV partials).
        self._workspace = DeviceBuffer(context, self.info["workspace_bytes"])
        context.adopt(self)

    @property
    def handle(self):
        if self._handle is None:
            raise MFAError(lib.MFA_STATUS_INVALID_STATE, "pipeline: closed")
        return self._handle

    def _encode_views(self, stream, views):
        c_tensors = {name: view.as_c() for name, view in views.items()}  # alive until the call returns
        struct = new_struct(f"mfa_{self._OP}_tensors", **{name: t.pointer for name, t in c_tensors.items()})
        check(getattr(lib, f"mfa_{self._OP}_encode")(self.handle, stream_handle(stream), struct,
                                                      self._workspace.pointer, self.info["workspace_bytes"]))

    def close(self):
        if self._handle is None:
            return
        self._workspace.free()
        ffi.release(self._handle)
        self._handle = None


class Context(Closeable):
    """One GPU (the device's primary context, shared with PyTorch and the CUDA runtime)."""

    def __init__(self, device=0):
        options = new_struct("mfa_context_options", device_ordinal=device)
        handle = ffi.new("mfa_context **")
        check(lib.mfa_context_create(options, handle))
        self._handle = ffi.gc(handle[0], lib.mfa_context_destroy)
        self.device = device
        self.pipelines = {}  # (pipeline class, descriptor fields) -> pipeline, filled by mfa_c.gemm etc.
        self._dependents = weakref.WeakSet()  # closed before the context, which they point into
        info = new_struct("mfa_device_info")
        check(lib.mfa_context_get_info(self._handle, info))
        self.name = text(info.name)
        self.arch = text(info.arch)
        self.sm_count = info.sm_count
        self.compute_capability = (info.compute_capability_major, info.compute_capability_minor)
        self.driver_version = info.driver_version
        self.total_memory = info.total_memory_bytes
        self.shared_memory_per_block_optin = info.shared_memory_per_block_optin
        self.l2_cache_bytes = info.l2_cache_bytes

    @property
    def handle(self):
        """The mfa_context * (MFAError once closed)."""
        if self._handle is None:
            raise MFAError(lib.MFA_STATUS_INVALID_STATE, f"context: device {self.device} is closed")
        return self._handle

    def adopt(self, dependent):
        """Registers an object with a close() that must run before this context is destroyed."""
        self._dependents.add(dependent)

    def synchronize(self):
        check(lib.mfa_context_synchronize(self.handle))

    def close(self):
        """Closes the pipelines and command lists made on this context, then the context itself."""
        if self._handle is None:
            return
        for dependent in list(self._dependents):
            dependent.close()
        self.pipelines.clear()
        ffi.release(self._handle)
        self._handle = None


    def __repr__(self):
        return f"mfa_c.Context(device={self.device}, name={self.name!r}, arch={self.arch!r})"


_default_contexts = {}
_default_contexts_lock = threading.Lock()


def default_context(device=0):
    """A process-wide Context for `device`, created on first use."""
    with _default_contexts_lock:
        context = _default_contexts.get(device)
        if context is None or context._handle is None:
            context = _default_contexts[device] = Context(device)
        return context


@functools.cache
def gpu_available():
    """Whether a context on device 0 can be created; never raises."""
    try:
        default_context()
    except MFAError:
        return False
    return True


def stream_handle(stream):
    """A CUstream as void *: None -> NULL (the legacy default stream), an int, or an object with
    `.cuda_stream` (torch.cuda.Stream, cupy.cuda.Stream)."""
    if stream is None:
        return ffi.NULL
    handle = getattr(stream, "cuda_stream", stream)
    if not isinstance(handle, int):
        raise invalid_argument("stream", f"expected None, an int or an object with .cuda_stream, got {stream!r}")
    return ffi.cast("void *", handle)


class DeviceBuffer(Closeable):
    """Device memory from mfa_buffer_alloc, freed by free() or on leaving a `with` block."""

    def __init__(self, context, nbytes):
        pointer = ffi.new("void **")
        # A zero-size operand (K = 0, an empty batch) still needs a valid pointer.
        check(lib.mfa_buffer_alloc(context.handle, max(nbytes, 1), pointer))
        self.context = context
        self.pointer = pointer[0]

    @classmethod
    def upload(cls, context, array):
        """A buffer holding a copy of the C-contiguous numpy `array`."""
        buffer = cls(context, array.nbytes)
        try:
            check(lib.mfa_copy_to_device(context.handle, buffer.pointer, ffi.from_buffer(array), array.nbytes))
        except MFAError:
            buffer.free()
            raise
        return buffer

    @property
    def address(self):
        return int(ffi.cast("uintptr_t", self.pointer))

    def download(self, array):
        """Copies the buffer into the C-contiguous, writable numpy `array` of the same size."""
        destination = ffi.from_buffer(array, require_writable=True)
        check(lib.mfa_copy_to_host(self.context.handle, destination, self.pointer, array.nbytes))

    def free(self):
        if self.pointer is not None:
            check(lib.mfa_buffer_free(self.context.handle, self.pointer))
            self.pointer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.free()


class CommandList(Closeable):
    """Encodes recorded once (as a CUDA graph) and replayed with one launch.

    with cl.record() as stream:
        pipeline.encode(a, b, c, stream=stream)
    cl.launch()

    The tensors recorded must stay alive, at the same addresses, for as long as the list is launched.
    """

    def __init__(self, context=None):
        self.context = context or default_context()
        handle = ffi.new("mfa_command_list **")
        check(lib.mfa_command_list_create(self.context.handle, handle))
        self._handle = ffi.gc(handle[0], lib.mfa_command_list_destroy)
        self.context.adopt(self)

    @property
    def handle(self):
        if self._handle is None:
            raise MFAError(lib.MFA_STATUS_INVALID_STATE, "command list: closed")
        return self._handle

    @contextlib.contextmanager
    def record(self):
        """Yields the recording stream (an int handle) to pass to encode(); seals the list on exit."""
        stream = ffi.new("void **")
        check(lib.mfa_command_list_begin(self.handle, stream))
        try:
            yield int(ffi.cast("uintptr_t", stream[0]))
        except BaseException:
            lib.mfa_command_list_end(self.handle)  # stops the capture; the body's error is the one to raise
            raise
        check(lib.mfa_command_list_end(self.handle))

    def launch(self, stream=None):
        check(lib.mfa_command_list_launch(self.handle, stream_handle(stream)))

    @property
    def count(self):
        """Kernel launches recorded (0 before recording ends)."""
        count = ffi.new("int64_t *")
        check(lib.mfa_command_list_get_count(self.handle, count))
        return count[0]

    def close(self):
        if self._handle is not None:
            ffi.release(self._handle)
            self._handle = None

