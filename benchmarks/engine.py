"""Engine throughput: decode tok/s at several batch sizes, prefill tok/s, graphs vs eager.

    python benchmarks/engine.py --preset tinyllama-1.1b --quants F16,Q8_0,Q4_0,Q4_K_M \
        --batches 1,32 --device cuda

Models are made with `make-model` into --model-dir (reused when present).
Prints one line per measurement and, with --json, a JSON list at the end.
Decode steps are timed after warm-up (kernels compiled, graphs captured);
GB/s = weight bytes read per step / step time (each weight once per step).
"""

import argparse
import json
import os
import time

from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.engine.engine import Engine, EngineConfig
from llcuda_mpi.engine.ops import make_ops
from llcuda_mpi.model.gguf import load_model
from llcuda_mpi.model.make import make_model


def _drain(engine):
    while engine.busy():
        engine.step()


def bench_decode(model, device, batch, steps, graphs, n_ctx):
    ops = make_ops(device, graphs=graphs)
    engine = Engine(model, ops, EngineConfig(n_slots=batch, n_ctx=n_ctx, prefill_chunk=256))
    warm = 4
    for i in range(batch):
        engine.submit(Request(i, prompt_tokens=[1] + [(7 * i + j) % 1000 + 100 for j in range(15)],
                              max_tokens=warm + steps + 2, ignore_eos=True))
    while any(s.next_token < 0 for s in engine.active.values()) or engine.waiting:
        engine.step()                                  # prefill everything
    for _ in range(warm):
        engine.step()                                  # compile, then capture
    launches0 = getattr(ops, "launches", 0)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    dt = (time.perf_counter() - t0) / steps
    launches = (getattr(ops, "launches", 0) - launches0) / steps
    _drain(engine)
    return dt, launches


def bench_prefill(model, device, n_prompt, n_ctx):
    ops = make_ops(device)
    engine = Engine(model, ops, EngineConfig(n_slots=1, n_ctx=n_ctx, prefill_chunk=n_prompt))
    prompt = [1] + [(13 * j) % 1000 + 100 for j in range(n_prompt - 1)]
    times = []
    for rep in range(3):                               # the first compiles
        engine.submit(Request(rep, prompt_tokens=prompt, max_tokens=1, ignore_eos=True))
        t0 = time.perf_counter()
        events = engine.step()
        times.append(time.perf_counter() - t0)
        assert any(isinstance(e, Completion) for e in events)
    return min(times[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tinyllama-1.1b")
    ap.add_argument("--quants", default="F16,Q8_0,Q4_0,Q4_K_M")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--eager", action="store_true", help="also time eager decode at batch 1")
    ap.add_argument("--legacy", action="store_true",
                    help="also time the old kernels/matvec.py path (LLCUDA_LEGACY_MATVEC=1) at every batch size")
    ap.add_argument("--unfused-norm", action="store_true",
                    help="also time batch 1 with RMSNorm as its own kernel (LLCUDA_FUSE_NORM=0)")
    ap.add_argument("--model-dir", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = []
    for quant in args.quants.split(","):
        path = os.path.join(args.model_dir, f"{args.preset}-{quant}.gguf")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            make_model(args.preset, path, quant=quant)
            print(f"made {path} in {time.perf_counter() - t0:.1f} s", flush=True)
        model = load_model(path)
        wbytes = sum(t.nbytes for n, t in model.tensors.items() if n != "token_embd.weight" or
                     "output.weight" not in model.tensors)
        n_ctx = max(args.prefill + 8, 256)
        variants = [(b, True, False) for b in map(int, args.batches.split(","))]
        if args.eager:
            variants.insert(0, (1, False, False))
        if args.legacy:
            variants += [(b, True, True) for b in map(int, args.batches.split(","))]
        if args.unfused_norm:
            variants.append((1, True, "unfused_norm"))
        for batch, graphs, legacy in variants:
            os.environ["LLCUDA_LEGACY_MATVEC"] = "1" if legacy is True else ""
            os.environ["LLCUDA_FUSE_NORM"] = "0" if legacy == "unfused_norm" else "1"
            dt, launches = bench_decode(model, args.device, batch, args.steps, graphs, n_ctx)
            os.environ["LLCUDA_LEGACY_MATVEC"] = ""
            os.environ["LLCUDA_FUSE_NORM"] = "1"
            row = {"quant": quant, "what": "decode", "batch": batch, "graphs": graphs, "legacy_matvec": legacy,
                   "ms_per_step": 1e3 * dt, "tok_s": batch / dt, "GB_s": wbytes / dt / 1e9,
                   "eager_launches_per_step": launches}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.prefill:
            dt = bench_prefill(model, args.device, args.prefill, n_ctx)
            row = {"quant": quant, "what": "prefill", "n_prompt": args.prefill, "ms": 1e3 * dt,
                   "tok_s": args.prefill / dt}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del model
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
