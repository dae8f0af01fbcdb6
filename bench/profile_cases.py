"""One kernel case per run, for Nsight Compute (bench/gpu_suite.sh profile):
    ncu --section SpeedOfLight ... python3 bench/profile_cases.py CASE
Each case runs its operation three times on random data, at a shape where our benchmark tables miss their
targets; the profiler reports the first kernels it launches."""
import sys

import torch

import mfa_c


def group_norm_nhwc():  # 128 MB fp16, channels-last: the >= 85%-of-copy target
    x = torch.randn(16, 256, 128, 128, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    weight = torch.randn(256, device="cuda", dtype=torch.float16)
    return lambda: mfa_c.group_norm(x, 32, weight, weight)


def group_norm_nchw():
    x = torch.randn(16, 256, 128, 128, device="cuda", dtype=torch.float16)
    weight = torch.randn(256, device="cuda", dtype=torch.float16)
    return lambda: mfa_c.group_norm(x, 32, weight, weight)


def attention_d128():  # FlashAttention-3's setup at seq 4096: batch 4, 16 heads of 128
    q, k, v = (torch.randn(4, 4096, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    return lambda: mfa_c.attention(q, k, v)


def gemm_4096():
    a, b = (torch.randn(4096, 4096, device="cuda", dtype=torch.float16) for _ in range(2))
    return lambda: mfa_c.gemm(a, b)


CASES = {f.__name__: f for f in (group_norm_nhwc, group_norm_nchw, attention_d128, gemm_4096)}

if __name__ == "__main__":
    run = CASES[sys.argv[1]]()
    for _ in range(3):
        run()
    torch.cuda.synchronize()
