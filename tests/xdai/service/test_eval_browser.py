"""The rating page in a real headless Chromium (Debian's, driven by Playwright), on a study built from a real
`xdai eval kdconv` report (KdConv travel dev, SmolLM2): a key is asked for, one rater answers every pair and
passes the checks, another skips one, fails a check and is let go; the report counts what the first clicked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.fakes import ScriptedResponder
from xdai.config import REPO_ROOT
from xdai.eval.pairs import HUMAN, Study

from .conftest import Running, start_server
from .test_browser import CHROMIUM_ARGS

KDCONV_DEV = REPO_ROOT.parent / "shared" / "data" / "kdconv" / "travel" / "dev.json"


@pytest.fixture(scope="module")
def kdconv_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not KDCONV_DEV.is_file():
        pytest.skip(f"KdConv travel dev split not found at {KDCONV_DEV} (../shared is absent)")
    from xdai.commands.eval import eval_group

    out = tmp_path_factory.mktemp("kdconv") / "report.html"
    result = CliRunner().invoke(eval_group, ["kdconv", str(KDCONV_DEV), "--model", "smollm2", "--limit", "3",
                                             "--no-knowledge", "--max-tokens", "16", "--report", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out.with_suffix(".json")


def cli(*args: str) -> str:
    from xdai.commands.eval import eval_group

    result = CliRunner().invoke(eval_group, ["pairs", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def rate(page: Any, study: Study, choose: Any, *, stop_after_check: bool = False) -> list[str]:
    """Answer the page's tasks with `choose(task) -> side | None (skip)` until the page says done."""
    seen: list[str] = []
    while True:
        await page.wait_for_selector("#task:not([hidden]) #submit, #done:not([hidden])", timeout=30_000)
        if await page.locator("#done").is_visible():
            return seen
        tid = await page.get_attribute("#task", "data-task")
        assert tid not in seen  # one task at a time, each once
        seen.append(tid)
        task = study.task(tid)
        shown = [await page.inner_text("#left .text"), await page.inner_text("#right .text")]
        assert shown == [task.left.text, task.right.text]
        assert await page.locator("#context li").count() == len(task.context)
        progress = await page.inner_text("#progress")
        assert progress == f"{len(seen) - 1} / {len(study.tasks)} done"
        side = choose(task)
        if side is None:
            await page.click("#skip")
        else:
            assert await page.locator("#submit").is_disabled()  # nothing chosen yet
            await page.check(f'input[name="q-human"][value="{side}"]')
            assert await page.locator('input[name="q-human"][value="tie"]').count() == 0  # no ties: Turing
            await page.click("#submit")
        await page.wait_for_function(f"document.querySelector('#task').dataset.task !== {json.dumps(tid)} || "
                                     "!document.querySelector('#done').hidden", timeout=30_000)


@pytest.mark.slow
async def test_a_study_from_a_kdconv_report_is_rated_in_chromium(kdconv_report: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (make system-deps installs it)")
    from playwright.async_api import async_playwright

    eval_dir, db = tmp_path / "studies", tmp_path / "sessions.sqlite3"
    monkeypatch.setenv("XDAI_SERVER_EVAL_DIR", str(eval_dir))
    monkeypatch.setenv("XDAI_SERVER_SQLITE_PATH", str(db))
    monkeypatch.setenv("XDAI_SERVER_SESSION_STORE", "sqlite")
    assert "study kd: 3 pairs + 2 checks" in cli("build", "--kdconv", str(kdconv_report), "--checks", "2",
                                                 "--id", "kd", "--seed", "5")
    study = Study.load(eval_dir / "kd.json")
    r: Running = await start_server(tmp_path, {"smol": ScriptedResponder()}, {}, eval_dir=str(eval_dir),
                                    api_keys=["rating-key"])
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            errors: list[str] = []

            # rater one: asked for the key first; then picks the person's reply on even pairs, the bot's on odd
            one = await browser.new_page()
            one.on("pageerror", lambda exc: errors.append(str(exc)))
            await one.goto(r.http + "/eval/kd")
            await one.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "API key" in await one.inner_text("#error")
            await one.fill("#api-key", "rating-key")
            await one.locator("#api-key").blur()  # a change: the page reconnects with the key
            await one.wait_for_selector("#status[data-state=open]", timeout=30_000)
            assert await one.inner_text("#title") == study.title
            picks: dict[str, str] = {}

            def honest(task: Any) -> str:
                if task.check:
                    return task.expected()
                real = [t.id for t in study.tasks if not t.check]
                want = HUMAN if real.index(task.id) % 2 == 0 else "full"
                side = "left" if task.left.source == want else "right"
                picks[task.id] = want
                return side

            seen = await rate(one, study, honest)
            assert sorted(seen) == sorted(t.id for t in study.tasks)
            assert await one.get_attribute("#done", "data-reason") == "finished"
            assert await one.inner_text("#progress") == f"{len(study.tasks)} / {len(study.tasks)} done"

            # rater two (a browser profile of their own): skips the first pair, fails the first check they meet
            context = await browser.new_context()
            two = await context.new_page()
            two.on("pageerror", lambda exc: errors.append(str(exc)))
            await two.add_init_script("localStorage.setItem('xdai:key', 'rating-key')")
            await two.goto(r.http + "/eval/kd")
            first: list[str] = []

            def careless(task: Any) -> str | None:
                first.append(task.id)
                if len(first) == 1 and not task.check:
                    return None
                if task.check:
                    return "right" if task.expected() == "left" else "left"
                return "left"

            seen_two = await rate(two, study, careless)
            assert study.task(seen_two[-1]).check and len(seen_two) < len(study.tasks) + 1
            assert await two.get_attribute("#done", "data-reason") == "dropped"
            assert "attention checks" in await two.inner_text("#done")
            await two.reload()  # coming back changes nothing
            await two.wait_for_selector("#done[data-reason=dropped]:not([hidden])", timeout=30_000)
            rater_one = await one.evaluate("window.evalState.rater")
            assert rater_one != await two.evaluate("window.evalState.rater")
            assert errors == []
            await browser.close()
    finally:
        await r.server.shutdown()

    rep = json.loads(cli("report", "kd", "--json", "--html", str(tmp_path / "kd.html")))
    assert len(rep["raters"]) == 1 and len(rep["dropped_raters"]) == 1
    people = rep["questions"]["human"]["people"]
    full_picked = sum(1 for who in picks.values() if who == "full")  # picked as the person's: the bot "wins"
    assert people["wins"] == [full_picked, len(picks) - full_picked] and people["skips"] == 0
    assert rep["questions"]["human"]["taken_for_human"]["share"] == pytest.approx(full_picked / len(picks))
    assert "<svg" in (tmp_path / "kd.html").read_text(encoding="utf-8")
