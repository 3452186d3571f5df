"""Decode speed of whichever llama-cpp-python build this interpreter has: portable (ours) vs native.

Run it with two interpreters on the same GGUF, alternating, and compare the medians: it imports nothing from xdai,
so it also runs in a throw-away venv holding a GGML_NATIVE build.

    .venv/bin/python benchmarks/llama_build.py --model ~/.cache/xdai/models/qwen2.5-coder-0.5b-instruct-q4.gguf
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import llama_cpp  # noqa: E402

PROMPT = "用户：你好，请介绍一下故宫。\n助手：故宫位于北京市中心，"


def decode_tok_s(llm: llama_cpp.Llama, n_tokens: int) -> float:
    llm.reset()
    tokens = llm.tokenize(PROMPT.encode("utf-8"))
    llm.eval(tokens)
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        logits = llm.scores[llm.n_tokens - 1]
        llm.eval([int(logits.argmax())])
    return n_tokens / (time.perf_counter() - t0)


def prefill_tok_s(llm: llama_cpp.Llama, n_tokens: int) -> float:
    llm.reset()
    tokens = (llm.tokenize((PROMPT * 40).encode("utf-8")))[:n_tokens]
    t0 = time.perf_counter()
    llm.eval(tokens)
    return len(tokens) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=512, n_threads=args.threads, verbose=False)
    features = llama_cpp.llama_print_system_info().decode().strip()
    runs = [decode_tok_s(llm, args.tokens) for _ in range(args.repeats)]
    prefill = [prefill_tok_s(llm, 400) for _ in range(args.repeats)]
    print(f"features: {features}")
    print(f"prefill: median {statistics.median(prefill):.1f} tok/s (400-token prompt)")
    print(f"decode: median {statistics.median(runs):.1f} tok/s over {args.repeats} runs "
          f"({', '.join(f'{r:.1f}' for r in runs)})")


if __name__ == "__main__":
    main()
