"""`jamdata config show [NAME|PATH]`: a config as the stages see it, printed as YAML.

A bare NAME (`demo`, `reference-30b`) is a config that ships with the package, so an installed
copy (a worker container, a wheel) finds it without a checkout. `--defaults` also fills in the
value the code uses for every key the file leaves out, by running each stage's settings reader on
the config (which also checks it: a mistake ends in the same one line as the stage would print).
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from jamdata.cli import command_group

    group = command_group(sub, "config", "the bundled configs and the resolved config of a run")
    p = group.add_parser(
        "show",
        help="print a config (bundled NAME or PATH) as YAML, after --set; without NAME, list the bundled configs",
    )
    p.add_argument("name", nargs="?", metavar="NAME|PATH")
    p.add_argument("--defaults", action="store_true", help="also show the default of every key the config leaves out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=show)
    p = group.add_parser(
        "reference",
        help="print the configuration reference (Markdown) of the sections "
        "described by settings classes; docs/config-reference.md is this output",
    )
    p.set_defaults(func=reference)


def fill_defaults(cfg) -> None:
    """Run the settings reader of every section the config has, recording the defaults it uses."""
    import functools

    from jamdata.config import Config
    from jamdata.settings import load_settings

    present = set(cfg.data)
    readers = []
    if "text" in present:
        from pipelines.text_clean_settings import clean_settings
        from pipelines.text_sample_settings import sample_settings

        readers += [lambda: clean_settings(cfg.section("text")), lambda: sample_settings(cfg)]
    if "images" in present:
        from pipelines.image_tokenize import ImageSettings

        readers.append(lambda: ImageSettings.from_config(cfg, 0))
    if "vqvae" in present:
        from pipelines.vqvae_train import train_config

        readers.append(lambda: train_config(cfg))
    if "loader" in present:
        from jamdata.loader import loader_settings

        readers.append(lambda: loader_settings(cfg.section("loader")))
    # sections their settings class reads alone (no storage is reached: showing a config never
    # touches the buckets its paths name, e.g. instruct's image stores)
    classes = dict(settings_sections())
    for path in ("instruct", "text.tokenizer", "stats", "train"):
        if cfg.has(path):
            readers.append(functools.partial(load_settings, classes[path], cfg.section(path)))
    Config.fill_defaults = True
    try:
        for read in readers:
            read()
        load_settings(classes["run"], cfg.section("run"))
    finally:
        Config.fill_defaults = False


def show(args: argparse.Namespace) -> int:
    import yaml

    from jamdata.config import Config, bundled_configs

    if not args.name:
        for name, path in bundled_configs().items():
            print(f"{name:28s} {path}")
        return 0
    cfg = Config.load(args.name, overrides=args.set)
    if args.defaults:
        fill_defaults(cfg)
    sys.stdout.write(f"# {cfg.source}\n")
    yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return 0


def settings_sections() -> list[tuple[str, type]]:
    """(config path, settings class) of every section described by a settings class."""
    from jamdata.image.settings import ImageSettings
    from jamdata.interleaved.build import InstructSettings
    from jamdata.loader import LoaderSettings
    from jamdata.settings import RunSettings
    from pipelines.stats import StatsSettings
    from pipelines.text_clean_settings import CleanSettings
    from pipelines.text_inputs import SourceSettings
    from pipelines.text_sample_settings import SampleSection
    from pipelines.tokenizer_train import TokenizerSettings
    from jamdata.image.train import TrainConfig
    from jamtrain.settings import TrainSection
    from pipelines.vqvae_train import VQVAESettings

    return [
        ("run", RunSettings),
        ("text.sources.<name>", SourceSettings),
        ("text.clean", CleanSettings),
        ("text.tokenizer", TokenizerSettings),
        ("text.sample", SampleSection),
        ("vqvae", VQVAESettings),
        ("vqvae.train", TrainConfig),
        ("images", ImageSettings),
        ("instruct", InstructSettings),
        ("loader", LoaderSettings),
        ("stats", StatsSettings),
        ("train", TrainSection),
    ]


def reference_markdown() -> str:
    from jamdata.settings import reference_rows

    out = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `jamdata config reference`; a test keeps this file equal to "
        "that output. Sections not listed here are described in their own pages (docs/text-clean.md, "
        "docs/text-sample.md, docs/images.md, docs/loader.md, docs/training.md).",
        "",
    ]
    for path, cls in settings_sections():
        out += [
            f"## `{path}`",
            "",
            (cls.__doc__ or "").strip().splitlines()[0],
            "",
            "| key | type | default | allowed | meaning |",
            "|---|---|---|---|---|",
        ]
        for r in reference_rows(cls, path):
            cells = [f"`{r['key']}`", r["type"], f"`{r['default']}`", r["allowed"], r["doc"]]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def reference(args: argparse.Namespace) -> int:
    sys.stdout.write(reference_markdown())
    return 0
