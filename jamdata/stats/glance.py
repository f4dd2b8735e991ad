"""The parts of report.html a person reads first: warnings, one "at a glance" row per dataset
(how much went in, how much came out, why the rest was dropped), the cleaning funnel and the
reject reasons grouped by code with examples. Numbers are written one way everywhere (`num`,
`size`, `share`) and every size names what it measures (text bytes or bytes on disk).
"""

from __future__ import annotations

import html

FUNNEL_STAGES = ("read", "clean", "filter", "dedup")


def num(v) -> str:
    """12,345 for counts; 3 significant digits for other numbers; – for none."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}"
    return html.escape(str(v))


def size(n) -> str:
    """Bytes with a unit: 812 B, 12.3 kB, 4.56 MB, 7.89 GB (powers of 1000)."""
    if n is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def share(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def table(rows: list[dict], cols: list[str], cls: str = "") -> str:
    """Rows of already formatted cells (strings, HTML-escaped by the caller); first column left."""
    if not rows:
        return "<p><i>none</i></p>"
    head = "".join(f"<th class='{'l' if i == 0 else ''}'>{html.escape(c)}</th>" for i, c in enumerate(cols))
    body = "".join(
        "<tr>"
        + "".join(f"<td class='{'l' if i == 0 else ''}'>{r.get(c, '–')}</td>" for i, c in enumerate(cols))
        + "</tr>"
        for r in rows
    )
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def warnings_html(warnings: list[dict]) -> str:
    if not warnings:
        return "<section id='warnings'><h2>Warnings</h2><p class='ok'>No warnings.</p></section>"
    items = "".join(
        f"<li><code>{html.escape(w['code'])}</code> <b>{html.escape(w['dataset'])}</b>: "
        f"{html.escape(w['message'])}</li>"
        for w in warnings
    )
    return f"<section id='warnings'><h2>Warnings ({len(warnings)})</h2><ul class='warn'>{items}</ul></section>"


def _funnel_totals(funnel: dict) -> tuple[int, int]:
    rows = [s for s in funnel.values() if isinstance(s, dict)]
    docs_in = sum(
        ((s.get("read") or {}).get("docs_in", 0) if isinstance(s.get("read"), dict) else s.get("in") or 0) for s in rows
    )
    docs_out = sum(
        (
            (s.get(FUNNEL_STAGES[-1]) or {}).get("docs_out", 0)
            if isinstance(s.get(FUNNEL_STAGES[-1]), dict)
            else s.get("out") or 0
        )
        for s in rows
    )
    return docs_in, docs_out


def _reject_codes(ds: dict | None, top: int = 3) -> tuple[int, str]:
    """Reject count and the top codes of a rejects dataset (all sources together)."""
    if not ds:
        return 0, ""
    counts: dict[str, int] = {}
    for metrics in ds.get("groups", {}).values():
        for k, v in (metrics.get("rejects") or {}).get("counts", {}).items():
            counts[k] = counts.get(k, 0) + v
    if not counts:
        return (ds.get("manifest") or {}).get("totals", {}).get("records") or 0, ""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return sum(counts.values()), ", ".join(f"{html.escape(k)} ({num(v)})" for k, v in ranked[:top])


def glance_html(datasets: dict[str, dict]) -> str:
    """One row per dataset: records in, records out, rejected and why, tokens, size on disk."""
    rows = []
    for name, ds in datasets.items():
        m = ds.get("manifest") or {}
        totals = m.get("totals", {})
        funnel = (m.get("summary") or {}).get("funnel")
        docs_in = _funnel_totals(funnel)[0] if isinstance(funnel, dict) else None
        rej_name = name + "-rejects"
        n_rej, why = _reject_codes(datasets.get(rej_name))
        status = ds["status"]
        good = status == "ok" or (status == "empty" and ds["kind"] == "rejects")
        rows.append(
            {
                "dataset": f"<a href='#{html.escape(name)}'>{html.escape(name)}</a>",
                "kind": html.escape(str(ds["kind"])),
                "status": f"<span class='{'ok' if good else 'bad'}'>{html.escape(status)}</span>",
                "records in": num(docs_in),
                "records out": num(totals.get("records")),
                "dropped (top reasons)": (
                    f"{num(n_rej)}: {why}"
                    if n_rej and why
                    else num(n_rej)
                    if n_rej
                    else ("0" if docs_in is not None else "–")
                ),
                "tokens": num(totals.get("tokens")),
                "size on disk": size(totals.get("bytes")),
            }
        )
    cols = ["dataset", "kind", "status", "records in", "records out", "dropped (top reasons)", "tokens", "size on disk"]
    return "<section id='glance'><h2>At a glance</h2>" + table(rows, cols, "glance") + "</section>"


def funnel_html(funnel: dict) -> str:
    """The cleaning funnel per source and stage: documents in/out and sizes."""
    rows = []
    for source, stages in funnel.items():
        if not isinstance(stages, dict) or not all(isinstance(r, dict) for r in stages.values()):
            stages = (
                {"all": {"docs_in": (stages or {}).get("in"), "docs_out": (stages or {}).get("out")}}
                if isinstance(stages, dict)
                else {}
            )  # an older one-row-per-source funnel
        for stage in [s for s in FUNNEL_STAGES if s in stages] + [s for s in stages if s not in FUNNEL_STAGES]:
            r = stages[stage]
            d_in, d_out = r.get("docs_in") or 0, r.get("docs_out") or 0
            rows.append(
                {
                    "source": html.escape(source),
                    "stage": html.escape(stage),
                    "documents in": num(d_in),
                    "documents out": num(d_out),
                    "dropped": num(d_in - d_out),
                    "size in": size(r.get("bytes_in")),
                    "size out": size(r.get("bytes_out")),
                }
            )
    return (
        "<h3>Cleaning funnel</h3><p class='note'>size: UTF-8 text bytes, except the input of "
        "<i>read</i>, which is the raw (often compressed) file bytes.</p>"
        + table(rows, ["source", "stage", "documents in", "documents out", "dropped", "size in", "size out"], "funnel")
    )


def rejects_html(groups: dict) -> str:
    """Reject reasons per source grouped by `stage: code`, with the count, share and examples."""
    rows = []
    for source, metrics in groups.items():
        counts = (metrics.get("rejects") or {}).get("counts") or {}
        total = sum(counts.values()) or 1
        for reason, n in counts.items():
            ex = (metrics.get(f"reject_examples/{reason}") or {}).get("examples") or []
            examples = "<br>".join(
                f"<code>{html.escape(e['id'])}</code> <span class='snip'>{html.escape(e['text'][:160])}</span>"
                for e in ex
            )
            rows.append(
                {
                    "source": html.escape(source),
                    "reason (stage: code)": html.escape(reason),
                    "rejects": num(n),
                    "share of source": share(n / total),
                    "examples": examples,
                }
            )
    return "<h3>Why records were dropped</h3>" + table(
        rows, ["source", "reason (stage: code)", "rejects", "share of source", "examples"], "rejects"
    )
