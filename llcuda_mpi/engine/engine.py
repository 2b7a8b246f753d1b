"""Continuous batching over preallocated KV slots.

Each `step()` runs one forward over: one token of every decoding sequence,
plus (while budget remains) a chunk of the oldest sequence still prefilling.
Requests join when a slot is free and leave when they stop (EOS, max tokens,
stop string, cancel, timeout), so the batch changes between steps.
"""

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from llcuda_mpi.backends.base import Completion, Request, TokenEvent
from llcuda_mpi.engine.forward import alloc_state, forward
from llcuda_mpi.engine.weights import load_weights
from llcuda_mpi.model.tokenizer import IncrementalDecoder, Tokenizer


@dataclass
class EngineConfig:
    n_slots: int = 4          # sequences decoded together (KV-cache slots)
    n_ctx: int = 0            # positions per slot; 0 = min(model's n_ctx_train, 2048)
    prefill_chunk: int = 128  # prompt tokens per step


@dataclass
class Sequence:
    request: object
    prompt: list
    t_submit: float
    slot: int = -1
    n_past: int = 0                       # tokens already in the KV cache
    output: list = field(default_factory=list)
    token_times: list = field(default_factory=list)
    text: str = ""
    t_first: float = 0.0
    decoder: object = None
    next_token: int = -1                  # sampled, not yet fed back
    emitted: int = 0                      # characters of text already streamed


def find_stop(text, stops, start=0):
    """Index in `text` of the earliest stop string found at or after `start` (-1: none)."""
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def held_back(text, stops):
    """Length of the longest end of `text` that could still become a stop string: not streamed yet."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


class Engine:
    def __init__(self, model, ops, config=EngineConfig()):
        self.model, self.ops, self.cfg = model, ops, model.config
        c = self.cfg
        self.n_slots = config.n_slots
        self.n_ctx = config.n_ctx or min(c.n_ctx_train, 2048)
        self.chunk = config.prefill_chunk
        self.max_tokens = self.chunk + self.n_slots
        self.tokenizer = Tokenizer.from_metadata(model.metadata)
        ops.check_fits(c, self.n_slots, self.n_ctx, self.max_tokens, model)
        self.weights = load_weights(model, ops)
        self.state = alloc_state(c, ops, self.max_tokens, self.n_slots, self.n_slots, self.n_ctx)
        if self.state.io is not None:     # per-step inputs staged straight into the ops' upload buffer
            self.host = self.state.io.host
        else:                             # staged on the host then copied together
            self.host = {"tokens": np.zeros(self.max_tokens, np.int32), "pos": np.zeros(self.max_tokens, np.int32),
                         "slot": np.zeros(self.max_tokens, np.int32), "out_rows": np.zeros(self.n_slots, np.int32)}
        self.rows = np.zeros(self.n_slots, np.int32)    # slots of the sequences sampling this step
        self.sampling = ops.sampling_state(self.n_slots)
        self.waiting = deque()
        self.active = {}                  # slot -> Sequence
        self.free_slots = list(range(self.n_slots - 1, -1, -1))
        self.steps = 0

    # ---- requests in and out ------------------------------------------------
    def submit(self, request, t_submit=None):
        """Queue a request; returns a Completion at once if it can never run."""
        t = time.time() if t_submit is None else t_submit
        if request.prompt_tokens is not None:
            prompt = list(request.prompt_tokens)
        else:
            prompt = self.tokenizer.encode(request.prompt or "")
        if not prompt:
            return self._fail_new(request, prompt, t, "empty prompt")
        if len(prompt) >= self.n_ctx:
            return self._fail_new(request, prompt, t, f"prompt of {len(prompt)} tokens does not fit "
                                  f"the context of {self.n_ctx} (--n-ctx)")
        bad = [i for i in prompt if not 0 <= i < self.cfg.n_vocab]
        if bad:
            return self._fail_new(request, prompt, t, f"token id {bad[0]} out of range [0, {self.cfg.n_vocab})")
        self.waiting.append(Sequence(request, prompt, t))
        return None

    def _fail_new(self, request, prompt, t, error):
        return Completion(request.id, "error", error=error, t_submit=t, t_end=time.time(), n_prompt=len(prompt))

    def busy(self):
        return len(self.waiting) + len(self.active)

    def cancel(self, request_id, reason="cancelled", status="error"):
        """Drop a request wherever it is; returns its Completion (or None if unknown)."""
        for seq in list(self.waiting):
            if seq.request.id == request_id:
                self.waiting.remove(seq)
                return self._finish(seq, status, reason, "")
        for seq in list(self.active.values()):
            if seq.request.id == request_id:
                return self._finish(seq, status, reason, "")
        return None

    def warm_up(self):
        """Meet, once and outside any timing, the step shapes a run will: every slot's prompt
        prefilled together, then decode with n_slots, n_slots - 1, ..., 1 sequences. On the CPU
        this loads the disk-cached kernels (~0.6 s that the first real step would pay otherwise);
        on a GPU it compiles the kernels and captures the decode graphs. Leaves the engine as new."""
        if self.busy():
            raise RuntimeError("warm_up() on an engine with requests")
        n = self.n_slots
        plen = max(1, min(16, self.chunk // n, self.n_ctx - n - 1))
        for j in range(n):
            self.submit(Request(-1 - j, prompt_tokens=[(7 * j + i + 1) % self.cfg.n_vocab for i in range(plen)],
                                max_tokens=j + 1, ignore_eos=True))
        while self.busy():
            self.step()
        self.free_slots = list(range(n - 1, -1, -1))
        self.steps = 0

    # ---- one step -----------------------------------------------------------
    def step(self):
        """Run one forward over the active batch; returns TokenEvents and Completions."""
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot = self.free_slots.pop()
            seq.decoder = IncrementalDecoder(self.tokenizer)
            self.active[seq.slot] = seq
            self.ops.set_sampling(self.sampling, seq.slot, seq.request)
        if not self.active:
            return []
        h = self.host
        tokens, pos, slot, out_rows, rows = h["tokens"], h["pos"], h["slot"], h["out_rows"], self.rows
        T = B = 0
        sampled = []                                  # sequences sampling this step, in out_rows order
        for seq in self.active.values():              # decode: one token each
            if seq.next_token >= 0:
                tokens[T], pos[T], slot[T] = seq.next_token, seq.n_past, seq.slot
                out_rows[B], rows[B] = T, seq.slot
                seq.n_past += 1
                T, B = T + 1, B + 1
                sampled.append(seq)
        budget = self.max_tokens - T
        for seq in self.active.values():              # prefill: chunks while budget remains
            if seq.next_token >= 0 or budget <= 0:
                continue
            n = min(len(seq.prompt) - seq.n_past, self.chunk, budget)
            tokens[T:T + n] = seq.prompt[seq.n_past:seq.n_past + n]
            pos[T:T + n] = np.arange(seq.n_past, seq.n_past + n)
            slot[T:T + n] = seq.slot
            seq.n_past += n
            T, budget = T + n, budget - n
            if seq.n_past == len(seq.prompt):         # prompt done: sample its first token
                out_rows[B], rows[B] = T - 1, seq.slot
                B += 1
                sampled.append(seq)
        ids = self.ops.step(self.cfg, self.weights, self.state, h, T, B, self.sampling, rows[:B], forward)
        self.steps += 1
        now = time.time()
        events = []
        for seq, tok in zip(sampled, ids.tolist()):
            events.extend(self._accept(seq, tok, now))
        return events

    def _accept(self, seq, tok, now):
        """Record a sampled token; returns its TokenEvent and maybe the Completion."""
        req = seq.request
        if not seq.output:
            seq.t_first = now
        if self.tokenizer.is_eog(tok) and not req.ignore_eos:
            return self._tail(seq, now) + [self._finish(seq, "ok", "", "eos", now)]
        seq.output.append(tok)
        seq.token_times.append(now)
        seq.text += seq.decoder.feed(tok)
        # stream only what can no longer turn out to be part of a stop string
        longest = max((len(s) for s in req.stop), default=0)
        cut = find_stop(seq.text, req.stop, max(0, seq.emitted - longest)) if req.stop else -1
        if cut >= 0:
            seq.text = seq.text[:cut]
        safe = len(seq.text) if cut >= 0 else len(seq.text) - held_back(seq.text, req.stop)
        events = [TokenEvent(req.id, now, [tok], seq.text[seq.emitted:safe])]
        seq.emitted = max(seq.emitted, safe)
        if cut >= 0:
            events.append(self._finish(seq, "ok", "", "stop", now))
        elif len(seq.output) >= req.max_tokens or seq.n_past >= self.n_ctx:   # no token or position left
            events += self._tail(seq, now) + [self._finish(seq, "ok", "", "length", now)]
        else:
            seq.next_token = tok
        return events

    def _tail(self, seq, now):
        """At a normal end: the text still held back (a stop-string prefix, an unfinished character)."""
        seq.text += seq.decoder.flush()
        rest, seq.emitted = seq.text[seq.emitted:], len(seq.text)
        return [TokenEvent(seq.request.id, now, [], rest, n_tokens=0)] if rest else []

    def _finish(self, seq, status, error, reason, now=None):
        """The Completion of `seq`, its slot freed. Text not streamed yet (a held-back stop prefix,
        bytes of an unfinished character) is in the Completion's text only."""
        now = time.time() if now is None else now
        if seq.slot >= 0 and self.active.get(seq.slot) is seq:
            del self.active[seq.slot]
            self.free_slots.append(seq.slot)
            seq.text += seq.decoder.flush() if reason != "stop" else ""
        return Completion(seq.request.id, status, error=error, t_submit=seq.t_submit,
                          t_first=seq.t_first, t_end=now, n_prompt=len(seq.prompt),
                          n_output=len(seq.output), token_times=seq.token_times, token_ids=seq.output,
                          text=seq.text, finish_reason=reason)


def prompt_logits(model, ops, tokens, weights=None):
    """Logits (n, n_vocab) of every position of `tokens`, one forward from an empty cache.

    The teacher-forced view of the engine, for checks against the reference
    forward and llama.cpp.
    """
    n = len(tokens)
    weights = weights or load_weights(model, ops)
    state = alloc_state(model.config, ops, n, n, 1, n)
    host = {"tokens": np.asarray(tokens, np.int32), "pos": np.arange(n, dtype=np.int32),
            "slot": np.zeros(n, np.int32), "out_rows": np.arange(n, dtype=np.int32)}
    ops.load_inputs(state, host, n, n)
    forward(model.config, weights, state, ops, n, n)
    return ops.to_host(state.logits)
