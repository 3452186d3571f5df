"""`--generate-qa`: QA pairs written from descriptions by a language model.

XDAI grew its QA store by running a question generator over descriptions; here a `Fill` function plays that
part: first it asks a question the description answers, then it answers it from the description. The knowledge
package knows no model: the application hands it a `Fill` (``xdai knowledge --generate-qa`` builds one from the
configured backend). Generated items keep the description's provenance and carry the tag ``generated``. Off by
default: a small model writes plausible but unchecked pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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

Fill = Callable[[str, int], str]
"""(prompt, max_tokens) -> the model's greedy continuation of `prompt`, up to the end of its line."""


def _complete(fill: Fill, prompt: str, max_tokens: int) -> str:
    return re.sub(r"\s+", " ", fill(prompt, max_tokens)).strip()


def generate_qa(descriptions: list[Item], fill: Fill, *, progress: bool = False, max_tokens: int = 64) -> list[Item]:
    """One QA pair per description; a description the model cannot question (empty output) gets none."""
    out: list[Item] = []
    for item in tqdm(descriptions, desc="generate QA", unit="desc", disable=not progress, leave=False):
        prompts = PROMPTS[lang_of(item.text)]
        fields = {"title": item.title or "", "text": item.text[:1500]}
        q = _complete(fill, prompts["question"].format(**fields), max_tokens)
        if not q:
            continue
        a = _complete(fill, prompts["answer"].format(q=q, **fields), max_tokens)
        if not a:
            continue
        out.append(replace(item, id="", kind="qa", text=f"{q}\n{a}", q=q, a=a, tags=[*item.tags, GENERATED_TAG], lang=lang_of(f"{q}\n{a}"),
                           source_record=f"{item.source_record} (generated QA)"))
    return out


def generate_qa_documents(sources: list[Any], fill: Fill, *, progress: bool = False) -> list[Item]:
    """QA pairs from every description in `sources`, written by `fill`.

    Bad records are left to the build itself to report (it reads the same sources)."""
    descriptions = [it for it in read_sources(sources, Problems(skip_bad=True)) if it.kind == "description"]
    if not descriptions:
        return []
    return generate_qa(descriptions, fill, progress=progress)
