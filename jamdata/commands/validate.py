"""`jamdata validate DIR...`: re-check datasets against their manifests."""

from __future__ import annotations

import argparse
import sys

from jamdata.manifest import check_compatible, validate_dataset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check datasets against their manifest.json (exit 1 on any problem)")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--quick", action="store_true", help="sizes only, skip hashing and record counts")
    p.add_argument(
        "--same-vocab", action="store_true", help="also require that all DIRs share one joint-vocabulary fingerprint"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bad = 0
    for d in args.dirs:
        problems = validate_dataset(d, deep=not args.quick)
        for problem in problems:
            print(f"{d}: {problem}", file=sys.stderr)
        print(f"{d}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        bad += bool(problems)
    if args.same_vocab:
        check_compatible(args.dirs)
    return 1 if bad else 0
