"""Beam building blocks of deduplication that keep every worker's load bounded.

- `WithSummary`: handle each value of a key together with a bounded summary of all the key's
  values (the k smallest LSH bucket members, the smallest neighbour of a node...), without ever
  holding a key's values in one place: hot keys are cut into slices.
- `ConnectedComponents`: edges -> (node, smallest node of its component) by alternating
  large-star and small-star rounds (Kiveris et al. 2014, "Connected Components in MapReduce and
  Beyond"), each a `WithSummary` over node neighbourhoods, then a check that every component has
  become a star around its minimum.
"""

from __future__ import annotations

import logging
import zlib

import apache_beam as beam

from jamdata.text.dedup import EMPTY_STATE, large_star, merge_star_state, small_star, unsettled

log = logging.getLogger(__name__)
_MISSING = object()


class _Counted(beam.CombineFn):
    """(number of values, inner summary): the count decides into how many slices a key is cut."""

    def __init__(self, inner: beam.CombineFn):
        self.inner = inner

    def create_accumulator(self):
        return 0, self.inner.create_accumulator()

    def add_input(self, acc, value):
        return acc[0] + 1, self.inner.add_input(acc[1], value)

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum(a[0] for a in accs), self.inner.merge_accumulators([a[1] for a in accs])

    def extract_output(self, acc):
        return acc[0], self.inner.extract_output(acc[1])


def _sliced(kv, split, salt_of):
    key, value = kv
    n = split.get(key, 1)
    return (key, zlib.crc32(salt_of(value).encode("utf-8")) % n if n > 1 else 0), (1, value)


def _replicated(kv, split, min_count):
    key, (count, summary) = kv
    if count < min_count:  # nothing to do for this key: its values find no summary and pass
        return
    for s in range(split.get(key, 1)):
        yield (key, s), (0, summary)


def apply_group(kv, op):
    """The values of one (key, slice), iterated once. Values that arrive before the key's summary
    wait for it: at most about `max_group` of them, since a key is sliced by its count. A key
    below `op.min_count` values has no summary and yields nothing."""
    (key, part), tagged = kv
    summary, pending = _MISSING, []
    for tag, x in tagged:
        if tag == 0:
            summary = op.prepare(x)
            if part == 0:
                yield from op.per_key(key, summary)
            for v in pending:
                yield from op.per_value(key, summary, v)
            pending = None
        elif summary is _MISSING:
            pending.append(x)
        else:
            yield from op.per_value(key, summary, x)


class Op:
    """Per-value work for `WithSummary`; subclasses override what they need. Keys with fewer
    than `min_count` values are skipped (a bucket of one member has no pair to verify)."""

    min_count = 1

    @staticmethod
    def salt_of(value) -> str:
        """The string whose hash picks a hot key's slice for this value."""
        return value if isinstance(value, str) else value[0]

    def prepare(self, summary):
        return summary

    def per_key(self, key, summary):
        return ()

    def per_value(self, key, summary, value):
        return ()


class WithSummary(beam.PTransform):
    """(key, value) -> whatever `op.per_value(key, summary, value)` yields, `summary` being a
    CombineFn's output over all of the key's values (plus `op.per_key(key, summary)` once per key).

    The summary is a lifted combine. Values are grouped by (key, slice): a key with more than
    `max_group` values is cut into ceil(count / max_group) slices by a hash of `op.salt_of(value)`
    (the few such keys reach the workers as a side input) and its summary is copied to each slice.
    A worker thus holds one summary and at most ~max_group waiting values, a key with millions of
    values is spread over many workers, and the output depends only on the values."""

    def __init__(self, summary: beam.CombineFn, op: Op, max_group: int = 10_000):
        super().__init__()
        self.summary, self.op, self.max_group = summary, op, max_group

    def expand(self, kvs):
        limit, op = self.max_group, self.op
        summaries = kvs | "Summarise" >> beam.CombinePerKey(_Counted(self.summary))
        hot = summaries | "HotKeys" >> beam.FlatMap(
            lambda kv: [(kv[0], -(-kv[1][0] // limit))] if kv[1][0] > limit else []
        )
        split = beam.pvalue.AsDict(hot)
        return (
            (
                summaries | "SummaryPerSlice" >> beam.FlatMap(_replicated, split, op.min_count),
                kvs | "SliceValues" >> beam.Map(_sliced, split, op.salt_of),
            )
            | "Both" >> beam.Flatten()
            | "GroupSlices" >> beam.GroupByKey()
            | "Apply" >> beam.FlatMap(apply_group, op)
        )


class Min(beam.CombineFn):
    """The smallest value (None for none)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, v):
        return v if acc is None or v < acc else acc

    def merge_accumulators(self, accs):
        return min((a for a in accs if a is not None), default=None)

    def extract_output(self, acc):
        return acc


# ---------------------------------------------------------------------------------------------
# connected components
class _LargeStar(Op):
    """At node u (summary: its smallest neighbour): each larger neighbour -> (min(u, that), v)."""

    def per_value(self, node, least, neighbour):
        e = large_star(node, least, neighbour)
        if e is not None:
            yield e


class _SmallStar(Op):
    """At node u (values: its smaller neighbours; summary: the smallest of them): every smaller
    neighbour and u itself -> (smallest, v)."""

    def per_key(self, node, least):
        yield least, node

    def per_value(self, node, least, smaller):
        e = small_star(node, least, smaller)
        if e is not None:
            yield e


class _StarState(beam.CombineFn):
    """(has a larger neighbour, up to two smallest smaller neighbours) of a node."""

    def create_accumulator(self):
        return EMPTY_STATE

    def add_input(self, acc, state):
        return merge_star_state([acc, state])

    def merge_accumulators(self, accs):
        return merge_star_state(accs)

    def extract_output(self, acc):
        return acc


def _check(n_unsettled: int, rounds: int, mode: str):
    if n_unsettled:
        msg = (
            f"connected components did not converge in {rounds} large-star/small-star rounds: "
            f"{n_unsettled} nodes are not yet attached to their component's smallest key; "
            f"raise text.clean.dedup.cc_rounds"
        )
        if mode == "error":
            raise RuntimeError(msg)
        log.warning("%s (some near-duplicate clusters keep more than one document)", msg)
        beam.metrics.Metrics.counter("dedup", "cc_unsettled_nodes").inc(n_unsettled)
    return n_unsettled


class ConnectedComponents(beam.PTransform):
    """Undirected edges (a, b) -> (node, smallest node of its component) for every non-minimal
    node. Each round is a large-star step then a small-star step over `WithSummary`, so no worker
    holds more than ~max_group neighbours of a node; the edge set shrinks to one star per component
    in O(log n) rounds. `rounds` is a maximum: rounds after convergence leave the stars unchanged,
    and a component still unsettled after the last one is an error (or, with mode="warn", a
    logged warning and a best-effort answer: the smallest neighbour found)."""

    def __init__(self, rounds: int = 12, max_group: int = 10_000, mode: str = "error"):
        super().__init__()
        if mode not in ("error", "warn"):
            raise ValueError(f"mode must be 'error' or 'warn', got {mode!r}")
        self.rounds, self.max_group, self.mode = rounds, max_group, mode

    def expand(self, edges):
        edges = edges | "Order" >> beam.FlatMap(lambda e: [(min(e), max(e))] if e[0] != e[1] else [])
        for r in range(self.rounds):
            edges = (
                edges
                | f"BothWays{r}" >> beam.FlatMap(lambda e: [e, (e[1], e[0])])
                | f"LargeStar{r}" >> WithSummary(Min(), _LargeStar(), self.max_group)
                | f"AtLarger{r}" >> beam.Map(lambda e: (e[1], e[0]))
                | f"SmallStar{r}" >> WithSummary(Min(), _SmallStar(), self.max_group)
            )
        states = (
            edges
            | "Ends" >> beam.FlatMap(lambda e: [(e[0], (True, ())), (e[1], (False, (e[0],)))])
            | "NodeState" >> beam.CombinePerKey(_StarState())
        )
        _ = (
            states
            | "Unsettled" >> beam.Map(lambda kv: int(unsettled(kv[1])))
            | "CountUnsettled" >> beam.CombineGlobally(sum)
            | "CheckConverged" >> beam.Map(_check, self.rounds, self.mode)
        )
        return states | "Representative" >> beam.FlatMap(lambda kv: [(kv[0], kv[1][1][0])] if kv[1][1] else [])
