"""The rank-local service of a serve worker: HTTP `GET /health` and `GET /metrics` of this rank.

Runs on its own asyncio thread (the worker's main thread keeps MPI and the
backend); bound to loopback unless configured otherwise, on --port-base + rank.
The numbers come from `CountingBackend`, a pass-through wrapper the worker
loop drives; the service only reads them.
"""

import asyncio
import threading
import time

from llcuda_mpi.backends.base import Backend, Completion
from llcuda_mpi.transport.httpd import HttpConnection, HttpError, HttpLimits, serve_connection
from llcuda_mpi.transport.metrics import CONTENT_TYPE, Histogram, Text


class CountingBackend(Backend):
    """Forwards to `inner`; counts requests, tokens and outcomes (main thread writes, service reads)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name = inner.name
        self.submitted = 0
        self.completed: dict[str, int] = {}
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.e2e = Histogram()
        self.t_last = 0.0              # last completion (time.time())

    def submit(self, request):
        self.submitted += 1
        self.inner.submit(request)

    def poll(self, timeout):
        events = self.inner.poll(timeout)
        for e in events:
            if isinstance(e, Completion):
                self.completed[e.status] = self.completed.get(e.status, 0) + 1
                self.output_tokens += e.n_output
                self.prompt_tokens += e.n_prompt
                self.t_last = e.t_end
                if e.status == "ok" and e.t_end >= e.t_submit > 0:
                    self.e2e.observe(e.t_end - e.t_submit)
        return events

    def cancel(self, request_id):
        self.inner.cancel(request_id)

    def busy(self):
        return self.inner.busy()

    def describe(self):
        return self.inner.describe()

    def close(self):
        self.inner.close()

    @property
    def running(self) -> int:
        return self.submitted - sum(self.completed.values())


class RankService:
    def __init__(self, rank: int, counters: CountingBackend, info: dict, host: str = "127.0.0.1",
                 port: int = 0, limits: HttpLimits | None = None):
        self.rank, self.counters, self.info = rank, counters, info
        self.host, self.port = host, port
        self.limits = limits or HttpLimits()
        self.t_start = time.time()
        self.stopping = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"rank{rank}-service", daemon=True)
        self._server = None
        self.address = None

    def start(self) -> tuple[str, int]:
        """Bind and serve; OSError (port in use...) propagates to the caller."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10.0)
        except BaseException:
            self.close()
            raise
        return self.address

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()

    async def _listen(self):
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        self.address = self._server.sockets[0].getsockname()[:2]

    async def _stop(self):
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def _on_connect(self, reader, writer):
        peer = "%s:%s" % (writer.get_extra_info("peername") or ("?", "?"))[:2]
        try:
            await serve_connection(HttpConnection(reader, writer, self.limits, b"", peer), self._route)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _route(self, request, conn):
        if request.method != "GET":
            raise HttpError(405, f"{request.method} not allowed")
        if request.path == "/health":
            status = "stopping" if self.stopping else "ok"
            await conn.respond_json(200, {"status": status, "rank": self.rank, "running": self.counters.running,
                                          **self.info})
        elif request.path == "/metrics":
            await conn.respond(200, self.render().encode(), CONTENT_TYPE)
        else:
            raise HttpError(404, f"no such endpoint: {request.path} (try /health, /metrics)", "not_found_error")

    def render(self) -> str:
        c, t = self.counters, Text()
        labels = {"rank": self.rank}
        t.metric("rank_requests_submitted_total", "counter", "Requests handed to this rank's backend",
                 [(labels, c.submitted)])
        t.metric("rank_requests_completed_total", "counter", "Requests this rank finished, by status",
                 [({**labels, "status": s}, n) for s, n in sorted(c.completed.items())])
        t.metric("rank_requests_running", "gauge", "Requests in this rank's backend", [(labels, c.running)])
        t.metric("rank_prompt_tokens_total", "counter", "Prompt tokens processed", [(labels, c.prompt_tokens)])
        t.metric("rank_tokens_predicted_total", "counter", "Output tokens generated", [(labels, c.output_tokens)])
        t.metric("rank_request_duration_seconds", "histogram", "End-to-end time of successful requests",
                 [(labels, c.e2e)])
        t.metric("rank_uptime_seconds", "gauge", "Seconds since this rank's service started",
                 [(labels, time.time() - self.t_start)])
        return t.render()
