"""From dataset directories to the figures of `stats.json`.

`plan_shards` lists the work (one entry per shard, from the manifests only); the per-shard
statistics are merged by a Beam combiner (pipelines/stats.py) or in-process (`compute_local`);
`finalize` turns merged aggregates plus the manifests into the documented stats.json layout.

A shard whose bytes differ from its manifest is reported as damaged, never counted as ok: sizes are
compared with the manifest in every mode, and each shard read in a full run is first hashed and
compared with the manifest's sha256 (a damaged shard is reported, not read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jamdata.io import sha256_file
from jamdata.manifest import HASH_DIFFERS, MANIFEST, SIZE_DIFFERS, ManifestError, read_manifest, validate_dataset
from jamdata.stats import aggregate as agg
from jamdata.stats.shards import shard_stats
from jamdata.vocab import JointVocab

STATS_VERSION = "1"
RECORD_KINDS = {"documents", "rejects", "text_tokens", "image_caption", "interleaved"}
DAMAGED_METRIC = "all/damaged_shards"


@dataclass(frozen=True)
class ShardTask:
    dataset: str
    kind: str
    path: str
    group: str | None
    vocab: dict | None
    sha256: str | None = None  # from the manifest; checked before the shard is read
    rel: str = ""

    def run(self) -> dict:
        if self.sha256 and sha256_file(self.path) != self.sha256:
            return {DAMAGED_METRIC: agg.counter([f"{self.rel or Path(self.path).name}: {HASH_DIFFERS}"])}
        vocab = JointVocab.from_dict(self.vocab) if self.vocab else None
        return shard_stats(self.kind, self.path, self.group, vocab)


def expand_dirs(dirs: list[str]) -> dict[str, str]:
    """Dataset name -> path (see expand_dirs_noting)."""
    return expand_dirs_noting(dirs)[0]


def expand_dirs_noting(dirs: list[str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Dataset name -> path, and the (name, reported-as name, path) of every dataset whose name
    was taken already. A directory without a manifest whose sub-directories have one is a whole
    run: each of its datasets is reported. Names are the directory names; a second dataset of the
    same name (e.g. `text-clean` of two runs) is kept as `<run>/<name>`, never dropped."""
    from jamdata.io import absolute, exists, join, list_dirs

    out: dict[str, str] = {}
    shadowed: list[tuple[str, str, str]] = []

    def add(name: str, path: str, parent: str) -> None:
        kept = name
        if kept in out:
            kept = f"{parent}/{name}" if parent else name
            while kept in out:
                kept += "_"
            shadowed.append((name, kept, path))
        out[kept] = path

    for d in dirs:
        d = absolute(d)  # in the driver: Beam workers resolve relative paths elsewhere
        subs = [c for c in list_dirs(d) if exists(join(d, c, MANIFEST))]
        if not exists(join(d, MANIFEST)) and subs:
            for c in subs:
                add(c, join(d, c), d.rstrip("/").rsplit("/", 1)[-1])
        else:
            parts = d.rstrip("/").rsplit("/", 2)
            add(parts[-1] or d, d, parts[-2] if len(parts) > 2 else "")
    return out, shadowed


def inspect_datasets(datasets: dict[str, str], deep_validate: bool = False) -> dict[str, dict]:
    """Manifest, status and problems of every dataset (missing shards, no manifest...)."""
    info: dict[str, dict] = {}
    for name, path in datasets.items():
        entry: dict = {"path": path, "problems": []}
        try:
            m = read_manifest(path)
        except ManifestError as e:
            entry.update(kind=None, status="not a dataset", problems=[str(e)], manifest=None)
            info[name] = entry
            continue
        entry["kind"] = m["kind"]
        entry["manifest"] = m
        entry["problems"] = validate_dataset(path, deep=deep_validate)
        if entry["problems"]:
            entry["status"] = "damaged" if any(_is_damage(p) for p in entry["problems"]) else "problems"
        elif m["totals"]["records"] == 0 and m["kind"] in RECORD_KINDS:
            entry["status"] = "empty"
        else:
            entry["status"] = "ok"
        info[name] = entry
    return info


def _is_damage(problem: str) -> bool:
    return SIZE_DIFFERS in problem or HASH_DIFFERS in problem


def plan_shards(info: dict[str, dict]) -> list[ShardTask]:
    tasks = []
    for name, entry in info.items():
        m = entry.get("manifest")
        if not m:
            continue
        broken = {p.split(":", 1)[0] for p in entry["problems"]}
        for s in m["shards"]:
            if s["path"] in broken:
                continue  # reported as a problem, not read
            tasks.append(
                ShardTask(
                    name,
                    m["kind"],
                    f"{entry['path']}/{s['path']}",
                    s.get("group"),
                    m.get("vocab"),
                    s.get("sha256"),
                    s["path"],
                )
            )
    return tasks


def run_task(task: ShardTask) -> tuple[str, dict]:
    try:
        return task.dataset, task.run()
    except Exception as e:  # a shard that cannot be read is reported, not fatal
        return task.dataset, {"all/unreadable_shards": agg.counter([f"{Path(task.path).name}: {e}"])}


def compute_local(tasks: list[ShardTask]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for task in tasks:
        name, partial = run_task(task)
        merged[name] = agg.merge_maps(merged.get(name, {}), partial)
    return merged


def _metric_summary(a: dict) -> dict:
    t = a["type"]
    if t == "dist":
        s = agg.summarize_dist(a)
        scale = a.get("scale", "log")
        s["histogram"] = [
            [*agg.bin_edges(int(b), scale), c] for b, c in sorted(((int(k), v) for k, v in a["hist"].items()))
        ]
        s["scale"] = scale
        return s
    if t == "count":
        return {
            "counts": dict(sorted(a["counts"].items(), key=lambda kv: (-kv[1], kv[0]))),
            "total": sum(a["counts"].values()),
        }
    if t == "codes":
        return {**agg.code_usage(a["counts"]), "counts": a["counts"]}
    if t == "examples":
        return {"examples": [{"id": i, "text": txt} for _, i, txt in a["items"]]}
    raise ValueError(t)


def _with_damage(entry: dict, aggregates: dict) -> tuple[str, list[str], dict]:
    """Status and problems of a dataset once the shard reads are in: a shard whose sha256
    differed from the manifest makes the dataset `damaged`. The marker is not a figure."""
    aggregates = dict(aggregates)
    damaged = aggregates.pop(DAMAGED_METRIC, None)
    if not damaged:
        return entry["status"], entry["problems"], aggregates
    return "damaged", list(entry["problems"]) + sorted(damaged["counts"]), aggregates


def finalize(info: dict[str, dict], merged: dict[str, dict], fast: bool = False) -> dict:
    datasets = {}
    overall = {"records": 0, "bytes": 0, "tokens": 0}
    for name, entry in info.items():
        m = entry.get("manifest")
        status, problems, aggregates = _with_damage(entry, merged.get(name, {}))
        out = {"path": entry["path"], "kind": entry["kind"], "status": status, "problems": problems}
        if m:
            out["manifest"] = {
                "totals": m["totals"],
                "vocab_fingerprint": m["vocab_fingerprint"],
                "summary": m.get("summary", {}),
                "shards": len(m["shards"]),
                "tool_version": m["tool_version"],
            }
            groups: dict[str, dict] = {}
            for s in m["shards"]:
                g = groups.setdefault(s.get("group") or "all", {"shards": 0, "records": 0, "bytes": 0, "tokens": 0})
                g["shards"] += 1
                g["records"] += s.get("records") or 0
                g["bytes"] += s["bytes"]
                g["tokens"] += s.get("tokens") or 0
            out["shard_totals"] = groups
            for k in overall:  # datasets of records only: a tokenizer's "records" are its pieces
                overall[k] += (m["totals"].get(k) or 0) if m["kind"] in RECORD_KINDS else 0
        metrics: dict[str, dict] = {}
        for key, a in sorted(aggregates.items()):
            group, _, metric = key.partition("/")
            metrics.setdefault(group, {})[metric] = _metric_summary(a)
        out["groups"] = metrics
        datasets[name] = out
    return {
        "stats_version": STATS_VERSION,
        "mode": "fast (manifests only)" if fast else "full (shards read)",
        "datasets": datasets,
        "overall": overall,
    }
