"""Pure pieces of document deduplication; `pipelines/text_dedup.py` wires them into Beam.

- exact: a hash of the normalised text (NFKC, lower case, whitespace collapsed);
- near: MinHash LSH over word n-grams. A signature of `bands * rows` values is cut into bands;
  documents sharing a band value are candidates, verified on the whole signature (estimated
  Jaccard >= threshold, or for books estimated containment of the shorter in the longer);
- clusters: connected components of verified pairs, each resolved to its smallest key, so the
  kept document does not depend on input order or on how work is split between workers.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from jamdata.text.minhash import lsh_threshold


def normalize_exact(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_hash(text: str) -> str:
    """128-bit hex digest of the normalised text (the exact-dedup key)."""
    return hashlib.blake2b(normalize_exact(text).encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class LSHParams:
    num_perm: int = 128
    bands: int = 7
    rows: int = 18
    ngram: int = 5
    threshold: float = 0.87        # verification on the whole signature
    measure: str = "jaccard"       # or "containment" (book-level overlap)
    seed: int = 1
    max_compare: int = 32          # per bucket: compare each member with at most this many smaller ones

    def __post_init__(self):
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if self.measure not in ("jaccard", "containment"):
            raise ValueError(f"measure must be 'jaccard' or 'containment', got {self.measure!r}")

    @property
    def lsh_threshold(self) -> float:
        return lsh_threshold(self.bands, self.rows)


def band_keys(sig: np.ndarray, bands: int, rows: int, prefix: str = "") -> list[str]:
    """One bucket key per band: `prefix|band|digest of the band's values`."""
    sig = np.ascontiguousarray(sig, dtype=np.uint32)
    return [f"{prefix}|{b}|" + hashlib.blake2b(sig[b * rows:(b + 1) * rows].tobytes(), digest_size=12).hexdigest()
            for b in range(bands)]


def similarity(sig_a: np.ndarray, sig_b: np.ndarray, size_a: int, size_b: int, measure: str) -> float:
    """Estimated Jaccard, or estimated share of the smaller shingle set found in the larger."""
    j = float(np.count_nonzero(sig_a == sig_b)) / len(sig_a)
    if measure == "jaccard":
        return j
    small = min(size_a, size_b)
    if small == 0:
        return 0.0
    return min(1.0, j * (size_a + size_b) / ((1.0 + j) * small))


def bucket_edges(members: Iterable[tuple[str, np.ndarray, int]], params: LSHParams) -> list[tuple[str, str, float]]:
    """Verified pairs in one LSH bucket: each member is linked to the smallest-keyed of (up to
    `max_compare`) smaller members it is similar to. Returns (key, smaller_key, similarity)."""
    ms = sorted(members, key=lambda m: m[0])
    if len(ms) < 2:
        return []
    keys = [m[0] for m in ms]
    sigs = np.stack([np.asarray(m[1], dtype=np.uint32) for m in ms])
    sizes = np.array([m[2] for m in ms], dtype=np.float64)
    out = []
    for i in range(1, len(ms)):
        if keys[i] == keys[i - 1]:
            continue
        k = min(i, params.max_compare)
        j = (sigs[:k] == sigs[i]).mean(axis=1)
        if params.measure == "containment":
            small = np.minimum(sizes[:k], sizes[i])
            with np.errstate(divide="ignore", invalid="ignore"):
                sim = np.where(small > 0, np.minimum(1.0, j * (sizes[:k] + sizes[i]) / ((1.0 + j) * small)), 0.0)
        else:
            sim = j
        hit = np.nonzero(sim >= params.threshold)[0]
        if len(hit):
            out.append((keys[i], keys[hit[0]], round(float(sim[hit[0]]), 4)))
    return out


def star_to_min(node: str, neighbours: Iterable[str]) -> list[tuple[str, str]]:
    """One Hash-to-Min round for one node: link every member of {node} + neighbours to their
    minimum. Iterated, every component becomes a star around its smallest key."""
    group = set(neighbours)
    group.add(node)
    m = min(group)
    return [(m, u) for u in sorted(group) if u != m]


def components(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """In-memory reference: node -> smallest key of its connected component (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    return {x: find(x) for x in parent}


def snippet(text: str, n: int = 200) -> str:
    return " ".join(text[:n * 2].split())[:n]


def reject(doc: dict, stage: str, reason: str) -> dict:
    """A REJECT record for a dropped document."""
    return {"id": doc["id"], "source": doc.get("source") or "", "stage": stage, "reason": reason,
            "snippet": snippet(doc.get("text") or ""), "file": None, "offset": None}


def near_dedup_in_memory(docs: Sequence[dict], params: LSHParams, key=lambda d: d["id"]) -> tuple[list[dict], dict[str, str]]:
    """Reference implementation for small inputs and tests: (kept docs, dropped key -> kept key)."""
    from jamdata.text.minhash import MinHasher

    mh = MinHasher(params.num_perm, params.ngram, params.seed)
    sigs, sizes = mh.signatures([d["text"] for d in docs])
    buckets: dict[str, list] = {}
    for d, s, n in zip(docs, sigs, sizes):
        for b in band_keys(s, params.bands, params.rows):
            buckets.setdefault(b, []).append((key(d), s, int(n)))
    edges = [(a, b) for ms in buckets.values() for a, b, _ in bucket_edges(ms, params)]
    rep = components(edges)
    dropped = {k: r for k, r in rep.items() if k != r}
    return [d for d in docs if key(d) not in dropped], dropped
