"""Suite-wide environment: offline hubs, Triton's CPU interpreter, quiet tokenizers.

Set before any test module imports transformers or triton. Area-specific fixtures live in each
tests/<area>/conftest.py.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# llama.cpp/OpenMP threads busy-wait by default; on a shared 2-core machine that slows decoding ~20x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
