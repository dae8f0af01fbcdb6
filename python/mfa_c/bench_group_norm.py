"""Group-normalization benchmark against torch.nn.functional.group_norm, in one process, timed alike.

Rows: GB/s with bytes = read x + write y (forward) or read dy, x + write dx (backward), for the Stable
Diffusion UNet shapes (N = 2, C in {320, 640, 1280}, 64^2 / 32^2 / 16^2, 32 groups) and two 128 MB fp16
tensors (the >= 64 MB bandwidth target), both layouts, with and without SiLU, forward and backward. Each
row also gives the percentage of the device-to-device copy bandwidth measured in the same run, the ratio
to torch, both times in microseconds, and our launch plan. Each side is one graph launch over copies of
the inputs that leave L2 cold (bench.py's shared helpers). torch's backward is autograd captured too: its
forward graph is built on the capture stream, where autograd replays the backward (eager timing swung
2x from run to run with the host's launch overhead).
"""

import math
import os

import numpy as np

import mfa_c

from .bench import (_COLD_L2_FACTOR, copy_bandwidth, _median_ms_alternating, ProgressBar, _require_torch_cuda,
                    result_document, _TORCH_DTYPES)
from .group_norm import group_norm_plan

SD_SHAPES = tuple((2, c, hw, hw) for c in (320, 640, 1280) for hw in (64, 32, 16))
LARGE_SHAPES = ((16, 256, 128, 128), (8, 512, 128, 128))  # 128 MB of fp16 each
DEFAULT_GROUP_NORM_SHAPES = SD_SHAPES + LARGE_SHAPES
PEER_GROUP_NORM = "torch.nn.functional.group_norm"
_GROUP_NORM_MAX_COPIES = 64


def bench_group_norm(dtypes=("fp16",), shapes=DEFAULT_GROUP_NORM_SHAPES, layouts=("nchw", "nhwc"),
                     activations=(None, "silu"), passes=("forward", "backward"), groups=32, reps=30, command=""):
    """A results document with op "group_norm": one row per (dtype, shape, layout, activation, pass), unit
    GB/s, peer torch; `copy_bandwidth` is the device-to-device copy rate (GB/s) measured in the same run;
    `summary` checks the issue's targets."""
    torch = _require_torch_cuda()
    context = mfa_c.default_context(torch.cuda.current_device())
    cases = [(dtype, shape, layout, activation, pass_) for dtype in dtypes for shape in shapes for layout in layouts
             for activation in activations for pass_ in passes]
    progress = ProgressBar(len(cases) + 1)
    rows = []
    try:
        progress.update(0, "copy bandwidth")
        copy = copy_bandwidth(torch)
        for done, (dtype, shape, layout, activation, pass_) in enumerate(cases, 1):
            progress.update(done, f"group_norm {dtype} {shape} {layout} {activation} {pass_}")
            row = _group_norm_row(torch, context, shape, groups, dtype, layout, activation, pass_, reps)
            row["percent_of_copy"] = round(100 * row["ours"] / copy, 1)
            rows.append(row)
            torch.cuda.empty_cache()
        progress.update(len(cases) + 1, "done")
    finally:
        progress.close()
    peak = {"value": round(copy, 1), "what": "device-to-device copy of 256 MB (read + write), CUDA graph, this run"}
    return result_document("group_norm", context, torch, command, "GB/s", peak, copy_bandwidth=round(copy, 1),
                           rows=rows, summary=summarize(rows))


def summarize(rows):
    """The issue's targets, per (dtype, layout, pass): the smallest ratio to torch on the diffusion shapes,
    the smallest % of copy bandwidth on the large shapes, and the largest time SiLU adds (ratio of times)."""
    summary = {}
    for row in rows:
        p = row["params"]
        shape = (p["n"], p["c"], p["h"], p["w"])
        entry = summary.setdefault(f"{p['dtype']} {p['layout']} {p['pass']}", {})
        if shape in SD_SHAPES:
            entry["min_ratio_sd"] = min(entry.get("min_ratio_sd", math.inf), row["ratio"])
        if shape in LARGE_SHAPES:
            entry["min_percent_of_copy_large"] = min(entry.get("min_percent_of_copy_large", math.inf),
                                                     row["percent_of_copy"])
    by_case = {row["case"]: row for row in rows}
    for row in rows:
        p = row["params"]
        if p["activation"] != "silu":
            continue
        plain = by_case.get(row["case"].replace(" silu ", " none "))
        if plain:
            entry = summary[f"{p['dtype']} {p['layout']} {p['pass']}"]
            entry["max_silu_time_ratio"] = round(max(entry.get("max_silu_time_ratio", 0.0),
                                                     row["microseconds"] / plain["microseconds"]), 3)
    return summary


class _GroupNormCase:
    """Inputs (copies enough to leave L2 cold), our command list of group-norm encodes and torch's CUDA
    graph of the same pass over them: both sides replay as one graph launch, host overhead excluded."""

    def __init__(self, torch, context, shape, groups, dtype, layout, activation, pass_):
        self.torch, self.pass_ = torch, pass_
        self.side = torch.cuda.Stream()  # torch's capture stream
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
                with torch.cuda.stream(self.side):  # autograd replays a node's backward on its forward's stream
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

        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            peer_once()  # torch picks its kernels before the capture
        torch.cuda.synchronize()
        self.peer = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.peer, stream=self.side):
            peer_once()
        self.nbytes = set_bytes  # per copy: x and y forward; dy, x and dx backward (the least traffic)

    def launch_ours(self):
        self.ours.launch(self.torch.cuda.current_stream())

    def launch_peer(self):
        self.peer.replay()

    def close(self):
        self.ours.close()
        self.pipeline.close()
        self.peer.reset()
        self.sets.clear()


def _plan_text(context, shape, groups, dtype, layout, pass_):
    """The row's plan as the pipelines take it: MFA_GN_CLUSTER forces the cluster for both (MFA_GN_BAND's
    bands are not shown)."""
    n, c = shape[:2]
    plan = group_norm_plan(n, c, math.prod(shape[2:]), groups, sm_count=context.sm_count, dtype=_TORCH_DTYPES[dtype],
                           layout=layout, pass_=pass_, cluster=os.environ.get("MFA_GN_CLUSTER") or None)
    if context.compute_capability < (9, 0) or plan["cluster"] == 0:
        return "3 launches"
    band = f", bands of {plan['band']} groups" if plan["band"] > 1 else ""
    copies = f"{plan['vector_elements']}-element copies"
    return f"one pass: cluster {plan['cluster']} x {plan['threads']} threads, {copies}{band}"


def _group_norm_row(torch, context, shape, groups, dtype, layout, activation, pass_, reps):
    case = _GroupNormCase(torch, context, shape, groups, dtype, layout, activation, pass_)
    try:
        ours_ms, peer_ms = _median_ms_alternating(torch, (case.launch_ours, case.launch_peer), reps)
        ours_ms, peer_ms = ours_ms / case.copies, peer_ms / case.copies
        error = float("nan")
        if pass_ == "forward":
            case.launch_ours()
            torch.cuda.synchronize()
            item = case.sets[0]
            # the first sample only (groups never span samples): float64 of a 128 MB tensor takes seconds
            reference = mfa_c.group_norm_reference(item["x"][:1], groups, case.weight, case.bias,
                                                   activation=activation)[0]
            error = float(np.linalg.norm(_to_numpy(item["y"][:1]) - reference) / np.linalg.norm(reference))
        variant = case.pipeline.info["variant"]
        nbytes = case.nbytes
    finally:
        case.close()
    ours_gbs, peer_gbs = nbytes / (ours_ms * 1e-3) / 1e9, nbytes / (peer_ms * 1e-3) / 1e9
    n, c, h, w = shape
    params = {"dtype": dtype, "n": n, "c": c, "h": h, "w": w, "groups": groups, "layout": layout,
              "activation": activation or "none", "pass": pass_}
    return {"case": f"{dtype} {n}x{c}x{h}x{w} g{groups} {layout} {activation or 'none'} {pass_}", "params": params,
            "ours": round(ours_gbs, 1), "peer": PEER_GROUP_NORM + (" (autograd)" if pass_ == "backward" else ""),
            "peer_value": round(peer_gbs, 1),
            "ratio": round(ours_gbs / peer_gbs, 3), "variant": variant,
            "plan": _plan_text(context, shape, groups, dtype, layout, pass_),
            "microseconds": round(ours_ms * 1e3, 2), "peer_microseconds": round(peer_ms * 1e3, 2),
            **({"error": float(f"{error:.3g}")} if error == error else {})}


def _to_numpy(tensor):
    return tensor.detach().to("cpu", dtype=__import__("torch").float64).numpy()
