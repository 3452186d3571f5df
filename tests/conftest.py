"""Suite-wide environment: offline hubs, Triton's CPU interpreter, quiet tokenizers.

Set before any test module imports transformers or triton. Area-specific fixtures live in each
tests/<area>/conftest.py; code shared between tests is imported, never taken from a conftest: `tests.helpers`
(tiny GLMs, hub checkpoints) and `tests.fakes` (a scripted backend and an in-memory bot, for logic around a model).
Tests marked `slow` (end to end on real models, the browser, subprocess servers, DeepSpeed) are left out by
`make test-fast`; `make test` runs everything.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# llama.cpp/OpenMP threads busy-wait by default; on a shared 2-core machine that slows decoding ~20x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
