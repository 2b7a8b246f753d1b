"""Weights uploaded once per worker: 2-D tensors keep their GGUF blocks, 1-D become float32."""

import numpy as np

from llcuda_mpi.engine.forward import LayerWeights, Weights
from llcuda_mpi.engine.ops import Weight


def load_weights(model, ops):
    """Model (llcuda_mpi.model.gguf) -> Weights of ops arrays, read once from the memory map."""
    t = model.tensors

    def mat(name):
        tensor = t[name]
        rows, cols = tensor.shape
        data = np.asarray(tensor.data)
        w = Weight(ops.upload(data), tensor.qtype, rows, cols)
        prepare = getattr(ops, "prepare_weight", None)      # CudaOps: the decode gemv's layout
        if prepare is not None:
            prepare(w, data)
        return w

    def vec(name):
        return ops.upload(model.dequantize(name, np.float32)) if name in t else None

    layers = []
    prepare_layer = getattr(ops, "prepare_layer", None)     # CudaOps: fused QKV and gate/up for decode
    for i in range(model.config.n_layer):
        p = f"blk.{i}."
        lw = LayerWeights(
            attn_norm=vec(p + "attn_norm.weight"),
            attn_q=mat(p + "attn_q.weight"), attn_k=mat(p + "attn_k.weight"),
            attn_v=mat(p + "attn_v.weight"), attn_output=mat(p + "attn_output.weight"),
            ffn_norm=vec(p + "ffn_norm.weight"),
            ffn_gate=mat(p + "ffn_gate.weight"), ffn_up=mat(p + "ffn_up.weight"),
            ffn_down=mat(p + "ffn_down.weight"),
            attn_q_bias=vec(p + "attn_q.bias"), attn_k_bias=vec(p + "attn_k.bias"),
            attn_v_bias=vec(p + "attn_v.bias"),
            attn_q_norm=vec(p + "attn_q_norm.weight"), attn_k_norm=vec(p + "attn_k_norm.weight"),
            post_attention_norm=vec(p + "post_attention_norm.weight"),
            post_ffw_norm=vec(p + "post_ffw_norm.weight"),
        )
        if prepare_layer is not None:
            host = {k: np.asarray(t[p + k + ".weight"].data)
                    for k in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up")}
            host.update({k + "_bias": model.dequantize(p + k + ".bias", np.float32) if p + k + ".bias" in t else None
                         for k in ("attn_q", "attn_k", "attn_v")})
            prepare_layer(lw, host)
        layers.append(lw)
    embd = mat("token_embd.weight")
    return Weights(
        token_embd=embd,
        output_norm=vec("output_norm.weight"),
        output=mat("output.weight") if "output.weight" in t else embd,
        layers=layers,
        rope_freqs=vec("rope_freqs.weight"),
    )
