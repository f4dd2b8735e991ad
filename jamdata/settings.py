"""Config values checked against the type annotations of the code that takes them.

A filter or stage class declares its settings once, as annotated keyword parameters
(`languages: list[str] = ("en",)`, `threshold: float = 0.65`); `check_kwargs` holds a config
mapping against that signature, so an unknown key, a string where a list is meant or a word
where a number is meant ends in one line naming the key, the value and what is allowed, before
any data is read.

    params = check_kwargs(LanguageFilter, {"languages": "en"}, "text.clean.filters.language")
    -> ConfigError: config key 'text.clean.filters.language.languages': must be a list of str, got 'en'
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import inspect
import json
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from jamdata.config import Config, ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a settings dataclass


def describe(tp: Any) -> str:
    """A type annotation as a person reads it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if tp is typing.Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _fits(value: Any, tp: Any) -> tuple[bool, Any]:
    """(does `value` fit `tp`, the value to use: ints widened to float where a float is meant)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True, value
    if tp is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _fits(value, a)
            if ok:
                return True, v
        return False, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):  # a str is iterable, but never meant as a list here
            return False, value
        item = args[0] if args else typing.Any
        out = []
        for v in value:
            ok, v = _fits(v, item)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    return isinstance(value, tp) if isinstance(tp, type) else True, value


def check_value(key: str, value: Any, tp: Any, source: str = "") -> Any:
    ok, v = _fits(value, tp)
    if not ok:
        raise ConfigError(key, f"must be {describe(tp)}, got {value!r}", source=source)
    return v


def check_kwargs(target: Callable, params: dict, where: str, source: str = "") -> dict:
    """`params` checked against the annotated keyword parameters of `target` (a class or function)."""
    func = target.__init__ if inspect.isclass(target) else target
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func)
    allowed = [p for p in signature.parameters if p != "self"]
    checked = {}
    for key, value in params.items():
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", "unknown key", allowed=allowed, source=source)
        checked[key] = check_value(f"{where}.{key}", value, hints.get(key, typing.Any), source)
    return checked


# -- settings dataclasses ---------------------------------------------------------------------------
# A config section is described once, as a dataclass next to the code that uses it: each field is a
# key, its annotation the type, `setting(...)` its default, bounds, choices and one line of docs.
# `load_settings` reads a section into it (unknown keys, wrong types, values out of bounds: one line
# naming the key), and `reference_rows` gives the configuration reference from the same fields.
#
#     @dataclass(frozen=True)
#     class StatsSettings:
#         fast: bool = setting(False, "skip the per-document distributions")
#         loader_batches: int = setting(20, "batches the loader preview draws", lo=0)
#
#     stats = load_settings(StatsSettings, cfg.section("stats"))

_REQUIRED = dataclasses.MISSING


# A field with metadata {"internal": True} is no config key (e.g. run.seed copied into a section's settings).
def setting(
    default: Any = _REQUIRED,
    doc: str = "",
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: Sequence[Any] | None = None,
    one_or_many: bool = False,
    keys: Sequence[str] | None = None,
    name: str | None = None,
) -> Any:
    """A dataclass field that is a config key. `one_or_many`: a single string is read as a list of
    one; `keys`: the keys a mapping value may have; `choices`: the allowed values (of each item of
    a list); `name`: the key in the config when it cannot be the field's name (`lambda`)."""
    meta = {
        "doc": doc,
        "lo": lo,
        "hi": hi,
        "choices": tuple(choices) if choices is not None else None,
        "one_or_many": one_or_many,
        "keys": tuple(keys) if keys is not None else None,
        "name": name,
    }
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _REQUIRED


def _key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("name") or f.name


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_settings(tp: Any, value: Any = None) -> Any:
    """`Settings | None` (or `list[Settings] | None`) read as `Settings` for a value that is given,
    and in the reference."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if (
            len(inner) == 1
            and value is not None
            and (_is_settings(inner[0]) or any(_is_settings(a) for a in typing.get_args(inner[0])))
        ):
            return inner[0]
    return tp


def _check_bounds(key: str, value: Any, meta: dict, source: str) -> None:
    items = value if isinstance(value, list) else [value]
    choices = meta.get("choices")
    for v in items:
        if choices is not None and v not in choices:
            raise ConfigError(key, f"got {v!r}", allowed=list(choices), source=source)
        lo, hi = meta.get("lo"), meta.get("hi")
        if (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and ((lo is not None and v < lo) or (hi is not None and v > hi))
        ):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(key, f"must be a number in {rng}, got {v!r}", source=source)
    keys = meta.get("keys")
    if keys is not None and isinstance(value, dict):
        for k in value:
            if k not in keys:
                raise ConfigError(f"{key}.{k}", "unknown key", allowed=list(keys), source=source)


def _view(value: Any, key: str, source: str) -> Any:
    """A nested section as a view on the same mapping (so `config show --defaults` fills in the
    defaults it uses too); anything else as it is, for load_settings to refuse with its key."""
    return Config(value, key, source) if isinstance(value, dict) else value


def _read(key: str, value: Any, tp: Any, meta: dict, source: str) -> Any:
    """One configured value, checked and converted (nested settings loaded)."""
    tp = _optional_settings(tp, value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_settings(tp):
        return load_settings(tp, _view(value, key, source), key, source)
    if origin is dict and len(args) == 2 and _is_settings(args[1]):
        check_value(key, value, dict, source)
        return {str(k): load_settings(args[1], _view(v, f"{key}.{k}", source)) for k, v in value.items()}
    if origin in (list, tuple) and args and _is_settings(args[0]):
        check_value(key, value, list, source)
        return [load_settings(args[0], _view(v, f"{key}.{i}", source)) for i, v in enumerate(value)]
    if meta.get("one_or_many") and isinstance(value, str):
        value = [value]
    value = check_value(key, value, tp, source)
    _check_bounds(key, value, meta, source)
    return value


def load_settings(cls: type[T], section: Any, where: str = "", source: str = "") -> T:
    """`cls` (a settings dataclass) from a config section: a `Config` view or a plain mapping.
    With `Config.fill_defaults` set, every default used is written back into the tree."""
    if isinstance(section, Config):
        data, where, source, view = section.data, section.prefix, section.source, section
    else:
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(where or "(top level)", f"must be a mapping, got {section!r}", source=source)
        data, view = section, None
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]
    allowed = [_key_of(f) for f in fields]
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}" if where else str(key), "unknown key", allowed=sorted(allowed), source=source
            )
    values = {}
    for f in fields:
        name = _key_of(f)
        key = f"{where}.{name}" if where else name
        if name in data and (data[name] is not None or _default(f) is None):
            values[f.name] = _read(key, data[name], hints[f.name], dict(f.metadata), source)
            continue
        default = _default(f)
        if default is _REQUIRED:
            raise ConfigError(key, "missing (required)", source=source)
        values[f.name] = default
        if Config.fill_defaults and view is not None:
            view.set(name, as_plain(default))
    return cls(**values)


def as_plain(value: Any) -> Any:
    """Settings (nested) as plain YAML/JSON values: what a stamp hashes and `config show` prints."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            _key_of(f): as_plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.init and not f.metadata.get("internal")
        }
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


def reference_rows(cls: type, prefix: str) -> list[dict]:
    """One row per key of `cls` (nested settings flattened): key, type, default, allowed, doc."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("internal"):
            continue
        tp, meta, key = _optional_settings(hints[f.name], True), dict(f.metadata), f"{prefix}.{_key_of(f)}"
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if _is_settings(tp):
            rows.extend(reference_rows(tp, key))
            continue
        if origin is dict and len(args) == 2 and _is_settings(args[1]):
            rows.extend(reference_rows(args[1], f"{key}.<name>"))
            continue
        if origin in (list, tuple) and args and _is_settings(args[0]):
            rows.extend(reference_rows(args[0], f"{key}[]"))
            continue
        allowed = []
        if meta.get("choices") is not None:
            allowed.append(", ".join(map(str, meta["choices"])))
        if meta.get("lo") is not None or meta.get("hi") is not None:
            allowed.append(
                f"[{'-inf' if meta.get('lo') is None else meta['lo']}, "
                f"{'inf' if meta.get('hi') is None else meta['hi']}]"
            )
        default = _default(f)
        rows.append(
            {
                "key": key,
                "type": describe(tp) + (" (or one)" if meta.get("one_or_many") else ""),
                "default": "required" if default is _REQUIRED else json.dumps(as_plain(default)),
                "allowed": "; ".join(allowed),
                "doc": meta.get("doc", ""),
            }
        )
    return rows


@dataclass(frozen=True)
class RunSettings:
    """The `run` section: where and how a run goes (README, docs/ARCHITECTURE.md "Object storage")."""

    out_dir: str = setting("out/run", "the run directory: a local path or a URL (s3://, gs://)")
    seed: int = setting(0, "seed of every stage that draws")
    workers: int = setting(1, "local Beam worker processes (--workers wins)", lo=1)
    beam_args: list[str] = setting([], "Beam flags for every pipeline (those after -- come later and win)")
    reuse_verify: str = setting(
        "size", "how a finished stage's shards are checked before reuse", choices=("size", "sha256")
    )
    storage_options: dict | None = setting(None, "fsspec arguments by URL prefix, over JAM_STORAGE_OPTIONS")
