"""A gateway's main-thread side without MPI: one backend in this process.

For tests and benchmarks of the gateway alone (`serve` proper runs the MPI
master loop in scheduler/serve.py instead). `LocalRunner(gateway.hub,
backend).start()` plays rank 0 and one worker in a background thread.
"""

import threading
import time

from llcuda_mpi.backends.base import Completion


class LocalRunner:
    def __init__(self, hub, backend, slots: int = 1 << 30, rank: int = 1):
        self.hub, self.backend, self.slots, self.rank = hub, backend, slots, rank
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="local-runner", daemon=True)
        self.cancelled: list[int] = []               # ids the runner was asked to cancel

    def start(self) -> "LocalRunner":
        self.hub.snapshot = {"queue": 0, "workers": {self.rank: {"busy": 0, "slots": self.slots}}}
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.hub.wake.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        hub, backend = self.hub, self.backend
        running: set[int] = set()
        while not self._stop.is_set():
            hub.wake.clear()
            for op, arg in hub.take():
                if op == "submit":
                    backend.submit(arg)
                    running.add(arg.id)
                elif arg in running:
                    self.cancelled.append(arg)
                    backend.cancel(arg)
            if running:
                events = backend.poll(0.0005)
                tokens = [e for e in events if not isinstance(e, Completion)]
                if tokens:
                    hub.on_tokens(self.rank, tokens)
                for e in events:
                    if isinstance(e, Completion):
                        running.discard(e.request_id)
                        hub.on_result(None, e, self.rank)
                hub.snapshot = {"queue": 0, "workers": {self.rank: {"busy": len(running), "slots": self.slots}}}
                hub.flush()
            else:
                hub.wake.wait(0.05)
        for rid in running:
            backend.cancel(rid)
        time.sleep(0)
