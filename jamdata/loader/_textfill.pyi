# Types of the compiled text packer (_textfill.c); the same interface as textfill.BlockPy and
# textfill.fill_rows_py.
from typing import Sequence

import numpy as np

class Block:
    pos: int
    offset: int
    @property
    def b0(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def keys(self) -> list[str]: ...
    def __init__(
        self,
        cum: np.ndarray,
        nz: np.ndarray,
        wstart: np.ndarray,
        wtok: np.ndarray,
        wshard: np.ndarray,
        shards: Sequence[np.ndarray],
        b0: int,
        size: int,
        keys: list[str],
    ) -> None: ...
    def fill(
        self, tokens: np.ndarray, seg: np.ndarray, done: int, n: int, c0: int, whole: bool = False
    ) -> tuple[int, int, int]: ...

def fill_rows(tokens: np.ndarray, seg: np.ndarray, L: int, blocks: list) -> list: ...
