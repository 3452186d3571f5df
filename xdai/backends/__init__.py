"""Model backends behind one interface (`xdai.backends.base.Backend`), chosen by name and imported lazily.

    backend = get_backend("llama_cpp")            # the bundled offline default (Qwen2.5-0.5B GGUF on CPU)
    backend = get_backend("llama_cpp", "smollm2")  # the small English test model
    backend = get_backend("hf", "/models/glm-4-9b-chat-hf", tensor_parallel=2)
    backend = get_backend("openai", "glm-4.5", base_url="http://127.0.0.1:8000/v1")
"""

from __future__ import annotations

import importlib
from typing import Any

from xdai.backends.base import Backend, GenerationSettings, Infill

# name -> (module, class). Importing a backend pulls in its heavy library, so it happens on first use only.
BACKENDS: dict[str, tuple[str, str]] = {
    "llama_cpp": ("xdai.backends.llama_cpp", "LlamaCppBackend"),
    "hf": ("xdai.backends.hf", "HFBackend"),
    "openai": ("xdai.backends.openai", "OpenAIBackend"),
    "glm": ("xdai.backends.glm", "GLMBackend"),
}


def get_backend(name: str, model: str = "default", **options: Any) -> Backend:
    """Build the backend `name` for `model`; `options` go to its constructor (n_ctx, base_url, device, ...)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(model, **options)


__all__ = ["BACKENDS", "Backend", "GenerationSettings", "Infill", "get_backend"]
