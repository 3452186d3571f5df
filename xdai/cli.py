"""The `xdai` command: one entry point, grouped subcommands.

This module only wires names to command modules; each command lives beside the code it drives and is
imported lazily, so that `xdai --help` stays fast and one broken extra does not take the CLI down.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import click

from xdai import __version__
from xdai.console import setup_console

# name -> (module, attribute, one-line help). Each attribute is a click command or group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "knowledge": ("xdai.commands.knowledge", "knowledge", "Build, extend, inspect and query knowledge stores."),
    "persona": ("xdai.commands.persona", "persona", "Check, import and export personas (Character Card V2)."),
    "prompt": ("xdai.commands.prompt", "prompt", "Show the assembled, annotated prompt for one turn."),
    "chat": ("xdai.commands.chat", "chat", "Chat with a persona or bot in the terminal (streams)."),
    "eval": ("xdai.commands.eval", "eval_group", "Evaluate dialogue quality (KdConv replay, ablations)."),
    "serve": ("xdai.commands.serve", "serve", "Serve bots over WebSocket with the web chat page."),
    "model": ("xdai.commands.model", "model", "Run and inspect the GLM engine (generate, DeepSpeed)."),
    "memory": ("xdai.commands.memory", "memory", "List and forget what bots remember of a user."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, (mod, _, _) in COMMANDS.items() if importlib.util.find_spec(mod.split(".")[0]))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr, help_text = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return _unavailable(name, help_text)
            raise
        command = getattr(module, attr)
        command.help = command.help or help_text
        command.short_help = help_text
        return command


def _unavailable(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=f"{help_text} (not available in this build)")
    def _cmd() -> None:
        raise click.ClickException(f"'xdai {name}' is not available in this build")

    _cmd.short_help = f"{help_text} (not available)"
    return _cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xdai")
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True,
              help="Set by the `deepspeed` launcher; the rank is read from the environment.")
def main(local_rank: int | None) -> None:
    """xdai: knowledge-grounded, persona-driven dialogue agents (XDAI, KDD 2022)."""
    setup_console()
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


if __name__ == "__main__":
    main()
