"""The hand-over between the gateway's asyncio thread and the MPI main thread.

Only the main thread calls MPI; only the loop thread touches sockets. They
meet here:

  loop thread                          main thread (MPI master loop)
  submit(params, sink) -> id  --->     take(): [("submit", Request) | ("cancel", id)]
  cancel(id, detach)          --->
  sink(event, rank)           <---     on_tokens / on_result (buffered), flush():
                                       one loop.call_soon_threadsafe per turn

`wake` is set whenever something is queued for the main thread, so its idle
wait ends at once. A sink gets TokenEvents, then exactly one Completion
(status "error"/"cancelled" included) unless it was detached (its client went
away). `on_complete(completion, rank)` sees every completion, detached or not
(the metrics).
"""

import itertools
import queue
import threading

from llcuda_mpi.backends.base import Completion, Request, TokenEvent


class Hub:
    def __init__(self, loop, *, timeout: float = 600.0, on_complete=None):
        self.loop = loop
        self.timeout = timeout
        self.on_complete = on_complete
        self.wake = threading.Event()
        self.accepting = True                 # set False by the main thread at shutdown
        self.snapshot: dict = {"queue": 0, "workers": {}}   # published by the main thread
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._sinks: dict = {}                # request id -> sink (loop thread only)
        self._outbox: list = []               # main thread only

    # ---------------------------------------------------------------- loop thread
    def submit(self, params: dict, sink) -> int | None:
        """Queue one generation; its id, or None when the job is shutting down."""
        if not self.accepting:
            return None
        rid = next(self._ids)
        self._sinks[rid] = sink
        self._inbox.put(("submit", Request(id=rid, timeout=self.timeout, **params)))
        self.wake.set()
        return rid

    def cancel(self, rid: int, detach: bool = False) -> None:
        """Ask for a cancel; its Completion ("cancelled") still comes unless `detach`."""
        if rid not in self._sinks:
            return
        if detach:
            del self._sinks[rid]
        self._inbox.put(("cancel", rid))
        self.wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._sinks)

    def _deliver(self, batch: list) -> None:
        for event, rank in batch:
            if isinstance(event, Completion):
                if self.on_complete is not None:
                    self.on_complete(event, rank)
                sink = self._sinks.pop(event.request_id, None)
            else:
                sink = self._sinks.get(event.request_id)
            if sink is not None:
                sink(event, rank)

    # ---------------------------------------------------------------- main thread
    def take(self) -> list:
        ops = []
        while True:
            try:
                ops.append(self._inbox.get_nowait())
            except queue.Empty:
                return ops

    def on_tokens(self, rank: int, events: list[TokenEvent]) -> None:
        self._outbox.extend((e, rank) for e in events)

    def on_result(self, request: Request, completion: Completion, rank: int) -> None:
        self._outbox.append((completion, rank))

    def flush(self) -> None:
        """Hand this turn's events to the loop thread (one wake-up of the loop)."""
        if self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                self.loop.call_soon_threadsafe(self._deliver, batch)
            except RuntimeError:
                pass                  # the loop is closed: the gateway is gone, nobody listens
