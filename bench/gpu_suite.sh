#!/usr/bin/env bash
# The whole GPU round in one call on the device machine: build and install, run the full test suite
# (GPU tests included), the C example, the compile-cache timing, and the benchmarks.
#   bash bench/gpu_suite.sh [tests|bench|all]   (default all)
# $OUT receives suite.log (everything printed) and results/ (bench JSON and charts): the device tool
# brings back at most 8 files.
set -uo pipefail
what=${1:-all}
OUT=${OUT:-/tmp/mfa-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/suite.log") 2>&1
export PYTHONUNBUFFERED=1 MFA_CACHE_DIR=/tmp/mfa-cache
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
  # A hung kernel must not eat the whole call: each test gets 120 s, then its stacks are dumped.
  python3 -m pytest tests -q -rs --durations=15 --timeout=120 --timeout-method=thread 2>&1
  for tile in 256 128; do
    step "Hopper tests with the 128x${tile} tile forced"
    MFA_SM90_TILE_N=$tile python3 -m pytest tests/test_gemm.py tests/test_gemm_schedule.py -q -rs -x \
      --timeout=120 --timeout-method=thread -k "hopper or auto or stream" 2>&1 | tail -4
  done
  step "C example"
  cmake -S . -B /tmp/mfa-build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build /tmp/mfa-build >/dev/null &&
    /tmp/mfa-build/example_gemm 2>&1
  /tmp/mfa-build/example_gemm 1000 1023 127 2>&1
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
  mkdir -p "$OUT/results"
  for dtypes in fp16,bf16 fp32; do
    timeout 240 python3 -m mfa_c bench gemm --dtype "$dtypes" --trans NN,NT --out bench/results 2>&1 | grep -v "^\["
  done
  timeout 240 python3 -m mfa_c bench group_norm --out bench/results 2>&1 | grep -v "^\["
  cp bench/results/* "$OUT/results/"
fi
step done
