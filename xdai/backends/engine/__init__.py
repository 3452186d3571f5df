"""An inference engine for GGUF models inside our process: several sequences decoded together.

    engine = get_engine(resolve_model("default"))                 # one per loaded model, shared
    streams = engine.generate(engine.tokenizer.encode(prompt), [SamplingParams(seed=1), SamplingParams(seed=2)])
    for event in streams[0]: ...                                   # or `async for`
    engine.score(tokens, start).result().logprob

Candidates share their prompt's KV cells, prompts reuse cached prefixes, and requests join and leave the running
batch between decode steps (continuous batching), all over llama.cpp's low-level API with a unified KV cache.
"""

from __future__ import annotations

import threading
from pathlib import Path

from xdai.backends.engine.config import EngineConfig
from xdai.backends.engine.engine import Engine, EngineStats
from xdai.backends.engine.outputs import Completion, EngineError, Finish, ScoreResult, Stream, TokenEvent
from xdai.backends.engine.sampling import SamplingParams

_ENGINES: dict[tuple[str, EngineConfig], Engine] = {}
_LOCK = threading.Lock()


def get_engine(model_path: str | Path, config: EngineConfig | None = None) -> Engine:
    """The process-wide engine for this model file and configuration, started on first use."""
    config = config or EngineConfig()
    key = (str(Path(model_path).resolve()), config)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = Engine(key[0], config)
        return engine


__all__ = [
    "Completion", "Engine", "EngineConfig", "EngineError", "EngineStats", "Finish", "SamplingParams",
    "ScoreResult", "Stream", "TokenEvent", "get_engine",
]
