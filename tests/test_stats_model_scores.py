"""The report shows what the model filters decided per source: CCNet perplexity buckets and the
reference-page classifier's scores, read from the documents' metadata."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from jamdata.stats import aggregate as agg
from jamdata.stats.shards import shard_stats
from schemas.records import DOCUMENT


def _doc(i: int, source: str, meta: dict) -> dict:
    return {
        "id": f"{source}/{i}",
        "source": source,
        "text": f"document {i} " * 20,
        "url": None,
        "metadata": json.dumps(meta),
        "language": "en",
        "language_score": 0.9,
        "quality_score": 0.5,
    }


def test_perplexity_buckets_and_reference_scores_per_source(tmp_path):
    rows = [
        _doc(
            i,
            "commoncrawl",
            {"perplexity": 100.0 + i, "perplexity_bucket": ["head", "middle", "tail"][i % 3], "quality_prob": i / 10},
        )
        for i in range(9)
    ]
    rows += [_doc(i, "wikipedia", {"file": "x.xml"}) for i in range(3)]  # the model filters did not run here
    rows.append(_doc(99, "commoncrawl", {}))
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT), path)

    stats = shard_stats("documents", str(path))
    assert stats["commoncrawl/perplexity_bucket"]["counts"] == {"head": 3, "middle": 3, "tail": 3}
    assert agg.summarize_dist(stats["commoncrawl/perplexity"])["count"] == 9
    scores = agg.summarize_dist(stats["commoncrawl/reference_score"])
    assert scores["count"] == 9 and 0.0 <= scores["p50"] <= 0.8
    assert not any(k.startswith("wikipedia/perplexity") or k == "wikipedia/reference_score" for k in stats)
