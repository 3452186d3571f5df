"""The one interface every model backend speaks.

A backend fills the [MASK] of an `Infill` (text before the mask, optional grounded post-response after it) and
scores a continuation's log-likelihood. It knows nothing of personas, stores or sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


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


@runtime_checkable
class Backend(Protocol):
    name: str

    def fill(self, infill: Infill, settings: GenerationSettings) -> AsyncIterator[str]:
        """Stream the text that fills the mask, piece by piece."""
        ...

    def score(self, context: str, continuation: str) -> float:
        """Sum of log-probabilities of `continuation` given `context`."""
        ...
