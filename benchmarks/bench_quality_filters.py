"""The model-based quality filters beside the existing web filter chain, on the same input.

Input: the real web pages of ../shared/corpus (CC-MAIN-2019-30 WET documents and the C4 samples),
repeated to --mb megabytes. Models are made here from the corpus: the reference-page classifier
(numpy backend) from clean Wikipedia articles vs the first 300 web pages, and a 5-gram KenLM
model over the corpus's SentencePiece pieces with `lmplz` (when it is installed; otherwise a
unigram ARPA model, which scores faster than a 5-gram one: the figure is then a lower bound on the
cost). Times are CPU seconds of this one process, so figures are per core.

    python benchmarks/bench_quality_filters.py           # ~1 minute
    python benchmarks/bench_quality_filters.py --mb 20

Prints MB/s and docs/s per core for: the web chain (min_length, language, c4, gopher_quality,
gopher_repetition, quality_score), `quality`, `perplexity`, `decontaminate` (1,000 passages),
`pii`, and each one's cost as a share of the chain's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from corpus import CORPUS, c4_pages  # noqa: E402 (benchmarks/corpus.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def wiki_articles() -> list[str]:
    from jamdata.text.clean import clean_records
    from jamdata.text.readers import is_reject, read_file

    recs = read_file(str(CORPUS / "wikipedia/enwiki-pages-articles-shortened.xml.bz2"), "wiki_xml", "wikipedia")
    return [d["text"] for d in clean_records(recs, "wiki_xml") if not is_reject(d) and len(d["text"]) > 2000]


def make_models(tmp: str, wiki: list[str], web: list[str]) -> tuple[str, str, str]:
    from jamdata.text.perplexity import PerplexityModel, train_kenlm
    from jamdata.text.quality import train_numpy

    clf = os.path.join(tmp, "wikiref.npz")
    train_numpy(wiki, web[:300]).save(clf)
    shutil.copy(CORPUS / "tokenizers/mistral-7b-v0.1-tokenizer.model", os.path.join(tmp, "en.sp.model"))
    arpa = os.path.join(tmp, "en.arpa")
    if shutil.which("lmplz"):
        train_kenlm(wiki, os.path.join(tmp, "en.sp.model"), arpa, order=5)
        kind = "5-gram (lmplz)"
    else:
        from collections import Counter
        import math

        with open(arpa, "w") as f:
            f.write(
                "\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-1\t<unk>\t0\n-99\t<s>\t0\n-1\t</s>\t0\n\n"
                "\\2-grams:\n-2\t<s> </s>\n\n\\end\\\n"
            )
        sp = PerplexityModel(arpa, os.path.join(tmp, "en.sp.model"))
        counts = Counter(p for t in wiki for line in sp.pieces(t) for p in line.split())
        total = sum(counts.values()) + len(counts) + 1
        rows = [f"{math.log10((c + 1) / total):.5f}\t{w}\t0" for w, c in counts.items()]
        rows += [
            f"{math.log10(1 / total):.5f}\t<unk>\t0",
            "-99\t<s>\t0",
            f"{math.log10(len(wiki) / total):.5f}\t</s>\t0",
        ]
        with open(arpa, "w") as f:
            f.write(
                f"\\data\\\nngram 1={len(rows)}\nngram 2=1\n\n\\1-grams:\n"
                + "\n".join(rows)
                + "\n\n\\2-grams:\n-2\t<s> </s>\n\n\\end\\\n"
            )
        kind = "unigram (no lmplz)"
    return clf, os.path.join(tmp, "{lang}.arpa"), kind


def timed(fn, texts: list[str]) -> float:
    fn(texts[0])  # loads models outside the timing
    t0 = time.process_time()
    for t in texts:
        fn(t)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=8.0, help="input size in MB (the pages repeated)")
    args = ap.parse_args()

    from jamdata.config import Config
    from jamdata.text.filters import WEB_CHAIN, apply_chain, build_filter_chain

    pages = c4_pages()
    unique_mb = sum(len(t.encode()) for t in pages) / 1e6
    texts = pages * max(1, round(args.mb / unique_mb))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    tmp = tempfile.mkdtemp(prefix="bench-quality-")
    try:
        wiki = wiki_articles()
        clf, lm, lm_kind = make_models(tmp, wiki, pages)
        evals = os.path.join(tmp, "eval.txt")
        with open(evals, "w") as f:  # 1,000 passages of 13+ words from the articles
            passages = [" ".join(a.split()[i : i + 40]) for a in wiki for i in range(0, 400, 40)]
            f.write("\n".join(passages[:1000]) + "\n")
        cfg = {
            "chains": {"commoncrawl": WEB_CHAIN + ["quality", "perplexity", "decontaminate", "pii"]},
            "quality": {"model": clf, "threshold": 0.0},
            "perplexity": {"lm_model": lm, "sp_model": os.path.join(tmp, "{lang}.sp.model")},
            "decontaminate": {"eval_sets": [evals]},
        }
        filters = build_filter_chain(Config(cfg, "text.clean.filters"), "commoncrawl")
        chain, extra = filters[: len(WEB_CHAIN)], filters[len(WEB_CHAIN) :]
        base = timed(lambda t: apply_chain(t, chain), texts)
        print(f"input: {len(texts)} web pages, {mb:.1f} MB ({len(pages)} unique); KenLM model: {lm_kind}")
        print(f"{'step':<34} {'MB/s/core':>10} {'docs/s':>9} {'cost vs chain':>14}")
        print(
            f"{'web chain (' + str(len(chain)) + ' filters)':<34} {mb / base:>10.2f} {len(texts) / base:>9.0f} {1.0:>13.2f}x"
        )
        for f in extra:
            call = (lambda t, f=f: f(t, {"language": "en"})) if getattr(f, "uses_fields", False) else f
            s = timed(call, texts)
            print(f"{f.name:<34} {mb / s:>10.2f} {len(texts) / s:>9.0f} {s / base:>13.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
