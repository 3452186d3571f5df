"""Which rendering should a model get by default? Fact use and faithfulness per rendering, per bundled model.

    python benchmarks/rendering.py                       # Qwen (Chinese questions) and SmolLM2 (English), 3 seeds
    python benchmarks/rendering.py --models smollm2 --seeds 5

For each model, a persona with a small pack of facts is asked questions the pack answers; the same questions go
through every rendering the model can take (`xdai.render`: its chat template, the plain transcript), as single
samples (`rerank: 0`, the model's own choice) and with `rerank: 3` (the grounding-aware choice, `xdai.choose`).
A reply uses the fact when it contains one of the question's evidence strings; it is unfaithful when it makes a
claim nothing in its prompt supports (`xdai.eval.faithfulness`). The figures back the default in docs/turn.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from xdai.eval.faithfulness import check_prompt_reply

ZH = """name: 小呆
language: zh
description: 小呆是一名活泼的大学生，喜欢聊运动和旅行，回答简短自然。
knowledge:
  qa:
    - {q: "谷爱凌是谁？", a: "谷爱凌，2003年出生于美国加利福尼亚州旧金山市，中国自由式滑雪运动员。"}
    - {q: "北京冬奥会是什么时候举办的？", a: "北京冬奥会于2022年2月4日到20日在北京和张家口举行。"}
    - {q: "初学者怎么学滑雪？", a: "初学者先跟教练上课，在初级道学会站姿、犁式刹车和转弯，一般三到五次就能自己滑下初级道。"}
    - {q: "北京冬奥会的吉祥物是什么？", a: "北京冬奥会的吉祥物是熊猫冰墩墩，冬残奥会的吉祥物是灯笼雪容融。"}
    - {q: "故宫有多少年历史？", a: "故宫始建于1406年，1420年建成，至今已有六百多年历史。"}
    - {q: "苏翊鸣是谁？", a: "苏翊鸣，2004年出生于吉林省吉林市，中国单板滑雪运动员，北京冬奥会单板滑雪男子大跳台冠军。"}
selection: {budget_tokens: 1024}
generation: {max_tokens: 64, temperature: 0.8, top_p: 0.9, repetition_penalty: 1.15}
"""
ZH_QUESTIONS = [
    ("谷爱凌好厉害呀", ["自由式滑雪", "2003", "旧金山", "运动员"]),
    ("北京冬奥会是哪一年办的？", ["2022", "2月4日"]),
    ("初学者怎么学滑雪？", ["教练", "初级道", "犁式", "站姿"]),
    ("冬奥会的吉祥物叫什么？", ["冰墩墩", "雪容融"]),
    ("故宫有多少年历史了？", ["六百", "600", "1420", "1406"]),
    ("苏翊鸣是谁呀？", ["单板", "2004", "吉林", "大跳台"]),
]
EN = """name: Robo
language: en
description: Robo is a friendly hotel robot who answers every question in one short sentence.
knowledge:
  qa:
    - {q: "When is breakfast served?", a: "Breakfast is served from 6:30 to 10:00 in the Cloud Restaurant on the second floor."}
    - {q: "Is there a swimming pool?", a: "Yes, the heated indoor pool on the fifth floor is open from 7:00 to 22:00."}
    - {q: "What is the wifi password?", a: "The network is YunQi-Guest and the password is on the back of your key card holder."}
    - {q: "How do I get here from the railway station?", a: "Take metro line 1 to Longxiangqiao station and walk five minutes from exit C."}
    - {q: "Can I bring my dog?", a: "Sorry, pets cannot stay at the hotel, except guide dogs."}
    - {q: "When is check-out?", a: "Check-out is before 12:00 noon; ask the front desk for a late check-out."}
selection: {budget_tokens: 600}
generation: {max_tokens: 32, temperature: 0.7, top_p: 0.9, repetition_penalty: 1.15}
"""
EN_QUESTIONS = [
    ("What time is breakfast?", ["6:30", "10:00", "Cloud Restaurant", "second floor"]),
    ("Do you have a pool?", ["fifth floor", "7:00", "22:00", "heated"]),
    ("What's the wifi password?", ["YunQi", "key card"]),
    ("How do I get to the hotel from the station?", ["line 1", "Longxiangqiao", "exit C", "five minutes"]),
    ("Can my dog stay with me?", ["guide dog", "cannot", "Sorry", "pets"]),
    ("When do I have to check out?", ["12:00", "noon"]),
]
MODELS = {"default": (ZH, ZH_QUESTIONS), "smollm2": (EN, EN_QUESTIONS)}


def run(model: str, seeds: int) -> list[tuple[str, str, float, float, float, float]]:
    from xdai.backends import get_backend
    from xdai.persona import load_persona
    from xdai.turn import Agent

    text, questions = MODELS[model]
    path = Path(tempfile.mkdtemp(prefix="rendering-")) / "persona.yaml"
    path.write_text(text, encoding="utf-8")
    backend = get_backend("llama_cpp", model)
    rows = []
    for rendering in ("chat", "transcript"):
        for rerank in (0, 3):
            used = unfaithful = total = 0
            started = time.perf_counter()
            for seed in range(seeds):
                persona = load_persona(path)
                persona.override_generation({"seed": 100 + seed, "rerank": rerank}, "benchmark")
                agent = Agent(persona, backend=backend, rendering=rendering)
                for question, evidence in questions:
                    reply = asyncio.run(_ask(agent, question))
                    total += 1
                    used += any(e.lower() in reply.text.lower() for e in evidence)
                    unfaithful += not check_prompt_reply(reply.text, reply.prompt).faithful
            rows.append((model, rendering, rerank, used / total, unfaithful / total,
                         (time.perf_counter() - started) / total))
            print(f"{model:<8} {rendering:<10} rerank {rerank}: fact use {used / total:.0%}, "
                  f"unfaithful {unfaithful / total:.0%}, {rows[-1][-1]:.1f} s/reply", flush=True)
    return rows


async def _ask(agent: Any, question: str) -> Any:
    return [event async for event in agent.respond(agent.new_history(), question)][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="default,smollm2")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        rows += run(model, args.seeds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n| model | rendering | rerank | fact use | unfaithful | s/reply |  (load {load:.1f} on {os.cpu_count()} cores)")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, rendering, rerank, used, unfaithful, seconds in rows:
        print(f"| {model} | {rendering} | {rerank} | {used:.0%} | {unfaithful:.0%} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
