"""`xdai serve`: host the configured bots over WebSocket, with the chat page, health and metrics."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from bots.registry import BotSpec
    from xdai.config import Config
    from xdai.service.server import XdaiServer


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="xdai.yaml to read (default: $XDAI_CONFIG or ./xdai.yaml when present).")
@click.option("--host", default=None, help="Address to bind (default: server.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default: server.port, 8765; 0 picks a free one).")
@click.option("--bot", "bots", multiple=True, help="Bot to host (repeatable; default: server.bots; \"*\": every bot).")
def serve(config_path: str | None, host: str | None, port: int | None, bots: tuple[str, ...]) -> None:
    """Serve bots: WebSocket at /ws, the chat page at /, /healthz, /metrics, /bots."""
    from bots.assemble import build_bot
    from bots.registry import BotError, load_bots
    from xdai.config import ConfigError, load_config
    from xdai.service.server import XdaiServer
    from xdai.service.sessions import StoreUnusable, open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        cfg = load_config(config_path)
        declared = load_bots(cfg.paths.bots_dir)
    except (ConfigError, BotError) as exc:
        raise click.ClickException(str(exc)) from None
    server_cfg = cfg.server
    server_cfg.host = host or server_cfg.host
    server_cfg.port = server_cfg.port if port is None else port
    names = list(bots) or list(server_cfg.bots)
    if "*" in names:  # every declared bot; the ones named before "*" come first (the page opens the first)
        named = [n for n in names if n != "*"]
        names = named + [n for n in sorted(declared) if n not in named]
    missing = [n for n in names if n not in declared]
    if missing:
        raise click.ClickException(f"server.bots: no bot named {', '.join(map(repr, missing))} in {cfg.paths.bots_dir} "
                                   f"(declared: {', '.join(sorted(declared)) or 'none'})")
    try:  # checked before the bots are built: a bad session database is refused at once, naming the file
        store = open_store(server_cfg.session_store, sqlite_path=server_cfg.sqlite_path, redis_url=server_cfg.redis_url,
                           synchronous=server_cfg.sqlite_synchronous)
    except (StoreUnusable, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    agents = {}
    for name in names:
        started = time.monotonic()
        try:
            agents[name] = build_bot(declared[name], cfg.paths.stores_dir, personas_dir=cfg.paths.personas_dir,
                                     config=cfg)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise click.ClickException(f"bot {name}: {exc}") from None
        click.echo(f"bot {name}: ready ({declared[name].backend}/{declared[name].model}, "
                   f"{time.monotonic() - started:.1f}s)", err=True)
    # Generation threads run Python between tokens; a short GIL switch interval keeps the event loop (acks,
    # delta forwarding) responsive while they do. Throughput is bound by the model, not by switching.
    sys.setswitchinterval(0.001)
    served = {name: declared[name] for name in names}
    server = XdaiServer(server_cfg, {name: spec.info() for name, spec in served.items()}, agents, store)
    asyncio.run(_serve(server, served, cfg))


async def _serve(server: XdaiServer, specs: dict[str, BotSpec], config: Config) -> None:
    """Run `server` until it stops, reloading edited bots (built with `config`, as at start)."""
    from functools import partial

    from bots.assemble import build_bot
    from bots.reload import Reloader

    paths = config.paths

    def swapped(name: str, spec: BotSpec, bot: object) -> None:
        server.bots[name] = spec.info()

    port = await server.start()
    reloader = asyncio.create_task(Reloader(paths.bots_dir, specs, server.agents, paths.stores_dir,
                                            personas_dir=paths.personas_dir, on_swap=swapped,
                                            build=partial(build_bot, config=config)).run())
    cfg = server.cfg
    click.echo(f"serving http://{cfg.host}:{port}/ (WebSocket ws://{cfg.host}:{port}/ws; bots: "
               f"{', '.join(sorted(server.agents))}; sessions: {cfg.session_store})", err=True)
    await server.run()
    reloader.cancel()
    click.echo("server stopped", err=True)
