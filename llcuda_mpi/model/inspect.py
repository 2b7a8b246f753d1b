"""`llcuda-mpi inspect MODEL.gguf`: what a GGUF model is, in a table or JSON.

Architecture and key config values, parameter count, tensor types and byte
sizes grouped by role (`blk.N.` folded), tokenizer model / vocab size /
BOS / EOS, file size and sha256. `--tensors` lists every tensor; `--json`
prints one JSON object instead of the text report.
"""

import dataclasses
import json
import re
import sys
from collections import defaultdict

from llcuda_mpi.model.gguf import ModelError, load_model


def describe(model, with_tensors=False) -> dict:
    """A JSON-able description of a loaded Model."""
    meta = model.metadata
    groups = defaultdict(lambda: {"count": 0, "n_elements": 0, "nbytes": 0, "types": defaultdict(int)})
    by_type = defaultdict(lambda: {"count": 0, "n_elements": 0, "nbytes": 0})
    for t in model.tensors.values():
        g = groups[re.sub(r"^blk\.\d+\.", "blk.*.", t.name)]
        for d in (g, by_type[t.qtype]):
            d["count"] += 1
            d["n_elements"] += t.n_elements
            d["nbytes"] += t.nbytes
        g["types"][t.qtype] += 1
    tokens = meta.get("tokenizer.ggml.tokens") or []
    out = {
        "path": model.path,
        "file_size": model.file_size,
        "sha256": model.sha256(),
        "name": meta.get("general.name"),
        "file_type": model.file_type,
        "config": {k: v for k, v in dataclasses.asdict(model.config).items() if k != "extra"},
        "n_params": model.n_params,
        "tensor_bytes": sum(t.nbytes for t in model.tensors.values()),
        "bits_per_weight": round(8 * sum(t.nbytes for t in model.tensors.values()) / max(model.n_params, 1), 3),
        "types": {k: dict(v) for k, v in sorted(by_type.items())},
        "groups": {k: {**v, "types": dict(v["types"])} for k, v in groups.items()},
        "tokenizer": {
            "model": meta.get("tokenizer.ggml.model"),
            "pre": meta.get("tokenizer.ggml.pre"),
            "n_tokens": len(tokens),
            "bos": _token(meta, tokens, "bos"),
            "eos": _token(meta, tokens, "eos"),
            "add_bos": meta.get("tokenizer.ggml.add_bos_token"),
            "n_merges": len(meta.get("tokenizer.ggml.merges") or []),
        },
    }
    if with_tensors:
        out["tensors"] = [{"name": t.name, "type": t.qtype, "shape": list(t.shape), "nbytes": t.nbytes,
                           "offset": t.offset} for t in model.tensors.values()]
    return out


def _token(meta, tokens, which):
    i = meta.get(f"tokenizer.ggml.{which}_token_id")
    if i is None:
        return None
    return {"id": i, "text": tokens[i] if 0 <= i < len(tokens) else None}


def _mb(n):
    return f"{n / 2**20:9.2f} MiB"


def format_text(d) -> str:
    c, tok = d["config"], d["tokenizer"]
    lines = [f"{d['path']}  ({d['file_size']:,} bytes)", f"  sha256      {d['sha256']}",
             f"  name        {d['name']}", f"  arch        {c['arch']}   file type {d['file_type']}",
             f"  params      {d['n_params']:,} ({d['n_params'] / 1e6:.1f} M), {d['bits_per_weight']} bits/weight"]
    keys = ["n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "n_ctx_train",
            "norm_eps", "rope_base", "rope_neox", "rope_freq_factors", "qkv_bias", "tied_embeddings"]
    if c["arch"] == "gemma3":
        keys += ["sliding_window", "sliding_window_pattern", "rope_base_swa", "attn_scale", "logit_softcap"]
    lines.append("  config      " + ", ".join(f"{k}={c[k]}" for k in keys))
    bos, eos = tok["bos"] or {}, tok["eos"] or {}
    lines.append(f"  tokenizer   {tok['model']} (pre {tok['pre']}), {tok['n_tokens']} tokens, {tok['n_merges']} merges, "
                 f"BOS {bos.get('id')} {bos.get('text')!r}, EOS {eos.get('id')} {eos.get('text')!r}")
    lines.append("  types       " + ", ".join(f"{k}: {v['count']} tensors {_mb(v['nbytes']).strip()}"
                                               for k, v in d["types"].items()))
    lines.append(f"  {'tensor (blk.* = every layer)':<34}{'count':>6}{'elements':>14}{'size':>14}  types")
    for name, g in d["groups"].items():
        types = ", ".join(f"{k}x{v}" if v > 1 else k for k, v in g["types"].items())
        lines.append(f"  {name:<34}{g['count']:>6}{g['n_elements']:>14,}{_mb(g['nbytes']):>14}  {types}")
    if "tensors" in d:
        lines.append(f"  {'tensor':<34}{'type':>6}  {'shape (numpy)':<18}{'size':>14}{'offset':>14}")
        for t in d["tensors"]:
            lines.append(f"  {t['name']:<34}{t['type']:>6}  {str(tuple(t['shape'])):<18}{_mb(t['nbytes']):>14}"
                         f"{t['offset']:>14}")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("model", help="a GGUF model file, or store:NAME[:TAG] from this node's model store")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tensors", action="store_true", help="list every tensor")


def run(args) -> int:
    from llcuda_mpi.storage import StoreError, resolve_model
    try:
        model = load_model(resolve_model(args.model))
        d = describe(model, with_tensors=args.tensors)
    except (ModelError, StoreError) as exc:
        print(f"llcuda-mpi inspect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(d, indent=1) if args.json else format_text(d))
    return 0
