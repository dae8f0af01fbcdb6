"""The fp32-accurate Hopper GEMM's NN variant, which runs as C^T = B^T A^T so that both operands arrive
K-major (cpp/gemm.cpp GemmVariant::swapped_tf32; the epilogue writes C transposed, bias by row).

CPU: the NN variants compile as the swapped kernel (4 stages of 48 KB, no spills), the other transposes
as before. GPU: the swapped kernel against float64 at odd shapes, with every epilogue term (alpha, beta
reading C, bias of either dtype, activations), padded outputs (ldc > n), batches with either operand
broadcast, and every output dtype; and it stays as accurate as cuBLAS's fp32 at 2048^3.
"""

import math

import pytest

import mfa_c
from conftest import rel_error, tolerance
from test_gemm import (ACTIVATIONS, OUTPUTS, Inputs, check_reports, fp32_matmul_without_tf32, poisoned_output,
                       run_and_check, skip_unless_hopper_applies, torch_reference)

SWAPPED_SMEM = 197728  # gemm.cuh: mfa_sm90_tf32_smem_bytes(1), 4 stages; NN unswapped had 3 of 64 KB


@pytest.mark.parametrize("trans", ["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("out_dtype", OUTPUTS)
def test_only_nn_compiles_as_the_swapped_kernel(out_dtype, trans):
    reports = mfa_c.compile_report(arch="sm_90a", dtype="float32", out_dtype=out_dtype, trans_a=trans[0] == "T",
                                   trans_b=trans[1] == "T", path="hopper")
    check_reports(reports, "sm_90a")
    (hopper,) = [r for r in reports if r["kernel"] == "mfa_gemm_sm90_tf32"]
    assert hopper["variant"].endswith(".swap-ab") == (trans == "NN"), hopper["variant"]
    if trans in ("NN", "NT", "TT"):  # B arrives K-major: 48 KB stages
        assert hopper["dynamic_shared_bytes"] == SWAPPED_SMEM


CASES = [
    # m, n, k, batch, broadcast, out_dtype, beta, layout
    (127, 255, 1000, 1, None, "float32", 0.5, "padded"),
    (1000, 333, 517, 1, None, "float16", 0.0, "compact"),
    (64, 4096, 1030, 1, None, "bfloat16", 0.25, "compact"),
    (333, 64, 96, 1, None, "float32", 0.0, "padded"),
    (1, 65, 33, 1, None, "float32", 0.5, "compact"),
    (257, 129, 64, 3, None, "float32", 0.5, "compact"),
    (200, 300, 700, 3, "a", "float16", 0.0, "compact"),
    (200, 300, 700, 3, "b", "float32", -1.0, "compact"),
]


@pytest.mark.parametrize("m, n, k, batch, broadcast, out_dtype, beta, layout", CASES)
def test_swapped_nn_matches_float64(ctx, torch_cuda, rng, m, n, k, batch, broadcast, out_dtype, beta, layout):
    skip_unless_hopper_applies(ctx, "hopper")
    torch = torch_cuda
    inputs = Inputs(torch, rng)
    a, b = inputs.operands(m, n, k, "float32", "NN", layout if batch == 1 else "compact",
                           batch=(batch,) if batch > 1 else ())
    a = a[0] if broadcast == "a" else a
    b = b[0] if broadcast == "b" else b
    shape = (batch, m, n) if batch > 1 else (m, n)
    c0 = inputs.randn(shape, out_dtype) if beta else None
    bias = inputs.randn((1, n), str(rng.choice([out_dtype, "float32"])))[0]
    activation = str(rng.choice(ACTIVATIONS))
    with mfa_c.GemmPipeline(m, n, k, batch=batch, dtype="float32", out_dtype=out_dtype, path="hopper",
                            context=ctx) as pipeline:
        assert pipeline.info["variant"].endswith(".swap-ab"), pipeline.info
    run_and_check(torch, a, b, dtype="float32", precision="accurate", out_dtype=out_dtype, trans="NN",
                  alpha=1 / math.sqrt(k), beta=beta, c0=c0, bias=bias, activation=activation, path="hopper",
                  layout=layout, context_note=f"(activation {activation}, beta {beta}, {bias.dtype} bias)")


def test_swapped_nn_is_as_accurate_as_cublas_fp32(ctx, torch_cuda, rng):
    skip_unless_hopper_applies(ctx, "hopper")
    torch = torch_cuda
    size = 2048
    a, b = Inputs(torch, rng).operands(size, size, size, "float32", "NN")
    reference = torch_reference(torch, a, b)
    c, _ = poisoned_output(torch, (size, size), "float32")
    ours = rel_error(mfa_c.gemm(a, b, c=c, precision="accurate", path="hopper"), reference)
    with fp32_matmul_without_tf32(torch):
        theirs = rel_error(torch.matmul(a, b), reference)
    print(f"{size}^3 fp32 NN: mfa accurate {ours:.3g}, torch.matmul (no TF32) {theirs:.3g}")
    assert ours <= tolerance("float32", "accurate", "float32") and ours <= 1.05 * theirs
