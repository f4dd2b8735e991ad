"""`jamdata quality train|lm`: the models of the quality filters.

- `train`: LLaMA's reference-page classifier from two document sets (positives: clean Wikipedia,
  the stand-in for pages cited by Wikipedia; negatives: random Common Crawl), with held-out
  precision and recall printed; the `quality` filter loads the model.
- `lm`: a CCNet-style KenLM model over SentencePiece pieces from clean documents (needs KenLM's
  `lmplz`), for the `perplexity` filter.
- `cutoffs`: the head/middle/tail perplexity cutoffs of one language from a sample of its
  documents, printed as the filter's `cutoffs` config line.

Document sets are directories (or files) of parquet shards with a `text` column (a text-clean
output, e.g. `out/demo/text-clean/wikipedia`), JSON lines with `text`, or plain `.txt` files.
"""

from __future__ import annotations

import argparse
import random


def register(sub: argparse._SubParsersAction) -> None:
    from jamdata.cli import command_group

    group = command_group(sub, "quality", "train the models of the quality filters")
    p = group.add_parser("train", help="train the reference-page classifier (positives vs negatives)")
    p.add_argument(
        "--positive",
        required=True,
        nargs="+",
        metavar="DIR",
        help="documents to keep (default choice: a text-clean output's wikipedia/)",
    )
    p.add_argument(
        "--negative",
        required=True,
        nargs="+",
        metavar="DIR",
        help="documents to tell apart (default choice: a text-clean output's commoncrawl/)",
    )
    p.add_argument("--out", required=True, help="model file: .npz (numpy backend) or .bin (fastText)")
    p.add_argument(
        "--backend",
        choices=["auto", "numpy", "fasttext"],
        default="auto",
        help="auto: fastText when --out ends in .bin, else numpy",
    )
    p.add_argument("--holdout", type=float, default=0.2, help="share of each set held out for evaluation")
    p.add_argument("--threshold", type=float, default=0.25, help="score threshold reported (RedPajama: 0.25)")
    p.add_argument("--max-docs", type=int, default=100000, help="at most this many documents per set")
    p.add_argument(
        "--epochs",
        type=int,
        help="passes over the data (default: numpy 5, fastText 25: one "
        "update per document needs more passes on small sets)",
    )
    p.add_argument("--buckets", type=int, default=20, help="2**buckets hashed n-gram features (fastText: -bucket)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train)
    q = group.add_parser("lm", help="train a KenLM n-gram model over SentencePiece pieces (CCNet)")
    q.add_argument(
        "--input", required=True, nargs="+", metavar="DIR", help="clean documents (e.g. text-clean/wikipedia)"
    )
    q.add_argument("--sp", required=True, help="SentencePiece .model the pieces come from")
    q.add_argument("--out", required=True, help="output .arpa (or .bin with --binary)")
    q.add_argument("--order", type=int, default=5)
    q.add_argument("--lmplz", default="lmplz", help="path of KenLM's lmplz")
    q.add_argument("--max-docs", type=int, default=1000000)
    q.add_argument("--lang", help="only documents of this language (their `language` field), e.g. de")
    q.set_defaults(func=train_lm)
    c = group.add_parser("cutoffs", help="perplexity cutoffs of one language (33rd/66th percentiles, as CCNet)")
    c.add_argument("--input", required=True, nargs="+", metavar="DIR", help="documents of that language")
    c.add_argument("--lm", required=True, help="KenLM model (.arpa or .bin)")
    c.add_argument("--sp", required=True, help="SentencePiece .model")
    c.add_argument(
        "--lang", default="en", help="language: only its documents (`language` field), and the config line's key"
    )
    c.add_argument("--max-docs", type=int, default=20000)
    c.set_defaults(func=cutoffs)


def read_texts(paths: list[str], limit: int, language: str | None = None) -> list[str]:
    """Texts of the documents under `paths` (parquet `text` column, JSON lines, .txt), in a stable
    order, at most `limit`; other files are passed over. `language`: only documents whose
    `language` field (set by the language filter) is this one."""
    import json

    from jamdata.io import expand_inputs, open_input

    texts: list[str] = []
    for path in sorted(expand_inputs(paths)):
        if len(texts) >= limit:
            break
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            from jamdata.io import open_url

            with open_url(path, "rb") as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                if "text" in names:  # other parquet (e.g. rejects) is passed over
                    cols = ["text", "language"] if language and "language" in names else ["text"]
                    rows = pf.read(columns=cols).to_pylist()
                    texts += [r["text"] for r in rows if r["text"] and (len(cols) == 1 or r["language"] == language)]
        elif path.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst")):
            with open_input(path) as f:
                for line in f:
                    if line.strip():
                        obj = json.loads(line)
                        t = obj.get("text")
                        if isinstance(t, str) and t and (not language or obj.get("language", language) == language):
                            texts.append(t)
        elif path.endswith(".txt"):
            with open_input(path) as f:
                texts.append(f.read().decode("utf-8", "replace"))
    return texts[:limit]


def _split(texts: list[str], holdout: float, rng: random.Random) -> tuple[list[str], list[str]]:
    texts = list(texts)
    rng.shuffle(texts)
    n = int(round(len(texts) * holdout)) if len(texts) > 1 else 0
    return texts[n:], texts[:n]


def train(args: argparse.Namespace) -> int:
    from jamdata.config import ConfigError
    from jamdata.text import quality

    pos, neg = read_texts(args.positive, args.max_docs), read_texts(args.negative, args.max_docs)
    if not pos or not neg:
        raise ConfigError(
            "--positive" if not pos else "--negative",
            "no documents found (parquet with a 'text' column, JSON lines or .txt files)",
        )
    rng = random.Random(args.seed)
    (pos_train, pos_test), (neg_train, neg_test) = _split(pos, args.holdout, rng), _split(neg, args.holdout, rng)
    backend = args.backend
    if backend == "auto":
        backend = "fasttext" if args.out.endswith(".bin") else "numpy"
    model: quality.LinearClassifier | quality.FastTextClassifier
    if backend == "fasttext":
        model = quality.train_fasttext(
            pos_train, neg_train, args.out, epochs=args.epochs or 25, seed=args.seed, buckets=args.buckets
        )
    else:
        model = quality.train_numpy(pos_train, neg_train, buckets=args.buckets, epochs=args.epochs or 5, seed=args.seed)
        model.save(args.out)
    print(f"trained ({backend}) on {len(pos_train)} positive and {len(neg_train)} negative documents -> {args.out}")
    if pos_test and neg_test:
        scores = [model.predict(t) for t in pos_test + neg_test]
        labels = [1] * len(pos_test) + [0] * len(neg_test)
        for th in sorted({args.threshold, 0.5}):
            r = quality.precision_recall(scores, labels, th)
            print(
                f"held out ({len(pos_test)} positive, {len(neg_test)} negative), score >= {th}: "
                f"precision {r['precision']:.3f} recall {r['recall']:.3f} accuracy {r['accuracy']:.3f}"
            )
    else:
        print("held out: too few documents to evaluate (raise --holdout or give more documents)")
    return 0


def train_lm(args: argparse.Namespace) -> int:
    from jamdata.config import ConfigError
    from jamdata.text.perplexity import train_kenlm

    texts = read_texts(args.input, args.max_docs, args.lang)
    if not texts:
        raise ConfigError("--input", "no documents found" + (f" in language {args.lang}" if args.lang else ""))
    lines = train_kenlm(texts, args.sp, args.out, order=args.order, lmplz=args.lmplz)
    print(f"{args.order}-gram KenLM model from {len(texts)} documents ({lines} lines) -> {args.out}")
    return 0


def cutoffs(args: argparse.Namespace) -> int:
    from jamdata.config import ConfigError
    from jamdata.text.perplexity import PerplexityModel, tercile_cutoffs

    texts = read_texts(args.input, args.max_docs, args.lang)
    if not texts:
        raise ConfigError("--input", f"no documents found in language {args.lang}")
    model = PerplexityModel(args.lm, args.sp)
    cut = tercile_cutoffs(model.perplexity(t) for t in texts)
    print(f"{len(texts)} documents; text.clean.filters.perplexity.cutoffs: {{{args.lang}: {cut}}}")
    return 0
