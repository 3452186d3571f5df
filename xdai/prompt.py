"""The annotated prompt: ordered parts that each remember why they are there, fitted to a token budget.

XDAI grounds a reply by making knowledge look like conversation: the most similar QA pair is said just before
the exchange (or the utterance) it supports, description-style knowledge becomes a background prefix, and the
prompt ends with the bot's speaker tag, the [MASK] to fill and, when a condition is active, the grounded
post-response the reply must lead to. `PromptBuilder` assembles those parts; `Prompt` renders them to an
`Infill` for a backend and explains them to a person (`explain()`, `to_json()`).

Everything that comes from outside the persona file (user text, knowledge, history) passes `escape_text`:
control characters and line breaks become spaces, and speaker tags, [MASK] and chat-template markers are
defused, so such text is data on one line and never changes the prompt's structure.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from xdai.backends.base import Infill
from xdai.history import Exchange, ScoredExchange
from xdai.lorebook import Placement, placement

PartKind = Literal[
    "persona", "lore", "background", "example", "memory", "knowledge", "exchange", "utterance", "mask",
    "post_response"
]
REQUIRED = math.inf
MASK = "[MASK]"
# Priorities of optional parts (higher is kept longer); a part's relevance score in [0, 1) breaks ties in a tier.
TIER_LAST_EXCHANGE = 100.0
TIER_UTTERANCE_KNOWLEDGE = 90.0
TIER_MEMORY = 80.0  # what the user told the bot in earlier sessions (xdai.memory), when relevant to this turn
TIER_EXCHANGE = 50.0
TIER_EXCHANGE_KNOWLEDGE = 40.0
TIER_BACKGROUND = 30.0
TIER_LORE = 20.0
TIER_EXAMPLE = 10.0
# One knowledge text may take at most this many characters: a long encyclopedia paragraph must not starve history.
MAX_KNOWLEDGE_CHARS = 360
MIN_UTTERANCE_TOKENS = 32

_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0002ffff]")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: one token per CJK character, one per ~3.5 other characters.

    Close to Qwen/GLM tokenizers on mixed Chinese/English text, and cheap enough to run on every part.
    """
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 3.5)


def escape_text(text: str, speakers: Sequence[str] = ()) -> str:
    """Make outside text safe to place on one speaker line: it stays data, whatever it contains.

    Control/format characters and line/paragraph separators become spaces (so text cannot open a new speaker
    line), runs of whitespace collapse, "Name:" / "Name：" for our speakers becomes "Name∶" (not a tag), and
    [MASK] and chat-template markers (<|...|>) are defused.
    """
    cleaned = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co") else ch for ch in text)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    cleaned = re.sub(r"\[\s*mask\s*\]", "［MASK］", cleaned, flags=re.IGNORECASE)
    cleaned = cleaned.replace("<|", "‹|").replace("|>", "|›")
    for speaker in sorted({s for s in speakers if s}, key=len, reverse=True):
        cleaned = re.sub(re.escape(speaker) + r"\s*[:：]", speaker + "\u2236", cleaned)
    return cleaned


def clip_text(text: str, max_chars: int) -> str:
    """Cut `text` to `max_chars`, marking the cut with an ellipsis."""
    return text if len(text) <= max_chars else text[: max(max_chars - 1, 0)].rstrip() + "…"


def clip_middle(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    """Fit `text` into `max_tokens` keeping its head and tail (a long message's point is often at either end)."""
    if count(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the largest kept length whose clipped form fits
        mid = (lo + hi + 1) // 2
        head, tail = text[: mid // 2], text[len(text) - (mid - mid // 2) :]
        if count(f"{head} … {tail}") <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    head, tail = text[: lo // 2], text[len(text) - (lo - lo // 2) :]
    return f"{head} … {tail}".strip()


@dataclass
class Part:
    """One piece of the prompt: its rendered text, how much it matters, and why it is there."""

    kind: PartKind
    text: str
    priority: float = REQUIRED
    why: dict[str, Any] = field(default_factory=dict)
    anchor: int | None = None  # a knowledge part dropped together with the exchange it supports
    tokens: int = 0

    @property
    def required(self) -> bool:
        return self.priority == REQUIRED

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            "tokens": self.tokens,
            "priority": None if self.required else round(self.priority, 6),
            "why": self.why,
        }


@dataclass
class Prompt:
    """The parts kept (in prompt order), the parts dropped to fit the budget, and the selection behind them."""

    parts: list[Part]
    dropped: list[Part]
    budget_tokens: int
    bot_speaker: str
    user_speaker: str
    selection: list[ScoredExchange] = field(default_factory=list)
    condition: str | None = None
    language: str = "zh"
    suggestions: list[str] = field(default_factory=list)
    rendering: str = "transcript"  # how the model reads it (`xdai.render`); set by the agent
    rendered: Infill | None = None  # ...and the text it reads; None: the transcript, `render()`
    rerank: dict[str, Any] | None = None  # the candidates and their scores, when the reply was reranked

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.parts)

    def render(self) -> Infill:
        """Text before the [MASK] (ending with the bot's speaker tag) and the post-response line after it."""
        before = "\n".join(p.text for p in self.parts if p.kind != "post_response")
        post = [p.text for p in self.parts if p.kind == "post_response"]
        return Infill(before=before, after=("\n" + post[0]) if post else None)

    def for_model(self) -> Infill:
        """What the model reads: the rendering the agent chose for it (`xdai.render`), else the transcript."""
        return self.rendered if self.rendered is not None else self.render()

    @property
    def text(self) -> str:
        """The whole prompt as a person reads it, [MASK] included."""
        infill = self.render()
        return f"{infill.before}{MASK}{infill.after or ''}"

    @property
    def model_text(self) -> str:
        """The prompt as the model reads it (its rendering), the reply's place marked [MASK]."""
        infill = self.for_model()
        return f"{infill.before}{MASK}{infill.after or ''}"

    def stop_sequences(self) -> list[str]:
        """Where a reply ends: the next line of either speaker, or an example dialogue's label (a reply must
        never carry one: "（示例对话）" at the end of a follow-up was the model starting the next example)."""
        tags = [f"\n{s}{sep}" for s in (self.user_speaker, self.bot_speaker) for sep in ("：", ":")]
        return tags + [EXAMPLE_LABELS[lang] for lang in ("zh", "en")]

    def grounding(self) -> list[dict[str, Any]]:
        """The knowledge the reply is grounded on: {source_id, kind, score, text} per knowledge/background part."""
        out = []
        for part in self.parts:
            if part.kind in ("knowledge", "background", "lore", "memory"):
                out.append(
                    {
                        "source_id": part.why.get("id", ""),
                        "kind": part.why.get("item_kind", part.kind),
                        "score": part.why.get("score"),
                        "text": part.why.get("text", part.text),
                    }
                )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "bot_speaker": self.bot_speaker,
            "user_speaker": self.user_speaker,
            "language": self.language,
            "condition": self.condition,
            "budget_tokens": self.budget_tokens,
            "tokens": self.tokens,
            "text": self.text,
            "infill": {"before": self.render().before, "after": self.render().after},
            "rendering": self.rendering,
            "rendered": {"before": self.for_model().before, "after": self.for_model().after,
                         "special": self.for_model().special},
            "rerank": self.rerank,
            "parts": [p.to_json() for p in self.parts],
            "dropped": [p.to_json() for p in self.dropped],
            "history": [s.to_json() for s in self.selection],
            "grounding": self.grounding(),
            "suggestions": self.suggestions,
        }

    def explain(self) -> str:
        """A compact, readable account: every part, its reason, and what the budget cut."""
        kept = sum(1 for s in self.selection if s.selected)
        knowledge = sum(1 for p in self.parts if p.kind in ("knowledge", "background", "lore"))
        memories = sum(1 for p in self.parts if p.kind == "memory")
        lines = [
            f"prompt: {self.tokens}/{self.budget_tokens} tokens · {kept} of {len(self.selection)} earlier exchanges"
            f" · {knowledge} knowledge part(s)" + (f" · {memories} memory part(s)" if memories else "")
            + (f" · condition {self.condition!r}" if self.condition else ""),
            "",
        ]
        for part in self.parts:
            lines.append(f"[{part.kind}] {_reason(part)}")
            lines.extend("    " + line for line in (part.text + MASK if part.kind == "mask" else part.text).splitlines())
        if self.dropped:
            lines += ["", "dropped to fit the budget (least relevant first):"]
            lines.extend(f"  - [{p.kind}] {_reason(p)}: {clip_text(p.text.replace(chr(10), ' / '), 60)}" for p in self.dropped)
        if self.selection:
            lines += ["", "history selection: score = alpha^(t-i) × cos(emb([U_i;S_i]), emb(U_t))"]
            for s in self.selection:
                mark = "kept (last)" if s.forced else "kept" if s.selected else "    "
                lines.append(
                    f"  #{s.index:<3} {mark:<11} {s.score:+.3f} = {s.decay:.3f} × {s.similarity:+.3f}  "
                    f"{clip_text(escape_text(s.exchange.user), 30)}"
                )
        return "\n".join(lines)


def _reason(part: Part) -> str:
    why = part.why
    if part.kind == "exchange":
        base = f"exchange #{why.get('index')} score {why.get('score', 0):+.3f}"
        return base + (" (last exchange, always kept)" if why.get("forced") else "")
    if part.kind in ("knowledge", "background"):
        target = why.get("for", "")
        return (
            f"{why.get('item_kind', part.kind)} {why.get('id', '')} score {why.get('score', 0):.3f}"
            f"{' for ' + target if target else ''} from {why.get('store', '?')}"
            f" ({why.get('source_file', '')} {why.get('source_record', '')})".rstrip()
        )
    if part.kind == "memory":
        budget = " (over the memory budget)" if why.get("dropped_by") == "memory budget" else ""
        return (f"memory {why.get('id', '')} score {why.get('score', 0):.3f}"
                f"{' cue ' + repr(why['matched']) if why.get('matched') else ''} ({why.get('memory_kind')} "
                f"{why.get('slot')}) from session {why.get('session')} seq {why.get('seq')} {why.get('time', '')}"
                f"{budget}").rstrip()
    if part.kind == "lore":
        return (f"lorebook entry keys={why.get('keys')} id={why.get('id')} matched={why.get('matched')!r}"
                f" score={why.get('score', 1.0):.2f} position={why.get('position')}")
    if part.kind == "example":
        return f"example dialogue {why.get('index')}"
    if part.kind == "persona":
        return f"persona {why.get('persona', '')} ({why.get('file', '')})"
    if part.kind == "post_response":
        return f"grounded post-response of condition {why.get('condition')!r}"
    if part.kind == "utterance":
        return "the user's utterance" + (" (clipped to fit the budget)" if why.get("clipped") else "")
    return "the reply goes here"


@dataclass
class Knowledge:
    """A retrieved knowledge item as the builder needs it (decoupled from any one store's classes)."""

    kind: str  # "qa" | "description"
    text: str
    score: float
    q: str | None = None
    a: str | None = None
    title: str | None = None
    id: str = ""
    store: str = ""
    source_file: str = ""
    source_record: str = ""

    @classmethod
    def from_hit(cls, hit: Any, *, store: str = "", score: float | None = None) -> Knowledge:
        item = hit.item
        return cls(
            kind=item.kind,
            text=item.text,
            score=float(hit.score if score is None else score),
            q=item.q,
            a=item.a,
            title=item.title or item.entity,
            id=item.id,
            store=store,
            source_file=item.source_file,
            source_record=item.source_record,
        )

    def why(self, target: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "item_kind": self.kind,
            "score": round(self.score, 6),
            "for": target,
            "store": self.store,
            "source_file": self.source_file,
            "source_record": self.source_record,
            "text": self.text,
            "q": self.q,
            "a": self.a,
            "title": self.title,
        }


EXAMPLE_LABELS = {"zh": "（示例对话）", "en": "(example dialogue)"}
_HEADER = {
    "zh": ("以下是{bot}和{user}的对话。", "{bot}的性格：{text}", "场景：{text}", "背景知识：{text}", EXAMPLE_LABELS["zh"]),
    "en": (
        "The following is a conversation between {bot} and {user}.",
        "{bot}'s personality: {text}",
        "Scenario: {text}",
        "Background: {text}",
        EXAMPLE_LABELS["en"],
    ),
}


class PromptBuilder:
    """Assembles a persona's prompt for one turn from already-selected history and retrieved knowledge.

    It does no retrieval and calls no model: `xdai.turn.Agent` decides what is relevant, this decides where it
    goes and what the budget keeps.
    """

    def __init__(self, persona: Any, *, count_tokens: Callable[[str], int] = estimate_tokens) -> None:
        self.persona = persona
        self.count = count_tokens
        self.bot = persona.bot_speaker or persona.name
        self.user = persona.user_speaker or ("用户" if persona.language == "zh" else "User")
        self.language = "zh" if persona.language == "zh" else "en"
        self.sep = "：" if self.language == "zh" else ": "

    # -- text helpers ------------------------------------------------------------------------------------------
    def _esc(self, text: str) -> str:
        return escape_text(text, (self.bot, self.user))

    def _own(self, text: str) -> str:
        """Persona-authored text: macros expanded, kept on one line per paragraph."""
        return self._esc(self.persona.fill_macros(text or ""))

    def line(self, speaker: str, text: str) -> str:
        return f"{speaker}{self.sep}{self._esc(text)}"

    # -- assembly ----------------------------------------------------------------------------------------------
    def build(
        self,
        utterance: str,
        *,
        selection: Sequence[ScoredExchange] = (),
        exchange_knowledge: dict[int, Knowledge] | None = None,
        utterance_knowledge: Knowledge | None = None,
        background: Sequence[Knowledge] = (),
        lore: Sequence[Any] = (),
        condition: tuple[str, str] | None = None,
        budget_tokens: int | None = None,
        memory: Sequence[Any] = (),
        memory_budget_tokens: int | None = None,
    ) -> Prompt:
        """Order the parts, then fit them to `budget_tokens` (the persona's budget when None).

        `memory`: the user's memories recalled for this turn, best first (`xdai.memory.recall.MemoryHit`: `text`,
        `score`, `why()`); they share `memory_budget_tokens` (the persona's ``selection.memory_budget_tokens``
        when None) and are dropped beyond it, least relevant first."""
        persona = self.persona
        budget = int(budget_tokens if budget_tokens is not None else persona.selection.budget_tokens)
        exchange_knowledge = exchange_knowledge or {}
        header, sep = _HEADER[self.language], self.sep
        parts: list[Part] = []

        # `lore` holds the book's activations (LoreHit: entry, stable id, matched key, score, placement) or bare
        # entries; each goes to a slot: (position, None), or ("at_depth", the exchange it precedes / None: the
        # utterance), see `xdai.lorebook`
        slots = [(hit, self._lore_slot(hit, selection)) for hit in lore]

        def lore_parts(position: str, anchor: int | None = None) -> None:
            hits = [h for h, slot in slots if slot == (position, anchor)]
            for rank, hit in enumerate(sorted(hits, key=lambda h: getattr(_lore_entry(h), "insertion_order", 0))):
                entry, where = _lore_entry(hit), _lore_placement(hit)
                content = _lore_content(hit)
                prio = float(getattr(entry, "priority", 0) or 0)
                entry_id = getattr(hit, "id", None) or getattr(entry, "entry_id", None) or getattr(entry, "id", None)
                speaker = {"user": self.user, "assistant": self.bot}.get(where.role or "")
                text = f"{speaker}{sep}{self._own(content)}" if speaker and position == "at_depth" else self._own(content)
                tier = 0.0 if where.ignore_on_max_context else TIER_LORE  # @@ignore_on_max_context: cut first
                parts.append(
                    Part(
                        "lore",
                        text,
                        tier + _unit(prio / (1.0 + abs(prio))) - rank * 1e-6,
                        {"keys": list(getattr(entry, "keys", []) or []), "position": position,
                         "insertion_order": getattr(entry, "insertion_order", 0), "priority": prio,
                         "id": f"lore:{entry_id if entry_id is not None else rank}", "text": content,
                         "matched": getattr(hit, "key", None), "score": float(getattr(hit, "score", 1.0)),
                         **({"depth": where.depth, "role": where.role or "system"} if position == "at_depth" else {})},
                    )
                )

        persona_why = {"persona": persona.name, "file": str(getattr(persona, "path", "") or "")}
        if persona.system_prompt:
            parts.append(Part("persona", self._own(persona.system_prompt), why=dict(persona_why, field="system_prompt")))
        lore_parts("before_char")
        intro = "" if persona.system_prompt else header[0].format(bot=self.bot, user=self.user)
        description = self._own(persona.description)
        parts.append(Part("persona", f"{intro}{' ' if self.language == 'en' else ''}{description}".strip(),
                          why=dict(persona_why, field="description")))
        if persona.personality:
            parts.append(Part("persona", header[1].format(bot=self.bot, text=self._own(persona.personality)),
                              why=dict(persona_why, field="personality")))
            lore_parts("personality")
        if persona.scenario:
            parts.append(Part("persona", header[2].format(text=self._own(persona.scenario)),
                              why=dict(persona_why, field="scenario")))
            lore_parts("scenario")
        if persona.post_history_instructions:
            # In a completion prompt nothing may sit between the user's line and the bot's tag, so the
            # post-history instructions close the header instead (see docs/turn.md).
            parts.append(Part("persona", self._own(persona.post_history_instructions),
                              why=dict(persona_why, field="post_history_instructions")))
        # The example dialogues come before anything chosen per turn (lore, background): the persona's text and its
        # examples then form one static prefix, evaluated once per bot and reused by every turn (a prefix cache).
        examples = list(persona.mes_example or [])
        for number, dialogue in enumerate(examples):
            lines = [header[4]] + [
                self.line(self.bot if ln.speaker == "bot" else self.user, self._own_raw(ln.text)) for ln in dialogue
            ]
            prio = TIER_EXAMPLE + _unit(1.0 - number / max(len(examples), 1))
            parts.append(Part("example", "\n".join(lines), prio, {"index": number}))
        lore_parts("after_char")
        for item in background:
            title = f"{self._esc(item.title)}{sep}" if item.title and not item.text.startswith(item.title) else ""
            text = header[3].format(text=title + clip_text(self._esc(item.text), MAX_KNOWLEDGE_CHARS))
            parts.append(Part("background", text, TIER_BACKGROUND + _unit(item.score), item.why("background")))

        memory_parts = self._memory_parts(memory, memory_budget_tokens)
        parts.extend(p for p in memory_parts if p.why.get("dropped_by") is None)

        last = max((s.index for s in selection if s.selected), default=None)
        for scored in selection:
            if not scored.selected:
                continue
            lore_parts("at_depth", scored.index)
            item = exchange_knowledge.get(scored.index)
            if item is not None:
                parts.append(self._qa_part(item, f"exchange #{scored.index}", TIER_EXCHANGE_KNOWLEDGE, scored.index))
            ex: Exchange = scored.exchange
            lines = [self.line(s, t) for s, t in ((self.user, ex.user), (self.bot, ex.bot)) if t.strip()]
            if not lines:
                continue
            prio = TIER_LAST_EXCHANGE if scored.index == last else TIER_EXCHANGE + _unit(scored.score)
            parts.append(Part("exchange", "\n".join(lines), prio, scored.to_json(), anchor=scored.index))
        lore_parts("at_depth", None)
        if utterance_knowledge is not None:
            parts.append(self._qa_part(utterance_knowledge, "utterance", TIER_UTTERANCE_KNOWLEDGE, None))
        parts.append(Part("utterance", self.line(self.user, utterance), why={"text": utterance}))
        parts.append(Part("mask", f"{self.bot}{sep}".rstrip() if self.language == "zh" else f"{self.bot}:"))
        if condition is not None:
            name, post = condition
            parts.append(Part("post_response", self.line(self.user, post), why={"condition": name, "text": post}))
        prompt = self._fit(parts, budget, utterance, list(selection), condition[0] if condition else None)
        prompt.dropped.extend(p for p in memory_parts if p.why.get("dropped_by") is not None)
        return prompt

    def _lore_slot(self, hit: Any, selection: Sequence[ScoredExchange]) -> tuple[str, int | None]:
        """Where a lore activation goes: its position (personality/scenario fall back to the entry's own position
        when the persona has no such section), and for "at_depth" the exchange it precedes, counting messages
        from the utterance (1) back; a depth inside an exchange lands before it, one past the oldest before it."""
        where = _lore_placement(hit)
        position = where.position
        if position in ("personality", "scenario") and not getattr(self.persona, position, ""):
            position = "after_char" if getattr(_lore_entry(hit), "position", None) == "after_char" else "before_char"
        if position != "at_depth":
            return position, None
        above, anchor = max(where.depth or 1, 1) - 1, None  # messages above the utterance to pass
        for scored in reversed([s for s in selection if s.selected]):
            if above <= 0:
                break
            messages = sum(1 for t in (scored.exchange.user, scored.exchange.bot) if t.strip())
            if messages:
                above, anchor = above - messages, scored.index
        return position, anchor

    def _memory_parts(self, memory: Sequence[Any], budget: int | None) -> list[Part]:
        """One part per recalled memory ("小呆记得：用户住在杭州"), in recall order; those past the memory budget
        are marked ``dropped_by: "memory budget"`` (the caller lists them as dropped)."""
        if budget is None:
            budget = int(getattr(self.persona.selection, "memory_budget_tokens", 120))
        lead = f"{self.bot}记得：" if self.language == "zh" else f"{self.bot} remembers: "
        parts, used = [], 0
        for hit in memory:
            part = Part("memory", lead + clip_text(self._esc(hit.text), MAX_KNOWLEDGE_CHARS),
                        TIER_MEMORY + _unit(hit.score), hit.why())
            part.tokens = self.count(part.text) + 1
            if used + part.tokens > budget:
                part.why["dropped_by"] = "memory budget"
            else:
                used += part.tokens
            parts.append(part)
        return parts

    def _own_raw(self, text: str) -> str:
        return self.persona.fill_macros(text or "")

    def _qa_part(self, item: Knowledge, target: str, tier: float, anchor: int | None) -> Part:
        if item.kind == "qa" and item.q and item.a:
            text = f"{self.line(self.user, item.q)}\n{self.line(self.bot, clip_text(item.a, MAX_KNOWLEDGE_CHARS))}"
        else:  # a description matched as QA: the bot says it
            text = self.line(self.bot, clip_text(item.text, MAX_KNOWLEDGE_CHARS))
        return Part("knowledge", text, tier + _unit(item.score), item.why(target), anchor=anchor)

    def _fit(
        self, parts: list[Part], budget: int, utterance: str, selection: list[ScoredExchange], condition: str | None
    ) -> Prompt:
        for part in parts:
            part.tokens = self.count(part.text) + 1  # + the line break
        total = sum(p.tokens for p in parts)
        dropped: list[Part] = []
        for victim in sorted((p for p in parts if not p.required), key=lambda p: p.priority):
            if total <= budget:
                break
            if victim in dropped:
                continue
            group = [victim] + [p for p in parts if victim.kind == "exchange" and p.kind == "knowledge"
                                and p.anchor == victim.anchor and p not in dropped]
            for p in group:
                dropped.append(p)
                total -= p.tokens
        kept = [p for p in parts if p not in dropped]
        if total > budget:  # required parts alone overflow: clip the utterance, then the persona texts
            utter = next(p for p in kept if p.kind == "utterance")
            room = max(budget - (total - utter.tokens), MIN_UTTERANCE_TOKENS)
            clipped = clip_middle(self._esc(utterance), room - self.count(f"{self.user}{self.sep}") - 1, self.count)
            utter.text = f"{self.user}{self.sep}{clipped}"
            utter.why["clipped"] = True
            total -= utter.tokens
            utter.tokens = self.count(utter.text) + 1
            total += utter.tokens
            for part in (p for p in kept if p.kind == "persona"):
                if total <= budget:
                    break
                room = max(budget - (total - part.tokens), 8)
                new_text = clip_middle(part.text, room, self.count)
                total += self.count(new_text) + 1 - part.tokens
                part.text, part.tokens = new_text, self.count(new_text) + 1
        for s in selection:  # an exchange cut by the budget is no longer "selected"
            if s.selected and any(p.kind == "exchange" and p.anchor == s.index for p in dropped):
                s.selected = False
        return Prompt(
            parts=kept,
            dropped=dropped,
            budget_tokens=budget,
            bot_speaker=self.bot,
            user_speaker=self.user,
            selection=selection,
            condition=condition,
            language=self.language,
        )


def _unit(x: float) -> float:
    """Squash a relevance score into [0, 1) so it orders parts within a tier without crossing tiers."""
    return min(max(float(x), 0.0), 0.999999)


def _lore_entry(hit: Any) -> Any:
    """The lorebook entry behind an activation (or the entry itself)."""
    return getattr(hit, "entry", hit)


def _lore_placement(hit: Any) -> Placement:
    """Where an activation's content goes: what the book said (LoreHit), else read from the entry itself."""
    if getattr(hit, "position", None) is not None and hasattr(hit, "entry"):
        return Placement(hit.position, hit.depth, hit.role, hit.ignore_on_max_context)
    entry = _lore_entry(hit)
    if hasattr(entry, "decorators"):
        return placement(entry)
    return Placement("after_char" if getattr(entry, "position", None) == "after_char" else "before_char")


def _lore_content(hit: Any) -> str:
    """The text an activation inserts: its content without the V3 decorators."""
    content = getattr(hit, "content", None) if hasattr(hit, "entry") else None
    if content is not None:
        return str(content)
    entry = _lore_entry(hit)
    return entry.decorators.content if hasattr(entry, "decorators") else str(getattr(entry, "content", ""))
