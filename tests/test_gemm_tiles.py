"""The Hopper GEMM's tiles (128 rows by any multiple of 16 from 64 to 256 columns, the 128 and 256 wide
ones also in clusters of two blocks sharing B, and the narrow 16, 32 and 48 of problems of a few columns
with a K-major B), the variant table that picks one, the mfa_gemm_tuning struct that forces one, and the
tuning records `python -m mfa_c tune gemm` stores.

CPU: every tile compiles for sm_90a (every 16-bit input, output and transpose) without spills; the table
picks the documented tile per shape class; the tuning struct is validated; tuning records round-trip, a
stored winner reaches the descriptor, and bad records are ignored with a warning. GPU: every tile against
float64 at odd shapes (every transpose, batches with broadcast, bias, activations, beta, k = 0, both
schedules), the table's choice on the device, and a stored winner used by a pipeline.
"""

import concurrent.futures
import json
import math
import os

import pytest

import mfa_c
from mfa_c import gemm_tuning
from mfa_c._ffi import new_struct, new_struct_array
from mfa_c.gemm import _descriptor_keywords, _pipeline_fields
from conftest import assert_status, ffi, lib, rel_error, tolerance
from test_gemm import (ACTIVATIONS, OUTPUTS, TRANSPOSES, Inputs, check_reports, run_and_check,
                       skip_unless_hopper_applies)

# (tile_n, cluster_m) of the tiles that take any transpose; the narrow ones have tests of their own
TILES = tuple(tile for tile in gemm_tuning.TILES if tile[0] not in gemm_tuning.NARROW_WIDTHS)
DTYPES_16 = ("float16", "bfloat16")
TILE_VARIANTS = [(tile, dtype, out, trans) for tile in TILES for dtype in DTYPES_16 for out in OUTPUTS
                 for trans in TRANSPOSES]


def _tile_keywords(tile, dtype, out, trans):
    return dict(dtype=dtype, out_dtype=out, trans_a=trans[0] == "T", trans_b=trans[1] == "T", path="hopper",
                tile_n=tile[0], cluster_m=tile[1])


def _tile_suffix(tile_n, cluster_m=1):
    """How a variant key ends for that tile."""
    return f".128x{tile_n}" + (f".cluster{cluster_m}" if cluster_m > 1 else "")


def _tile_id(tile):
    return f"{tile[0]}x{tile[1]}"


@pytest.fixture(scope="module")
def tile_reports():
    """compile_report of every tile variant, compiled at once on a thread pool (NVRTC runs concurrently)."""
    def compile_one(variant):
        return mfa_c.compile_report(arch="sm_90a", **_tile_keywords(*variant))

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(TILE_VARIANTS, pool.map(compile_one, TILE_VARIANTS)))


# ================================================================================================
# CPU: compilation, the variant table, the tuning struct


@pytest.mark.parametrize("variant", TILE_VARIANTS, ids=["-".join(map(str, [_tile_id(v[0]), *v[1:]])) for v in TILE_VARIANTS])
def test_every_tile_compiles_without_spills(tile_reports, variant):
    reports = tile_reports[variant]
    check_reports(reports, "sm_90a")
    hopper = [r for r in reports if r["kernel"] == "mfa_gemm_sm90"]
    assert len(hopper) == 1 and hopper[0]["variant"].endswith(_tile_suffix(*variant[0])), [r["variant"] for r in reports]


@pytest.mark.parametrize("m, n, k, batch, tile", [
    # cost = waves x tile width / efficiency, Stream-K's waves times its fix-up factor (cpp/gemm.cpp); 132
    # SMs. Pairs (cluster 2) rate a little below single blocks and need no fewer waves at these shapes.
    (8192, 8192, 8192, 1, (256, 1)),   # 2048 tiles of 128 x 256: 16 waves
    (4096, 4096, 4096, 1, (256, 1)),   # 512: 4 waves (1024 against 8 x 128 / 0.95 = 1078)
    (2048, 2048, 2048, 1, (256, 1)),   # 128 tiles: one wave, against two of 128 x 128 (269)
    (2560, 2560, 1024, 1, (256, 1)),   # 200 tiles, 2 waves (512) against 400 of 128 x 128 in 4 (539)
    (1024, 1024, 1024, 3, (256, 1)),   # batches count: 96 tiles, one wave
    (1536, 1536, 1536, 1, (192, 1)),   # 96 tiles of 128 x 192, one wave (204), against 144 by Stream-K (250)
    (3072, 3072, 3072, 1, (192, 1)),   # 384 of them in 3 waves (613) against 288 of 128 x 256 by Stream-K (710)
    (2560, 2560, 2560, 1, (128, 1)),   # 400 tiles by Stream-K (478) against 200 wide ones in 2 waves (512)
    (1024, 1024, 1024, 1, (64, 1)),    # 32 wide tiles, 64 of 128 x 128, 128 of 128 x 64: one wave each
    (256, 256, 256, 1, (64, 1)),
    (64, 4096, 4096, 1, (64, 1)),      # an LLM decode shape, run as C^T: 32 tiles by Stream-K
    (16, 14336, 4096, 1, (16, 1)),     # 16 rows, run as C^T: the narrow tile of their width, 112 tiles
    (33, 4096, 4096, 1, (48, 1)),      # 33 rows: 48 wide
    (17, 4096, 4096, 2, (32, 1)),
])
def test_the_variant_table_picks_the_tile_per_shape_class(monkeypatch, m, n, k, batch, tile):
    # An fp32 C: these NN problems run as they are (a 16-bit C may run transposed, the test below).
    tile_n, cluster_m, swapped = _table_tile(monkeypatch, m, n, k, batch, "NN", out_dtype="float32")
    assert (tile_n, cluster_m) == tile and swapped == (m <= 64 < n)


@pytest.mark.parametrize("size, tile_n", [
    # B K-major (NT): the widths between the multiples of 64 join the table (kKMajorBTileTable).
    (1536, 144),   # 12 x 11 = 132 tiles of 128 x 144, one wave (167), against 96 of 128 x 192 (204)
    (2176, 160),   # 238 tiles in 2 waves (352) against 289 of 128 x 128 by Stream-K (375)
    (2688, 224),   # 252 tiles in 2 waves (472) against 231 of 128 x 256, also 2 waves (512)
    (3072, 192),   # 144 would need 4 waves (670) where 192 needs 3 (613)
    (1280, 128),   # one wave either way; 112 (140) rates below 128 (135)
    (1152, 96),    # one wave either way: 108 tiles of 128 x 96 (128) against 81 of 128 x 128 (135)
    (4096, 256),
])
def test_k_major_b_takes_the_widths_between(monkeypatch, size, tile_n):
    assert _table_tile(monkeypatch, size, size, size, 1, "NT") == (tile_n, 1, False)
    # N-major B keeps whole boxes
    assert _table_tile(monkeypatch, size, size, size, 1, "NN", out_dtype="float32")[0] % 64 == 0


@pytest.mark.parametrize("m, n, out_dtype, forced, expected", [
    # NN with a 16-bit C runs as C^T = B^T A^T where that is kSwapGain cheaper: its B (A^T) is K-major.
    (1536, 1536, "float16", None, (144, 1, True)),   # 132 tiles of 128 x 144 (167) against 96 of 192 (204)
    (1536, 1536, "bfloat16", None, (144, 1, True)),
    (1600, 700, "float16", None, (80, 1, True)),     # 13 x 10 tiles of 128 x 80 (123) against 128 x 128 (135)
    (1536, 1536, "float32", None, (192, 1, False)),  # an fp32 C would leave element by element
    (1536, 1536, "float16", "192", (192, 1, False)),  # a forced tile keeps the problem as it is
    (4096, 4096, "float16", None, (256, 1, False)),  # 4 waves of 128 x 256 either way
    (1000, 1500, "float16", None, (128, 1, False)),  # one wave of 128 x 128 either way
])
def test_nn_runs_transposed_where_its_tiles_fill_the_waves(monkeypatch, m, n, out_dtype, forced, expected):
    assert _table_tile(monkeypatch, m, n, 512, 1, "NN", out_dtype=out_dtype, forced_tile_n=forced) == expected


def _table_tile(monkeypatch, m, n, k, batch, trans, out_dtype="float16", forced_tile_n=None):
    """(tile_n, cluster_m, whether it runs as C^T) that the library picks for a 16-bit problem."""
    monkeypatch.delenv("MFA_SM90_TILE_N", raising=False)  # the suite may force one; the table is the subject
    monkeypatch.delenv("MFA_SM90_CLUSTER_M", raising=False)
    if forced_tile_n:
        monkeypatch.setenv("MFA_SM90_TILE_N", forced_tile_n)
    reports = mfa_c.compile_report(arch="sm_90a", m=m, n=n, k=k, batch=batch, dtype="float16", path="hopper",
                                   out_dtype=out_dtype, trans_a=trans[0] == "T", trans_b=trans[1] == "T")
    (variant,) = [r["variant"] for r in reports if r["kernel"] == "mfa_gemm_sm90"]
    assert f".{trans.lower()}." in variant, variant
    tile = variant.split(f".{trans.lower()}.128x")[1].removesuffix(".swap-ab")
    tile_n, _, cluster = tile.partition(".cluster")
    return int(tile_n), int(cluster or 1), variant.endswith(".swap-ab")


@pytest.mark.parametrize("m, n, trans, tile_n", [
    (8192, 16, "NT", 16),   # a K-major B of 16 columns: one narrow tile wide
    (8192, 40, "TT", 48),
    (8192, 16, "NN", 64),   # an N-major B arrives in 64-wide boxes: no narrow tile (an fp32 C: not C^T)
    (8192, 64, "NT", 64),
])
def test_few_columns_with_a_k_major_b_take_a_narrow_tile(monkeypatch, m, n, trans, tile_n):
    assert _table_tile(monkeypatch, m, n, 4096, 1, trans, out_dtype="float32") == (tile_n, 1, False)


NARROW_VARIANTS = [(width, dtype, out, trans) for width in (16, 32, 48) for dtype in DTYPES_16 for out in OUTPUTS
                   for trans in ("NT", "TT")]


@pytest.mark.parametrize("width, dtype, out, trans", NARROW_VARIANTS,
                         ids=["-".join(map(str, v)) for v in NARROW_VARIANTS])
def test_narrow_tiles_compile_without_spills(width, dtype, out, trans):
    reports = mfa_c.compile_report(arch="sm_90a", dtype=dtype, out_dtype=out, trans_a=trans[0] == "T", trans_b=True,
                                   path="hopper", tile_n=width)
    check_reports(reports, "sm_90a")
    hopper = [r for r in reports if r["kernel"] == "mfa_gemm_sm90"]
    assert len(hopper) == 1 and hopper[0]["variant"].endswith(_tile_suffix(width)), hopper
    # B's region is the tile's rows and there are no staging buffers: the ring takes their room (gemm.cuh)
    stage = (128 + width) * 64 * 2 + 2 * 8
    stages = (227 * 1024 - 1024) // stage
    assert stages >= 9 and hopper[0]["dynamic_shared_bytes"] == stages * stage + 1024


def test_a_narrow_tile_on_an_n_major_b_is_refused(monkeypatch):
    monkeypatch.delenv("MFA_SM90_TILE_N", raising=False)
    with pytest.raises(mfa_c.MFAError, match="tile_n is 32: tiles narrower than 64 need a K-major B"):
        mfa_c.compile_report(arch="sm_90a", m=1000, n=30, k=64, dtype="float16", out_dtype="float32", path="hopper",
                             tile_n=32)
    monkeypatch.setenv("MFA_SM90_TILE_N", "16")
    with pytest.raises(mfa_c.MFAError, match="MFA_SM90_TILE_N is 16"):
        mfa_c.compile_report(arch="sm_90a", m=1000, n=30, k=64, dtype="float16", out_dtype="float32", path="hopper")


THIN_VARIANTS = [(dtype, out, trans) for dtype in DTYPES_16 for out in OUTPUTS for trans in TRANSPOSES]


@pytest.mark.parametrize("dtype, out, trans", THIN_VARIANTS, ids=["-".join(v) for v in THIN_VARIANTS])
def test_thin_problems_compile_as_c_transposed_without_spills(dtype, out, trans):
    """At most 64 rows and more columns: the kernel is given C^T = op(B)^T op(A)^T, whose operands are read with
    the other transposes, and writes C transposed; its B (op(A)^T) is K-major where A is not transposed, and
    then the tile is as narrow as the rows."""
    reports = mfa_c.compile_report(arch="sm_90a", m=16, n=4096, k=4096, dtype=dtype, out_dtype=out,
                                   trans_a=trans[0] == "T", trans_b=trans[1] == "T", path="hopper")
    check_reports(reports, "sm_90a")
    hopper = [r["variant"] for r in reports if r["kernel"] == "mfa_gemm_sm90"]
    width = 64 if trans[0] == "T" else 16
    assert len(hopper) == 1 and hopper[0].endswith(f".128x{width}.swap-ab"), hopper
    assert f".{trans.lower()}." in hopper[0], hopper  # the key names the caller's transposes


def test_a_cluster_asked_for_alone_gets_the_tables_width(monkeypatch):
    """cluster_m without tile_n: the table picks the width among the pairs; MFA_SM90_CLUSTER_M forces pairs
    the same way (falling back to single blocks on 64-wide tiles), and a bad value is named."""
    monkeypatch.delenv("MFA_SM90_TILE_N", raising=False)
    monkeypatch.delenv("MFA_SM90_CLUSTER_M", raising=False)

    def variant(**keywords):
        reports = mfa_c.compile_report(arch="sm_90a", m=4096, n=4096, k=4096, dtype="float16", path="hopper", **keywords)
        return [r["variant"] for r in reports if r["kernel"] == "mfa_gemm_sm90"][0]

    assert variant(cluster_m=2).endswith(".128x256.cluster2")
    monkeypatch.setenv("MFA_SM90_CLUSTER_M", "2")
    assert variant().endswith(".128x256.cluster2")
    assert variant(tile_n=64).endswith(".128x64")
    monkeypatch.setenv("MFA_SM90_CLUSTER_M", "3")
    with pytest.raises(mfa_c.MFAError, match="MFA_SM90_CLUSTER_M"):
        variant()


def _tuned_descriptor(tuning_fields, **fields):
    descriptor = new_struct("mfa_gemm_descriptor", **{"m": 256, "n": 256, "k": 256, "path": lib.MFA_GEMM_PATH_HOPPER,
                                                      **fields})
    tuning = new_struct("mfa_gemm_tuning", **tuning_fields)
    descriptor.header.next = tuning
    return descriptor, tuning


@pytest.mark.parametrize("tuning_fields, fields, expected, name", [
    (dict(tile_n=88), {}, "INVALID_ARGUMENT", "tuning->tile_n is 88"),
    (dict(tile_n=48), {}, "INVALID_ARGUMENT", "tuning->tile_n is 48: tiles narrower than 64 need a K-major B"),
    (dict(tile_n=8), {}, "INVALID_ARGUMENT", "tuning->tile_n is 8"),
    (dict(tile_n=272), {}, "INVALID_ARGUMENT", "tuning->tile_n is 272"),
    (dict(tile_n=512), {}, "INVALID_ARGUMENT", "tuning->tile_n is 512"),
    (dict(tile_n=-1), {}, "INVALID_ARGUMENT", "tuning->tile_n is -1"),
    (dict(cluster_m=3), {}, "INVALID_ARGUMENT", "tuning->cluster_m is 3"),
    (dict(cluster_m=-1), {}, "INVALID_ARGUMENT", "tuning->cluster_m is -1"),
    (dict(tile_n=64, cluster_m=2), {}, "INVALID_ARGUMENT", "tuning->cluster_m is 2 with tile_n 64"),
    (dict(tile_n=192, cluster_m=2), {}, "INVALID_ARGUMENT", "tuning->cluster_m is 2 with tile_n 192"),
    (dict(tile_n=64), dict(a_dtype=lib.MFA_DTYPE_F32, b_dtype=lib.MFA_DTYPE_F32, c_dtype=lib.MFA_DTYPE_F32),
     "UNSUPPORTED", "tuning->tile_n 64"),
    (dict(cluster_m=2), dict(a_dtype=lib.MFA_DTYPE_F32, b_dtype=lib.MFA_DTYPE_F32, c_dtype=lib.MFA_DTYPE_F32),
     "UNSUPPORTED", "cluster_m 2"),
    (dict(tile_n=128), dict(path=lib.MFA_GEMM_PATH_PORTABLE), "UNSUPPORTED", "16-bit inputs on the Hopper path"),
])
def test_the_tuning_struct_is_validated(tuning_fields, fields, expected, name):
    descriptor, _tuning = _tuned_descriptor(tuning_fields, **fields)
    reports, count = ffi.new("mfa_kernel_report[4]"), ffi.new("int32_t *")
    assert_status(lib.mfa_gemm_compile_report(descriptor, b"sm_90a", reports, 4, count), expected, name)
    assert_status(lib.mfa_gemm_validate(descriptor, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL), expected, name)


def test_a_chained_struct_of_another_type_is_rejected():
    descriptor = new_struct("mfa_gemm_descriptor", m=64, n=64, k=64)
    other = new_struct("mfa_pipeline_info")
    descriptor.header.next = other
    count = ffi.new("int32_t *")
    assert_status(lib.mfa_gemm_compile_report(descriptor, b"sm_90a", ffi.NULL, 0, count), "INVALID_ARGUMENT",
                  "descriptor->header.next")


def test_a_chained_descriptor_from_a_newer_header_is_checked_as_any_other():
    """A larger descriptor (a newer caller) with a tuning chained: a zero tail passes, a set byte of it is a
    VERSION_MISMATCH, as without the chain."""
    size = ffi.sizeof("mfa_gemm_descriptor")
    memory = ffi.new("char[]", size + 8)
    plain, tuning = _tuned_descriptor(dict(tile_n=64))
    ffi.memmove(memory, plain, size)
    descriptor = ffi.cast("mfa_gemm_descriptor *", memory)
    descriptor.header.size = size + 8
    reports, count = new_struct_array("mfa_kernel_report", 4), ffi.new("int32_t *")
    assert_status(lib.mfa_gemm_compile_report(descriptor, b"sm_90a", reports, 4, count), "SUCCESS")
    assert any(ffi.string(reports[i].variant).decode().endswith(".128x64") for i in range(count[0]))
    memory[size + 3] = b"\x02"
    assert_status(lib.mfa_gemm_compile_report(descriptor, b"sm_90a", reports, 4, count), "VERSION_MISMATCH",
                  "descriptor")


def test_the_tuning_struct_chooses_the_schedule_describes_tile():
    """describe with tile_n 0 follows the chained tuning: 128 x 64 tiles of a 1024^2 output number 128."""
    descriptor, _tuning = _tuned_descriptor(dict(tile_n=64), schedule=lib.MFA_SCHEDULE_DATA_PARALLEL)
    descriptor.m = descriptor.n = 1024
    count = ffi.new("int64_t *")
    items = ffi.new("mfa_gemm_work_item[256]")
    assert_status(lib.mfa_gemm_schedule_describe(descriptor, 132, 0, ffi.NULL, ffi.NULL, items, 256, count), "SUCCESS")
    assert count[0] == 8 * 16 and sorted(items[i].tile for i in range(count[0])) == list(range(128))


def test_describe_counts_a_cluster_as_one_unit_of_256_rows():
    """With clusters of two, a unit's tile stacks two blocks' tiles: a 1024 x 1024 output is 4 x 8 such tiles
    of 256 x 128, shared by at most 132 / 2 units, and a unit's Stream-K workspace holds both blocks'."""
    descriptor, _tuning = _tuned_descriptor(dict(tile_n=128, cluster_m=2), schedule=lib.MFA_SCHEDULE_STREAM_K)
    descriptor.m = descriptor.n = descriptor.k = 1024
    count, workspace = ffi.new("int64_t *"), ffi.new("uint64_t *")
    items = ffi.new("mfa_gemm_work_item[512]")
    assert_status(lib.mfa_gemm_schedule_describe(descriptor, 132, 0, ffi.NULL, workspace, items, 512, count), "SUCCESS")
    units = {items[i].block for i in range(count[0])}
    covered = sorted((items[i].tile, k) for i in range(count[0]) for k in range(items[i].k_begin, items[i].k_end))
    assert max(units) < 66 and covered == [(tile, k) for tile in range(32) for k in range(16)]
    flags = -(-len(units) * 4 * 8 // 256) * 256  # an 8-byte flag per 64 rows of a unit's tile, padded to 256 bytes
    assert workspace[0] == flags + len(units) * 256 * 128 * 4


# ================================================================================================
# CPU: tuning records

DEVICE = "NVIDIA H100 80GB HBM3"


def _fields(m=1024, n=1024, k=1024, **keywords):
    return _pipeline_fields(m, n, k, **keywords)


def test_records_round_trip_and_replace_per_key(tmp_path):
    first, second = _fields(), _fields(trans_b=True)
    gemm_tuning.store_record(DEVICE, first, 64, 1, "data_parallel", 401.23, directory=tmp_path)
    gemm_tuning.store_record(DEVICE, second, 128, 1, "auto", 390.0, directory=tmp_path)
    gemm_tuning.store_record(DEVICE, first, 256, 2, "stream_k", 402.0, directory=tmp_path)  # replaces the first
    document = json.loads((tmp_path / gemm_tuning.FILE_NAME).read_text())
    assert document["version"] == gemm_tuning.FORMAT_VERSION and len(document["records"]) == 2
    record = gemm_tuning.lookup(DEVICE, first, tmp_path)
    assert (record["tile_n"], record["cluster_m"], record["schedule"], record["tflops"], record["trans"]) == \
        (256, 2, "stream_k", 402.0, "NN")
    assert gemm_tuning.lookup(DEVICE, second, tmp_path)["tile_n"] == 128
    assert gemm_tuning.lookup("NVIDIA H200", first, tmp_path) is None       # the device is part of the key
    assert gemm_tuning.lookup(DEVICE, _fields(k=1025), tmp_path) is None     # and every size
    assert gemm_tuning.lookup(DEVICE, _fields(dtype="bfloat16"), tmp_path) is None
    assert gemm_tuning.lookup(DEVICE, _fields(out_dtype="float32"), tmp_path) is None
    for tile_n, cluster_m in ((88, 1), (8, 1), (48, 2), (64, 2), (144, 2), (256, 3)):
        with pytest.raises(ValueError):
            gemm_tuning.store_record(DEVICE, first, tile_n, cluster_m, "auto", 1.0, directory=tmp_path)


def test_a_stored_winner_reaches_the_descriptor_and_the_kernel(tmp_path, monkeypatch):
    monkeypatch.delenv("MFA_SM90_TILE_N", raising=False)
    monkeypatch.delenv("MFA_SM90_CLUSTER_M", raising=False)
    fields = _fields(4096, 4096, 4096)  # the table picks 128 x 256 here
    gemm_tuning.store_record(DEVICE, fields, 64, 1, "data_parallel", 500.0, directory=tmp_path)
    tuned = gemm_tuning.apply_stored(DEVICE, fields, tmp_path)
    assert tuned["tile_n"] == 64 and tuned["cluster_m"] == 1 and tuned["schedule"] == lib.MFA_SCHEDULE_DATA_PARALLEL
    assert "tile_n" not in fields  # the caller's fields are left alone
    # The descriptor it becomes compiles the stored tile (the table would have said 128x256).
    tile = {k: tuned[k] for k in ("tile_n", "cluster_m")}
    keywords = {**_descriptor_keywords(new_struct("mfa_gemm_descriptor", **{k: v for k, v in tuned.items()
                                                                           if k not in tile})),
                **tile, "path": "hopper"}
    reports = mfa_c.compile_report(arch="sm_90a", m=4096, n=4096, k=4096, **keywords)
    assert [r["variant"] for r in reports if r["kernel"] == "mfa_gemm_sm90"] == ["gemm.sm90.f16mma.f16-f16.nn.128x64"]
    # A caller's own tile, a caller's schedule, fp32 and the portable path keep what they asked for.
    assert gemm_tuning.apply_stored(DEVICE, {**fields, "tile_n": 128}, tmp_path)["tile_n"] == 128
    assert "tile_n" not in gemm_tuning.apply_stored(DEVICE, {**fields, "cluster_m": 2}, tmp_path)
    assert gemm_tuning.apply_stored(DEVICE, {**fields, "schedule": lib.MFA_SCHEDULE_STREAM_K},
                                    tmp_path)["schedule"] == lib.MFA_SCHEDULE_STREAM_K
    assert "tile_n" not in gemm_tuning.apply_stored(DEVICE, {**fields, "path": lib.MFA_GEMM_PATH_PORTABLE}, tmp_path)


def test_bad_records_are_ignored_with_a_warning(tmp_path):
    good = {"device": DEVICE, "m": 512, "n": 512, "k": 512, "batch": 1, "dtype": "float16", "out_dtype": "float16",
            "trans": "NN", "tile_n": 64, "schedule": "auto", "tflops": 100.0}
    bad = [
        "not a record",
        {**good, "tile_n": 88},
        {**good, "tile_n": True},
        {**good, "cluster_m": 2},  # 64 columns do not split in two
        {**good, "cluster_m": 4},
        {**good, "schedule": "split_k"},
        {**good, "m": -1},
        {**good, "k": "512"},
        {**good, "dtype": "float32"},
        {**good, "trans": "XY"},
        {key: value for key, value in good.items() if key != "device"},
    ]
    (tmp_path / gemm_tuning.FILE_NAME).write_text(json.dumps({"version": 1, "records": [*bad, good]}))
    with pytest.warns(gemm_tuning.TuningWarning) as caught:
        records = gemm_tuning.load_records(tmp_path)
    assert len(caught) == len(bad)
    assert list(records.values()) == [good]
    assert gemm_tuning.lookup(DEVICE, _fields(512, 512, 512), tmp_path)["tile_n"] == 64
    # A record of 0.2 has no cluster_m: its tile ran single blocks.
    assert gemm_tuning.apply_stored(DEVICE, _fields(512, 512, 512), tmp_path)["cluster_m"] == 1


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"version": 99, "records": []}),
                                     json.dumps({"version": 1, "records": {}})])
def test_an_unreadable_file_is_ignored_with_a_warning_and_then_replaced(tmp_path, content):
    (tmp_path / gemm_tuning.FILE_NAME).write_text(content)
    with pytest.warns(gemm_tuning.TuningWarning, match="not a tuning file"):
        assert gemm_tuning.load_records(tmp_path) == {}
    assert gemm_tuning.apply_stored(DEVICE, _fields(), tmp_path) == _fields()
    gemm_tuning.store_record(DEVICE, _fields(), 128, 1, "auto", 300.0, directory=tmp_path)
    assert gemm_tuning.lookup(DEVICE, _fields(), tmp_path)["tile_n"] == 128


# ================================================================================================
# GPU: every tile width against float64


def _gpu_cases():
    """Every tile with every transpose; the input and output dtypes rotate, so each tile meets both inputs
    and every output."""
    cases = []
    for position, tile in enumerate(TILES):
        for index, trans in enumerate(TRANSPOSES):
            dtype = DTYPES_16[(index + position) % len(DTYPES_16)]
            out = OUTPUTS[(index + position) % len(OUTPUTS)]
            cases.append(pytest.param(tile, dtype, out, trans, id=f"{_tile_id(tile)}-{dtype}-{out}-{trans}"))
    return cases


@pytest.mark.parametrize("m, n, k", [(127, 255, 1000), (1000, 333, 517), (64, 4096, 1030), (1, 65, 64), (300, 520, 130)])
@pytest.mark.parametrize("tile, dtype, out_dtype, trans", _gpu_cases())
def test_every_tile_at_odd_shapes(ctx, torch_cuda, rng, tile, dtype, out_dtype, trans, m, n, k):
    skip_unless_hopper_applies(ctx, "hopper")
    inputs = Inputs(torch_cuda, rng)
    a, b = inputs.operands(m, n, k, dtype, trans, "padded")
    activation = str(rng.choice(ACTIVATIONS))
    bias = inputs.randn((1, n), str(rng.choice([out_dtype, "float32"])))[0]
    beta = float(rng.choice([0.0, 0.5]))
    c0 = inputs.randn((m, n), out_dtype) if beta else None
    run_and_check(torch_cuda, a, b, dtype=dtype, precision="default", out_dtype=out_dtype, trans=trans, alpha=0.75,
                  beta=beta, c0=c0, bias=bias, activation=activation, path="hopper", layout="padded", tile_n=tile[0],
                  cluster_m=tile[1], context_note=f"tile {_tile_suffix(*tile)} {activation} beta {beta}")


def _check_every_epilogue_term(torch, rng, m, n, k, batch, dtype, out_dtype, trans, layout, **choice):
    """The Hopper path on random operands of `layout` against float64, with alpha, beta, a bias and a random
    activation in play; `choice` passes tile_n or schedule on to mfa_c.gemm."""
    inputs = Inputs(torch, rng)
    a, b = inputs.operands(m, n, k, dtype, trans, layout, batch=(batch,) if batch > 1 else ())
    activation = str(rng.choice(ACTIVATIONS))
    bias = inputs.randn((1, n), out_dtype)[0]
    c0 = inputs.randn((batch, m, n) if batch > 1 else (m, n), out_dtype)
    run_and_check(torch, a, b, dtype=dtype, precision="default", out_dtype=out_dtype, trans=trans, alpha=0.75,
                  beta=0.5, c0=c0, bias=bias, activation=activation, path="hopper",
                  context_note=f"{m}x{n}x{k} batch {batch} {trans} {activation} {choice}", **choice)


@pytest.mark.parametrize("schedule", ["data_parallel", "stream_k"])
@pytest.mark.parametrize("m, n, k, batch, trans, width", [
    (1, 4096, 1000, 1, "NN", 16),   # decode: one row, run as C^T
    (7, 1000, 4099, 2, "NT", 16),
    (17, 777, 517, 1, "NN", 32),
    (33, 300, 2000, 1, "NT", 48),
    (48, 129, 64, 1, "NN", 48),
    (500, 40, 700, 1, "NT", 48),    # few columns with a K-major B, as it is
    (300, 100, 333, 3, "TT", 16),   # forced narrower than n: seven columns of tiles
])
def test_narrow_tiles_against_float64(ctx, torch_cuda, rng, m, n, k, batch, trans, width, schedule):
    """Narrow tiles at odd shapes, both schedules, every epilogue term; the thin ones are the library's own
    choice (checked on the pipeline), the last is forced."""
    skip_unless_hopper_applies(ctx, "hopper")
    dtype, out_dtype = rng.choice(DTYPES_16), str(rng.choice(OUTPUTS))
    forced = width if (m, n) == (300, 100) else None
    with mfa_c.GemmPipeline(m, n, k, batch=batch, dtype=dtype, out_dtype=out_dtype, trans_a=trans[0] == "T",
                            trans_b=trans[1] == "T", path="hopper", schedule=schedule, tile_n=forced,
                            context=ctx) as pipeline:
        assert f".128x{width}" in pipeline.info["variant"] and pipeline.info["schedule"] == schedule, pipeline.info
    _check_every_epilogue_term(torch_cuda, rng, m, n, k, batch, dtype, out_dtype, trans, "padded", tile_n=forced,
                               schedule=schedule)


@pytest.mark.parametrize("schedule", ["data_parallel", "stream_k"])
@pytest.mark.parametrize("m, n, k, batch, trans", [
    (49, 1000, 700, 1, "NN"),
    (52, 4104, 1030, 2, "NT"),
    (64, 776, 2000, 1, "TN"),
    (60, 304, 64, 1, "TT"),
    (57, 4099, 1030, 1, "NT"),  # rows of C not 16-byte multiples: stored element by element
])
def test_thin_rows_filling_the_64_wide_tile_against_float64(ctx, torch_cuda, rng, m, n, k, batch, trans, schedule):
    """49 to 64 rows run as C^T in 64-wide tiles, a 16-bit C stored transposed through shared memory by TMA
    where its rows are 16-byte multiples (cpp/gemm.cpp): odd sizes, batches, every transpose, both schedules,
    every epilogue term."""
    skip_unless_hopper_applies(ctx, "hopper")
    dtype, out_dtype = str(rng.choice(DTYPES_16)), str(rng.choice(["float16", "bfloat16"]))
    with mfa_c.GemmPipeline(m, n, k, batch=batch, dtype=dtype, out_dtype=out_dtype, trans_a=trans[0] == "T",
                            trans_b=trans[1] == "T", path="hopper", schedule=schedule, context=ctx) as pipeline:
        assert pipeline.info["variant"].endswith(".128x64.swap-ab"), pipeline.info
    _check_every_epilogue_term(torch_cuda, rng, m, n, k, batch, dtype, out_dtype, trans, "padded", schedule=schedule)


@pytest.mark.parametrize("m, n, k, batch", [(1500, 1530, 100, 1), (1600, 700, 67, 1), (700, 1600, 130, 2)])
@pytest.mark.parametrize("dtype, out_dtype", [("float16", "float16"), ("bfloat16", "bfloat16"),
                                              ("float16", "bfloat16")])
def test_nn_run_transposed_against_float64(ctx, torch_cuda, rng, monkeypatch, m, n, k, batch, dtype, out_dtype):
    """NN problems that the table runs as C^T (their tiles stored transposed by TMA, and by registers past
    the tile's whole 64-column chunks), every epilogue term in play."""
    skip_unless_hopper_applies(ctx, "hopper")
    monkeypatch.delenv("MFA_SM90_TILE_N", raising=False)
    monkeypatch.delenv("MFA_SM90_CLUSTER_M", raising=False)
    with mfa_c.GemmPipeline(m, n, k, batch=batch, dtype=dtype, out_dtype=out_dtype, path="hopper",
                            context=ctx) as pipeline:
        assert pipeline.info["variant"].endswith(".swap-ab"), pipeline.info["variant"]
    _check_every_epilogue_term(torch_cuda, rng, m, n, k, batch, dtype, out_dtype, "NN", "compact")


@pytest.mark.parametrize("schedule", ["data_parallel", "stream_k"])
@pytest.mark.parametrize("broadcast", ["none", "a", "b"])
@pytest.mark.parametrize("tile", TILES, ids=_tile_id)
def test_every_tile_batched(ctx, torch_cuda, rng, tile, broadcast, schedule):
    """Batches of A^T B with either operand a single matrix repeated over the batch, both schedules."""
    skip_unless_hopper_applies(ctx, "hopper")
    torch = torch_cuda
    batch, m, n, k = 3, 200, 300, 700
    a, b = Inputs(torch, rng).operands(m, n, k, "bfloat16", "TN", batch=(batch,))
    a = a[0] if broadcast == "a" else a
    b = b[0] if broadcast == "b" else b
    c = torch.full((batch, m, n), math.nan, dtype=torch.float32, device="cuda")
    mfa_c.gemm(a, b, trans_a=True, c=c, path="hopper", schedule=schedule, tile_n=tile[0], cluster_m=tile[1])
    torch.cuda.synchronize()
    reference = torch.matmul(a.double().transpose(-1, -2), b.double())
    error = rel_error(c, reference)
    assert error <= tolerance("bfloat16", "default", "float32"), f"relative error {error:.3g}"


@pytest.mark.parametrize("tile", TILES, ids=_tile_id)
def test_every_tile_with_k_zero(ctx, torch_cuda, rng, tile):
    skip_unless_hopper_applies(ctx, "hopper")
    torch = torch_cuda
    inputs = Inputs(torch, rng)
    a, b = inputs.operands(130, 70, 0, "float16", "NN")
    c0 = inputs.randn((130, 70), "float32")
    bias = inputs.randn((1, 70), "float32")[0]
    run_and_check(torch, a, b, dtype="float16", precision="default", out_dtype="float32", beta=0.5, c0=c0, bias=bias,
                  activation="relu", path="hopper", tile_n=tile[0], cluster_m=tile[1])


def test_the_table_and_a_stored_winner_on_the_device(ctx, torch_cuda, rng, tmp_path, monkeypatch):
    skip_unless_hopper_applies(ctx, "hopper")
    monkeypatch.delenv("MFA_SM90_TILE_N", raising=False)
    monkeypatch.delenv("MFA_SM90_CLUSTER_M", raising=False)
    info = mfa_c.GemmPipeline(1024, 1024, 1024, dtype="float16", context=ctx).info
    expected = 64 if ctx.sm_count >= 128 else 128  # 128 tiles of 128 x 64 take one wave on an H100 (132 SMs)
    assert info["variant"].endswith(f".128x{expected}"), info
    # A record in the disk cache wins over the table for that device and problem only.
    monkeypatch.setattr(gemm_tuning, "records_path", lambda directory=None: tmp_path / gemm_tuning.FILE_NAME)
    fields = _fields(1024, 1024, 1024)
    gemm_tuning.store_record(ctx.name, fields, 256, 1, "stream_k", 1.0)
    with mfa_c.GemmPipeline(1024, 1024, 1024, dtype="float16", context=ctx) as tuned:
        assert tuned.info["variant"].endswith(".128x256") and tuned.info["schedule"] == "stream_k", tuned.info
        a, b = Inputs(torch_cuda, rng).operands(1024, 1024, 1024, "float16", "NN")
        c = torch_cuda.full((1024, 1024), math.nan, dtype=torch_cuda.float16, device="cuda")
        tuned.encode(a, b, c)
        torch_cuda.cuda.synchronize()
        reference = torch_cuda.matmul(a.double(), b.double())
        error = float(torch_cuda.linalg.vector_norm(c.double() - reference) / torch_cuda.linalg.vector_norm(reference))
        assert error <= 2e-3
    with mfa_c.GemmPipeline(1024, 1024, 1000, dtype="float16", context=ctx) as other:
        assert other.info["variant"].endswith(f".128x{expected}")
