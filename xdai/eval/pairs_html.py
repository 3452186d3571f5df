"""The HTML report of a pairwise study: one chart per question, win rates with their 95% intervals as inline SVG
(no script, no external asset), people's and the judge's side by side, and the Turing share against the seed's bar."""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, LEFT, ROW, RIGHT = 600, 150, 34, 110  # RIGHT: room for the numbers


def _bar(y: int, label: str, rate: float, low: float, high: float, n: int, colour: str) -> str:
    span = WIDTH - LEFT - RIGHT
    x = lambda v: LEFT + v * span  # noqa: E731
    head = f'<text x="{LEFT - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
    if not n:
        return head + f'<text x="{LEFT + span + 10}" y="{y + 15}">no decided answer</text>'
    return (head + f'<rect x="{LEFT}" y="{y + 4}" width="{rate * span:.1f}" height="16" fill="{colour}"/>'
            f'<line class="ci" x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{y + 12}" y2="{y + 12}" stroke="#222"/>'
            f'<line x1="{x(low):.1f}" x2="{x(low):.1f}" y1="{y + 7}" y2="{y + 17}" stroke="#222"/>'
            f'<line x1="{x(high):.1f}" x2="{x(high):.1f}" y1="{y + 7}" y2="{y + 17}" stroke="#222"/>'
            f'<text x="{LEFT + span + 10}" y="{y + 15}">{rate:.0%} (n={n})</text>')


def win_chart(entry: dict[str, Any], systems: list[str]) -> str:
    """Bars of systems[0]'s win rate among decided answers (people, then judge), a whisker for the interval and
    a dashed line at 50% (no preference)."""
    rows = [("people", entry["people"], "#4a7bd0")]
    if "judge" in entry:
        rows.append(("judge", entry["judge"], "#d08a4a"))
    if "taken_for_human" in entry:
        t = entry["taken_for_human"]
        rows.append(("taken for human", {"rate": t["share"], "interval": t["interval"], "wins": [t["n"], 0]},
                     "#5aa469"))
    height = ROW * len(rows) + 30
    span = WIDTH - LEFT - RIGHT
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img" '
             f'aria-label="win rate of {escape(systems[0])}">']
    for i, (label, w, colour) in enumerate(rows):
        parts.append(_bar(8 + i * ROW, label, w["rate"], w["interval"][0], w["interval"][1], sum(w["wins"]), colour))
    mid = LEFT + 0.5 * span
    parts.append(f'<line x1="{mid}" x2="{mid}" y1="4" y2="{height - 22}" stroke="#888" stroke-dasharray="4 3"/>')
    if "taken_for_human" in entry:
        bar = LEFT + entry["taken_for_human"]["seed_bar"] * span
        parts.append(f'<line x1="{bar:.1f}" x2="{bar:.1f}" y1="{8 + (len(rows) - 1) * ROW}" '
                     f'y2="{8 + len(rows) * ROW - 8}" stroke="#c33" stroke-width="2"/>')
    parts.append(f'<text x="{LEFT}" y="{height - 6}" font-size="11">0%</text>'
                 f'<text x="{mid}" y="{height - 6}" font-size="11" text-anchor="middle">50%</text>'
                 f'<text x="{LEFT + span}" y="{height - 6}" font-size="11" text-anchor="end">100%</text></svg>')
    return "".join(parts)


def _row(who: str, w: dict[str, Any]) -> str:
    return (f"<tr><td>{who}</td><td>{w['wins'][0]}</td><td>{w['wins'][1]}</td><td>{w['ties']}</td>"
            f"<td>{w['skips']}</td><td>{w['rate']:.1%} [{w['interval'][0]:.1%}, {w['interval'][1]:.1%}]</td>"
            f"<td>{w['p_value']:.3g}</td></tr>")


def render_pairs_html(rep: dict[str, Any]) -> str:
    a, b = (escape(s) for s in rep["systems"])
    body = [f"<h1>{escape(rep['title'])}</h1>",
            f"<p>Study <code>{escape(rep['study'])}</code>: <b>{a}</b> against <b>{b}</b>, {rep['tasks']} pairs; "
            f"raters kept: {len(rep['raters'])}, dropped by the checks: {len(rep['dropped_raters'])}.</p>"]
    for qid, entry in rep["questions"].items():
        body.append(f"<section><h2>{escape(entry['text'])} <small>({escape(qid)})</small></h2>")
        body.append(f"<p>Win rate of <b>{a}</b> among decided answers, with the 95% Wilson interval; the dashed line "
                    "is 50% (no preference).</p>")
        body.append(win_chart(entry, rep["systems"]))
        body.append(f"<table><tr><th></th><th>{a} wins</th><th>{b} wins</th><th>ties</th><th>skips</th>"
                    "<th>win rate</th><th>p (binomial)</th></tr>")
        body.append(_row("people", entry["people"]))
        if "judge" in entry:
            body.append(_row("judge", entry["judge"]))
        body.append("</table>")
        agree = entry["agreement"]
        fleiss = "n/a" if agree["fleiss_kappa"] is None else f"{agree['fleiss_kappa'] + 0.0:.3f}"
        body.append(f"<p>Fleiss' kappa: {fleiss}; Cohen's kappa per pair of raters: "
                    + (", ".join(f"{escape(k)} {v:.3f}" for k, v in agree["cohen_kappa"].items()) or "n/a") + "</p>")
        if "taken_for_human" in entry:
            t = entry["taken_for_human"]
            body.append(f"<p>The bot's reply was taken for the person's <b>{t['share']:.1%}</b> of {t['n']} decided "
                        f"times (95% interval {t['interval'][0]:.1%}–{t['interval'][1]:.1%}); the red mark is the "
                        f"seed's {t['seed_bar']:.1%} (inverse-prompting poems against real poets).</p>")
        if entry.get("judge_agreement_with_people") is not None:
            body.append(f"<p>The judge agrees with the people's majority on "
                        f"{entry['judge_agreement_with_people']:.0%} of the pairs both answered.</p>")
        body.append("</section>")
    style = ("body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
             "svg text{font-size:12px;font-family:system-ui,sans-serif}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(rep["title"])}</title>'
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
