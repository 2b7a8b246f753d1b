"""Scheduling policy, pure (no MPI, no clock): the master's bookkeeping.

Pull-based dispatch with credits: a worker announces `slots` free slots
(`on_worker`); each request sent uses one; each completion (or a master-side
timeout) gives it back. `assign(now)` hands out the requests that may start
now, round-robin over workers with free slots, under the global
`concurrency` cap and, in open loop, each request's arrival time.

Phases: the `warmup` requests (flag on Request) run first; measured requests
are held back until every warmup request has finished, then the measured
window starts (`t_start`) and arrival offsets count from it.

Timeouts: a request sent at t has a master deadline t + request.timeout +
grace (the backend normally reports its own timeout first, with a better
message). `expire(now)` returns the overdue ones, and frees their slots: the
worker is told to cancel, and its late completion is ignored (`on_done`
returns None for it).
"""

import heapq
import math
from collections import deque

import numpy as np

from llcuda_mpi.backends.base import Request


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Arrival offsets (s) of `n` requests; rate = inf gives all zeros (closed loop).

    Inter-arrival gaps are gamma(shape=burstiness, scale=1/(rate*burstiness)):
    mean 1/rate; burstiness 1 is a Poisson process, < 1 burstier, > 1 steadier.
    The first request arrives at 0.
    """
    if not rate > 0:
        raise ValueError(f"--request-rate must be > 0 (or inf), got {rate}")
    if not burstiness > 0:
        raise ValueError(f"--burstiness must be > 0, got {burstiness}")
    if math.isinf(rate) or n == 0:
        return np.zeros(n)
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), n)
    return np.concatenate(([0.0], np.cumsum(gaps[:-1])))


class Dispatcher:
    def __init__(self, requests: list[Request], arrivals=None, concurrency: int = 0,
                 timeout_grace: float = 1.0):
        """`requests` in dispatch order, warmup ones first; `arrivals[i]` is the
        offset of the i-th measured request (None: closed loop); concurrency 0 = no cap."""
        warm = [r for r in requests if r.warmup]
        measured = [r for r in requests if not r.warmup]
        if requests[:len(warm)] != warm:
            raise ValueError("warmup requests must come before measured ones")
        arrivals = np.zeros(len(measured)) if arrivals is None else np.asarray(arrivals, dtype=float)
        if len(arrivals) != len(measured):
            raise ValueError(f"{len(arrivals)} arrival times for {len(measured)} measured requests")
        if len({r.id for r in requests}) != len(requests):
            raise ValueError("request ids must be unique")
        self._warm = deque(warm)
        self._measured = deque(zip(arrivals.tolist(), measured))
        self.concurrency = concurrency if concurrency and concurrency > 0 else math.inf
        self.timeout_grace = timeout_grace
        self.n_total = len(requests)
        self.warmup_left = len(warm)          # warmup requests not yet finished
        self.t_start = None                   # start of the measured window
        self.credits: dict[int, int] = {}     # worker -> free slots
        self._ring: deque[int] = deque()      # workers with free slots (each at most once)
        self.outstanding: dict[int, tuple[int, float, Request]] = {}  # id -> (worker, deadline, request)
        self._deadlines: list[tuple[float, int]] = []                 # heap, lazily pruned
        self.n_finished = 0

    def add(self, request: Request, arrival: float = 0.0) -> None:
        """Queue one more measured request (a serve job); `arrival` is an offset from t_start."""
        if request.warmup:
            raise ValueError("add() takes measured requests only")
        if request.id in self.outstanding or any(r.id == request.id for _, r in self._measured):
            raise ValueError(f"request id {request.id} is already queued or running")
        self._measured.append((arrival, request))
        self.n_total += 1

    def cancel(self, request_id: int):
        """A client gave up on a request (serve): ("queued", request) once removed from the
        queue (finished now, no worker involved), ("running", worker) for one sent out (its
        worker's completion still comes), None if unknown or already finished."""
        entry = self.outstanding.get(request_id)
        if entry is not None:
            return "running", entry[0]
        for queue, measured in ((self._warm, False), (self._measured, True)):
            for i, item in enumerate(queue):
                request = item[1] if measured else item
                if request.id == request_id:
                    del queue[i]
                    self.n_finished += 1
                    self.warmup_left -= request.warmup
                    return "queued", request
        return None

    def queued(self) -> list[Request]:
        """Requests not yet sent to a worker (serve: metrics, shutdown)."""
        return list(self._warm) + [r for _, r in self._measured]

    # ---------------------------------------------------------------- workers
    def on_worker(self, worker: int, slots: int) -> None:
        """A worker announced itself with `slots` free slots."""
        if slots < 1:
            raise ValueError(f"worker {worker} announced {slots} slots")
        self.credits[worker] = slots
        self._ring.append(worker)

    def live_workers(self) -> list[int]:
        return list(self.credits)

    def on_worker_failed(self, worker: int) -> list[Request]:
        """Retire a worker; returns its requests still outstanding (to record as errors)."""
        self.credits.pop(worker, None)
        if worker in self._ring:
            self._ring.remove(worker)
        lost = [rid for rid, (w, _, _) in self.outstanding.items() if w == worker]
        return [self._finish(rid) for rid in lost]

    def _give_back(self, worker: int) -> None:
        if worker in self.credits:
            self.credits[worker] += 1
            if self.credits[worker] == 1:
                self._ring.append(worker)

    # ---------------------------------------------------------------- requests
    def _next_ready(self, now: float):
        """The queue the next request comes from, if one may start at `now`."""
        if self._warm:
            return self._warm
        if self.warmup_left > 0 or not self._measured:
            return None
        if self.t_start is None:
            self.t_start = now
        return self._measured if self.t_start + self._measured[0][0] <= now else None

    def assign(self, now: float) -> dict[int, list[Request]]:
        """Requests to send now: {worker: [requests]}."""
        out: dict[int, list[Request]] = {}
        while self._ring and len(self.outstanding) < self.concurrency:
            queue = self._next_ready(now)
            if queue is None:
                break
            item = queue.popleft()
            request = item if queue is self._warm else item[1]
            worker = self._ring.popleft()
            self.credits[worker] -= 1
            if self.credits[worker] > 0:
                self._ring.append(worker)
            deadline = now + request.timeout + self.timeout_grace
            self.outstanding[request.id] = (worker, deadline, request)
            heapq.heappush(self._deadlines, (deadline, request.id))
            out.setdefault(worker, []).append(request)
        return out

    def _finish(self, request_id: int) -> Request:
        _, _, request = self.outstanding.pop(request_id)
        self.n_finished += 1
        if request.warmup:
            self.warmup_left -= 1
        return request

    def on_done(self, worker: int, request_id: int) -> Request | None:
        """A completion arrived; the request, or None if the master already gave up on it."""
        entry = self.outstanding.get(request_id)
        if entry is None or entry[0] != worker:
            return None
        self._give_back(worker)
        return self._finish(request_id)

    def expire(self, now: float) -> list[tuple[int, Request]]:
        """(worker, request) pairs past their master deadline; their slots are freed."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            entry = self.outstanding.get(rid)
            if entry is None:
                continue
            worker = entry[0]
            self._give_back(worker)
            out.append((worker, self._finish(rid)))
        return out

    def fail_pending(self) -> list[Request]:
        """With no live worker left, the requests never sent (to record as errors)."""
        if self.credits:
            return []
        lost = list(self._warm) + [r for _, r in self._measured]
        self._warm.clear()
        self._measured.clear()
        self.n_finished += len(lost)
        self.warmup_left -= sum(r.warmup for r in lost)
        return lost

    # ---------------------------------------------------------------- timing
    def next_wakeup(self) -> float:
        """Absolute time of the next sendable arrival or deadline (inf if none)."""
        t = math.inf
        while self._deadlines and self._deadlines[0][1] not in self.outstanding:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            t = self._deadlines[0][0]
        # The next arrival matters only if it could be sent (a free slot, under the
        # cap); otherwise a completion comes first, and waiting for it is not a spin.
        if (not self._warm and self.warmup_left == 0 and self._measured and self.t_start is not None
                and self._ring and len(self.outstanding) < self.concurrency):
            t = min(t, self.t_start + self._measured[0][0])
        return t

    def done(self) -> bool:
        return self.n_finished == self.n_total
