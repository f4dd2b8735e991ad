"""Loading torch checkpoints without running code from them.

`torch.load(weights_only=True)` rebuilds tensors and plain containers only; any other global a
checkpoint names (a class or a function) must be on the caller's allow-list. A file naming
anything else is refused when the unpickler reaches that name, before it is called, so a pickled
`os.system(...)` never runs.

Some checkpoints carry metadata whose classes are never used here (PyTorch Lightning keys its
callback states by the callback class; `hyper_parameters` may hold omegaconf containers). `inert()`
allow-lists such names as stand-ins that keep the pickled state as data without importing or
running the real class, so these files load whether or not Lightning or omegaconf is installed.
"""

from __future__ import annotations

import pickle
import re
import threading
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from typing import Any, Iterable

import torch

# torch.serialization.safe_globals edits one process-wide list: one load at a time, so a load that
# finishes never removes the allow-list of another that is still running (Beam worker threads).
_LOCK = threading.Lock()
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REASON = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")

AllowList = Iterable[Any]  # objects, or (object, "module.name it is pickled as") pairs


class RefusedCheckpoint(ValueError):
    """The file needs something outside the allow-list to load (`name`: the global, when known)."""

    def __init__(self, reason: str, name: str | None = None):
        super().__init__(reason)
        self.name = name


class Inert:
    """Stand-in for a class a checkpoint names only as metadata: constructor arguments and pickled
    state are kept as data (`args`, `state`); nothing of the real class is imported or run."""

    qualified_name = "?"
    args: tuple
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualified_name}>"


class AsDict:
    """Stand-in for a dict subclass or factory a checkpoint names (Lightning's AttributeDict,
    collections.defaultdict): it is rebuilt as a plain dict."""

    def __new__(cls, *args: Any, **kwargs: Any):
        return {}


def inert(names: Iterable[str], as_dict: Iterable[str] = ()) -> list[tuple[type, str]]:
    """Allow-list entries loading each of `names` as an `Inert` stand-in and each of `as_dict` as
    a plain dict. Build them once (module level): the entries are compared by identity."""
    entries: list[tuple[type, str]] = [
        (type(n.rsplit(".", 1)[-1], (Inert,), {"qualified_name": n, "__module__": __name__}), n) for n in names
    ]
    return entries + [(AsDict, n) for n in as_dict]


def _python3_name(name: str) -> str:
    """Pickle protocol 2 writes some globals under their Python 2 names (subprocess.call as
    commands.call); name them as the unpickler would resolve them."""
    module, _, attr = name.rpartition(".")
    if (module, attr) in NAME_MAPPING:
        return ".".join(NAME_MAPPING[(module, attr)])
    return f"{IMPORT_MAPPING.get(module, module)}.{attr}"


def load_weights_only(f: Any, allow: AllowList = (), mmap: bool = False) -> Any:
    """`torch.load(f, weights_only=True)` on CPU with `allow` added to torch's own allow-list.

    Raises RefusedCheckpoint (one line, naming the global when there is one) for a file that
    needs anything else; a file that is not a torch checkpoint raises a one-line UnpicklingError,
    other read errors (truncated, missing) propagate as torch raises them."""
    with _LOCK, torch.serialization.safe_globals(list(allow)):
        try:
            return torch.load(f, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            text = str(e)
            name = _GLOBAL.search(text)
            if name:
                found = _python3_name(name.group(1))
                raise RefusedCheckpoint(
                    f"it needs {found}, which is not on the allow-list of plain types (loading it could run code)",
                    found,
                ) from None
            why = _REASON.search(text)
            reason = why.group(1) if why else text.strip().splitlines()[0]
            if "allowlisted" in reason or "unrecognized function" in reason:
                raise RefusedCheckpoint(f"it is not plain weights ({reason})") from None
            raise pickle.UnpicklingError(f"not a torch checkpoint ({reason})") from None
