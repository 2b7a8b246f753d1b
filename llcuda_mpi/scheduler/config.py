"""The bench job's options: defaults in one dataclass, argparse reads them.

Backend options come from every registered backend's `add_arguments`
(imported here, lazily but robustly: a backend whose module cannot be imported
is listed as unavailable instead of breaking `--help`).
"""

import math
from dataclasses import asdict, dataclass, fields

from llcuda_mpi.backends import BACKENDS, backend_class
from llcuda_mpi.mpi import DEVICE_CHOICES
from llcuda_mpi.scheduler.prompts import INPUT_LEN_DISTS

DEFAULT_BACKEND = "engine"       # our own numba engine on the built-in default model
NUM_PROMPTS_SYNTHETIC = 100     # --num-prompts without a --prompts file


@dataclass
class BenchConfig:
    backend: str = DEFAULT_BACKEND
    device: str = "auto"            # auto | cpu | cuda
    prompts: str | None = None      # JSONL or text file; None = synthetic prompts
    num_prompts: int | None = None  # measured requests; None: every prompt of the file, or 100
    input_len: int = 128            # synthetic prompts: words (~tokens)
    input_len_dist: str = "fixed"
    input_len_spread: float = 0.5
    max_tokens: int = 128
    ignore_eos: bool = False
    warmup: int = 0                 # extra requests run first, excluded from statistics
    inflight: int = 8               # closed loop: requests per worker at once
    concurrency: int = 0            # global cap on requests in flight (0 = none)
    request_rate: float = math.inf  # open loop: requests/s (inf = closed loop)
    burstiness: float = 1.0         # gamma shape of inter-arrival gaps (1 = Poisson)
    seed: int = 0
    timeout: float = 300.0          # seconds per request
    temperature: float = 0.0
    output: str | None = None       # default results/bench-<timestamp>.h5
    progress: bool = True

    def validate(self) -> None:
        """ValueError with a one-line message naming the option."""
        checks = [
            (self.backend in BACKENDS, f"--backend {self.backend!r}: choose from {', '.join(BACKENDS)}"),
            (self.device in DEVICE_CHOICES, f"--device {self.device!r}: choose from {', '.join(DEVICE_CHOICES)}"),
            (self.num_prompts is None or self.num_prompts >= 1, f"--num-prompts must be >= 1, got {self.num_prompts}"),
            (self.input_len >= 1, f"--input-len must be >= 1, got {self.input_len}"),
            (self.input_len_dist in INPUT_LEN_DISTS, f"--input-len-dist {self.input_len_dist!r}: choose "
             f"from {', '.join(INPUT_LEN_DISTS)}"),
            (self.input_len_spread >= 0, f"--input-len-spread must be >= 0, got {self.input_len_spread}"),
            (self.max_tokens >= 1, f"--max-tokens must be >= 1, got {self.max_tokens}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.inflight >= 1, f"--inflight must be >= 1, got {self.inflight}"),
            (self.concurrency >= 0, f"--concurrency must be >= 0 (0 = no cap), got {self.concurrency}"),
            (self.request_rate > 0, f"--request-rate must be > 0 (or inf), got {self.request_rate}"),
            (self.burstiness > 0, f"--burstiness must be > 0, got {self.burstiness}"),
            (self.timeout > 0, f"--timeout must be > 0 seconds, got {self.timeout}"),
            (self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["request_rate"] = "inf" if math.isinf(self.request_rate) else self.request_rate
        return d


def backend_classes() -> dict:
    """name -> class, or name -> "unavailable: reason" for a module that does not import."""
    out = {}
    for name in BACKENDS:
        try:
            out[name] = backend_class(name)
        except ImportError as exc:
            out[name] = f"unavailable: {exc}"
    return out


def add_arguments(parser) -> None:
    d = BenchConfig()
    classes = backend_classes()
    unavailable = [f"{n} ({c})" for n, c in classes.items() if isinstance(c, str)]
    g = parser.add_argument_group("job")
    g.add_argument("--backend", default=d.backend, metavar="NAME",
                   help=f"one of {', '.join(BACKENDS)} (default %(default)s)"
                   + (f"; {'; '.join(unavailable)}" if unavailable else ""))
    g.add_argument("--device", default=d.device, choices=DEVICE_CHOICES,
                   help="workers' device; auto = cuda if a GPU is visible (default %(default)s)")
    g.add_argument("--output", "-o", default=d.output, metavar="PATH",
                   help="results file (default results/bench-<timestamp>.h5)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g = parser.add_argument_group("prompts")
    g.add_argument("--prompts", default=d.prompts, metavar="FILE",
                   help="JSONL ({\"prompt\": ..., \"max_tokens\": N}) or text, one prompt per line")
    g.add_argument("--num-prompts", type=int, default=d.num_prompts, metavar="N",
                   help="measured requests; prompts are cycled (default: every prompt of --prompts, "
                   f"or {NUM_PROMPTS_SYNTHETIC} synthetic ones)")
    g.add_argument("--input-len", type=int, default=d.input_len, metavar="N",
                   help="synthetic prompts: mean length in words (default %(default)s)")
    g.add_argument("--input-len-dist", default=d.input_len_dist, choices=INPUT_LEN_DISTS,
                   help="synthetic prompts: length distribution (default %(default)s)")
    g.add_argument("--input-len-spread", type=float, default=d.input_len_spread, metavar="X",
                   help="relative spread (uniform/normal) or sigma (lognormal) (default %(default)s)")
    g.add_argument("--max-tokens", type=int, default=d.max_tokens, metavar="N",
                   help="output tokens per request unless the prompts file says (default %(default)s)")
    g.add_argument("--ignore-eos", action="store_true", help="generate max-tokens tokens whatever EOS says")
    g.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy (default)")
    g = parser.add_argument_group("load")
    g.add_argument("--inflight", type=int, default=d.inflight, metavar="N",
                   help="closed loop: requests per worker at once (default %(default)s)")
    g.add_argument("--concurrency", type=int, default=d.concurrency, metavar="N",
                   help="global cap on requests in flight; 0 = none (default)")
    g.add_argument("--request-rate", type=float, default=d.request_rate, metavar="R",
                   help="open loop: mean requests/s; inf = closed loop (default)")
    g.add_argument("--burstiness", type=float, default=d.burstiness, metavar="K",
                   help="gamma shape of arrival gaps; 1 = Poisson (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="arrivals, prompts and sampling seed")
    g.add_argument("--warmup", type=int, default=d.warmup, metavar="N",
                   help="requests run first and excluded from statistics (default %(default)s)")
    g.add_argument("--timeout", type=float, default=d.timeout, metavar="S",
                   help="per-request timeout in seconds (default %(default)s)")
    for name, cls in classes.items():
        if not isinstance(cls, str):
            cls.add_arguments(parser.add_argument_group(f"backend {name}"))


def config_from_args(args) -> BenchConfig:
    cfg = BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})
    cfg.validate()
    return cfg
