"""One place that builds Beam PipelineOptions for every pipeline.

Locally: Beam's FnApiRunner, in-process or with N worker processes. Any other flag
(`--runner=DataflowRunner --project=... --region=... --temp_location=gs://...`) is passed through,
so the same command scales out. What a non-local runner's workers need is added unless given
(`ship_args`): this package (`--setup_file`) and the fsspec back-ends for `gs://` and `s3://`
(`--requirements_file`), except where the workers already have them: a custom worker container
(`--sdk_container_image`, see Dockerfile) or workers started from this installation
(`--environment_type=EXTERNAL` worker pools, `LOOPBACK`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from jamdata.config import ConfigError

SETUP_FILE = Path(__file__).resolve().parent.parent / "setup.py"
# gcsfs/s3fs for workers without a custom container (the `dataflow`/`s3` extras, which a
# `--setup_file` install does not bring); shipped inside the package, so it is there when installed.
WORKER_REQUIREMENTS = Path(__file__).resolve().parent / "worker-requirements.txt"
# Workers that run this very installation: shipping the package again would only cost a build.
SHARED_ENVIRONMENTS = {"EXTERNAL", "LOOPBACK"}
CONTAINER_FLAGS = ("--sdk_container_image", "--worker_harness_container_image")
LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}


def check_runner(name: str) -> None:
    """A runner name Beam does not know fails here with one line, not deep inside Beam."""
    from apache_beam.options.pipeline_options import StandardOptions

    known = sorted(p.rsplit(".", 1)[-1] for p in StandardOptions.ALL_KNOWN_RUNNERS)
    lowered = {k.lower() for k in known}
    if "." in name or name.lower() in lowered or f"{name.lower()}runner" in lowered:
        return
    raise ConfigError("--runner", f"Beam does not know the runner {name!r}", allowed=known)


def check_runner_installed(args: Sequence[str]) -> None:
    """Dataflow needs Beam's Google Cloud client libraries (`pip install '.[dataflow]'`); without
    them Beam fails only at submission, with a traceback, after the pipeline has been built.
    (Apart from `runner_args`, so that options for Dataflow can be built and inspected anywhere.)"""
    name = _flag(args, "--runner") or ""
    if name.rsplit(".", 1)[-1].lower().removesuffix("runner") != "dataflow":
        return
    try:
        from apache_beam.runners.dataflow.internal import apiclient  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--runner",
            f"{name} needs Beam's Google Cloud libraries: pip install "
            "'jam-data[dataflow]' (apache-beam[gcp], gcsfs), or run from the worker container "
            "(see Dockerfile)",
        ) from None


def runner_args(workers: int = 1, beam_args: Sequence[str] = ()) -> list[str]:
    args = list(beam_args)
    if "--runner" in args:  # `--runner X`: one spelling from here on
        i = args.index("--runner")
        if i + 1 >= len(args):
            raise ConfigError("--runner", "needs a runner name")
        args[i : i + 2] = [f"--runner={args[i + 1]}"]
    runners = [a.split("=", 1)[1] for a in args if a.startswith("--runner=")]
    runner = runners[-1] if runners else None
    if runner is not None:
        check_runner(runner)
    else:
        runner = "FnApiRunner"
        args.insert(0, "--runner=FnApiRunner")
    if is_local(runner):
        if workers > 1 and not any(a.startswith("--direct_num_workers") for a in args):
            args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    else:
        args += ship_args(args)
    return args


def is_local(runner: str) -> bool:
    """`FnApiRunner`, `direct`, `apache_beam.runners.direct.DirectRunner`, ...: Beam's spellings."""
    short = runner.rsplit(".", 1)[-1].lower().removesuffix("runner")
    return short in {r.lower().removesuffix("runner") for r in LOCAL_RUNNERS}


def _flag(args: Sequence[str], name: str) -> str | None:
    """The last value of `--name=value` or `--name value` in raw Beam flags."""
    value = None
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            value = a.split("=", 1)[1]
        elif a == name and i + 1 < len(args):
            value = args[i + 1]
    return value


def ship_args(args: Sequence[str]) -> list[str]:
    """Flags that give a non-local runner's workers this package and its storage back-ends.

    Nothing when the workers already have them: a custom container built from the Dockerfile
    (`--sdk_container_image`), or an EXTERNAL worker pool / LOOPBACK workers, which run this
    installation (Beam would build and stage an sdist that they never install). Otherwise
    `--setup_file` (Beam builds an sdist of this checkout and workers pip-install it, with its
    dependencies, at start-up) and `--requirements_file` with gcsfs/s3fs; a flag given is kept.
    An installed copy has no setup.py to build from: it needs a container or `--extra_package`."""
    if any(_flag(args, f) for f in CONTAINER_FLAGS):
        return []
    if (_flag(args, "--environment_type") or "").upper() in SHARED_ENVIRONMENTS:
        return []
    extra = []
    shipped = any(_flag(args, f) for f in ("--setup_file", "--extra_package", "--extra_packages"))
    if not shipped:
        if not SETUP_FILE.exists():
            raise ConfigError(
                "--runner",
                "the workers need this package, and this installed copy has no setup.py "
                "to build it from: pass --sdk_container_image=IMAGE (built from the Dockerfile) or "
                "--extra_package=jam_data-VERSION.whl, or run from a checkout",
            )
        extra.append(f"--setup_file={SETUP_FILE}")
    if _flag(args, "--requirements_file") is None and WORKER_REQUIREMENTS.exists():
        extra.append(f"--requirements_file={WORKER_REQUIREMENTS}")
    return extra


def pipeline_options(workers: int = 1, beam_args: Sequence[str] = ()) -> PipelineOptions:
    """`workers`: local worker processes (1 = in-process). `beam_args`: raw Beam flags.
    Local worker processes are watched so that they end with their job, even a killed one."""
    args = runner_args(workers, beam_args)
    check_runner_installed(args)
    if "--direct_running_mode=multi_processing" in args:
        from pipelines.worker_guard import guard

        guard()
    return PipelineOptions(args)
