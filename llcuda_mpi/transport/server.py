"""The serve gateway: one asyncio loop in its own thread, one TCP port, two protocols.

The first 4 bytes of a connection choose: the binary protocol's magic
b"LLCM" (protocol.py), anything else is HTTP/1.1 (httpd.py + http.py). The
loop never calls MPI: requests and events cross to the MPI main thread
through `Hub` (hub.py).

    gw = Gateway(GatewayConfig(port=8080))
    host, port = gw.start()          # binds, starts the loop thread
    ... main thread: gw.hub.take() / hub.on_tokens / hub.on_result / hub.flush()
    gw.stop_accepting()              # SIGTERM: refuse new work, keep streaming
    gw.close()                       # drop connections, stop the loop, join the thread
"""

import asyncio
import resource
import threading
import time
from dataclasses import dataclass, field

from llcuda_mpi import __version__, log
from llcuda_mpi.backends.base import TokenEvent
from llcuda_mpi.transport import protocol as p
from llcuda_mpi.transport import shape
from llcuda_mpi.transport.http import HttpApi
from llcuda_mpi.transport.httpd import HttpConnection, HttpLimits, serve_connection
from llcuda_mpi.transport.hub import Hub
from llcuda_mpi.transport.metrics import GatewayMetrics

WRITE_BUFFER_MAX = 8 << 20     # bytes queued to a binary client that does not read: drop it


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080                         # 0 = any free port
    model: str = "llcuda-mpi"                # name in /props, /v1/models and responses
    request_timeout: float = 600.0           # seconds per generation (Request.timeout)
    max_connections: int = 4096              # open client connections; more are closed at once
    limits: p.Limits = field(default_factory=p.Limits)
    http: HttpLimits = field(default_factory=HttpLimits)


def raise_fd_limit(want: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `want` (never above the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class Gateway:
    def __init__(self, config: GatewayConfig | None = None):
        self.config = config or GatewayConfig()
        self.loop = asyncio.new_event_loop()
        self.metrics = GatewayMetrics()
        self.hub = Hub(self.loop, timeout=self.config.request_timeout, on_complete=self.metrics.observe)
        self.api = HttpApi(self)
        self.address: tuple[str, int] | None = None
        self._server = None
        self._conns: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.closing = False                   # stop_accepting() was called

    # ---------------------------------------------------------------- any thread
    def start(self) -> tuple[str, int]:
        raise_fd_limit(self.config.max_connections + 256)
        self._thread.start()
        self._call(self._listen())
        return self.address

    def stop_accepting(self) -> None:
        """Close the listening socket and refuse new generations; running ones go on."""
        self.hub.accepting = False
        self.closing = True
        self._call(self._stop_listening())

    def close(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        self.hub.accepting = False
        self.closing = True
        try:
            self._call(self._shutdown(), timeout)
        except TimeoutError:
            log.warning("gateway: connections did not close within %g s", timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def unavailable(self) -> str:
        """Why /health is not ok ("" when it is)."""
        if self.closing:
            return "shutting down"
        if not self.hub.snapshot.get("workers"):
            return "no live worker"
        return ""

    # ---------------------------------------------------------------- loop thread
    async def _listen(self):
        c = self.config
        self._server = await asyncio.start_server(self._on_connect, c.host, c.port, backlog=1024,
                                                  limit=c.limits.max_frame + p.HEADER_SIZE)
        self.address = self._server.sockets[0].getsockname()[:2]

    async def _stop_listening(self):
        if self._server is not None:
            self._server.close()

    async def _shutdown(self):
        await self._stop_listening()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=2.0)
        await asyncio.sleep(0)       # let the cancelled handlers' writers close

    def tasks(self) -> int:
        """asyncio tasks alive in the loop (leak checks in tests)."""
        return self._call(self._count_tasks())

    async def _count_tasks(self):
        return len(asyncio.all_tasks()) - 1

    async def _on_connect(self, reader, writer):
        task = asyncio.current_task()
        peer = "%s:%s" % (writer.get_extra_info("peername") or ("?", "?"))[:2]
        m = self.metrics
        if len(self._conns) >= self.config.max_connections:
            m.reject("too_many_connections")
            log.warning("gateway: %s refused: %d connections open", peer, len(self._conns))
            writer.close()
            return
        self._conns.add(task)
        m.connections_open += 1
        m.connections_total += 1
        try:
            async with asyncio.timeout(self.config.http.header_timeout):
                first = await reader.readexactly(4)
            if first == p.MAGIC:
                await BinarySession(self, reader, writer, peer).run(first)
            else:
                conn = HttpConnection(reader, writer, self.config.http, first, peer)
                await serve_connection(conn, self.api.route)
        except TimeoutError:
            m.reject("header_timeout")
            log.warning("gateway: %s sent nothing for %g s; closing", peer, self.config.http.header_timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass                                   # closed before saying anything / reset
        # A bug in a handler must not take the gateway down: log it loudly, drop this connection.
        except Exception:  # noqa: BLE001 - connection boundary
            m.reject("internal_error")
            log.get().exception("gateway: %s: internal error; closing the connection", peer)
        finally:
            m.connections_open -= 1
            self._conns.discard(task)
            writer.close()


class BinarySession:
    """One binary-protocol connection: frames in, token/final/error frames out."""

    def __init__(self, gw: Gateway, reader, writer, peer: str):
        self.gw, self.reader, self.writer, self.peer = gw, reader, writer, peer
        self.limits = gw.config.limits
        self.streams: dict[int, int] = {}       # stream id -> hub request id

    async def run(self, prefix: bytes) -> None:
        m = self.gw.metrics
        try:
            while True:
                # between frames: idle limit (none while generations run); inside one: header_timeout
                idle = None if self.streams else self.gw.config.http.idle_timeout
                if not prefix:
                    try:
                        async with asyncio.timeout(idle):
                            prefix = await self.reader.readexactly(1)
                    except TimeoutError:
                        log.info("binary %s: idle for %g s; closing", self.peer, idle)
                        return
                    except asyncio.IncompleteReadError:
                        return                                       # closed between frames
                try:
                    async with asyncio.timeout(self.gw.config.http.header_timeout):
                        frame = await p.read_frame(self.reader, self.limits, prefix)
                except TimeoutError:
                    m.reject("frame_timeout")
                    log.warning("binary %s: frame not complete within %g s (slow client); closing", self.peer,
                                self.gw.config.http.header_timeout)
                    return
                prefix = b""
                try:
                    self._handle(frame)
                except p.ProtocolError as e:
                    if e.fatal:
                        raise
                    m.reject(f"E{e.code}")
                    self.writer.write(p.encode_error(frame.stream, e.code, str(e)))
                if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_MAX:
                    log.warning("binary %s: client does not read (%d bytes queued); closing", self.peer,
                                self.writer.transport.get_write_buffer_size())
                    m.reject("slow_reader")
                    return
                await self.writer.drain()
        except p.ProtocolError as e:
            m.reject(f"E{e.code}")
            log.warning("binary %s: protocol error %d: %s; closing", self.peer, e.code, e)
            self.writer.write(p.encode_error(0, e.code, str(e)))
        except asyncio.IncompleteReadError as e:
            m.reject("truncated_frame")
            log.warning("binary %s: connection closed inside a frame (%d of %s bytes)", self.peer,
                        len(e.partial), e.expected)
        except ConnectionError as e:
            log.info("binary %s: %s", self.peer, e)
        finally:
            for rid in self.streams.values():
                self.gw.hub.cancel(rid, detach=True)
                m.count_request("binary", "disconnected")
            self.streams.clear()

    def _handle(self, frame: p.Frame) -> None:
        if frame.type == p.PING:
            self.writer.write(p.encode(p.PONG, frame.stream, frame.payload))
        elif frame.type == p.HELLO:
            frame.json()
            self.writer.write(p.encode_json(p.HELLO, 0, {
                "server": "llcuda-mpi", "version": __version__, "protocol": p.VERSION,
                "model": self.gw.config.model, "limits": self.limits.to_dict()}))
        elif frame.type == p.GENERATE:
            self._generate(frame)
        elif frame.type == p.CANCEL:
            rid = self.streams.get(frame.stream)
            if rid is not None:
                self.gw.hub.cancel(rid)          # its completion ("cancelled") ends the stream
        elif frame.type != p.PONG:
            raise p.ProtocolError(p.E_BAD_FRAME, f"a client may not send {frame.name} frames")

    def _generate(self, frame: p.Frame) -> None:
        sid = frame.stream
        if sid == 0:
            raise p.ProtocolError(p.E_BAD_REQUEST, "generate needs a stream id > 0")
        if sid in self.streams:
            raise p.ProtocolError(p.E_DUPLICATE_STREAM, f"stream {sid} is already running")
        if len(self.streams) >= self.limits.max_streams:
            raise p.ProtocolError(p.E_TOO_MANY_STREAMS, f"{self.limits.max_streams} streams already running "
                                  "on this connection")
        try:
            params = p.generation_params(frame.json(), self.limits)
        except (p.BadRequest, p.ProtocolError) as e:      # the framing is intact: only this stream fails
            raise p.ProtocolError(p.E_BAD_REQUEST, str(e)) from None
        stream, t_received = params["stream"], time.time()

        def sink(event, rank):
            if isinstance(event, TokenEvent):
                if stream:
                    self.writer.write(p.encode_token(sid, event.t, event.text, event.token_ids, event.n_tokens))
                return
            self.streams.pop(sid, None)
            outcome = shape.outcome(event)
            self.gw.metrics.count_request("binary", outcome)
            if event.status == "ok":
                self.writer.write(p.encode_json(p.FINAL, sid, shape.final(event, rank, t_received)))
            else:
                self.writer.write(p.encode_error(sid, shape.error_code(event)[0], event.error or event.status))

        rid = self.gw.hub.submit(params, sink)
        if rid is None:
            self.gw.metrics.count_request("binary", "rejected")
            raise p.ProtocolError(p.E_SHUTTING_DOWN, "the server is shutting down")
        self.streams[sid] = rid
