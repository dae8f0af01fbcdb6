#!/usr/bin/env bash
# The whole GPU round in one call on the device machine: build and install, run the full test suite
# (GPU tests included), the C example, the compile-cache timing, and the benchmarks.
#   bash bench/gpu_suite.sh [tests|bench|profile|all]   (default all)
#   bash bench/gpu_suite.sh family <name>               one family's tests and benchmark (group_norm,
#                                                       attention or gemm: test_<name>*.py, bench <name>)
# $OUT receives suite.log (everything printed) and results.tgz (bench/results: JSON and charts).
# MFA_BENCH_SWEEP=1 runs the GEMM sweep 128..8192 step 128 instead of the short square list.
set -uo pipefail
what=${1:-all}
OUT=${OUT:-/tmp/mfa-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/suite.log") 2>&1
export PYTHONUNBUFFERED=1 MFA_CACHE_DIR=/tmp/mfa-cache
# Kernels compiled for sm_90a here by the CPU tests (same NVRTC version) are valid there: a carried
# .mfa-cache saves the device the compile time. Entries are keyed by source and NVRTC version, so a
# stale one is never used, and neither is one compiled by another NVRTC: the device's is the CUDA 13.0
# toolkit's, while a fresh venv's nvidia-cuda-nvrtc wheel may be newer (CI's had 13.5, and a cache
# made there compiled everything again on the device), so build the cache to carry with
# MFA_NVRTC_LIBRARY pointing at a 13.0 libnvrtc. .mfa-cache.tgz is the same, packed
# (`tar -czf .mfa-cache.tgz .mfa-cache`: a fifth of the size, for carries of more than 64 MB of kernels).
[ -d .mfa-cache ] && mkdir -p "$MFA_CACHE_DIR" && cp -r .mfa-cache/. "$MFA_CACHE_DIR/"
[ -f .mfa-cache.tgz ] && mkdir -p "$MFA_CACHE_DIR" && tar -xzf .mfa-cache.tgz --strip-components=1 -C "$MFA_CACHE_DIR"
step() { echo; echo "=== $* ($(date +%T))"; }

step install
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-build-isolation --no-deps . >/tmp/mfa-install.log 2>&1 || { cat /tmp/mfa-install.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -m mfa_c info 2>&1

if [ "$what" = tests ] || [ "$what" = all ]; then
  step "tests"
  # Five pytest processes share the GPU (the float64 references keep the CPUs busy, not the GPU); a
  # hung kernel must not eat the whole call: each test gets 120 s (TEST_TIMEOUT), then its stacks are
  # dumped. The tile tests' first one compiles all 360 tile variants (a fixture, 8 threads): without a
  # carried cache that takes 3-4 minutes, so that process gets 420 s.
  run_tests() {
    local name=$1; shift
    python3 -m pytest "$@" -q -rs --durations=5 --timeout="${TEST_TIMEOUT:-120}" --timeout-method=thread \
      >"/tmp/pytest-$name.log" 2>&1
  }
  # (wait on these pids only: a bare `wait` also waits for the tee of this script's own output)
  pids=()
  run_tests attention tests/test_attention.py & pids+=($!)
  run_tests group_norm tests/test_group_norm.py & pids+=($!)
  run_tests gemm tests/test_gemm.py tests/test_gemm_tf32.py & pids+=($!)
  TEST_TIMEOUT=420 run_tests gemm_tiles tests/test_gemm_tiles.py & pids+=($!)
  run_tests rest tests --ignore=tests/test_attention.py --ignore=tests/test_group_norm.py \
    --ignore=tests/test_gemm.py --ignore=tests/test_gemm_tiles.py --ignore=tests/test_gemm_tf32.py
  wait "${pids[@]}"
  for log in /tmp/pytest-*.log; do echo "--- $log"; cat "$log"; done
  step "C example"
  cmake -S . -B /tmp/mfa-build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build /tmp/mfa-build >/dev/null &&
    /tmp/mfa-build/example_gemm 2>&1
  /tmp/mfa-build/example_gemm 1000 1023 127 2>&1
  /tmp/mfa-build/example_attention 2>&1
  /tmp/mfa-build/example_attention 1000 700 96 2>&1
fi
if [ "$what" = tests ] || [ "$what" = all ]; then
  step "compile time against the disk cache (a fresh cache, then a second process)"
  fresh=$(mktemp -d)
  for run in first second; do
    MFA_CACHE_DIR=$fresh python3 -c "
import mfa_c
p = mfa_c.GemmPipeline(4096, 4096, 4096, dtype='float16')
print('$run process:', p.info['variant'], p.info['cache'], f\"{p.info['compile_ms']:.1f} ms\")" 2>&1
  done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  step "bench"
  # The device tool brings back at most 8 files: the results travel as one archive, refreshed after
  # every benchmark so that a run cut short still returns what it measured.
  bench() {
    local limit=$1; shift
    timeout "$limit" python3 -m mfa_c bench "$@" --out bench/results 2>&1 | grep -v "^\["
    tar -czf "$OUT/results.tgz" -C bench results
  }
  bench 300 attention
  # GEMM: the square sizes (MFA_BENCH_SWEEP=1: 128..8192 step 128), fp32-accurate, the Stream-K / LLM
  # shapes and the fused GELU; every row prints the variant and schedule that ran.
  bench 300 gemm --suite "$([ "${MFA_BENCH_SWEEP:-0}" = 1 ] && echo sweep || echo square)" --dtype fp16,bf16 --trans NN,NT
  bench 240 gemm --dtype fp32 --sizes 1024,2048,4096,8192 --trans NN,NT
  bench 240 gemm --suite stream_k
  bench 120 gemm --suite gelu
  bench 240 group_norm
fi
if [ "$what" = family ]; then
  family=${2:?family needs a name}
  step "tests of $family"
  python3 -m pytest tests/test_"$family"*.py -q -rs -x --durations=5 --timeout=120 --timeout-method=thread 2>&1 | tail -40
  step "bench $family"
  timeout 300 python3 -m mfa_c bench "$family" --out bench/results 2>&1 | grep -v "^\["
  tar -czf "$OUT/results.tgz" -C bench results
fi
if [ "$what" = profile ] || [ "$what" = all ]; then
  # Nsight Compute's speed of light per kernel (one report file per case: the tool returns 8 files).
  step "profile"
  for case in group_norm_nhwc group_norm_nchw attention_d128 gemm_4096; do
    timeout 90 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy -k regex:mfa_ \
      --launch-count 3 python3 bench/profile_cases.py $case >"$OUT/ncu_$case.txt" 2>&1
    grep -E "^  mfa_|Duration|DRAM Throughput|Compute \(SM\) Throughput" "$OUT/ncu_$case.txt"
  done
fi
step done
