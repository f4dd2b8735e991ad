"""A real run, read as a person reads it: the demo pipeline with a planted source that reads
nothing (a WARC declared `wet`) and a real tokenizer without byte fallback. The console summary,
the report's manifest and report.html name both; the report, loaded in a real headless Chromium,
shows a non-empty funnel and grouped reject reasons, every plot loads and nothing errs."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_report_truth import without_byte_fallback

REPO = Path(__file__).resolve().parent.parent
ENV_KEYS = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
# Chromium reports a page's console messages on stderr as `CONSOLE(line)] "message"`.
CONSOLE_ERROR = re.compile(r"CONSOLE\(\d+\)\].*(error|Uncaught|Failed)", re.I)
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src) || e)), true);
window.addEventListener('load', () => {
  const bad = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  document.documentElement.setAttribute('data-images', document.images.length);
  document.documentElement.setAttribute('data-broken', JSON.stringify(bad));
  document.documentElement.setAttribute('data-errors', JSON.stringify(window.__errors));
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing, else the browser tests skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    try:
        r = subprocess.run(
            ["apt-get", "install", "-y", "chromium"],
            capture_output=True,
            text=True,
            timeout=900,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"chromium is not installed and `apt-get install -y chromium` could not run: {e}")
    found = shutil.which("chromium")
    if r.returncode or not found:
        pytest.skip(f"chromium is not installed and `apt-get install -y chromium` failed: {r.stderr[-300:]}")
    return found


@pytest.fixture(scope="module")
def planted_run(sp_model_path, tmp_path_factory) -> tuple[Path, str]:
    """(run dir, console output) of text-clean, tokenizer, text-sample and stats on the demo
    config plus the two planted mistakes."""
    root = tmp_path_factory.mktemp("planted")
    model = root / "no-byte-fallback.model"
    model.write_bytes(without_byte_fallback(sp_model_path.read_bytes()))
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["text"]["sources"]["planted"] = {
        "inputs": [{"format": "wet", "paths": ["sample_data/text/commoncrawl/sample.warc.gz"]}]
    }
    cfg["text"]["tokenizer"]["model"] = str(model)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = root / "run"
    cmd = [
        sys.executable,
        "-m",
        "jamdata.cli",
        "run",
        "--config",
        str(root / "config.yaml"),
        "--out",
        str(run),
        "--workers",
        "1",
    ]
    for stage in ("text-clean", "tokenizer", "text-sample", "stats"):
        cmd += ["--stage", stage]
    import os

    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV_KEYS}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return run, r.stdout


def test_warnings_in_console_manifest_and_stats(planted_run):
    run, console = planted_run
    assert re.search(r"warning \[format_matched_nothing\] text-clean: source planted read 0 documents", console)
    assert "warning [no_byte_fallback] tokenizer" in console
    codes = {
        (w["code"], w["source"])
        for w in json.loads((run / "report" / "manifest.json").read_text())["summary"]["warnings"]
    }
    assert ("format_matched_nothing", "planted") in codes and ("no_byte_fallback", None) in codes
    stats = json.loads((run / "report" / "stats.json").read_text())
    assert stats["warnings"] == json.loads((run / "report" / "manifest.json").read_text())["summary"]["warnings"]
    tok = json.loads((run / "tokenizer" / "manifest.json").read_text())["summary"]
    assert tok["byte_fallback"] is False and tok["unk_share"] > 0


def test_report_in_a_real_browser(planted_run, chromium, tmp_path):
    run, _ = planted_run
    page = tmp_path / "report.html"  # the report plus a probe that records broken images and errors
    page.write_text((run / "report" / "report.html").read_text().replace("<head>", "<head>" + PROBE, 1))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-logging=stderr",
        "--virtual-time-budget=10000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "jam dataset report" in html
    assert [line for line in dom.stderr.splitlines() if CONSOLE_ERROR.search(line)] == []
    n_images = int(re.search(r'data-images="(\d+)"', html).group(1))
    assert n_images >= 5
    assert re.search(r'data-broken="([^"]*)"', html).group(1).replace("&quot;", '"') == "[]"
    assert re.search(r'data-errors="([^"]*)"', html).group(1).replace("&quot;", '"') == "[]"
    funnel = re.search(r"<table class=\"funnel\">(.*?)</table>", html, re.S).group(1)
    assert funnel.count("<tr>") > 10 and ">planted<" in funnel
    rejects = re.search(r"<table class=\"rejects\">(.*?)</table>", html, re.S).group(1)
    assert rejects.count("<tr>") > 1
    for code in ("dedup_exact: exact_duplicate_of", "read: wikipedia_redirect"):
        assert code in rejects
    warnings = re.search(r"<section id=\"warnings\">(.*?)</section>", html, re.S).group(1)
    assert "planted" in warnings and "no_byte_fallback" in warnings
    shot = tmp_path / "report.png"  # kept in the test's output to look at
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2200", page.as_uri()],
        capture_output=True,
        timeout=180,
    )
    assert shot.exists() and shot.stat().st_size > 20_000


def test_parquet_output_loads_with_datasets(planted_run):
    """The README's one-liner, on a real output directory."""
    datasets = pytest.importorskip("datasets")
    run, _ = planted_run
    readme = (REPO / "README.md").read_text()
    line = re.search(r'^datasets\.load_dataset\("parquet", data_dir="out/demo/text-clean".*$', readme, re.M).group(0)
    ds = eval(line.replace("out/demo/text-clean", str(run / "text-clean")), {"datasets": datasets})
    manifest = json.loads((run / "text-clean" / "manifest.json").read_text())
    assert ds.num_rows == manifest["totals"]["records"]
    with pytest.raises(Exception):  # why the README names the files: manifest.json is no parquet
        datasets.load_dataset("parquet", data_dir=str(run / "text-clean"), split="train")
