"""The inference engine (`xdai.backends.engine`) against raw llama-cpp-python and against itself, in one run.

(a) decode tok/s of one sequence through the engine vs raw `Llama.generate` on the same prompt, sampler, seed and
    attention kernels (both keep decoding past end-of-text so they decode the same number of tokens); >= 0.95x.
(b) aggregate decode tok/s of B = 1, 2, 4, 8 candidates of one prompt decoded together; the curve vs B = 1.
(c) time to first token of a ~600-token XDAI prompt (the default persona, two earlier exchanges, knowledge)
    when another session's turn of the same bot left its prefix cached, vs an empty cache; target <= 0.35x.
    Also printed: the same session's previous turn cached, and how many prompt tokens each case reused.
(d) latency of a reranked reply vs one candidate, through the real turn (`xdai.turn.Agent` with the default
    persona, its `rerank: 3` and its choice; turn 3 of a session whose previous turn is cached, as in service):
    time to the first text and to the whole reply, for one candidate, for 3 candidates raced with the persona's
    `rerank_slack` (`xdai.race`), and for 3 candidates all waited for (the choice before the race); target <= 1.5x.
    The waited-for runs are replayed with `xdai.race.settle` at other slacks: how often the race's choice differs
    from waiting for every candidate, and how many tokens the slowest candidate it waits for has.

Run it on a quiet machine: every figure is a ratio of two measurements taken in this run.

    .venv/bin/python benchmarks/engine.py [--model default|smollm2|PATH] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp  # noqa: E402

from xdai.backends.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from xdai.backends.llama_cpp import LlamaCppBackend  # noqa: E402
from xdai.backends.models import resolve_model  # noqa: E402
from xdai.choose import ChoiceWeights, choose  # noqa: E402
from xdai.history import Exchange, ScoredExchange  # noqa: E402
from xdai.persona import load_persona  # noqa: E402
from xdai.prompt import Knowledge, PromptBuilder  # noqa: E402
from xdai.race import settle  # noqa: E402
from xdai.responder import Delta, Reply  # noqa: E402
from xdai.turn import Agent  # noqa: E402

STORY = ("以下是小呆和用户的对话。小呆是一个活泼开朗、爱聊天的大学生。\n"
         "用户：小呆，请用一大段话详细介绍一下北京的历史、文化和美食吧！\n小呆：")
SAMPLING = dict(temperature=0.8, top_p=0.9, top_k=40, repetition_penalty=1.15)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# -- (a) one sequence ---------------------------------------------------------------------------------------------

def raw_decode(llm: llama_cpp.Llama, ids: list[int], n: int, seed: int) -> float:
    llm.reset()
    llm.set_seed(seed)
    gen = llm.generate(ids, temp=SAMPLING["temperature"], top_p=SAMPLING["top_p"], top_k=SAMPLING["top_k"],
                       min_p=0.0, typical_p=1.0, repeat_penalty=SAMPLING["repetition_penalty"])
    first = last = 0.0
    for count, _ in enumerate(gen, start=1):
        last = time.perf_counter()
        if count == 1:
            first = last
        if count >= n:
            break
    gen.close()
    return (n - 1) / (last - first)


def engine_decode(engine: Engine, ids: list[int], n: int, seeds: list[int]) -> tuple[float, float]:
    """Aggregate decode tok/s of len(seeds) candidates (from the step that sampled their first tokens to the
    last), and the wall time of the whole request."""
    engine.clear_cache()
    t0 = time.perf_counter()
    streams = engine.generate(ids, [SamplingParams(**SAMPLING, seed=s, max_tokens=n, ignore_eog=True) for s in seeds])
    next(iter(streams[0]))  # every candidate samples its first token in the same step
    first = time.perf_counter()
    for s in streams:
        s.result()
    last = time.perf_counter()
    return len(seeds) * (n - 1) / (last - first), last - t0


# -- (c) an XDAI prompt -------------------------------------------------------------------------------------------

def xdai_prompt(builder: PromptBuilder, session: int, turn: int) -> str:
    """Turn `turn` of a session: its earlier exchanges, knowledge retrieved for it, the utterance."""
    topics = [("故宫", "故宫是明清两代的皇宫，位于北京中轴线的中心，旧称紫禁城，是世界上现存规模最大的宫殿型建筑群。"),
              ("长城", "长城是中国古代的军事防御工程，东起山海关，西至嘉峪关，总长度超过两万公里，被列为世界文化遗产。"),
              ("火锅", "北京的铜锅涮肉以清汤为底，羊肉片薄，蘸料以芝麻酱为主，是冬天最受欢迎的美食之一。"),
              ("滑雪", "崇礼是北京周边最有名的滑雪胜地，2022年冬奥会的雪上项目有一部分在这里举行。"),
              ("电影", "《哪吒之魔童降世》是2019年上映的国产动画电影，票房超过五十亿元。")]
    pick = [topics[(session + turn + k) % len(topics)] for k in range(3)]
    history = [Exchange(f"第{session}位朋友第{i}次问：你去过{pick[i % 3][0]}吗？", f"去过呀，{pick[i % 3][0]}超棒的，你也喜欢吗？")
               for i in range(turn - 1)]
    selection = [ScoredExchange(i, ex, 0.75 ** (turn - 1 - i), 0.5, 0.5, selected=True) for i, ex in enumerate(history)]
    background = [Knowledge("description", text, 0.8, title=name) for name, text in pick[:2]]
    qa = Knowledge("qa", f"{pick[2][0]}怎么样？ {pick[2][1]}", 0.9, q=f"{pick[2][0]}怎么样？", a=pick[2][1])
    utterance = f"那你觉得{pick[2][0]}怎么样？给我详细讲讲吧（第{session}位朋友）"
    prompt = builder.build(utterance, selection=selection, background=background, utterance_knowledge=qa)
    return prompt.render().before


def ttft(engine: Engine, ids: list[int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    [stream] = engine.generate(ids, SamplingParams(**SAMPLING, max_tokens=2))  # unseeded: a seeded request skips the cache
    next(iter(stream))
    elapsed = time.perf_counter() - t0
    done = stream.result()
    return elapsed, done.cached_tokens


# -- (d) reranking, through the turn ----------------------------------------------------------------------------

TOPICS = ["滑雪", "火锅", "北京", "电影", "羽毛球", "考试", "宿舍", "冬奥会", "编程", "旅行", "音乐", "猫"]
VARIANTS = {"one candidate": {"rerank": 1}, "rerank 3, raced": {"rerank": 3},
            "rerank 3, waiting for all": {"rerank": 3, "rerank_slack": None}}


async def timed_turn(agent: Agent, history, utterance: str) -> tuple[float, float, Reply]:
    t0 = time.perf_counter()
    first, reply = None, None
    async for event in agent.respond(history, utterance):
        if isinstance(event, Delta) and first is None and event.text.strip():
            first = time.perf_counter() - t0
        elif isinstance(event, Reply):
            reply = event
    assert reply is not None and reply.finish_reason == "stop", reply and reply.error
    total = time.perf_counter() - t0
    return (first if first is not None else total), total, reply


def rerank_runs(backend: LlamaCppBackend, sessions: int) -> tuple[dict[str, dict[str, list[float]]], list[Reply]]:
    """Turn 3 of `sessions` sessions under each variant, from the same history and the same cache state."""
    persona = load_persona("xiaodai")
    agent = Agent(persona, backend=backend)
    times: dict[str, dict[str, list[float]]] = {v: {"first": [], "reply": []} for v in VARIANTS}
    waited: list[Reply] = []
    persona.generation.update(VARIANTS["rerank 3, raced"])  # untimed: the bot's prefix cached and the choice's
    asyncio.run(timed_turn(agent, agent.new_history(), "你好呀！"))  # word lists loaded, as in a running service
    for k in range(sessions):
        a, b, c = (TOPICS[(k + j) % len(TOPICS)] for j in range(3))
        persona.generation.update(VARIANTS["one candidate"])
        history = agent.new_history()
        for utterance in (f"你喜欢{a}吗？", f"那{b}呢？"):
            _, _, reply = asyncio.run(timed_turn(agent, history, utterance))
            history.append(utterance, reply.text)
        previous = reply.prompt.for_model()
        order = list(VARIANTS)[k % 3:] + list(VARIANTS)[: k % 3]  # rotate which variant goes first
        for name in order:
            persona.generation.pop("rerank_slack", None)
            persona.generation.update(VARIANTS[name])
            backend.engine.clear_cache()  # the session's previous turn cached, nothing else
            backend.engine.warm(backend.tokenize(previous.before, previous.special)).result()
            first, total, reply = asyncio.run(timed_turn(agent, history, f"说说{c}吧，你觉得{c}怎么样？"))
            times[name]["first"].append(first)
            times[name]["reply"].append(total)
            if name == "rerank 3, waiting for all":
                waited.append(reply)
        print(f"    session {k + 1}/{sessions}: " + ", ".join(
            f"{n} {times[n]['reply'][-1]:.2f} s" for n in VARIANTS), flush=True)
    return times, waited


def replay(waited: list[Reply], slacks: tuple[int | None, ...]) -> dict[int | None, tuple[float, float, float]]:
    """For each slack: the share of turns whose choice differs from waiting for all, and the median and p90 length
    in tokens of the longest candidate the race waits for (what the reply's latency follows)."""
    weights = ChoiceWeights.of(load_persona("xiaodai"))
    out = {}
    for slack in slacks:
        changed, longest = 0, []
        for reply in waited:
            record = reply.prompt.rerank or {}
            entrants, scored = record["entrants"], record["candidates"]
            cut = settle([e["tokens"] for e in entrants], [e["eligible"] for e in entrants], slack)
            kept = [argparse.Namespace(text=c["text"], total=c["model"] if c["model"] is not None else -math.inf)
                    for c, gone in zip(scored, cut, strict=True) if not gone]
            changed += choose(kept, reply.prompt, weights).text != record["text"]
            longest.append(max(e["tokens"] for e, gone in zip(entrants, cut, strict=True) if not gone))
        out[slack] = (changed / max(len(waited), 1), median(longest), p90(longest))
    return out


def p90(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(0.9 * len(xs)))]


def engine_figures(args: argparse.Namespace, path: Path) -> str:
    """(a), (b) and (c); their summary."""
    engine = Engine(path, EngineConfig())
    threads = engine.runner.threads
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False,
                          flash_attn=engine.config.flash_attn)  # the same attention kernels: (a) is the engine's cost
    print(f"model {path.name}, {threads} threads, flash attention {engine.config.flash_attn}")

    # (a)
    ids = engine.tokenizer.encode(STORY)
    raw, ours = [], []
    for r in range(args.repeats):
        raw.append(raw_decode(llm, ids, args.tokens, seed=r))
        ours.append(engine_decode(engine, ids, args.tokens, [r])[0])
    a = median(ours) / median(raw)
    print(f"(a) one sequence, {args.tokens} tokens: engine {median(ours):.1f} tok/s vs raw llama-cpp-python "
          f"{median(raw):.1f} tok/s: {a:.2f}x (target >= 0.95x)")
    del llm

    # (b)
    curve = {}
    for b in (1, 2, 4, 8):
        curve[b] = median([engine_decode(engine, ids, args.tokens, list(range(r * 10, r * 10 + b)))[0]
                           for r in range(args.repeats)])
    print("(b) aggregate decode tok/s: " + ", ".join(
        f"B={b} {v:.1f} ({v / curve[1]:.2f}x)" for b, v in curve.items()))

    # (c)
    builder = PromptBuilder(load_persona("xiaodai"), count_tokens=lambda t: len(engine.tokenizer.encode(t)))
    target = xdai_prompt(builder, session=1, turn=3)
    other_session = xdai_prompt(builder, session=2, turn=3)
    previous_turn = xdai_prompt(builder, session=1, turn=2)
    target_ids = engine.tokenizer.encode(target)
    cold, warm, same, reused = [], [], [], {}
    for _ in range(args.repeats):
        engine.clear_cache()
        t, _ = ttft(engine, target_ids)
        cold.append(t)
        engine.clear_cache()
        ttft(engine, engine.tokenizer.encode(other_session))
        t, reused["bot"] = ttft(engine, target_ids)
        warm.append(t)
        engine.clear_cache()
        ttft(engine, engine.tokenizer.encode(previous_turn))
        t, reused["session"] = ttft(engine, target_ids)
        same.append(t)
    c = median(warm) / median(cold)
    print(f"(c) TTFT, {len(target_ids)}-token XDAI prompt: uncached {median(cold):.2f} s; another session's turn "
          f"cached {median(warm):.2f} s ({reused['bot']} tokens reused): {c:.2f}x (target <= 0.35x); "
          f"this session's previous turn cached {median(same):.2f} s ({reused['session']} reused): "
          f"{median(same) / median(cold):.2f}x")

    stats = engine.stats()
    engine.close()
    return (f"(a) {a:.2f}x  (b) B=2 {curve[2] / curve[1]:.2f}x B=4 {curve[4] / curve[1]:.2f}x "
            f"B=8 {curve[8] / curve[1]:.2f}x  (c) {c:.2f}x  prefix hit rate {stats.prefix.hit_rate:.2f}  ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=64, help="decoded tokens per sequence in (a) and (b)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=8, help="sessions whose turn 3 (d) times, per variant")
    ap.add_argument("--only-d", action="store_true", help="run (d) alone (reranking through the turn)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    path = resolve_model(args.model)
    print(f"load average {load:.2f} at start")
    summary = "" if args.only_d else engine_figures(args, path)

    # (d)
    backend = LlamaCppBackend(args.model)
    times, waited = rerank_runs(backend, args.sessions)
    med = {name: (median(t["first"]), median(t["reply"])) for name, t in times.items()}
    for name, (first, reply) in med.items():
        print(f"(d) {name}: first text {first:.2f} s, whole reply {reply:.2f} s (p90 {p90(times[name]['reply']):.2f} s)")
    d = med["rerank 3, raced"][1] / med["one candidate"][1]
    d_wait = med["rerank 3, waiting for all"][1] / med["one candidate"][1]
    print(f"(d) reply latency, rerank 3 raced vs one candidate: {d:.2f}x (target <= 1.5x); waiting for all: "
          f"{d_wait:.2f}x")
    slack = load_persona("xiaodai").rerank_options()["rerank_slack"]
    for s_, (changed, longest, tail) in replay(waited, (0, 4, 8, 16, 32, None)).items():
        mark = " (the persona's)" if s_ == slack else ""
        print(f"    replayed slack {s_}{mark}: choice differs from waiting for all in {changed:.0%} of "
              f"{len(waited)} turns; longest candidate waited for {longest:.0f} tokens (median), {tail:.0f} (p90)")
    end_load = os.getloadavg()[0]
    print(f"summary: {summary}(d) {d:.2f}x  load {load:.2f}->{end_load:.2f}")


if __name__ == "__main__":
    main()
