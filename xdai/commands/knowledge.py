"""`xdai knowledge ...`: the knowledge package's commands (`knowledge.cli`), served by xdai's configuration.

`knowledge` imports nothing from xdai; this module is where the two meet: a ``--config FILE`` (or $XDAI_CONFIG,
or ./xdai.yaml) becomes the stores' `KnowledgeSettings`, and ``--generate-qa`` gets the configured backend as a
`Fill` function.
"""

from __future__ import annotations

import asyncio

import click

from knowledge.cli import KnowledgeHost, group
from knowledge.generate_qa import Fill
from knowledge.settings import KnowledgeSettings
from xdai.config import Config, load_config


class XdaiKnowledgeHost(KnowledgeHost):
    """Settings and the QA-writing model from xdai's configuration, read once per command."""

    @staticmethod
    def config(config_path: str | None) -> Config:
        meta = click.get_current_context().meta
        key = ("xdai.config", config_path)
        if key not in meta:
            meta[key] = load_config(config_path)
        return meta[key]

    def settings(self, config_path: str | None) -> KnowledgeSettings:
        return self.config(config_path).knowledge_settings()

    def fill(self, config_path: str | None) -> Fill:
        return backend_fill(self.config(config_path))


def backend_fill(cfg: Config) -> Fill:
    """A greedy, one-line `Fill` over the backend `cfg.backend` names, started on the first call."""
    from xdai.backends import GenerationSettings, Infill, get_backend

    started = []

    def fill(prompt: str, max_tokens: int) -> str:
        if not started:
            started.append(get_backend(cfg.backend.name, cfg.backend.model, **cfg.backend_options(cfg.backend.name)))
        settings = GenerationSettings(temperature=0.0, top_p=1.0, max_tokens=max_tokens, stop=["\n"], seed=0)

        async def run() -> str:
            return "".join([piece async for piece in started[0].fill(Infill(before=prompt), settings)])

        return asyncio.run(run())

    return fill


knowledge = group(XdaiKnowledgeHost())
