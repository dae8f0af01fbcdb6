"""GEMM benchmarks against cuBLAS (torch.matmul), and the tuning run that stores the fastest Hopper tile.

Each side is a CUDA graph: ours an mfa_c.CommandList, cuBLAS a torch.cuda.CUDAGraph, each holding one GEMM
per copy of the inputs. Where one set of inputs fits in L2, the copies rotate through more than L2 holds,
so no GEMM starts with its operands cached. The graphs launch in turns, timed with CUDA events; a row
reports the median (bench.py's shared helpers). Results are written as BENCH_RESULTS.md describes.

  bench_gemm       square sizes (the default list, or the full sweep 128..8192 step 128 with its chart)
  bench_stream_k   Stream-K and LLM shapes: ours (auto) against ours forced data-parallel and cuBLAS
  bench_gelu       GEMM + GELU fused against torch.matmul followed by torch.nn.functional.gelu
  tune_gemm        every tile x schedule on one problem; the winner goes to the disk cache (gemm_tuning.py)
"""

import math
import statistics

import mfa_c

from . import gemm_tuning
from ._ffi import MFAError, lib
from .bench import (_COLD_L2_FACTOR, _TORCH_DTYPES, ProgressBar, _median_ms_alternating, _require_torch_cuda,
                    result_document)
from .gemm import _pipeline_fields

DEFAULT_GEMM_SIZES = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
SWEEP_SIZES = tuple(range(128, 8192 + 1, 128))
# Stream-K shapes of the issue: M = N with a long K, and LLM projections (tokens x hidden).
STREAM_K_SHAPES = tuple((mn, mn, k) for mn in (3072, 5120) for k in (4096, 8192, 16384))
LLM_SHAPES = tuple((m, n, k) for m in (16, 32, 64, 128, 256, 512)
                   for n, k in ((4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336)))
GELU_SHAPES = ((2048, 4096, 1024), (4096, 4096, 4096), (4096, 11008, 4096), (8192, 8192, 1024), (8192, 14336, 4096))
PEER = "cuBLAS (torch.matmul)"
PEER_GELU = "torch.matmul + torch.nn.functional.gelu"

# TFLOPS, dense, H100 SXM datasheet (H200 has the same compute); fp32 is keyed by precision.
_GEMM_PEAKS = {
    "fp16": (989.0, "dense fp16 tensor-core peak, H100 SXM datasheet"),
    "bf16": (989.0, "dense bf16 tensor-core peak, H100 SXM datasheet"),
    "ieee": (67.0, "fp32 FFMA (CUDA-core) peak, H100 SXM datasheet"),
    "accurate": (165.0, "dense tf32 tensor-core peak (495) / 3 for 3xTF32, H100 SXM datasheet"),
}
_MAX_COPIES = 256
_EXACT_ERROR_LIMIT = 4096  # beyond, the error is measured on a sample of rows
_ERROR_SAMPLE_ROWS = 256
# The sweep's time budget (< 4 minutes for 256 rows): a row's timed runs are capped so that each side
# spends about this long in them, at least _MIN_REPS runs.
_SWEEP_SECONDS_PER_SIDE = 0.05
_MIN_REPS = 5
_TILES = gemm_tuning.TILES


def gemm_peak(dtype, precision):
    """{"value", "what"} for the unit TFLOPS."""
    key = dtype if dtype != "fp32" else ("ieee" if precision == "ieee" else "accurate")
    value, what = _GEMM_PEAKS[key]
    return {"value": value, "what": what}


def bench_gemm(dtypes=("fp16",), precision="default", sizes=DEFAULT_GEMM_SIZES, transposes=("NN",), reps=30,
               command=""):
    """Square GEMMs, ours against cuBLAS, for each dtype; returns the results document of BENCH_RESULTS.md
    with a "summary" per (dtype, trans): geometric mean and minimum of the ratios. 16-bit dtypes share one
    file ("gemm", one peak); fp32 has its own ("gemm_fp32")."""
    if len({dtype == "fp32" for dtype in dtypes}) > 1:
        raise ValueError("fp32 has another peak than fp16/bf16: benchmark it in a run of its own")
    torch = _require_torch_cuda()
    torch.set_float32_matmul_precision("highest")  # cuBLAS fp32 without TF32, as accurate as ours
    context = mfa_c.default_context(torch.cuda.current_device())
    cases = [(dtype, trans, size) for dtype in dtypes for trans in transposes for size in sizes]
    rows = _run_cases(torch, cases, lambda dtype, trans, size: f"gemm {dtype} {trans} {size}",
                      lambda dtype, trans, size: _square_row(torch, context, size, dtype, precision, trans, reps))
    document = _document("gemm_fp32" if dtypes[0] == "fp32" else "gemm", context, torch, command,
                         gemm_peak(dtypes[0], precision), rows)
    document["summary"] = ratio_summary(rows)
    return document


def bench_stream_k(dtype="fp16", shapes=STREAM_K_SHAPES + LLM_SHAPES, reps=20, command=""):
    """Each shape three ways: ours with the library's schedule ("ours"), ours forced data-parallel
    ("ours_data_parallel", "ratio_vs_data_parallel") and cuBLAS; "schedule" says what auto chose."""
    return _shape_suite("gemm_stream_k", "stream_k", _stream_k_row, dtype, shapes, reps, command)


def bench_gelu(dtype="fp16", shapes=GELU_SHAPES, reps=20, command=""):
    """GEMM with GELU (erf) fused into our epilogue against torch.matmul then torch's GELU kernel."""
    return _shape_suite("gemm_gelu", "gelu", _gelu_row, dtype, shapes, reps, command)


def _shape_suite(op, label, row, dtype, shapes, reps, command):
    """A document of one row(torch, context, m, n, k, dtype, reps) per (m, n, k) of `shapes`."""
    torch = _require_torch_cuda()
    context = mfa_c.default_context(torch.cuda.current_device())
    cases = [(dtype, *shape) for shape in shapes]
    rows = _run_cases(torch, cases, lambda dtype, m, n, k: f"{label} {dtype} {m}x{n}x{k}",
                      lambda dtype, m, n, k: row(torch, context, m, n, k, dtype, reps))
    return _document(op, context, torch, command, gemm_peak(dtype, "default"), rows)


def tune_gemm(m, n, k, dtype="fp16", trans="NN", out_dtype=None, reps=20, store=True):
    """Times every Hopper tile (width x cluster) x schedule on this problem (all on the same inputs,
    alternating) and stores the winner for this device in the disk cache, where GemmPipeline finds it.
    Returns (rows of {"tile_n", "cluster_m", "schedule", "tflops", "variant"}, the winner, the records
    file or None)."""
    torch = _require_torch_cuda()
    context = mfa_c.default_context(torch.cuda.current_device())
    if context.arch != "sm_90a":
        raise MFAError(lib.MFA_STATUS_UNSUPPORTED,
                       f"tune: the tiles are the Hopper kernel's; this device compiles for {context.arch}")
    out_dtype = out_dtype or dtype
    case = _GemmCase(torch, context, m, n, k, dtype, "default", trans, out_dtype=out_dtype, with_peer=False)
    schedules = ("data_parallel", "stream_k") if k > 0 else ("data_parallel",)
    try:
        candidates = [(tile, schedule) for tile in _TILES if _fits(case, tile) for schedule in schedules]
        launches = [case.ours(schedule, tile) for tile, schedule in candidates]
        times = _median_ms_alternating(torch, launches, reps)
        rows = [{"tile_n": tile[0], "cluster_m": tile[1], "schedule": schedule, "tflops": round(case.tflops(ms), 2),
                 "variant": case.variant(schedule, tile)}
                for (tile, schedule), ms in zip(candidates, times)]
    finally:
        case.close()
    winner = max(rows, key=lambda row: row["tflops"])
    path = None
    if store:
        fields = _pipeline_fields(m, n, k, dtype=_TORCH_DTYPES[dtype], out_dtype=_TORCH_DTYPES[out_dtype],
                                  trans_a=trans[0] == "T", trans_b=trans[1] == "T")
        path = gemm_tuning.store_record(context.name, fields, winner["tile_n"], winner["cluster_m"], winner["schedule"],
                                        winner["tflops"])
    return rows, winner, path


def _fits(case, tile):
    """Whether the library takes this tile for the case's problem: narrow widths need the kernel to read B
    K-major, which the library decides (the problem may run as C^T) and refuses otherwise."""
    if tile[0] not in gemm_tuning.NARROW_WIDTHS:
        return True
    try:
        case.variant("data_parallel", tile)
    except MFAError as error:
        if error.status != lib.MFA_STATUS_INVALID_ARGUMENT:
            raise
        return False
    return True


def ratio_summary(rows):
    """{"<dtype> <trans>": {"geomean_ratio", "min_ratio", "min_case"}} over the rows of each series."""
    series = {}
    for row in rows:
        series.setdefault(f"{row['params']['dtype']} {row['params']['trans']}", []).append(row)
    summary = {}
    for name, own in series.items():
        worst = min(own, key=lambda row: row["ratio"])
        summary[name] = {"geomean_ratio": round(math.exp(statistics.fmean(math.log(r["ratio"]) for r in own)), 3),
                         "min_ratio": worst["ratio"], "min_case": worst["case"]}
    return summary


def draw_chart(document, path):
    """TFLOPS against size for every (dtype, trans) series of a square-size document, ours and cuBLAS."""
    import matplotlib.pyplot as plt

    rows = document["rows"]
    figure, axes = plt.subplots(figsize=(10, 5))
    for series in dict.fromkeys((row["params"]["dtype"], row["params"]["trans"]) for row in rows):
        own = [row for row in rows if (row["params"]["dtype"], row["params"]["trans"]) == series]
        sizes = [row["params"]["m"] for row in own]
        label = " ".join(series)
        marker = "o" if len(own) <= 16 else None
        line = axes.plot(sizes, [row["ours"] for row in own], marker=marker, label=f"MFA {label}")[0]
        axes.plot(sizes, [row["peer_value"] for row in own], linestyle=":", color=line.get_color(),
                  label=f"{own[0]['peer']} {label}")
    axes.axhline(document["peak"]["value"], color="gray", linestyle="--", label="peak")
    axes.set_xlabel("M = N = K")
    axes.set_ylabel(document["unit"])
    axes.set_title(f"GEMM, square sizes, on {document['device']}")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------
# Rows


def _run_cases(torch, cases, label, row_of):
    progress = ProgressBar(len(cases))
    rows = []
    try:
        for done, case in enumerate(cases):
            progress.update(done, label(*case))
            rows.append(row_of(*case))
            torch.cuda.empty_cache()
        progress.update(len(cases), "done")
    finally:
        progress.close()
    return rows


def _document(op, context, torch, command, peak, rows):
    return result_document(op, context, torch, command, "TFLOPS", peak, rows=rows)


def _capped_reps(reps, flops_per_launch, copies):
    """Fewer timed runs where one launch is long (large sizes), so the sweep keeps to its time budget;
    a launch is estimated at 500 TFLOPS."""
    launch_seconds = flops_per_launch * copies / 500e12
    return max(_MIN_REPS, min(reps, int(_SWEEP_SECONDS_PER_SIDE / max(launch_seconds, 1e-9))))


def _params(dtype, m, n, k, trans, schedule, activation="none", precision="default"):
    params = {"dtype": dtype, "m": m, "n": n, "k": k, "batch": 1, "trans": trans, "activation": activation,
              "schedule": schedule}
    if dtype == "fp32":
        params["precision"] = "ieee" if precision == "ieee" else "accurate"
    return params


def _row(case_name, params, ours, peer_name, peer, variant, error, **extra):
    return {"case": case_name, "params": params, "ours": round(ours, 2), "peer": peer_name,
            "peer_value": round(peer, 2), "ratio": round(ours / peer, 3), "variant": variant,
            "error": float(f"{error:.3g}"), **extra}


def _square_row(torch, context, size, dtype, precision, trans, reps):
    case = _GemmCase(torch, context, size, size, size, dtype, precision, trans)
    try:
        reps = _capped_reps(reps, case.flops, len(case.inputs))
        ours, peer = map(case.tflops, _median_ms_alternating(torch, (case.ours(), case.launch_peer), reps))
        error = case.relative_error()
        info = case.info()
    finally:
        case.close()
    return _row(f"{dtype} {trans} {size}x{size}x{size}", _params(dtype, size, size, size, trans, info["schedule"],
                                                                   precision=precision),
                ours, PEER, peer, f"{info['variant']} {info['schedule']}", error)


def _stream_k_row(torch, context, m, n, k, dtype, reps):
    case = _GemmCase(torch, context, m, n, k, dtype, "default", "NN")
    try:
        ours, data_parallel, peer = map(case.tflops, _median_ms_alternating(
            torch, (case.ours(), case.ours(schedule="data_parallel"), case.launch_peer), reps))
        error = case.relative_error()
        info = case.info()
    finally:
        case.close()
    return _row(f"{dtype} NN {m}x{n}x{k}", _params(dtype, m, n, k, "NN", info["schedule"]), ours, PEER,
                peer, f"{info['variant']} {info['schedule']}", error,
                ours_data_parallel=round(data_parallel, 2), ratio_vs_data_parallel=round(ours / data_parallel, 3))


def _gelu_row(torch, context, m, n, k, dtype, reps):
    case = _GemmCase(torch, context, m, n, k, dtype, "default", "NN", activation="gelu")
    try:
        ours_ms, peer_ms = _median_ms_alternating(torch, (case.ours(), case.launch_peer), reps)
        ours, peer, copies = case.tflops(ours_ms), case.tflops(peer_ms), len(case.inputs)
        error = case.relative_error()
        info = case.info()
    finally:
        case.close()
    return _row(f"{dtype} NN {m}x{n}x{k} + gelu", _params(dtype, m, n, k, "NN", info["schedule"], "gelu_erf"),
                ours, PEER_GELU, peer, f"{info['variant']} {info['schedule']}", error,
                microseconds=round(ours_ms * 1e3 / copies, 2), peer_microseconds=round(peer_ms * 1e3 / copies, 2))


class _GemmCase:
    """Inputs (copies enough to leave L2 cold), our command lists (one per schedule/tile asked for) and,
    with_peer, the peer's CUDA graph over them: cuBLAS, then torch's GELU when activation is "gelu"."""

    def __init__(self, torch, context, m, n, k, dtype, precision, trans, out_dtype=None, activation=None,
                 with_peer=True):
        self.torch, self.context, self.trans, self.activation = torch, context, trans, activation
        self.precision = precision
        self.flops = 2 * m * n * k
        self.torch_dtype = getattr(torch, _TORCH_DTYPES[dtype])
        self.out_dtype = getattr(torch, _TORCH_DTYPES[out_dtype or dtype])
        self.shape = (m, n, k)
        a_shape = (k, m) if trans[0] == "T" else (m, k)
        b_shape = (n, k) if trans[1] == "T" else (k, n)
        set_bytes = (m * k + k * n + m * n) * torch.finfo(self.torch_dtype).bits // 8
        copies = min(_MAX_COPIES, max(1, math.ceil(_COLD_L2_FACTOR * context.l2_cache_bytes / set_bytes)))
        self.inputs = [(torch.randn(a_shape, dtype=self.torch_dtype, device="cuda"),
                        torch.randn(b_shape, dtype=self.torch_dtype, device="cuda"),
                        torch.empty((m, n), dtype=self.out_dtype, device="cuda")) for _ in range(copies)]
        self._pipelines, self._lists = {}, []
        self.peer = self._capture_peer() if with_peer else None

    def tflops(self, milliseconds):
        return self.flops * len(self.inputs) / (milliseconds * 1e-3) / 1e12

    def _pipeline(self, schedule="auto", tile=(None, None)):
        """The pipeline of a schedule and a Hopper tile (tile_n, cluster_m); None leaves it to the library."""
        key = (schedule, tile)
        if key not in self._pipelines:
            m, n, k = self.shape
            self._pipelines[key] = mfa_c.GemmPipeline(
                m, n, k, dtype=self.torch_dtype, out_dtype=self.out_dtype, trans_a=self.trans[0] == "T",
                trans_b=self.trans[1] == "T", precision=self.precision, activation=self.activation,
                schedule=schedule, tile_n=tile[0], cluster_m=tile[1], context=self.context)
        return self._pipelines[key]

    def info(self, schedule="auto", tile=(None, None)):
        return self._pipeline(schedule, tile).info

    def variant(self, schedule="auto", tile=(None, None)):
        return self.info(schedule, tile)["variant"]

    def ours(self, schedule="auto", tile=(None, None)):
        """A launch function replaying one GEMM per input copy with that pipeline."""
        pipeline = self._pipeline(schedule, tile)
        commands = mfa_c.CommandList(self.context)
        with commands.record() as stream:
            for a, b, c in self.inputs:
                pipeline.encode(a, b, c, stream=stream)
        self._lists.append(commands)
        return lambda: commands.launch(self.torch.cuda.current_stream())

    def _op(self, a, b):
        return (a.T if self.trans[0] == "T" else a), (b.T if self.trans[1] == "T" else b)

    def _peer_once(self, a, b, c):
        self.torch.matmul(*self._op(a, b), out=c)
        if self.activation == "gelu":
            c.copy_(self.torch.nn.functional.gelu(c))

    def _capture_peer(self):
        torch = self.torch
        for a, b, c in self.inputs:  # cuBLAS picks its kernels and workspace before the capture
            self._peer_once(a, b, c)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for a, b, c in self.inputs:
                self._peer_once(a, b, c)
        return graph

    def launch_peer(self):
        self.peer.replay()

    def close(self):
        for commands in self._lists:
            commands.close()
        for pipeline in self._pipelines.values():
            pipeline.close()
        if self.peer is not None:
            self.peer.reset()
        self.inputs.clear()

    def relative_error(self):
        """Ours (the library's own choice) against float64 on the GPU, on the first inputs; on a sample of
        rows for large M."""
        torch = self.torch
        a, b, c = self.inputs[0]
        c.fill_(math.nan)
        self._pipeline().encode(a, b, c, stream=torch.cuda.current_stream())
        op_a, op_b = self._op(a, b)
        rows = torch.arange(op_a.shape[0], device="cuda")
        if op_a.shape[0] > _EXACT_ERROR_LIMIT:
            rows = torch.randperm(op_a.shape[0], device="cuda")[:_ERROR_SAMPLE_ROWS]
        reference = op_a[rows].double() @ op_b.double()
        if self.activation == "gelu":
            reference = torch.nn.functional.gelu(reference)
        return (torch.linalg.norm(c[rows].double() - reference) / torch.linalg.norm(reference)).item()
