"""Text tokenizer: a SentencePiece model whose piece ids are the text ids of the joint vocabulary."""
from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import sentencepiece as spm

from jamdata.vocab import JointVocab

MODEL_FILE = "tokenizer.model"


class TextTokenizer:
    """Loads a `.model` file (or a tokenizer dataset directory holding `tokenizer.model`)."""

    def __init__(self, model_path: str, n_image_codes: int = 8192):
        path = str(model_path)
        if Path(path).is_dir():
            path = str(Path(path) / MODEL_FILE)
        try:
            with fsspec.open(path, "rb") as f:
                proto = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer model {path} does not exist") from None
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as e:
            raise ValueError(f"{path} is not a SentencePiece model: {e}") from None
        self.path = path
        self.proto = proto
        import hashlib

        self.vocab = JointVocab(self.sp.get_piece_size(), hashlib.sha256(proto).hexdigest(), n_image_codes)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Decode text ids; special and image ids are dropped (use JointVocab.token_name to show them)."""
        ids = [int(i) for i in ids if int(i) < self.vocab.text_size]
        return self.sp.decode(ids)
