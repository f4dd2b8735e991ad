"""What remote workers get: the built wheel carries the bundled configs, the schemas and every data
file the code reads; an installed copy finds `demo` without a checkout; and the options for a
remote runner ship the package and its storage back-ends, except where the workers have them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from jamdata.config import Config
from pipelines.options import SETUP_FILE, WORKER_REQUIREMENTS, runner_args

REPO = Path(__file__).resolve().parent.parent
SOURCES = [
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "README.md",
    "jamdata",
    "jamtrain",
    "pipelines",
    "schemas",
    "configs",
]
ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
DATAFLOW = [
    "--runner=DataflowRunner",
    "--project=my-project",
    "--region=us-central1",
    "--temp_location=gs://my-bucket/tmp",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the checkout (the build writes beside its sources)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(p, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(src),
        ],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    (found,) = (root / "dist").glob("jam_data-*.whl")
    return found


def test_wheel_ships_configs_schemas_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (REPO / "configs").iterdir():
        assert f"jamdata/configs/{config.name}" in names, config.name
    for needed in (
        "schemas/manifest.schema.json",
        "schemas/records.py",
        "pipelines/worker-requirements.txt",
        "pipelines/options.py",
        "jamtrain/train.py",
    ):
        assert needed in names, needed
    for package in ("jamdata", "jamtrain", "pipelines", "schemas"):  # every data file the code may open
        for p in (REPO / package).rglob("*"):
            if p.is_file() and p.suffix not in (".py", ".pyc", ".so", ".c") and "__pycache__" not in p.parts:
                assert str(p.relative_to(REPO)) in names, p
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "jamdata = jamdata.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_copy_finds_the_bundled_demo_config(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "jamdata.cli", "config", "show", "demo"],
        cwd=elsewhere,
        env={**ENV, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    first = r.stdout.splitlines()[0]
    assert first == f"# {target / 'jamdata' / 'configs' / 'demo.yaml'}", first
    assert yaml.safe_load(r.stdout) == yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    # a stage runs from the installed copy alone (Wikipedia pages need its shipped language table)
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    wiki = {"inputs": [{"format": "wiki_xml", "paths": [str(REPO / "sample_data" / "text" / "wikipedia")]}]}
    demo["text"]["sources"] = {"wikipedia": wiki}
    config = tmp_path / "wiki.yaml"
    config.write_text(yaml.safe_dump(demo))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jamdata.cli",
            "text",
            "clean",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
        cwd=elsewhere,
        env={**ENV, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "wikipedia: " in r.stdout, r.stderr[-3000:]
    assert (
        str(target)
        in subprocess.run(
            [sys.executable, "-c", "import jamdata.text.wikisite as w; print(w.__file__)"],
            cwd=elsewhere,
            env={**ENV, "PYTHONPATH": str(target)},
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    # without a checkout's setup.py a remote runner must be told how workers get the package
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jamdata.cli",
            "text",
            "clean",
            "--config",
            "demo",
            "--out",
            str(tmp_path / "never"),
            "--",
            "--runner=PortableRunner",
            "--job_endpoint=localhost:1",
        ],
        cwd=elsewhere,
        env={**ENV, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("jamdata: error:")]
    assert r.returncode == 1 and len(errors) == 1 and "--sdk_container_image" in errors[0], r.stderr[-3000:]


def test_installed_copy_runs_the_main_job_on_the_bundled_demo_config(wheel, tmp_path):
    """`jamdata run --config demo` from a non-editable install: the code and the config come from the
    installed copy; the demo's relative input paths name the bundled sample data, so it runs where
    that data is (the checkout)."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    script = target / "bin" / "jamdata"  # run by path: its folder, then PYTHONPATH, come before the checkout
    env = {**ENV, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import jamdata.cli as c; print(c.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert where.startswith(str(target)), where
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            str(script),
            "run",
            "--config",
            "demo",
            "--out",
            str(out),
            "--quiet",
            "--stage",
            "text-clean",
            "--stage",
            "tokenizer",
            "--stage",
            "text-sample",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("text-clean", "tokenizer", "text-tokens"):
        assert (out / name / "manifest.json").exists(), name


def test_config_show_resolves_overrides_and_defaults():
    r = subprocess.run(
        [sys.executable, "-m", "jamdata.cli", "config", "show", "demo", "--defaults", "--set", "run.workers=2"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    shown = yaml.safe_load(r.stdout)
    assert shown["run"]["workers"] == 2
    assert shown["run"]["reuse_verify"] == "size"  # left out of demo.yaml: its default
    assert shown["images"]["max_caption_chars"] > 0
    # nested sections given in part get their defaults too; what the config set stays as set
    assert shown["train"]["model"]["cross_every"] == 1 and shown["train"]["model"]["d_model"] == 48
    assert shown["train"]["eval"]["every"] == 0 and shown["train"]["steps"] == 20
    demo = Config.load("demo")
    assert demo.source == str(REPO / "configs" / "demo.yaml")
    assert shown["text"]["sources"] == demo.get("text.sources")


def test_config_show_defaults_never_reaches_the_storage_a_config_names():
    """The reference config names gs:// buckets (an image store among them): showing it with its
    defaults reads settings only, so it works without bucket access or the storage libraries."""
    r = subprocess.run(
        [sys.executable, "-m", "jamdata.cli", "config", "show", "reference-30b", "--defaults"],
        cwd=REPO,
        env={**ENV, "AWS_EC2_METADATA_DISABLED": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    shown = yaml.safe_load(r.stdout)
    assert shown["instruct"]["sources"][2]["image_store"].startswith("gs://")
    assert shown["instruct"]["seed"] is None and shown["train"]["model"]["cross_every"] >= 1
    assert shown["instruct"]["sources"][0]["input_roots"] == []  # defaults inside a list of sections too


def test_remote_runner_ships_the_package_and_storage_backends():
    args = runner_args(1, DATAFLOW)
    setup = PipelineOptions(args).view_as(SetupOptions)
    assert setup.setup_file == str(SETUP_FILE)
    assert setup.requirements_file == str(WORKER_REQUIREMENTS)
    pins = WORKER_REQUIREMENTS.read_text()
    assert "gcsfs==" in pins and "s3fs==" in pins
    assert not any(a.startswith("--direct") for a in args)
    # a flag given is kept, not doubled
    mine = runner_args(1, [*DATAFLOW, "--setup_file", "/x/setup.py"])
    assert PipelineOptions(mine).view_as(SetupOptions).setup_file == "/x/setup.py"
    assert not any(a.startswith("--setup_file=") for a in mine)
    wheel = runner_args(1, [*DATAFLOW, "--extra_package=/x/jam_data-0.1.0-py3-none-any.whl"])
    assert PipelineOptions(wheel).view_as(SetupOptions).setup_file is None


def test_remote_runner_stages_an_sdist_with_the_configs(tmp_path):
    """Beam's own staging step for those options, offline: the package as an sdist (built from
    setup.py) and the requirements file. `--requirements_cache=skip` leaves the download of gcsfs
    and s3fs to the workers, so nothing is fetched here."""
    import tarfile

    from apache_beam.runners.portability.stager import Stager

    args = runner_args(1, [*DATAFLOW, "--requirements_cache=skip"])
    staged = Stager.create_job_resources(PipelineOptions(args), str(tmp_path))
    (sdist,) = tmp_path.glob("jam_data-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in (
        "setup.py",
        "configs/demo.yaml",
        "schemas/manifest.schema.json",
        "pipelines/worker-requirements.txt",
        "jamdata/loader/_textfill.c",
        "jamdata/text/data/wiki_languages.json",
    ):
        assert needed in names, needed
    (requirements,) = [r for r in staged if str(WORKER_REQUIREMENTS).encode() in r.type_payload]
    assert b"requirements.txt" in requirements.role_payload


@pytest.mark.parametrize(
    "flags",
    [
        ["--sdk_container_image=us-docker.pkg.dev/p/jam/worker:1"],
        ["--environment_type=EXTERNAL", "--environment_config=localhost:50000"],
        ["--environment_type=LOOPBACK"],
    ],
)
def test_workers_that_have_the_package_get_nothing_shipped(flags):
    setup = PipelineOptions(runner_args(1, [*DATAFLOW, *flags])).view_as(SetupOptions)
    assert setup.setup_file is None and setup.requirements_file is None


def test_local_runner_ships_nothing():
    args = runner_args(2, [])
    assert "--runner=FnApiRunner" in args and "--direct_num_workers=2" in args
    assert PipelineOptions(args).view_as(SetupOptions).setup_file is None


def test_dataflow_without_its_libraries_is_one_line(tmp_path):
    try:
        from apache_beam.runners.dataflow.internal import apiclient  # noqa: F401

        pytest.skip("Beam's Google Cloud libraries are installed: the job would be submitted")
    except ImportError:
        pass
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jamdata.cli",
            "text",
            "clean",
            "--config",
            "demo",
            "--out",
            str(tmp_path / "never"),
            "--",
            *DATAFLOW,
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("jamdata: error:")]
    assert len(errors) == 1 and "jam-data[dataflow]" in errors[0], r.stderr[-3000:]
    assert not (tmp_path / "never").exists()


def test_worker_container_matches_the_launching_environment():
    """Dataflow refuses (or misbehaves with) workers whose Beam or Python differ from the launcher's."""
    import apache_beam

    text = (REPO / "Dockerfile").read_text()
    assert f"ARG BEAM_VERSION={apache_beam.__version__}\n" in text
    assert f"FROM apache/beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:${{BEAM_VERSION}}" in text
    assert f"apache-beam=={apache_beam.__version__}\n" in (REPO / "requirements.txt").read_text()
    for copied in ("requirements.txt", "pipelines/worker-requirements.txt", "setup.py", "configs"):
        assert (REPO / copied).exists() and copied in text, copied
