"""What a question asks for, and which predicates (and values) answer it: the lexical half of "the right fact first".

"那里面能游玩多长时间？" names no predicate, but asks for a duration: 建议游玩时间's value "2小时 - 4小时" is one, the
周边景点 pair's is not. Two signals, both independent of the domain:

- **answer types**: question words that expect a date, a clock time, a duration, an amount of money, a place, a
  phone number, a person or a count, and regular expressions that recognise each in a value;
- **predicate words**: how much of a predicate's name the question spells out ("导演是谁" -> 导演, "哪年上映"
  -> 上映时间), as a share of the predicate's character bigrams found in the question.

`knowledge.fact_ranker` combines these with the predicate names' embeddings, the entity the dialogue is about and
the first stage's dense and lexical scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from knowledge.bm25 import normalize

_NOT_WORD = re.compile(r"[\W_]+")
_LIST_SPLIT = re.compile(r"[、，,/;；|和与及]+|\s{1,}")
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class AnswerType:
    name: str
    question: re.Pattern[str]  # words in a question that expect this type
    value: re.Pattern[str]  # a value of this type


ANSWER_TYPES: tuple[AnswerType, ...] = (
    AnswerType("date", re.compile(r"哪一?年|几几年|什么时候|啥时候|何时|哪天|几号|几月|日期|生日|多大了?|年龄|年纪|"
                                  r"\bwhen\b|what year|what date|how old", re.I),
               re.compile(r"\d{4}\s*年|\d{4}[-./]\d{1,2}|\d{1,2}\s*月\s*\d{1,2}\s*[日号]|\b(?:1[89]|20)\d{2}\b")),
    AnswerType("clock", re.compile(r"几点|开门|关门|营业|开放时间|开放吗|开着|闭馆|what time|opening", re.I),
               re.compile(r"\d{1,2}\s*[:：]\s*\d{2}|全天|闭馆|\d{1,2}\s*点")),
    AnswerType("duration", re.compile(r"多长时间|多少时间|多久|多长|几个?小时|几分钟|几天|时长|片长|玩多|how long", re.I),
               re.compile(r"\d+(?:\.\d+)?\s*(?:个?小时|分钟|分|秒|天|min|hour|h\b)|半天|一天|两天", re.I)),
    AnswerType("money", re.compile(r"多少钱|门票|票价|收费|免费|价格|价钱|[贵便]|花费|花了|成本|票房|预算|投资|多少美元|"
                                   r"how much|price|cost", re.I),
               re.compile(r"\d[\d,.]*\s*(?:元|块|美元|万|亿|美金|港币|欧元|日元|英镑|rmb|usd)|免费|\$\s*\d", re.I)),
    AnswerType("place", re.compile(r"在哪|哪里|哪儿|什么地方|地址|位置|怎么去|哪个城市|哪个国家|哪国|哪里人|出生地|\bwhere\b",
                                   re.I),
               re.compile(r"[省市区县镇乡村路街道号巷州]|国$|美国|中国|英国|日本|韩国|法国|德国|香港|台湾")),
    AnswerType("phone", re.compile(r"电话|联系方式|号码|热线|phone", re.I),
               re.compile(r"\d{3,4}\s*[-－]\s*\d{6,8}|\b\d{11}\b|\b\d{7,8}\b")),
    AnswerType("person", re.compile(r"谁|哪位|什么人|哪些人|\bwho\b", re.I), re.compile(r"(?!)")),  # see is_person_list
    AnswerType("count", re.compile(r"几首|多少首|几个|多少个|几部|多少部|几张|多少张|几集|多少集|how many", re.I),
               re.compile(r"^\s*\d+\s*(?:首|个|部|张|集)?\s*$")),
)


_CLAUSE = re.compile(r"[^，。！？；,.!?;…\n]+[，。！？；,.!?;…\n]*")
_ASKING = re.compile(r"[？?]|吗|呢|什么|啥|哪|谁|几|多少|多久|多长|怎么|如何|是否|有没有|能不能|可不可以|知道.{0,12}不|"
                     r"\b(?:what|where|who|when|how|which|whose|is|are|does|do|can)\b", re.I)


def question_part(text: str) -> str:
    """The clauses of an utterance that ask something ("门票40元，那它周边还有什么景点？" -> "那它周边还有什么景点？"),
    or the whole utterance when none does: a value the speaker states is no evidence of what they ask for."""
    asking = [c for c in _CLAUSE.findall(text) if _ASKING.search(c)]
    return "".join(asking) if asking else text


def question_types(text: str) -> frozenset[str]:
    """The answer types `text` asks for (empty: it asks for none of them)."""
    return frozenset(t.name for t in ANSWER_TYPES if t.question.search(text))


def is_person_list(value: str) -> bool:
    """A value that reads as names: a short list of 2-12 character words without digits ("三船敏郎、志村乔")."""
    value = value.strip()
    if not value or len(value) > 60 or _DIGIT.search(value):
        return False
    words = [w for w in _LIST_SPLIT.split(value) if w]
    return bool(words) and all(2 <= len(w) <= 12 for w in words) and len(words) <= 8


@lru_cache(maxsize=65536)
def value_types(value: str) -> frozenset[str]:
    """The answer types a value is (a ticket price is money, "8:30-17:00" a clock time, "2小时 - 4小时" a duration)."""
    found = {t.name for t in ANSWER_TYPES if t.value.search(value)}
    if is_person_list(value):
        found.add("person")
    return frozenset(found)


@lru_cache(maxsize=65536)
def _units(text: str) -> frozenset[str]:
    """Character bigrams of a text without punctuation (its characters, for a one-character text)."""
    text = _NOT_WORD.sub("", normalize(text))
    if len(text) <= 1:
        return frozenset(text)
    return frozenset(text[i : i + 2] for i in range(len(text) - 1))


def predicate_coverage(question: str, predicate: str) -> float:
    """The share of a predicate name's bigrams the question spells out: 1.0 for "导演是谁" and 导演, 0.33 for
    "哪年上映" and 上映时间 (上映 of 上映/映时/时间)."""
    units = _units(predicate)
    if not units:
        return 0.0
    return len(units & _units(question)) / len(units)


def stripped(text: str) -> str:
    """Lower case, NFKC, no punctuation or spaces: the form in which a value is looked for in a dialogue."""
    return _NOT_WORD.sub("", normalize(text))


def already_said(value: str, said: str, head: int = 12) -> bool:
    """Whether a value (its first `head` characters, at least two) occurs in `said` (both `stripped`)."""
    value = value[:head]
    return len(value) >= 2 and value in said


def list_said(value: str, said: str) -> bool:
    """Whether most names of a list value occur in `said` (`stripped`): "声乐、钢琴" in "他擅长声乐和钢琴"."""
    parts = [stripped(p) for p in _LIST_SPLIT.split(value)]
    parts = [p for p in parts if len(p) >= 2]
    return len(parts) > 1 and sum(p in said for p in parts) * 2 >= len(parts)
