"""`jamdata stats DIR... --out REPORT_DIR` and `jamdata stats --compare A B --out DIR`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="statistics report (report.html, stats.json, plots) of datasets or whole runs")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="dataset directories, or run directories holding them")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="compare two runs/reports side by side (report dirs with stats.json, or dataset/run dirs)",
    )
    p.add_argument("--fast", action="store_true", help="read manifests only (no shard is opened)")
    p.add_argument("--vqvae", help="VQ-VAE dataset dir used to decode a contact sheet of image-caption samples")
    p.add_argument("--workers", type=int, help="local Beam worker processes (default 1)")
    p.set_defaults(func=run)


def _load_or_compute(path: str, out: str, fast: bool, workers: int, beam_args) -> dict:
    from jamdata.io import exists, join, read_bytes
    from pipelines.stats import run_stats

    if exists(join(path, "stats.json")):
        return json.loads(read_bytes(join(path, "stats.json")))
    return run_stats([path], str(out), fast=fast, workers=workers, beam_args=beam_args)


def run(args: argparse.Namespace) -> int:
    from jamdata.config import Config, ConfigError, workers_setting
    from jamdata.io import absolute, join
    from jamdata.stats.report import write_compare
    from pipelines.stats import run_stats

    args.workers = workers_setting(args.workers, Config({}))
    beam_args = args.beam_args
    out = absolute(args.out)  # a local directory or a URL (s3://, gs://)
    if args.compare:
        a_path, b_path = args.compare
        a = _load_or_compute(a_path, join(out, "A"), args.fast, args.workers, beam_args)
        b = _load_or_compute(b_path, join(out, "B"), args.fast, args.workers, beam_args)
        result = write_compare(a, b, (a_path, b_path), out)
        changed = [r for r in result["rows"] if r["change"] not in (None, "+0.0%")]
        print(f"{len(result['rows'])} figures compared, {len(changed)} differ; see {join(out, 'compare.html')}")
        return 0
    if not args.dirs:
        raise ConfigError("DIR", "give at least one dataset directory (or --compare A B)")
    stats = run_stats(args.dirs, str(out), fast=args.fast, workers=args.workers, beam_args=beam_args, vqvae=args.vqvae)
    for name, ds in stats["datasets"].items():
        t = (ds.get("manifest") or {}).get("totals", {})
        print(
            f"{name:28s} {str(ds['kind']):14s} {ds['status']:12s} records={t.get('records')} tokens={t.get('tokens')}"
        )
        for p in ds["problems"]:
            print(f"    problem: {p}")
    from jamdata.stats.warnings import format_warnings

    for line in format_warnings(stats.get("warnings", [])):
        print(line)
    print(f"report: {join(out, 'report.html')}")
    return 0
