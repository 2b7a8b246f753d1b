"""`llcuda-mpi generate`: one-off generation with the engine, streaming text to the terminal."""

import os
import sys
import time

from llcuda_mpi.backends.base import Completion, Request, TokenEvent


def add_arguments(parser):
    parser.add_argument("--model", default="", metavar="GGUF",
                        help="GGUF model file or store:NAME[:TAG] (default: the built-in default model)")
    parser.add_argument("--prompt", "-p", required=True, help="prompt text")
    parser.add_argument("-n", "--max-tokens", type=int, default=64, help="tokens to generate (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default %(default)s)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off (default %(default)s)")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    parser.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence tokens")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = cuda if a GPU is visible (default %(default)s)")
    parser.add_argument("--n-ctx", type=int, default=0, help="context positions; 0 = min(model's, 2048)")
    parser.add_argument("--ids", action="store_true", help="print token ids instead of text")
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="numba threads on the CPU (default: every core, %(default)s)")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                        help="launch every kernel eagerly (debugging)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the warm-up run (a short prompt and decode steps that load or compile the "
                             "kernels, and capture the CUDA graphs, before the prompt's clock starts; as "
                             "llama.cpp warms up): TTFT and the decode rate then include that one-time cost")


def _device(choice):
    """auto -> cuda when a real GPU is visible (never the simulator), else cpu."""
    if choice != "auto":
        return choice
    from llcuda_mpi.mpi import detect_gpus
    n_visible, simulator = detect_gpus()
    return "cuda" if n_visible and not simulator else "cpu"


def _check(args):
    """The first bad argument value as a message, or ""."""
    checks = [(args.max_tokens >= 1, f"--max-tokens must be >= 1, got {args.max_tokens}"),
              (args.cpu_threads >= 1, f"--cpu-threads must be >= 1, got {args.cpu_threads}"),
              (args.n_ctx >= 0, f"--n-ctx must be >= 0 (0 = the model's, at most 2048), got {args.n_ctx}"),
              (args.temperature >= 0, f"--temperature must be >= 0 (0 = greedy), got {args.temperature}"),
              (args.top_k >= 0, f"--top-k must be >= 0 (0 = off), got {args.top_k}"),
              (0 < args.top_p <= 1, f"--top-p must be in (0, 1] (1 = off), got {args.top_p}")]
    return next((message for ok, message in checks if not ok), "")


def _fail(message):
    print(f"llcuda-mpi generate: error: {message}", file=sys.stderr)
    return 2


def run(args):
    from llcuda_mpi.backends.engine import build_engine, open_model
    from llcuda_mpi.model.gguf import ModelError
    from llcuda_mpi.storage import StoreError
    bad = _check(args)
    if bad:
        return _fail(bad)
    try:
        model = open_model(args.model)
    except (ModelError, StoreError) as exc:
        return _fail(exc)
    device = _device(args.device)
    try:
        engine = build_engine(model, device, 1, args.n_ctx, 128, args.cuda_graphs, args.cpu_threads)
    except (RuntimeError, ValueError) as exc:          # no GPU, does not fit, bad --cpu-threads
        return _fail(exc)
    warm_s = 0.0
    if args.warmup:
        t = time.perf_counter()
        engine.warm_up()
        warm_s = time.perf_counter() - t
    request = Request(id=0, prompt=args.prompt, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                      stop=args.stop)
    t0 = time.time()
    done = engine.submit(request, t0)
    while done is None:
        for event in engine.step():
            if isinstance(event, TokenEvent):
                sys.stdout.write(" ".join(map(str, event.token_ids)) + " " if args.ids else event.text)
                sys.stdout.flush()
            elif isinstance(event, Completion):
                done = event
    sys.stdout.write("\n")
    if done.status != "ok":
        print(f"llcuda-mpi generate: error: {done.error}", file=sys.stderr)
        return 1
    decode_s = done.t_end - done.t_first
    rate = (done.n_output - 1) / decode_s if done.n_output > 1 and decode_s > 0 else float("nan")
    warm = f"warm-up {warm_s:.2f} s; " if args.warmup else "no warm-up; "
    print(f"[{device}] {warm}prompt {done.n_prompt} tokens, TTFT {1e3 * (done.t_first - t0):.1f} ms; "
          f"{done.n_output} tokens, {rate:.1f} tok/s decode; stop: {done.finish_reason}", file=sys.stderr)
    return 0
