"""Document deduplication as Beam transforms over PCollections of DOCUMENT dicts.

    kept, rejects = docs | TextDedup(cfg.section("text.clean.dedup"))

- `ExactDedup`: a combiner keeps the smallest key and the count per normalised-text hash; every
  other key is told the winner's id, and documents are joined back by key.
- `NearDedup`: MinHash signatures (batched) -> one bucket key per LSH band -> a combiner keeps
  each bucket's `max_compare` smallest members -> every member verified against them (at most one
  pair per member) -> connected components by large-star/small-star rounds until settled ->
  every non-minimal member is joined back to its document and rejected, naming the kept key.
- Book-level overlap is `NearDedup` with measure "containment" on the `books` source.
No step holds a whole bucket, hash group or neighbourhood: keys with more than `max_group`
values are sliced (`pipelines/dedup_graph.py`). The kept document of a cluster is always the one
with the smallest key (default: the id), so results do not depend on input order, bundling or
the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import apache_beam as beam

from jamdata.config import Config, ConfigError
from jamdata.settings import load_settings, setting
from jamdata.text.dedup import LSHParams, Refs, band_keys, exact_hash, reject, smallest_refs
from pipelines.dedup_graph import ConnectedComponents, Min, Op, WithSummary

STAGE_EXACT = "dedup_exact"
STAGE_MINHASH = "dedup_minhash"
STAGE_BOOKS = "dedup_book_overlap"
SOURCES = ("commoncrawl", "c4", "wikipedia", "books", "arxiv")
CC_ROUNDS = 12  # settles a path of 4,096 near-duplicates with ids in path order, 50,000 shuffled
MAX_GROUP = 10_000  # values of one key handled in one place before the key is sliced


def by_id(doc: dict) -> str:
    """Dedup's default order key: the document id (the kept one of a cluster has the smallest)."""
    return doc["id"]


def _scope_prefix(doc: dict, scope: str) -> str:
    return (doc.get("source") or "") if scope == "source" else "*"


# ---------------------------------------------------------------------------------------------
# exact
class _ExactLosers(Op):
    """summary: the smallest (key, id) of a text hash; every other key yields its reject reason."""

    min_count = 2

    def per_value(self, hash_key, winner, value):
        key, _ = value
        if key != winner[0]:
            yield key, (hash_key, f"exact duplicate of {winner[1]}")


class ExactDedup(beam.PTransform):
    """docs -> (kept docs, reject dicts). `scope`: "source" (within each source) or "global".

    Only (text hash, key, id) triples are grouped: a combiner keeps the smallest key and the count
    per hash, every other key learns the winner's id, and documents are joined back by key."""

    def __init__(self, scope: str = "source", key_fn: Callable[[dict], str] = by_id, max_group: int = MAX_GROUP):
        super().__init__()
        self.scope, self.key_fn, self.max_group = scope, key_fn, max_group

    def expand(self, docs):
        scope, key_fn = self.scope, self.key_fn
        hashed = docs | "HashText" >> beam.Map(
            lambda d: (key_fn(d), f"{_scope_prefix(d, scope)}|{exact_hash(d['text'])}", d)
        )
        losers = (
            hashed
            | "HashKeyId" >> beam.Map(lambda t: (t[1], (t[0], t[2]["id"])))
            | "SmallestPerHash" >> WithSummary(Min(), _ExactLosers(), self.max_group)
        )

        def decide(kv):
            _, grouped = kv
            lost = dict(grouped["lost"])
            kept_hashes = set()
            for hash_key, doc in sorted(grouped["doc"], key=lambda hd: (hd[0], hd[1]["text"])):
                if hash_key in lost:
                    yield beam.pvalue.TaggedOutput("rejects", reject(doc, STAGE_EXACT, lost[hash_key]))
                elif hash_key in kept_hashes:  # the same key twice with the same text
                    yield beam.pvalue.TaggedOutput(
                        "rejects", reject(doc, STAGE_EXACT, f"exact duplicate of {doc['id']}")
                    )
                else:
                    kept_hashes.add(hash_key)
                    yield doc

        out = (
            {"doc": hashed | "KeyDocs" >> beam.Map(lambda t: (t[0], (t[1], t[2]))), "lost": losers}
            | "JoinDocs" >> beam.CoGroupByKey()
            | "Decide" >> beam.FlatMap(decide).with_outputs("rejects", main="kept")
        )
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
            payload = (self.key_fn(d), s.tobytes(), int(n))
            for b in band_keys(s, p.bands, p.rows, _scope_prefix(d, self.scope)):
                yield b, payload


class _SmallestRefs(beam.CombineFn):
    """The `k` smallest-keyed members of a bucket with their signatures (a bounded accumulator)."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return []

    def add_input(self, acc, member):
        if len(acc) < self.k or member < acc[-1]:
            return smallest_refs(acc + [member], self.k)
        return acc

    def merge_accumulators(self, accs):
        return smallest_refs([m for a in accs for m in a], self.k)

    def extract_output(self, acc):
        return acc


class _VerifyMember(Op):
    """Each bucket member against the bucket's smallest members: at most one edge per member."""

    min_count = 2

    def __init__(self, params: LSHParams):
        self.params = params

    def prepare(self, refs):
        return Refs(refs)

    def per_value(self, bucket, refs, member):
        hit = refs.first_similar(member, self.params)
        if hit is not None:
            yield hit, member[0]


class NearDedup(beam.PTransform):
    """docs -> (kept docs, reject dicts) by MinHash LSH + connected components.

    `cc_rounds` is the most large-star/small-star rounds run; components not settled by then
    fail the job (`on_unconverged="error"`) or are logged and resolved as far as they got."""

    def __init__(
        self,
        params: LSHParams = LSHParams(),
        scope: str = "source",
        cc_rounds: int = CC_ROUNDS,
        key_fn: Callable[[dict], str] = by_id,
        stage: str = STAGE_MINHASH,
        batch_size: int = 256,
        max_group: int = MAX_GROUP,
        on_unconverged: str = "error",
    ):
        super().__init__()
        self.params, self.scope, self.cc_rounds = params, scope, cc_rounds
        self.key_fn, self.stage, self.batch_size = key_fn, stage, batch_size
        self.max_group, self.on_unconverged = max_group, on_unconverged

    def expand(self, docs):
        p, key_fn, stage = self.params, self.key_fn, self.stage
        edges = (
            docs
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "Signatures" >> beam.ParDo(_Signatures(p, self.scope, key_fn))
            | "VerifyBuckets" >> WithSummary(_SmallestRefs(p.max_compare), _VerifyMember(p), self.max_group)
            | "DistinctPairs" >> beam.Distinct()
        )
        reps = edges | "Components" >> ConnectedComponents(self.cc_rounds, self.max_group, self.on_unconverged)

        desc = f"MinHash LSH {p.bands}x{p.rows}, " + (
            f"jaccard >= {p.threshold}" if p.measure == "jaccard" else f"containment >= {p.threshold}"
        )

        def join(kv):
            _, grouped = kv
            reps_of = sorted(grouped["rep"])
            for doc in grouped["doc"]:
                if reps_of:
                    yield beam.pvalue.TaggedOutput(
                        "rejects", reject(doc, stage, f"near-duplicate of {reps_of[0]} ({desc})")
                    )
                else:
                    yield doc

        out = (
            {"doc": docs | "KeyDocs" >> beam.Map(lambda d: (key_fn(d), d)), "rep": reps}
            | "JoinDocs" >> beam.CoGroupByKey()
            | "Decide" >> beam.FlatMap(join).with_outputs("rejects", main="kept")
        )
        return out.kept, out.rejects


# ---------------------------------------------------------------------------------------------
# config + the composite used by the text-clean pipeline
@dataclass(frozen=True)
class NearDupSettings:
    """`text.clean.dedup.minhash`: MinHash LSH near-duplicates (Jaccard of word n-grams)."""

    enabled: bool = setting(True, "run this step")
    sources: list[str] = setting(["commoncrawl", "c4", "wikipedia", "arxiv"], "sources it runs on", choices=SOURCES)
    num_perm: int = setting(128, "MinHash permutations", lo=1)
    bands: int = setting(7, "LSH bands (bands x rows <= num_perm)", lo=1)
    rows: int = setting(18, "rows per band", lo=1)
    ngram: int = setting(5, "word n-gram size", lo=1)
    threshold: float = setting(0.87, "estimated similarity at which a candidate pair is a duplicate", lo=0, hi=1)
    seed: int = setting(1, "seed of the permutations", lo=0)
    max_compare: int = setting(32, "per bucket, each member is compared with at most this many smaller ones", lo=1)


@dataclass(frozen=True)
class BookOverlapSettings(NearDupSettings):
    """`text.clean.dedup.book_overlap`: book-level overlap (containment of n-grams)."""

    sources: list[str] = setting(["books"], "sources it runs on", choices=SOURCES)
    bands: int = setting(32, "LSH bands (bands x rows <= num_perm)", lo=1)
    rows: int = setting(4, "rows per band", lo=1)
    threshold: float = setting(0.9, "estimated containment at which a book overlaps another", lo=0, hi=1)


@dataclass(frozen=True)
class DedupSettings:
    """`text.clean.dedup` (docs/text-filters.md)."""

    exact: bool = setting(True, "drop exact copies of the normalised text")
    scope: str = setting("source", "dedup within each source, or across all", choices=("source", "global"))
    cc_rounds: int = setting(CC_ROUNDS, "most connected-components rounds", lo=1, hi=64)
    cc_unconverged: str = setting(
        "error", "what an unsettled component does after cc_rounds", choices=("error", "warn")
    )
    max_group: int = setting(MAX_GROUP, "values of one key handled in one place before it is sliced", lo=2)
    minhash: NearDupSettings = setting(NearDupSettings())
    book_overlap: BookOverlapSettings = setting(BookOverlapSettings())


def lsh_params(s: NearDupSettings, measure: str, where: str, source: str = "") -> LSHParams:
    try:
        return LSHParams(
            num_perm=s.num_perm,
            bands=s.bands,
            rows=s.rows,
            ngram=s.ngram,
            threshold=s.threshold,
            measure=measure,
            seed=s.seed,
            max_compare=s.max_compare,
        )
    except ValueError as e:
        raise ConfigError(where, str(e), source=source) from None


def dedup_settings(cfg: Config) -> dict:
    """Validated `text.clean.dedup` settings (see docs/text-filters.md)."""
    s = load_settings(DedupSettings, cfg)
    out = {
        "exact": s.exact,
        "scope": s.scope,
        "cc_rounds": s.cc_rounds,
        "cc_unconverged": s.cc_unconverged,
        "max_group": s.max_group,
    }
    for name, measure in (("minhash", "jaccard"), ("book_overlap", "containment")):
        near = getattr(s, name)
        out[name] = {
            "enabled": near.enabled,
            "sources": list(near.sources),
            "params": lsh_params(near, measure, f"{cfg.prefix}.{name}", cfg.source),
        }
    return out


class TextDedup(beam.PTransform):
    """Exact, then MinHash near-dedup (web, wiki, arXiv), then book-level overlap (books).
    docs -> (kept docs, reject dicts)."""

    def __init__(self, cfg: Config | dict | None = None, key_fn: Callable[[dict], str] = by_id):
        super().__init__()
        if not isinstance(cfg, Config):
            cfg = Config(cfg or {}, "text.clean.dedup")
        self.settings = dedup_settings(cfg)
        self.key_fn = key_fn

    def expand(self, docs):
        s = self.settings
        rejects = []
        if s["exact"]:
            docs, rej = docs | "Exact" >> ExactDedup(s["scope"], self.key_fn, s["max_group"])
            rejects.append(rej)
        for name, stage in (("minhash", STAGE_MINHASH), ("book_overlap", STAGE_BOOKS)):
            conf = s[name]
            if not conf["enabled"] or not conf["sources"]:
                continue
            srcs = frozenset(conf["sources"])
            parts = docs | f"Split_{name}" >> beam.Partition(
                lambda d, n, srcs=srcs: 0 if d.get("source") in srcs else 1, 2
            )
            near = NearDedup(
                conf["params"],
                s["scope"],
                s["cc_rounds"],
                self.key_fn,
                stage,
                max_group=s["max_group"],
                on_unconverged=s["cc_unconverged"],
            )
            kept, rej = parts[0] | f"Near_{name}" >> near
            rejects.append(rej)
            docs = (kept, parts[1]) | f"Merge_{name}" >> beam.Flatten()
        all_rejects = (
            tuple(rejects) | "AllRejects" >> beam.Flatten()
            if rejects
            else docs.pipeline | "NoRejects" >> beam.Create([])
        )
        return docs, all_rejects
