"""The HTTP backends: llama.cpp's llama-server (`/completion`) and
OpenAI-compatible servers (`/v1/completions`: vLLM, SGLang, TGI, Ollama,
llama-server), both streaming SSE by default.

Client-side times: a TokenEvent per streamed chunk that carries output
(one entry of Completion.token_times each), t_first at the first of them.
Token counts come from the server when it reports them (llama-server's
`tokens_predicted`, OpenAI `usage`), else one per chunk. llama-server's
`timings` (prompt_ms, predicted_ms, cache_n, ...) land in server_timings.
The loop thread, errors and timeouts live in httpclient.py.
"""

from llcuda_mpi.backends.base import Request
from llcuda_mpi.backends.httpclient import (HttpBackend, ProtocolFailure, add_http_arguments,
                                            config_from_args)

# llama-server `stop_type` -> Completion.finish_reason
LLAMA_STOP_TYPES = {"eos": "eos", "limit": "length", "word": "stop"}


class _HttpRegistered(HttpBackend):
    uses_device = False         # the server owns the GPU; workers need none
    @classmethod
    def add_arguments(cls, group):
        add_http_arguments(group)

    @classmethod
    def from_args(cls, args, worker_index, device):
        return cls(config_from_args(args, worker_index), device)


class LlamaServerBackend(_HttpRegistered):
    """llama.cpp llama-server, native `/completion` API."""

    name = "llama-server"
    path = "/completion"

    async def payload(self, r: Request) -> dict:
        body = {
            "prompt": r.prompt_tokens if r.prompt_tokens is not None else r.prompt,
            "n_predict": r.max_tokens,
            "ignore_eos": r.ignore_eos,
            "temperature": r.temperature,
            "top_k": r.top_k,            # 0 = off in llama.cpp too
            "top_p": r.top_p,
            "min_p": 0.0,                # llama-server's default 0.05 is not part of our Request
            "seed": r.seed,
            "stop": list(r.stop),
            "stream": r.stream,
            "cache_prompt": False,       # every request pays its whole prompt: comparable TTFT
            "return_tokens": True,
            "timings_per_token": False,
        }
        return body

    def on_chunk(self, acc, obj, t):
        token = None
        content, ids = obj.get("content", ""), obj.get("tokens") or []
        if content or ids:
            token = acc.token(t, content, ids, max(1, len(ids)))
        if obj.get("stop"):
            self._final(acc, obj)
        return token

    def on_body(self, acc, obj, t):
        if obj.get("content") or obj.get("tokens"):
            acc.token(t, obj.get("content", ""), obj.get("tokens") or [])
        self._final(acc, obj)

    @staticmethod
    def _final(acc, obj):
        acc.done = True
        acc.n_prompt = int(obj.get("tokens_evaluated", 0))
        acc.n_output = int(obj.get("tokens_predicted", 0))
        acc.finish_reason = LLAMA_STOP_TYPES.get(obj.get("stop_type", ""), "")
        acc.server_timings = dict(obj.get("timings") or {})

    async def _probe_server(self):
        try:
            props = await self._get_json("/props")
        except Exception as e:  # provenance only: a failed probe is recorded, never raised
            return {"server_probe_error": f"GET /props: {type(e).__name__}: {e}"}
        return {"server_model": props.get("model_path", ""), "server_build": props.get("build_info", ""),
                "server_slots": props.get("total_slots", 0)}


class OpenAIBackend(_HttpRegistered):
    """Any OpenAI-compatible server, legacy `/v1/completions` API."""

    name = "openai"
    path = "/v1/completions"

    async def payload(self, r: Request) -> dict:
        body = {
            "prompt": r.prompt_tokens if r.prompt_tokens is not None else r.prompt,
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "seed": r.seed,
            "stream": r.stream,
        }
        model = self.config.served_model or (await self.probe()).get("server_model", "")
        if model:
            body["model"] = model
        if r.stream:
            body["stream_options"] = {"include_usage": True}
        if r.stop:
            body["stop"] = list(r.stop)
        # llama-server reuses a cached prefix unless told not to (others ignore the field);
        # every request pays its whole prompt, as with the llama-server backend.
        body["cache_prompt"] = False
        # Extensions of vLLM / SGLang / llama-server, sent only when asked for.
        if r.top_k > 0:
            body["top_k"] = r.top_k
        if r.ignore_eos:
            body["ignore_eos"] = True
        return body

    def on_sentinel(self, acc, data):
        if data.strip() != "[DONE]":
            return False
        acc.done = True
        return True

    def on_chunk(self, acc, obj, t):
        self._counts(acc, obj)
        choices = obj.get("choices") or []
        if not choices:
            return None                 # e.g. the usage-only chunk of include_usage
        choice = choices[0]
        text, finish = choice.get("text") or "", choice.get("finish_reason")
        if finish:
            acc.finish_reason = self._finish(acc, finish)
        if text or not finish:
            return acc.token(t, text)
        return None

    def on_body(self, acc, obj, t):
        self._counts(acc, obj)
        choices = obj.get("choices") or []
        if not choices:
            raise ProtocolFailure("reply has no choices")
        acc.token(t, choices[0].get("text") or "")
        acc.finish_reason = self._finish(acc, choices[0].get("finish_reason") or "")

    def on_end(self, acc):
        # Some servers close without [DONE]: fine once the finish_reason came.
        if not acc.finish_reason:
            super().on_end(acc)

    @staticmethod
    def _counts(acc, obj):
        usage = obj.get("usage") or {}
        acc.n_prompt = int(usage.get("prompt_tokens", acc.n_prompt) or 0)
        acc.n_output = int(usage.get("completion_tokens", acc.n_output) or 0)
        if obj.get("timings"):
            acc.server_timings = dict(obj["timings"])

    @staticmethod
    def _finish(acc, finish):
        # OpenAI says "stop" for both EOS and a stop string; without stop strings it was EOS.
        if finish == "stop" and not acc.request.stop:
            return "eos"
        return finish

    async def _probe_server(self):
        try:
            models = await self._get_json("/v1/models")
            first = (models.get("data") or [{}])[0].get("id", "")
        except Exception as e:  # provenance only: a failed probe is recorded, never raised
            return {"server_probe_error": f"GET /v1/models: {type(e).__name__}: {e}"}
        return {"server_model": first}
