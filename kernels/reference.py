"""Numpy references of the kernels (the oracles the tests compare against).

Written for clarity, not speed; float64 inside where it costs nothing, results float32.
Shapes: T tokens (rows), H query heads, Hkv key/value heads, D head_dim.
"""

import numpy as np

# ---- norms, elementwise, activations ------------------------------------------------


def rmsnorm(x, w, eps):
    """x (T, n), w (n,) -> x / sqrt(mean(x^2) + eps) * w."""
    x64 = x.astype(np.float64)
    inv = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return (x64 * inv * w).astype(np.float32)


def add_rmsnorm(x, r, w, eps):
    """Residual add then norm: returns (x + r, rmsnorm(x + r))."""
    s = (x.astype(np.float32) + r.astype(np.float32)).astype(np.float32)
    return s, rmsnorm(s, w, eps)


def silu_mul(gate, up):
    g = gate.astype(np.float64)
    return (g / (1.0 + np.exp(-g)) * up).astype(np.float32)


def gelu_tanh(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gelu_mul(gate, up):
    return (gelu_tanh(gate) * up).astype(np.float32)


def relu(x):
    return np.maximum(x, 0).astype(np.float32)


def add(x, y):
    return (x + y).astype(np.float32)


def scale(x, s):
    return (x.astype(np.float64) * s).astype(np.float32)


def softcap(x, c):
    return (c * np.tanh(x.astype(np.float64) / c)).astype(np.float32)


def softmax(x):
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


# ---- rope, kv cache, attention --------------------------------------------------------


def rope_inv_freq(head_dim, base, freq_factors=None):
    """theta_i = base^(-2i/D) (/ factor_i, llama3 rope_freqs), i < D/2."""
    inv = base ** (-np.arange(0, head_dim // 2, dtype=np.float64) * 2.0 / head_dim)
    if freq_factors is not None:
        inv = inv / freq_factors.astype(np.float64)
    return inv


def rope(x, pos, base, neox, freq_factors=None):
    """x (T, heads, D) rotated by pos (T,); returns a new array.

    neox False: pairs (x[2i], x[2i+1]) (llama GGUF); True: (x[i], x[i + D/2]).
    """
    T, nh, D = x.shape
    ang = pos.astype(np.float64)[:, None] * rope_inv_freq(D, base, freq_factors)[None, :]
    c = np.cos(ang)[:, None, :]
    s = np.sin(ang)[:, None, :]
    x64 = x.astype(np.float64)
    out = np.empty_like(x64)
    if neox:
        a, b = x64[..., : D // 2], x64[..., D // 2:]
        out[..., : D // 2] = a * c - b * s
        out[..., D // 2:] = a * s + b * c
    else:
        a, b = x64[..., 0::2], x64[..., 1::2]
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
    return out.astype(np.float32)


def kv_store(k_cache, v_cache, k, v, slot, pos):
    """Copies of the caches (S, C, Hkv, D) with token t's k, v at [slot[t], pos[t]]."""
    kc, vc = k_cache.copy(), v_cache.copy()
    for t in range(k.shape[0]):
        kc[slot[t], pos[t]] = k[t]
        vc[slot[t], pos[t]] = v[t]
    return kc, vc


def attention(q, k_cache, v_cache, slot, pos, scale, window=0):
    """q (T, H, D); token t attends positions j <= pos[t] of cache slot slot[t]
    (and j > pos[t] - window when window > 0); GQA: head h reads kv head h // (H/Hkv)."""
    T, H, D = q.shape
    Hkv = k_cache.shape[2]
    out = np.zeros((T, H, D), np.float32)
    for t in range(T):
        lo = 0 if window <= 0 else max(0, pos[t] - window + 1)
        for h in range(H):
            kh = h // (H // Hkv)
            k = k_cache[slot[t], lo: pos[t] + 1, kh].astype(np.float64)
            v = v_cache[slot[t], lo: pos[t] + 1, kh].astype(np.float64)
            s = k @ q[t, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v
    return out


# ---- original design's kernels ----------------------------------------------------------


def matmul(a, b):
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


def quantize_int8(x, group):
    """Absmax int8 per group of `group` columns: returns q (rows, n) int8, scale (rows, n/group)."""
    rows, n = x.shape
    g = x.astype(np.float32).reshape(rows, n // group, group)
    amax = np.abs(g).max(axis=-1)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    v = g * inv[..., None]
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.clip(q, -127, 127).astype(np.int8).reshape(rows, n), scale


def dequantize_int8(q, scale):
    rows, n = q.shape
    group = n // scale.shape[1]
    return (q.reshape(rows, -1, group).astype(np.float32) * scale[..., None]).reshape(rows, n)


# ---- sampling ---------------------------------------------------------------------------

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MASS_ONE = float(2 ** 32)   # fixed-point unit of the probability masses (exact integer sums)


def splitmix64(z):
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic; numpy warns on scalars only)."""
    z = np.atleast_1d(np.asarray(z, dtype=np.uint64)) + GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(seed, counter, idx):
    """Counter-based uniform in (0, 1) for (seed, counter, index): the sampling RNG."""
    key = splitmix64(np.uint64(seed))
    h = splitmix64(key ^ ((np.uint64(counter) << np.uint64(32)) | np.asarray(idx, np.uint64)))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def sample(logits, temperature, top_k, top_p, seed, counter):
    """Token ids (B,) int32 from logits (B, V), one request per row.

    temperature <= 0: greedy argmax (ties -> lowest index). Otherwise keep the
    top_k largest logits (top_k <= 0: all; ties at the cut are all kept), then
    the smallest top set whose probability mass (renormalised over the kept
    set) reaches top_p (ties kept), then pick with the Gumbel-max trick:
    argmax (l - max) / T - log(-log(u_i)), u_i = uniform(seed, counter, i).
    Masses are fixed-point integers (floor(p * 2^32)) so every implementation
    sums them exactly.
    """
    B, V = logits.shape
    out = np.empty(B, np.int32)
    for b in range(B):
        lg = logits[b].astype(np.float32)
        if temperature[b] <= 0:
            out[b] = int(np.argmax(lg))
            continue
        order = np.argsort(-lg, kind="stable")
        srt = lg[order]
        keep = V
        if 0 < top_k[b] < V:
            keep = int(np.count_nonzero(lg >= srt[top_k[b] - 1]))
        mass = np.floor(np.exp((srt.astype(np.float64) - srt[0]) / float(temperature[b])) * MASS_ONE)
        mass = mass.astype(np.int64)
        if top_p[b] < 1.0:
            cum = np.cumsum(mass[:keep])
            need = float(top_p[b]) * float(cum[-1])
            n = int(np.argmax(cum.astype(np.float64) >= need)) + 1
            keep = int(np.count_nonzero(lg >= srt[n - 1]))
        kept = order[:keep]
        u = uniform(seed[b], counter[b], kept)
        score = (lg[kept].astype(np.float64) - float(srt[0])) / float(temperature[b]) - np.log(-np.log(u))
        best = np.flatnonzero(score == score.max())
        out[b] = int(kept[best].min())
    return out
