"""Render the report summary as one self-contained HTML page: inline CSS and SVG, no scripts, no network."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from pipeline.report.summary import FUNNEL_STEPS

_COLORS = {
    "kept": "#2e7d32", "quarantined": "#c62828", "ingest_dropped": "#8d6e63", "duplicates": "#f9a825",
    "filtered": "#ef6c00", "mixed_out": "#6a1b9a", "tokenize_dropped": "#1565c0",
}
_PALETTE = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#8d6e63", "#ad1457"]
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.25rem .55rem;vertical-align:top}
th{background:#f5f5f5;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.card b{display:block;font-size:1.4rem}pre{background:#f7f7f7;padding:.5rem;white-space:pre-wrap;word-break:break-word;max-height:22rem;overflow:auto}
.muted{color:#777}svg text{font:11px system-ui,sans-serif}.legend span{display:inline-block;margin-right:1rem}
.plot{display:inline-block;margin-right:1.5rem;vertical-align:top}
.sw{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return escape(str(v))


def _table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{_fmt(r.get(c))}</td>' if isinstance(r.get(c), int | float) else f"<td>{_fmt(r.get(c, ''))}</td>"
            for c in cols
        ) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(data: dict[str, float], width: int = 640, color: str = "#1565c0") -> str:
    """Horizontal bars, one per key, labelled with the value."""
    if not data:
        return '<p class="muted">none</p>'
    label_w, row_h = 190, 20
    top = max(max(data.values()), 1)
    h = row_h * len(data) + 6
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, (k, v) in enumerate(data.items()):
        y = i * row_h + 3
        w = (width - label_w - 70) * v / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{escape(str(k)[:30])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{row_h - 5}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{_fmt(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def stacked_funnel(rows: list[dict[str, Any]], width: int = 760) -> str:
    """One bar per source: where its records went, in funnel order, as shares of what it read."""
    if not rows:
        return ""
    label_w, row_h = 190, 24
    steps = [s for s in FUNNEL_STEPS if s != "read"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row_h * len(rows) + 6}" role="img">']
    for i, r in enumerate(rows):
        y, x = i * row_h + 3, float(label_w)
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{escape(r["source"][:28])}</text>')
        for s in reversed(steps):  # kept first, on the left
            if not r["read"] or not r[s]:
                continue
            w = (width - label_w - 10) * r[s] / r["read"]
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}" fill="{_COLORS[s]}">'
                f"<title>{escape(s)}: {r[s]}</title></rect>"
            )
            x += w
    parts.append("</svg>")
    legend = "".join(f'<span><i class="sw" style="background:{_COLORS[s]}"></i>{s}</span>' for s in reversed(steps))
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def histogram_svg(hist: dict[str, Any], xlabel: str, width: int = 520, height: int = 170, fmt: str = ".0f") -> str:
    """Vertical bars of an equal-width histogram with its range and median (numbers in `fmt`)."""
    counts = hist.get("counts") or []
    if not counts:
        return '<p class="muted">no data</p>'
    pad_l, pad_b = 40, 30
    top = max(max(counts), 1)
    bw = (width - pad_l - 10) / len(counts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, c in enumerate(counts):
        h = (height - pad_b - 10) * c / top
        lo, hi = hist["edges"][i], hist["edges"][i + 1]
        parts.append(
            f'<rect x="{pad_l + i * bw:.1f}" y="{height - pad_b - h:.1f}" width="{max(bw - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="#1565c0"><title>{lo:{fmt}}–{hi:{fmt}}: {c}</title></rect>'
        )
    parts.append(f'<text x="{pad_l}" y="{height - 14}">{hist["min"]:{fmt}}</text>')
    parts.append(f'<text x="{width - 10}" y="{height - 14}" text-anchor="end">{hist["max"]:{fmt}}</text>')
    parts.append(f'<text x="{(width + pad_l) / 2}" y="{height - 2}" text-anchor="middle">{escape(xlabel)}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="14" text-anchor="end">{top}</text>')
    parts.append("</svg>")
    stats = f'n {hist["n"]}, mean {hist["mean"]:.{2 if fmt != ".0f" else 1}f}, median {hist["p50"]:{fmt}}, p95 {hist["p95"]:{fmt}}'
    return f'<div class="plot">{"".join(parts)}<div class="muted">{stats}</div></div>'


def line_chart(series: dict[str, list[list[float]]], width: int = 640, height: int = 240,
               points: set[str] | frozenset[str] = frozenset()) -> str:
    """Lines over steps, one per series (train loss, ...), on shared axes; the series in `points`
    (separate evaluations, such as the validation loss) are drawn as points, never joined by a line."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return '<p class="muted">no data</p>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    pad_l, pad_b = 50, 30

    def xy(p: list[float]) -> str:
        x = pad_l + (width - pad_l - 10) * (p[0] - x0) / (x1 - x0)
        y = 10 + (height - pad_b - 10) * (1 - (p[1] - y0) / (y1 - y0))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<rect x="{pad_l}" y="10" width="{width - pad_l - 10}" height="{height - pad_b - 10}" fill="none" stroke="#ccc"/>']
    legend = []
    for i, (name, s) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        if len(s) == 1 or name in points:
            for p in s:
                x, y = xy(p).split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{color}"><title>{escape(name)} at step '
                             f'{p[0]:g}: {p[1]:.4g}</title></circle>')
        else:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{" ".join(xy(p) for p in s)}"/>')
        what = " (evaluations, points)" if name in points else ""
        legend.append(f'<span><i class="sw" style="background:{color}"></i>{escape(name)}{what}</span>')
    parts += [
        f'<text x="{pad_l - 4}" y="16" text-anchor="end">{y1:.3g}</text>',
        f'<text x="{pad_l - 4}" y="{height - pad_b}" text-anchor="end">{y0:.3g}</text>',
        f'<text x="{pad_l}" y="{height - 12}">{x0:g}</text>',
        f'<text x="{width - 10}" y="{height - 12}" text-anchor="end">step {x1:g}</text>',
        "</svg>",
    ]
    return "".join(parts) + f'<div class="legend">{"".join(legend)}</div>'


def _json_block(obj: Any, title: str) -> str:
    return f"<details><summary>{escape(title)}</summary><pre>{escape(json.dumps(obj, indent=2, default=str))}</pre></details>"


def _section(title: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2>{body}"


def _reasons_html(reasons: list[dict[str, Any]]) -> str:
    if not reasons:
        return '<p class="muted">every record was kept</p>'
    out = [_table([{k: r[k] for k in ("reason", "stage", "outcome", "count")} for r in reasons])]
    for r in reasons:
        if not r["examples"]:
            continue
        items = "".join(
            f"<li><code>{escape(e['origin'])}</code>"
            + (f" <span class=\"muted\">[{escape(str(e['source']))}]</span>" if e.get("source") else "")
            + f" {escape(e.get('detail') or '')}"
            + (f"<pre>{escape(e['text'])}</pre>" if e.get("text") else "") + "</li>"
            for e in r["examples"]
        )
        srcs = ", ".join(f"{escape(k)} {v}" for k, v in list((r.get("sources") or {}).items())[:6])
        out.append(f"<details><summary><code>{escape(r['reason'])}</code>: {r['count']}"
                   + (f" — from {srcs}" if srcs else "") + f" (examples)</summary><ul>{items}</ul></details>")
    return "".join(out)


def matrix_html(m: dict[str, Any]) -> str:
    """The source x reason table: counts and shares of each source's records, shaded by share."""
    reasons, rows = m.get("reasons") or [], m.get("rows") or []
    if not rows:
        return '<p class="muted">no records</p>'
    head = "<tr><th>source</th><th>tier</th><th>read</th><th>kept</th>" + "".join(
        f"<th><code>{escape(r)}</code></th>" for r in reasons) + "</tr>"
    body = []
    for row in rows:
        cells = []
        for r in reasons:
            n, share = row["counts"].get(r, 0), row["shares"].get(r, 0.0)
            shade = f' style="background:rgba(198,40,40,{min(0.08 + share * 1.5, 0.75):.2f})"' if n else ""
            cells.append(f'<td class="n"{shade}>{n}<br><span class="muted">{share:.1%}</span></td>' if n
                         else '<td class="n muted">·</td>')
        body.append(f"<tr><td>{escape(row['source'])}</td><td>{escape(row['tier'])}</td><td class=\"n\">{row['read']}</td>"
                    f"<td class=\"n\">{row['kept']}<br><span class=\"muted\">{row['kept_share']:.1%}</span></td>"
                    + "".join(cells) + "</tr>")
    total = m.get("total") or {}
    body.append("<tr><th>all</th><th></th>" + f'<th class="n">{m.get("read", 0)}</th><th class="n">{m.get("kept", 0)}</th>'
                + "".join(f'<th class="n">{total.get(r, 0)}</th>' for r in reasons) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def quality_html(q: dict[str, Any]) -> str:
    """The filter order and what the tier policy spared."""
    if not q:
        return '<p class="muted">the quality stage did not run</p>'
    order = q.get("order") or []
    out = ["<p>Filters ran in this order, each on what the ones before kept: "
           + " → ".join(f"<code>{escape(f)}</code>" + (" (on every record)" if f == "contamination" else "")
                        for f in order) + ".</p>"] if order else []
    spared = q.get("spared") or {}
    if spared:
        rows = [{"rule": f"quality.{rule}", **{f"kept ({t} tier)": n for t, n in tiers.items()}}
                for rule, tiers in spared.items()]
        out.append("<p>Kept by the tier policy although a heuristic rule flagged them (see <code>quality_flags</code> "
                   "in curated/):</p>" + _table(rows))
    return "".join(out) or '<p class="muted">nothing to say</p>'


def pii_html(s: dict[str, Any]) -> str:
    """Redactions per kind and every example redaction as before → after."""
    pii = (s.get("quality") or {}).get("pii") or {}
    out = [bar_chart(s.get("pii_redactions") or {}, color="#6a1b9a")]
    if pii.get("conversations_redacted"):
        out.append(f"<p>{pii['conversations_redacted']} conversation(s) changed by a redaction.</p>")
    ex = pii.get("examples") or []
    if ex:
        out.append("<h3>redactions, before → after</h3>" + _table(
            [{"kind": e.get("kind"), "origin": e.get("origin"), "before": e.get("before"), "after": e.get("after")}
             for e in ex], ["kind", "origin", "before", "after"]))
    return "".join(out)


def contamination_html(s: dict[str, Any]) -> str:
    """Hits per benchmark, and per benchmark what could be checked and how."""
    c = (s.get("quality") or {}).get("contamination") or {}
    benches = c.get("benchmarks") or {}
    out = [bar_chart(s.get("contamination") or {}, color="#c62828")]
    if benches:
        rows = [{"benchmark": b, "items": v.get("items"), "checked": v.get("checked"),
                 "by n-gram": v.get("ngram"), "short, contained": v.get("contained"),
                 "short, exact copy only": v.get("exact_only"), "not checkable": v.get("unchecked"),
                 "hits": v.get("hits")} for b, v in benches.items()]
        out.append("<p>Every item is found as an exact copy of a user turn; long items also by shared n-grams, "
                   "short ones also contained in a longer turn. Items with no words cannot be checked.</p>"
                   + _table(rows))
    if c.get("by_rule"):
        out.append("<p>hits by rule: " + ", ".join(f"{escape(k)} {v}" for k, v in c["by_rule"].items()) + "</p>")
    return "".join(out)


def _name_table(before: dict[str, Any], after: dict[str, Any], key: str) -> str:
    """Rows per source (or tier): the mixture's counts before and after, side by side."""
    rows = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name) or {}, after.get(name) or {}
        rows.append({key: name, **{f"{m} before": b.get(m) for m in ("conversations", "tokens", "share")},
                     **{f"{m} after": a.get(m) for m in ("conversations", "tokens", "supervised_tokens", "share")}})
    return _table(rows)


def _mix_html(mix: Any) -> str:
    out = []
    if isinstance(mix, dict) and isinstance(mix.get("before"), dict) and isinstance(mix.get("after"), dict):
        for part, key in (("sources", "source"), ("tiers", "tier")):
            b, a = mix["before"].get(part), mix["after"].get(part)
            if isinstance(b, dict) and isinstance(a, dict):
                out.append(f"<h3>per {key}</h3>" + _name_table(b, a, key))
    elif isinstance(mix, dict):
        out += [f"<h3>{escape(k)}</h3>" + _table(v) for k, v in mix.items()
                if isinstance(v, list) and v and isinstance(v[0], dict)]
    return "".join(out) + _json_block(mix, "mixture statistics")


def _prompt_text(p: Any) -> str:
    if isinstance(p, list):  # messages: show the last user turn (the question the model answers)
        users = [m.get("content", "") for m in p if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else json.dumps(p)
    return str(p)


def _before_after_html(ba: Any) -> str:
    if not isinstance(ba, dict):
        return _json_block(ba, "before/after")
    out = []
    loss = ba.get("val_loss")
    if isinstance(loss, dict):
        rows = [{"split": "overall", **loss["overall"]}] if isinstance(loss.get("overall"), dict) else []
        for part in ("per_tier", "per_source"):
            rows += [{"split": f"{part[4:]} {k}", **v} for k, v in (loss.get(part) or {}).items() if isinstance(v, dict)]
        out.append("<h3>validation loss</h3>" + _table(rows))
    items = ba.get("prompts") or ba.get("examples") or ba.get("answers")
    if isinstance(items, list) and items and isinstance(items[0], dict):
        rows = [{"origin": it.get("origin", ""), "prompt": _prompt_text(it.get("prompt", "")),
                 "reference": it.get("reference", ""), "before": it.get("before", ""), "after": it.get("after", "")}
                for it in items]
        out.append("<h3>answers</h3>" + _table(rows))
    return "".join(out) + _json_block(ba, "before_after.json")


def _selection_html(sel: dict[str, Any]) -> str:
    """Score distributions per source and tier, the margin of the cut, the reference scoring, the ablation."""
    out = []
    if sel.get("candidates") is not None:
        out.append(f"<p>{sel['kept']} of {sel['candidates']} candidate conversations kept by the mix.</p>")
    for dist in (sel.get("distributions") or {}).values():
        for by in ("tier", "source"):
            plots = "".join(histogram_svg(h, f"{dist['label']}: {by} {name}", width=360, height=140, fmt=".2f")
                            for name, h in (dist.get(by) or {}).items())
            out.append(f"<h3>{escape(dist['label'])} per {by}</h3>{plots}")
    sc = sel.get("scoring")
    if sc:
        out.append("<h3>reference-model scoring</h3>" + _table([{
            "model": sc.get("reference_model"), "rendered with": sc.get("rendered_with"), "device": sc.get("device"),
            "scored": sc.get("scored"), "cached": sc.get("cached"), "unscored": sc.get("unscored"),
            "conversations/s": sc.get("conversations_per_s"), "IFD > 1": sc.get("ifd_above_one")}]))  # fmt: skip
    if sel.get("margin"):
        out.append("<h3>the margin of the cut (per source)</h3>" + _table(sel["margin"]))
    ab = sel.get("ablation")
    if ab and ab.get("arms"):
        tiers = sorted({t for a in ab["arms"].values() for t in (a.get("per_tier") or {})})
        sources = sorted({t for a in ab["arms"].values() for t in (a.get("per_source") or {})})
        def row(name: str, a: dict[str, Any]) -> dict[str, Any]:
            r = {"arm": name, "conversations": a.get("conversations", ""), "tokens": a.get("tokens", ""),
                 "passes": a.get("passes", ""), "val loss": a.get("loss")}
            r.update({f"tier {t}": (a.get("per_tier") or {}).get(t, {}).get("loss") for t in tiers})
            r.update({f"source {s}": (a.get("per_source") or {}).get(s, {}).get("loss") for s in sources})
            return r
        rows = [row("(untrained)", ab.get("before") or {})] + [row(k, v) for k, v in ab["arms"].items()]
        out.append(f"<h3>proxy ablation</h3><p>{escape(ab.get('model', ''))}. {escape(ab.get('note', ''))}</p>"
                   + _table(rows))
        if ab.get("answers"):
            arows = [{"prompt": a.get("prompt", ""), "reference": a.get("reference", ""), "before": a.get("before", ""),
                      **{k: v for k, v in (a.get("answers") or {}).items()}} for a in ab["answers"]]
            out.append("<h3>answers before / after, per arm</h3>" + _table(arows))
    return "".join(out)


def render_html(s: dict[str, Any]) -> str:
    """The whole report page from a summary (pipeline.report.summary.summarize)."""
    t = s["totals"]
    cards = "".join(
        f'<div class="card">{escape(k)}<b>{v}</b></div>'
        for k, v in (("read", t["read"]), ("kept", t["kept"]), ("quarantined", t["quarantined"]), ("dropped", t["dropped"]))
    )
    body = [f"<h1>Data-quality report: {escape(s['name'])}</h1>",
            f'<p class="muted">{escape(s["run_dir"])} — generated {escape(s["generated_at"])}</p>',
            f'<div class="cards">{cards}</div>']
    if s.get("kept_means"):
        body.append(f'<p class="muted">{escape(s["kept_means"])}</p>')
    body.append(_section("Where records went: source × reason", matrix_html(s.get("matrix") or {})))
    funnel_cols = ["source", "tier", *FUNNEL_STEPS]
    body.append(_section("Funnel per source", stacked_funnel(s["funnel"]) + _table(s["funnel"], funnel_cols)))
    body.append(_section("Funnel per tier", _table(s["funnel_by_tier"], ["tier", *FUNNEL_STEPS])))
    body.append(_section("Reasons", _reasons_html(s["reasons"])))
    body.append(_section("Quality filters", quality_html(s.get("quality") or {})))
    if s.get("files_not_read") or s.get("ingest_warnings"):
        warned = "".join(f"<li>{escape(w)}</li>" for w in s.get("ingest_warnings") or [])
        files = s.get("files_not_read") or []
        more = f'<p class="muted">and {len(files) - 200} more (report.json)</p>' if len(files) > 200 else ""
        body.append(_section("Files not read" if files else "Ingest warnings",
                             (_table(files[:200], ["source", "path", "reason"]) + more if files else "")
                             + (f"<h3>ingest warnings</h3><ul>{warned}</ul>" if warned else "")))
    d = s["duplicates"]
    dup_rows = [{k: c[k] for k in ("kept_origin", "dropped", "reasons", "sources", "dropped_origins", "text")} for c in d["largest"]]
    body.append(_section("Duplicate clusters",
                         f"<p>{d['duplicates']} duplicate(s) in {d['clusters']} cluster(s); largest:</p>" + _table(dup_rows)))
    body.append(_section("Benchmark contamination hits", contamination_html(s)))
    body.append(_section("PII redactions", pii_html(s)))
    cur = s.get("curated") or {}
    if cur.get("languages"):
        body.append(_section("Language mix (kept)", bar_chart(dict(list(cur["languages"].items())[:15]), color="#00838f")))
    else:
        after = s.get("languages_after_quality") or s.get("languages_in") or {}
        body.append(_section("Language mix (after quality; nothing kept yet)",
                             bar_chart(dict(list(after.items())[:15]), color="#00838f")))
    if cur:
        body.append(_section(
            "Lengths (kept conversations)",
            histogram_svg(cur["chars"], "characters per conversation") + histogram_svg(cur["turns"], "turns per conversation"),
        ))
    sh = s.get("shards") or {}
    if sh:
        rows = [{"split": k, **{m: v[m] for m in ("rows", "segments", "tokens", "supervised_tokens", "supervised_share",
                                                  "packing_efficiency")}} for k, v in sh.items()]
        hists = "".join(histogram_svg(v["tokens_per_conversation"], f"tokens per conversation ({k})") for k, v in sh.items())
        trunc = _json_block(s["truncation"], "truncation losses") if s.get("truncation") is not None else ""
        body.append(_section("Tokens, supervision and packing", _table(rows) + hists + trunc))
    if s.get("mix"):
        body.append(_section("Mixture before / after", _mix_html(s["mix"])))
    if s.get("selection"):
        body.append(_section("Selection", _selection_html(s["selection"])))
    tr = s.get("training") or {}
    if tr:
        curves = line_chart(tr["curves"], points=set(tr.get("points") or [])) if tr.get("curves") else ""
        ev = _json_block(tr["eval"], "evaluation (train/eval.json)") if tr.get("eval") is not None else ""
        model = f"<p>model: <code>{escape(tr['model'])}</code></p>" if tr.get("model") else ""
        body.append(_section("Training", curves + ev + model))
    if s.get("before_after"):
        body.append(_section("Model answers before / after training", _before_after_html(s["before_after"])))
    if s.get("manifest"):
        body.append(_section("Manifest", _json_block(s["manifest"], "manifest.json")))
    body.append(_section("Stage statistics", "".join(_json_block(v, k) for k, v in s["stage_stats"].items())))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>sftforge report: {escape(s['name'])}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
