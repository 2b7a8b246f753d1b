"""Prompts for a job: from a file, or a built-in synthetic set.

A prompts file is either JSONL (every non-blank line a JSON object with a
string `prompt` and optionally an integer `max_tokens`) or plain text (one
prompt per non-blank line). The format is decided by the first non-blank
line: if it starts with `{` the whole file must be JSONL.

The synthetic set draws input lengths (in words, roughly one token each for
the common English words used) from a seeded distribution:

  fixed      every prompt has `input_len` words
  uniform    uniform integer in [len*(1-spread), len*(1+spread)]
  normal     normal with mean len, standard deviation len*spread
  lognormal  lognormal with median len, sigma = spread
"""

import json
import pathlib
from dataclasses import dataclass

import numpy as np

INPUT_LEN_DISTS = ("fixed", "uniform", "normal", "lognormal")

_VOCAB = ("the of and to in a is that for it as was with be by on not he this are or his from at "
          "which but have an they you were her she there been one all we their has would when "
          "if so no will what can out more about time some these up into only other then its "
          "them two first new now people may like over any after most also made many did just "
          "where those way well back much good before such very through year great could must").split()


class PromptsError(ValueError):
    """A prompts file that cannot be used (names the file and line)."""


@dataclass(frozen=True)
class Prompt:
    text: str
    max_tokens: int | None = None   # None: the job's --max-tokens


def load_prompts(path) -> list[Prompt]:
    """Read a JSONL or plain-text prompts file (see the module docstring)."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PromptsError(f"{path}: cannot read prompts file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptsError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise PromptsError(f"{path}: no prompts (the file is empty)")
    if not lines[0][1].lstrip().startswith("{"):
        return [Prompt(line.rstrip("\r")) for _, line in lines]
    return [_jsonl_prompt(path, n, line) for n, line in lines]


def _jsonl_prompt(path, n: int, line: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PromptsError(f"{path}:{n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise PromptsError(f"{path}:{n}: expected a JSON object with a \"prompt\" field")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise PromptsError(f"{path}:{n}: \"prompt\" must be a non-empty string")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise PromptsError(f"{path}:{n}: \"max_tokens\" must be a positive integer, got {max_tokens!r}")
    return Prompt(prompt, max_tokens)


def input_lengths(n: int, mean: int, dist: str = "fixed", spread: float = 0.5, seed: int = 0) -> np.ndarray:
    """`n` prompt lengths (>= 1) drawn from `dist` (see the module docstring)."""
    if dist not in INPUT_LEN_DISTS:
        raise ValueError(f"--input-len-dist {dist!r}: choose from {', '.join(INPUT_LEN_DISTS)}")
    if mean < 1:
        raise ValueError(f"--input-len must be >= 1, got {mean}")
    if spread < 0:
        raise ValueError(f"--input-len-spread must be >= 0, got {spread}")
    rng = np.random.default_rng(seed)
    if dist == "fixed":
        x = np.full(n, float(mean))
    elif dist == "uniform":
        x = rng.uniform(mean * (1 - spread), mean * (1 + spread), n)
    elif dist == "normal":
        x = rng.normal(mean, mean * spread, n)
    else:
        x = rng.lognormal(np.log(mean), spread, n)
    return np.maximum(np.rint(x), 1).astype(np.int64)


def synthetic_prompts(n: int, input_len: int = 128, dist: str = "fixed", spread: float = 0.5,
                      seed: int = 0) -> list[Prompt]:
    """`n` seeded prompts of common English words with lengths from `input_lengths`."""
    lengths = input_lengths(n, input_len, dist, spread, seed)
    rng = np.random.default_rng(seed + 1)
    words = np.array(_VOCAB)
    return [Prompt(" ".join(words[rng.integers(0, len(words), int(k))])) for k in lengths]
