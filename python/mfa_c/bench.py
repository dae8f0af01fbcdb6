"""What every benchmark shares (bench_gemm.py, bench_group_norm.py, bench_attention.py): timing, where the
results go, progress. Each side is a CUDA graph, the graphs launch in turns, timed with CUDA events; a row
reports the median. Results are written as BENCH_RESULTS.md describes.
"""

import datetime
import json
import re
import statistics
import sys
from pathlib import Path

import mfa_c

_TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_COLD_L2_FACTOR = 4  # the rotated copies span this many times L2


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


def write_results(document, out_dir, draw_chart=None):
    """Writes <out_dir>/<op>-<device slug>.json and, given draw_chart(document, path) and matplotlib, the
    .png chart; returns the paths written and a note where the chart was skipped."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{document['op']}-{device_slug(document['device'])}"
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    try:
        import matplotlib
    except ImportError:
        return [json_path], "matplotlib is not installed: no chart"
    if draw_chart is None:
        return [json_path], f"no chart for {document['op']}"
    matplotlib.use("Agg")
    draw_chart(document, stem.with_suffix(".png"))
    return [json_path, stem.with_suffix(".png")], None


def _require_torch_cuda():
    try:
        import torch
    except ImportError as error:
        raise BenchUnavailable(f"benchmarks need PyTorch with CUDA ({error})") from error
    if not torch.cuda.is_available():
        raise BenchUnavailable(f"benchmarks need PyTorch with CUDA (torch {torch.__version__} sees no GPU)")
    return torch


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


def copy_bandwidth(torch, nbytes=256 << 20, reps=20):
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


def result_document(op, context, torch, command, unit, peak, **fields):
    """A results file's document: what ran where and when (BENCH_RESULTS.md), then `fields` in order."""
    return {
        "op": op, "device": context.name,
        "versions": {"mfa": mfa_c.__version__, "driver": _driver_release(context),
                     "nvrtc": cuda_version_text(mfa_c.nvrtc_version()), "torch": torch.__version__},
        "command": command, "date": datetime.date.today().isoformat(), "unit": unit, "peak": peak, **fields,
    }


def _driver_release(context):
    """The NVIDIA driver's release ("580.95.05"), else the CUDA version the driver supports."""
    try:
        version_file = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        version_file = ""
    release = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", version_file)
    return release.group(1) if release else f"CUDA {cuda_version_text(context.driver_version)}"
