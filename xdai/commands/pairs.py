"""`xdai eval pairs`: pairwise human evaluation. `build` makes a study (from an `xdai eval kdconv` report or two
bots answering scripted conversations), `xdai serve` lets raters answer it at /eval/<id>, `judge` has a model
answer it too (both orders), `report` gives win rates with intervals, agreement and the Turing share."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from xdai.config import Config
    from xdai.eval.pairs import Study
    from xdai.service.judgments import JudgmentStore

QUESTION_IDS = ("human", "engaging", "informative", "faithful")


@click.group("pairs")
def pairs_group() -> None:
    """Pairwise studies: build, rate at /eval (xdai serve), judge with a model, report."""


def _config() -> Config:
    from xdai.config import ConfigError, load_config

    try:
        return load_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:100] or "study"


@pairs_group.command("build")
@click.option("--kdconv", "kdconv_report", type=click.Path(exists=True, dir_okay=False),
              help="The JSON of `xdai eval kdconv` (written beside its HTML report).")
@click.option("--system", default="full", show_default=True, help="The report's configuration to evaluate.")
@click.option("--against", default="human", show_default=True,
              help="'human' (the gold reply of the same turn: the Turing question) or another configuration.")
@click.option("--conversations", type=click.Path(exists=True, dir_okay=False),
              help="JSONL of scripted conversations (e.g. benchmarks/data/seed_dialogues.jsonl) that two bots answer.")
@click.option("--bot", "bots", multiple=True, help="With --conversations: the two bots (from paths.bots_dir).")
@click.option("--question", "-q", "questions", multiple=True, type=click.Choice(QUESTION_IDS),
              help="What raters are asked (repeatable; default: 'human' against people, else engaging+informative).")
@click.option("--scale", is_flag=True, help="Also ask a 1-5 rating of each reply.")
@click.option("--hide-knowledge", is_flag=True, help="Do not show raters the injected knowledge.")
@click.option("--checks", type=int, default=3, show_default=True, help="Known-answer checks mixed in.")
@click.option("--limit", type=int, default=None, help="At most N pairs (turns).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the sides, the checks, the history coin.")
@click.option("--id", "study_id", default=None, help="Study id (its link /eval/<id>); default from the sources.")
@click.option("--title", default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the study (default: server.eval_dir/<id>.json, where /eval finds it).")
def build(kdconv_report: str | None, system: str, against: str, conversations: str | None, bots: tuple[str, ...],
          questions: tuple[str, ...], scale: bool, hide_knowledge: bool, checks: int, limit: int | None, seed: int,
          study_id: str | None, title: str | None, out: str | None) -> None:
    """Build a pairwise study: each task a context, its knowledge and two replies with randomised sides."""
    from dataclasses import replace

    from xdai.eval.pairs import (
        HUMAN,
        QUESTIONS,
        Study,
        StudyError,
        study_file,
        tasks_from_conversations,
        tasks_from_kdconv,
    )

    if bool(kdconv_report) == bool(conversations):
        raise click.UsageError("give one source: --kdconv REPORT.json or --conversations FILE.jsonl")
    cfg = _config()
    try:
        if kdconv_report:
            try:
                data = json.loads(Path(kdconv_report).read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{kdconv_report}: not JSON ({exc.msg}); give the .json written beside "
                                           "the HTML report of `xdai eval kdconv`") from None
            other = None if against == HUMAN else against
            tasks, systems = tasks_from_kdconv(data, config=system, other=other, seed=seed, checks=checks,
                                               limit=limit)
            meta: dict[str, Any] = {"source": str(kdconv_report), "kdconv": data.get("meta", {})}
        else:
            if len(bots) != 2:
                raise click.UsageError("--conversations needs exactly two --bot NAME")
            rows = _answered(cfg, conversations or "", bots, seed, limit)
            tasks = tasks_from_conversations(rows, bots[0], bots[1], seed=seed, checks=checks)
            systems = (bots[0], bots[1])
            meta = {"source": str(conversations), "bots": list(bots)}
        ids = questions or (("human",) if HUMAN in systems else ("engaging", "informative"))
        if "human" in ids and HUMAN not in systems:
            raise click.UsageError("the 'human' question (which reply a person wrote) needs --against human")
        asked = [replace(QUESTIONS[q], scale=scale) for q in ids]
        study_id = study_id or _slug(f"{systems[0]}-vs-{systems[1]}")
        path = Path(out) if out else study_file(cfg.server.eval_dir, study_id)
        study = Study(study_id, title or f"{systems[0]} or {systems[1]}?", systems, asked, tasks,
                      show_knowledge=not hide_knowledge, meta={**meta, "seed": seed})
    except StudyError as exc:
        raise click.ClickException(str(exc)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    study.save(path)
    real = sum(1 for t in tasks if not t.check)
    click.echo(f"study {study.id}: {real} pairs + {len(tasks) - real} checks, {systems[0]} vs {systems[1]}, "
               f"questions {', '.join(ids)}; written {path}; raters open /eval/{study.id} on `xdai serve` "
               f"(server.eval_dir {cfg.server.eval_dir})")


def _answered(cfg: Config, path: str, bots: tuple[str, ...], seed: int, limit: int | None) -> list[dict[str, Any]]:
    """The script's rows with both bots' replies: taken from the file when it has them, else generated."""
    from tqdm.auto import tqdm

    from bots.assemble import build_bot
    from bots.registry import BotError, load_bots
    from xdai.eval.scripted import answer_scripts, read_scripts, script_turns

    rows = read_scripts(path)
    if all(set(bots) <= set(r.get("replies") or {}) for r in rows):
        return rows[:limit] if limit else rows  # answered before: nothing to run
    try:
        declared = load_bots(cfg.paths.bots_dir)
        missing = [b for b in bots if b not in declared]
        if missing:
            raise click.ClickException(f"no bot named {', '.join(map(repr, missing))} in {cfg.paths.bots_dir} "
                                       f"(declared: {', '.join(sorted(declared)) or 'none'})")
        systems = {b: build_bot(declared[b], cfg.paths.stores_dir, personas_dir=cfg.paths.personas_dir, config=cfg)
                   for b in bots}
    except (BotError, ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    total = sum(len(script_turns(r, f"{path}: conversation {r['id']}")) for r in rows)
    total = min(total, limit) if limit else total
    answered: list[dict[str, Any]] = []
    with tqdm(total=total, desc="conversations", unit="turn", file=sys.stderr) as bar:
        for row in answer_scripts(rows, systems, seed=seed, progress=bar.update):
            answered.append(row)
            if limit and len(answered) >= limit:
                break
    return answered


def _load_study(cfg: Config, study: str) -> Study:
    from xdai.eval.pairs import Study, StudyError, study_file

    try:
        path = Path(study) if study.endswith(".json") or Path(study).is_file() else study_file(cfg.server.eval_dir,
                                                                                              study)
        return Study.load(path)
    except StudyError as exc:
        raise click.ClickException(str(exc)) from None


def _store(cfg: Config, where: str | None) -> JudgmentStore:
    from xdai.service.judgments import open_judgments, open_judgments_at
    from xdai.service.sessions import StorageError

    s = cfg.server
    try:
        if where:
            return open_judgments_at(where)
        return open_judgments(s.session_store, sqlite_path=s.sqlite_path, redis_url=s.redis_url)
    except (StorageError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


STUDY_ARG = click.argument("study")
STORE_OPT = click.option("--store", "where", default=None,
                         help="Judgments' store: a SQLite file or redis://... (default: the server's session store).")


@pairs_group.command("report")
@STUDY_ARG
@STORE_OPT
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None, help="Also write an HTML report.")
def report_cmd(study: str, where: str | None, as_json: bool, html_path: str | None) -> None:
    """Win rates (95% Wilson interval, binomial test), ties and skips, agreement, the Turing share; a judge apart.

    STUDY is a study file or an id under server.eval_dir."""
    from xdai.eval.pairs import report
    from xdai.eval.pairs_html import render_pairs_html

    cfg = _config()
    s = _load_study(cfg, study)
    store = _store(cfg, where)
    try:
        rep = report(s, store.judgments(s.id))
    finally:
        store.close()
    if html_path:
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        Path(html_path).write_text(render_pairs_html(rep), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(rep, ensure_ascii=False, indent=1))
        return
    a, b = rep["systems"]
    click.echo(f"{rep['title']} ({rep['study']}): {a} vs {b}, {rep['tasks']} pairs; raters {len(rep['raters'])}, "
               f"dropped by checks {len(rep['dropped_raters'])}")
    for qid, entry in rep["questions"].items():
        for who in ("people", "judge"):
            if who in entry:
                w = entry[who]
                rate = (f"win rate {w['rate']:.1%} [{w['interval'][0]:.1%}, {w['interval'][1]:.1%}]  "
                        f"p={w['p_value']:.3g}" if sum(w["wins"]) else "no decided answer yet")
                click.echo(f"  {qid:<12} {who:<6} {a} {w['wins'][0]} : {w['wins'][1]} {b}  ties {w['ties']} "
                           f"skips {w['skips']}  {rate}")
        if "taken_for_human" in entry:
            t = entry["taken_for_human"]
            click.echo(f"  {'':<12} taken for human {t['share']:.1%} of {t['n']} (seed: {t['seed_bar']:.1%})")
        kappa = entry["agreement"]["fleiss_kappa"]
        if kappa is not None:
            click.echo(f"  {'':<12} Fleiss' kappa {kappa:.3f}")
        if entry.get("judge_agreement_with_people") is not None:
            click.echo(f"  {'':<12} judge agrees with people's majority {entry['judge_agreement_with_people']:.0%}")
    if html_path:
        click.echo(f"report {html_path}")


@pairs_group.command("judge")
@STUDY_ARG
@STORE_OPT
@click.option("--backend", "-b", default="llama_cpp", show_default=True)
@click.option("--model", "-m", default="default", show_default=True)
@click.option("--method", type=click.Choice(["generate", "score"]), default="generate", show_default=True,
              help="generate: the model answers A or B; score: the likelier of ' A' and ' B' (base models).")
def judge_cmd(study: str, where: str | None, backend: str, model: str, method: str) -> None:
    """Have a model answer the study's questions, each pair in both orders (a win only when both agree; else a
    tie). Its answers are stored apart from people's; a rerun continues where the last one stopped."""
    from tqdm.auto import tqdm

    from xdai.backends import get_backend
    from xdai.eval.judge import JudgeSettings, PairJudge

    cfg = _config()
    s = _load_study(cfg, study)
    try:
        model_backend = get_backend(backend, model, **cfg.backend_options(backend))
        judge = PairJudge(model_backend, f"{backend}:{model}", JudgeSettings(method=method))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    store = _store(cfg, where)
    try:
        done = {(j.task, j.question) for j in store.answered(s.id, judge.rater, judge=True)}
        todo = len(s.tasks) * len(s.questions) - len(done)
        wins: Counter[str] = Counter()
        with tqdm(total=todo, desc="judge", unit="pair", file=sys.stderr) as bar:
            for j in judge.run(s, done=done, progress=bar.update):
                store.record([j])
                task = s.task(j.task)
                if not task.check:
                    wins[task.source_of(j.answer) or "tie"] += 1
    finally:
        store.close()
    t, (a, b) = judge.tally, s.systems
    click.echo(f"judge {judge.rater}: {sum(t.verdicts.values())} answers ({len(done)} stored before): {a} {wins[a]} : "
               f"{wins[b]} {b}, ties {wins['tie']} (orders disagreed {t.disagreed}, no answer {t.unparsed}); checks "
               f"passed {t.checks_passed}/{t.checks}; see `xdai eval pairs report {s.id}`")
