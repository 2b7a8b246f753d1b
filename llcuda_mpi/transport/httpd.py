"""A strict HTTP/1.1 server connection on asyncio streams, parsed by h11.

h11 (python-hyper; already here as httpx's transport dependency, pinned in
setup.cfg) does the parsing, framing (Content-Length / chunked) and keep-alive
state; this module adds what a server facing the open network needs on top:

  - a limit on the request head (h11's max_incomplete_event_size) and body;
  - slow-loris protection: a request must arrive whole within
    `header_timeout` of its first byte; an idle keep-alive connection is
    closed after `idle_timeout`;
  - a write timeout: a client that stops reading is dropped;
  - error answers in llama-server's JSON shape, then close; the reason is logged.

Routes are plain `async def handler(request, conn)` functions (see http.py).
"""

import asyncio
import json
from dataclasses import dataclass

import h11

from llcuda_mpi import log

SERVER = b"llcuda-mpi"
JSON_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class HttpLimits:
    max_head: int = 16 * 1024          # bytes of request line + headers
    max_body: int = 1 << 20            # bytes of a request body
    header_timeout: float = 10.0       # seconds for a whole request from its first byte
    idle_timeout: float = 60.0         # seconds a keep-alive connection may wait between requests
    write_timeout: float = 60.0        # seconds a client may leave our writes unread


class HttpError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.type = status, type_


@dataclass
class HttpRequest:
    method: str
    path: str
    query: str
    headers: dict
    body: bytes

    def json(self) -> dict:
        try:
            obj = json.loads(self.body.decode("utf-8")) if self.body else {}
        except (UnicodeDecodeError, ValueError) as e:
            raise HttpError(400, f"request body is not UTF-8 JSON: {e}") from None
        if not isinstance(obj, dict):
            raise HttpError(400, "request body must be a JSON object")
        return obj


def error_body(status: int, message: str, type_: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"code": status, "message": message, "type": type_}}).encode()


class HttpConnection:
    def __init__(self, reader, writer, limits: HttpLimits, prefix: bytes = b"", peer: str = "?"):
        self.reader, self.writer, self.limits, self.peer = reader, writer, limits, peer
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        self._started = bool(prefix)             # bytes of the next request already came
        self._out = bytearray()                  # framed bytes not yet written (a deferred head)
        self._t_first = asyncio.get_running_loop().time()
        if prefix:
            self._h11.receive_data(prefix)

    # ---------------------------------------------------------------- reading
    async def next_request(self) -> HttpRequest | None:
        """The next whole request, or None when the connection is done (closed, timed out, refused)."""
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._started = False
        if conn.our_state is not h11.IDLE:
            return None
        head, body = None, bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if not await self._read():
                        return None
                elif isinstance(event, h11.Request):
                    head = event
                    size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                    if size > self.limits.max_head:      # h11 bounds only a head that arrives in pieces
                        raise HttpError(431, f"request head of {size} bytes exceeds {self.limits.max_head}")
                    length = dict(event.headers).get(b"content-length")
                    if length is not None and int(length) > self.limits.max_body:
                        raise HttpError(413, f"request body of {int(length)} bytes exceeds {self.limits.max_body}")
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.limits.max_body:
                        raise HttpError(413, f"request body exceeds {self.limits.max_body} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    target = head.target.decode("latin-1")
                    path, _, query = target.partition("?")
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
                    return HttpRequest(head.method.decode("latin-1"), path, query, headers, bytes(body))
                else:                                            # ConnectionClosed
                    return None
        except h11.RemoteProtocolError as e:
            await self.fail(e.error_status_hint, f"bad HTTP request: {e}")
        except HttpError as e:
            await self.fail(e.status, str(e), e.type)
        return None

    async def _read(self) -> bool:
        """Feed h11 one read; False when the peer is gone or too slow (the reason is logged/answered)."""
        loop = asyncio.get_running_loop()
        if self._started:
            limit = self._t_first + self.limits.header_timeout - loop.time()
        else:
            limit = self.limits.idle_timeout
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                data = await self.reader.read(65536)
        except TimeoutError:
            if self._started:
                log.warning("http %s: request not complete within %g s (slow client); closing",
                            self.peer, self.limits.header_timeout)
                await self.fail(408, f"request not complete within {self.limits.header_timeout:g} s", log_it=False)
            return False
        except ConnectionError:
            return False
        if not self._started and data:
            self._started, self._t_first = True, loop.time()
        self._h11.receive_data(data)
        return True

    async def watch_disconnect(self) -> None:
        """Returns when the client closes (run it beside a long response; cancel it after)."""
        buffered = 0
        while True:
            try:
                data = await self.reader.read(65536)
            except ConnectionError:
                return
            if not data:
                return
            buffered += len(data)                  # pipelined next request: keep it for h11
            if buffered > self.limits.max_head + self.limits.max_body:
                return
            self._h11.receive_data(data)

    # ---------------------------------------------------------------- writing
    def _headers(self, content_type, length=None, extra=()):
        headers = [(b"server", SERVER), (b"content-type", content_type.encode())]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        return headers + [(k.encode(), v.encode()) for k, v in extra]

    async def _write(self, *events, defer=False) -> None:
        """Frame `events` with h11 and write them in one send (or keep them for the next one)."""
        if self.writer.is_closing():
            raise ConnectionResetError("client went away")
        for event in events:
            self._out += self._h11.send(event) or b""
        if defer:
            return
        data, self._out = bytes(self._out), bytearray()
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise ConnectionResetError(f"client did not read for {self.limits.write_timeout:g} s") from None

    async def respond(self, status: int, body: bytes, content_type: str = JSON_TYPE, extra=()) -> None:
        await self._write(h11.Response(status_code=status, headers=self._headers(content_type, len(body), extra)),
                          h11.Data(data=body), h11.EndOfMessage())

    async def respond_json(self, status: int, obj) -> None:
        await self.respond(status, json.dumps(obj, separators=(",", ":")).encode())

    async def start_stream(self, status: int, content_type: str, extra=()) -> None:
        """The response head; it leaves with the first `send` (one packet instead of two)."""
        await self._write(h11.Response(status_code=status, headers=self._headers(content_type, None, extra)),
                          defer=True)

    async def send(self, data: bytes) -> None:
        await self._write(h11.Data(data=data))

    async def end_stream(self, data: bytes = b"") -> None:
        await self._write(*([h11.Data(data=data)] if data else []), h11.EndOfMessage())

    async def fail(self, status: int, message: str, type_: str = "invalid_request_error", log_it=True) -> None:
        """Answer an error (when the state allows), then mark the connection for closing."""
        if log_it:
            log.warning("http %s: %d %s", self.peer, status, message)
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = error_body(status, message, type_)
            try:
                await self._write(h11.Response(status_code=status, headers=self._headers(
                    JSON_TYPE, len(body), [("connection", "close")])), h11.Data(data=body), h11.EndOfMessage())
            except (ConnectionError, h11.LocalProtocolError):
                pass
        self._h11 = _closed_connection()

    @property
    def streaming(self) -> bool:
        return self._h11.our_state is h11.SEND_BODY


def _closed_connection():
    c = h11.Connection(h11.SERVER)
    c.send(h11.ConnectionClosed())
    return c


async def serve_connection(conn: HttpConnection, route) -> None:
    """Answer requests on one connection until it closes; `route(request, conn)` answers one."""
    while True:
        request = await conn.next_request()
        if request is None:
            return
        try:
            await route(request, conn)
        except HttpError as e:
            if conn.streaming:
                return                           # nothing sensible left to say mid-stream
            await conn.fail(e.status, str(e), e.type)
            return
