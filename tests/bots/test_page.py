"""The interviewer in the chat page, in Debian's Chromium driven by Playwright: the Q&A countdown is shown, a
suggested-question chip sends its question, and the end button ends the session (summary shown, input closed)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bots.registry import BotSpec

from .test_served import start

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-component-update"]


@pytest.mark.slow
async def test_interviewer_page_timer_chips_and_end_button(tmp_path: Path, served: Callable[..., Any],
                                                           specs: dict[str, BotSpec]) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (make system-deps installs it)")
    from playwright.async_api import async_playwright

    bot = served("interviewer")
    bot.flow.config = {**bot.flow.config, "questions": bot.flow.config["questions"][:1], "follow_ups": False}
    server = await start(tmp_path, {"interviewer": bot}, specs)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{server.port}/?bot=interviewer")
            await page.wait_for_selector("#status[data-state=open]", timeout=30_000)
            await page.wait_for_selector("#phase:has-text('自我介绍')", timeout=30_000)
            end_button = page.locator("#actions button", has_text="结束面试")
            await end_button.wait_for(timeout=10_000)

            async def say(text: str, expect: str) -> None:
                await page.fill("#input", text)
                await page.press("#input", "Enter")
                await page.wait_for_selector(f".msg.bot:not(.streaming) >> text={expect}", timeout=120_000)

            await say("我叫王磊，三年 Go 后端开发经验。", "第1个问题")
            await say("我做过订单系统，用 Redis 做缓存。", "比如你可以问我以下问题")
            timer = page.locator("#timer")
            await timer.wait_for(state="visible", timeout=10_000)
            assert (await timer.inner_text()).startswith("答疑环节 剩余时间 0")
            assert await page.locator("#chips .intro").inner_text() == "比如你可以问我以下问题..."

            chip = page.locator("#chips button.chip", has_text="公司的上班时间是怎样的？")
            await chip.click()
            await page.wait_for_selector(".msg.user >> text=公司的上班时间是怎样的？", timeout=10_000)
            await page.wait_for_function("document.querySelectorAll('.msg.bot[data-id^=\"r-\"]:not(.streaming)')"
                                         ".length >= 3 && !state.inFlight", timeout=120_000)
            assert "公司的上班时间是怎样的？" not in await page.locator("#chips").inner_text()

            await end_button.click()
            await page.wait_for_selector(".msg.user >> text=结束面试", timeout=10_000)
            summary = page.locator(".msg.summary .summary-text")
            await summary.wait_for(timeout=120_000)
            assert "回答了题库1/1个问题" in await summary.inner_text()
            assert "答疑环节提问1个" in await summary.inner_text()
            await page.wait_for_function("document.getElementById('input').disabled", timeout=10_000)
            assert await page.locator("#actions button").count() == 0
            assert errors == []
            await browser.close()
    finally:
        await server.shutdown()
