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
    """`before` [MASK] `after`. `after` is the grounded post-response (None when no condition is active).

    `special`: the text was rendered through the model's chat template (`xdai.render`), so the template's marker
    spellings in it are the model's special tokens; everything from outside was escaped first. False: all text is
    data, and a marker spelling stays plain text."""

    before: str
    after: str | None = None
    special: bool = False
