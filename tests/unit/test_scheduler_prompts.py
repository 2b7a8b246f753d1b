"""Prompts files (good and bad), synthetic prompt lengths, and the bench's request list."""

import argparse
import json
import math

import numpy as np
import pytest

from llcuda_mpi.scheduler.bench import build_requests
from llcuda_mpi.scheduler.config import BenchConfig, add_arguments, backend_classes, config_from_args
from llcuda_mpi.scheduler.prompts import (Prompt, PromptsError, input_lengths, load_prompts,
                                          synthetic_prompts)


def write(tmp_path, text, name="p.txt", mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_jsonl(tmp_path):
    p = write(tmp_path, '{"prompt": "hello"}\n\n{"prompt": "a\\nb", "max_tokens": 7, "x": 1}\n', "p.jsonl")
    assert load_prompts(p) == [Prompt("hello"), Prompt("a\nb", 7)]


def test_plain_text(tmp_path):
    p = write(tmp_path, "first prompt\r\n\n  second one\n")
    assert load_prompts(p) == [Prompt("first prompt"), Prompt("  second one")]


@pytest.mark.parametrize("text, match", [
    ("", "no prompts"),
    ("\n  \n", "no prompts"),
    ('{"prompt": "ok"}\n{"prompt": "x",}\n', r"p.txt:2: invalid JSON"),
    ('{"prompt": "ok"}\n[1, 2]\n', r"p.txt:2: expected a JSON object"),
    ('{"text": "no prompt key"}\n', r"p.txt:1: \"prompt\" must be a non-empty string"),
    ('{"prompt": 5}\n', r"\"prompt\" must be a non-empty string"),
    ('{"prompt": "x", "max_tokens": 0}\n', r"p.txt:1: \"max_tokens\" must be a positive integer, got 0"),
    ('{"prompt": "x", "max_tokens": "5"}\n', r"positive integer, got '5'"),
    ('{"prompt": "x", "max_tokens": true}\n', r"positive integer, got True"),
])
def test_bad_files_name_the_file_and_line(tmp_path, text, match):
    with pytest.raises(PromptsError, match=match):
        load_prompts(write(tmp_path, text))


def test_unreadable_files(tmp_path):
    with pytest.raises(PromptsError, match="cannot read prompts file"):
        load_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(PromptsError, match="cannot read prompts file"):
        load_prompts(tmp_path)
    with pytest.raises(PromptsError, match=r"not UTF-8 text \(byte 1\)"):
        load_prompts(write(tmp_path, b"a\xff\xfe", mode="wb"))


def test_input_length_distributions():
    assert input_lengths(4, 10).tolist() == [10] * 4
    for dist in ("uniform", "normal", "lognormal"):
        x = input_lengths(20000, 100, dist, 0.3, seed=5)
        assert np.array_equal(x, input_lengths(20000, 100, dist, 0.3, seed=5)) and x.min() >= 1
        center = np.median(x) if dist == "lognormal" else x.mean()
        assert abs(center - 100) <= 2, dist
    u = input_lengths(20000, 100, "uniform", 0.5, seed=1)
    assert u.min() >= 50 and u.max() <= 150
    assert abs(input_lengths(20000, 100, "normal", 0.2, seed=1).std() - 20) < 1
    assert input_lengths(100, 2, "normal", 5.0).min() == 1          # clipped at one word
    with pytest.raises(ValueError, match="choose from fixed, uniform, normal, lognormal"):
        input_lengths(1, 10, "zipf")


def test_synthetic_prompts_have_the_drawn_lengths():
    ps = synthetic_prompts(50, 20, "uniform", 0.5, seed=2)
    assert [len(p.text.split()) for p in ps] == input_lengths(50, 20, "uniform", 0.5, seed=2).tolist()
    assert ps == synthetic_prompts(50, 20, "uniform", 0.5, seed=2)


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_come_from_the_dataclass():
    cfg = config_from_args(parse([]))
    assert cfg == BenchConfig()
    assert cfg.backend == "engine" and math.isinf(cfg.request_rate)
    assert json.loads(json.dumps(cfg.to_dict()))["request_rate"] == "inf"


@pytest.mark.parametrize("argv, match", [
    (["--backend", "nope"], "--backend 'nope': choose from"),
    (["--inflight", "0"], "--inflight must be >= 1"),
    (["--request-rate", "0"], "--request-rate must be > 0"),
    (["--burstiness", "-1"], "--burstiness must be > 0"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--num-prompts", "0"], "--num-prompts must be >= 1"),
    (["--warmup", "-2"], "--warmup must be >= 0"),
])
def test_bad_options(argv, match):
    with pytest.raises(ValueError, match=match):
        config_from_args(parse(argv))


def test_every_registered_backend_is_listed():
    classes = backend_classes()
    assert set(classes) >= {"synthetic", "engine", "llama-server", "openai"}
    assert not isinstance(classes["synthetic"], str)
    assert all(c.startswith("unavailable: ") for c in classes.values() if isinstance(c, str))


def test_build_requests_warmup_then_measured(tmp_path):
    cfg = config_from_args(parse(["--num-prompts", "5", "--warmup", "2", "--max-tokens", "9",
                                  "--request-rate", "10", "--timeout", "3", "--ignore-eos"]))
    requests, arrivals = build_requests(cfg)
    assert [r.id for r in requests] == list(range(7))
    assert [r.warmup for r in requests] == [True, True] + [False] * 5
    assert len(arrivals) == 5 and arrivals[0] == 0 and arrivals[-1] > 0
    assert all(r.max_tokens == 9 and r.timeout == 3 and r.ignore_eos for r in requests)
    f = write(tmp_path, '{"prompt": "a", "max_tokens": 3}\n{"prompt": "b"}\n', "p.jsonl")
    requests, arrivals = build_requests(config_from_args(parse(["--prompts", str(f), "--max-tokens", "4"])))
    assert [(r.prompt, r.max_tokens) for r in requests] == [("a", 3), ("b", 4)]
    requests, _ = build_requests(config_from_args(parse(["--prompts", str(f), "--num-prompts", "5"])))
    assert [r.prompt for r in requests] == ["a", "b", "a", "b", "a"]
