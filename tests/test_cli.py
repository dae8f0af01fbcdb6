"""`python -m mfa_c ...`: info and check run anywhere (check compiles every variant, so it shares this
session's disk cache and is quick once test_gemm or an earlier run compiled them); bench needs torch on
a GPU."""

import importlib.util
import json
import math
import os
import re

import pytest

import mfa_c
from conftest import tolerance

JOBS = str(min(8, os.cpu_count() or 1))


def test_info_runs_without_a_gpu(shared_cache):
    result = shared_cache.run("-m", "mfa_c", "info", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert mfa_c.__version__ in result.stdout


def test_check_compiles_every_variant_for_sm90a(shared_cache):
    result = shared_cache.run("-m", "mfa_c", "check", "--arch", "sm_90a", "--jobs", JOBS)
    print(result.stdout[-4000:], result.stderr[-4000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-8000:]
    # The table names every variant it compiled (their names as compile_report gives them; from the disk
    # cache `check` just filled, so this is quick).
    families = ((mfa_c.gemm_variants, mfa_c.compile_report), (mfa_c.attention_variants, mfa_c.attention_compile_report),
                (mfa_c.group_norm_variants, mfa_c.group_norm_compile_report))
    names = {report["variant"] for variants, compile_report in families for variant in variants()
             for report in compile_report(arch="sm_90a", **variant)}
    missing = sorted(name for name in names if name not in result.stdout)
    assert missing == [], f"check did not report {missing}"


def test_checks_tolerance_grows_only_where_the_result_is_ill_conditioned():
    """check's GEMM tolerance scales by the result's conditioning: about 1 for random inputs of many
    elements, large for a 1 x 1 result whose terms cancel or that sits in GELU's flat tail."""
    import numpy as np
    from mfa_c import cli

    def conditioning(a, b, c, bias, activation="gelu_tanh"):
        operands = {name: np.asarray(value, dtype=np.float32) for name, value in
                    {"a": a, "b": b, "c": c, "bias": bias}.items()}
        keywords = {"trans_a": False, "trans_b": False, "alpha": 1.25, "beta": 0.5, "activation": activation}
        pre = cli.gemm_reference(**operands, **{**keywords, "activation": None})
        return cli._conditioning(operands, keywords, pre, cli.gemm_reference(**operands, **keywords))

    rng = np.random.default_rng(7)
    for activation in (None, "relu", "gelu_tanh", "silu"):
        random = conditioning(rng.standard_normal((64, 48)), rng.standard_normal((48, 40)),
                              rng.standard_normal((64, 40)), rng.standard_normal(40), activation)
        assert 1.0 <= random < 1.2, (activation, random)
    assert conditioning([[1.0]], [[0.8]], [[-2.0]], [1e-4]) > 1e3        # 1.0 - 1.0 + 1e-4
    assert conditioning([[2.0]], [[-2.0]], [[0.0]], [0.0]) > 10          # gelu(-5): its flat tail
    assert conditioning([[1.0]], [[0.8]], [[2.0]], [0.5], None) == 1.0    # nothing cancels


def test_check_fails_on_an_invalid_arch(shared_cache):
    result = shared_cache.run("-m", "mfa_c", "check", "--arch", "compute_90", "--jobs", JOBS, timeout=600)
    assert result.returncode != 0
    assert "arch" in result.stdout + result.stderr


def test_bench_without_torch_on_a_gpu_fails_clearly(shared_cache, tmp_path):
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("torch with CUDA is available: bench runs here (see the GPU test)")
    result = shared_cache.run("-m", "mfa_c", "bench", "gemm", "--sizes", "256", "--out", str(tmp_path), timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "torch" in output or "CUDA" in output or "GPU" in output, output
    assert "Traceback" not in output, "a clear error, not a traceback"
    assert list(tmp_path.glob("*.json")) == []


def test_bench_gemm_writes_the_results_file(shared_cache, torch_cuda, tmp_path):
    torch = torch_cuda
    result = shared_cache.run("-m", "mfa_c", "bench", "gemm", "--sizes", "256,512", "--out", str(tmp_path),
                              timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    files = list(tmp_path.glob("gemm-*.json"))
    assert len(files) == 1, sorted(path.name for path in tmp_path.iterdir())
    data = json.loads(files[0].read_text())
    print(json.dumps(data, indent=1))

    assert data["op"] == "gemm"
    assert isinstance(data["device"], str) and data["device"]
    assert set(data["versions"]) >= {"mfa", "driver", "nvrtc", "torch"}
    assert data["versions"]["mfa"] == mfa_c.__version__
    assert data["versions"]["torch"] == torch.__version__
    assert "bench gemm" in data["command"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["date"])
    assert data["unit"] == "TFLOPS"
    assert data["peak"]["value"] > 0 and data["peak"]["what"]

    rows = data["rows"]
    assert sorted(row["params"]["m"] for row in rows) == [256, 512]
    for row in rows:
        params = row["params"]
        assert params["m"] == params["n"] == params["k"]
        assert params["dtype"] == "fp16" and params["trans"] == "NN"
        assert row["case"] and row["variant"]
        assert "cuBLAS" in row["peer"]
        assert row["ours"] > 0 and row["peer_value"] > 0
        assert math.isclose(row["ratio"], row["ours"] / row["peer_value"], rel_tol=0.01)
        assert row["ours"] <= data["peak"]["value"], "faster than the datasheet peak: the timing is wrong"
        assert math.isfinite(row["error"]) and row["error"] <= tolerance("float16", "default", "float16")

    if importlib.util.find_spec("matplotlib") is not None:
        assert list(tmp_path.glob("*.png")), "matplotlib is installed but no chart was written"
