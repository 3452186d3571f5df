"""What a fill asks for: the text around the mask (`Infill`) and how to sample it (`GenerationSettings`).

A leaf module (it imports nothing from xdai) so that both the backends and our GLM engine (`xdai.model`) can
speak it without either depending on the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationSettings:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.15
    max_tokens: int = 96
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Infill:
    """`before` [MASK] `after`. `after` is the grounded post-response (None when no condition is active)."""

    before: str
    after: str | None = None
