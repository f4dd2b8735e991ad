"""Document deduplication as Beam transforms over PCollections of DOCUMENT dicts.

    kept, rejects = docs | TextDedup(cfg.section("text.clean.dedup"))

- `ExactDedup`: documents with the same normalised-text hash; a combiner keeps the smallest key
  per hash (only the winner's text travels, losers shrink to reject stubs).
- `NearDedup`: MinHash signatures (batched) -> one bucket key per LSH band -> GroupByKey ->
  verified pairs -> connected components by iterated Hash-to-Min rounds (each a GroupByKey) ->
  every non-minimal member is joined back to its document and rejected, naming the kept key.
  No step holds more than one bucket / one node's neighbours / one batch in memory.
- Book-level overlap is `NearDedup` with measure "containment" on the `books` source.
The kept document of a cluster is always the one with the smallest key (default: the id), so
results do not depend on input order, bundling or the number of workers.
"""
from __future__ import annotations

from typing import Callable

import apache_beam as beam
import numpy as np

from jamdata.config import Config
from jamdata.text.dedup import LSHParams, band_keys, bucket_edges, exact_hash, reject, snippet, star_to_min

STAGE_EXACT = "dedup_exact"
STAGE_MINHASH = "dedup_minhash"
STAGE_BOOKS = "dedup_book_overlap"
SOURCES = ("commoncrawl", "c4", "wikipedia", "books", "arxiv")


def doc_key(doc: dict) -> str:
    return doc["id"]


def _scope_prefix(doc: dict, scope: str) -> str:
    return (doc.get("source") or "") if scope == "source" else "*"


# ---------------------------------------------------------------------------------------------
# exact
class _KeepSmallest(beam.CombineFn):
    """Accumulator: (best_key, best_doc, [(key, id, source, snippet) of the others])."""

    def __init__(self, key_fn: Callable[[dict], str]):
        self.key_fn = key_fn

    def create_accumulator(self):
        return (None, None, [])

    def _stub(self, key, doc):
        return (key, doc["id"], doc.get("source") or "", snippet(doc.get("text") or ""))

    def add_input(self, acc, doc):
        best_key, best_doc, losers = acc
        k = self.key_fn(doc)
        if best_key is None or k < best_key:
            if best_key is not None:
                losers.append(self._stub(best_key, best_doc))
            return (k, doc, losers)
        losers.append(self._stub(k, doc))
        return acc

    def merge_accumulators(self, accs):
        best_key, best_doc, losers = None, None, []
        for k, d, ls in accs:
            losers.extend(ls)
            if k is None:
                continue
            if best_key is None or k < best_key:
                if best_key is not None:
                    losers.append(self._stub(best_key, best_doc))
                best_key, best_doc = k, d
            else:
                losers.append(self._stub(k, d))
        return (best_key, best_doc, losers)

    def extract_output(self, acc):
        best_key, best_doc, losers = acc
        rejects = [{"id": i, "source": s, "stage": STAGE_EXACT,
                    "reason": f"exact duplicate of {best_doc['id']}", "snippet": snip, "file": None, "offset": None}
                   for _, i, s, snip in sorted(losers)]
        return best_doc, rejects


class ExactDedup(beam.PTransform):
    """docs -> (kept docs, reject dicts). `scope`: "source" (within each source) or "global"."""

    def __init__(self, scope: str = "source", key_fn: Callable[[dict], str] = doc_key):
        super().__init__()
        self.scope, self.key_fn = scope, key_fn

    def expand(self, docs):
        scope = self.scope

        def emit(kv):
            doc, rejects = kv[1]
            yield doc
            for r in rejects:
                yield beam.pvalue.TaggedOutput("rejects", r)

        out = (docs
               | "HashText" >> beam.Map(lambda d: (f"{_scope_prefix(d, scope)}|{exact_hash(d['text'])}", d))
               | "KeepSmallest" >> beam.CombinePerKey(_KeepSmallest(self.key_fn))
               | "Split" >> beam.FlatMap(emit).with_outputs("rejects", main="kept"))
        return out.kept, out.rejects


# ---------------------------------------------------------------------------------------------
# near (MinHash LSH)
class _Signatures(beam.DoFn):
    """A batch of docs -> (bucket key, (doc key, signature bytes, shingle count)) per band."""

    def __init__(self, params: LSHParams, scope: str, key_fn):
        self.params, self.scope, self.key_fn = params, scope, key_fn

    def setup(self):
        from jamdata.text.minhash import MinHasher

        self.hasher = MinHasher(self.params.num_perm, self.params.ngram, self.params.seed)

    def process(self, batch):
        p = self.params
        sigs, sizes = self.hasher.signatures([d["text"] for d in batch])
        for d, s, n in zip(batch, sigs, sizes):
            key = self.key_fn(d)
            payload = (key, s.tobytes(), int(n))
            for b in band_keys(s, p.bands, p.rows, _scope_prefix(d, self.scope)):
                yield b, payload


def _edges_in_bucket(kv, params: LSHParams):
    _, members = kv
    ms = [(k, np.frombuffer(sig, dtype=np.uint32), n) for k, sig, n in members]
    for a, b, _ in bucket_edges(ms, params):
        yield (a, b) if a < b else (b, a)


def _both_ways(edge):
    a, b = edge
    yield a, b
    yield b, a


def _star(kv):
    node, nbrs = kv
    yield from star_to_min(node, nbrs)


def _representative(kv):
    node, nbrs = kv
    m = min(nbrs)
    if m < node:
        yield node, m


class NearDedup(beam.PTransform):
    """docs -> (kept docs, reject dicts) by MinHash LSH + connected components."""

    def __init__(self, params: LSHParams = LSHParams(), scope: str = "source", cc_rounds: int = 5,
                 key_fn: Callable[[dict], str] = doc_key, stage: str = STAGE_MINHASH, batch_size: int = 256):
        super().__init__()
        self.params, self.scope, self.cc_rounds = params, scope, cc_rounds
        self.key_fn, self.stage, self.batch_size = key_fn, stage, batch_size

    def expand(self, docs):
        p, key_fn, stage = self.params, self.key_fn, self.stage
        edges = (docs
                 | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
                 | "Signatures" >> beam.ParDo(_Signatures(p, self.scope, key_fn))
                 | "GroupBuckets" >> beam.GroupByKey()
                 | "VerifyPairs" >> beam.FlatMap(_edges_in_bucket, p)
                 | "DistinctPairs" >> beam.Distinct())
        for r in range(self.cc_rounds):
            edges = (edges
                     | f"Undirected{r}" >> beam.FlatMap(_both_ways)
                     | f"GroupNode{r}" >> beam.GroupByKey()
                     | f"HashToMin{r}" >> beam.FlatMap(_star)
                     | f"Distinct{r}" >> beam.Distinct())
        reps = (edges
                | "UndirectedFinal" >> beam.FlatMap(_both_ways)
                | "GroupNodeFinal" >> beam.GroupByKey()
                | "Representative" >> beam.FlatMap(_representative))

        desc = (f"MinHash LSH {p.bands}x{p.rows}, "
                + (f"jaccard >= {p.threshold}" if p.measure == "jaccard" else f"containment >= {p.threshold}"))

        def join(kv):
            _, grouped = kv
            reps_of = sorted(grouped["rep"])
            for doc in grouped["doc"]:
                if reps_of:
                    yield beam.pvalue.TaggedOutput(
                        "rejects", reject(doc, stage, f"near-duplicate of {reps_of[0]} ({desc})"))
                else:
                    yield doc

        out = ({"doc": docs | "KeyDocs" >> beam.Map(lambda d: (key_fn(d), d)), "rep": reps}
               | "JoinDocs" >> beam.CoGroupByKey()
               | "Decide" >> beam.FlatMap(join).with_outputs("rejects", main="kept"))
        return out.kept, out.rejects


# ---------------------------------------------------------------------------------------------
# config + the composite used by the text-clean pipeline
LSH_KEYS = ["enabled", "sources", "num_perm", "bands", "rows", "ngram", "threshold", "seed", "max_compare"]
DEFAULTS = {
    "minhash": dict(enabled=True, sources=["commoncrawl", "c4", "wikipedia", "arxiv"], num_perm=128, bands=7,
                    rows=18, ngram=5, threshold=0.87, seed=1, max_compare=32),
    "book_overlap": dict(enabled=True, sources=["books"], num_perm=128, bands=32, rows=4, ngram=5,
                         threshold=0.9, seed=1, max_compare=32),
}


def dedup_settings(cfg: Config) -> dict:
    """Validated `text.clean.dedup` settings (see docs/text-filters.md)."""
    cfg.check_keys(["exact", "scope", "cc_rounds", "minhash", "book_overlap"])
    out = {"exact": cfg.get("exact", bool, True),
           "scope": cfg.choice("scope", ["source", "global"], "source"),
           "cc_rounds": int(cfg.number("cc_rounds", 5, lo=1, hi=50))}
    for name, measure in (("minhash", "jaccard"), ("book_overlap", "containment")):
        sec = cfg.section(name)
        sec.check_keys(LSH_KEYS)
        d = DEFAULTS[name]
        enabled = sec.get("enabled", bool, d["enabled"])
        sources = sec.get("sources", list, d["sources"])
        for s in sources:
            if s not in SOURCES:
                from jamdata.config import ConfigError
                raise ConfigError(f"{sec.prefix}.sources", f"unknown source {s!r}", allowed=SOURCES, source=sec.source)
        try:
            params = LSHParams(num_perm=int(sec.number("num_perm", d["num_perm"], lo=1)),
                               bands=int(sec.number("bands", d["bands"], lo=1)),
                               rows=int(sec.number("rows", d["rows"], lo=1)),
                               ngram=int(sec.number("ngram", d["ngram"], lo=1)),
                               threshold=float(sec.number("threshold", d["threshold"], lo=0, hi=1)),
                               measure=measure, seed=int(sec.number("seed", d["seed"], lo=0)),
                               max_compare=int(sec.number("max_compare", d["max_compare"], lo=1)))
        except ValueError as e:
            from jamdata.config import ConfigError
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(sec.prefix, str(e), source=sec.source) from None
        out[name] = {"enabled": enabled, "sources": list(sources), "params": params}
    return out


class TextDedup(beam.PTransform):
    """Exact, then MinHash near-dedup (web, wiki, arXiv), then book-level overlap (books).
    docs -> (kept docs, reject dicts)."""

    def __init__(self, cfg: Config | dict | None = None, key_fn: Callable[[dict], str] = doc_key):
        super().__init__()
        if not isinstance(cfg, Config):
            cfg = Config(cfg or {}, "text.clean.dedup")
        self.settings = dedup_settings(cfg)
        self.key_fn = key_fn

    def expand(self, docs):
        s = self.settings
        rejects = []
        if s["exact"]:
            docs, rej = docs | "Exact" >> ExactDedup(s["scope"], self.key_fn)
            rejects.append(rej)
        for name, stage in (("minhash", STAGE_MINHASH), ("book_overlap", STAGE_BOOKS)):
            conf = s[name]
            if not conf["enabled"] or not conf["sources"]:
                continue
            srcs = frozenset(conf["sources"])
            parts = docs | f"Split_{name}" >> beam.Partition(lambda d, n, srcs=srcs: 0 if d.get("source") in srcs else 1, 2)
            kept, rej = parts[0] | f"Near_{name}" >> NearDedup(conf["params"], s["scope"], s["cc_rounds"], self.key_fn, stage)
            rejects.append(rej)
            docs = (kept, parts[1]) | f"Merge_{name}" >> beam.Flatten()
        all_rejects = tuple(rejects) | "AllRejects" >> beam.Flatten() if rejects else \
            docs.pipeline | "NoRejects" >> beam.Create([])
        return docs, all_rejects
