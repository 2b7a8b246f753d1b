"""Per-kernel GPU time of graph-replayed decode steps, through torch's profiler (CUPTI).

    python benchmarks/profile_step.py --quant Q8_0 [--batch 1] [--steps 20] [--model-dir DIR]
    python benchmarks/profile_step.py --quant Q8_0 --prefill 512      # one prompt's prefill step instead

Needs torch with CUDA (it only records: the kernels are ours). Prints, per kernel
name, launches per step, microseconds per step and the share of the step's GPU time;
the gaps between kernels (graph node overhead) are the step's wall time minus the sum.
"""

import argparse
import os
import time
from collections import defaultdict

from step_breakdown import decode_engine     # benchmarks/ is the script's directory, on sys.path

from llcuda_mpi.backends.base import Request
from llcuda_mpi.engine.engine import Engine, EngineConfig
from llcuda_mpi.engine.cuda_ops import CudaOps
from llcuda_mpi.model.gguf import load_model


def prompt(n):
    return [1] + [(13 * j) % 1000 + 100 for j in range(n - 1)]


def prefill_engine(quant, n, model_dir):
    """An engine whose next step prefills an n-token prompt in one chunk, its kernels compiled."""
    eng = Engine(load_model(os.path.join(model_dir, f"tinyllama-1.1b-{quant}.gguf")), CudaOps(),
                 EngineConfig(n_slots=1, n_ctx=n + 8, prefill_chunk=n))
    for rep in range(2):
        eng.submit(Request(rep, prompt_tokens=prompt(n), max_tokens=1, ignore_eos=True))
        eng.step()
    return eng


def short(name):
    """A numba kernel's mangled name (_ZN6cudapy...E...) -> its Python name (e.g. gemv_kernel)."""
    if not name.startswith("_ZN"):
        return name[:40]
    i, parts = 3, []
    while i < len(name) and name[i].isdigit():
        j = i
        while name[j].isdigit():
            j += 1
        n = int(name[i:j])
        parts.append(name[j:j + n])
        i = j + n
        while i < len(name) and name[i] == "B":       # ABI tags: B<len><tag>
            j = i + 1
            while name[j].isdigit():
                j += 1
            i = j + int(name[i + 1:j])
    if len(parts) >= 5 and parts[:3] == ["cudapy", "llcuda_mpi", "kernels"]:
        return f"{parts[3]}.{parts[-1]}"
    return parts[-1] if parts else name[:40]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model-dir", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--prefill", type=int, default=0, help="profile the prefill of a prompt this long")
    a = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    if a.prefill:
        eng, a.steps, a.batch = prefill_engine(a.quant, a.prefill, a.model_dir), 1, a.prefill
        eng.submit(Request(9, prompt_tokens=prompt(a.prefill), max_tokens=1, ignore_eos=True))
    else:
        eng, _ = decode_engine(a.quant, a.batch, a.model_dir, n_ctx=512, max_tokens=400)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(a.steps):
            eng.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / a.steps
    per = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        key = short(e.name)
        per[key][0] += 1
        per[key][1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    total = sum(v[1] for v in per.values()) / a.steps
    print(f"{a.quant} {'T' if a.prefill else 'B'}={a.batch}: step wall {wall * 1e3:.3f} ms, kernel time {total / 1e3:.3f} ms "
          f"(gaps/host {wall * 1e3 - total / 1e3:.3f} ms)")
    print(f"{'kernel':32} {'per step':>8} {'us/step':>9} {'share':>6}")
    for k, (n, us) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"{k[:32]:32} {n / a.steps:8.1f} {us / a.steps:9.1f} {us / a.steps / total:6.1%}")


if __name__ == "__main__":
    main()
