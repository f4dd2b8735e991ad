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
    p = group.add_parser("show", help="print a config (bundled NAME or PATH) as YAML, after --set; "
                                      "without NAME, list the bundled configs")
    p.add_argument("name", nargs="?", metavar="NAME|PATH")
    p.add_argument("--defaults", action="store_true",
                   help="also show the default of every key the config leaves out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=show)


def fill_defaults(cfg) -> None:
    """Run the settings reader of every section the config has, recording the defaults it uses."""
    from jamdata.config import Config

    present = set(cfg.data)
    readers = []
    if "text" in present:
        from pipelines.text_clean import clean_settings
        from pipelines.text_sample import sample_settings

        readers += [lambda: clean_settings(cfg.section("text")), lambda: sample_settings(cfg)]
    if "images" in present:
        from pipelines.image_tokenize import ImageSettings

        readers.append(lambda: ImageSettings.from_config(cfg, 0))
    if "vqvae" in present:
        from pipelines.vqvae_train import train_config

        readers.append(lambda: train_config(cfg))
    if "instruct" in present:
        from jamdata.interleaved.build import BuildSpec

        readers.append(lambda: BuildSpec.from_config(cfg.section("instruct")))
    Config.fill_defaults = True
    try:
        for read in readers:
            read()
        run = cfg.section("run")
        for key, default in (("out_dir", "out/run"), ("seed", 0), ("workers", 1), ("beam_args", []),
                             ("reuse_verify", "size")):
            run.get(key, object, default)
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
