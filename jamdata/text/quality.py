"""LLaMA's reference-page classifier: a linear model telling pages like those cited by Wikipedia
from random Common Crawl pages (Touvron et al. 2023; RedPajama kept `wiki_prob >= 0.25`).

LLaMA used fastText (a linear model over word and word-bigram features). Two equivalent backends:

- `numpy` (always available): logistic regression over hashed word unigrams and bigrams
  (`2**buckets` hash buckets, the hashing trick fastText also uses for n-grams), trained by
  stochastic gradient descent with AdaGrad steps; saved as a `.npz` holding only the non-zero weights.
- `fasttext`: Debian's `fasttext supervised` command trains a `.bin` model (word bigrams); scoring
  loads it with the `fasttext-predict` module, which is safe with NumPy 2. A published fastText
  classifier (RedPajama's) loads the same way; its positive label is named by `positive_label`.

    model = train_numpy(positive_texts, negative_texts)
    model.save("wikiref.npz"); load_classifier("wikiref.npz").predict("Some page text")  # -> 0..1

Without the pages that Wikipedia cites, the stand-in positives are clean Wikipedia articles (a
text-clean output's `wikipedia` source) and the negatives random Common Crawl documents.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")
MAX_WORDS = 20000  # a document's first words are enough to judge it (and bound the cost)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio), wraps modulo 2**64


def features(text: str, buckets: int, ngrams: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values): hashed lower-cased word 1..`ngrams`-grams of `text`, each distinct
    feature once, weights scaled to unit L2 norm (long and short pages score alike)."""
    words = _WORD.findall(text.lower())[:MAX_WORDS]
    if not words:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    seen: dict[str, int] = {}
    h = np.fromiter(
        (seen[w] if w in seen else seen.setdefault(w, xxhash.xxh3_64_intdigest(w.encode("utf-8"))) for w in words),
        np.uint64,
        len(words),
    )
    parts, gram = [h], h
    for n in range(2, ngrams + 1):  # an n-gram's hash mixes the (n-1)-gram's with the next word's
        gram = gram[:-1] * _MIX + h[n - 1 :]
        parts.append(gram)
    idx = (np.concatenate(parts) >> np.uint64(64 - buckets)).astype(np.int64)
    idx, counts = np.unique(idx, return_counts=True)
    vals = counts.astype(np.float32)
    return idx, vals / np.float32(np.linalg.norm(vals))


@dataclass
class LinearClassifier:
    """P(positive | text) = sigmoid(w . x + b) over hashed n-gram features."""

    weights: np.ndarray  # float32, 2**buckets
    bias: float
    buckets: int = 20
    ngrams: int = 2

    def predict(self, text: str) -> float:
        idx, vals = features(text, self.buckets, self.ngrams)
        z = float(self.weights[idx] @ vals) + self.bias if len(idx) else self.bias
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def save(self, path: str) -> None:
        from jamdata.io import atomic_write

        nz = np.flatnonzero(self.weights).astype(np.int64)
        with atomic_write(path, "wb") as f:
            np.savez_compressed(
                f,
                kind=np.array("jam-linear-v1"),
                index=nz,
                value=self.weights[nz],
                bias=np.float64(self.bias),
                buckets=np.int64(self.buckets),
                ngrams=np.int64(self.ngrams),
            )

    @classmethod
    def load(cls, path: str) -> "LinearClassifier":
        from jamdata.io import open_url

        with open_url(path, "rb") as f:
            z = np.load(f, allow_pickle=False)
            if str(z["kind"]) != "jam-linear-v1":
                raise ValueError(f"{path}: not a jam linear classifier (kind {z['kind']})")
            buckets = int(z["buckets"])
            w = np.zeros(1 << buckets, np.float32)
            w[z["index"]] = z["value"]
            return cls(w, float(z["bias"]), buckets, int(z["ngrams"]))


def train_numpy(
    positive: Sequence[str],
    negative: Sequence[str],
    buckets: int = 20,
    ngrams: int = 2,
    epochs: int = 5,
    lr: float = 0.5,
    l2: float = 1e-6,
    seed: int = 0,
) -> LinearClassifier:
    """Logistic regression by SGD with AdaGrad steps on sparse features; classes are weighted so
    that both count equally whatever their sizes."""
    data = [(features(t, buckets, ngrams), 1.0) for t in positive] + [
        (features(t, buckets, ngrams), 0.0) for t in negative
    ]
    n_pos, n_neg = max(1, len(positive)), max(1, len(negative))
    cw = {1.0: len(data) / (2 * n_pos), 0.0: len(data) / (2 * n_neg)}
    w = np.zeros(1 << buckets, np.float32)
    g2 = np.full(1 << buckets, 1e-8, np.float32)
    b, gb2 = 0.0, 1e-8
    order = list(range(len(data)))
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        for i in order:
            (idx, vals), y = data[i]
            z = float(w[idx] @ vals) + b if len(idx) else b
            p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
            g = (p - y) * cw[y]
            grad = g * vals + l2 * w[idx]
            g2[idx] += grad * grad
            w[idx] -= lr * grad / np.sqrt(g2[idx])
            gb2 += g * g
            b -= lr * g / math.sqrt(gb2)
    return LinearClassifier(w, b, buckets, ngrams)


class FastTextClassifier:
    """A supervised fastText model (`.bin`/`.ftz`) read with fasttext-predict."""

    def __init__(self, path: str, positive_label: str = "__label__positive"):
        import fasttext

        from jamdata.text.perplexity import local_copy

        self.model = fasttext.load_model(local_copy(path))
        labels = self.model.predict("a", k=-1)[0]  # every label (fasttext-predict has no get_labels)
        if positive_label not in labels:
            raise ValueError(f"{path}: no label {positive_label!r} (labels: {list(labels)})")
        self.positive_label = positive_label

    def predict(self, text: str) -> float:
        labels, probs = self.model.predict(" ".join(text.split()[:MAX_WORDS]), k=-1)
        return float(dict(zip(labels, probs)).get(self.positive_label, 0.0))


def fasttext_cli() -> str | None:
    """The `fasttext` training command (Debian package `fasttext`), if installed."""
    return shutil.which("fasttext")


def train_fasttext(
    positive: Sequence[str],
    negative: Sequence[str],
    out: str,
    epochs: int = 5,
    lr: float = 0.5,
    seed: int = 0,
    dim: int = 16,
    buckets: int = 20,
) -> FastTextClassifier:
    """Train with the fastText command (word bigrams, like LLaMA's); `out` ends in `.bin`. A
    two-class model needs few dimensions: `dim` 16 and 2**`buckets` n-gram buckets keep the
    model at ~70 MB instead of fastText's default ~800 MB (100 x 2M)."""
    exe = fasttext_cli()
    if exe is None:
        raise RuntimeError("the fasttext command is not installed (apt-get install fasttext), use --backend numpy")
    rows = [f"__label__positive {' '.join(t.split()[:MAX_WORDS])}" for t in positive]
    rows += [f"__label__negative {' '.join(t.split()[:MAX_WORDS])}" for t in negative]
    random.Random(seed).shuffle(rows)
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/train.txt", "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
        subprocess.run(
            [
                exe,
                "supervised",
                "-input",
                f"{tmp}/train.txt",
                "-output",
                f"{tmp}/model",
                "-wordNgrams",
                "2",
                "-epoch",
                str(epochs),
                "-lr",
                str(lr),
                "-thread",
                "1",
                "-dim",
                str(dim),
                "-bucket",
                str(1 << buckets),
                "-seed",
                str(seed),
                "-verbose",
                "0",
            ],
            check=True,
            capture_output=True,
        )
        shutil.move(f"{tmp}/model.bin", out)
    return FastTextClassifier(out)


def load_classifier(path: str, positive_label: str = "__label__positive"):
    """A saved classifier: `.npz` (numpy backend) or a fastText `.bin`/`.ftz`."""
    if path.endswith((".bin", ".ftz")):
        return FastTextClassifier(path, positive_label)
    return LinearClassifier.load(path)


def precision_recall(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict:
    """Precision, recall and accuracy of `score >= threshold` as the positive class."""
    tp = sum(1 for s, y in zip(scores, labels) if s >= threshold and y)
    fp = sum(1 for s, y in zip(scores, labels) if s >= threshold and not y)
    fn = sum(1 for s, y in zip(scores, labels) if s < threshold and y)
    correct = sum(1 for s, y in zip(scores, labels) if (s >= threshold) == bool(y))
    return {
        "threshold": threshold,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": correct / max(1, len(labels)),
        "n": len(labels),
    }
