import torch, mfa_c, sys, statistics
def timeit(fn, reps=20):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3): fn()
    ts = []
    for _ in range(reps):
        s.record(); fn(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
    return statistics.median(ts) * 1e3 / 32
for (m, n, k) in ((128, 128, 64), (256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (1536, 1536, 1536), (2048, 2048, 2048)):
    a = torch.randn(m, k, device="cuda", dtype=torch.float16); b = torch.randn(k, n, device="cuda", dtype=torch.float16)
    c = torch.empty(m, n, device="cuda", dtype=torch.float16)
    p = mfa_c.GemmPipeline(m, n, k, dtype="float16")
    cl = mfa_c.CommandList(mfa_c.default_context())
    with cl.record() as st:
        for _ in range(32): p.encode(a, b, c, stream=st)
    torch.matmul(a, b, out=c); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(32): torch.matmul(a, b, out=c)
    print(m, n, k, sys.argv[1], p.info["variant"].split(".")[-1], p.info["schedule"], f"ours {timeit(lambda: cl.launch(torch.cuda.current_stream())):.2f} us  cublas {timeit(g.replay):.2f} us", flush=True)
