"""The core and its C ABI: versions, exported symbols, struct layouts, status codes, argument checks,
extensible structs, caches, the C example, and (on a GPU) contexts, buffers and command lists."""

import json
import re
import shutil
import subprocess
import sys
import threading

import cffi
import numpy as np
import pytest

import mfa_c
from conftest import REPO, DeviceArray, assert_status, ffi, header_path, last_message, lib, library_path

HEADER_TEXT = header_path().read_text()
DECLARED_FUNCTIONS = set(re.findall(r"^MFA_API\b[^(;]*?\b(mfa_\w+)\s*\(", HEADER_TEXT, re.M))


def header_define(name):
    match = re.search(rf"^#define {name}\s+(\S+)", HEADER_TEXT, re.M)
    assert match, f"mfa.h does not #define {name}"
    return match.group(1)


# ------------------------------------------------------------------------------------------------
# Versions


def test_version_macros_match_the_library_and_the_package():
    major, minor, patch = (int(header_define(f"MFA_VERSION_{part}")) for part in ("MAJOR", "MINOR", "PATCH"))
    number = major * 10000 + minor * 100 + patch
    assert (lib.MFA_VERSION_MAJOR, lib.MFA_VERSION_MINOR, lib.MFA_VERSION_PATCH) == (major, minor, patch)
    assert lib.mfa_version() == number
    assert mfa_c.version() == number
    assert ffi.string(lib.mfa_version_string()).decode() == f"{major}.{minor}.{patch}"
    assert mfa_c.__version__ == f"{major}.{minor}.{patch}"


@pytest.mark.parametrize("source, pattern", [
    ("pyproject.toml", r'^version\s*=\s*"([^"]+)"'),
    ("CMakeLists.txt", r"^project\(mfa VERSION (\S+)"),
])
def test_build_files_carry_the_library_version(source, pattern):
    path = REPO / source
    if not path.exists():
        pytest.skip(f"{path} is not here (tests run outside the source tree)")
    match = re.search(pattern, path.read_text(), re.M)
    assert match, f"no version in {path}"
    assert match.group(1) == mfa_c.__version__


# ------------------------------------------------------------------------------------------------
# The shared library: exports, SONAME, dependencies


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed")
    return path


def test_library_exports_exactly_the_declared_mfa_functions():
    output = subprocess.run([_tool("nm"), "-D", "--defined-only", str(library_path())], capture_output=True,
                            text=True, check=True).stdout
    exported = set()
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        kind, name = fields[-2], fields[-1].split("@")[0]
        if kind == "A" and re.fullmatch(r"MFA_\d+", name):
            continue  # the version node of the version script
        exported.add(name)
    assert DECLARED_FUNCTIONS, "found no MFA_API declarations in mfa.h"
    assert sorted(name for name in exported if not name.startswith("mfa_")) == []
    assert sorted(exported - DECLARED_FUNCTIONS) == [], "exported but not declared in mfa.h"
    assert sorted(DECLARED_FUNCTIONS - exported) == [], "declared in mfa.h but not exported"


def _dynamic_section():
    return subprocess.run([_tool("readelf"), "-d", str(library_path())], capture_output=True, text=True,
                          check=True).stdout


def test_library_soname_carries_the_major_version():
    match = re.search(r"\(SONAME\)\s+Library soname: \[(.+?)\]", _dynamic_section())
    assert match, "libmfa has no SONAME"
    assert match.group(1) == f"libmfa.so.{lib.MFA_VERSION_MAJOR}" == "libmfa.so.0"


def test_library_does_not_link_cuda_or_nvrtc():
    """The driver and NVRTC are loaded at run time, so libmfa loads (and validates, and compiles) on
    machines without a GPU."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _dynamic_section())
    assert needed, "readelf found no NEEDED entries"
    assert [name for name in needed if "cuda" in name or "nvrtc" in name] == []


# ------------------------------------------------------------------------------------------------
# Struct layouts: mfa_tensor is DLPack's DLTensor

DLPACK = cffi.FFI()  # dlpack.h's declarations, independently of mfa.h
DLPACK.cdef("""
    typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
    typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
    typedef struct {
      void *data; DLDevice device; int32_t ndim; DLDataType dtype;
      int64_t *shape; int64_t *strides; uint64_t byte_offset;
    } DLTensor;
""")


@pytest.mark.parametrize("field, offset", [("data", 0), ("device", 8), ("ndim", 16), ("dtype", 20), ("shape", 24),
                                           ("strides", 32), ("byte_offset", 40)])
def test_mfa_tensor_field_offsets_equal_dltensor(field, offset):
    assert ffi.offsetof("mfa_tensor", field) == offset
    assert DLPACK.offsetof("DLTensor", field) == offset
    assert (ffi.sizeof(dict(ffi.typeof("mfa_tensor").fields)[field].type)
            == DLPACK.sizeof(dict(DLPACK.typeof("DLTensor").fields)[field].type))


def test_mfa_tensor_size_and_members_equal_dltensor():
    assert ffi.sizeof("mfa_tensor") == DLPACK.sizeof("DLTensor") == 48
    members = [name for name, _ in ffi.typeof("mfa_tensor").fields]
    assert members == [name for name, _ in DLPACK.typeof("DLTensor").fields]
    for ours, theirs in [("mfa_device", "DLDevice"), ("mfa_dtype", "DLDataType")]:
        assert ffi.sizeof(ours) == DLPACK.sizeof(theirs)
        assert ([(name, ffi.offsetof(ours, name)) for name, _ in ffi.typeof(ours).fields]
                == [(name, DLPACK.offsetof(theirs, name)) for name, _ in DLPACK.typeof(theirs).fields])


@pytest.mark.parametrize("name, value", [
    ("MFA_DEVICE_CPU", 1), ("MFA_DEVICE_CUDA", 2), ("MFA_DEVICE_CUDA_HOST", 3), ("MFA_DEVICE_CUDA_MANAGED", 13),
    ("MFA_DTYPE_CODE_INT", 0), ("MFA_DTYPE_CODE_UINT", 1), ("MFA_DTYPE_CODE_FLOAT", 2), ("MFA_DTYPE_CODE_BFLOAT", 4),
])
def test_device_and_dtype_codes_are_dlpacks(name, value):
    assert getattr(lib, name) == value


STRUCTS = ["mfa_struct_header", "mfa_tensor", "mfa_context_options", "mfa_device_info", "mfa_gemm_descriptor",
           "mfa_pipeline_info", "mfa_kernel_report"]


def test_struct_layouts_agree_between_cffi_and_the_c_compiler(tmp_path):
    """cffi computes layouts itself (ABI mode); the C compiler must agree for every field of every struct."""
    cc = _tool("cc")
    lines = []
    for struct in STRUCTS:
        lines.append(f'printf("{struct} sizeof %zu\\n", sizeof({struct}));')
        for field, _ in ffi.typeof(struct).fields:
            lines.append(f'printf("{struct} {field} %zu\\n", offsetof({struct}, {field}));')
    source = tmp_path / "layout.c"
    source.write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"mfa.h\"\nint main(void) {\n"
                      + "\n".join(lines) + "\nreturn 0;\n}\n")
    subprocess.run([cc, "-std=c99", f"-I{header_path().parent}", str(source), "-o", str(tmp_path / "layout")],
                   check=True)
    printed = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout.split("\n")
    expected = []
    for struct in STRUCTS:
        expected.append(f"{struct} sizeof {ffi.sizeof(struct)}")
        expected += [f"{struct} {field} {ffi.offsetof(struct, field)}" for field, _ in ffi.typeof(struct).fields]
    assert [line for line in printed if line] == expected


@pytest.mark.parametrize("language, flags", [("c", ["-std=c99", "-pedantic"]), ("c++", ["-std=c++11", "-pedantic"])])
def test_header_compiles_cleanly_and_init_macros_set_every_field(tmp_path, language, flags):
    compiler = _tool("cc" if language == "c" else "c++")
    source = tmp_path / ("init.c" if language == "c" else "init.cpp")
    inits = ["mfa_context_options o = MFA_CONTEXT_OPTIONS_INIT;", "mfa_device_info i = MFA_DEVICE_INFO_INIT;",
             "mfa_gemm_descriptor d = MFA_GEMM_DESCRIPTOR_INIT;", "mfa_pipeline_info p = MFA_PIPELINE_INFO_INIT;",
             "mfa_kernel_report r = MFA_KERNEL_REPORT_INIT;"]
    uses = "(void)o; (void)i; (void)d; (void)p; (void)r;"
    source.write_text('#include "mfa.h"\nint main(void) {\n' + "\n".join(inits) + f"\n{uses}\nreturn 0;\n}}\n")
    # -Wextra includes -Wmissing-field-initializers: an *_INIT macro that misses a field fails here.
    result = subprocess.run([compiler, *flags, "-Wall", "-Wextra", "-Werror", f"-I{header_path().parent}", "-c",
                             str(source), "-o", str(tmp_path / "init.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------
# Status codes and messages

STATUS_CODES = {"SUCCESS": 0, "INVALID_ARGUMENT": 1, "SHAPE_MISMATCH": 2, "UNSUPPORTED": 3, "BAD_STRIDE": 4,
                "MISALIGNED": 5, "VERSION_MISMATCH": 6, "DRIVER_NOT_FOUND": 7, "NVRTC_NOT_FOUND": 8,
                "NO_DEVICE": 9, "COMPILE_FAILED": 10, "DEVICE_ERROR": 11, "OUT_OF_MEMORY": 12,
                "INVALID_STATE": 13, "INTERNAL": 14}


def test_status_codes_are_the_published_numbers():
    declared = {name[len("MFA_STATUS_"):]: getattr(lib, name) for name in dir(lib) if name.startswith("MFA_STATUS_")}
    assert declared == STATUS_CODES


@pytest.mark.parametrize("name", STATUS_CODES)
def test_status_string_names_every_code(name):
    assert ffi.string(lib.mfa_status_string(STATUS_CODES[name])).decode() == f"MFA_STATUS_{name}"


@pytest.mark.parametrize("code", [-1, 15, 1000])
def test_status_string_of_an_unknown_code(code):
    assert ffi.string(lib.mfa_status_string(code)).decode() == "MFA_STATUS_UNKNOWN"


def test_mfa_error_carries_status_name_and_message():
    with pytest.raises(mfa_c.MFAError) as caught:
        mfa_c.compile_report(arch="sm_90a", m=-1)
    error = caught.value
    assert error.status == lib.MFA_STATUS_INVALID_ARGUMENT
    assert error.status_name == "MFA_STATUS_INVALID_ARGUMENT"
    assert "descriptor->m" in error.message
    assert str(error) == f"MFA_STATUS_INVALID_ARGUMENT: {error.message}"


def test_error_message_survives_successful_calls_and_is_thread_local():
    assert_status(lib.mfa_gemm_variant_count(ffi.NULL), "INVALID_ARGUMENT", "out_count")
    count = ffi.new("int64_t *")
    assert_status(lib.mfa_gemm_variant_count(count), "SUCCESS")
    assert "out_count" in last_message()  # success clears nothing

    seen = {}

    def other_thread():
        seen["before"] = last_message()
        seen["status"] = lib.mfa_nvrtc_version(ffi.NULL)
        seen["after"] = last_message()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen["before"] == ""
    assert seen["status"] == lib.MFA_STATUS_INVALID_ARGUMENT and "out_version" in seen["after"]
    assert "out_count" in last_message() and "out_version" not in last_message()


# ------------------------------------------------------------------------------------------------
# Handles and argument checks that need no GPU

DESTROYS = sorted(name for name in DECLARED_FUNCTIONS if name.endswith("_destroy"))


def test_every_handle_type_has_a_destroy():
    assert DESTROYS == ["mfa_attention_pipeline_destroy", "mfa_command_list_destroy", "mfa_context_destroy",
                        "mfa_gemm_pipeline_destroy", "mfa_group_norm_pipeline_destroy"]


@pytest.mark.parametrize("destroy", DESTROYS)
def test_destroy_null_is_a_successful_no_op(destroy):
    assert_status(getattr(lib, destroy)(ffi.NULL), "SUCCESS")


def _gemm_descriptor(**fields):
    descriptor = ffi.new("mfa_gemm_descriptor *")
    descriptor.header.type = lib.MFA_STRUCT_GEMM_DESCRIPTOR
    descriptor.header.size = ffi.sizeof("mfa_gemm_descriptor")
    defaults = dict(batch=1, a_dtype=lib.MFA_DTYPE_F16, b_dtype=lib.MFA_DTYPE_F16, c_dtype=lib.MFA_DTYPE_F16,
                    alpha=1.0)
    for name, value in {**defaults, **fields}.items():
        setattr(descriptor, name, value)
    return descriptor


def _report_array(count):
    reports = ffi.new("mfa_kernel_report[]", count)
    for report in reports:
        report.header.type = lib.MFA_STRUCT_KERNEL_REPORT
        report.header.size = ffi.sizeof("mfa_kernel_report")
    return reports


N = ffi.NULL


def _out(ctype):
    return ffi.new(f"{ctype} *")


# "function.argument": a call passing NULL there (and valid values, or NULL handles checked later, elsewhere)
NULL_ARGUMENTS = {
    "mfa_context_create.out_context": lambda: lib.mfa_context_create(N, N),
    "mfa_context_get_info.context": lambda: lib.mfa_context_get_info(N, _out("mfa_device_info")),
    "mfa_context_synchronize.context": lambda: lib.mfa_context_synchronize(N),
    "mfa_buffer_alloc.context": lambda: lib.mfa_buffer_alloc(N, 16, _out("void *")),
    "mfa_buffer_free.context": lambda: lib.mfa_buffer_free(N, N),
    "mfa_copy_to_device.context": lambda: lib.mfa_copy_to_device(N, N, N, 0),
    "mfa_copy_to_host.context": lambda: lib.mfa_copy_to_host(N, N, N, 0),
    "mfa_buffer_fill_u8.context": lambda: lib.mfa_buffer_fill_u8(N, N, 0, 0),
    "mfa_gemm_pipeline_create.descriptor": lambda: lib.mfa_gemm_pipeline_create(N, N, _out("mfa_gemm_pipeline *")),
    "mfa_gemm_pipeline_create.context":
        lambda: lib.mfa_gemm_pipeline_create(N, _gemm_descriptor(), _out("mfa_gemm_pipeline *")),
    "mfa_gemm_pipeline_get_info.pipeline": lambda: lib.mfa_gemm_pipeline_get_info(N, _out("mfa_pipeline_info")),
    "mfa_gemm_encode.pipeline": lambda: lib.mfa_gemm_encode(N, N, N, N, N, N, N, 0),
    "mfa_gemm_validate.descriptor": lambda: lib.mfa_gemm_validate(N, N, N, N, N),
    "mfa_command_list_create.context": lambda: lib.mfa_command_list_create(N, _out("mfa_command_list *")),
    "mfa_command_list_begin.list": lambda: lib.mfa_command_list_begin(N, _out("void *")),
    "mfa_command_list_end.list": lambda: lib.mfa_command_list_end(N),
    "mfa_command_list_launch.list": lambda: lib.mfa_command_list_launch(N, N),
    "mfa_command_list_get_count.list": lambda: lib.mfa_command_list_get_count(N, _out("int64_t")),
    "mfa_gemm_variant_count.out_count": lambda: lib.mfa_gemm_variant_count(N),
    "mfa_gemm_variant_descriptor.out_descriptor": lambda: lib.mfa_gemm_variant_descriptor(0, N),
    "mfa_gemm_compile_report.arch":
        lambda: lib.mfa_gemm_compile_report(_gemm_descriptor(), N, _report_array(1), 1, _out("int32_t")),
    "mfa_gemm_compile_report.out_count":
        lambda: lib.mfa_gemm_compile_report(_gemm_descriptor(), b"sm_90a", _report_array(1), 1, N),
    "mfa_gemm_compile_report.out_reports":
        lambda: lib.mfa_gemm_compile_report(_gemm_descriptor(), b"sm_90a", N, 1, _out("int32_t")),
    "mfa_gemm_compile_report.descriptor": lambda: lib.mfa_gemm_compile_report(N, b"sm_90a", N, 0, _out("int32_t")),
    "mfa_nvrtc_version.out_version": lambda: lib.mfa_nvrtc_version(N),
    "mfa_group_norm_pipeline_create.descriptor":
        lambda: lib.mfa_group_norm_pipeline_create(N, N, _out("mfa_group_norm_pipeline *")),
    "mfa_group_norm_pipeline_get_info.pipeline":
        lambda: lib.mfa_group_norm_pipeline_get_info(N, _out("mfa_pipeline_info")),
    "mfa_group_norm_encode.pipeline": lambda: lib.mfa_group_norm_encode(N, N, N, N, 0),
    "mfa_group_norm_validate.descriptor": lambda: lib.mfa_group_norm_validate(N, N),
    "mfa_group_norm_variant_count.out_count": lambda: lib.mfa_group_norm_variant_count(N),
    "mfa_group_norm_variant_descriptor.out_descriptor": lambda: lib.mfa_group_norm_variant_descriptor(0, N),
    "mfa_group_norm_compile_report.arch":
        lambda: lib.mfa_group_norm_compile_report(N, N, _report_array(1), 1, _out("int32_t")),
    "mfa_group_norm_plan_describe.descriptor":
        lambda: lib.mfa_group_norm_plan_describe(N, 132, 1, -1, _out("int32_t"), _out("int32_t"), _out("int32_t")),
    "mfa_group_norm_plan_describe.out_cluster":
        lambda: lib.mfa_group_norm_plan_describe(mfa_c._ffi.new_struct("mfa_group_norm_descriptor", n=1, c=1, spatial=1,
                                                                      groups=1), 132, 1, -1, N, _out("int32_t"),
                                                 _out("int32_t")),
    "mfa_group_norm_plan_band.descriptor": lambda: lib.mfa_group_norm_plan_band(N, 132, -1, -1, _out("int32_t")),
    "mfa_group_norm_plan_band.out_band":
        lambda: lib.mfa_group_norm_plan_band(mfa_c._ffi.new_struct("mfa_group_norm_descriptor", n=1, c=1, spatial=1,
                                                                  groups=1), 132, -1, -1, N),
    "mfa_attention_pipeline_create.descriptor":
        lambda: lib.mfa_attention_pipeline_create(N, N, _out("mfa_attention_pipeline *")),
    "mfa_attention_pipeline_get_info.pipeline":
        lambda: lib.mfa_attention_pipeline_get_info(N, _out("mfa_pipeline_info")),
    "mfa_attention_encode.pipeline": lambda: lib.mfa_attention_encode(N, N, N, N, 0),
    "mfa_attention_validate.descriptor": lambda: lib.mfa_attention_validate(N, N),
    "mfa_attention_variant_count.out_count": lambda: lib.mfa_attention_variant_count(N),
    "mfa_attention_variant_descriptor.out_descriptor": lambda: lib.mfa_attention_variant_descriptor(0, N),
    "mfa_attention_compile_report.arch":
        lambda: lib.mfa_attention_compile_report(N, N, _report_array(1), 1, _out("int32_t")),
    "mfa_gemm_schedule_describe.descriptor":
        lambda: lib.mfa_gemm_schedule_describe(N, 132, 0, N, N, N, 0, _out("int64_t")),
    "mfa_gemm_schedule_describe.out_count":
        lambda: lib.mfa_gemm_schedule_describe(_gemm_descriptor(), 132, 0, N, N, N, 0, N),
    "mfa_gemm_schedule_describe.out_items":
        lambda: lib.mfa_gemm_schedule_describe(_gemm_descriptor(), 132, 0, N, N, N, 1, _out("int64_t")),
}


@pytest.mark.parametrize("case", NULL_ARGUMENTS)
def test_null_argument_is_invalid_and_named(case):
    name = case.split(".")[1]
    assert_status(NULL_ARGUMENTS[case](), "INVALID_ARGUMENT", f"{name} is NULL")


def test_every_function_taking_pointers_is_covered_by_the_null_checks():
    covered = {case.split(".")[0] for case in NULL_ARGUMENTS} | set(DESTROYS)
    no_pointer_arguments = {"mfa_version", "mfa_version_string", "mfa_status_string", "mfa_last_error_message",
                            "mfa_cache_clear", "mfa_cache_directory"}
    assert sorted(DECLARED_FUNCTIONS - covered - no_pointer_arguments) == []


@pytest.mark.parametrize("where", ["negative", "count", "huge"])
def test_variant_descriptor_index_out_of_range(where):
    count = ffi.new("int64_t *")
    assert_status(lib.mfa_gemm_variant_count(count), "SUCCESS")
    index = {"negative": -1, "count": count[0], "huge": 1 << 40}[where]
    out = _gemm_descriptor()
    before = bytes(ffi.buffer(out))
    assert_status(lib.mfa_gemm_variant_descriptor(index, out), "INVALID_ARGUMENT", f"index is {index}")
    assert bytes(ffi.buffer(out)) == before


@pytest.mark.parametrize("scope", [4, -1, 0x100])
def test_cache_clear_rejects_unknown_scope_bits(scope):
    assert_status(lib.mfa_cache_clear(scope), "INVALID_ARGUMENT", "scope_bits")


# ------------------------------------------------------------------------------------------------
# Extensible structs and the ABI version check (done before the driver loads: works without a GPU)


def _context_options(size=None, extra=0, **fields):
    """mfa_context_options in a buffer `extra` bytes longer than the struct (a newer caller's struct)."""
    real_size = ffi.sizeof("mfa_context_options")
    memory = ffi.new("char[]", real_size + extra)
    options = ffi.cast("mfa_context_options *", memory)
    options.header.type = lib.MFA_STRUCT_CONTEXT_OPTIONS
    options.header.size = real_size + extra if size is None else size
    options.abi_version = lib.mfa_version()
    for name, value in fields.items():
        setattr(options, name, value)
    return memory, options


def _create_context(options):
    """(status, message, whether *out_context was left alone); destroys a context that was created."""
    sentinel = ffi.cast("mfa_context *", 0x1234)
    out = ffi.new("mfa_context **", sentinel)
    status = lib.mfa_context_create(options, out)
    message = last_message() if status else ""
    untouched = out[0] == sentinel
    if status == lib.MFA_STATUS_SUCCESS:
        lib.mfa_context_destroy(out[0])
    return status, message, untouched


@pytest.mark.parametrize("newer", ["minor", "major"])
def test_context_options_from_a_newer_header_are_a_version_mismatch(newer):
    version = lib.mfa_version() + (100 if newer == "minor" else 10000)
    _, options = _context_options(abi_version=version)
    status, message, untouched = _create_context(options)
    assert status == lib.MFA_STATUS_VERSION_MISMATCH, message
    assert "abi_version" in message and str(version) in message
    assert untouched


def test_context_options_from_an_older_minor_pass_the_version_check():
    major, minor = lib.MFA_VERSION_MAJOR, lib.MFA_VERSION_MINOR
    if minor == 0:
        pytest.skip("no older minor version exists for this major")
    _, options = _context_options(abi_version=major * 10000 + (minor - 1) * 100 + 7)
    status, message, _ = _create_context(options)
    assert status != lib.MFA_STATUS_VERSION_MISMATCH, message


@pytest.mark.parametrize("case, fields, expected, name", [
    ("wrong type", dict(header_type=lib.MFA_STRUCT_DEVICE_INFO), "INVALID_ARGUMENT", "options->header.type"),
    ("size too small", dict(size=8), "INVALID_ARGUMENT", "options->header.size"),
    ("next set", dict(next=0x1000), "INVALID_ARGUMENT", "options->header.next"),
    ("bigger, nonzero tail", dict(extra=16, tail=1), "VERSION_MISMATCH", "options"),
])
def test_context_options_header_checks(case, fields, expected, name):
    memory, options = _context_options(size=fields.get("size"), extra=fields.get("extra", 0))
    if "header_type" in fields:
        options.header.type = fields["header_type"]
    if "next" in fields:
        options.header.next = ffi.cast("void *", fields["next"])
    if "tail" in fields:
        memory[ffi.sizeof("mfa_context_options") + 5] = b"\x01"
    status, message, untouched = _create_context(options)
    assert status == getattr(lib, f"MFA_STATUS_{expected}"), message
    assert name in message
    assert untouched


def test_context_options_bigger_with_zero_tail_are_accepted():
    _, options = _context_options(extra=16)
    status, message, _ = _create_context(options)
    assert status not in (lib.MFA_STATUS_VERSION_MISMATCH, lib.MFA_STATUS_INVALID_ARGUMENT), message


def test_failed_context_creation_names_its_reason_and_leaves_the_output_alone():
    status, message, untouched = _create_context(ffi.NULL)
    if status == lib.MFA_STATUS_SUCCESS:
        pytest.skip("a GPU is present: context creation succeeded")
    assert status in (lib.MFA_STATUS_DRIVER_NOT_FOUND, lib.MFA_STATUS_NO_DEVICE, lib.MFA_STATUS_DEVICE_ERROR,
                      lib.MFA_STATUS_UNSUPPORTED), message
    assert message and untouched


def test_missing_driver_library_is_driver_not_found(shared_cache, tmp_path):
    missing = tmp_path / "libcuda-missing.so.1"
    result = shared_cache.run("-c", "import mfa_c, sys\n"
                                    "try:\n    mfa_c.Context(0)\nexcept mfa_c.MFAError as e:\n"
                                    "    print(e.status_name); print(e.message); sys.exit(0)\n"
                                    "sys.exit('created a context without a driver')",
                              extra_env={"MFA_CUDA_DRIVER_LIBRARY": str(missing)}, check=True)
    status, message = result.stdout.split("\n", 1)
    assert status == "MFA_STATUS_DRIVER_NOT_FOUND"
    assert str(missing) in message


def test_descriptor_from_an_older_smaller_header_is_read_only_up_to_its_size():
    """A caller built before `schedule` existed passes a shorter struct: what lies beyond header.size is
    not read (here: an invalid schedule value that would otherwise be rejected)."""
    descriptor = _gemm_descriptor(m=8, n=8, k=8, schedule=77)
    assert_status(lib.mfa_gemm_compile_report(descriptor, b"sm_90a", ffi.NULL, 0, ffi.new("int32_t *")),
                  "UNSUPPORTED", "descriptor->schedule")
    descriptor.header.size = ffi.offsetof("mfa_gemm_descriptor", "schedule")
    tensors = [_fake_tensor((8, 8), address) for address in (0x100000, 0x200000, 0x300000)]
    assert_status(lib.mfa_gemm_validate(descriptor, *[t[0] for t in tensors], ffi.NULL), "SUCCESS")


def _fake_tensor(shape, address):
    shape_array = ffi.new("int64_t[]", list(shape))
    tensor = ffi.new("mfa_tensor *", {"data": ffi.cast("void *", address),
                                      "device": {"device_type": lib.MFA_DEVICE_CUDA, "device_id": 0},
                                      "ndim": len(shape), "dtype": {"code": lib.MFA_DTYPE_CODE_FLOAT, "bits": 16,
                                                                    "lanes": 1},
                                      "shape": shape_array, "strides": ffi.NULL, "byte_offset": 0})
    return tensor, shape_array


def test_descriptor_bigger_with_nonzero_tail_is_a_version_mismatch():
    size = ffi.sizeof("mfa_gemm_descriptor")
    memory = ffi.new("char[]", size + 8)
    ffi.memmove(memory, _gemm_descriptor(m=8, n=8, k=8), size)
    descriptor = ffi.cast("mfa_gemm_descriptor *", memory)
    descriptor.header.size = size + 8
    tensors = [_fake_tensor((8, 8), address) for address in (0x100000, 0x200000, 0x300000)]
    assert_status(lib.mfa_gemm_validate(descriptor, *[t[0] for t in tensors], ffi.NULL), "SUCCESS")
    memory[size + 3] = b"\x02"
    assert_status(lib.mfa_gemm_validate(descriptor, *[t[0] for t in tensors], ffi.NULL), "VERSION_MISMATCH",
                  "descriptor")


# ------------------------------------------------------------------------------------------------
# Caches. In this process: the directory libmfa already chose (see conftest); elsewhere: subprocesses.

VARIANT = dict(dtype="float16", out_dtype="float16", path="portable")
REPORT_SCRIPT = ("import json, sys, mfa_c\n"
                 "print(json.dumps(mfa_c.compile_report(arch='sm_90a', **json.loads(sys.argv[1]))))\n")


def test_cache_directory_is_the_librarys_in_process():
    assert mfa_c.cache_directory() == ffi.string(lib.mfa_cache_directory()).decode()


@pytest.mark.parametrize("setting", ["MFA_CACHE_DIR", "off", "XDG_CACHE_HOME", "HOME"])
def test_cache_directory_follows_the_environment(isolated_cache, tmp_path, setting):
    env = {name: value for name, value in isolated_cache.env.items()
           if name not in ("MFA_CACHE_DIR", "XDG_CACHE_HOME")}
    expected = {"MFA_CACHE_DIR": str(tmp_path / "explicit"), "off": "",
                "XDG_CACHE_HOME": str(tmp_path / "xdg" / "mfa"), "HOME": str(tmp_path / "home" / ".cache" / "mfa")}
    extra = {"MFA_CACHE_DIR": {"MFA_CACHE_DIR": str(tmp_path / "explicit")}, "off": {"MFA_CACHE_DIR": "off"},
             "XDG_CACHE_HOME": {"XDG_CACHE_HOME": str(tmp_path / "xdg")},
             "HOME": {"HOME": str(tmp_path / "home")}}[setting]
    result = subprocess.run([sys.executable, "-c", "import mfa_c; print(repr(mfa_c.cache_directory()))"],
                            env={**env, **extra}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(expected[setting])


def test_second_compile_in_a_process_is_a_memory_hit_and_survives_clearing_memory():
    first = mfa_c.compile_report(arch="sm_90a", **VARIANT)
    second = mfa_c.compile_report(arch="sm_90a", **VARIANT)
    print("first:", [(r["kernel"], r["cache"], r["compile_ms"]) for r in first])
    assert [r["cache"] for r in second] == ["memory"] * len(second)
    assert [r["kernel"] for r in second] == [r["kernel"] for r in first]
    assert [r["registers"] for r in second] == [r["registers"] for r in first]
    if not mfa_c.cache_directory():
        pytest.skip("the disk cache is disabled (MFA_CACHE_DIR=off)")
    mfa_c.clear_cache(memory=True)
    third = mfa_c.compile_report(arch="sm_90a", **VARIANT)
    assert [r["cache"] for r in third] == ["disk"] * len(third)
    assert [r["registers"] for r in third] == [r["registers"] for r in first]
    assert [r["cache"] for r in mfa_c.compile_report(arch="sm_90a", **VARIANT)] == ["memory"] * len(third)


def test_second_process_loads_from_disk_much_faster(isolated_cache):
    runs = [json.loads(isolated_cache.run("-c", REPORT_SCRIPT, json.dumps(VARIANT), check=True).stdout)
            for _ in range(2)]
    (compiled, *_), (loaded, *_) = runs
    print(f"first process: {compiled['cache']} in {compiled['compile_ms']:.1f} ms; "
          f"second process: {loaded['cache']} in {loaded['compile_ms']:.1f} ms")
    assert compiled["cache"] == "compiled"
    assert loaded["cache"] == "disk"
    assert loaded["compile_ms"] < compiled["compile_ms"] / 10
    assert [r["registers"] for r in runs[1]] == [r["registers"] for r in runs[0]]
    entries = [path.name for path in isolated_cache.directory.iterdir() if not path.name.startswith(".")]
    assert len(entries) == 1 and entries[0].startswith(compiled["variant"] + "-"), entries
    assert (isolated_cache.directory / entries[0] / "kernel.cubin").stat().st_size > 0

    isolated_cache.run("-c", "import mfa_c; mfa_c.clear_cache(memory=False, disk=True)", check=True)
    assert [path.name for path in isolated_cache.directory.iterdir() if not path.name.startswith(".")] == []


@pytest.mark.parametrize("flag", ["1", "0"])
def test_dump_source_writes_the_generated_kernel(shared_cache, tmp_path, flag):
    variant = dict(dtype="bfloat16", out_dtype="float32", trans_a=True, trans_b=False, path="portable")
    dump = tmp_path / "dump"
    result = shared_cache.run("-c", REPORT_SCRIPT, json.dumps(variant), cwd=tmp_path, check=True,
                              extra_env={"MFA_DUMP_SOURCE": flag, "MFA_DUMP_DIR": str(dump)})
    if flag == "0":
        assert not dump.exists() and not (tmp_path / "mfa_dump").exists()
        return
    key = json.loads(result.stdout)[0]["variant"]
    written = dump / f"{key}.sm_90a.cu"
    assert written.exists(), f"{written} missing; the dump directory holds {sorted(dump.glob('*'))}"
    assert str(written) in result.stderr
    source = written.read_text()
    for line in (f"#define MFA_IN_DTYPE {lib.MFA_DTYPE_BF16}", f"#define MFA_OUT_DTYPE {lib.MFA_DTYPE_F32}",
                 "#define MFA_TRANS_A 1", "#define MFA_TRANS_B 0"):
        assert re.search(rf"^{line}$", source, re.M), f"{line!r} not in\n{source}"
    assert re.search(r"^#define MFA_MATH \d+$", source, re.M)


# ------------------------------------------------------------------------------------------------
# The C example, built against the installed header and library


@pytest.fixture(scope="session")
def example_build(tmp_path_factory):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("`cc` is not installed")
    example = REPO / "examples" / "gemm.c"
    if not example.exists():
        pytest.skip(f"{example} is not here (tests run outside the source tree)")
    library = library_path()
    executable = tmp_path_factory.mktemp("example") / "example_gemm"
    command = [cc, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{header_path().parent}", str(example),
               "-o", str(executable), str(library), "-lm", f"-Wl,-rpath,{library.resolve().parent}"]
    return executable, subprocess.run(command, capture_output=True, text=True)


def test_c_example_builds(example_build):
    executable, build = example_build
    assert build.returncode == 0, f"{' '.join(build.args)}\n{build.stderr}"
    assert executable.exists()


def test_c_example_finds_libmfa_at_run_time(example_build):
    """The program records libmfa's SONAME (libmfa.so.0); the loader must find it where it was linked from."""
    executable, build = example_build
    assert build.returncode == 0, build.stderr
    result = subprocess.run([_tool("ldd"), str(executable)], capture_output=True, text=True)
    assert "not found" not in result.stdout, result.stdout


@pytest.mark.gpu
def test_c_example_runs_and_passes(example_build):
    executable, build = example_build
    assert build.returncode == 0, build.stderr
    for arguments in ([], ["127", "255", "1000"]):
        result = subprocess.run([str(executable), *arguments], capture_output=True, text=True, timeout=600)
        print(result.stdout, result.stderr)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "-> PASS" in result.stdout


# ------------------------------------------------------------------------------------------------
# GPU: contexts, buffers, command lists


def test_context_info(ctx):
    major, minor = ctx.compute_capability
    print(f"{ctx.name}: {ctx.arch}, {ctx.sm_count} SMs, driver {ctx.driver_version}")
    assert ctx.name.strip()
    assert ctx.sm_count > 0
    assert (major, minor) >= (8, 0)
    assert ctx.arch == f"sm_{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")
    assert ctx.total_memory > 0
    assert ctx.driver_version >= 12000


def test_raw_context_info_and_bad_ordinal(ctx):
    info = ffi.new("mfa_device_info *")
    info.header.type, info.header.size = lib.MFA_STRUCT_DEVICE_INFO, ffi.sizeof("mfa_device_info")
    assert_status(lib.mfa_context_get_info(ctx.handle, info), "SUCCESS")
    assert ffi.string(info.arch).decode() == ctx.arch and info.sm_count == ctx.sm_count
    assert info.shared_memory_per_block_optin > 0 and info.l2_cache_bytes > 0
    assert_status(lib.mfa_context_get_info(ctx.handle, ffi.NULL), "INVALID_ARGUMENT", "out_info is NULL")
    _, options = _context_options(device_ordinal=999)
    status, message, untouched = _create_context(options)
    assert status == lib.MFA_STATUS_NO_DEVICE and "device_ordinal" in message and untouched


@pytest.mark.parametrize("nbytes", [1, 4099, 1 << 20])
def test_buffer_round_trip_and_fill(ctx, rng, nbytes):
    data = rng.integers(0, 256, nbytes, dtype=np.uint8)
    pointer = ffi.new("void **")
    assert_status(lib.mfa_buffer_alloc(ctx.handle, nbytes, pointer), "SUCCESS")
    try:
        assert_status(lib.mfa_copy_to_device(ctx.handle, pointer[0], ffi.from_buffer(data), nbytes), "SUCCESS")
        back = np.zeros(nbytes, np.uint8)
        assert_status(lib.mfa_copy_to_host(ctx.handle, ffi.from_buffer(back, require_writable=True), pointer[0],
                                           nbytes), "SUCCESS")
        assert np.array_equal(back, data)
        assert_status(lib.mfa_buffer_fill_u8(ctx.handle, pointer[0], 0xA5, nbytes), "SUCCESS")
        assert_status(lib.mfa_copy_to_host(ctx.handle, ffi.from_buffer(back, require_writable=True), pointer[0],
                                           nbytes), "SUCCESS")
        assert (back == 0xA5).all()
    finally:
        assert_status(lib.mfa_buffer_free(ctx.handle, pointer[0]), "SUCCESS")


def test_buffer_argument_checks(ctx):
    sentinel = ffi.cast("void *", 0x1234)
    pointer = ffi.new("void **", sentinel)
    assert_status(lib.mfa_buffer_alloc(ctx.handle, 0, pointer), "INVALID_ARGUMENT", "bytes")
    assert pointer[0] == sentinel
    assert_status(lib.mfa_buffer_alloc(ctx.handle, 16, ffi.NULL), "INVALID_ARGUMENT", "out_device_pointer is NULL")
    assert_status(lib.mfa_buffer_free(ctx.handle, ffi.NULL), "SUCCESS")
    assert_status(lib.mfa_copy_to_device(ctx.handle, ffi.NULL, ffi.new("char[1]"), 1), "INVALID_ARGUMENT",
                  "device_dst is NULL")
    assert_status(lib.mfa_copy_to_host(ctx.handle, ffi.NULL, sentinel, 1), "INVALID_ARGUMENT", "host_dst is NULL")
    assert_status(lib.mfa_buffer_fill_u8(ctx.handle, ffi.NULL, 0, 1), "INVALID_ARGUMENT", "device_dst is NULL")


def test_null_out_pointers_with_live_handles(ctx):
    pipeline = mfa_c.GemmPipeline(8, 8, 8, dtype="float32", context=ctx)
    assert_status(lib.mfa_gemm_pipeline_create(ctx.handle, _gemm_descriptor(m=8, n=8, k=8), ffi.NULL),
                  "INVALID_ARGUMENT", "out_pipeline is NULL")
    assert_status(lib.mfa_gemm_pipeline_get_info(pipeline.handle, ffi.NULL), "INVALID_ARGUMENT", "out_info is NULL")
    assert_status(lib.mfa_command_list_create(ctx.handle, ffi.NULL), "INVALID_ARGUMENT", "out_list is NULL")
    with mfa_c.CommandList(ctx) as command_list:
        assert_status(lib.mfa_command_list_begin(command_list.handle, ffi.NULL), "INVALID_ARGUMENT",
                      "out_recording_stream is NULL")
        assert_status(lib.mfa_command_list_get_count(command_list.handle, ffi.NULL), "INVALID_ARGUMENT",
                      "out_count is NULL")
    pipeline.close()


def _gemm_operands(ctx, rng, m=67, n=45, k=129):
    a = DeviceArray.from_numpy(ctx, rng.standard_normal((m, k)).astype(np.float32))
    b = DeviceArray.from_numpy(ctx, rng.standard_normal((k, n)).astype(np.float32))
    return a, b, DeviceArray(ctx, (m, n), np.float32), DeviceArray(ctx, (m, n), np.float32)


def test_command_list_replays_direct_encoding_bit_for_bit(ctx, rng):
    a, b, direct, replayed = _gemm_operands(ctx, rng)
    pipeline = mfa_c.GemmPipeline(67, 45, 129, dtype="float32", context=ctx)
    direct.poison()
    pipeline.encode(a, b, direct)
    expected = direct.numpy()
    assert not np.isnan(expected).any()

    with mfa_c.CommandList(ctx) as command_list:
        assert command_list.count == 0
        with command_list.record() as stream:
            assert isinstance(stream, int) and stream != 0
            pipeline.encode(a, b, replayed, stream=stream)
        assert command_list.count >= 1
        for _ in range(2):  # every launch replays the same work
            replayed.poison()
            command_list.launch()
            assert np.array_equal(replayed.numpy().view(np.uint32), expected.view(np.uint32))
    reference = a.numpy().astype(np.float64) @ b.numpy().astype(np.float64)
    assert np.linalg.norm(expected - reference) / np.linalg.norm(reference) < 1e-5


def test_command_list_state_errors(ctx, rng):
    a, b, c, _ = _gemm_operands(ctx, rng)
    pipeline = mfa_c.GemmPipeline(67, 45, 129, dtype="float32", context=ctx)
    with mfa_c.CommandList(ctx) as command_list:
        handle = command_list.handle
        assert_status(lib.mfa_command_list_end(handle), "INVALID_STATE", "begin")
        assert_status(lib.mfa_command_list_launch(handle, ffi.NULL), "INVALID_STATE", "end")
        stream = ffi.new("void **")
        assert_status(lib.mfa_command_list_begin(handle, stream), "SUCCESS")
        assert_status(lib.mfa_command_list_begin(handle, ffi.new("void **")), "INVALID_STATE", "already recording")
        assert_status(lib.mfa_command_list_launch(handle, ffi.NULL), "INVALID_STATE", "end")
        pipeline.encode(a, b, c, stream=int(ffi.cast("uintptr_t", stream[0])))
        assert_status(lib.mfa_command_list_end(handle), "SUCCESS")
        assert_status(lib.mfa_command_list_end(handle), "INVALID_STATE", "begin")
        c.poison()
        assert_status(lib.mfa_command_list_launch(handle, ffi.NULL), "SUCCESS")
        assert not np.isnan(c.numpy()).any()
