"""Settings dataclasses: one description per config section, read by one generic loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from jamdata.config import Config, ConfigError
from jamdata.settings import as_plain, load_settings, reference_rows, setting

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Inner:
    name: str = setting(doc="required name")
    weight: float = setting(1.0, "a weight", lo=0, hi=10)


@dataclass(frozen=True)
class Outer:
    """An example section."""

    paths: list[str] = setting([], "files", one_or_many=True)
    mode: str = setting("fast", "how", choices=("fast", "exact"))
    lam: float = setting(1.0, "a key that is a Python keyword", name="lambda")
    inner: Inner = setting(Inner("x"))
    items: list[Inner] = setting([], "several")


def test_values_defaults_and_nesting():
    s = load_settings(Outer, Config({"paths": "a.txt", "lambda": 2, "items": [{"name": "i", "weight": 3}]}, "sec"))
    assert s.paths == ["a.txt"] and s.mode == "fast" and s.lam == 2.0 and s.inner == Inner("x")
    assert s.items == [Inner("i", 3.0)]
    assert as_plain(s) == {
        "paths": ["a.txt"],
        "mode": "fast",
        "lambda": 2.0,
        "inner": {"name": "x", "weight": 1.0},
        "items": [{"name": "i", "weight": 3.0}],
    }


@pytest.mark.parametrize(
    "data, match",
    [
        ({"pahts": []}, r"'sec.pahts': unknown key \(allowed: inner, items, lambda, mode, paths\)"),
        ({"mode": "slow"}, r"'sec.mode': got 'slow' \(allowed: fast, exact\)"),
        ({"lambda": "big"}, r"'sec.lambda': must be float, got 'big'"),
        ({"paths": 3}, r"'sec.paths': must be a list of str, got 3"),
        ({"inner": {"weight": 2}}, r"'sec.inner.name': missing \(required\)"),
        ({"items": [{"name": "a", "weight": 11}]}, r"'sec.items.0.weight': must be a number in \[0, 10\], got 11"),
        ({"inner": "x"}, r"'sec.inner': must be a mapping, got 'x'"),
    ],
)
def test_mistakes_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(Outer, Config(data, "sec"))


def test_fill_defaults_writes_every_default_used():
    cfg = Config({"mode": "exact"}, "sec")
    Config.fill_defaults = True
    try:
        load_settings(Outer, cfg)
    finally:
        Config.fill_defaults = False
    assert cfg.data == {"mode": "exact", "paths": [], "lambda": 1.0, "inner": {"name": "x", "weight": 1.0}, "items": []}


def test_reference_rows_flatten_nested_settings():
    keys = [r["key"] for r in reference_rows(Outer, "sec")]
    assert keys == [
        "sec.paths",
        "sec.mode",
        "sec.lambda",
        "sec.inner.name",
        "sec.inner.weight",
        "sec.items[].name",
        "sec.items[].weight",
    ]
    assert reference_rows(Outer, "sec")[3]["default"] == "required"


def test_run_section_is_checked_when_a_config_loads(tmp_path):
    (tmp_path / "c.yaml").write_text("run:\n  wrokers: 2\n")
    with pytest.raises(ConfigError, match=r"'run.wrokers': unknown key"):
        Config.load(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("run:\n  workers: 0\n")
    with pytest.raises(ConfigError, match=r"'run.workers': must be a number in \[1, inf\], got 0"):
        Config.load(tmp_path / "c.yaml")


def test_config_reference_doc_is_generated_from_the_code():
    from jamdata.commands.config import reference_markdown

    assert (ROOT / "docs" / "config-reference.md").read_text() == reference_markdown(), (
        "docs/config-reference.md is stale: run `jamdata config reference > docs/config-reference.md`"
    )
