"""The one interface every model backend speaks.

A backend fills the [MASK] of an `Infill` (text before the mask, optional grounded post-response after it) and
scores a continuation's log-likelihood. It knows nothing of personas, stores or sockets. `GenerationSettings`
and `Infill` live in the leaf module `xdai.generation` (our GLM engine speaks them too); they are re-exported here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from xdai.generation import GenerationSettings, Infill  # defined in a leaf module that xdai.model shares


@runtime_checkable
class Backend(Protocol):
    name: str

    def fill(self, infill: Infill, settings: GenerationSettings) -> AsyncIterator[str]:
        """Stream the text that fills the mask, piece by piece."""
        ...

    def score(self, context: str, continuation: str) -> float:
        """Sum of log-probabilities of `continuation` given `context`."""
        ...


__all__ = ["Backend", "GenerationSettings", "Infill"]
