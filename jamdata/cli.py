"""`jamdata` command line. Each module in jamdata/commands/ adds its sub-commands via
`register(subparsers)`, so a capability and its command live together."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Sequence

from jamdata import __version__

QUIET_HELP = "no progress lines while Beam runs, and only warnings in the log"


def command_group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A sub-command group that several modules can extend (`jamdata text clean`, `jamdata text sample`)."""
    if name in sub.choices:
        return sub.choices[name].jam_group
    parser = sub.add_parser(name, help=help)
    group = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    parser.jam_group = group
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    return group


def build_parser(prog: str = "jamdata", package: str = "jamdata.commands") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{prog}: mixed-modal (text + image) data preparation and training. Run `{prog} COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package}.{info.name}").register(sub)
    return parser


def run(argv: Sequence[str] | None, prog: str, package: str) -> int:
    parser = build_parser(prog, package)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after a bare `--` is raw Beam flags (e.g. --runner=DataflowRunner ...).
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = parser.parse_args(argv)
    args.beam_args = beam_args
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # Beam's per-bundle INFO lines drown the progress lines
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        for name in ("aiobotocore", "botocore", "s3fs", "gcsfs"):  # object-storage clients' INFO lines
            logging.getLogger(name).setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: "apitools" not in r.getMessage())
    if quiet:
        from pipelines.progress import set_quiet

        set_quiet(True)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from jamdata.errors import USER_ERRORS, user_error_names

    try:
        if args.beam_args:  # a runner Beam does not know fails now, before any work
            from pipelines.options import check_runner_installed, runner_args

            check_runner_installed(runner_args(1, args.beam_args))
        return int(args.func(args) or 0)
    except USER_ERRORS as e:  # expected failures: one clear line, a traceback only with -v
        if args.verbose:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        # Beam worker processes send exceptions back as text inside a RuntimeError.
        line = user_error_line(str(e), user_error_names())
        if line is None or args.verbose:
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 1


def user_error_line(text: str, names: set[str]) -> str | None:
    """The last `SomeUserError: message` line in a remote traceback, if its type is a user error."""
    names = set(names) | {"OSError"}
    for raw in reversed(text.splitlines()):
        name, sep, message = raw.strip().partition(": ")
        if sep and name.rsplit(".", 1)[-1] in names:
            return message
    return None


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, "jamdata", "jamdata.commands")


if __name__ == "__main__":
    sys.exit(main())
