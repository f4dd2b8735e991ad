"""The shared Beam write path gives byte-identical datasets with 1 and 2 worker processes."""

import apache_beam as beam

from jamdata.manifest import read_manifest, validate_dataset
from pipelines.common import WriteManifest, WriteShards, parquet_shard_writer
from pipelines.options import pipeline_options, runner_args
from schemas import DOCUMENT


def run(out, workers):
    docs = [
        {"id": f"d{i:03d}", "source": ["c4", "wikipedia"][i % 2], "text": f"text {i}", "url": None, "metadata": "{}"}
        for i in range(200)
    ]
    with beam.Pipeline(options=pipeline_options(workers)) as p:
        shards = (
            p
            | beam.Create(docs)
            | beam.Reshuffle()
            | beam.Map(lambda d: (d["id"], d))
            | WriteShards(
                str(out), parquet_shard_writer(DOCUMENT, "source"), num_shards=3, group_of=lambda d: d["source"]
            )
        )
        shards | WriteManifest(str(out), "documents", {"demo": True})


def test_deterministic_across_workers(tmp_path):
    run(tmp_path / "w1", 1)
    run(tmp_path / "w2", 2)
    m1, m2 = read_manifest(str(tmp_path / "w1")), read_manifest(str(tmp_path / "w2"))
    assert m1["totals"]["records"] == 200
    assert [s["path"] for s in m1["shards"]][0].startswith("c4/part-")
    assert m1 == m2
    assert validate_dataset(str(tmp_path / "w2")) == []


def test_runner_args_pass_through():
    assert runner_args() == ["--runner=FnApiRunner"]
    assert "--direct_num_workers=2" in runner_args(2)
    df = runner_args(1, ["--runner=DataflowRunner", "--project=p", "--region=r"])
    assert any(a.startswith("--setup_file=") and a.endswith("setup.py") for a in df)
    assert not any("direct" in a for a in df)
