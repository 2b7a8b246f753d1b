"""The worker loop: the thin MPI shell around one backend.

One loop, main thread only:
  1. receive everything the master sent (Iprobe, never a blocking recv);
  2. step the backend: `poll(timeout)` if it has work, else back off;
  3. send this turn's completions (and token events when forwarding) as one
     batched isend each.
A backend that raises in poll() has failed: every request it held completes
as an error with the exception text, the worker tells the master to stop
sending (RETIRE) and from then on answers any request with an error.
"""

import time
from dataclasses import dataclass

from llcuda_mpi import log
from llcuda_mpi.backends.base import Completion, TokenEvent
from llcuda_mpi.scheduler import messages as m


@dataclass
class WorkerStats:
    n_ok: int = 0
    n_error: int = 0
    n_timeout: int = 0
    output_tokens: int = 0
    busy_s: float = 0.0       # wall time with at least one request in the backend
    n_messages_in: int = 0
    n_messages_out: int = 0

    def count(self, c: Completion) -> None:
        setattr(self, f"n_{c.status}", getattr(self, f"n_{c.status}") + 1)
        self.output_tokens += c.n_output


def _error(request_id: int, text: str) -> Completion:
    now = time.time()
    return Completion(request_id, "error", text, t_submit=now, t_end=now)


def run_worker(comm, backend, slots: int, *, master: int = 0, forward_tokens: bool = False,
               busy_poll_s: float = 1e-3, backoff: m.Backoff | None = None) -> WorkerStats:
    """Serve the master until it says STOP; returns this worker's statistics."""
    stats = WorkerStats()
    backoff = backoff or m.Backoff()
    sends: list = [comm.isend((m.READY, slots), dest=master, tag=m.TAG)]
    running: set[int] = set()
    failed = ""             # the backend's failure, once it failed
    retired = False         # RETIRE sent
    stopping = False
    t_busy = None
    while not stopping:
        done: list[Completion] = []
        tokens: list[TokenEvent] = []
        got = False
        while comm.iprobe(source=master, tag=m.TAG):
            kind, payload = comm.recv(source=master, tag=m.TAG)
            stats.n_messages_in += 1
            got = True
            if kind == m.RUN:
                for request in payload:
                    if failed:
                        done.append(_error(request.id, f"worker retired: {failed}"))
                        continue
                    try:
                        backend.submit(request)
                        running.add(request.id)
                    # A per-request failure is data: record it, keep serving.
                    except Exception as exc:  # noqa: BLE001 - backend boundary
                        done.append(_error(request.id, f"submit failed: {type(exc).__name__}: {exc}"))
            elif kind == m.CANCEL:
                for rid in payload:
                    if rid in running and not failed:
                        backend.cancel(rid)
            elif kind == m.STOP:
                stopping = True
        if running and not failed:
            if t_busy is None:
                t_busy = time.time()
            try:
                events = backend.poll(0.0 if got else busy_poll_s)
            # The backend died: its requests become errors, the job goes on without it.
            except Exception as exc:  # noqa: BLE001 - backend boundary
                failed = f"backend failed: {type(exc).__name__}: {exc}"
                log.error("%s; retiring this worker", failed)
                done.extend(_error(rid, failed) for rid in sorted(running))
                running.clear()
                events = []
            for ev in events:
                if isinstance(ev, Completion):
                    running.discard(ev.request_id)
                    done.append(ev)
                elif forward_tokens:
                    tokens.append(ev)
        if not running and t_busy is not None:
            stats.busy_s += time.time() - t_busy
            t_busy = None
        out = []
        if tokens:
            out.append((m.TOKENS, tokens))
        if done:
            for c in done:
                stats.count(c)
            out.append((m.DONE, done))
        if failed and not retired:
            out.append((m.RETIRE, failed))
            retired = True
        for msg in out:
            sends.append(comm.isend(msg, dest=master, tag=m.TAG))
        stats.n_messages_out += len(out)
        if out or got:
            backoff.reset()
            sends = m.prune_sends(sends)
        elif not running or failed:
            backoff.sleep()
    if t_busy is not None:
        stats.busy_s += time.time() - t_busy
    for rid in running:          # stalled requests the master gave up on
        backend.cancel(rid)
    sends.append(comm.isend((m.BYE, None), dest=master, tag=m.TAG))
    stats.n_messages_out += 2  # READY and BYE
    m.wait_sends(sends, backoff)
    return stats
