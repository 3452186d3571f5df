"""`xdai memory`: what the service remembers of a user, and forgetting it (the operator's side of the privacy
controls; a client has the same for its own user through the ``memory.list`` / ``memory.forget`` frames).

The store is the service's (``server.session_store``: the SQLite file or Redis). Users are named as the service
stores them: the user as the client sent it, or ``TENANT/USER`` under an API key (``key-…`` for a key without a
tenant).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any

import click

_USER = re.compile(r"^(?:[a-z0-9_-]{1,64}/)?[a-z0-9_-]{1,64}$")
_BOT = re.compile(r"^[a-z0-9_-]{1,64}$")


def _check(user: str, bot: str | None) -> None:
    if not _USER.match(user):
        raise click.BadParameter("a user is 1-64 of a-z 0-9 _ - (TENANT/USER under API keys)", param_hint="--user")
    if bot is not None and not _BOT.match(bot):
        raise click.BadParameter("a bot name is 1-64 of a-z 0-9 _ -", param_hint="--bot")


def _store(config_path: str | None) -> Any:
    from xdai.config import ConfigError, load_config
    from xdai.memory.store import open_memory_store
    from xdai.service.sessions import StorageError

    try:
        cfg = load_config(config_path)
        s = cfg.server
        return open_memory_store(s.session_store, sqlite_path=s.sqlite_path, redis_url=s.redis_url)
    except (ConfigError, StorageError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group("memory")
def memory() -> None:
    """List and forget what bots remember of a user across sessions."""


@memory.command("list")
@click.option("--user", required=True, help="The user (TENANT/USER under API keys).")
@click.option("--bot", default=None, help="Only this bot's memories (default: every bot's).")
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON (with their histories).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="xdai.yaml to read.")
def list_items(user: str, bot: str | None, as_json: bool, config_path: str | None) -> None:
    """The memories kept of USER: facts (QA pairs) and session summaries, with where each came from."""
    _check(user, bot)
    store = _store(config_path)
    try:
        items = store.items(user, bot)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([i.to_json() for i in items], ensure_ascii=False, indent=2))
        return
    if not items:
        click.echo(f"nothing is remembered of {user}" + (f" by {bot}" if bot else ""))
        return
    for item in items:
        when = _dt.datetime.fromtimestamp(item.updated).strftime("%Y-%m-%d %H:%M")
        what = f"{item.q} {item.a}" if item.kind == "qa" else item.text
        click.echo(f"{item.id}  {item.bot:<12} {item.kind:<11} {what}")
        click.echo(f"{'':18}{item.slot} · session {item.session} seq {item.seq} · {when}"
                   + (f" · {len(item.history)} earlier version(s)" if item.history else ""))
        for old in item.history:
            shown = f"{old.get('q')} {old.get('a')}" if old.get("q") else old.get("text")
            click.echo(f"{'':20}was: {shown} (session {old.get('session')} seq {old.get('seq')})")


@memory.command("forget")
@click.option("--user", required=True, help="The user (TENANT/USER under API keys).")
@click.option("--bot", default=None, help="Only this bot's memories (default: every bot's).")
@click.option("--item", default=None, help="Only this item (its id from `xdai memory list`).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="xdai.yaml to read.")
def forget(user: str, bot: str | None, item: str | None, config_path: str | None) -> None:
    """Delete USER's memories for good: the items, their earlier versions, their cached embeddings, and the
    summaries of the sessions they came from."""
    _check(user, bot)
    store = _store(config_path)
    try:
        count = store.forget(user, bot, item)
    finally:
        store.close()
    click.echo(f"forgot {count} item(s) of {user}" + (f" for {bot}" if bot else ""))
    if item is not None and count == 0:
        raise click.ClickException(f"no item {item!r} of {user}" + (f" for {bot}" if bot else ""))
