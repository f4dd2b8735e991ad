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
import inspect
import types
import typing
from typing import Any, Callable

from jamdata.config import ConfigError


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
