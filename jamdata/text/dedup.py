"""Pure pieces of document deduplication; `pipelines/text_dedup.py` wires them into Beam.

- exact: a hash of the normalised text (NFKC, lower case, whitespace collapsed);
- near: MinHash LSH over word n-grams. A signature of `bands * rows` values is cut into bands;
  documents sharing a band value are candidates, each verified on the whole signature (estimated
  Jaccard >= threshold, or for books estimated containment of the shorter in the longer) against
  the bucket's `max_compare` smallest members only, so a bucket needs a bounded summary, not a list;
- clusters: connected components of verified pairs by large-star/small-star steps, each resolved
  to its smallest key, so the kept document does not depend on input order or on how work is
  split between workers. `components` (union-find) and `star_components` are in-memory references.
"""

from __future__ import annotations

import bisect
import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from jamdata.text.minhash import lsh_threshold
from schemas import records


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
    threshold: float = 0.87  # verification on the whole signature
    measure: str = "jaccard"  # or "containment" (book-level overlap)
    seed: int = 1
    max_compare: int = 32  # per bucket: compare each member with at most this many smaller ones

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
    return [
        f"{prefix}|{b}|" + hashlib.blake2b(sig[b * rows : (b + 1) * rows].tobytes(), digest_size=12).hexdigest()
        for b in range(bands)
    ]


def similarity(sig_a: np.ndarray, sig_b: np.ndarray, size_a: int, size_b: int, measure: str) -> float:
    """Estimated Jaccard, or estimated share of the smaller shingle set found in the larger."""
    j = float(np.count_nonzero(sig_a == sig_b)) / len(sig_a)
    if measure == "jaccard":
        return j
    small = min(size_a, size_b)
    if small == 0:
        return 0.0
    return min(1.0, j * (size_a + size_b) / ((1.0 + j) * small))


Member = tuple  # (key, signature as uint32 bytes, distinct shingle count)


def smallest_refs(members: Iterable[Member], k: int) -> list[Member]:
    """The `k` smallest-keyed members (distinct keys) of a bucket, sorted: the bounded summary
    every member of the bucket is verified against. Merging partial results in any order gives
    the same list, so it can be computed by a combiner."""
    out: list = []
    for m in sorted(members):
        if not out or out[-1][0] != m[0]:
            out.append(m)
            if len(out) == k:
                break
    return out


class Refs:
    """`smallest_refs` as arrays, built once per bucket (or bucket slice) and shared by its members."""

    def __init__(self, refs: Sequence[Member]):
        self.keys = [r[0] for r in refs]
        self.sigs = np.stack([np.frombuffer(r[1], dtype=np.uint32) for r in refs]) if refs else None
        self.sizes = np.array([r[2] for r in refs], dtype=np.float64)

    def first_similar(self, member: Member, params: LSHParams) -> str | None:
        """The smallest ref key that is smaller than the member's and similar to it (estimated
        Jaccard or containment >= threshold), or None: at most len(refs) comparisons."""
        key, sig, size = member
        n = bisect.bisect_left(self.keys, key)
        if n == 0 or self.sigs is None:  # (sigs is None only when there are no refs)
            return None
        j = (self.sigs[:n] == np.frombuffer(sig, dtype=np.uint32)).mean(axis=1)
        if params.measure == "containment":
            sizes = self.sizes[:n]
            small = np.minimum(sizes, size)
            with np.errstate(divide="ignore", invalid="ignore"):
                j = np.where(small > 0, np.minimum(1.0, j * (sizes + size) / ((1.0 + j) * small)), 0.0)
        hit = np.nonzero(j >= params.threshold)[0]
        return self.keys[int(hit[0])] if len(hit) else None


def bucket_edges(members: Iterable[Member], params: LSHParams) -> list[tuple[str, str]]:
    """Verified pairs in one LSH bucket (in-memory reference): each member is linked to the
    smallest-keyed similar member among the bucket's `max_compare` smallest that are smaller than
    it. Returns (smaller_key, key). The pipeline computes the same pairs without holding a bucket."""
    members = list(members)
    refs = Refs(smallest_refs(members, params.max_compare))
    return sorted({(hit, m[0]) for m in members if (hit := refs.first_similar(m, params)) is not None})


def large_star(node: str, least: str, neighbour: str) -> tuple[str, str] | None:
    """Large-star step for one edge seen from `node` (Kiveris et al. 2014): a larger neighbour
    is re-linked to the least of node and all its neighbours (`least`)."""
    m = min(least, node)
    return (m, neighbour) if neighbour > node else None


def small_star(node: str, least: str, smaller: str) -> tuple[str, str] | None:
    """Small-star step for one edge seen from its larger end `node`: the smaller neighbour is
    re-linked to the least of the node's smaller neighbours (`least`); `node` itself too, once."""
    return (least, smaller) if smaller != least else None


def star_components(edges: Iterable[tuple[str, str]], max_rounds: int = 64) -> tuple[dict[str, str], int]:
    """In-memory reference of the pipeline's connected components: alternate large-star and
    small-star until every component is a star around its smallest key. Returns (node -> smallest key of its component
    for non-minimal nodes, rounds run); raises if `max_rounds` is reached first."""
    cur = {(min(a, b), max(a, b)) for a, b in edges if a != b}
    for r in range(max_rounds + 1):
        state = star_state(cur)
        if not any(unsettled(s) for s in state.values()):
            return {n: s[1][0] for n, s in state.items() if s[1]}, r
        if r == max_rounds:
            break
        adj: dict[str, set] = {}
        for a, b in cur:
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        large = {e for u, nb in adj.items() for v in nb if (e := large_star(u, min(nb), v))}
        below: dict[str, set] = {}
        for a, b in large:
            below.setdefault(b, set()).add(a)
        cur = {e for u, nb in below.items() for v in nb if (e := small_star(u, min(nb), v))}
        cur |= {(min(nb), u) for u, nb in below.items()}
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")


def star_state(edges: Iterable[tuple[str, str]]) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """node -> (has a larger neighbour, its up to two smallest smaller neighbours)."""
    out: dict = {}
    for a, b in edges:
        out[a] = merge_star_state([out.get(a, EMPTY_STATE), (True, ())])
        out[b] = merge_star_state([out.get(b, EMPTY_STATE), (False, (a,))])
    return out


EMPTY_STATE: tuple[bool, tuple[str, ...]] = (False, ())


def merge_star_state(states: Iterable[tuple[bool, tuple[str, ...]]]) -> tuple[bool, tuple[str, ...]]:
    larger, smaller = False, set[str]()
    for has_larger, sm in states:
        larger = larger or has_larger
        smaller.update(sm)
    return larger, tuple(sorted(smaller)[:2])


def unsettled(state: tuple[bool, tuple[str, ...]]) -> bool:
    """True unless the node is a component's minimum (no smaller neighbour) or a leaf attached
    to exactly one smaller node and to nothing larger: the edge set is then a star per component."""
    has_larger, smaller = state
    return bool(smaller) and (has_larger or len(smaller) > 1)


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
    return " ".join(text[: n * 2].split())[:n]


def reject(doc: dict, stage: str, reason: str) -> dict:
    """A REJECT record for a dropped document."""
    return records.reject(doc["id"], doc.get("source") or "", stage, reason, snippet(doc.get("text") or ""))


def near_dedup_in_memory(
    docs: Sequence[dict], params: LSHParams, key=lambda d: d["id"]
) -> tuple[list[dict], dict[str, str]]:
    """Reference implementation for small inputs and tests: (kept docs, dropped key -> kept key)."""
    from jamdata.text.minhash import MinHasher

    mh = MinHasher(params.num_perm, params.ngram, params.seed)
    sigs, sizes = mh.signatures([d["text"] for d in docs])
    buckets: dict[str, list] = {}
    for d, s, n in zip(docs, sigs, sizes):
        for b in band_keys(s, params.bands, params.rows):
            buckets.setdefault(b, []).append((key(d), s.tobytes(), int(n)))
    edges = [e for ms in buckets.values() for e in bucket_edges(ms, params)]
    rep = components(edges)
    dropped = {k: r for k, r in rep.items() if k != r}
    return [d for d in docs if key(d) not in dropped], dropped
