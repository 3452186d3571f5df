"""`xdai eval`: dialogue-quality evaluation. `xdai eval kdconv` replays KdConv with ablations side by side."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from xdai.commands.pairs import pairs_group


@click.group("eval")
def eval_group() -> None:
    """Evaluate dialogue quality (KdConv replay, ablations)."""


eval_group.add_command(pairs_group)  # xdai eval pairs build|report|judge


@eval_group.command("kdconv")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--knowledge", "-k", multiple=True, help="Knowledge store path or name (repeatable).")
@click.option("--no-knowledge", is_flag=True, help="Run the no-knowledge ablation beside the full system.")
@click.option("--no-selection", is_flag=True, help="Run the no-history-selection ablation (most recent exchanges).")
@click.option("--limit", type=int, default=None, help="Generate at most N bot turns (per configuration).")
@click.option("--persona", "-p", default="xiaodai", show_default=True, help="Persona name or YAML path.")
@click.option("--backend", "-b", default="llama_cpp", show_default=True)
@click.option("--model", "-m", default="default", show_default=True)
@click.option("--max-tokens", type=int, default=64, show_default=True, help="Reply length cap.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (same for every turn).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default="kdconv_report.html",
              show_default=True, help="Where to write the HTML report (a .json with every reply goes beside it).")
def kdconv(path: str, knowledge: tuple[str, ...], no_knowledge: bool, no_selection: bool, limit: int | None,
           persona: str, backend: str, model: str, max_tokens: int, seed: int, report_path: str) -> None:
    """Replay KdConv dialogues at PATH, generate every bot turn with gold knowledge, and score the replies.

    The full system always runs. With neither --no-knowledge nor --no-selection, both ablations run beside it;
    with one or both flags, only the named ablations do.
    """
    from tqdm.auto import tqdm

    from xdai.config import ConfigError, load_config
    from xdai.eval.kdconv import KdConvError, load_turns, replay, to_json
    from xdai.eval.report import metrics_table, render_html
    from xdai.turn import Agent

    configs = ["full"]
    if no_knowledge or not (no_knowledge or no_selection):
        configs.append("no-knowledge")
    if no_selection or not (no_knowledge or no_selection):
        configs.append("no-selection")
    try:
        turns = load_turns(path, limit)
    except KdConvError as exc:
        raise click.ClickException(str(exc)) from None
    if not turns:
        raise click.ClickException(f"{path}: no bot turn with gold 'attrs' to generate")
    try:
        cfg = load_config()
        agent = Agent.from_names(persona, knowledge=list(knowledge), backend=backend, model=model,
                                 personas_dir=cfg.paths.personas_dir, stores_dir=cfg.paths.stores_dir,
                                 knowledge_settings=cfg.knowledge_settings(), **cfg.backend_options(backend))
        agent.persona.override_generation({"seed": seed, "max_tokens": max_tokens}, "xdai eval kdconv")
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    started = time.perf_counter()
    with tqdm(total=len(turns) * len(configs), desc="kdconv", unit="turn", file=sys.stderr) as bar:
        results = replay(agent, turns, configs, progress=lambda name: (bar.set_postfix_str(name), bar.update()))
    elapsed = time.perf_counter() - started
    meta = {
        "data": str(path),
        "knowledge": ", ".join(knowledge) or "(persona's inline knowledge only)",
        "persona": agent.persona.name,
        "backend": f"{backend}:{model}",
        "turns": len(turns),
        "configurations": ", ".join(configs),
        "seed": seed,
        "max_tokens": max_tokens,
        "seconds": round(elapsed, 1),
    }
    report = to_json(turns, results, meta)
    out = Path(report_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    click.echo(metrics_table(report["metrics"], configs))
    full, bare = report["metrics"]["full"]["knowledge_f1"], report["metrics"].get("no-knowledge", {}).get("knowledge_f1")
    ratio = f", knowledge-F1 full/no-knowledge {full / bare:.2f}x" if bare else ""
    click.echo(f"kdconv: {len(turns)} turns x {len(configs)} configurations in {elapsed:.0f}s{ratio}; report {out}")
