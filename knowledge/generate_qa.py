"""`--generate-qa`: QA pairs written from descriptions by the configured model backend.

XDAI grew its QA store by running a question generator over descriptions; here the configured backend
(`xdai.backends.get_backend`) plays that part: first it asks a question the description answers, then it
answers it from the description. Generated items keep the description's provenance and carry the tag
``generated``. Off by default: a small model writes plausible but unchecked pairs.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

from tqdm.auto import tqdm

from knowledge.item import Item
from knowledge.sources import Problems, lang_of, read_sources

PROMPTS = {
    "zh": {
        "question": "{title}介绍：{text}\n\n根据上面的介绍，提出一个它能回答的问题。\n问题：",
        "answer": "{title}介绍：{text}\n\n问题：{q}\n根据上面的介绍简短回答。\n回答：",
    },
    "en": {
        "question": "About {title}: {text}\n\nAsk one question that the text above answers.\nQuestion:",
        "answer": "About {title}: {text}\n\nQuestion: {q}\nAnswer briefly from the text above.\nAnswer:",
    },
}
GENERATED_TAG = "generated"


def _complete(backend: Any, prompt: str, max_tokens: int) -> str:
    from xdai.backends import GenerationSettings, Infill

    settings = GenerationSettings(temperature=0.0, top_p=1.0, max_tokens=max_tokens, stop=["\n"], seed=0)

    async def run() -> str:
        return "".join([piece async for piece in backend.fill(Infill(before=prompt), settings)])

    return re.sub(r"\s+", " ", asyncio.run(run())).strip()


def generate_qa(descriptions: list[Item], backend: Any, *, progress: bool = False, max_tokens: int = 64) -> list[Item]:
    """One QA pair per description; a description the model cannot question (empty output) gets none."""
    out: list[Item] = []
    for item in tqdm(descriptions, desc="generate QA", unit="desc", disable=not progress, leave=False):
        prompts = PROMPTS[lang_of(item.text)]
        fields = {"title": item.title or "", "text": item.text[:1500]}
        q = _complete(backend, prompts["question"].format(**fields), max_tokens)
        if not q:
            continue
        a = _complete(backend, prompts["answer"].format(q=q, **fields), max_tokens)
        if not a:
            continue
        out.append(replace(item, id="", kind="qa", text=f"{q}\n{a}", q=q, a=a, tags=[*item.tags, GENERATED_TAG], lang=lang_of(f"{q}\n{a}"),
                           source_record=f"{item.source_record} (generated QA)"))
    return out


def generate_qa_documents(sources: list[Any], config: Any, *, progress: bool = False) -> list[Item]:
    """QA pairs from every description in `sources`, with the backend `config.backend` names.

    Bad records are left to the build itself to report (it reads the same sources)."""
    from xdai.backends import get_backend

    descriptions = [it for it in read_sources(sources, Problems(skip_bad=True)) if it.kind == "description"]
    if not descriptions:
        return []
    backend = get_backend(config.backend.name, config.backend.model)
    return generate_qa(descriptions, backend, progress=progress)
