"""Tuning records of the Hopper GEMM: the tile (and schedule) `python -m mfa_c tune gemm` measured fastest
for one device and problem, kept in the disk cache beside the compiled kernels.

The file is <cache directory>/gemm-tuning.json: {"version": 1, "records": [record, ...]}, one record per
key (device name, m, n, k, batch, input and output dtype, transposes) with the winner's "tile_n",
"cluster_m" (absent in records of 0.2, which ran single blocks: read as 1) and "schedule" and, for the
reader, the "tflops" it ran at. GemmPipeline consults it at creation
(apply_stored): a stored winner becomes the descriptor's chained mfa_gemm_tuning. A record that does not
parse is skipped with a warning, never trusted: a wrong tile would still be correct, but a malformed one
must not make every later pipeline fail.
"""

import json
import os
import tempfile
import warnings
from pathlib import Path

from ._ffi import lib, text

FILE_NAME = "gemm-tuning.json"
FORMAT_VERSION = 1
# The Hopper tile's widths (cpp/gemm.cpp): wgmma's n, a multiple of 16 from 64 to 256, and the narrow
# ones, which only a problem whose kernel reads B K-major takes.
NARROW_WIDTHS = (16, 32, 48)
TILE_WIDTHS = NARROW_WIDTHS + tuple(range(64, 257, 16))
CLUSTER_SIZES = (1, 2)
# The Hopper tiles a tuning run measures: every width alone, and the widths a cluster can split in pairs.
TILES = tuple((tile_n, cluster_m) for tile_n in TILE_WIDTHS for cluster_m in CLUSTER_SIZES
              if cluster_m == 1 or tile_n % 128 == 0)
SCHEDULES = ("auto", "data_parallel", "stream_k")
_KEY_FIELDS = ("device", "m", "n", "k", "batch", "dtype", "out_dtype", "trans")
_DTYPE_NAMES = {lib.MFA_DTYPE_F16: "float16", lib.MFA_DTYPE_BF16: "bfloat16", lib.MFA_DTYPE_F32: "float32"}
_SCHEDULE_VALUES = {"auto": lib.MFA_SCHEDULE_AUTO, "data_parallel": lib.MFA_SCHEDULE_DATA_PARALLEL,
                    "stream_k": lib.MFA_SCHEDULE_STREAM_K}
_loaded = {}  # path -> (mtime_ns, size, records): one parse per file version in a process


class TuningWarning(UserWarning):
    """A tuning record (or the whole file) was unreadable and is ignored."""


def records_path(directory=None):
    """The records file in `directory`, else in the library's disk cache; None when that is disabled."""
    directory = directory if directory is not None else text(lib.mfa_cache_directory())
    return Path(directory) / FILE_NAME if directory else None


def record_key(device, fields):
    """The key of a problem: descriptor fields (as GemmPipeline builds them) on the named device."""
    trans = ("T" if fields["trans_a"] else "N") + ("T" if fields["trans_b"] else "N")
    return (device, int(fields["m"]), int(fields["n"]), int(fields["k"]), int(fields["batch"]),
            _DTYPE_NAMES.get(fields["a_dtype"]), _DTYPE_NAMES.get(fields["c_dtype"]), trans)


def load_records(directory=None):
    """{key: record} of the valid records; each invalid one warns (TuningWarning) and is left out."""
    path = records_path(directory)
    if path is None or not path.exists():
        return {}
    stat = path.stat()
    cached = _loaded.get(path)
    if cached and cached[:2] == (stat.st_mtime_ns, stat.st_size):
        return cached[2]
    records = _parse(path)
    _loaded[path] = (stat.st_mtime_ns, stat.st_size, records)
    return records


def lookup(device, fields, directory=None):
    """The stored record of this problem on this device, or None."""
    return load_records(directory).get(record_key(device, fields))


def store_record(device, fields, tile_n, cluster_m, schedule, tflops, directory=None):
    """Stores (or replaces) the winner of a problem; the file is replaced atomically, so a reader in
    another process sees the old or the new file, never half of one. Returns the path written."""
    if (tile_n, cluster_m) not in TILES or schedule not in SCHEDULES:
        raise ValueError(f"tile_n {tile_n!r}, cluster_m {cluster_m!r} / schedule {schedule!r}: (tile_n, cluster_m) "
                         f"in {TILES}, schedule in {SCHEDULES}")
    path = records_path(directory)
    if path is None:
        raise RuntimeError("the disk cache is disabled (MFA_CACHE_DIR=off): nowhere to store tuning records")
    key = record_key(device, fields)
    with warnings.catch_warnings():  # rewriting the file drops the bad records it warned about before
        warnings.simplefilter("ignore", TuningWarning)
        records = dict(load_records(directory))
    records[key] = {**dict(zip(_KEY_FIELDS, key)), "tile_n": tile_n, "cluster_m": cluster_m, "schedule": schedule,
                    "tflops": round(tflops, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"version": FORMAT_VERSION, "records": sorted(records.values(), key=lambda r: [str(v) for v in r.values()])}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".gemm-tuning-", delete=False) as temporary:
        json.dump(document, temporary, indent=1)
    os.replace(temporary.name, path)
    return path


def apply_stored(device, fields, directory=None):
    """`fields` with the stored winner's tile_n and cluster_m (and its schedule where the caller left it
    AUTO); as they are when the caller chose any of the tile, when no Hopper 16-bit kernel applies, or
    when nothing is stored."""
    if ("tile_n" in fields or "cluster_m" in fields or fields["a_dtype"] == lib.MFA_DTYPE_F32
            or fields["path"] == lib.MFA_GEMM_PATH_PORTABLE):
        return fields
    record = lookup(device, fields, directory)
    if record is None:
        return fields
    tuned = {**fields, "tile_n": record["tile_n"], "cluster_m": record.get("cluster_m", 1)}
    if fields["schedule"] == lib.MFA_SCHEDULE_AUTO:
        tuned["schedule"] = _SCHEDULE_VALUES[record["schedule"]]
    return tuned


def _parse(path):
    try:
        document = json.loads(path.read_text())
        if document.get("version") != FORMAT_VERSION or not isinstance(document.get("records"), list):
            raise ValueError(f"version {document.get('version')!r} (this package reads {FORMAT_VERSION})")
    except (OSError, ValueError, AttributeError) as error:
        warnings.warn(f"{path}: ignored, not a tuning file ({error})", TuningWarning, stacklevel=3)
        return {}
    records = {}
    for index, record in enumerate(document["records"]):
        problem = _problem_in(record)
        if problem:
            warnings.warn(f"{path}: record {index} ignored ({problem})", TuningWarning, stacklevel=3)
            continue
        records[tuple(record[name] for name in _KEY_FIELDS)] = record
    return records


def _problem_in(record):
    """What makes a record unusable, or "" for a good one."""
    if not isinstance(record, dict):
        return "not an object"
    missing = [name for name in (*_KEY_FIELDS, "tile_n", "schedule") if name not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    sizes = [record[name] for name in ("m", "n", "k", "batch")]
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in sizes):
        return f"sizes {sizes} are not non-negative integers"
    if record["dtype"] not in ("float16", "bfloat16") or record["out_dtype"] not in _DTYPE_NAMES.values():
        return f"dtypes {record['dtype']!r} -> {record['out_dtype']!r}"
    if record["trans"] not in ("NN", "NT", "TN", "TT"):
        return f"trans {record['trans']!r}"
    if record["tile_n"] not in TILE_WIDTHS or isinstance(record["tile_n"], bool):
        return f"tile_n {record['tile_n']!r} is not a multiple of 16 from 64 to 256"
    cluster_m = record.get("cluster_m", 1)
    if (record["tile_n"], cluster_m) not in TILES or isinstance(cluster_m, bool):
        return f"cluster_m {cluster_m!r} with tile_n {record['tile_n']} is not one of the tiles {TILES}"
    if record["schedule"] not in SCHEDULES:
        return f"schedule {record['schedule']!r} is not one of {SCHEDULES}"
    return ""
