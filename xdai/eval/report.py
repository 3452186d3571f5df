"""A self-contained HTML report: the metrics side by side, an inline SVG bar chart, and sample turns."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

METRICS = [  # key, label, scale to percent
    ("f1", "F1", 100.0),
    ("bleu", "BLEU", 1.0),
    ("distinct_1", "Distinct-1", 100.0),
    ("distinct_2", "Distinct-2", 100.0),
    ("knowledge_f1", "Knowledge-F1", 100.0),
]
# Faithfulness beside them (xdai.eval.faithfulness): claims nothing in the reply's prompt supports. Tables only:
# unsupported claims per reply is a count, not a percentage.
FAITHFULNESS = [  # key, label, scale
    ("unsupported_per_reply", "Unsupported/reply", 1.0),
    ("share_unfaithful", "Unfaithful %", 100.0),
]
COLOURS = ["#2f6db5", "#d9822b", "#3a9b5c", "#8e5bb5", "#c44e52"]


def _columns(metrics: dict[str, dict[str, float]]) -> list[tuple[str, str, float]]:
    """The table's columns: the quality metrics, then faithfulness where the report has it (older ones do not)."""
    return METRICS + [m for m in FAITHFULNESS if all(m[0] in v for v in metrics.values())]


def bar_chart(metrics: dict[str, dict[str, float]], width: int = 720, height: int = 300) -> str:
    """Grouped bars: one group per metric, one bar per configuration, values on a 0-100 scale."""
    configs = list(metrics)
    left, bottom, top = 40, 40, 20
    plot_h = height - bottom - top
    peak = max([metrics[c][k] * s for c in configs for k, _, s in METRICS] + [1.0])
    peak = min(100.0, peak * 1.15)
    group_w = (width - left - 10) / len(METRICS)
    bar_w = max(group_w * 0.8 / max(len(configs), 1), 4)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 24}" role="img" '
           f'aria-label="metrics by configuration" font-family="sans-serif" font-size="11">']
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#666">{peak * frac:.0f}</text>')
    for g, (key, label, scale) in enumerate(METRICS):
        x0 = left + g * group_w + group_w * 0.1
        for c, config in enumerate(configs):
            value = metrics[config][key] * scale
            h = plot_h * min(value / peak, 1.0)
            x = x0 + c * bar_w
            out.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                       f'fill="{COLOURS[c % len(COLOURS)]}"><title>{html.escape(config)} {label}: {value:.2f}</title></rect>'
                       f'<text x="{x + bar_w / 2 - 1:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{value:.1f}</text>')
        out.append(f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - bottom + 16}" text-anchor="middle">{label}</text>')
    for c, config in enumerate(configs):
        x = left + c * 140
        out.append(f'<rect x="{x}" y="{height + 6}" width="12" height="12" fill="{COLOURS[c % len(COLOURS)]}"/>'
                   f'<text x="{x + 16}" y="{height + 16}">{html.escape(config)}</text>')
    out.append("</svg>")
    return "".join(out)


def render_html(report: dict[str, Any], *, samples: int = 30) -> str:
    """The whole report as one HTML page with no external resources."""
    metrics: dict[str, dict[str, float]] = report["metrics"]
    meta = report["meta"]
    configs = list(metrics)
    e = html.escape
    columns = _columns(metrics)
    head = "".join(f"<th>{label}</th>" for _, label, _ in columns)
    rows = "".join(
        f"<tr><td>{e(c)}</td><td>{int(metrics[c]['turns'])}</td>"
        + "".join(f"<td>{metrics[c][k] * s:.2f}</td>" for k, _, s in columns)
        + "</tr>"
        for c in configs
    )
    turns = report["turns"][:samples]
    sample_rows = []
    for t in turns:
        replies = "".join(
            f"<div><b>{e(c)}</b> <span class=kf>kF1 {t['knowledge_f1'][c] * 100:.1f}</span>: {e(t['replies'][c])}"
            f"{_unsupported(t, c)}</div>"
            for c in configs
        )
        history = "".join(f"<div class=h>U: {e(h['user'])}<br>S: {e(h['bot'])}</div>" for h in t["history"][-2:])
        sample_rows.append(
            f"<tr><td>{t['dialogue']}:{t['message']}</td><td>{history}<div><b>U:</b> {e(t['utterance'])}</div></td>"
            f"<td>{e(t['gold'])}<div class=k>{e(' | '.join(t['knowledge']))[:300]}</div></td><td>{replies}</td></tr>"
        )
    meta_rows = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in meta.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>xdai eval: KdConv</title>
<style>
body{{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}}
th{{background:#f4f4f4}} .k{{color:#777;font-size:11px;margin-top:4px}} .h{{color:#666;font-size:12px}}
.kf{{color:#2f6db5;font-size:11px}} .u{{color:#c44e52;font-size:11px}}
</style></head><body>
<h1>KdConv replay: knowledge and history selection ablations</h1>
<table>{meta_rows}</table>
<h2>Metrics</h2>
<p>F1, Distinct and Knowledge-F1 in percent; BLEU is sacrebleu's corpus BLEU with the <code>zh</code> tokenizer.
Knowledge-F1 is the token overlap of the reply with the gold attribute values. Unsupported/reply counts the
numbers, dates, times, prices, counts and names in a reply that nothing in its prompt (injected knowledge, selected
history, persona, utterance) supports; Unfaithful % is the share of replies with any such claim or a contradiction
of the injected knowledge.</p>
<table><tr><th>configuration</th><th>turns</th>{head}</tr>{rows}</table>
{bar_chart(metrics)}
<h2>Sample turns (first {len(turns)})</h2>
<table><tr><th>turn</th><th>context</th><th>gold reply / gold knowledge</th><th>generated</th></tr>{''.join(sample_rows)}</table>
</body></html>
"""


def metrics_table(metrics: dict[str, dict[str, float]], configs: Sequence[str] | None = None) -> str:
    """The metrics side by side as plain text (the command's terminal output), faithfulness last."""
    configs = list(configs or metrics)
    columns = _columns({c: metrics[c] for c in configs})
    lines = [f"{'configuration':<14}{'turns':>6}" + "".join(f"{label:>18}" for _, label, _ in columns)]
    for c in configs:
        m = metrics[c]
        lines.append(f"{c:<14}{int(m['turns']):>6}" + "".join(f"{m[k] * s:>18.2f}" for k, _, s in columns))
    return "\n".join(lines)


def _unsupported(turn: dict[str, Any], config: str) -> str:
    verdict = (turn.get("faithfulness") or {}).get(config)
    if not verdict or not (verdict["unsupported"] or verdict["contradictions"]):
        return ""
    said = verdict["unsupported"] + [f"{x['claim']} (knowledge: {x['stated']})" for x in verdict["contradictions"]]
    return f"<div class=u>unsupported: {html.escape(' · '.join(said))}</div>"
