"""One place that builds Beam PipelineOptions for every pipeline.

Locally: Beam's FnApiRunner, in-process or with N worker processes. Any other flag
(`--runner=DataflowRunner --project=... --region=... --temp_location=gs://...`) is passed through,
so the same command scales out. On a remote runner the package ships itself to workers via
`--setup_file` (added automatically unless given).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from jamdata.config import ConfigError

SETUP_FILE = Path(__file__).resolve().parent.parent / "setup.py"
LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}


def check_runner(name: str) -> None:
    """A runner name Beam does not know fails here with one line, not deep inside Beam."""
    from apache_beam.options.pipeline_options import StandardOptions

    known = sorted(p.rsplit(".", 1)[-1] for p in StandardOptions.ALL_KNOWN_RUNNERS)
    lowered = {k.lower() for k in known}
    if "." in name or name.lower() in lowered or f"{name.lower()}runner" in lowered:
        return
    raise ConfigError("--runner", f"Beam does not know the runner {name!r}", allowed=known)


def runner_args(workers: int = 1, beam_args: Sequence[str] = ()) -> list[str]:
    args = list(beam_args)
    if "--runner" in args:  # `--runner X`: one spelling from here on
        i = args.index("--runner")
        if i + 1 >= len(args):
            raise ConfigError("--runner", "needs a runner name")
        args[i:i + 2] = [f"--runner={args[i + 1]}"]
    runners = [a.split("=", 1)[1] for a in args if a.startswith("--runner=")]
    runner = runners[-1] if runners else None
    if runner is not None:
        check_runner(runner)
    else:
        runner = "FnApiRunner"
        args.insert(0, "--runner=FnApiRunner")
    if runner in LOCAL_RUNNERS:
        if workers > 1 and not any(a.startswith("--direct_num_workers") for a in args):
            args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    elif not any(a.startswith("--setup_file") for a in args) and SETUP_FILE.exists():
        args.append(f"--setup_file={SETUP_FILE}")
    return args


def pipeline_options(workers: int = 1, beam_args: Sequence[str] = ()) -> PipelineOptions:
    """`workers`: local worker processes (1 = in-process). `beam_args`: raw Beam flags.
    Local worker processes are watched so that they end with their job, even a killed one."""
    args = runner_args(workers, beam_args)
    if "--direct_running_mode=multi_processing" in args:
        from pipelines.worker_guard import guard

        guard()
    return PipelineOptions(args)
