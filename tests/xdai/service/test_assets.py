"""A bot's pictures served to the page (xdai.service.assets): the icon and emotion images of its persona's Card V3
assets, stored in NAME.assets/ beside NAME.yaml, asked for by kind and name only; nothing outside that folder,
no links, no SVG, no bytes that are not the image type they claim, no paths in any answer; keys as /bots."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.fakes import ScriptedResponder
from xdai.persona import Asset, load_persona, placeholder_png
from xdai.responder import BotEvent
from xdai.service import assets as served
from xdai.service.assets import asset_index, asset_route, find_picture

from .conftest import start_scripted
from .test_browser import CHROMIUM_ARGS
from .test_security import ABSOLUTE, get, raw_http

ICON, HAPPY, ANGRY = placeholder_png("icon", 16), placeholder_png("happy", 16), placeholder_png("angry", 16)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def persona_with_assets(root: Path, extra: str = "") -> Path:
    """bot.yaml + bot.assets/ with an icon, emotions and every kind of thing that must not be served."""
    folder = root / "bot.assets" / "assets"
    for sub in ("icon/images", "emotion/images"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "icon/images/main.png").write_bytes(ICON)
    (folder / "emotion/images/happy.png").write_bytes(HAPPY)
    (folder / "emotion/images/angry.png").write_bytes(ANGRY)
    (folder / "emotion/images/calm.jpg").write_bytes(JPEG)
    (folder / "emotion/images/fake.png").write_bytes(JPEG)  # says png, is not
    (folder / "emotion/images/evil.svg").write_bytes(SVG)
    (root / "secret.png").write_bytes(ICON)
    os.symlink(root / "secret.png", folder / "emotion/images/linked.png")
    data = "data:image/png;base64," + base64.b64encode(HAPPY).decode()
    path = root / "bot.yaml"
    path.write_text(
        "name: 小呆\nfirst_mes: 嗨！\nconditions: {angry: 你怎么生气了, happy: 看你这么开心}\nassets:\n"
        "  - {type: icon, uri: 'embeded://assets/icon/images/main.png', name: main, ext: png}\n"
        "  - {type: emotion, uri: 'embeded://assets/emotion/images/happy.png', name: happy, ext: png}\n"
        "  - {type: emotion, uri: 'embeded://assets/emotion/images/angry.png', name: angry, ext: png}\n"
        "  - {type: emotion, uri: 'embeded://assets/emotion/images/calm.jpg', name: calm, ext: jpg}\n"
        "  - {type: emotion, uri: 'embeded://assets/emotion/images/fake.png', name: fake, ext: png}\n"
        "  - {type: emotion, uri: 'embeded://assets/emotion/images/evil.svg', name: evil, ext: svg}\n"
        "  - {type: emotion, uri: 'embeded://assets/emotion/images/linked.png', name: linked, ext: png}\n"
        "  - {type: emotion, uri: 'embeded://assets/emotion/images/missing.png', name: missing, ext: png}\n"
        "  - {type: emotion, uri: 'https://example.com/remote.png', name: remote, ext: png}\n"
        f"  - {{type: emotion, uri: '{data}', name: inline, ext: png}}\n" + extra,
        encoding="utf-8")
    return path


def test_what_is_listed_and_served(tmp_path: Path) -> None:
    p = load_persona(persona_with_assets(tmp_path))
    assert asset_index(p) == {"icon": True, "background": False, "emotions": ["happy", "angry", "calm", "inline"]}
    assert find_picture(p, "icon") == served.Picture(ICON, "image/png")
    assert find_picture(p, "icon", "main") == find_picture(p, "icon")
    assert find_picture(p, "emotion", "angry").data == ANGRY
    assert find_picture(p, "emotion", "calm").mime == "image/jpeg"
    assert find_picture(p, "emotion", "inline") == served.Picture(HAPPY, "image/png")  # a data: URI in the card
    for name in ("fake", "evil", "linked", "missing", "remote", "nobody"):
        assert find_picture(p, "emotion", name) is None, name
    # the persona file refuses a path out of its folder; one built in code is refused here too
    p.assets.append(Asset(type="emotion", uri="embeded://../secret.png", name="escape", ext="png"))
    assert find_picture(p, "emotion", "escape") is None and "escape" not in asset_index(p)["emotions"]
    assert find_picture(p, "emotion") is None and find_picture(p, "user_icon") is None
    assert find_picture(p, "background") is None


def test_an_asset_over_the_size_limit_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = load_persona(persona_with_assets(tmp_path))
    monkeypatch.setattr(served, "MAX_ASSET_BYTES", len(ICON) - 1)
    assert find_picture(p, "icon") is None and asset_index(p)["icon"] is False


def test_no_assets_means_the_card_image_is_the_icon(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("name: x\n", encoding="utf-8")
    assert asset_index(load_persona(path)) == {"icon": False, "background": False, "emotions": []}
    (tmp_path / "plain.assets").mkdir()
    (tmp_path / "plain.assets" / "ccdefault.png").write_bytes(ICON)  # what `xdai persona import card.png` keeps
    p = load_persona(path)
    assert asset_index(p)["icon"] is True and find_picture(p, "icon").data == ICON


def test_routes() -> None:
    assert asset_route("/bots/smol/assets/icon") == ("smol", "icon", None)
    assert asset_route("/bots/smol/assets/emotion/%E7%94%9F%E6%B0%94") == ("smol", "emotion", "生气")
    for bad in ("/bots/smol/assets", "/bots/smol/assets/secret/x", "/bots//assets/icon", "/bots/smol/assets/emotion/",
                "/bots/smol/assets/emotion/a/b", "/bots/smol/assets/emotion/..%2F..%2Fsecret.png"):
        assert asset_route(bad) is None, bad


async def test_the_server_serves_pictures_by_name_with_keys_as_bots(tmp_path: Path) -> None:
    bot = ScriptedResponder()
    bot.persona = load_persona(persona_with_assets(tmp_path / "p"))  # type: ignore[attr-defined]
    r = await start_scripted(tmp_path, bot, api_keys=["k"])
    try:
        auth = "Authorization: Bearer k"
        assert (await raw_http(r, get("/bots/smol/assets/icon")))[0] == 401
        assert (await raw_http(r, get("/bots/smol/assets/icon", "Authorization: Bearer nope")))[0] == 401
        status, headers, body = await raw_http(r, get("/bots/smol/assets/icon", auth))
        assert status == 200 and body == ICON and headers["content-type"] == ["image/png"]
        assert headers["x-content-type-options"] == ["nosniff"] and headers["cross-origin-resource-policy"] == [
            "same-origin"] and headers["cache-control"] == ["private, max-age=300"]
        status, headers, body = await raw_http(r, get("/bots/smol/assets/emotion/angry", auth))
        assert status == 200 and body == ANGRY
        status, headers, body = await raw_http(r, get("/bots/smol/assets/icon", auth).replace("GET", "HEAD", 1))
        assert status == 200 and body == b"" and headers["content-length"] == [str(len(ICON))]
        for path in ("/bots/smol/assets/emotion/evil", "/bots/smol/assets/emotion/linked",
                     "/bots/smol/assets/emotion/..%2F..%2Fsecret.png", "/bots/smol/assets/emotion/nobody",
                     "/bots/other/assets/icon", "/bots/smol/assets/background", "/bots/smol/x"):
            status, _, body = await raw_http(r, get(path, auth))
            assert status == 404 and body == b"not found\n", path
        status, _, body = await raw_http(r, get("/bots", auth))
        listed = json.loads(body)
        assert listed[0]["assets"] == {"icon": True, "background": False,
                                       "emotions": ["happy", "angry", "calm", "inline"]}
        assert not ABSOLUTE.search(body.decode()) and "assets/" not in body.decode()  # names, never paths
    finally:
        await r.server.shutdown()


@pytest.mark.slow
async def test_the_page_shows_the_icon_and_the_emotion_of_a_conditioned_reply(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (make system-deps installs it)")
    from playwright.async_api import async_playwright

    bot = ScriptedResponder(replies=["哼！"], events=[BotEvent("condition", {"name": "angry",
                                                                           "post_response": "你怎么生气了"})])
    bot.persona = load_persona(persona_with_assets(tmp_path / "p"))  # type: ignore[attr-defined]
    r = await start_scripted(tmp_path, bot)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(r.http + "/")
            await page.wait_for_selector("#status[data-state=open]", timeout=30_000)
            icon = page.locator("#bot-icon")
            await page.wait_for_selector("#bot-icon:not([hidden])", timeout=10_000)
            assert await icon.evaluate("img => img.complete && img.naturalWidth") == 16
            assert re.match(r"^blob:", await icon.get_attribute("src") or "")  # no server path in the page
            await page.fill("#input", "你好")
            await page.press("#input", "Enter")
            await page.wait_for_selector(".msg.bot[data-id^='r-']:not(.streaming)", timeout=30_000)
            emotion = page.locator(".msg.bot[data-id^='r-'] img.emotion")
            await emotion.wait_for(timeout=10_000)
            assert await emotion.get_attribute("alt") == "angry"
            await page.wait_for_function(
                "() => { const i = document.querySelector('img.emotion'); return i && i.complete && i.naturalWidth; }")
            assert await page.locator(".msg.greeting img.emotion").count() == 0
            assert errors == []
            await browser.close()
    finally:
        await r.server.shutdown()
