"""The model-based filters: LLaMA's reference-page classifier (`jamdata quality train`, filter
`quality`) and CCNet's KenLM perplexity (filter `perplexity`), on real Wikipedia and Common Crawl
documents from the sample corpus."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jamdata.cli import main as cli_main
from jamdata.config import Config, ConfigError
from jamdata.text.clean import clean_records
from jamdata.text.filters import apply_chain, build_filter_chain
from jamdata.text.readers import is_reject, read_file


@pytest.fixture(scope="module")
def wiki_texts(corpus):
    recs = read_file(str(corpus / "wikipedia/enwiki-pages-articles-shortened.xml.bz2"), "wiki_xml", "wikipedia")
    return [d["text"] for d in clean_records(recs, "wiki_xml") if not is_reject(d) and len(d["text"]) > 2000]


@pytest.fixture(scope="module")
def web_texts(corpus):
    with gzip.open(corpus / "c4/CC-MAIN-2019-30-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        return [t for t in (json.loads(line)["text"] for line in f) if len(t) > 500]


def write_docs(path, texts):
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), path / "part-00000.parquet")
    return str(path)


def chain(cfg: dict, source: str = "commoncrawl"):
    return build_filter_chain(Config(cfg, "text.clean.filters"), source)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, wiki_texts, web_texts):
    tmp = tmp_path_factory.mktemp("quality")
    pos, neg = write_docs(tmp / "wikipedia", wiki_texts), write_docs(tmp / "commoncrawl", web_texts[:300])
    out = tmp / "wikiref.npz"
    return pos, neg, out


def test_train_prints_held_out_precision_recall_and_saves(classifier, capsys):
    pos, neg, out = classifier
    assert cli_main(["quality", "train", "--positive", pos, "--negative", neg, "--out", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "trained (numpy)" in printed and out.exists()
    line = next(ln for ln in printed.splitlines() if "score >= 0.5" in ln)
    precision = float(line.split("precision ")[1].split()[0])
    recall = float(line.split("recall ")[1].split()[0])
    assert precision >= 0.7 and recall >= 0.9, printed  # 19 + 60 held-out documents


def test_quality_filter_keeps_reference_like_pages_and_stores_the_score(classifier, wiki_texts, web_texts):
    pos, neg, out = classifier
    if not out.exists():
        cli_main(["quality", "train", "--positive", pos, "--negative", neg, "--out", str(out), "--seed", "1"])
    (f,) = chain({"chains": {"commoncrawl": ["quality"]}, "quality": {"model": str(out), "threshold": 0.5}})
    kept_wiki = [apply_chain(t, [f])[0] for t in wiki_texts[-10:]]
    kept_web = [apply_chain(t, [f])[0] for t in web_texts[-100:]]  # not trained on
    assert all(0.0 <= v.fields["quality_prob"] <= 1.0 for v in kept_wiki + kept_web)
    assert sum(v.keep for v in kept_wiki) >= 8
    assert sum(v.keep for v in kept_web) <= 30
    dropped = next(v for v in kept_web if not v.keep)
    assert dropped.reason.startswith("reference-page score")


def test_quality_settings_are_type_checked():
    with pytest.raises(ConfigError, match="threshold.*must be float"):
        chain({"chains": {"commoncrawl": ["quality"]}, "quality": {"model": "m.npz", "threshold": "high"}})
    with pytest.raises(ConfigError, match="model"):
        chain({"chains": {"commoncrawl": ["quality"]}, "quality": {"model": ""}})
    with pytest.raises(ConfigError, match="quality.: cannot read /no/such/dir/missing.npz"):
        chain({"chains": {"commoncrawl": ["quality"]}, "quality": {"model": "/no/such/dir/missing.npz"}})


@pytest.mark.skipif(shutil.which("fasttext") is None, reason="Debian's fasttext command is not installed")
def test_fasttext_backend_trains_and_loads(classifier, tmp_path, capsys, wiki_texts, web_texts):
    pos, neg, _ = classifier
    out = tmp_path / "wikiref.bin"
    assert cli_main(["quality", "train", "--positive", pos, "--negative", neg, "--out", str(out)]) == 0
    assert "trained (fasttext)" in capsys.readouterr().out
    (f,) = chain({"chains": {"commoncrawl": ["quality"]}, "quality": {"model": str(out), "threshold": 0.5}})
    assert sum(f(t).keep for t in wiki_texts[-10:]) > sum(f(t).keep for t in web_texts[-10:])


# -- perplexity --------------------------------------------------------------------------------------
def write_unigram_arpa(path, piece_lines: list[str]) -> dict[str, float]:
    """A unigram ARPA model (add-one smoothed) of the given piece lines; returns its log10 probs."""
    counts = Counter(p for line in piece_lines for p in line.split())
    counts["</s>"] = len(piece_lines)
    total, vocab = sum(counts.values()), len(counts) + 1
    logp = {w: math.log10((c + 1) / (total + vocab)) for w, c in counts.items()}
    logp["<unk>"] = math.log10(1 / (total + vocab))
    rows = [f"{logp[w]:.6f}\t{w}\t0" for w in sorted(logp)] + ["-99\t<s>\t0"]
    # KenLM wants at least bigrams: one that never occurs inside a line leaves the unigram scores as they are
    path.write_text(
        f"\\data\\\nngram 1={len(rows)}\nngram 2=1\n\n\\1-grams:\n"
        + "\n".join(rows)
        + "\n\n\\2-grams:\n-2\t<s> </s>\n\n\\end\\\n",
        "utf-8",
    )
    return logp


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, wiki_texts, sp_model_path):
    pytest.importorskip("kenlm")
    from jamdata.text.perplexity import PerplexityModel

    tmp = tmp_path_factory.mktemp("lm")
    shutil.copy(sp_model_path, tmp / "en.sp.model")
    lm = tmp / "en.arpa"
    write_unigram_arpa(lm, ["a"])  # a placeholder, to cut the training text into pieces
    pieces = [p for t in wiki_texts[:40] for p in PerplexityModel(str(lm), str(tmp / "en.sp.model")).pieces(t)]
    logp = write_unigram_arpa(lm, pieces)
    return tmp, logp


def test_perplexity_is_ccnet_formula_over_pieces(tiny_lm):
    from jamdata.text.perplexity import PerplexityModel, normalize_line

    tmp, logp = tiny_lm
    model = PerplexityModel(str(tmp / "en.arpa"), str(tmp / "en.sp.model"))
    text = "The Moon orbits the Earth.\n\nIt has 2 phases — “new” and full."
    assert normalize_line("It has 2 phases — “new” and FULL.") == 'it has 0 phases - "new" and full.'
    lines = model.pieces(text)
    assert len(lines) == 2
    tokens = [p for line in lines for p in line.split()]
    expected = 10 ** (-(sum(logp.get(p, logp["<unk>"]) for p in tokens) + 2 * logp["</s>"]) / (len(tokens) + 2))
    assert model.perplexity(text) == pytest.approx(round(expected, 1), abs=0.11)


def test_perplexity_filter_buckets_and_keeps(tiny_lm, wiki_texts, web_texts):
    tmp, _ = tiny_lm
    cfg = {
        "chains": {"commoncrawl": ["language", "perplexity"]},
        "perplexity": {
            "lm_model": str(tmp / "{lang}.arpa"),
            "sp_model": str(tmp / "{lang}.sp.model"),
            "languages": ["en"],
            "keep_buckets": ["head", "middle"],
        },
    }
    f = chain(cfg)[1]
    pps = sorted(f(t, {"language": "en"}).fields["perplexity"] for t in wiki_texts[40:60] + web_texts[:20])
    from jamdata.text.perplexity import tercile_cutoffs

    cfg["perplexity"]["cutoffs"] = {"en": tercile_cutoffs(pps)}
    langf, f = chain(cfg)
    wiki = [apply_chain(t, [langf, f])[0] for t in wiki_texts[40:60]]
    junk = apply_chain("zq xv kj " * 30 + "\n" + "0x7f3a 99zz qq " * 20, [langf, f])[0]
    assert {v.fields["perplexity_bucket"] for v in wiki} <= {"head", "middle", "tail"}
    assert sum(v.keep for v in wiki) >= 10
    assert not junk.keep  # not English, or in the tail
    german = f("Der Fluss fließt durch das Tal.", {"language": "de"})
    assert german.keep is False and german.fields == {"perplexity": None, "perplexity_bucket": "unscored"}


def test_perplexity_settings_are_checked():
    base = {"lm_model": "{lang}.arpa", "sp_model": "{lang}.sp.model"}
    with pytest.raises(ConfigError, match="keep_buckets"):
        chain({"chains": {"commoncrawl": ["perplexity"]}, "perplexity": {**base, "keep_buckets": ["best"]}})
    with pytest.raises(ConfigError, match="cutoffs.en"):
        chain({"chains": {"commoncrawl": ["perplexity"]}, "perplexity": {**base, "cutoffs": {"en": [500, 100]}}})
    with pytest.raises(ConfigError, match="languages.*must be a list of str"):
        chain({"chains": {"commoncrawl": ["perplexity"]}, "perplexity": {**base, "languages": "en"}})
    with pytest.raises(ConfigError, match="cannot read en.arpa"):  # a missing local model fails up front
        chain({"chains": {"commoncrawl": ["perplexity"]}, "perplexity": base})


def test_lmplz_trained_model_scores_wikipedia_below_junk(tmp_path, wiki_texts, web_texts, sp_model_path, capsys):
    pytest.importorskip("kenlm")
    from jamdata.text.perplexity import PerplexityModel, find_lmplz

    if find_lmplz() is None:
        pytest.skip("KenLM's lmplz is not installed (scripts/build_lmplz.sh builds it)")
    wiki = write_docs(tmp_path / "wiki", wiki_texts[:60])
    out = tmp_path / "en.arpa.bin"  # KenLM's binary format, as CCNet publishes its models (build_binary)
    assert (
        cli_main(["quality", "lm", "--input", wiki, "--sp", str(sp_model_path), "--out", str(out), "--order", "3"]) == 0
    )
    model = PerplexityModel(str(out), str(sp_model_path))
    assert model.perplexity(wiki_texts[70]) < model.perplexity("zq xv kj 0x7f3a 99zz qq lorem ipsum dolor")
    web = write_docs(tmp_path / "web", web_texts[:30])
    capsys.readouterr()
    assert cli_main(["quality", "cutoffs", "--input", web, "--lm", str(out), "--sp", str(sp_model_path)]) == 0
    printed = capsys.readouterr().out
    head, tail = json.loads(printed.split("cutoffs: {en: ")[1].rstrip().rstrip("}"))
    assert 1 < head <= tail


def test_document_sets_read_from_a_text_clean_output_by_language(tmp_path):
    from jamdata.commands.quality import read_texts

    (tmp_path / "wikipedia").mkdir()
    pq.write_table(
        pa.table({"text": ["Ein Satz.", "A sentence.", "Ещё одно."], "language": ["de", "en", "ru"]}),
        tmp_path / "wikipedia" / "part-00000.parquet",
    )
    pq.write_table(
        pa.table({"id": ["x"], "reason": ["not a document file"]}), tmp_path / "wikipedia" / "rejects.parquet"
    )
    assert read_texts([str(tmp_path)], 10) == ["Ein Satz.", "A sentence.", "Ещё одно."]
    assert read_texts([str(tmp_path)], 10, "de") == ["Ein Satz."]
