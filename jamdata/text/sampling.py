"""The token-budget plan and the deterministic sampler (pure functions, no engine code).

Per source: target = budget x share (shares renormalised). With A tokens available the source is
repeated T // A whole epochs, then a partial epoch takes documents in the order of a seeded stable
hash of their id until the remaining tokens are met (overshooting by less than one document). Membership depends only on (seed, source, id) and
on per-source token totals, never on input order or the number of workers.

For large sources the partial epoch is found in two passes: a token histogram over the top bits of
the hash (a small vector per source) locates the boundary bucket, and only the documents of that
one bucket are sorted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from jamdata.io import stable_hash
from jamdata.errors import UserError

HIST_BITS = 12  # 4096 hash buckets per source
N_BUCKETS = 1 << HIST_BITS
SOURCES = ("commoncrawl", "c4", "wikipedia", "books", "arxiv")


class PlanError(UserError, ValueError):
    """The budget cannot be met from the available data (names the short source and by how much)."""


# -- plan ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourcePlan:
    source: str
    share: float  # renormalised, sums to 1
    max_epochs: float
    target: int  # tokens
    available: int  # tokens in one epoch of the clean data
    estimated: bool  # available was estimated from bytes (tokens/byte measured on a sample)
    tokens_per_byte: float | None = None

    @property
    def epochs(self) -> float:
        if self.target == 0:
            return 0.0
        return math.inf if self.available == 0 else self.target / self.available

    @property
    def shortfall(self) -> int:
        """Tokens missing even after repeating the source `max_epochs` times (0 = feasible)."""
        return max(0, self.target - math.floor(self.available * self.max_epochs))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["epochs"] = None if math.isinf(self.epochs) else round(self.epochs, 6)
        d["shortfall"] = self.shortfall
        return d


def normalise_shares(shares: Mapping[str, float]) -> dict[str, float]:
    total = float(sum(shares.values()))
    if total <= 0 or any(v < 0 for v in shares.values()):
        raise PlanError(f"shares must be non-negative and not all zero, got {dict(shares)}")
    return {s: float(v) / total for s, v in shares.items()}


def targets(budget: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Integer targets that add up exactly to the budget (largest-remainder rounding, ties by
    source name so the result is the same everywhere)."""
    norm = normalise_shares(shares)
    raw = {s: budget * v for s, v in norm.items()}
    out = {s: math.floor(v) for s, v in raw.items()}
    left = budget - sum(out.values())
    for s in sorted(raw, key=lambda s: (-(raw[s] - out[s]), s))[:left]:
        out[s] += 1
    return out


def build_plan(
    budget: int,
    shares: Mapping[str, float],
    max_epochs: Mapping[str, float],
    available: Mapping[str, tuple[int, bool, float | None]],
) -> list[SourcePlan]:
    """`available[source] = (tokens, estimated, tokens_per_byte)`; a source missing there has 0."""
    tgt = targets(budget, shares)
    norm = normalise_shares(shares)
    plan = []
    for s in shares:
        tokens, est, tpb = available.get(s, (0, False, None))
        plan.append(SourcePlan(s, norm[s], float(max_epochs.get(s, 1.0)), tgt[s], int(tokens), est, tpb))
    return plan


def check_plan(plan: Sequence[SourcePlan]) -> None:
    short = [p for p in plan if p.shortfall > 0]
    if not short:
        return
    parts = []
    for p in short:
        have = f"{p.available:,} tokens available" + (" (estimated)" if p.estimated else "")
        epochs = "no data" if p.available == 0 else f"would need {p.epochs:.2f} epochs"
        parts.append(
            f"source {p.source!r} is short by {p.shortfall:,} tokens: target {p.target:,}, "
            f"{have}, at most {p.max_epochs:g} epochs allowed ({epochs})"
        )
    raise PlanError(
        "impossible plan: "
        + "; ".join(parts)
        + ". Lower text.sample.budget_tokens, raise text.sample.epochs for that source, "
        "or add clean data"
    )


def plan_warnings(plan: Sequence[SourcePlan], documents: Mapping[str, int]) -> list[str]:
    """What a feasible plan will still get wrong, said before sampling: a target below one average
    document (the sampler takes whole documents, so it overshoots by up to one document per
    source: many times a tiny target), and a clean source with no share (left out of the sample).
    `documents`: clean documents per source."""
    out = []
    planned = {p.source for p in plan}
    for p in plan:
        docs = documents.get(p.source) or 0
        per_doc = p.available / docs if docs else 0
        if p.target and per_doc > p.target:
            out.append(
                f"source {p.source!r}: target {p.target:,} tokens is below one average document "
                f"({per_doc:,.0f} tokens): the sample will hold up to {(p.target + per_doc) / p.target:.1f}× "
                "its target; raise text.sample.budget_tokens or this source's share"
            )
    slack = sum(p.available / documents[p.source] for p in plan if documents.get(p.source))
    budget = sum(p.target for p in plan)
    if budget and slack > 0.1 * budget:
        out.append(
            f"whole documents may add up to {slack:,.0f} tokens over the budget of {budget:,} "
            f"(up to {(budget + slack) / budget:.1f}×): the budget is small for these documents"
        )
    for src in sorted(set(documents) - planned):
        if documents[src]:
            out.append(
                f"source {src!r} has {documents[src]:,} clean documents but no share in "
                "text.sample.shares: it is left out of the sample (give it a share, 0 to say so)"
            )
    return out


def format_plan(plan: Sequence[SourcePlan], budget: int) -> str:
    head = f"{'source':<12} {'share':>7} {'target':>15} {'available':>17} {'epochs':>8} {'max':>6} {'shortfall':>15}"
    rows = [head, "-" * len(head)]
    for p in plan:
        avail = f"{p.available:,}" + ("~" if p.estimated else " ")
        ep = "inf" if math.isinf(p.epochs) else f"{p.epochs:.3f}"
        rows.append(
            f"{p.source:<12} {p.share * 100:>6.2f}% {p.target:>15,} {avail:>17} {ep:>8} "
            f"{p.max_epochs:>6g} {p.shortfall:>15,}"
        )
    rows.append(f"{'total':<12} {100:>6.2f}% {budget:>15,} {sum(p.available for p in plan):>16,}")
    if any(p.estimated for p in plan):
        tpb = ", ".join(f"{p.source} {p.tokens_per_byte:.4f}" for p in plan if p.tokens_per_byte)
        rows.append(f"~ estimated from text bytes x measured tokens/byte ({tpb})")
    return "\n".join(rows)


# -- sampler -------------------------------------------------------------------------------------
def doc_rank(seed: int, source: str, doc_id: str) -> int:
    """The document's place in its source's partial-epoch order (64-bit, seeded)."""
    return stable_hash(source, doc_id, seed=seed)


def bucket_of(rank: int) -> int:
    return rank >> (64 - HIST_BITS)


def token_histogram(items: Iterable[tuple[int, int]]) -> np.ndarray:
    """(rank, tokens) pairs -> tokens per hash bucket (int64[N_BUCKETS])."""
    hist = np.zeros(N_BUCKETS, dtype=np.int64)
    for rank, n in items:
        hist[bucket_of(rank)] += n
    return hist


@dataclass(frozen=True)
class SourceDecision:
    """How one source is sampled: `full_epochs` whole copies, then every document whose bucket is
    below `boundary_bucket`, plus the first `boundary_remaining` tokens' worth (by rank) of the
    boundary bucket's documents."""

    source: str
    target: int
    available: int
    full_epochs: int
    boundary_bucket: int  # -1: no partial epoch
    boundary_remaining: int

    @property
    def epochs(self) -> float:
        return self.target / self.available if self.available else 0.0


def decide(source: str, target: int, hist: np.ndarray, max_epochs: float) -> SourceDecision:
    available = int(hist.sum())
    plan = SourcePlan(source, 0.0, max_epochs, target, available, False)
    check_plan([plan])
    if target == 0:
        return SourceDecision(source, 0, available, 0, -1, 0)
    full, rem = divmod(target, available)
    if rem == 0:
        return SourceDecision(source, target, available, full, -1, 0)
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, rem, side="left"))  # first bucket where cum >= rem
    before = int(cum[b - 1]) if b > 0 else 0
    return SourceDecision(source, target, available, full, b, rem - before)


def partial_cutoff(items: Iterable[tuple[int, str, int]], remaining: int) -> tuple[int, str] | None:
    """Boundary-bucket documents (rank, id, tokens): the (rank, id) of the document whose prefix
    sum first reaches `remaining`, so the target is met and overshot by less than one document."""
    if remaining <= 0:
        return None
    total = 0
    ordered = sorted(items)
    for rank, doc_id, n in ordered:
        total += n
        if total >= remaining:
            return rank, doc_id
    return (ordered[-1][0], ordered[-1][1]) if ordered else None


def copies(decision: SourceDecision, cutoff: tuple[int, str] | None, rank: int, doc_id: str) -> int:
    """How many times a document appears in the sample."""
    n = decision.full_epochs
    b = decision.boundary_bucket
    if b >= 0:
        mine = bucket_of(rank)
        if mine < b or (mine == b and cutoff is not None and (rank, doc_id) <= cutoff):
            n += 1
    return n


def sample_key(epoch: int, rank: int, doc_id: str) -> str:
    """Order of a document copy inside its shard: by epoch, then the seeded hash order."""
    return f"{epoch:04d}.{rank:016x}.{doc_id}"


def sample_source(
    docs: Sequence[tuple[str, int]], target: int, max_epochs: float, seed: int, source: str
) -> dict[str, int]:
    """Reference (in-memory) sampler for one source: doc id -> copies. The pipeline computes the
    same thing distributed; tests compare the two."""
    ranked = [(doc_rank(seed, source, i), i, n) for i, n in docs]
    d = decide(source, target, token_histogram((r, n) for r, _, n in ranked), max_epochs)
    boundary = [x for x in ranked if bucket_of(x[0]) == d.boundary_bucket]
    cut = partial_cutoff(boundary, d.boundary_remaining) if d.boundary_bucket >= 0 else None
    return {i: copies(d, cut, r, i) for r, i, _ in ranked}
