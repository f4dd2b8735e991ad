"""YAML configuration with errors that name the key and what it allows.

cfg = Config.load("configs/demo.yaml")
clean = cfg.section("text.clean")
clean.get("min_words", int, default=50)
clean.choice("dedup", ["none", "exact", "minhash"], default="minhash")
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Sequence, TypeVar, overload

import yaml
from jamdata.errors import UserError

T = TypeVar("T")
_MISSING = object()
# The bundled configs: jamdata/configs in an installed package (setup.py maps configs/ there),
# configs/ beside the package in a checkout.
BUNDLED_CONFIG_DIRS = (Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parent.parent / "configs")
# The sections a config may have (a misspelled one would otherwise be ignored and defaults used).
SECTIONS = ("run", "text", "images", "vqvae", "instruct", "loader", "train", "stats")
TEXT_SECTIONS = ("sources", "clean", "tokenizer", "sample")


class ConfigError(UserError, ValueError):
    def __init__(self, key: str, problem: str, allowed: Sequence[Any] | None = None, source: str = ""):
        msg = f"config key '{key}': {problem}"
        if allowed is not None:
            msg += f" (allowed: {', '.join(map(str, allowed))})"
        if source:
            msg = f"{source}: {msg}"
        super().__init__(msg)
        self.key = key


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(key: str, text: str) -> Any:
    """A `--set` value: YAML, except that every number is a number (YAML 1.1 reads `1e-3` as a
    string because it has no dot)."""
    if _NUMBER.fullmatch(text.strip()):
        number = float(text)
        return int(text) if re.fullmatch(r"[-+]?\d+", text.strip()) else number
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise ConfigError(key, f"--set value {text!r} is not valid YAML ({problem})") from None


def bundled_configs() -> dict[str, Path]:
    """Name -> file of every config that ships with the package (`demo`, `reference-30b`, ...)."""
    for folder in BUNDLED_CONFIG_DIRS:
        if folder.is_dir():
            return {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return {}


def find_config(path: str | Path) -> str | Path:
    """`path` itself when it exists or names a directory; else the bundled config of that name."""
    text = str(path)
    if Path(text).exists() or "/" in text or "://" in text:
        return path
    return bundled_configs().get(text.removesuffix(".yaml"), path)


class Config:
    """A view on one mapping of the YAML tree, remembering its dotted path for error messages.

    `fill_defaults` (set by `jamdata config show --defaults`): a default that `get` returns for a
    missing key is also written into the tree, so the tree shows every value the code used."""

    fill_defaults = False

    def __init__(self, data: dict, prefix: str = "", source: str = ""):
        if not isinstance(data, dict):
            raise ConfigError(prefix or "(top level)", f"must be a mapping, got {type(data).__name__}", source=source)
        self.data = data
        self.prefix = prefix
        self.source = source

    @classmethod
    def load(cls, path: str | Path, overrides: Sequence[str] = ()) -> "Config":
        """Load YAML and apply `key.path=value` overrides (values parsed as YAML). A bare name that
        is no file (`demo`, `reference-30b.yaml`) is a bundled config (`bundled_configs()`)."""
        path = find_config(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            bare = "/" not in str(path)
            problem = f"config file {path} does not exist" + (" (nor a bundled config)" if bare else "")
            raise ConfigError("(file)", problem, allowed=list(bundled_configs()) if bare else None) from None
        except yaml.YAMLError as e:
            raise ConfigError("(file)", f"{path} is not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(
                "(file)", f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
            ) from None
        cfg = cls(data, source=str(path))
        cfg.override(overrides)
        cfg.check_sections()
        return cfg

    def check_sections(self) -> None:
        """Refuse a misspelled section (`txt:`, `text.cleen:`) at the top of a config."""
        from jamdata.settings import RunSettings, load_settings  # settings.py builds on this module

        self.check_keys(SECTIONS)
        if isinstance(self.data.get("text"), dict):
            self.section("text").check_keys(TEXT_SECTIONS)
        if isinstance(self.data.get("run"), dict):
            load_settings(RunSettings, self.section("run"))

    def override(self, items: Sequence[str]) -> None:
        """Apply `key.path=value` overrides (values parsed as YAML, numbers as numbers)."""
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key or any(not part for part in key.split(".")):
                raise ConfigError(item, "override must look like key.path=value")
            self.set(key, parse_value(key, value))
        if items and not self.prefix:
            self.check_sections()

    def merge(self, overlay: dict) -> None:
        """Deep-merge another tree over this one (mappings merge, anything else replaces)."""

        def deep(base: dict, over: dict) -> None:
            for k, v in over.items():
                if isinstance(v, dict) and isinstance(base.get(k), dict):
                    deep(base[k], v)
                else:
                    base[k] = copy.deepcopy(v)

        deep(self.data, overlay)

    def _key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def _lookup(self, dotted: str) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def has(self, key: str) -> bool:
        return self._lookup(key) is not _MISSING

    def set(self, dotted: str, value: Any) -> None:
        node = self.data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # an empty YAML section is null
            node = node[part]
        node[parts[-1]] = value

    def section(self, key: str, required: bool = False) -> "Config":
        value = self._lookup(key)
        if value is _MISSING or value is None:
            if required:
                raise ConfigError(self._key(key), "missing section", source=self.source)
            value = {}
            self.set(key, value)
        return Config(value, self._key(key), self.source)

    @overload
    def get(self, key: str, type_: type[T], default: Any = _MISSING) -> T: ...
    @overload
    def get(self, key: str, type_: tuple[type, ...] = ..., default: Any = _MISSING) -> Any: ...
    def get(self, key: str, type_: type | tuple[type, ...] = object, default: Any = _MISSING) -> Any:
        value = self._lookup(key)
        if value is _MISSING:
            if default is _MISSING:
                raise ConfigError(self._key(key), "missing (required)", source=self.source)
            if Config.fill_defaults:
                self.set(key, copy.deepcopy(default))
            return default
        if type_ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type_ is not object and not isinstance(value, type_):
            names = type_.__name__ if isinstance(type_, type) else " or ".join(t.__name__ for t in type_)
            raise ConfigError(self._key(key), f"must be {names}, got {value!r}", source=self.source)
        return value

    def number(self, key: str, default: Any = _MISSING, lo: float | None = None, hi: float | None = None) -> float:
        value = self.get(key, (int, float), default)
        if isinstance(value, bool) or (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(self._key(key), f"must be a number in {rng}, got {value!r}", source=self.source)
        return value

    def choice(self, key: str, allowed: Sequence[Any], default: Any = _MISSING) -> Any:
        value = self.get(key, object, default)
        if value not in allowed:
            raise ConfigError(self._key(key), f"got {value!r}", allowed=allowed, source=self.source)
        return value

    def check_keys(self, allowed: Sequence[str]) -> None:
        """Reject unknown keys here (a typo would otherwise be silently ignored)."""
        for key in self.data:
            if key not in allowed:
                raise ConfigError(self._key(key), "unknown key", allowed=sorted(allowed), source=self.source)

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)


def workers_setting(cli_value: int | None, run: Config) -> int:
    """Local Beam worker processes: `--workers` when given, else `run.workers`; at least 1."""
    if cli_value is not None:
        if cli_value < 1:
            raise ConfigError("--workers", f"must be at least 1, got {cli_value}")
        return cli_value
    value = run.get("workers", int, default=1)
    if isinstance(value, bool) or value < 1:
        raise ConfigError(run._key("workers"), f"must be an integer of at least 1, got {value!r}", source=run.source)
    return value


def beam_args_setting(cli_args: Sequence[str], run: Config) -> list[str]:
    """Raw Beam flags for a pipeline: `run.beam_args` from the config, then those after `--` on
    the command line (a later flag wins in Beam's parser)."""
    configured = run.get("beam_args", list, default=[])
    bad = [a for a in configured if not isinstance(a, str)]
    if bad:
        raise ConfigError(run._key("beam_args"), f"must be a list of strings, got {bad[0]!r}", source=run.source)
    return [*configured, *cli_args]


def run_dir_setting(cli_out: str | None, run: Config) -> str:
    """The run directory: `--out` when given, else `run.out_dir`; a local path made absolute here
    or a URL kept as it is (s3://bucket/run, gs://bucket/run; never through pathlib, which folds
    the `//` and would write a local folder named `gs:`)."""
    from jamdata.io import absolute

    value = cli_out or run.get("out_dir", str, default="out/run")
    if not str(value).strip():
        raise ConfigError(run._key("out_dir"), "must not be empty", source=run.source)
    return absolute(value)


def storage_setting(run: Config) -> dict:
    """`run.storage_options`: fsspec arguments by URL prefix, e.g. {"s3://bucket": {"endpoint_url":
    "http://host:9000", "key": ..., "secret": ...}} or {"gs://": {"project": ...}}, merged over
    JAM_STORAGE_OPTIONS from the environment (the config wins per prefix) and applied to every
    remote path from here on, in Beam worker processes too (see jamdata/io.py)."""
    from jamdata import io

    configured = run.get("storage_options", (dict, type(None)), default=None) or {}
    for prefix, options in configured.items():
        if not isinstance(prefix, str) or not io.url_scheme(prefix):
            raise ConfigError(
                run._key(f"storage_options.{prefix}"),
                "must be a URL prefix such as s3://bucket or gs://",
                source=run.source,
            )
        if not isinstance(options, dict):
            raise ConfigError(
                run._key(f"storage_options.{prefix}"),
                f"must be a mapping of fsspec arguments, got {options!r}",
                source=run.source,
            )
    merged = {**io.environment_storage_options(), **configured}
    io.set_storage_options(merged)
    return merged
