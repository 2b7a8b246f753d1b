"""How a Completion looks on the wire: llama.cpp `timings`, stop types, error codes.

Shared by the binary protocol (FINAL / ERROR frames) and both HTTP APIs.
"""

from llcuda_mpi.backends.base import Completion
from llcuda_mpi.transport import protocol as p

# Completion.finish_reason -> llama-server stop_type / OpenAI finish_reason
STOP_TYPES = {"eos": "eos", "length": "limit", "stop": "word"}
OPENAI_FINISH = {"eos": "stop", "length": "length", "stop": "stop"}


def timings(c: Completion) -> dict:
    """llama-server's `timings` object from the worker's clock (prompt = submit -> first token)."""
    t_first = c.t_first or c.t_end
    prompt_ms = max(t_first - c.t_submit, 0.0) * 1e3
    predicted_ms = max(c.t_end - t_first, 0.0) * 1e3 if c.t_first else 0.0
    return {
        "cache_n": 0,
        "prompt_n": c.n_prompt,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / c.n_prompt if c.n_prompt else 0.0,
        "prompt_per_second": c.n_prompt / prompt_ms * 1e3 if prompt_ms > 0 else 0.0,
        "predicted_n": c.n_output,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / c.n_output if c.n_output else 0.0,
        "predicted_per_second": c.n_output / predicted_ms * 1e3 if predicted_ms > 0 else 0.0,
    }


def outcome(c: Completion) -> str:
    """ok | error | timeout | cancelled (for metrics and error codes)."""
    if c.status == "error" and c.error.startswith("cancelled"):
        return "cancelled"
    return c.status


def error_code(c: Completion) -> tuple[int, int]:
    """(protocol error code, HTTP status) of a failed completion."""
    kind = outcome(c)
    if kind == "timeout":
        return p.E_TIMEOUT, 504
    if kind == "cancelled":
        return p.E_CANCELLED, 503
    return p.E_GENERATION, 500


def final(c: Completion, rank: int, t_received: float) -> dict:
    """The binary protocol's FINAL payload."""
    return {"text": c.text, "tokens": list(c.token_ids), "n_prompt": c.n_prompt, "n_output": c.n_output,
            "finish_reason": c.finish_reason, "rank": rank, "t_received": t_received, "t_submit": c.t_submit,
            "t_first": c.t_first, "t_end": c.t_end, "timings": timings(c)}
