"""The GEMM benchmarks (python/mfa_c/bench_gemm.py) and `python -m mfa_c tune gemm`.

CPU: the ratio summary, the chart, and the tune command's clear failure without torch on a GPU. GPU: each
benchmark suite on a few small shapes writes well-formed rows (ours, peer, ratio, the variant and schedule
that ran, a small error), and a tuning run stores a winner that the next pipeline of that problem uses.
"""

import importlib.util
import math

import pytest

import mfa_c
from mfa_c import bench_gemm, gemm_tuning
from conftest import tolerance


def _row(dtype, trans, size, ratio):
    return {"case": f"{dtype} {trans} {size}", "params": {"dtype": dtype, "trans": trans, "m": size},
            "ours": 100 * ratio, "peer_value": 100.0, "peer": bench_gemm.PEER, "ratio": ratio}


def test_the_summary_is_a_geometric_mean_and_a_minimum_per_series():
    rows = [_row("fp16", "NN", 128, 0.5), _row("fp16", "NN", 256, 2.0), _row("fp16", "NN", 384, 1.0),
            _row("bf16", "NT", 128, 0.9)]
    summary = bench_gemm.ratio_summary(rows)
    assert summary["fp16 NN"] == {"geomean_ratio": 1.0, "min_ratio": 0.5, "min_case": "fp16 NN 128"}
    assert summary["bf16 NT"]["geomean_ratio"] == 0.9


def test_the_sweep_covers_128_to_8192_and_the_stream_k_shapes_the_issue_names():
    assert bench_gemm.SWEEP_SIZES[0] == 128 and bench_gemm.SWEEP_SIZES[-1] == 8192 and len(bench_gemm.SWEEP_SIZES) == 64
    assert {(m, k) for m, n, k in bench_gemm.STREAM_K_SHAPES if m == n} == \
        {(mn, k) for mn in (3072, 5120) for k in (4096, 8192, 16384)}
    assert {m for m, _, _ in bench_gemm.LLM_SHAPES} == {16, 32, 64, 128, 256, 512}
    assert {n for _, n, _ in bench_gemm.LLM_SHAPES} | {k for _, _, k in bench_gemm.LLM_SHAPES} == {4096, 11008, 14336}


def test_fewer_timed_runs_for_long_launches():
    assert bench_gemm._capped_reps(30, 2 * 256 ** 3, 256) == 30
    assert bench_gemm._capped_reps(30, 2 * 8192 ** 3, 1) == 22
    assert bench_gemm._capped_reps(30, 2 * 32768 ** 3, 1) == bench_gemm._MIN_REPS


def test_the_chart_draws_every_series(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row(dtype, trans, size, 1.0) for dtype in ("fp16", "bf16") for trans in ("NN", "NT")
            for size in (128, 256)]
    document = {"op": "gemm", "device": "test", "unit": "TFLOPS", "peak": {"value": 989.0}, "rows": rows}
    path = tmp_path / "chart.png"
    import matplotlib

    matplotlib.use("Agg")
    bench_gemm.draw_chart(document, path)
    assert path.stat().st_size > 1000


def test_tune_without_torch_on_a_gpu_fails_clearly(shared_cache):
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("torch with CUDA is available: tune runs here (see the GPU test)")
    result = shared_cache.run("-m", "mfa_c", "tune", "gemm", "256", "256", "256", timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    assert "torch" in output or "CUDA" in output or "GPU" in output, output


# ================================================================================================
# GPU


def _check_rows(document, peer):
    assert document["unit"] == "TFLOPS" and document["rows"]
    for row in document["rows"]:
        print(row)
        assert row["peer"] == peer
        assert row["ours"] > 0 and row["peer_value"] > 0
        assert math.isclose(row["ratio"], row["ours"] / row["peer_value"], rel_tol=0.01)
        assert row["params"]["schedule"] in ("data_parallel", "stream_k")
        assert row["params"]["schedule"] in row["variant"] and row["variant"].startswith("gemm.")
        assert row["error"] <= tolerance("float16", "default", "float16"), row


def test_bench_stream_k_rows(ctx, torch_cuda):
    document = bench_gemm.bench_stream_k(shapes=((3072, 3072, 4096), (64, 4096, 4096)), reps=3)
    _check_rows(document, bench_gemm.PEER)
    assert document["op"] == "gemm_stream_k"
    for row in document["rows"]:
        assert row["ours_data_parallel"] > 0
        assert math.isclose(row["ratio_vs_data_parallel"], row["ours"] / row["ours_data_parallel"], rel_tol=0.01)


def test_bench_gelu_rows(ctx, torch_cuda):
    document = bench_gemm.bench_gelu(shapes=((512, 768, 256), (1000, 1000, 1000)), reps=3)
    _check_rows(document, bench_gemm.PEER_GELU)
    assert all(row["params"]["activation"] == "gelu_erf" for row in document["rows"])


def test_bench_square_rows_and_summary(ctx, torch_cuda):
    document = bench_gemm.bench_gemm(dtypes=("fp16",), sizes=(128, 384), transposes=("NN", "NT"), reps=3)
    _check_rows(document, bench_gemm.PEER)
    assert set(document["summary"]) == {"fp16 NN", "fp16 NT"}


def test_tune_stores_a_winner_that_the_next_pipeline_uses(ctx, torch_cuda, tmp_path, monkeypatch):
    if ctx.arch != "sm_90a":
        pytest.skip(f"tuning measures the Hopper tiles; this GPU compiles for {ctx.arch}")
    monkeypatch.delenv("MFA_SM90_TILE_N", raising=False)
    monkeypatch.delenv("MFA_SM90_CLUSTER_M", raising=False)
    monkeypatch.setattr(gemm_tuning, "records_path", lambda directory=None: tmp_path / gemm_tuning.FILE_NAME)
    rows, winner, path = bench_gemm.tune_gemm(768, 640, 512, dtype="bf16", trans="NT", reps=3)
    assert path == tmp_path / gemm_tuning.FILE_NAME and path.exists()
    assert {(row["tile_n"], row["cluster_m"], row["schedule"]) for row in rows} == \
        {(tile_n, cluster_m, schedule) for tile_n, cluster_m in gemm_tuning.TILES
         for schedule in ("data_parallel", "stream_k")}
    assert len(gemm_tuning.TILES) == 16 + 2  # every width (NT: the narrow ones too), the 128 and 256 wide pairs
    assert winner == max(rows, key=lambda row: row["tflops"])

    def suffix(row):
        return f".128x{row['tile_n']}" + (".cluster2" if row["cluster_m"] == 2 else "")

    for row in rows:
        assert row["variant"].endswith(suffix(row)) and row["tflops"] > 0
    with mfa_c.GemmPipeline(768, 640, 512, dtype="bfloat16", trans_b=True, context=ctx) as pipeline:
        assert pipeline.info["variant"].endswith(suffix(winner))
        assert pipeline.info["schedule"] == winner["schedule"]
