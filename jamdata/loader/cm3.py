"""CM3 at batch time: the causally masked transform (`jamdata.interleaved.cm3`) applied to every
sample of the webdataset datasets `loader.cm3.datasets` names, when its row is packed, with a new
draw in every epoch of the dataset.

The draw for the sample with key k, read in epoch e of its dataset (the lane's dataset epoch, the
first integer of its cursor state), under `loader.seed` s, is a pure function of (s, e, k):

    transformed  iff  rate >= 1  or  stable_hash("cm3-rate", str(e), k, seed=s) % 10**6 / 10**6 < rate
    cm3_transform(tokens, vocab, k, CM3Config(lam, max_spans, max_span_len, whole_images=True),
                  loss_mask, rng=numpy.random.default_rng(stable_hash("cm3", str(e), k, seed=s)))

so it is the same on every rank, worker count and after a resume, and the resume state needs
nothing beyond the (epoch, position) it already holds. The raw sample (with its `</s>`) gets a
budget of `seq_len - 2 * max_spans` tokens (`oversize` applies to that budget), so the transformed
sample, at most `2 * max_spans` longer, always fits a row; packing then uses its real length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jamdata.config import Config, ConfigError
from jamdata.interleaved.cm3 import MAX_SPANS, CM3Config, cm3_transform
from jamdata.io import stable_hash
from jamdata.settings import load_settings, setting
from jamdata.vocab import JointVocab


@dataclass(frozen=True)
class CM3Settings:
    """`loader.cm3`: CM3 applied at batch time (docs/loader.md)."""

    datasets: list[str] = setting(
        [], "webdataset datasets of loader.mixture it applies to (none: off)", one_or_many=True
    )
    rate: float = setting(1.0, "share of their samples transformed in each epoch", lo=0.0, hi=1.0)
    lam: float = setting(1.0, "Poisson mean of the number of spans", lo=1e-6, name="lambda")
    max_spans: int = setting(MAX_SPANS, "most masked spans per sample", lo=1, hi=MAX_SPANS)
    max_span_len: int = setting(64, "most tokens per text span (an image is masked whole)", lo=1)


@dataclass(frozen=True)
class CM3Spec:
    """The part of the loader's order that CM3 defines (it changes sample lengths, so packing)."""

    datasets: tuple[str, ...]
    rate: float = 1.0
    lam: float = 1.0
    max_spans: int = MAX_SPANS
    max_span_len: int = 64

    @property
    def reserve(self) -> int:
        """Tokens a sample may grow by: a placeholder and a sentinel per span."""
        return 2 * self.max_spans

    def config(self) -> CM3Config:
        return CM3Config(lam=self.lam, max_spans=self.max_spans, max_span_len=self.max_span_len, whole_images=True)


def parse_cm3(sec: Config, names: tuple[str, ...], formats: dict[str, str], seq_len: int) -> CM3Spec | None:
    """`loader.cm3` checked against the mixture; None when it names no dataset."""
    if not sec.has("cm3") or sec.get("cm3") is None:
        return None
    key = sec._key("cm3")
    if not isinstance(sec.get("cm3"), dict):
        raise ConfigError(key, f"must be a mapping, got {sec.get('cm3')!r}", source=sec.source)
    s = load_settings(CM3Settings, sec.section("cm3"))
    for name in s.datasets:
        if name not in names:
            raise ConfigError(
                f"{key}.datasets", f"{name!r} is not in loader.mixture ({', '.join(names)})", source=sec.source
            )
        if formats[name] != "tar":
            raise ConfigError(
                f"{key}.datasets",
                f"{name!r} is a text-token dataset (documents run across "
                "rows); CM3 applies to image-caption and interleaved datasets",
                source=sec.source,
            )
    if not s.datasets:
        return None
    if 2 * s.max_spans >= seq_len:
        raise ConfigError(
            f"{key}.max_spans", f"2 x {s.max_spans} must be less than loader.seq_len ({seq_len})", source=sec.source
        )
    return CM3Spec(tuple(dict.fromkeys(s.datasets)), float(s.rate), float(s.lam), s.max_spans, s.max_span_len)


def draw_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The Generator of sample `key`'s CM3 draw in dataset epoch `epoch`."""
    return np.random.default_rng(stable_hash("cm3", str(epoch), key, seed=seed))


def is_drawn(seed: int, epoch: int, key: str, rate: float) -> bool:
    """Whether sample `key` is transformed in dataset epoch `epoch` (a share `rate` of samples)."""
    return rate >= 1.0 or (stable_hash("cm3-rate", str(epoch), key, seed=seed) % 1_000_000) / 1_000_000 < rate


class SampleCM3:
    """Applies CM3 for the packer of one process. A sample that does not fit the rest of a row
    is looked at again for the next row, so each lane keeps its last result."""

    def __init__(self, spec: CM3Spec, vocab: JointVocab, seed: int, counters: dict[str, int]):
        self.spec, self.vocab, self.seed, self.counters = spec, vocab, seed, counters
        self.datasets = frozenset(spec.datasets)
        self.cfg = spec.config()
        self.masks = np.asarray([vocab.mask_id(i) for i in range(MAX_SPANS)])
        self._last: dict[int, tuple[tuple[int, int], tuple[np.ndarray, np.ndarray | None]]] = {}

    def __call__(
        self, lane: int, epoch: int, pos: int, key: str, tokens: np.ndarray, loss_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        last = self._last.get(lane)
        if last is not None and last[0] == (epoch, pos):
            return last[1]
        out: tuple[np.ndarray, np.ndarray | None] = (tokens, loss_mask)
        if is_drawn(self.seed, epoch, key, self.spec.rate):
            if np.isin(tokens, self.masks).any():  # already masked (a dataset built with CM3): left as is
                self.counters["cm3_premasked"] = self.counters.get("cm3_premasked", 0) + 1
            else:
                lm = np.ones(len(tokens), np.uint8) if loss_mask is None else loss_mask
                res = cm3_transform(tokens, self.vocab, key, self.cfg, lm, rng=draw_rng(self.seed, epoch, key))
                out = (res.tokens, res.loss_mask)
        self._last[lane] = ((epoch, pos), out)
        return out
