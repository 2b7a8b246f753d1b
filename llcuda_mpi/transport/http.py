"""The gateway's HTTP API, llama.cpp-compatible (field names from tests/fixtures/llama-server).

  GET  /health            {"status": "ok"}; 503 while shutting down or with no live worker
  GET  /metrics           Prometheus text (metrics.py)
  GET  /props, /v1/models what our llama-server / openai backends probe
  POST /completion        llama.cpp native: n_predict, stream (SSE `data: {...}`, no [DONE]), timings
  POST /v1/completions    OpenAI legacy completions: max_tokens, stream (SSE ending `data: [DONE]`)

Defaults of absent fields follow each API (llama.cpp: n_predict -1 = as many
as allowed, temperature 0.8, top_k 40, top_p 0.95; OpenAI: max_tokens 16,
temperature 1, top_p 1). A client that disconnects cancels its generation.
"""

import asyncio
import json
import time

from llcuda_mpi import __version__
from llcuda_mpi.backends.base import Completion
from llcuda_mpi.transport import protocol as p
from llcuda_mpi.transport import shape
from llcuda_mpi.transport.httpd import HttpError, error_body
from llcuda_mpi.transport.metrics import CONTENT_TYPE

LLAMA_DEFAULTS = {"max_tokens": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "stream": False}
OPENAI_DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "stream": False}
SSE_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]
_DISCONNECT = object()


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class HttpApi:
    """Routes of one gateway; `gateway` gives hub, metrics, limits, model name and shutdown state."""

    def __init__(self, gateway):
        self.gw = gateway

    async def route(self, request, conn) -> None:
        routes = {("GET", "/health"): self.health, ("GET", "/metrics"): self.metrics,
                  ("GET", "/props"): self.props, ("GET", "/v1/models"): self.models,
                  ("POST", "/completion"): self.completion, ("POST", "/completions"): self.completion,
                  ("POST", "/v1/completions"): self.v1_completions}
        handler = routes.get((request.method, request.path))
        if handler is None:
            if any(path == request.path for _, path in routes):
                raise HttpError(405, f"{request.method} not allowed on {request.path}")
            raise HttpError(404, f"no such endpoint: {request.method} {request.path}", "not_found_error")
        await handler(request, conn)

    # ---------------------------------------------------------------- simple GETs
    async def health(self, request, conn):
        problem = self.gw.unavailable()
        if problem:
            await conn.respond(503, error_body(503, problem, "unavailable_error"))
        else:
            await conn.respond_json(200, {"status": "ok"})

    async def metrics(self, request, conn):
        body = self.gw.metrics.render(self.gw.hub.snapshot, self.gw.hub.in_flight).encode()
        await conn.respond(200, body, CONTENT_TYPE)

    async def props(self, request, conn):
        slots = sum(w["slots"] for w in self.gw.hub.snapshot.get("workers", {}).values())
        await conn.respond_json(200, {"model_path": self.gw.config.model, "build_info": f"llcuda-mpi {__version__}",
                                      "total_slots": slots, "limits": self.gw.config.limits.to_dict()})

    async def models(self, request, conn):
        await conn.respond_json(200, {"object": "list", "data": [
            {"id": self.gw.config.model, "object": "model", "created": int(self.gw.metrics.t_start),
             "owned_by": "llcuda-mpi"}]})

    # ---------------------------------------------------------------- generation
    def _params(self, obj, key, defaults) -> dict:
        try:
            return p.generation_params(obj, self.gw.config.limits, max_tokens_key=key, defaults=defaults)
        except p.BadRequest as e:
            raise HttpError(400, str(e)) from None

    async def _generate(self, conn, params, api, on_chunk, on_final, on_error, done_marker=b""):
        """Submit, then stream or collect; cancels the generation if the client goes away."""
        gw = self.gw
        queue: asyncio.Queue = asyncio.Queue()
        rid = gw.hub.submit(params, lambda event, rank: queue.put_nowait((event, rank)))
        if rid is None:
            gw.metrics.count_request(api, "rejected")
            raise HttpError(503, "the server is shutting down", "unavailable_error")
        t_received = time.time()
        watcher = asyncio.create_task(_watch(conn, queue))
        stream = params["stream"]
        outcome = "disconnected"
        try:
            if stream:
                await conn.start_stream(200, "text/event-stream", SSE_HEADERS)
            while True:
                item = await queue.get()
                batch = [item]
                while not queue.empty() and item is not _DISCONNECT:
                    item = queue.get_nowait()
                    batch.append(item)
                out = bytearray()
                finished = None
                for entry in batch:
                    if entry is _DISCONNECT:
                        raise ConnectionResetError("client closed the connection")
                    event, rank = entry
                    if isinstance(event, Completion):
                        finished = (event, rank)
                    elif stream:
                        out += _sse(on_chunk(event))
                if finished is None:
                    if out:
                        await conn.send(bytes(out))
                    continue
                c, rank = finished
                outcome = shape.outcome(c)
                if stream:
                    out += _sse(on_final(c, rank, t_received) if c.status == "ok" else on_error(c))
                    await conn.end_stream(bytes(out + done_marker))
                elif c.status == "ok":
                    await conn.respond_json(200, on_final(c, rank, t_received))
                else:
                    _, status = shape.error_code(c)
                    await conn.respond_json(status, on_error(c))
                return
        except ConnectionError:
            gw.hub.cancel(rid, detach=True)
            raise
        finally:
            gw.metrics.count_request(api, outcome)
            watcher.cancel()
            await asyncio.wait([watcher])           # its read must end before the next request's

    async def completion(self, request, conn):
        obj = request.json()
        key = "n_predict" if "n_predict" in obj or "max_tokens" not in obj else "max_tokens"
        params = self._params(obj, key, LLAMA_DEFAULTS)
        predicted = [0]
        model = self.gw.config.model

        def chunk(ev):
            predicted[0] += ev.n_tokens
            return {"index": 0, "content": ev.text, "tokens": ev.token_ids, "stop": False, "id_slot": -1,
                    "tokens_predicted": predicted[0]}

        def final(c, rank, t_received):
            text = "" if params["stream"] else c.text
            return {"index": 0, "content": text, "tokens": [] if params["stream"] else list(c.token_ids),
                    "id_slot": rank - 1, "stop": True, "model": model, "tokens_predicted": c.n_output,
                    "tokens_evaluated": c.n_prompt, "generation_settings": _settings(params), "prompt": "",
                    "has_new_line": "\n" in c.text, "truncated": False,
                    "stop_type": shape.STOP_TYPES.get(c.finish_reason, "none"), "stopping_word": "",
                    "tokens_cached": 0, "timings": shape.timings(c)}

        await self._guarded(conn, params, "completion", chunk, final)

    async def v1_completions(self, request, conn):
        obj = request.json()
        if obj.get("n", 1) != 1 or obj.get("best_of", 1) != 1:
            raise HttpError(400, "only n = 1 and best_of = 1 are supported")
        params = self._params(obj, "max_tokens", OPENAI_DEFAULTS)
        created, model = int(time.time()), self.gw.config.model
        ident = [""]

        def head(rid_text, choices):
            return {"choices": choices, "created": created, "model": model, "system_fingerprint": f"llcuda-mpi-"
                    f"{__version__}", "object": "text_completion", "id": rid_text}

        def chunk(ev):
            ident[0] = ident[0] or f"cmpl-{ev.request_id}"
            return head(ident[0], [{"text": ev.text, "index": 0, "logprobs": None, "finish_reason": None}])

        def final(c, rank, t_received):
            text = "" if params["stream"] else c.text
            body = head(f"cmpl-{c.request_id}", [{"text": text, "index": 0, "logprobs": None,
                                                  "finish_reason": shape.OPENAI_FINISH.get(c.finish_reason,
                                                                                            "stop")}])
            body["usage"] = {"completion_tokens": c.n_output, "prompt_tokens": c.n_prompt,
                             "total_tokens": c.n_output + c.n_prompt}
            body["timings"] = shape.timings(c)
            return body

        await self._guarded(conn, params, "v1", chunk, final, b"data: [DONE]\n\n")

    async def _guarded(self, conn, params, api, chunk, final, done_marker=b""):
        def error(c):
            code, status = shape.error_code(c)
            return {"error": {"code": status, "message": c.error or c.status, "type": "server_error"}}
        try:
            await self._generate(conn, params, api, chunk, final, error, done_marker)
        except ConnectionError:
            self.gw.metrics.reject("client_disconnected")
            raise HttpError(499, "client closed the connection") from None


def _settings(params) -> dict:
    return {"n_predict": params["max_tokens"], "temperature": params["temperature"], "top_k": params["top_k"],
            "top_p": params["top_p"], "seed": params["seed"], "stop": params["stop"],
            "ignore_eos": params["ignore_eos"], "stream": params["stream"]}


async def _watch(conn, queue) -> None:
    await conn.watch_disconnect()
    queue.put_nowait(_DISCONNECT)
