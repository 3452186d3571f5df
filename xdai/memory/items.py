"""What a memory is: a fact the user stated about themselves, kept as a QA pair, or a session summary, kept as a
description — knowledge about the user, curated like any other knowledge and retrieved the same way.

A `Fact` is what an extractor finds in one utterance (slot, value). The store turns it into a `MemoryItem`: a QA
pair in the utterance's language ("用户住在哪里？ — 杭州"), its statement ("用户住在杭州"), where it came from
(session, seq), when, and — once a later statement contradicts it — the earlier versions in its `history`.
Items are keyed per user and bot by what they are about (`Fact.key`): a new value for the same key supersedes
the old one instead of sitting beside it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# Slots a fact can fill. Single-valued slots are superseded by a new value; like/dislike/plan are keyed by value.
SLOTS: tuple[str, ...] = ("name", "age", "location", "hometown", "occupation", "workplace", "like", "dislike",
                          "plan", "family", "pet")
SINGLE = frozenset({"name", "age", "location", "hometown", "occupation", "workplace"})
USER_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")  # a user id is validated like a bot name
MAX_VALUE_CHARS = 40  # a longer "value" is a sentence, not a fact

# q, a, statement per slot and language; {v} the value, {r} a relation (family, pet), {x} an aspect verb (吃/eat).
_TEMPLATES: dict[str, dict[str, tuple[str, str, str]]] = {
    "zh": {
        "name": ("用户叫什么名字？", "{v}", "用户叫{v}"),
        "age": ("用户多大了？", "{v}岁", "用户{v}岁"),
        "location": ("用户住在哪里？", "{v}", "用户住在{v}"),
        "hometown": ("用户是哪里人？", "{v}", "用户来自{v}"),
        "occupation": ("用户是做什么工作的？", "{v}", "用户是{v}"),
        "workplace": ("用户在哪里工作或上学？", "{v}", "用户在{v}工作或上学"),
        "like": ("用户喜欢{x}什么？", "{v}", "用户喜欢{x}{v}"),
        "favorite": ("用户最喜欢{x}什么？", "{v}", "用户最喜欢{x}{v}"),
        "dislike": ("用户不喜欢{x}什么？", "{v}", "用户不喜欢{x}{v}"),
        "plan": ("用户有什么打算？", "{v}", "用户打算{v}"),
        "family": ("用户的{r}叫什么？", "{v}", "用户的{r}叫{v}"),
        "pet": ("用户养的{r}叫什么？", "{v}", "用户养了一只{r}，叫{v}"),
    },
    "en": {
        "name": ("What is the user's name?", "{v}", "The user's name is {v}"),
        "age": ("How old is the user?", "{v}", "The user is {v} years old"),
        "location": ("Where does the user live?", "{v}", "The user lives in {v}"),
        "hometown": ("Where is the user from?", "{v}", "The user is from {v}"),
        "occupation": ("What does the user do for a living?", "{v}", "The user is a {v}"),
        "workplace": ("Where does the user work or study?", "{v}", "The user works or studies at {v}"),
        "like": ("What does the user like{x}?", "{v}", "The user likes{x} {v}"),
        "favorite": ("What is the user's favorite{x}?", "{v}", "The user's favorite{x} is {v}"),
        "dislike": ("What does the user dislike{x}?", "{v}", "The user dislikes{x} {v}"),
        "plan": ("What is the user planning to do?", "{v}", "The user plans to {v}"),
        "family": ("What is the name of the user's {r}?", "{v}", "The user's {r} is called {v}"),
        "pet": ("What is the user's {r} called?", "{v}", "The user has a {r} called {v}"),
    },
}
_EN_ASPECT = {"吃": " to eat", "喝": " to drink", "看": " to watch", "听": " to listen to", "玩": " to play",
              "food": " food", "drink": " drink", "movie": " movie", "book": " book", "sport": " sport",
              "music": " music", "color": " color", "colour": " colour", "game": " game", "song": " song"}


def normalize(value: str) -> str:
    """A value as compared: NFKC, case-folded, inner whitespace collapsed, edge punctuation dropped."""
    text = unicodedata.normalize("NFKC", value).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .,!?;:'\"，。！？；：、“”‘’")


@dataclass(frozen=True)
class Fact:
    """One durable fact the user stated about themselves: `slot` (one of SLOTS) and `value` (their own words).

    `relation` names whose name a family/pet fact gives ("女儿", "dog"); `aspect` what a like is about ("吃",
    "food"); `favorite` marks "最喜欢…"/"my favorite…" (one favorite per aspect). `source` says who found it:
    "rules" or "model"."""

    slot: str
    value: str
    relation: str = ""
    aspect: str = ""
    favorite: bool = False
    source: str = "rules"

    @property
    def key(self) -> str:
        """What the fact is about: a later fact with the same key supersedes an earlier one."""
        if self.slot in SINGLE:
            return self.slot
        if self.slot in ("family", "pet"):
            return f"{self.slot}:{normalize(self.relation)}"
        if self.slot == "like" and self.favorite:
            return f"favorite:{self.aspect or '-'}"
        if self.slot in ("like", "dislike"):
            return f"pref:{normalize(self.value)}"
        return f"{self.slot}:{normalize(self.value)}"

    @property
    def label(self) -> str:
        """The value as the labelled set writes it: "relation:value" for family and pets."""
        return f"{self.relation}:{self.value}" if self.slot in ("family", "pet") else self.value

    def qa(self, lang: str) -> tuple[str, str, str]:
        """(question, answer, statement) in `lang` ("zh" or "en")."""
        table = _TEMPLATES["zh" if lang == "zh" else "en"]
        kind = "favorite" if self.slot == "like" and self.favorite else self.slot
        q, a, text = table[kind]
        if lang == "zh":
            aspect = self.aspect if self.aspect in ("吃", "喝", "看", "听", "玩") else ""
        else:
            aspect = _EN_ASPECT.get(self.aspect, "")
            if kind == "favorite" and not aspect:
                aspect = " thing"
        fill = {"v": self.value, "r": self.relation, "x": aspect}
        return q.format(**fill), a.format(**fill), text.format(**fill)


Kind = Literal["qa", "description"]


@dataclass
class MemoryItem:
    """One memory of a user, for one bot. `history` holds the versions it superseded, oldest first."""

    id: str
    user: str  # namespaced: "TENANT/USER" under API keys, the plain user otherwise
    bot: str
    key: str
    kind: Kind
    slot: str
    text: str
    lang: str = "zh"
    q: str | None = None
    a: str | None = None
    value: str = ""
    session: str | None = None  # provenance: the session and the seq of the message it came from
    seq: int | None = None
    created: float = 0.0
    updated: float = 0.0
    version: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    vector: Any = field(default=None, repr=False, compare=False)  # the cached embedding, for one embedder

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("vector", None)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemoryItem:
        known = {f for f in cls.__dataclass_fields__ if f != "vector"}
        return cls(**{k: v for k, v in data.items() if k in known})

    def embed_text(self) -> str:
        """What is embedded for retrieval: the QA pair, or the description."""
        return f"{self.q} {self.a}" if self.kind == "qa" and self.q and self.a else self.text

    def version_of(self) -> dict[str, Any]:
        """This version as a history entry (what a superseding fact keeps of it)."""
        return {"slot": self.slot, "q": self.q, "a": self.a, "value": self.value, "text": self.text,
                "session": self.session, "seq": self.seq, "updated": self.updated}


def check_user(user: str) -> str:
    """A user id as the protocol and the CLI accept it: ``^[a-z0-9_-]{1,64}$`` (ValueError otherwise)."""
    if not isinstance(user, str) or not USER_PATTERN.match(user):
        raise ValueError(f"user {user!r}: a user id is 1-64 characters of a-z, 0-9, '_' and '-'")
    return user


def namespaced(user: str, tenant: str | None) -> str:
    """The id memories are stored under: "TENANT/USER" when a tenant (an API key's) owns the user."""
    return f"{tenant}/{user}" if tenant else user
