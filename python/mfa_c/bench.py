"""Benchmarks against the vendor library (cuBLAS through torch.matmul), in one process, timed alike.

Each side is a CUDA graph: ours an mfa_c.CommandList, cuBLAS a torch.cuda.CUDAGraph, each holding one
GEMM per copy of the inputs. Where one set of inputs fits in L2, the copies rotate through more than L2
holds, so no GEMM starts with its operands cached. The graphs launch in turns, timed with CUDA events;
a row reports the median. Results are written as BENCH_RESULTS.md describes.
"""

import datetime
import json
import math
import re
import statistics
import sys
from pathlib import Path

import numpy as np

import mfa_c

DEFAULT_GEMM_SIZES = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
PEER = "cuBLAS (torch.matmul)"

# TFLOPS, dense, H100 SXM datasheet (H200 has the same compute); fp32 is keyed by precision.
_GEMM_PEAKS = {
    "fp16": (989.0, "dense fp16 tensor-core peak, H100 SXM datasheet"),
    "bf16": (989.0, "dense bf16 tensor-core peak, H100 SXM datasheet"),
    "ieee": (67.0, "fp32 FFMA (CUDA-core) peak, H100 SXM datasheet"),
    "accurate": (165.0, "dense tf32 tensor-core peak (495) / 3 for 3xTF32, H100 SXM datasheet"),
}
_TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_COLD_L2_FACTOR = 4  # the rotated copies span this many times L2
_MAX_COPIES = 256
_EXACT_ERROR_LIMIT = 4096  # beyond, the error is measured on a sample of rows
_ERROR_SAMPLE_ROWS = 256


class BenchUnavailable(RuntimeError):
    """A benchmark cannot run here (no PyTorch with CUDA)."""


def parse_sizes(text):
    """"256,512" or "start:stop:step" (stop included) -> list of ints."""
    if ":" in text:
        start, stop, step = (int(part) for part in text.split(":"))
        return list(range(start, stop + 1, step))
    return [int(part) for part in text.split(",") if part]


def device_slug(name):
    """"NVIDIA H100 80GB HBM3" -> "h100": the first letters-and-digits model token of a device name."""
    model = re.search(r"\b[a-z]+\d+[a-z]*\b", name.lower().replace("nvidia", ""))
    return model.group() if model else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cuda_version_text(number):
    """13000 -> "13.0" (CUDA's version encoding, 1000 * major + 10 * minor)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def gemm_peak(dtype, precision):
    """{"value", "what"} for the unit TFLOPS."""
    key = dtype if dtype != "fp32" else ("ieee" if precision == "ieee" else "accurate")
    value, what = _GEMM_PEAKS[key]
    return {"value": value, "what": what}


class ProgressBar:
    """A progress line on stderr; one line per step where stderr is not a terminal (CI logs)."""

    def __init__(self, total, width=30):
        self.total, self.width = total, width
        self.interactive = sys.stderr.isatty()

    def update(self, done, label):
        if not self.interactive:
            print(f"[{done}/{self.total}] {label}", file=sys.stderr, flush=True)
            return
        filled = self.width * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        print(f"\r[{bar}] {done}/{self.total} {label}\033[K", end="", file=sys.stderr, flush=True)

    def close(self):
        if self.interactive:
            print(file=sys.stderr, flush=True)


def bench_gemm(dtypes=("fp16",), precision="default", sizes=DEFAULT_GEMM_SIZES, transposes=("NN",), reps=30,
               command=""):
    """Square GEMMs, ours against cuBLAS, for each dtype; returns the results document of BENCH_RESULTS.md.
    16-bit dtypes share one file ("gemm", one peak); fp32 has its own ("gemm_fp32")."""
    if len({dtype == "fp32" for dtype in dtypes}) > 1:
        raise ValueError("fp32 has another peak than fp16/bf16: benchmark it in a run of its own")
    torch = _require_torch_cuda()
    torch.set_float32_matmul_precision("highest")  # cuBLAS fp32 without TF32, as accurate as ours
    context = mfa_c.default_context(torch.cuda.current_device())
    cases = [(dtype, trans, size) for dtype in dtypes for trans in transposes for size in sizes]
    progress = ProgressBar(len(cases))
    rows = []
    try:
        for done, (dtype, trans, size) in enumerate(cases):
            progress.update(done, f"gemm {dtype} {trans} {size}")
            rows.append(_gemm_row(torch, context, size, dtype, precision, trans, reps))
            torch.cuda.empty_cache()
        progress.update(len(cases), "done")
    finally:
        progress.close()
    return {
        "op": "gemm_fp32" if dtypes[0] == "fp32" else "gemm", "device": context.name,
        "versions": {"mfa": mfa_c.__version__, "driver": _driver_release(context),
                     "nvrtc": cuda_version_text(mfa_c.nvrtc_version()), "torch": torch.__version__},
        "command": command, "date": datetime.date.today().isoformat(), "unit": "TFLOPS",
        "peak": gemm_peak(dtypes[0], precision), "rows": rows,
    }


def write_results(document, out_dir):
    """Writes <out_dir>/<op>-<device slug>.json and, with matplotlib, the .png chart; returns the paths
    written and a note where the chart was skipped."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{document['op']}-{device_slug(document['device'])}"
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    try:
        import matplotlib
    except ImportError:
        return [json_path], "matplotlib is not installed: no chart"
    if document["op"] == "group_norm":
        return [json_path], "no chart for group_norm"
    matplotlib.use("Agg")
    _draw_chart(document, stem.with_suffix(".png"))
    return [json_path, stem.with_suffix(".png")], None


def _require_torch_cuda():
    try:
        import torch
    except ImportError as error:
        raise BenchUnavailable(f"benchmarks need PyTorch with CUDA ({error})") from error
    if not torch.cuda.is_available():
        raise BenchUnavailable(f"benchmarks need PyTorch with CUDA (torch {torch.__version__} sees no GPU)")
    return torch


def _gemm_row(torch, context, size, dtype, precision, trans, reps):
    m = n = k = size
    case = _GemmCase(torch, context, m, n, k, dtype, precision, trans)
    try:
        graph_ms = _median_ms_alternating(torch, (case.launch_ours, case.launch_peer), reps)
        ours, peer = (2 * m * n * k * len(case.inputs) / (ms * 1e-3) / 1e12 for ms in graph_ms)
        error = case.relative_error()
    finally:
        case.close()
    params = {"dtype": dtype, "m": m, "n": n, "k": k, "batch": 1, "trans": trans, "activation": "none",
              "schedule": case.pipeline.info["schedule"]}
    if dtype == "fp32":
        params["precision"] = "ieee" if precision == "ieee" else "accurate"
    return {"case": f"{dtype} {trans} {m}x{n}x{k}", "params": params, "ours": round(ours, 2), "peer": PEER,
            "peer_value": round(peer, 2), "ratio": round(ours / peer, 3), "variant": case.pipeline.info["variant"],
            "error": float(f"{error:.3g}")}


class _GemmCase:
    """Inputs (copies enough to leave L2 cold), our command list and cuBLAS's CUDA graph over them."""

    def __init__(self, torch, context, m, n, k, dtype, precision, trans):
        self.torch, self.trans = torch, trans
        torch_dtype = getattr(torch, _TORCH_DTYPES[dtype])
        a_shape = (k, m) if trans[0] == "T" else (m, k)
        b_shape = (n, k) if trans[1] == "T" else (k, n)
        set_bytes = (m * k + k * n + m * n) * torch.finfo(torch_dtype).bits // 8
        copies = min(_MAX_COPIES, max(1, math.ceil(_COLD_L2_FACTOR * context.l2_cache_bytes / set_bytes)))
        self.inputs = [(torch.randn(a_shape, dtype=torch_dtype, device="cuda"),
                        torch.randn(b_shape, dtype=torch_dtype, device="cuda"),
                        torch.empty((m, n), dtype=torch_dtype, device="cuda")) for _ in range(copies)]
        self.pipeline = mfa_c.GemmPipeline(m, n, k, dtype=torch_dtype, trans_a=trans[0] == "T",
                                           trans_b=trans[1] == "T", precision=precision, context=context)
        self.ours = mfa_c.CommandList(context)
        with self.ours.record() as stream:
            for a, b, c in self.inputs:
                self.pipeline.encode(a, b, c, stream=stream)
        self.peer = self._capture_peer()

    def _op(self, a, b):
        return (a.T if self.trans[0] == "T" else a), (b.T if self.trans[1] == "T" else b)

    def _capture_peer(self):
        torch = self.torch
        for a, b, c in self.inputs:  # cuBLAS picks its kernels and workspace before the capture
            torch.matmul(*self._op(a, b), out=c)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for a, b, c in self.inputs:
                torch.matmul(*self._op(a, b), out=c)
        return graph

    def launch_ours(self):
        self.ours.launch(self.torch.cuda.current_stream())

    def launch_peer(self):
        self.peer.replay()

    def close(self):
        self.ours.close()
        self.pipeline.close()
        self.peer.reset()
        self.inputs.clear()

    def relative_error(self):
        """Ours against float64 on the GPU, on the first inputs; on a sample of rows for large M."""
        torch = self.torch
        self.launch_ours()  # the outputs hold cuBLAS's results after the timing
        a, b, c = self.inputs[0]
        op_a, op_b = self._op(a, b)
        rows = torch.arange(op_a.shape[0], device="cuda")
        if op_a.shape[0] > _EXACT_ERROR_LIMIT:
            rows = torch.randperm(op_a.shape[0], device="cuda")[:_ERROR_SAMPLE_ROWS]
        reference = op_a[rows].double() @ op_b.double()
        return (torch.linalg.norm(c[rows].double() - reference) / torch.linalg.norm(reference)).item()


def _median_ms_alternating(torch, launches, reps, warmup=3):
    """Median CUDA-event milliseconds of each launch function, the functions taking turns."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(warmup):
        for launch in launches:
            launch()
    samples = [[] for _ in launches]
    for _ in range(reps):
        for launch, times in zip(launches, samples):
            start.record()
            launch()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return [statistics.median(times) for times in samples]


def _driver_release(context):
    """The NVIDIA driver's release ("580.95.05"), else the CUDA version the driver supports."""
    try:
        version_file = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        version_file = ""
    release = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", version_file)
    return release.group(1) if release else f"CUDA {cuda_version_text(context.driver_version)}"


def _draw_chart(document, path):
    import matplotlib.pyplot as plt

    rows = document["rows"]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for series in dict.fromkeys((row["params"]["dtype"], row["params"]["trans"]) for row in rows):
        own = [row for row in rows if (row["params"]["dtype"], row["params"]["trans"]) == series]
        sizes = [row["params"]["m"] for row in own]
        label = " ".join(series)
        axes.plot(sizes, [row["ours"] for row in own], marker="o", label=f"MFA {label}")
        axes.plot(sizes, [row["peer_value"] for row in own], marker="s", linestyle=":", label=f"{own[0]['peer']} {label}")
    axes.axhline(document["peak"]["value"], color="gray", linestyle="--", label="peak")
    axes.set_xlabel("M = N = K")
    axes.set_ylabel(document["unit"])
    axes.set_title(f"GEMM, square sizes, on {document['device']}")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------
# Group normalization: GB/s (bytes = read x (+ residual) + write y; backward: read dy, x + write dx)
# against torch.nn.functional.group_norm, with the device-to-device copy bandwidth measured alike.

# Stable Diffusion UNet shapes: N = 2, 32 groups.
DEFAULT_GROUP_NORM_SHAPES = tuple((2, c, hw, hw) for c in (320, 640, 1280) for hw in (64, 32, 16)) + (
    (8, 512, 128, 128), (1, 128, 1024, 512))  # 64 MB+ tensors for the bandwidth target
PEER_GROUP_NORM = "torch.nn.functional.group_norm"


def bench_group_norm(dtypes=("fp16",), shapes=DEFAULT_GROUP_NORM_SHAPES, layouts=("nchw", "nhwc"),
                     activations=(None, "silu"), passes=("forward", "backward"), groups=32, reps=30, command=""):
    """A results document with op "group_norm": one row per (dtype, shape, layout, activation, pass), unit
    GB/s, peer torch; `copy_bandwidth` is the device-to-device copy rate (GB/s) measured in the same run."""
    torch = _require_torch_cuda()
    context = mfa_c.default_context(torch.cuda.current_device())
    cases = [(dtype, shape, layout, activation, pass_) for dtype in dtypes for shape in shapes for layout in layouts
             for activation in activations for pass_ in passes]
    progress = ProgressBar(len(cases) + 1)
    rows = []
    try:
        progress.update(0, "copy bandwidth")
        copy = _copy_bandwidth(torch)
        for done, (dtype, shape, layout, activation, pass_) in enumerate(cases, 1):
            progress.update(done, f"group_norm {dtype} {shape} {layout} {activation} {pass_}")
            rows.append(_group_norm_row(torch, shape, groups, dtype, layout, activation, pass_, reps))
            torch.cuda.empty_cache()
        progress.update(len(cases) + 1, "done")
    finally:
        progress.close()
    return {
        "op": "group_norm", "device": context.name,
        "versions": {"mfa": mfa_c.__version__, "driver": _driver_release(context),
                     "nvrtc": cuda_version_text(mfa_c.nvrtc_version()), "torch": torch.__version__},
        "command": command, "date": datetime.date.today().isoformat(), "unit": "GB/s",
        "peak": {"value": round(copy, 1), "what": "device-to-device copy of 256 MB (read + write), CUDA graph, this run"},
        "copy_bandwidth": round(copy, 1), "rows": rows,
    }


def _copy_bandwidth(torch, nbytes=256 << 20, reps=20):
    """GB/s (read + write) of a device-to-device copy of `nbytes`, timed as a CUDA graph like the rows."""
    source = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        target.copy_(source)
    (ms,) = _median_ms_alternating(torch, (graph.replay,), reps)
    graph.reset()
    return 2 * nbytes / (ms * 1e-3) / 1e9


_GROUP_NORM_MAX_COPIES = 64


class _GroupNormCase:
    """Inputs (copies enough to leave L2 cold), our command list of group-norm encodes and torch's CUDA
    graph of the same pass over them: both sides replay as one graph launch, host overhead excluded."""

    def __init__(self, torch, context, shape, groups, dtype, layout, activation, pass_):
        self.torch, self.pass_ = torch, pass_
        torch_dtype = getattr(torch, _TORCH_DTYPES[dtype])
        memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        n, c = shape[:2]
        spatial = math.prod(shape[2:])
        element_bytes = torch.finfo(torch_dtype).bits // 8
        set_bytes = (2 if pass_ == "forward" else 3) * math.prod(shape) * element_bytes
        copies = min(_GROUP_NORM_MAX_COPIES, max(1, math.ceil(_COLD_L2_FACTOR * context.l2_cache_bytes / set_bytes)))
        self.copies = copies
        self.weight = torch.randn(c, dtype=torch_dtype, device="cuda")
        self.bias = torch.randn(c, dtype=torch_dtype, device="cuda")
        act = {None: lambda t: t, "silu": torch.nn.functional.silu}[activation]
        like = lambda: torch.randn(shape, dtype=torch_dtype, device="cuda").contiguous(memory_format=memory_format)  # noqa
        self.pipeline = mfa_c.GroupNormPipeline(n, c, spatial, groups, dtype=torch_dtype, layout=layout,
                                                activation=activation, pass_=pass_, context=context)
        self.sets = []
        for _ in range(copies):
            x = like()
            item = {"x": x, "y": torch.empty_like(x)}
            if pass_ == "backward":
                item["dy"], item["dx"] = like(), torch.empty_like(x)
                item["mean"] = torch.empty((n, groups), dtype=torch.float32, device="cuda")
                item["rstd"] = torch.empty_like(item["mean"])
                _, mean, rstd = mfa_c.group_norm(x, groups, self.weight, self.bias, activation=activation,
                                                 out=item["y"], return_stats=True)
                item["mean"].copy_(mean), item["rstd"].copy_(rstd)
                item["dweight"], item["dbias"] = torch.empty_like(self.weight), torch.empty_like(self.bias)
                # torch's backward as autograd runs it (channels-last inputs included): a retained graph
                # of group_norm (+ SiLU), differentiated again at every replay
                leaves = [t.detach().requires_grad_(True) for t in (x, self.weight, self.bias)]
                item["t_leaves"] = leaves
                item["t_out"] = act(torch.nn.functional.group_norm(leaves[0], groups, leaves[1], leaves[2]))
            self.sets.append(item)
        self.ours = mfa_c.CommandList(context)
        with self.ours.record() as stream:
            for item in self.sets:
                if pass_ == "forward":
                    self.pipeline.encode(stream=stream, x=item["x"], weight=self.weight, bias=self.bias, y=item["y"])
                else:
                    self.pipeline.encode(stream=stream, dy=item["dy"], x=item["x"], weight=self.weight,
                                         bias=self.bias, mean=item["mean"], rstd=item["rstd"], dx=item["dx"],
                                         dweight=item["dweight"], dbias=item["dbias"])

        def peer_once():
            for item in self.sets:
                if pass_ == "forward":
                    item["peer_y"] = act(torch.nn.functional.group_norm(item["x"], groups, self.weight, self.bias))
                else:
                    item["peer_grads"] = torch.autograd.grad(item["t_out"], item["t_leaves"], item["dy"],
                                                             retain_graph=True)

        peer_once()  # torch picks its kernels before the capture
        torch.cuda.synchronize()
        # autograd replays its backward on the streams of the forward, which a capture on another stream
        # cannot take in: torch's backward runs eagerly (its launch overhead counted; rows say so)
        self.peer = None if pass_ == "backward" else torch.cuda.CUDAGraph()
        self.peer_once = peer_once
        if self.peer is not None:
            with torch.cuda.graph(self.peer):
                peer_once()
        self.nbytes = set_bytes  # per copy: x and y forward; dy, x and dx backward (the least traffic)

    def launch_ours(self):
        self.ours.launch(self.torch.cuda.current_stream())

    def launch_peer(self):
        if self.peer is None:
            self.peer_once()
        else:
            self.peer.replay()

    def close(self):
        self.ours.close()
        self.pipeline.close()
        if self.peer is not None:
            self.peer.reset()
        self.sets.clear()


def _group_norm_row(torch, shape, groups, dtype, layout, activation, pass_, reps):
    context = mfa_c.default_context(torch.cuda.current_device())
    case = _GroupNormCase(torch, context, shape, groups, dtype, layout, activation, pass_)
    try:
        ours_ms, peer_ms = _median_ms_alternating(torch, (case.launch_ours, case.launch_peer), reps)
        ours_ms, peer_ms = ours_ms / case.copies, peer_ms / case.copies
        error = float("nan")
        if pass_ == "forward":
            case.launch_ours()
            torch.cuda.synchronize()
            item = case.sets[0]
            reference = mfa_c.group_norm_reference(item["x"], groups, case.weight, case.bias, activation=activation)[0]
            error = float(np.linalg.norm(_to_numpy(item["y"]) - reference) / np.linalg.norm(reference))
        variant = case.pipeline.info["variant"]
        nbytes = case.nbytes
    finally:
        case.close()
    ours_gbs, peer_gbs = nbytes / (ours_ms * 1e-3) / 1e9, nbytes / (peer_ms * 1e-3) / 1e9
    n, c, h, w = shape
    params = {"dtype": dtype, "n": n, "c": c, "h": h, "w": w, "groups": groups, "layout": layout,
              "activation": activation or "none", "pass": pass_}
    return {"case": f"{dtype} {n}x{c}x{h}x{w} g{groups} {layout} {activation or 'none'} {pass_}", "params": params,
            "ours": round(ours_gbs, 1), "peer": PEER_GROUP_NORM + (" (autograd, eager)" if pass_ == "backward" else ""),
            "peer_value": round(peer_gbs, 1),
            "ratio": round(ours_gbs / peer_gbs, 3), "variant": variant,
            "microseconds": round(ours_ms * 1e3, 2), "peer_microseconds": round(peer_ms * 1e3, 2),
            **({"error": float(f"{error:.3g}")} if error == error else {})}


def _to_numpy(tensor):
    return tensor.detach().to("cpu", dtype=__import__("torch").float64).numpy()
