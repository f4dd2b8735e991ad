"""Every input mistake a new user makes is answered: a wrong declared format, a glob that
matches nothing, a UTF-16 file, macOS `._` junk, a missing image store. Real inputs from the
shared corpus where the mistake is about real formats."""

import gzip
import io
import tarfile

import pytest
import yaml

from jamdata.config import Config, ConfigError
from jamdata.io import InputError, expand_inputs
from jamdata.text.readers import ReadOptions, read_file
from tests.conftest import REPO


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    (tmp_path / "a.json.gz").write_bytes(b"")
    (tmp_path / "._a.json.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble junk
    assert expand_inputs(str(tmp_path / "*.json.gz")) == [str(tmp_path / "a.json.gz")]
    with pytest.raises(InputError, match=r"\*\.jsonl: the pattern matches no file"):
        expand_inputs(str(tmp_path / "*.jsonl"))


def test_utf16_file_gets_a_hint(tmp_path):
    path = tmp_path / "novel.txt"
    path.write_bytes("It was a dark and stormy night.\n".encode("utf-16"))
    recs = list(read_file(str(path), "text", "books", ReadOptions()))
    assert len(recs) == 1 and "UTF-16" in recs[0]["reason"] and "iconv" in recs[0]["reason"]
    assert recs[0]["reason"].startswith("invalid UTF-8 (byte 0xff)")


def test_macos_junk_is_not_an_arxiv_source(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [
            ("main.tex", b"\\section{Intro} Real text here. " * 20),
            ("._main.tex", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "),
            ("__MACOSX/._other.tex", b"\x00\x05\x16\x07"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "2101.00001.tar.gz"
    path.write_bytes(gzip.compress(buf.getvalue()))
    docs = [r for r in read_file(str(path), "arxiv", "arxiv", ReadOptions()) if "stage" not in r]
    assert len(docs) == 1

    assert docs[0]["metadata"]["tex_files"] == 1


def test_missing_image_store_is_a_config_error(tmp_path):
    from jamdata.interleaved.build import BuildSpec

    (tmp_path / "docs.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"image_store.*does not exist"):
        BuildSpec.from_config(
            Config(
                {
                    "sources": [
                        {
                            "format": "mmc4",
                            "paths": str(tmp_path / "docs.jsonl"),
                            "image_store": str(tmp_path / "no-such-store"),
                        }
                    ]
                }
            )
        )


def test_wrong_declared_formats_are_warned(corpus, tmp_path):
    """A WARC declared `wet`, C4 declared `pile`, dolma JSON lines declared `pile`, a UTF-16 book:
    each source reads 0 documents and the run says so (it used to exit 0 without a word)."""
    from pipelines.stats import run_stats
    from pipelines.text_clean import run

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    utf16 = tmp_path / "book.txt"
    utf16.write_bytes(("A long book. " * 200).encode("utf-16"))
    cfg["text"]["sources"] = {
        "commoncrawl": {
            "inputs": [{"format": "wet", "paths": [str(corpus / "commoncrawl" / "CC-MAIN-2020-34-sample.warc.gz")]}]
        },
        "c4": {"inputs": [{"format": "pile", "paths": [str(corpus / "c4" / "c4-sample.01.json.gz")]}]},
        "arxiv": {"inputs": [{"format": "pile", "paths": [str(corpus / "c4" / "CC-MAIN-2019-30-docs.jsonl.gz")]}]},
        "books": {"inputs": [{"format": "text", "paths": [str(utf16)]}]},
    }
    from pipelines.text_funnel import summary_lines

    manifest = run(
        Config(cfg),
        str(tmp_path / "run" / "text-clean"),
        str(tmp_path / "run" / "text-clean-rejects"),
        log_fn=lambda _line: None,
    )
    console = "\n".join(summary_lines(manifest, str(tmp_path / "run" / "text-clean")))
    assert "warning [format_matched_nothing] text-clean: source c4 read 0 documents" in console
    stats = run_stats([str(tmp_path / "run")], str(tmp_path / "report"), fast=True)
    got = {w["source"]: w for w in stats["warnings"] if w["dataset"] == "text-clean"}
    for src in ("commoncrawl", "c4", "arxiv"):
        assert got[src]["code"] == "format_matched_nothing", got
    assert "warc response=16" in got["commoncrawl"]["message"]
    assert got["books"]["code"] == "source_read_nothing" and "rejected" in got["books"]["message"]
