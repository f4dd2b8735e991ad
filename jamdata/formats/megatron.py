"""Megatron-LM indexed dataset (`.bin` + `.idx`, MMIDIDX version 1), readable by megatron-core.

.idx layout (little endian): b"MMIDIDX\\x00\\x00", u64 version=1, u8 dtype code, u64 sequence count,
u64 document-index count, int32[seq] lengths, int64[seq] byte pointers into .bin,
int64[doc+1] document indices (sequence index where each document starts, then the count).
Here each document is one sequence.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from jamdata.io import atomic_write, open_url
from jamdata.errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(UserError, ValueError):
    pass


@dataclass
class Index:
    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32
    sequence_pointers: np.ndarray  # int64, bytes
    document_indices: np.ndarray  # int64

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))


def read_index(idx_path: str) -> Index:
    with open_url(idx_path, "rb") as f:
        data = f.read()
    if data[:9] != MAGIC:
        raise IndexedDatasetError(f"{idx_path}: not a Megatron MMIDIDX index (bad magic)")
    try:
        (version,) = struct.unpack_from("<Q", data, 9)
        (code,) = struct.unpack_from("<B", data, 17)
        (n_seq,) = struct.unpack_from("<Q", data, 18)
        (n_doc,) = struct.unpack_from("<Q", data, 26)
    except struct.error:
        raise IndexedDatasetError(f"{idx_path}: truncated header") from None
    if version != VERSION or code not in DTYPE_CODES:
        raise IndexedDatasetError(f"{idx_path}: unsupported version {version} or dtype code {code}")
    off = 34
    need = off + 4 * n_seq + 8 * n_seq + 8 * n_doc
    if len(data) < need:
        raise IndexedDatasetError(f"{idx_path}: truncated ({len(data)} bytes, header promises {need})")
    lengths = np.frombuffer(data, np.int32, n_seq, off)
    pointers = np.frombuffer(data, np.int64, n_seq, off + 4 * n_seq)
    docs = np.frombuffer(data, np.int64, n_doc, off + 12 * n_seq)
    return Index(np.dtype(DTYPE_CODES[code]), lengths, pointers, docs)


class IndexedDatasetWriter:
    """Append documents, then `finalize()`; both files appear atomically only on success."""

    def __init__(self, prefix: str, dtype: np.dtype | type):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype} has no MMIDIDX code")
        self._bin_cm = atomic_write(self.prefix + ".bin", "wb")
        self._bin = self._bin_cm.__enter__()
        self._lengths: list[int] = []
        self._max = np.iinfo(self.dtype).max if self.dtype.kind in "ui" else None

    def add_document(self, tokens: Iterable[int] | np.ndarray) -> None:
        arr = np.asarray(tokens)
        if arr.size and self._max is not None and (arr.max() > self._max or arr.min() < 0 and self.dtype.kind == "u"):
            raise ValueError(f"token id out of range for {self.dtype}")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes())
        self._lengths.append(int(arr.size))

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray | Iterable[int]) -> None:
        """Many documents in one write: `flat` holds them back to back, `lengths` their sizes.
        An array already in the shard dtype needs no range check."""
        flat = np.asarray(flat)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != flat.size:
            raise ValueError(f"lengths add up to {int(lengths.sum())} but {flat.size} tokens were given")
        if (
            flat.dtype != self.dtype
            and flat.size
            and self._max is not None
            and (flat.max() > self._max or flat.min() < 0 and self.dtype.kind == "u")
        ):
            raise ValueError(f"token id out of range for {self.dtype}")
        self._bin.write(np.ascontiguousarray(flat, dtype=self.dtype).data)
        self._lengths.extend(lengths.tolist())

    def finalize(self) -> tuple[int, int]:
        """Returns (documents, tokens)."""
        self._bin_cm.__exit__(None, None, None)
        lengths = np.asarray(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        docs = np.arange(len(lengths) + 1, dtype=np.int64)
        with atomic_write(self.prefix + ".idx", "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", CODE_OF[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(docs)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(docs.tobytes())
        return len(lengths), int(lengths.sum(dtype=np.int64))

    def abort(self) -> None:
        self._bin_cm.__exit__(RuntimeError, RuntimeError("aborted"), None)


class IndexedDataset:
    """Memory-mapped reader; `ds[i]` is document i's tokens (a zero-copy view for local files)."""

    def __init__(self, prefix: str):
        self.prefix = str(prefix)
        self.index = read_index(self.prefix + ".idx")
        expected = (
            int(self.index.sequence_pointers[-1]) + int(self.index.sequence_lengths[-1]) * self.index.dtype.itemsize
            if len(self.index.sequence_lengths)
            else 0
        )
        if os.path.exists(self.prefix + ".bin"):
            size = os.path.getsize(self.prefix + ".bin")
            if size != expected:
                raise IndexedDatasetError(f"{self.prefix}.bin: {size} bytes, index expects {expected} (truncated?)")
            self._bin = np.memmap(self.prefix + ".bin", dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        else:
            with open_url(self.prefix + ".bin", "rb") as f:
                self._bin = np.frombuffer(f.read(), dtype=np.uint8)
            if self._bin.size != expected:
                raise IndexedDatasetError(f"{self.prefix}.bin: {self._bin.size} bytes, index expects {expected}")

    def __len__(self) -> int:
        return len(self.index.sequence_lengths)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        n = int(self.index.sequence_lengths[i])
        length = n - offset if length is None else min(length, n - offset)
        start = int(self.index.sequence_pointers[i]) + offset * self.index.dtype.itemsize
        return self._bin[start : start + length * self.index.dtype.itemsize].view(self.index.dtype)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)
