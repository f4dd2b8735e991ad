"""stats.json -> PNG plots + one self-contained report.html (plots embedded, opens offline)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401  (matplotlib.ticker below)
import numpy as np  # noqa: E402

from jamdata.io import atomic_write, exists, join, read_bytes  # noqa: E402
from jamdata.stats import glance  # noqa: E402

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f3f3f3}td.l,th.l{text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070}
.plots img{max-width:520px;margin:4px;border:1px solid #eee}.snip{font-family:monospace;font-size:12px;color:#555}
ul.warn li{color:#8a4b00;margin:.3em 0}.note{font-size:12px;color:#666}table.rejects td{vertical-align:top}
table.rejects td:last-child{text-align:left;max-width:520px}table.rejects td:nth-child(2),table.glance td:nth-child(6){text-align:left}
"""


def _fmt(v) -> str:
    return glance.num(v)  # one number format for the whole report


def _table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th class='{'l' if i == 0 else ''}'>{html.escape(c)}</th>" for i, c in enumerate(cols))
    body = "".join(
        "<tr>"
        + "".join(f"<td class='{'l' if i == 0 else ''}'>{_fmt(r.get(c))}</td>" for i, c in enumerate(cols))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _save(fig, out: str, name: str) -> tuple[str, str]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = buf.getvalue()
    with atomic_write(join(out, f"{name}.png"), "wb") as f:
        f.write(data)
    return name, base64.b64encode(data).decode()


def _hist_plot(title: str, summary: dict, out: str, name: str):
    unit = summary.get("scale") == "unit"
    hist = [h for h in summary.get("histogram") or [] if unit or h[1] > 0]  # no zero bin on a log axis
    zeros = 0 if unit else sum(h[2] for h in summary.get("histogram") or [] if h[1] <= 0)
    if not hist:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    lo = np.array([h[0] for h in hist])
    hi = np.array([h[1] for h in hist])
    counts = np.array([h[2] for h in hist])
    if zeros:
        title += f" ({zeros:,} values <= 0 not drawn)"
    ax.bar(lo, counts, width=hi - lo, align="edge", color="#4a7ab5", edgecolor="#2a4a75")
    if not unit:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded minor labels
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("count")
    for p in ("p50", "p90", "p99"):
        if summary.get(p):
            ax.axvline(summary[p], color="#c33", ls="--", lw=0.8)
            ax.text(summary[p], ax.get_ylim()[1] * 0.9, p, fontsize=7, color="#c33")
    return _save(fig, out, name)


def _bar_plot(title: str, counts: dict, out: str, name: str, top: int = 15):
    items = list(counts.items())[:top]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1))
    labels = [k if len(k) < 60 else k[:57] + "..." for k, _ in items][::-1]
    ax.barh(labels, [v for _, v in items][::-1], color="#5a9")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, out, name)


def _codes_plot(title: str, counts: list[int], out: str, name: str):
    c = np.sort(np.asarray(counts))[::-1]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(np.arange(c.size), np.maximum(c, 0.5), color="#a55")
    ax.set_yscale("log")
    ax.set_xlabel("code (sorted by frequency)")
    ax.set_ylabel("uses")
    ax.set_title(title, fontsize=10)
    return _save(fig, out, name)


def _img(pair) -> str:
    if not pair:
        return ""
    name, b64 = pair
    return f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"


def _summary_tables(summary: dict) -> str:
    """Render a manifest's kind-specific summary (funnel, per-source plan...) whatever its shape."""
    parts = []
    for key, value in summary.items():
        if key == "funnel" and isinstance(value, dict):
            parts.append(glance.funnel_html(value))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            rows = [
                {"": k, **{kk: vv for kk, vv in v.items() if not isinstance(vv, (dict, list))}}
                for k, v in value.items()
            ]
            parts.append(f"<h4>{html.escape(key)}</h4>" + _table(rows))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in value]
            parts.append(f"<h4>{html.escape(key)}</h4>" + _table(rows))
        elif isinstance(value, (int, float, str)):
            parts.append(f"<p>{html.escape(key)}: <b>{_fmt(value)}</b></p>")
    return "".join(parts)


def _contact_sheet(ds: dict, vqvae: str | None, out: str, name: str):
    """Decode a few image-caption samples with the VQ-VAE that made them (named in the manifest,
    or `vqvae`)."""
    from jamdata.image.show import render_contact_sheet

    vq = vqvae if vqvae and exists(join(vqvae, "manifest.json")) else None
    if not vq and not ((ds.get("manifest") or {}).get("summary") or {}).get("vqvae"):
        return None
    try:
        path, _ = render_contact_sheet(ds["path"], join(out, f"{name}.png"), vqvae=vq, n=8)
    except (FileNotFoundError, ValueError) as e:  # e.g. the VQ-VAE was moved: say so, keep the report
        ds["problems"].append(f"contact sheet not drawn: {e}")
        return None
    return name, base64.b64encode(read_bytes(path)).decode()


def write_report(stats: dict, out: str | Path, vqvae: str | None = None) -> str:
    """`out`: a local directory or a URL (never through pathlib, which folds the `//` of s3://)."""
    out = str(out)
    plots = join(out, "plots")
    sections = []
    for name, ds in stats["datasets"].items():
        m = ds.get("manifest") or {}
        good = ds["status"] == "ok" or (ds["status"] == "empty" and ds["kind"] == "rejects")
        body = [
            f"<h2 id='{html.escape(name)}'>{html.escape(name)} <small>({html.escape(str(ds['kind']))})</small></h2>",
            f"<p>path: <code>{html.escape(ds['path'])}</code> — status: "
            f"<span class='{'ok' if good else 'bad'}'>{html.escape(ds['status'])}</span></p>",
        ]
        if ds["status"] == "empty" and ds["kind"] == "rejects":
            body.append("<p class='ok'>No record was rejected.</p>")  # zero rejects is good news
        elif ds["status"] == "empty":
            body.append("<p class='bad'>This dataset has no records.</p>")
        if ds["problems"]:
            body.append(
                "<p class='bad'>Problems found:</p><ul>"
                + "".join(f"<li>{html.escape(p)}</li>" for p in ds["problems"])
                + "</ul>"
            )
        if ds.get("shard_totals"):
            body.append(
                glance.table(
                    [
                        {
                            "group": html.escape(g),
                            "shards": _fmt(v["shards"]),
                            "records": _fmt(v["records"]),
                            "tokens": _fmt(v["tokens"] or None),
                            "size on disk": glance.size(v["bytes"]),
                        }
                        for g, v in ds["shard_totals"].items()
                    ],
                    ["group", "shards", "records", "tokens", "size on disk"],
                )
            )
        if ds["kind"] == "rejects" and ds.get("groups"):
            body.append(glance.rejects_html(ds["groups"]))
        if m.get("summary"):
            body.append(_summary_tables(m["summary"]))
        dist_rows, imgs = [], []
        for group, metrics in ds.get("groups", {}).items():
            for metric, s in metrics.items():
                if ds["kind"] == "rejects" and (metric == "rejects" or metric.startswith("reject_examples/")):
                    if metric == "rejects":
                        imgs.append(
                            _bar_plot(
                                f"{name} · {group} · reject reasons",
                                s["counts"],
                                plots,
                                f"{name}-{group}-rejects".replace("/", "_").replace(" ", "_")[:120],
                            )
                        )
                    continue  # shown grouped by code in the table above
                slug = f"{name}-{group}-{metric}".replace("/", "_").replace(" ", "_")[:120]
                if "histogram" in s:
                    dist_rows.append(
                        {
                            "group": group,
                            "metric": metric,
                            **{k: s.get(k) for k in ("count", "mean", "min", "p10", "p50", "p90", "p99", "max")},
                        }
                    )
                    imgs.append(_hist_plot(f"{name} · {group} · {metric}", s, plots, slug))
                elif "codebook_size" in s:
                    body.append(
                        "<h4>codebook usage</h4>"
                        + _table([{k: s[k] for k in ("codebook_size", "tokens", "used", "dead_share", "perplexity")}])
                    )
                    imgs.append(_codes_plot(f"{name} · codebook usage", s["counts"], plots, slug))
                elif "counts" in s:
                    top = list(s["counts"].items())[:10]
                    body.append(
                        f"<h4>{html.escape(group)} · {html.escape(metric)}</h4>"
                        + _table(
                            [{"value": k, "count": v, "share": glance.share(v / max(s["total"], 1))} for k, v in top]
                        )
                    )
                    imgs.append(_bar_plot(f"{name} · {group} · {metric}", s["counts"], plots, slug))
                elif "examples" in s:
                    body.append(
                        f"<p><b>{html.escape(group)} · {html.escape(metric)}</b></p><ul>"
                        + "".join(
                            f"<li><code>{html.escape(e['id'])}</code> <span class='snip'>{html.escape(e['text'][:200])}</span></li>"
                            for e in s["examples"]
                        )
                        + "</ul>"
                    )
        if dist_rows:
            body.append(
                "<h4>distributions (percentiles; chars: characters, bytes: UTF-8 text bytes)</h4>" + _table(dist_rows)
            )
        if ds["kind"] == "image_caption" and ds["status"] == "ok":
            imgs.append(_contact_sheet(ds, vqvae, plots, f"{name}-contact-sheet"))
        body.append("<div class='plots'>" + "".join(_img(i) for i in imgs if i) + "</div>")
        sections.append("".join(body))
    loader = stats.get("loader")
    if loader:
        rows = [
            {
                "dataset": k,
                "sequences": loader["sequences"][k],
                "share": loader["share"][k],
                "loss tokens": loader["loss_tokens"].get(k),
            }
            for k in loader["share"]
        ]
        sections.append(
            f"<h2>loader view</h2><p>realised mixture over the first {loader['batches']} batches</p>" + _table(rows)
        )
    o = stats["overall"]
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>jam dataset report</title><style>{CSS}</style>"
        f"</head><body><h1>jam dataset report</h1><p>{html.escape(stats['mode'])} · {len(stats['datasets'])} datasets · "
        f"{_fmt(o['records'])} records · {_fmt(o['tokens'] or None)} tokens · {glance.size(o['bytes'])} on disk</p>"
        + glance.warnings_html(stats.get("warnings", []))
        + glance.glance_html(stats["datasets"])
        + "<h2>Details</h2>"
        + "".join(sections)
        + "</body></html>"
    )
    with atomic_write(join(out, "report.html"), "w") as f:
        f.write(doc)
    return join(out, "report.html")


def write_compare(a: dict, b: dict, names: tuple[str, str], out: str | Path) -> dict:
    """Two stats.json side by side: totals and per-group means per dataset, with relative change."""
    rows = []
    for ds in sorted(set(a["datasets"]) | set(b["datasets"])):
        da, db = a["datasets"].get(ds, {}), b["datasets"].get(ds, {})
        ta = (da.get("manifest") or {}).get("totals", {})
        tb = (db.get("manifest") or {}).get("totals", {})
        for key in ("records", "bytes", "tokens"):
            rows.append(_cmp_row(ds, key, ta.get(key), tb.get(key)))
        groups = set(da.get("groups", {})) | set(db.get("groups", {}))
        for g in sorted(groups):
            ma, mb = da.get("groups", {}).get(g, {}), db.get("groups", {}).get(g, {})
            for metric in sorted(set(ma) | set(mb)):
                sa, sb = ma.get(metric, {}), mb.get(metric, {})
                if "mean" in sa or "mean" in sb:
                    rows.append(_cmp_row(ds, f"{g}/{metric} count", sa.get("count"), sb.get("count")))
                    rows.append(_cmp_row(ds, f"{g}/{metric} mean", sa.get("mean"), sb.get("mean")))
    out = str(out)
    result = {"a": names[0], "b": names[1], "rows": rows}
    import json

    with atomic_write(join(out, "compare.json"), "w") as f:
        json.dump(result, f, indent=2)
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>jam compare</title><style>{CSS}</style></head><body>"
        f"<h1>A: {html.escape(names[0])}<br>B: {html.escape(names[1])}</h1>"
        + _table(rows, ["dataset", "figure", "A", "B", "change"])
        + "</body></html>"
    )
    with atomic_write(join(out, "compare.html"), "w") as f:
        f.write(doc)
    return result


def _cmp_row(ds: str, figure: str, va, vb) -> dict:
    change = None
    if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va:
        change = f"{(vb - va) / va:+.1%}"
    return {"dataset": ds, "figure": figure, "A": va, "B": vb, "change": change}
