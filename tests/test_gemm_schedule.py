"""The Hopper GEMM's persistent schedule: data-parallel or Stream-K (cuda/gemm.cuh, cpp/gemm_schedule.cpp).

CPU tests read every block's work items through mfa_gemm_schedule_describe, which runs the very functions
the kernel runs, and check what the kernel relies on: every k step of every tile is computed exactly once,
each tile has one finisher (the item holding its last k step) that adds exactly the partial sums of the
other blocks on that tile, no block waits before publishing its own partial (no deadlock), the workspace
holds every partial slot, and the planner picks data-parallel or Stream-K as the rules say. GPU tests
force Stream-K and compare with float64 references, and two runs must agree bit for bit.
"""

import math

import numpy as np
import pytest

import mfa_c
from mfa_c._context import stream_handle
from mfa_c._ffi import new_struct
from mfa_c._tensors import device_view
from conftest import assert_status, ffi, lib, rel_error, tolerance
from test_gemm import Inputs, poisoned_output, skip_unless_hopper_applies, torch_reference

BM, BK = 128, 64  # MFA_SM90_BM, MFA_SM90_BK
AUTO, DP, SK = lib.MFA_SCHEDULE_AUTO, lib.MFA_SCHEDULE_DATA_PARALLEL, lib.MFA_SCHEDULE_STREAM_K
SM_COUNTS = (1, 2, 7, 66, 78, 114, 132)


def describe(m, n, k, *, batch=1, sm_count=132, tile_n=256, schedule=AUTO):
    """(MFA_SCHEDULE_* chosen, workspace bytes, items as a dict of int64 arrays in block-then-run order)."""
    descriptor = new_struct("mfa_gemm_descriptor", m=m, n=n, k=k, batch=batch, schedule=schedule)
    kind, workspace, count = ffi.new("int32_t *"), ffi.new("uint64_t *"), ffi.new("int64_t *")
    assert_status(lib.mfa_gemm_schedule_describe(descriptor, sm_count, tile_n, kind, workspace, ffi.NULL, 0, count),
                  "SUCCESS")
    items = ffi.new("mfa_gemm_work_item[]", max(count[0], 1))
    again = ffi.new("int64_t *")
    assert_status(lib.mfa_gemm_schedule_describe(descriptor, sm_count, tile_n, kind, workspace, items, count[0],
                                                 again), "SUCCESS")
    assert again[0] == count[0]
    raw = np.frombuffer(ffi.buffer(items, count[0] * ffi.sizeof("mfa_gemm_work_item")), dtype=np.int32)
    columns = raw.reshape(count[0], 6).astype(np.int64)
    names = ("block", "tile", "k_begin", "k_end", "partial", "first_contributor")
    return kind[0], workspace[0], {name: columns[:, i] for i, name in enumerate(names)}


def _descriptor(**fields):
    return new_struct("mfa_gemm_descriptor", **fields)


def expected_plan(m, n, tiles, k_iters, sm_count, requested, tile_n):
    """(kind, Stream-K tiles) by the rules of HOPPER_GEMM.md plus our measured rules for sub-wave and thin
    problems (cpp/gemm_schedule.cpp), written independently of the library."""
    if requested == DP or tiles == 0 or k_iters == 0:
        return DP, 0
    tail = tiles % sm_count
    sk_tiles = tiles if tiles <= 2 * sm_count else sm_count + tail
    thin = min(m, n) <= 64
    if thin or tiles < sm_count:  # thin or under a wave: from 64 (thin) or 128 k steps a tile and 8 a block
        loses = k_iters < (64 if thin else 128) or sk_tiles * k_iters < 8 * sm_count
    else:  # 24 Stream-K k steps a block
        loses = sk_tiles * k_iters < 24 * sm_count
    full_enough = 4 * tail >= 3 * sm_count if thin else 2 * tail >= sm_count  # the last wave, for DP
    if requested == AUTO and (tail == 0 or full_enough or k_iters <= 8 or loses):
        return DP, 0
    return SK, sk_tiles


def whole_tile_parts(tiles, k_iters, sm_count):
    """The most parts, at least two, that split every tile's k steps evenly with a unit each on at most
    sm_count units; 0 where there are none."""
    return next((p for p in range(sm_count // tiles, 1, -1) if k_iters % p == 0), 0)


def kernel_shape(m, n):
    """The kernel's (rows, columns): a 16-bit problem of at most 64 rows and more columns runs as C^T."""
    return (n, m) if m <= 64 < n else (m, n)


def check_schedule(m, n, k, batch, sm_count, tile_n, requested):
    kind, workspace, it = describe(m, n, k, batch=batch, sm_count=sm_count, tile_n=tile_n, schedule=requested)
    m, n = kernel_shape(m, n)
    tiles = -(-m // BM) * -(-n // tile_n) * batch
    k_iters = -(-k // BK)
    want_kind, sk_tiles = expected_plan(m, n, tiles, k_iters, sm_count, requested, tile_n)
    where = f"m={m} n={n} k={k} batch={batch} sms={sm_count} tile_n={tile_n} requested={requested}"
    assert kind == want_kind, where
    block, tile, k_begin, k_end, partial, first = (it[name] for name in
                                                   ("block", "tile", "k_begin", "k_end", "partial",
                                                    "first_contributor"))
    grid = int(block.max()) + 1 if len(block) else 0
    assert grid <= sm_count, where  # co-residency: at most one block per SM
    assert np.all(np.diff(block) >= 0), where  # listed block by block
    assert np.all((0 <= tile) & (tile < tiles)), where
    assert np.all((0 <= k_begin) & (k_begin <= k_end) & (k_end <= k_iters)), where

    # Coverage: per tile, the items' k ranges laid end to end are exactly [0, k_iters).
    order = np.lexsort((k_begin, tile))
    t, b, e = tile[order], k_begin[order], k_end[order]
    assert np.array_equal(np.unique(t), np.arange(tiles)), where
    starts = np.r_[True, t[1:] != t[:-1]]
    ends = np.r_[t[1:] != t[:-1], True]
    assert np.all(b[starts] == 0) and np.all(e[ends] == k_iters), where
    assert np.all(b[~starts] == e[np.flatnonzero(~starts) - 1]), f"gap or overlap: {where}"
    if k_iters > 0:
        assert np.all(k_end > k_begin), f"empty item: {where}"

    # One finisher per tile, the item with the last k step; every other item is partial.
    assert np.array_equal(partial == 1, k_end < k_iters), where
    finishers = tile[partial == 0]
    assert np.array_equal(np.sort(finishers), np.arange(tiles)), where

    # Each block stores at most one partial, in slot `block`, as its first item (before it could wait).
    partial_blocks = block[partial == 1]
    assert len(np.unique(partial_blocks)) == len(partial_blocks), where
    first_item = np.r_[True, block[1:] != block[:-1]]
    assert np.all(first_item[partial == 1]), f"a partial item after the block's first: {where}"

    # A finisher adds exactly the partials of its tile, from blocks [first_contributor, block), all lower
    # than itself (so every wait is on a block that publishes before it ever waits).
    partial_of = {int(tb): (int(bb), int(kb), int(ke)) for tb, bb, kb, ke in
                  zip(block[partial == 1], tile[partial == 1], k_begin[partial == 1], k_end[partial == 1])}
    for i in np.flatnonzero(partial == 0):
        if k_begin[i] == 0:
            assert first[i] == -1, where
            continue
        assert 0 <= first[i] < block[i], where
        contributors = range(int(first[i]), int(block[i]))
        assert all(partial_of[c][0] == tile[i] for c in contributors), where
        covered = sorted((partial_of[c][1], partial_of[c][2]) for c in contributors)
        assert covered[0][0] == 0 and covered[-1][1] == k_begin[i], where
    assert sum(int(b) - int(f) for f, b in zip(first[first >= 0], block[first >= 0])) == len(partial_blocks), where

    # The workspace: flags (two of 8 bytes a block, 256-byte padded), then one BM x tile_n fp32 slot a block.
    if kind == SK:
        flags = -(-grid * 16 // 256) * 256
        assert workspace >= flags + (int(partial_blocks.max()) + 1 if len(partial_blocks) else 0) * BM * tile_n * 4
        assert workspace == flags + grid * BM * tile_n * 4, where
        # The Stream-K region is tiles [0, sk_tiles), split evenly; the data-parallel rest is whole tiles
        # in equal numbers per block when it is the hybrid's full waves.
        sk_items = tile < sk_tiles
        assert np.all((k_begin[~sk_items] == 0) & (k_end[~sk_items] == k_iters)), where
        sk_work = np.bincount(block[sk_items], weights=(k_end - k_begin)[sk_items], minlength=grid)
        assert sk_work.max() - sk_work.min() <= 1, where
        parts = whole_tile_parts(tiles, k_iters, sm_count) if sk_tiles == tiles else 0
        if parts:  # a unit for each equal part of each tile: one segment a block
            assert grid == tiles * parts and np.all(np.bincount(block) == 1), where
            assert np.all(k_end - k_begin == k_iters // parts), where
        else:
            assert grid == min(sm_count, sk_tiles * k_iters), where
        if tiles > 2 * sm_count:
            assert np.all(np.bincount(block[~sk_items], minlength=grid) == (tiles - sk_tiles) // grid), where
    else:
        assert workspace == 0 and not np.any(partial), where
        assert grid == (max(1, min(tiles, sm_count)) if tiles else 0), where
        assert np.array_equal(tile, np.concatenate([np.arange(u, tiles, grid) for u in range(grid)])), where
    return kind


def shapes():
    rng = np.random.default_rng(2301_03598)
    fixed = [(3072, 3072, 3072, 1), (1536, 1536, 1536, 1), (1024, 1024, 1024, 1), (2048, 2048, 2048, 1),
             (128, 4096, 14336, 1), (512, 11008, 4096, 1), (256, 14336, 4096, 1), (1000, 1000, 5000, 3),
             (1, 1, 1, 1), (127, 255, 64, 1), (129, 257, 65, 2), (300, 700, 19200, 1), (64, 64, 0, 2)]
    drawn = [(int(rng.integers(1, 2000)), int(rng.integers(1, 3000)), int(rng.integers(1, 300 * BK)),
              int(rng.integers(1, 4))) for _ in range(12)]
    return fixed + drawn


@pytest.mark.parametrize("requested", [AUTO, SK, DP], ids=["auto", "stream_k", "data_parallel"])
@pytest.mark.parametrize("tile_n", [64, 128, 144, 192, 256])
@pytest.mark.parametrize("m, n, k, batch", shapes())
def test_every_k_step_of_every_tile_is_computed_once(m, n, k, batch, tile_n, requested):
    for sm_count in SM_COUNTS:
        check_schedule(m, n, k, batch, sm_count, tile_n, requested)


@pytest.mark.parametrize("k_iters", [1, 2, 3, 8, 9, 17, 64, 131, 133, 300])
@pytest.mark.parametrize("tiles_m", [1, 3, 17, 40])
def test_k_steps_from_1_to_300_on_odd_shapes(tiles_m, k_iters):
    for sm_count in SM_COUNTS:
        for requested in (AUTO, SK):
            check_schedule(tiles_m * BM - 5, 3 * 256 - 1, k_iters * BK - 3, 1, sm_count, 256, requested)


@pytest.mark.parametrize("m, n, k, tile_n, want", [
    (3072, 3072, 3072, 256, SK),   # 288 tiles on 132 SMs: tail 24 < 66, hybrid
    (1536, 1536, 1536, 128, SK),   # 144 tiles: tail 12, all Stream-K (<= 2 waves)
    (2048, 2048, 2048, 256, DP),   # 128 tiles: the only wave is nearly full
    (4096, 4096, 4096, 256, DP),   # 512 tiles: tail 116 >= 66
    (3072, 3072, 512, 256, DP),    # 8 k steps a tile: too few for the fix-up
    (128, 4096, 14336, 128, SK),   # under a wave: 32 tiles of 224 k steps
    (768, 768, 12288, 256, SK),    # under a wave: 18 tiles of 192 k steps, 26 a block
    (1024, 1024, 4096, 256, DP),   # under a wave, but 64 k steps a tile
    (16, 4096, 14336, 256, SK),    # thin (runs as C^T): 32 tiles of 224 k steps
    (16, 4096, 4096, 64, SK),      # thin: 32 tiles of 64 k steps
    (16, 4096, 2048, 64, DP),      # thin: 32 tiles of 32 k steps
    (64, 11008, 4096, 64, SK),     # thin: 86 tiles, the one wave under three quarters full
    (64, 14336, 4096, 64, DP),     # thin: 112 tiles, the one wave three quarters full
    (16, 1024, 11008, 64, SK),     # thin: 8 tiles of 172 k steps, 10.4 a block
    (16, 256, 11008, 64, DP),      # thin: 2 tiles of 172 k steps, under 8 a block
    (3960, 4096, 4096, 256, DP),   # 31 x 16 = 496 tiles... tail 100 >= 66
    (1024, 1024, 1024, 128, DP),   # 64 tiles of 16 k steps: 7.8 a block, too little to pay the fix-up
    (1024, 1024, 1024, 64, DP),    # 128 tiles: the only wave is nearly full
    (64, 4096, 14336, 64, SK),     # thin: 32 tiles of 224 k steps on 132 SMs
    (16, 4096, 14336, 16, SK),     # thin in narrow tiles too (an H200's memory outruns 32 SMs)
    (33, 4096, 11008, 48, SK),
])
def test_auto_follows_the_rules(m, n, k, tile_n, want):
    kind, _, _ = describe(m, n, k, sm_count=132, tile_n=tile_n)
    assert kind == want


@pytest.mark.parametrize("m, n, k, tile_n, grid", [
    (16, 4096, 14336, 64, 128),   # 32 tiles of 224 k steps: 4 parts of 56
    (64, 4096, 11008, 64, 128),   # 32 tiles of 172 k steps: 4 parts of 43
    (16, 1024, 11008, 64, 8 * 4), # 8 tiles of 172 k steps: 16 parts would fit, 4 is the most that divides
    (16, 4096, 8320, 64, 64),     # 130 k steps: 2 parts of 65
    (16, 4096, 8384, 64, 132),    # 131 k steps: no whole parts, cut over every SM
])
def test_few_stream_k_tiles_split_into_whole_parts(m, n, k, tile_n, grid):
    kind, _, it = describe(m, n, k, sm_count=132, tile_n=tile_n, schedule=SK)
    assert kind == SK and int(it["block"].max()) + 1 == grid


def test_the_hybrid_splits_the_tail_wave_plus_one():
    kind, workspace, it = describe(3072, 3072, 3072, sm_count=132, tile_n=256)
    assert kind == SK and workspace > 0
    sk = it["tile"] < 132 + 288 % 132
    assert np.all(np.bincount(it["block"][~sk]) == 1)  # one data-parallel wave
    iterations = np.bincount(it["block"], weights=it["k_end"] - it["k_begin"])
    assert iterations.max() - iterations.min() <= 1 and iterations.max() < 3 * 48  # below DP's 3 tiles of 48


def test_describe_is_deterministic_and_checks_its_arguments():
    assert describe(1000, 1000, 5000, batch=3, schedule=SK)[2]["tile"].tolist() == \
        describe(1000, 1000, 5000, batch=3, schedule=SK)[2]["tile"].tolist()
    descriptor = _descriptor(m=64, n=64, k=64)
    count = ffi.new("int64_t *")
    assert_status(lib.mfa_gemm_schedule_describe(descriptor, 0, 0, ffi.NULL, ffi.NULL, ffi.NULL, 0, count),
                  "INVALID_ARGUMENT", "sm_count is 0")
    assert_status(lib.mfa_gemm_schedule_describe(descriptor, 132, 88, ffi.NULL, ffi.NULL, ffi.NULL, 0, count),
                  "INVALID_ARGUMENT", "tile_n is 88")
    assert_status(lib.mfa_gemm_schedule_describe(_descriptor(m=64, n=64, k=64, schedule=3), 132, 0, ffi.NULL,
                                                 ffi.NULL, ffi.NULL, 0, count), "UNSUPPORTED", "descriptor->schedule")


def test_stream_k_is_a_schedule_name_of_the_python_api():
    descriptor = mfa_c.gemm_variants()[0]
    assert "schedule" in descriptor
    from mfa_c.gemm import _SCHEDULES

    assert _SCHEDULES["stream_k"] == SK and _SCHEDULES["data_parallel"] == DP


# ================================================================================================
# GPU: Stream-K forced, against float64, and bit-identical from run to run.

GPU_CASES = [
    # m, n, k, batch, trans, out_dtype, alpha, beta, bias, activation
    (3072, 3072, 3072, 1, "NN", "float16", 1 / 64, 0.0, False, "none"),
    (1000, 1000, 5000, 1, "NT", "float16", 0.02, 0.0, True, "gelu_tanh"),
    (128, 4096, 14336, 1, "NN", "bfloat16", 0.01, 0.0, False, "none"),
    (128, 4096, 14336, 1, "TT", "float32", 0.01, 0.5, True, "silu"),
    (333, 517, 2000, 3, "TN", "float32", 0.05, -1.5, True, "relu"),
    (257, 1500, 4096, 3, "TT", "float16", 0.02, 0.25, False, "gelu_erf"),
    (1536, 1536, 1536, 1, "NT", "bfloat16", 0.03, 0.0, True, "relu"),
    (64, 256, 64 * 11, 1, "NN", "float32", 0.1, 0.0, False, "none"),  # one tile, 11 k steps, 11 blocks
]


def _run(torch, pipeline, a, b, c0, bias, shape, out_dtype, beta):
    c, _ = poisoned_output(torch, shape, out_dtype)
    if beta:
        c.copy_(c0)
    pipeline.encode(a, b, c, bias)
    torch.cuda.synchronize()
    return c


@pytest.mark.parametrize("tile_n, cluster_m", [(64, 1), (128, 1), (192, 1), (256, 1), (128, 2), (256, 2)])
@pytest.mark.parametrize("m, n, k, batch, trans, out_dtype, alpha, beta, with_bias, activation", GPU_CASES)
def test_stream_k_matches_float64_and_repeats_exactly(ctx, torch_cuda, rng, m, n, k, batch, trans, out_dtype,
                                                       alpha, beta, with_bias, activation, tile_n, cluster_m):
    skip_unless_hopper_applies(ctx, "hopper")
    torch = torch_cuda
    dtype = "bfloat16" if out_dtype == "bfloat16" else "float16"
    inputs = Inputs(torch, rng)
    a, b = inputs.operands(m, n, k, dtype, trans, batch=(batch,) if batch > 1 else ())
    shape = (batch, m, n) if batch > 1 else (m, n)
    c0 = inputs.randn(shape, out_dtype) if beta else None
    bias = inputs.randn((1, n), out_dtype)[0] if with_bias else None
    pipeline = mfa_c.GemmPipeline(m, n, k, batch=batch, dtype=dtype, out_dtype=out_dtype,
                                  bias_dtype=out_dtype if with_bias else None, trans_a=trans[0] == "T",
                                  trans_b=trans[1] == "T", alpha=alpha, beta=beta, activation=activation,
                                  path="hopper", schedule="stream_k", tile_n=tile_n, cluster_m=cluster_m, context=ctx)
    with pipeline:
        assert pipeline.info["schedule"] == "stream_k" and pipeline.info["workspace_bytes"] > 0, pipeline.info
        suffix = (f".128x{tile_n}" + (f".cluster{cluster_m}" if cluster_m > 1 else "")
                  + (".swap-ab" if kernel_shape(m, n) != (m, n) else "")
                  + ("" if activation == "none" else f".{activation}"))
        assert pipeline.info["variant"].endswith(suffix), pipeline.info
        first = _run(torch, pipeline, a, b, c0, bias, shape, out_dtype, beta)
        second = _run(torch, pipeline, a, b, c0, bias, shape, out_dtype, beta)
    reference = torch_reference(torch, a, b, trans[0] == "T", trans[1] == "T", alpha, beta, c0, bias, activation)
    error = rel_error(first, reference)
    bound = tolerance(dtype, "default", out_dtype)
    assert error <= bound, f"relative error {error:.3g} > {bound:g}"
    assert torch.equal(first, second), "two runs of one Stream-K pipeline differ"


@pytest.mark.parametrize("schedule", ["auto", "data_parallel", "stream_k"])
def test_schedules_agree_and_command_lists_replay_stream_k(ctx, torch_cuda, rng, schedule):
    skip_unless_hopper_applies(ctx, "hopper")
    torch = torch_cuda
    m, n, k = 1000, 1000, 5000
    inputs = Inputs(torch, rng)
    a, b = inputs.operands(m, n, k, "float16", "NN")
    reference = torch_reference(torch, a, b, alpha=0.02)
    with mfa_c.GemmPipeline(m, n, k, dtype="float16", alpha=0.02, path="hopper", schedule=schedule,
                            context=ctx) as pipeline:
        c, _ = poisoned_output(torch, (m, n), "float16")
        pipeline.encode(a, b, c)
        torch.cuda.synchronize()
        assert rel_error(c, reference) <= tolerance("float16", "default", "float16")
        if schedule != "stream_k":
            return
        # A recorded Stream-K launch replays correctly, several times in a row, on new inputs each time: a
        # replay raises its flags to the recorded launch's token, so the last one must have lowered them
        # (a finisher that found its contributors' flags still raised would add their old partials).
        other_a, other_b = inputs.operands(m, n, k, "float16", "NN")
        other, _ = poisoned_output(torch, (m, n), "float16")
        pipeline.encode(other_a, other_b, other)
        sources = [(a.clone(), b.clone(), c), (other_a, other_b, other)]
        replayed, _ = poisoned_output(torch, (m, n), "float16")
        with mfa_c.CommandList(ctx) as command_list:
            with command_list.record() as stream:
                pipeline.encode(a, b, replayed, stream=stream)
            for replay in range(4):
                source_a, source_b, expected = sources[replay % 2]
                a.copy_(source_a)
                b.copy_(source_b)
                replayed.fill_(math.nan)
                command_list.launch()
                torch.cuda.synchronize()
                assert torch.equal(replayed, expected), f"replay {replay}"


@pytest.mark.parametrize("filler", ["zeros", "ones", "random"])
def test_stream_k_takes_a_workspace_of_any_content(ctx, torch_cuda, rng, filler):
    """The workspace is plain scratch memory: flags left at any value (all bits set, all clear, random bytes)
    neither stall a finisher nor let it read a partial early."""
    skip_unless_hopper_applies(ctx, "hopper")
    torch = torch_cuda
    m, n, k = 1000, 1000, 5000
    a, b = Inputs(torch, rng).operands(m, n, k, "float16", "NN")
    reference = torch_reference(torch, a, b, alpha=0.02)
    with mfa_c.GemmPipeline(m, n, k, dtype="float16", alpha=0.02, path="hopper", schedule="stream_k",
                            context=ctx) as pipeline:
        size = pipeline.info["workspace_bytes"]
        workspace = {"zeros": lambda: torch.zeros(size, dtype=torch.uint8, device="cuda"),
                     "ones": lambda: torch.full((size,), 255, dtype=torch.uint8, device="cuda"),
                     "random": lambda: torch.randint(0, 256, (size,), dtype=torch.uint8, device="cuda")}[filler]()
        for _ in range(2):
            c, _ = poisoned_output(torch, (m, n), "float16")
            views = [device_view(x, name, ctx.device) for x, name in ((a, "a"), (b, "b"), (c, "c"))]
            a_c, b_c, c_c = (view.as_c() for view in views)
            assert_status(lib.mfa_gemm_encode(pipeline.handle, stream_handle(torch.cuda.current_stream()), a_c.pointer,
                                              b_c.pointer, c_c.pointer, ffi.NULL,
                                              ffi.cast("void *", workspace.data_ptr()), size), "SUCCESS")
            torch.cuda.synchronize()
            assert rel_error(c, reference) <= tolerance("float16", "default", "float16")
