"""SentencePiece-style (`tokenizer.ggml.model = llama`) encoding, as llama.cpp does it.

Hand-written on purpose: llama.cpp does not run SentencePiece's own
algorithm but a score-driven bigram merge (llm_tokenizer_spm_session in
src/llama-vocab.cpp): start from single characters, repeatedly merge the
adjacent pair whose concatenation is a vocab token of highest score (ties:
leftmost pair), then emit each final symbol as its token or, if it is not one,
as byte-fallback tokens `<0xXX>`. A `tokenizers` BPE model built from the
vocab needs a merge list with one rank per (left, right) pair, and cannot
express "same score, leftmost wins" between different pairs that make the
same token (runs of "▁" hit exactly that), and a Unigram model is a different
algorithm (Viterbi), so neither reproduces llama.cpp exactly.

The caller escapes whitespace (" " -> "▁") and adds the prefix space.
"""

import heapq


def spm_encode(text: str, token_to_id: dict, scores, byte_ids, unk_id: int) -> list:
    """Token ids of one escaped text fragment.

    text: the fragment with spaces already replaced by "▁".
    token_to_id: piece -> id; scores: per-id score (indexable by id);
    byte_ids: 256 ids of the byte tokens (-1 where the vocab has none).
    """
    n = len(text)
    if n == 0:
        return []
    sym = list(text)                 # symbol text; "" once merged into its left neighbour
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    get = token_to_id.get
    heap = []
    push = heapq.heappush
    # heap entries: (-score, left, right, merged length); max score first, then leftmost
    for i in range(n - 1):
        tid = get(sym[i] + sym[i + 1])
        if tid is not None:
            heap.append((-scores[tid], i, i + 1, 2))
    heapq.heapify(heap)
    pop = heapq.heappop
    while heap:
        _, left, right, size = pop(heap)
        ls, rs = sym[left], sym[right]
        # stale: one side was merged away, or a side grew since the pair was queued
        if not ls or not rs or len(ls) + len(rs) != size:
            continue
        merged = ls + rs
        sym[left], sym[right] = merged, ""
        r = nxt[right]
        nxt[left] = r
        if r >= 0:
            prv[r] = left
        p = prv[left]
        if p >= 0:
            t = sym[p] + merged
            tid = get(t)
            if tid is not None:
                push(heap, (-scores[tid], p, left, len(t)))
        if r >= 0:
            t = merged + sym[r]
            tid = get(t)
            if tid is not None:
                push(heap, (-scores[tid], left, r, len(t)))
    out = []
    i = 0
    while i != -1:
        s = sym[i]
        tid = get(s)
        if tid is not None:
            out.append(tid)
        else:                        # no such piece: byte fallback, one token per UTF-8 byte
            for b in s.encode("utf-8"):
                bid = byte_ids[b]
                out.append(bid if bid >= 0 else unk_id)
        i = nxt[i]
    return out
