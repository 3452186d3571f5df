"""The chat page in a real headless Chromium (Debian's, driven by Playwright): pick the bot, send a message, see
the reply stream in and its grounding sources in the "why" panel; reconnect and resume after the socket drops."""

from __future__ import annotations

import shutil

import pytest

from .conftest import Running

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-component-update"]


@pytest.mark.slow
async def test_chat_page_streams_a_reply_with_sources(running: Running) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (make system-deps installs it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(running.http + "/")
        await page.wait_for_selector("#status[data-state=open]", timeout=30_000)
        assert await page.locator("#bot option").all_inner_texts() != []
        assert await page.locator("#bot").input_value() == "smol"
        greeting = page.locator(".msg.bot.greeting .text")
        assert (await greeting.inner_text()).strip()

        await page.fill("#input", "谷爱凌是谁？")
        await page.press("#input", "Enter")
        await page.wait_for_selector(".msg.user >> text=谷爱凌是谁？")
        reply = page.locator(".msg.bot[data-id^='r-']").first
        await reply.wait_for(timeout=60_000)
        # streaming: the bubble carries the cursor class until response.end removes it
        await page.wait_for_selector(".msg.bot[data-id^='r-']:not(.streaming)", timeout=180_000)
        text = (await reply.locator(".text").inner_text()).strip()
        assert text
        why = reply.locator("details.why")
        await why.locator("summary").click()
        sources = await why.locator("li.source").all_inner_texts()
        assert any("谷爱凌" in s for s in sources), sources
        assert await page.locator(".msg.user .meta").inner_text() == "✓"

        # drop every socket server-side: the page reconnects and resumes the same session
        session_before = await page.evaluate("state.sessionId")
        for conn in list(running.server.connections):
            await conn.ws.close(1012, "restarting")
        await page.wait_for_selector("#status:has-text('resumed')", timeout=30_000)
        assert await page.evaluate("state.sessionId") == session_before
        assert await page.locator(".msg.bot[data-id^='r-']").count() == 1  # nothing duplicated by the resume
        assert errors == []
        await browser.close()
