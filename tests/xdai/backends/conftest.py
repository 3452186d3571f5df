"""Backend tests run real bundled models: SmolLM2-135M (fast, English) for most, the default Qwen GGUF once."""

from __future__ import annotations

import os

import pytest

# As xdai.backends.llama_cpp does on import: test modules import llama_cpp directly, possibly first, and
# libgomp reads its wait policy once, when it loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from xdai.backends.base import GenerationSettings

DIALOGUE = (
    "The following is a conversation between a friendly assistant and a user.\n"
    "User: What is the capital of France?\n"
    "Assistant:"
)


@pytest.fixture(scope="session")
def smollm2():
    from xdai.backends.llama_cpp import LlamaCppBackend

    return LlamaCppBackend("smollm2", n_ctx=1024)


@pytest.fixture(scope="session")
def reference(smollm2):
    """A second llama.cpp context on the same file with logits for every position: the direct computation."""
    import llama_cpp

    threads = smollm2.threads
    return llama_cpp.Llama(
        model_path=str(smollm2.model_path), n_ctx=512, logits_all=True, n_threads=threads, n_threads_batch=threads,
        verbose=False, flash_attn=smollm2.engine.config.flash_attn,  # as the engine computes attention
    )


@pytest.fixture
def settings() -> GenerationSettings:
    return GenerationSettings(stop=["\nUser:"], seed=7, max_tokens=24)


@pytest.fixture(scope="session")
def dialogue() -> str:
    return DIALOGUE


async def _collect(pieces) -> list[str]:
    return [piece async for piece in pieces]


@pytest.fixture(scope="session")
def collect():
    """`await collect(backend.fill(...))`: every streamed piece, in order."""
    return _collect
