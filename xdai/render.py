"""One `Prompt`, rendered for the model that reads it.

The parts of a prompt (`xdai.prompt`) say what goes in and why; how they are laid out depends on the model:

    glm         our GLM engine and THUDM checkpoints: XDAI's transcript with a native [MASK] and the grounded
                post-response after it (blank infilling).
    chat        chat-tuned causal models (the bundled Qwen, SmolLM2-Instruct, any GGUF or HF model with a chat
                template): the model's own template. Persona in the system turn, the selected exchanges as
                user/assistant turns in order, the retrieved QA pairs and descriptions as delimited reference
                material with an instruction to take facts only from it, leading the last user turn (right
                before the utterance, where XDAI says its QA pair), the reply as the assistant turn. The
                post-response stays out of the prompt: `Infill.after` is the user turn that follows the reply,
                which reranking scores.
    transcript  base causal models: the plain transcript XDAI uses, continued after the bot's speaker tag.

`renderer_for(backend)` picks by the backend and its model (GLM engine -> glm, a chat template -> chat, else
transcript), never by the persona. The chat template is a Jinja2 string, rendered the way Hugging Face's
`apply_chat_template` renders it (sandboxed, trim_blocks/lstrip_blocks, `raise_exception`, `tojson`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Protocol

from xdai.generation import Infill
from xdai.prompt import MASK, MAX_KNOWLEDGE_CHARS, Part, Prompt, clip_text, escape_text

RenderingName = Literal["glm", "chat", "transcript"]
RENDERINGS: tuple[str, ...] = ("auto", "glm", "chat", "transcript")
SENTINEL = "\u2063XDAI-REPLY\u2063"  # where the reply goes when the template is rendered with one in its place

# Per language: the opening of the system turn, the reference block and its rule, and the style examples' lead.
CHAT_TEXT = {
    "zh": {
        "role": "你是{bot}，正在和{user}聊天。始终以{bot}的身份、用{bot}的口吻回答，一两句话，简短自然。",
        "reference": "参考资料",
        "rule": (
            "回答时，人名、地名、时间、日期、数字等事实只能来自上面的参考资料和人物设定；参考资料里有答案，就用自己的话"
            "把它说出来；资料里没有的事实不要编造，可以老实说不知道。"
        ),
        "no_reference": "这一轮没有参考资料：不要编造人名、地名、时间、日期和数字，不知道的就老实说不知道。",
        "examples": "{bot}说话的语气示例（只学语气，不要照抄，也不是这次的对话）：",
        "qa": "问：{q}\n答：{a}",
        "block": "【{name}】\n{items}\n【{name}完】",
    },
    "en": {
        "role": "You are {bot}, chatting with {user}. Always answer as {bot}, in {bot}'s voice, in one or two short, "
                "natural sentences.",
        "reference": "Reference",
        "rule": (
            "Take facts (names, places, times, dates, numbers) only from the reference above and from your "
            "character description. When the reference holds the answer, say it in your own words; never invent "
            "a fact it does not hold: say you don't know."
        ),
        "no_reference": "There is no reference for this turn: invent no names, places, times, dates or numbers; "
                        "say you don't know when you don't.",
        "examples": "How {bot} talks (examples of tone only: do not copy them; they are not this conversation):",
        "qa": "Q: {q}\nA: {a}",
        "block": "{name}:\n{items}\n(end of {name_lower})",
    },
}


class Renderer(Protocol):
    """Lays a `Prompt` out for one family of models."""

    name: RenderingName

    def render(self, prompt: Prompt) -> Infill: ...


class TranscriptRenderer:
    """Base causal models: the transcript, continued after the bot's speaker tag (`Prompt.render`)."""

    name: RenderingName = "transcript"

    def render(self, prompt: Prompt) -> Infill:
        return prompt.render()


class GLMRenderer:
    """GLM blank infilling: the same transcript, whose [MASK] the GLM engine fills natively between `before` and
    the grounded post-response `after`."""

    name: RenderingName = "glm"

    def render(self, prompt: Prompt) -> Infill:
        return prompt.render()


@dataclass
class ChatTemplate:
    """A model's chat template (Jinja2) and the special-token spellings it may use."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def apply(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool) -> str:
        return _compiled(self.source).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
            eos_token=self.eos_token, tools=None, documents=None, **self.extra,
        )


@lru_cache(maxsize=8)
def _compiled(source: str) -> Any:
    """The template compiled as transformers compiles chat templates (a sandbox: a template is code)."""
    from datetime import datetime

    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class ChatRenderer:
    """Chat-tuned causal models: the prompt as messages through the model's own chat template.

    Every message's content passed `escape_text` when the prompt was built (chat markers like <|im_end|> are
    defused); here the template's own BOS/EOS spellings and the common [INST]/<s> markers are defused as well, so
    the rendered text's special tokens are the template's alone and a backend may tokenize them as such
    (`Infill.special`).
    """

    name: RenderingName = "chat"

    def __init__(self, template: ChatTemplate) -> None:
        self.template = template
        self._defuse = sorted({t for t in (template.bos_token, template.eos_token, "<s>", "</s>", "[INST]", "[/INST]")
                               if t}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for marker in self._defuse:
            text = text.replace(marker, marker.replace("<", "‹").replace(">", "›").replace("[", "［").replace("]", "］"))
        return text

    def messages(self, prompt: Prompt) -> list[dict[str, str]]:
        """system (persona, lore, style examples), then the selected exchanges as user/assistant turns, then the
        utterance, led by the reference material and the rule to take facts only from it."""
        words = CHAT_TEXT.get(prompt.language, CHAT_TEXT["en"])
        bot, user = prompt.bot_speaker, prompt.user_speaker
        system = [words["role"].format(bot=bot, user=user)]
        examples: list[str] = []
        reference: list[str] = []
        turns: list[dict[str, str]] = []
        utterance = ""
        for part in prompt.parts:
            if part.kind == "lore" and part.why.get("role") in ("user", "assistant"):
                turns.append({"role": part.why["role"], "content": _strip_speaker(part.text, prompt)})  # @@depth/@@role
            elif part.kind in ("persona", "lore"):
                system.append(part.text)
            elif part.kind == "example":
                examples.append(part.text.split("\n", 1)[1] if "\n" in part.text else part.text)
            elif part.kind in ("knowledge", "background", "memory"):  # a memory: what the user said before
                reference.append(_reference_text(part, words["qa"], (bot, user)))
            elif part.kind == "exchange":
                for role, key in (("user", "user"), ("assistant", "bot")):
                    text = _strip_speaker(_line_of(part, role == "user", prompt), prompt)
                    if text or part.why.get(key):
                        turns.append({"role": role, "content": text})
            elif part.kind == "utterance":
                utterance = _strip_speaker(part.text, prompt)
        if examples:
            system.append(words["examples"].format(bot=bot) + "\n" + "\n\n".join(examples))
        if reference:  # right before the utterance, as XDAI places its QA pair (measured: docs/turn.md)
            numbered = "\n".join(f"{i}. {text}" for i, text in enumerate(dict.fromkeys(reference), 1))
            name = words["reference"]
            block = words["block"].format(name=name, items=numbered, name_lower=name.lower())
            utterance = f"{block}\n{words['rule']}\n\n{utterance}"
        else:
            system.append(words["no_reference"])
        out = [{"role": "system", "content": "\n".join(system)}]
        out += turns
        out.append({"role": "user", "content": utterance})
        return [{"role": m["role"], "content": self._clean(m["content"])} for m in _merged(out)]

    def render(self, prompt: Prompt) -> Infill:
        messages = self.messages(prompt)
        before = self.template.apply(messages, add_generation_prompt=True)
        post = [p for p in prompt.parts if p.kind == "post_response"]
        after = None
        if post:
            text = self._clean(_strip_speaker(post[0].text, prompt))
            full = self.template.apply([*messages, {"role": "assistant", "content": SENTINEL},
                                        {"role": "user", "content": text}], add_generation_prompt=False)
            tail = full.split(SENTINEL, 1)[-1]
            end = tail.find(text)
            after = tail[: end + len(text)] if end >= 0 else tail
        return Infill(before=before, after=after, special=True)


def _merged(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Consecutive messages of one role joined (templates such as Llama-2's insist on alternation)."""
    out: list[dict[str, str]] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"] and m["role"] != "system":
            out[-1] = {"role": m["role"], "content": (out[-1]["content"] + "\n" + m["content"]).strip()}
        else:
            out.append(dict(m))
    return out


def _line_of(part: Part, user: bool, prompt: Prompt) -> str:
    """An exchange part's user or bot line (the part's text holds "speaker：text" lines)."""
    speaker = prompt.user_speaker if user else prompt.bot_speaker
    for line in part.text.split("\n"):
        if line.startswith(speaker) and line[len(speaker) : len(speaker) + 1] in ("：", ":"):
            return line
    return ""


def _strip_speaker(line: str, prompt: Prompt) -> str:
    for speaker in (prompt.user_speaker, prompt.bot_speaker):
        m = re.match(re.escape(speaker) + r"\s*[:：]\s?", line)
        if m:
            return line[m.end() :].strip()
    return line.strip()


def _reference_text(part: Part, qa_format: str, speakers: tuple[str, str]) -> str:
    """One reference item on one line: "问：q 答：a" for a QA pair, "title：text" for a description."""
    why = part.why

    def esc(text: Any) -> str:
        return clip_text(escape_text(str(text or ""), speakers), MAX_KNOWLEDGE_CHARS)

    q, a = why.get("q"), why.get("a")
    if why.get("item_kind") == "qa" and q and a:
        return qa_format.format(q=esc(q), a=esc(a)).replace("\n", " ")
    title, text = esc(why.get("title")), esc(why.get("text") or part.text)
    return f"{title}：{text}" if title and not text.startswith(title) else text


def chat_template_of(backend: Any) -> ChatTemplate | None:
    """The backend's model's chat template, when it has one (`backend.chat_template`: a Jinja2 string, and
    `backend.template_tokens`: {"bos_token", "eos_token"})."""
    source = getattr(backend, "chat_template", None)
    if not isinstance(source, str) or not source.strip():
        return None
    tokens = getattr(backend, "template_tokens", None) or {}
    return ChatTemplate(source, str(tokens.get("bos_token", "") or ""), str(tokens.get("eos_token", "") or ""))


# Models whose measured default differs from their family's (benchmarks/rendering.py, docs/turn.md): SmolLM2-135M
# has a chat template but uses the facts far more often in the plain transcript.
MEASURED_DEFAULTS: dict[str, RenderingName] = {"smollm2": "transcript"}


def measured_default(backend: Any) -> RenderingName | None:
    """The measured rendering for the backend's model, when the table names it (by model name or file name)."""
    names = [str(getattr(backend, "model", "") or "").lower(),
             str(getattr(backend, "model_path", "") or "").rsplit("/", 1)[-1].lower()]
    for key, rendering in MEASURED_DEFAULTS.items():
        if any(key in name for name in names):
            return rendering
    return None


def renderer_for(backend: Any, choice: str = "auto") -> Renderer:
    """The rendering for this backend's model: `choice` "auto" picks GLM infilling for our GLM engine, the
    measured default when `MEASURED_DEFAULTS` names the model, the chat template when the model has one, the
    transcript otherwise; a named choice forces it (measurement, tests). "chat" without a template is a
    ValueError."""
    if choice not in RENDERINGS:
        raise ValueError(f"unknown rendering {choice!r}: choose one of {', '.join(RENDERINGS)}")
    if choice == "glm" or (choice == "auto" and getattr(backend, "name", "") == "glm"):
        return GLMRenderer()
    if choice == "transcript" or (choice == "auto" and measured_default(backend) == "transcript"):
        return TranscriptRenderer()
    template = chat_template_of(backend)
    if template is not None:
        return ChatRenderer(template)
    if choice == "chat":
        raise ValueError(f"rendering 'chat': the model of backend {getattr(backend, 'name', backend)!r} has no "
                         "chat template")
    return TranscriptRenderer()


def rendered_text(infill: Infill) -> str:
    """The rendered prompt as a person reads it, the reply's place marked [MASK]."""
    return f"{infill.before}{MASK}{infill.after or ''}"


__all__ = ["CHAT_TEXT", "MEASURED_DEFAULTS", "RENDERINGS", "ChatRenderer", "ChatTemplate", "GLMRenderer", "Renderer", "TranscriptRenderer",
           "chat_template_of", "measured_default", "renderer_for", "rendered_text"]
