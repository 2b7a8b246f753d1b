"""The serve job, SPMD: rank 0 is the network gateway, ranks 1.. generate.

Phases, each ending in a collective every rank reaches (as in bench.py):
  1. config                                              allgather of errors
  2. backend + rank-local service (workers), gateway (0) allgather of errors, gather of descriptions
  3. run: rank 0's main thread runs the MPI master loop, its gateway thread
     the sockets (transport/); workers run run_worker(forward_tokens=True)
  4. per-rank statistics                                 gather
SIGTERM or SIGINT (Slurm's time limit, Ctrl-C) on any rank: rank 0 stops
accepting, lets in-flight work finish for --shutdown-grace seconds, cancels
the rest, stops the workers; every rank exits 0. Workers ignore the signal
and wait for the master's STOP. A second signal skips the grace period.
"""

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields

from llcuda_mpi import log, mpi
from llcuda_mpi.backends import BACKENDS, backend_class
from llcuda_mpi.mpi import DEVICE_CHOICES
from llcuda_mpi.scheduler import messages as m
from llcuda_mpi.scheduler.bench import USER_ERRORS
from llcuda_mpi.scheduler.config import DEFAULT_BACKEND, backend_classes
from llcuda_mpi.scheduler.master import Master
from llcuda_mpi.scheduler.policy import Dispatcher
from llcuda_mpi.scheduler.worker import run_worker

SNAPSHOT_EVERY = 0.05   # seconds between metrics snapshots of the dispatcher
CANCEL_WAIT = 5.0       # seconds for cancelled requests' completions after the grace period


@dataclass
class ServeConfig:
    backend: str = DEFAULT_BACKEND
    device: str = "auto"
    host: str = "127.0.0.1"          # gateway address; 0.0.0.0 to serve the cluster network
    port: int = 8080                 # 0 = any free port (see --ready-file)
    port_base: int | None = None     # worker r's rank-local service on port_base + r; None = --port
    rank_host: str = "127.0.0.1"     # rank-local services' address
    inflight: int = 8                # requests per worker at once
    concurrency: int = 0             # global cap on requests in flight (0 = none)
    timeout: float = 600.0           # seconds per request
    max_tokens: int = 4096           # output tokens per request, at most
    max_streams: int = 64            # binary protocol: generations per connection
    max_connections: int = 4096
    header_timeout: float = 10.0     # HTTP request head+body / first binary frame, from the first byte
    idle_timeout: float = 60.0       # idle keep-alive connections are closed after this
    shutdown_grace: float = 20.0     # after SIGTERM, seconds in-flight work may finish (< Slurm KillWait)
    ready_file: str | None = None    # JSON {"url", "host", "port", "ranks"} written once serving
    model_name: str = ""             # name in /props and responses ("" = the backend's model or name)

    def validate(self) -> None:
        checks = [
            (self.backend in BACKENDS, f"--backend {self.backend!r}: choose from {', '.join(BACKENDS)}"),
            (self.device in DEVICE_CHOICES, f"--device {self.device!r}: choose from {', '.join(DEVICE_CHOICES)}"),
            (0 <= self.port < 65536, f"--port must be in 0..65535, got {self.port}"),
            (self.port_base is None or 0 <= self.port_base < 65000, f"--port-base out of range: {self.port_base}"),
            (self.inflight >= 1, f"--inflight must be >= 1, got {self.inflight}"),
            (self.concurrency >= 0, f"--concurrency must be >= 0, got {self.concurrency}"),
            (self.timeout > 0, f"--timeout must be > 0 seconds, got {self.timeout}"),
            (self.max_tokens >= 1, f"--max-tokens must be >= 1, got {self.max_tokens}"),
            (self.max_streams >= 1, f"--max-streams must be >= 1, got {self.max_streams}"),
            (self.max_connections >= 1, f"--max-connections must be >= 1, got {self.max_connections}"),
            (self.header_timeout > 0 and self.idle_timeout > 0, "--header-timeout and --idle-timeout must be > 0"),
            (self.shutdown_grace >= 0, f"--shutdown-grace must be >= 0, got {self.shutdown_grace}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def add_arguments(parser) -> None:
    d = ServeConfig()
    g = parser.add_argument_group("serve")
    g.add_argument("--backend", default=d.backend, metavar="NAME", help=f"one of {', '.join(BACKENDS)} "
                   "(default %(default)s)")
    g.add_argument("--device", default=d.device, choices=DEVICE_CHOICES, help="workers' device (default auto)")
    g.add_argument("--host", default=d.host, help="gateway bind address; 0.0.0.0 for every interface "
                   "(default %(default)s)")
    g.add_argument("--port", type=int, default=d.port, help="gateway port, HTTP and binary protocol; 0 = any "
                   "free port (default %(default)s)")
    g.add_argument("--port-base", type=int, default=d.port_base, metavar="P",
                   help="worker rank r serves /health and /metrics on P + r (default: --port; 0 = any free port)")
    g.add_argument("--rank-host", default=d.rank_host, help="rank-local services' bind address (default "
                   "%(default)s)")
    g.add_argument("--inflight", type=int, default=d.inflight, metavar="N", help="requests per worker at once "
                   "(default %(default)s)")
    g.add_argument("--concurrency", type=int, default=d.concurrency, metavar="N",
                   help="global cap on requests in flight; 0 = none")
    g.add_argument("--timeout", type=float, default=d.timeout, metavar="S", help="seconds per request "
                   "(default %(default)s)")
    g.add_argument("--max-tokens", type=int, default=d.max_tokens, metavar="N",
                   help="output tokens per request at most (default %(default)s)")
    g.add_argument("--max-streams", type=int, default=d.max_streams, metavar="N",
                   help="binary protocol: generations per connection (default %(default)s)")
    g.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N")
    g.add_argument("--header-timeout", type=float, default=d.header_timeout, metavar="S",
                   help="a request must arrive whole within S seconds of its first byte (default %(default)s)")
    g.add_argument("--idle-timeout", type=float, default=d.idle_timeout, metavar="S",
                   help="idle connections are closed after S seconds (default %(default)s)")
    g.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace, metavar="S",
                   help="after SIGTERM, seconds in-flight requests may finish (default %(default)s)")
    g.add_argument("--ready-file", default=d.ready_file, metavar="PATH",
                   help="write {url, host, port, ranks} as JSON here once serving")
    g.add_argument("--model-name", default=d.model_name, metavar="NAME", help="model name reported to clients")
    for name, cls in backend_classes().items():
        if not isinstance(cls, str):
            cls.add_arguments(parser.add_argument_group(f"backend {name}"))


def config_from_args(args) -> ServeConfig:
    cfg = ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
    cfg.validate()
    return cfg


class Signals:
    """SIGTERM/SIGINT -> a flag the main loop reads (handlers run on the main thread)."""

    def __init__(self, role: str):
        self.count = 0
        self.event = threading.Event()
        self.role = role
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.count += 1
        self.event.set()
        if self.count == 1:
            log.info("serve: %s received; %s", signal.Signals(signum).name, self.role)


def _gateway(cfg, model):
    from llcuda_mpi.transport.httpd import HttpLimits
    from llcuda_mpi.transport.protocol import Limits
    from llcuda_mpi.transport.server import Gateway, GatewayConfig
    return Gateway(GatewayConfig(
        host=cfg.host, port=cfg.port, model=model, request_timeout=cfg.timeout,
        max_connections=cfg.max_connections, limits=Limits(max_tokens=cfg.max_tokens, max_streams=cfg.max_streams),
        http=HttpLimits(header_timeout=cfg.header_timeout, idle_timeout=cfg.idle_timeout)))


def run(args) -> int:
    ctx = mpi.init()
    log.setup(ctx.rank)
    problem = mpi.launch_mismatch_message(ctx.size, os.environ) or mpi.need_workers_message("serve", ctx.size)
    if problem:
        if ctx.is_master:
            print(problem, file=sys.stderr)
        return 2
    signals = Signals("shutting down gracefully" if ctx.is_master else "waiting for the master's stop")

    # 1. config
    cfg, error = None, None
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        error = str(exc)
    if mpi.agree(ctx, error, "serve"):
        return 2

    # 2. backend + rank service (workers), gateway (rank 0)
    backend = service = gateway = None
    device, error, address = mpi.Device("cpu"), None, None
    try:
        if ctx.is_master:
            gateway = _gateway(cfg, cfg.model_name or "llcuda-mpi")
            address = gateway.start()
        else:
            from llcuda_mpi.transport.ranksvc import CountingBackend, RankService
            cls = backend_class(cfg.backend)
            device = mpi.pick_device(ctx, cfg.device, probe=getattr(cls, "uses_device", True))
            mpi.activate(device)
            backend = CountingBackend(cls.from_args(args, ctx.rank - 1, device))
            base = cfg.port if cfg.port_base is None else cfg.port_base
            service = RankService(ctx.rank, backend, {"host": ctx.host, "device": str(device)}, cfg.rank_host,
                                  base + ctx.rank if base else 0)
            address = service.start()
    except USER_ERRORS as exc:
        where = f"{cfg.host}:{cfg.port}" if ctx.is_master else ctx.host
        error = f"{where}: {type(exc).__name__}: {exc}" if isinstance(exc, RuntimeError) else f"{where}: {exc}"
    failed = mpi.agree(ctx, error, "serve")
    info = {"rank": ctx.rank, "host": ctx.host, "device": str(device), "address": address,
            "describe": backend.describe() if backend is not None else {}}
    infos = ctx.world.gather(info, root=0)
    if failed:
        for thing in (gateway, service, backend):
            if thing is not None:
                thing.close()
        return 2

    # 3. run
    stats = None
    if ctx.is_master:
        model = cfg.model_name or (infos[1]["describe"].get("model_path") or cfg.backend)
        gateway.config.model = os.path.basename(model) if os.sep in model else model
        try:
            serve_master(ctx.world, gateway, cfg, signals, on_ready=lambda: _announce(cfg, gateway, infos))
        finally:
            gateway.close()
    else:
        try:
            stats = run_worker(ctx.world, backend, cfg.inflight, forward_tokens=True)
        finally:
            service.stopping = True
            service.close()
            backend.close()

    # 4. statistics
    rows = ctx.world.gather(None if stats is None else vars(stats), root=0)
    if ctx.is_master:
        total = sum(r["n_ok"] for r in rows[1:] if r)
        log.info("serve: stopped; %d requests ok (%s)", total,
                 ", ".join(f"rank {i}: {r['n_ok']} ok, {r['n_error']} error, {r['n_timeout']} timeout"
                           for i, r in enumerate(rows) if r))
    return 0


def _announce(cfg, gateway, infos) -> None:
    host, port = gateway.address
    shown = infos[0]["host"] if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}"
    ranks = [{"rank": i["rank"], "host": i["host"], "device": i["device"],
              "url": f"http://{i['address'][0]}:{i['address'][1]}"} for i in infos[1:]]
    print(f"serve: listening on {url} (HTTP: /health /completion /v1/completions /metrics; binary protocol: "
          f"tcp://{shown}:{port})", flush=True)
    for r in ranks:
        print(f"serve: rank {r['rank']} on {r['host']} ({r['device']}): {r['url']}/health /metrics", flush=True)
    if cfg.ready_file:
        tmp = cfg.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"url": url, "host": shown, "port": port, "pid": os.getpid(), "ranks": ranks}, f)
        os.replace(tmp, cfg.ready_file)


def serve_master(comm, gateway, cfg: ServeConfig, signals: Signals, backoff: m.Backoff | None = None,
                 on_ready=None) -> None:
    """Rank 0's main thread until shutdown: hub <-> Master.step, never a blocking MPI call.

    on_ready() is called once every worker has said READY (and /health says ok)."""
    hub = gateway.hub
    dispatcher = Dispatcher([], None, cfg.concurrency)
    master = Master(comm, dispatcher, hub.on_result, on_tokens=hub.on_tokens)
    backoff = backoff or m.Backoff(max_s=2e-3)
    t_stop = t_cancel = None
    t_snap = 0.0
    while True:
        hub.wake.clear()
        ops = hub.take()
        for op, arg in ops:
            if op == "submit":
                dispatcher.add(arg)
            else:
                master.cancel(arg)
        moved = master.step() or bool(ops)
        hub.flush()
        now = time.time()
        if now - t_snap > SNAPSHOT_EVERY or (on_ready is not None and len(master.greeted) == len(master.workers)):
            hub.snapshot = _snapshot(dispatcher)
            t_snap = now
            if on_ready is not None and len(master.greeted) == len(master.workers):
                on_ready()
                on_ready = None
        if signals.event.is_set() and t_stop is None:
            t_stop = now
            gateway.stop_accepting()
            log.info("serve: not accepting new requests; %d in flight", dispatcher.n_total - dispatcher.n_finished)
        if t_stop is not None:
            pending = dispatcher.n_total - dispatcher.n_finished
            if pending == 0:
                break
            if t_cancel is None and (now > t_stop + cfg.shutdown_grace or signals.count > 1):
                t_cancel = now
                ids = list(dispatcher.outstanding) + [r.id for r in dispatcher.queued()]
                log.info("serve: cancelling %d requests still in flight", len(ids))
                for rid in ids:
                    master.cancel(rid)
            if t_cancel is not None and now > t_cancel + CANCEL_WAIT:
                log.warning("serve: %d requests did not end after cancel; stopping anyway", pending)
                break
        if moved:
            backoff.reset()
        else:
            # a new request from the gateway sets `wake`; worker messages are polled
            hub.wake.wait(max(min(dispatcher.next_wakeup() - now, backoff.next()), 0.0))
    hub.flush()
    master.shutdown(backoff)


def _snapshot(dispatcher) -> dict:
    busy: dict[int, int] = {}
    for worker, _, _ in dispatcher.outstanding.values():
        busy[worker] = busy.get(worker, 0) + 1
    workers = {w: {"busy": busy.get(w, 0), "slots": busy.get(w, 0) + free} for w, free in dispatcher.credits.items()}
    return {"queue": len(dispatcher.queued()), "workers": workers}
