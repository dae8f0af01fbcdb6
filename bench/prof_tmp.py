import torch, mfa_c, sys, statistics
m, n, k = map(int, sys.argv[1:4])
a = torch.randn(m, k, device="cuda", dtype=torch.float16); b = torch.randn(k, n, device="cuda", dtype=torch.float16)
c = torch.empty(m, n, device="cuda", dtype=torch.float16)
p = mfa_c.GemmPipeline(m, n, k, dtype="float16")
torch.cuda.synchronize()
for _ in range(3): p.encode(a, b, c)
for _ in range(3): torch.matmul(a, b, out=c)
torch.cuda.synchronize()
if len(sys.argv) > 4:  # timing of graphs of 32 launches each
    def timeit(fn, reps=20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(3): fn()
        ts = []
        for _ in range(reps):
            s.record(); fn(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
        return statistics.median(ts) * 1e3 / 32
    cl = mfa_c.CommandList(mfa_c.default_context())
    with cl.record() as st:
        for _ in range(32): p.encode(a, b, c, stream=st)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(32): torch.matmul(a, b, out=c)
    print(m, n, k, p.info["variant"], f"ours {timeit(lambda: cl.launch(torch.cuda.current_stream())):.2f} us  cublas {timeit(g.replay):.2f} us")
