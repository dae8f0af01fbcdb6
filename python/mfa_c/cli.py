"""python -m mfa_c {info, check, bench gemm|group_norm|attention, tune gemm}."""

import argparse
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import mfa_c

from . import bench, bench_attention, bench_gemm, bench_group_norm
from ._ffi import LIBRARY_PATH, MFAError
from .gemm import TOLERANCES, _float64, gemm_reference, reference_activation, relative_error

# Sizes (m, n, k) for the numeric check: odd ones that cut through every tile, one aligned to 16 bytes.
_CHECK_SIZES = ((1, 1, 1), (127, 129, 67), (200, 136, 72), (257, 384, 520))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    try:
        return args.run(args, argv)
    except MFAError as error:
        print(f"mfa_c: {error}", file=sys.stderr)
        return 1
    except bench.BenchUnavailable as error:
        print(f"mfa_c: {error}", file=sys.stderr)
        return 2


def _parser():
    parser = argparse.ArgumentParser(prog="python -m mfa_c", description="MFA: GPU kernels of modern AI.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions, kernel cache, device")
    info.set_defaults(run=_info)

    check = commands.add_parser("check", help="compile every GEMM, attention and group-norm variant; run the GEMM ones against float64 on a GPU")
    check.add_argument("--arch", default="sm_90a", help="NVRTC target of the compile check (default sm_90a)")
    check.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="variants compiled at once")
    check.set_defaults(run=_check)

    bench_parser = commands.add_parser("bench", help="benchmarks against the vendor library")
    ops = bench_parser.add_subparsers(required=True, metavar="OP")
    gemm = ops.add_parser("gemm", help="square GEMMs against cuBLAS (needs PyTorch with CUDA)")
    gemm.add_argument("--dtype", type=_choice_list("fp16", "bf16", "fp32"), default=["fp16"],
                      help="comma-separated: fp16, bf16 (one file) or fp32 (a file of its own)")
    gemm.add_argument("--precision", choices=("default", "ieee", "accurate"), default="default",
                      help="fp32 only: ieee (FFMA) or accurate (3xTF32, the default)")
    gemm.add_argument("--sizes", type=bench.parse_sizes, default=None,
                      help="256,512,... or start:stop:step (stop included); default: the suite's")
    gemm.add_argument("--suite", choices=("square", "sweep", "stream_k", "gelu"), default="square",
                      help="square: --sizes (default a list of 10); sweep: 128..8192 step 128 with the chart; "
                           "stream_k: Stream-K and LLM shapes, auto vs data-parallel vs cuBLAS; gelu: GEMM + GELU "
                           "fused vs torch.matmul + gelu (stream_k and gelu use the first --dtype)")
    gemm.add_argument("--trans", type=_choice_list("NN", "NT", "TN", "TT"), default=["NN"], help="comma-separated: NN, NT, TN, TT")
    gemm.add_argument("--reps", type=int, default=30, help="timed runs per side and size (median)")
    gemm.add_argument("--out", default="bench/results", help="directory of the JSON and PNG results")
    gemm.set_defaults(run=_bench_gemm)
    tune = commands.add_parser("tune", help="measure kernel variants on this GPU; store the winner in the disk cache")
    tune_ops = tune.add_subparsers(required=True, metavar="OP")
    tune_gemm = tune_ops.add_parser("gemm", help="every Hopper tile x schedule on one GEMM (needs PyTorch with CUDA)")
    for size in ("m", "n", "k"):
        tune_gemm.add_argument(size, type=int)
    tune_gemm.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    tune_gemm.add_argument("--out-dtype", choices=("fp16", "bf16", "fp32"), default=None, help="default: --dtype")
    tune_gemm.add_argument("--trans", choices=("NN", "NT", "TN", "TT"), default="NN")
    tune_gemm.add_argument("--reps", type=int, default=20, help="timed runs per candidate (median)")
    tune_gemm.add_argument("--dry-run", action="store_true", help="measure and print, store nothing")
    tune_gemm.set_defaults(run=_tune_gemm)
    group_norm = ops.add_parser("group_norm", help="group norm (SD UNet + 64 MB shapes) against torch (needs PyTorch with CUDA)")
    group_norm.add_argument("--dtype", type=_choice_list("fp16", "bf16", "fp32"), default=["fp16"], help="comma-separated")
    group_norm.add_argument("--layout", type=_choice_list("nchw", "nhwc"), default=["nchw", "nhwc"], help="comma-separated")
    group_norm.add_argument("--activation", type=_choice_list("none", "silu"), default=["none", "silu"], help="comma-separated")
    group_norm.add_argument("--pass", dest="passes", type=_choice_list("forward", "backward"),
                            default=["forward", "backward"], help="comma-separated")
    group_norm.add_argument("--groups", type=int, default=32)
    group_norm.add_argument("--reps", type=int, default=30, help="timed runs per side and case (median)")
    group_norm.add_argument("--out", default="bench/results", help="directory of the JSON results")
    group_norm.set_defaults(run=_bench_group_norm)
    attention = ops.add_parser("attention", help="attention forward (FlashAttention-3 setup + decode) against torch "
                               "SDPA's cuDNN and flash backends (needs PyTorch with CUDA)")
    attention.add_argument("--dtype", type=_choice_list("bf16", "fp16"), default=["bf16", "fp16"], help="comma-separated")
    attention.add_argument("--head-dims", type=bench.parse_sizes, default=[64, 128, 256], help="comma-separated")
    attention.add_argument("--seqs", type=bench.parse_sizes, default=list(bench_attention.PREFILL_SEQS),
                           help="comma-separated sequence lengths (16k tokens in all)")
    attention.add_argument("--no-decode", action="store_true", help="skip the decode (split-KV) table")
    attention.add_argument("--reps", type=int, default=20, help="timed runs per side and case (median)")
    attention.add_argument("--out", default="bench/results", help="directory of the JSON and PNG results")
    attention.set_defaults(run=_bench_attention)
    return parser


def _info(args, argv):
    print(f"mfa_c {mfa_c.__version__} (library {LIBRARY_PATH}, ABI {mfa_c.version()})")
    try:
        print(f"nvrtc: {bench.cuda_version_text(mfa_c.nvrtc_version())}")
    except MFAError as error:
        print(f"nvrtc: not found: {error}")
    print(f"kernel cache: {mfa_c.cache_directory() or 'disabled'}")
    try:
        context = mfa_c.default_context()
    except MFAError as error:
        print(f"no GPU: {error}")
        return 0
    print(f"device {context.device}: {context.name}, {context.arch}, {context.sm_count} SMs, "
          f"{context.total_memory / 2**30:.1f} GiB, L2 {context.l2_cache_bytes / 2**20:.0f} MiB, "
          f"driver CUDA {bench.cuda_version_text(context.driver_version)}")
    return 0


def _check(args, argv):
    variants = mfa_c.gemm_variants()
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        compiled = list(pool.map(lambda variant: _compile(variant, args.arch), variants))
    compile_failures = _print_compile_table(variants, compiled)
    compile_failures += _check_family_compiles(args, "attention", mfa_c.attention_variants(),
                                               mfa_c.attention_compile_report)
    compile_failures += _check_family_compiles(args, "group_norm", mfa_c.group_norm_variants(),
                                               mfa_c.group_norm_compile_report)
    run_failures = 0
    if mfa_c.gpu_available():
        run_failures = _print_numeric_check(variants)
    else:
        print("\nno GPU: numeric check skipped")
    failures = compile_failures + run_failures
    print(f"\n{len(variants)} GEMM variants and every other family's: "
          f"{'all pass' if not failures else f'{failures} failure(s)'}")
    return 1 if failures else 0


def _check_family_compiles(args, family, variants, compile_report):
    """Compiles every variant of a family (attention, group_norm) for --arch; prints one row per kernel;
    returns the failures (a variant that does not compile, a kernel that spills)."""

    def compile_one(variant):
        try:
            return compile_report(args.arch, **variant)
        except MFAError as error:
            return error

    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        compiled = list(pool.map(compile_one, variants))
    rows, failures = [], 0
    for variant, reports in zip(variants, compiled):
        if isinstance(reports, MFAError):
            rows.append((f"{family} {variant}", "-", "-", "-", "-", "-", f"FAIL {reports}"))
            failures += 1
            continue
        kernel_rows, spilling = _kernel_rows(reports)
        rows += kernel_rows
        failures += spilling
    print()
    _print_table(_COMPILE_HEADERS, rows)
    print(f"{len(variants)} {family} variants: {'all compile' if not failures else f'{failures} failure(s)'}")
    return failures


_COMPILE_HEADERS = ("variant", "kernel", "registers", "smem", "spills", "ms", "cache")


def _kernel_rows(reports):
    """One _COMPILE_HEADERS row per kernel report, and how many of the kernels spill."""
    rows, spilling = [], 0
    for report in reports:
        spills = report["spill_store_bytes"] + report["spill_load_bytes"]
        spilling += spills > 0
        rows.append((report["variant"], report["kernel"], report["registers"],
                     report["static_shared_bytes"] + report["dynamic_shared_bytes"],
                     f"{spills}" + (" FAIL" if spills else ""), f"{report['compile_ms']:.0f}", report["cache"]))
    return rows, spilling


def _compile(variant, arch):
    """compile_report's dicts, or the MFAError."""
    try:
        return mfa_c.compile_report(arch=arch, **variant)
    except MFAError as error:
        return error


def _print_compile_table(variants, compiled):
    """Prints one row per kernel, then the compile errors in full; returns the number of failures
    (variants that failed to compile, kernels that spill)."""
    rows, errors, failures = [], [], 0
    for variant, reports in zip(variants, compiled):
        if isinstance(reports, MFAError):
            rows.append((_variant_label(variant), "-", "-", "-", "-", "-", f"FAIL {reports.status_name}"))
            errors.append(f"{_variant_label(variant)}: {reports}")
            failures += 1
            continue
        kernel_rows, spilling = _kernel_rows(reports)
        rows += kernel_rows
        failures += spilling
    _print_table(_COMPILE_HEADERS, rows)
    for error in errors:
        print(f"\n{error}")
    return failures


def _print_numeric_check(variants):
    """Runs every variant at _CHECK_SIZES against gemm_reference; returns the number of failures."""
    print()
    rows, failures = [], 0
    for variant in variants:
        for m, n, k in _CHECK_SIZES:
            verdict, error = _numeric_verdict(variant, m, n, k)
            failures += verdict == "FAIL"
            rows.append((_variant_label(variant), f"{m}x{n}x{k}", error, verdict))
    headers = ("variant", "m x n x k", "relative error", "result")
    _print_table(headers, rows)
    if failures:  # again at the end, where a long table's reader (or a log's tail) sees them
        print("\nfailed:")
        _print_table(headers, [row for row in rows if row[-1] == "FAIL"])
    return failures


def _numeric_verdict(variant, m, n, k):
    """("PASS" | "FAIL" | "SKIP", the error or the reason)."""
    try:
        relative, rounding, conditioning = _variant_error(variant, m, n, k)
    except MFAError as error:
        if error.status == mfa_c.lib.MFA_STATUS_UNSUPPORTED:
            return "SKIP", error.message
        return "FAIL", str(error)
    except ImportError as error:
        return "SKIP", f"bfloat16 needs PyTorch ({error})"
    # The dtype's tolerance holds for results as large as their terms; where the terms cancel, or the
    # activation flattens them, it grows by the conditioning (_conditioning). The output type's own
    # rounding of the reference is allowed on top (a result near zero may round to a subnormal of few
    # bits). `not <=`: a NaN error fails.
    tolerance = TOLERANCES[variant["out_dtype"]] * conditioning + 2 * rounding
    return ("FAIL" if not relative <= tolerance else "PASS"), f"{relative:.2e} (tolerance {tolerance:.0e})"


def _variant_error(variant, m, n, k):
    """(relative error, relative error of the reference rounded to the output type, the result's
    conditioning) of one variant's GEMM on fresh random inputs against gemm_reference, with every epilogue
    term in play (alpha, beta * C, bias, the variant's activation)."""
    rng = np.random.default_rng()
    shapes = {"a": (k, m) if variant["trans_a"] else (m, k), "b": (n, k) if variant["trans_b"] else (k, n),
              "c": (m, n), "bias": (n,)}
    dtypes = {"a": variant["dtype"], "b": variant["dtype"], "c": variant["out_dtype"], "bias": variant["out_dtype"]}
    to_operand = _torch_operand if "bfloat16" in dtypes.values() else _numpy_operand
    operands = {name: to_operand(rng.standard_normal(shape), dtypes[name]) for name, shape in shapes.items()}
    keywords = {"trans_a": variant["trans_a"], "trans_b": variant["trans_b"], "alpha": 1.25, "beta": 0.5,
                "activation": variant["activation"]}
    pre_activation = gemm_reference(**operands, **{**keywords, "activation": None})  # before gemm: c is written
    reference = reference_activation(keywords["activation"])(pre_activation)
    conditioning = _conditioning(operands, keywords, pre_activation, reference)
    result = mfa_c.gemm(**operands, **keywords, precision=variant["precision"], out_dtype=variant["out_dtype"],
                        path=variant["path"], schedule=variant["schedule"])
    return (relative_error(result, reference), relative_error(to_operand(reference, variant["out_dtype"]), reference),
            conditioning)


def _conditioning(operands, keywords, pre, reference):
    """How much larger than its terms' rounding the result's relative error may be, at least 1:
    ||act'(x) * s|| / ||act(x)||, where x is `pre`, the pre-activation, and s the root-sum-square of the terms
    that sum to it (alpha a_il b_lj, beta c_ij, bias_j). It is about 1 for random inputs of many elements;
    a 1 x 1 result whose terms cancel (x near 0), or that lies in an activation's flat tail, is smaller
    than the error its terms carry (measured: 4 of 3000 fp32-accurate 1 x 1 x 1 GEMMs with GELU missed
    1e-5, each with x within 0.01 of 0)."""
    a, b, c, bias = (_float64(operands[name]) for name in ("a", "b", "c", "bias"))
    op_a = a.T if keywords["trans_a"] else a
    op_b = b.T if keywords["trans_b"] else b
    terms = np.sqrt(keywords["alpha"] ** 2 * ((op_a ** 2) @ (op_b ** 2)) + (keywords["beta"] * c) ** 2 + bias ** 2)
    size = np.linalg.norm(reference)
    slope = _activation_slope(keywords["activation"], pre)
    return max(1.0, float(np.linalg.norm(slope * terms) / size)) if size else 1.0


def _activation_slope(activation, x):
    """|act'(x)| of the float64 reference activation, by a central difference."""
    step = 1e-6 * np.maximum(1.0, np.abs(x))
    act = reference_activation(activation)
    return np.abs(act(x + step) - act(x - step)) / (2 * step)


def _numpy_operand(values, dtype):
    return values.astype(dtype)


def _torch_operand(values, dtype):
    import torch
    return torch.from_numpy(values).to("cuda", getattr(torch, dtype))


def _variant_label(variant):
    label = (f"{variant['dtype']}->{variant['out_dtype']} "
             f"{'T' if variant['trans_a'] else 'N'}{'T' if variant['trans_b'] else 'N'} "
             f"{variant['path']} {variant['precision']}")
    if variant["activation"] != "none":
        label += f" {variant['activation']}"
    if variant["bias_dtype"]:
        label += f" bias {variant['bias_dtype']}"
    return label


def _bench_gemm(args, argv):
    command = "python -m mfa_c " + shlex.join(argv)
    if args.suite == "stream_k":
        document = bench_gemm.bench_stream_k(dtype=args.dtype[0], reps=args.reps, command=command)
    elif args.suite == "gelu":
        document = bench_gemm.bench_gelu(dtype=args.dtype[0], reps=args.reps, command=command)
    else:
        sizes = args.sizes or list(bench_gemm.SWEEP_SIZES if args.suite == "sweep" else bench_gemm.DEFAULT_GEMM_SIZES)
        document = bench_gemm.bench_gemm(dtypes=args.dtype, precision=args.precision, sizes=sizes,
                                         transposes=args.trans, reps=args.reps, command=command)
    peak = document["peak"]["value"]
    extra = "ours_data_parallel" in document["rows"][0] if document["rows"] else False
    _print_table(("case", "ours", "% peak", *(("ours DP", "vs DP") if extra else ()), document["rows"][0]["peer"]
                  if document["rows"] else "peer", "ratio", "error", "variant (schedule)"), [
        (row["case"], row["ours"], f"{100 * row['ours'] / peak:.0f}%",
         *((row["ours_data_parallel"], row["ratio_vs_data_parallel"]) if extra else ()),
         row["peer_value"], row["ratio"], f"{row['error']:.1e}", row["variant"]) for row in document["rows"]])
    for series, summary in document.get("summary", {}).items():
        print(f"{series}: geomean ratio {summary['geomean_ratio']}, min {summary['min_ratio']} ({summary['min_case']})")
    square = args.suite in ("square", "sweep")
    return _write_results(document, args.out, bench_gemm.draw_chart if square else None)


def _tune_gemm(args, argv):
    rows, winner, path = bench_gemm.tune_gemm(args.m, args.n, args.k, dtype=args.dtype, trans=args.trans,
                                              out_dtype=args.out_dtype, reps=args.reps, store=not args.dry_run)
    def tile(row):
        return f"128x{row['tile_n']}" + (f" cluster {row['cluster_m']}" if row["cluster_m"] > 1 else "")

    _print_table(("tile", "schedule", "TFLOPS", "variant"),
                 [(tile(row), row["schedule"], row["tflops"], row["variant"]) for row in rows])
    print(f"winner: {tile(winner)} {winner['schedule']} at {winner['tflops']} TFLOPS"
          + (f"; stored in {path}" if path else " (not stored: --dry-run)"))
    return 0


def _bench_group_norm(args, argv):
    command = "python -m mfa_c " + shlex.join(argv)
    document = bench_group_norm.bench_group_norm(dtypes=args.dtype, layouts=args.layout, passes=args.passes, groups=args.groups,
                                      activations=[None if a == "none" else a for a in args.activation],
                                      reps=args.reps, command=command)
    copy = document["copy_bandwidth"]
    print(f"device-to-device copy: {copy} GB/s")
    _print_table(("case", "ours GB/s", "% copy", "torch GB/s", "ratio", "us", "torch us", "error", "plan"), [
        (row["case"], row["ours"], f"{row['percent_of_copy']:.0f}%", row["peer_value"], row["ratio"],
         row["microseconds"], row["peer_microseconds"], f"{row['error']:.1e}" if "error" in row else "-",
         row["plan"]) for row in document["rows"]])
    for key, targets in document["summary"].items():
        print(f"{key}: {targets}")
    return _write_results(document, args.out)


def _bench_attention(args, argv):
    command = "python -m mfa_c " + shlex.join(argv)
    document = bench_attention.bench_attention(dtypes=args.dtype, head_dims=args.head_dims, seqs=args.seqs,
                                               reps=args.reps, decode=not args.no_decode, command=command)
    print(f"device-to-device copy: {document['copy_bandwidth']} GB/s")
    _print_table(("case", "ours TFLOPS", "cuDNN", "ratio", "flash", "ratio", "us", "error", "variant"), [
        (row["case"], row["ours"], row["peer_value"], row["ratio"], row["peer_flash_value"], row["ratio_flash"],
         row["microseconds"], f"{row['error']:.1e}", row["variant"]) for row in document["rows"]])
    if document["decode_rows"]:
        print()
        _print_table(("case", "us", "floor us", "time / floor", "GB/s", "error", "variant"), [
            (row["case"], row["microseconds"], row["floor_microseconds"], row["time_over_floor"], row["gbs"],
             f"{row['error']:.1e}", row["variant"]) for row in document["decode_rows"]])
    for key, targets in document["summary"].items():
        print(f"{key}: {targets}")
    return _write_results(document, args.out, bench_attention.draw_chart)


def _write_results(document, out_dir, draw_chart=None):
    paths, note = bench.write_results(document, out_dir, draw_chart)
    for path in paths:
        print(f"wrote {path}")
    if note:
        print(note)
    return 0


def _choice_list(*choices):
    """An argparse type: a comma-separated list of some of `choices`."""
    def parse(text):
        values = text.split(",")
        unknown = [value for value in values if value not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}: choose from {', '.join(choices)}")
        return values
    return parse


def _print_table(headers, rows):
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
