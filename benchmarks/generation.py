"""Generation speed of the `llama_cpp` backend through our interface vs raw llama-cpp-python, in one run.

Both sides use the same loaded model (the backend's process-wide `Llama`), the same prompt, the same sampler
settings and the same seed per repeat, so they generate the same tokens; each run starts from an empty KV cache.
"Raw" is `Llama.create_completion(stream=True)` iterated in the calling thread; "ours" is `Backend.fill()`: a
worker thread, the bot-turn post-filter and an asyncio queue. Both end at the first line break after the reply began
(our post-filter ends the bot's turn there; the raw loop breaks there).

Measured per run: time to first token (TTFT: call to first non-empty piece) and decode speed
(generated tokens after the first / time from first to last piece). Printed: medians and ours/raw ratios
(target: ours >= 0.9x raw for tokens/s, and raw TTFT / our TTFT >= 0.9).

    .venv/bin/python benchmarks/generation.py [--model default|smollm2|PATH] [--repeats 5] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xdai.backends.base import GenerationSettings, Infill  # noqa: E402
from xdai.backends.llama_cpp import LlamaCppBackend  # noqa: E402

PROMPTS = {
    "zh": "以下是小呆和用户的对话。小呆是一个活泼开朗、爱聊天的大学生。\n"
    "用户：小呆，请用一大段话详细介绍一下北京的历史、文化和美食吧！\n小呆：",
    "en": "The following is a conversation between XiaoDai, a cheerful student who loves to chat, and a user.\n"
    "User: XiaoDai, please tell me in one long paragraph about the history, culture and food of Beijing!\n"
    "XiaoDai:",
}


@dataclass
class Run:
    side: str
    ttft_s: float
    decode_tok_s: float
    tokens: int
    total_s: float


def generated_tokens(backend: LlamaCppBackend, prompt_tokens: int) -> int:
    """Tokens sampled in the last run: evaluated ones beyond the prompt, plus the last sampled, never evaluated."""
    return backend.llm.n_tokens - prompt_tokens + 1


def run_raw(backend: LlamaCppBackend, prompt: str, settings: GenerationSettings, prompt_tokens: int) -> Run:
    llm = backend.llm
    with backend._lock:
        llm.reset()
        start = time.perf_counter()
        first = last = None
        text = ""
        chunks = llm.create_completion(
            prompt,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            min_p=0.0,
            repeat_penalty=settings.repetition_penalty,
            seed=settings.seed,
            stream=True,
        )
        for chunk in chunks:
            text += chunk["choices"][0]["text"]
            if "\n" in text.lstrip():  # the same end of turn as our post-filter: a line break after the reply began
                break
            if text.strip():
                last = time.perf_counter()
                first = first or last
        chunks.close()
        tokens = generated_tokens(backend, prompt_tokens)
    return summarise("raw", start, first, last, tokens)


def run_ours(backend: LlamaCppBackend, prompt: str, settings: GenerationSettings, prompt_tokens: int) -> Run:
    async def consume() -> tuple[float, float | None, float | None]:
        start = time.perf_counter()
        first = last = None
        async for piece in backend.fill(Infill(prompt), settings):
            if piece.strip():
                last = time.perf_counter()
                first = first or last
        return start, first, last

    with backend._lock:
        backend.llm.reset()
    start, first, last = asyncio.run(consume())
    return summarise("ours", start, first, last, generated_tokens(backend, prompt_tokens))


def summarise(side: str, start: float, first: float | None, last: float | None, tokens: int) -> Run:
    if first is None or last is None:
        raise RuntimeError(f"{side}: the model produced no text; try another --seed or prompt")
    decode = (tokens - 1) / (last - first) if last > first else float("nan")
    return Run(side, first - start, decode, tokens, last - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default | smollm2 | path to a .gguf")
    parser.add_argument("--language", choices=sorted(PROMPTS), default=None, help="prompt language (default: zh for Qwen)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path, default=None, help="also write every run here")
    args = parser.parse_args()

    language = args.language or ("en" if args.model == "smollm2" else "zh")
    prompt = PROMPTS[language]
    t0 = time.perf_counter()
    backend = LlamaCppBackend(args.model, threads=args.threads)
    load_s = time.perf_counter() - t0
    prompt_tokens = len(backend.tokenize(prompt))
    settings = GenerationSettings(max_tokens=args.max_tokens)

    runs: list[Run] = []
    for i in tqdm(range(args.repeats), desc="generation", file=sys.stderr):
        settings.seed = args.seed + i
        pair = [run_raw, run_ours] if i % 2 == 0 else [run_ours, run_raw]  # alternate who goes first
        for fn in pair:
            runs.append(fn(backend, prompt, settings, prompt_tokens))

    def median(side: str, key: str) -> float:
        return statistics.median(getattr(r, key) for r in runs if r.side == side)

    print(f"model {backend.model_path.name} ({args.model}), load {load_s:.2f} s, {backend.threads} threads, "
          f"prompt {prompt_tokens} tokens, {args.repeats} repeats, max {args.max_tokens} tokens")
    print(f"{'':6} {'TTFT s':>8} {'decode tok/s':>13} {'tokens':>7}")
    for side in ("raw", "ours"):
        print(f"{side:6} {median(side, 'ttft_s'):8.3f} {median(side, 'decode_tok_s'):13.1f} {median(side, 'tokens'):7.0f}")
    speed = median("ours", "decode_tok_s") / median("raw", "decode_tok_s")
    ttft = median("raw", "ttft_s") / median("ours", "ttft_s")
    verdict = "ok" if min(speed, ttft) >= 0.9 else "BELOW TARGET"
    print(f"generation: ours/raw tokens/s {speed:.2f}x, raw/ours TTFT {ttft:.2f}x (target >= 0.9x): {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "speed_ratio": speed, "ttft_ratio": ttft}, indent=1))


if __name__ == "__main__":
    main()
