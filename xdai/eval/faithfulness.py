"""Faithfulness without a model: the factual claims a reply makes that nothing in its prompt supports.

A claim is a number with its unit (a date, a time of day, a price, a duration, a count) or a named entity (jieba's
person/place/organisation/proper-noun tags, capitalised Latin names). A claim is *supported* when its value appears in
the injected knowledge, the selected history, the persona or the utterance; otherwise it is *unsupported* — the
cheap, checkable core of "invented facts". A *contradiction* is a number in the reply where an injected knowledge
clause about the same thing (it shares a content word with the reply's clause, e.g. 开门) states a different number
of the same kind: "上午八点开门" against "每天早上七点开门".

The measure is deliberately conservative about what counts as a claim: a count of one ("一个", "一起") and numerals
without a unit are not claims, so everyday phrasing is not punished. It is a measure, not a proof: a paraphrased
number ("半小时" for "30分钟") counts as unsupported, and a fact invented without numbers or names goes unseen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

ENTITY_FLAGS = {"nr", "nrfg", "nrt", "ns", "nt", "nz"}
# The common surnames: a dictionary word jieba tags as a person's name is one only when it starts with one.
SURNAMES = set(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭"
    "陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤常温康施文牛樊葛邢安齐易"
    "乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴"
    "蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬"
    "边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查麻苑迟邝官封谈匡鞠惠荆乐冀郁胥南班储原栗燕楚鄢劳谌奚皮粟冼"
    "蔺楼盘满闻位厉伊仝区郜海阚花权强帅屠豆朴盖练廉禹井祖漆巴丰支卿国狄平计索宣晋相初门云容敬来扈晁芮都普阙浦戈伏鹿"
    "薄邸雍辜羊阿乌母裘亓修邰赫杭况那宿鲜印逯隆茹诸战慕危玉银亢嵇公哈湛宾戎勾茅利於呼居揭干但尉冶斯元束檀衣信展阴昝"
    "智幸奉植衡富尧闭由"
)
COMPOUND_SURNAMES = {"欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒", "夏侯",
                     "令狐", "独孤", "端木", "西门", "南宫", "轩辕"}
CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "亿": 100_000_000}
EN_NUMBERS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "twenty": 20, "thirty": 30, "hundred": 100, "thousand": 1000,
}
# unit -> kind. The kind decides which numbers may contradict each other (a time of day never contradicts a price).
UNIT_KINDS = {
    "年": "date", "月": "date", "日": "date", "号": "date",
    "点": "time", "时": "time", "点钟": "time", "am": "time", "pm": "time", "a.m.": "time", "p.m.": "time",
    "小时": "duration", "分钟": "duration", "天": "duration", "周": "duration", "个月": "duration", "秒": "duration",
    "hours": "duration", "hour": "duration", "minutes": "duration", "days": "duration", "years": "duration",
    "元": "price", "块": "price", "块钱": "price", "美元": "price", "yuan": "price", "dollars": "price",
    "%": "percent", "％": "percent", "percent": "percent",
    "岁": "age", "years old": "age",
    "米": "length", "公里": "length", "千米": "length", "km": "length", "m": "length",
}
COUNT_UNITS = "个位名枚座层次场届部本家间张条只人所项"
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in UNIT_KINDS), key=len, reverse=True))
_CN_NUM = "[零〇一二两三四五六七八九十百千万亿]+"
NUMBER = re.compile(
    rf"(?P<cur>[¥$￥])?\s?(?P<num>\d+(?:[.,:]\d+)?|{_CN_NUM})\s?(?P<unit>{_UNIT_ALT}|[{COUNT_UNITS}])?",
    re.IGNORECASE,
)
WEEKDAY = re.compile(r"(?:周|星期|礼拜)(?P<d>[一二三四五六日天])")
LATIN_NAME = re.compile(r"\b[A-Z][a-z]+(?:\s+(?:[A-Z][a-z]+|de|van|von|of))*(?:\s+[A-Z][a-z]+)?")
EN_NUMBER_WORD = re.compile(rf"\b(?P<num>{'|'.join(EN_NUMBERS)})\s+(?P<unit>{_UNIT_ALT})\b", re.IGNORECASE)
CLAUSE_SPLIT = re.compile(r"[，。！？；,!?;\n…]|(?<![0-9])\.(?![0-9])")
NOT_NAMES = {
    "I", "The", "He", "She", "It", "We", "You", "They", "My", "Your", "Our", "His", "Her", "Their", "Yes", "No",
    "Oh", "Hi", "Hello", "Well", "Sure", "Thanks", "Thank", "What", "Who", "Where", "When", "Why", "How", "This",
    "That", "There", "Here", "If", "And", "But", "So", "Or", "Of", "In", "On", "At", "To", "For", "With", "As",
    "Let", "Do", "Does", "Did", "Is", "Are", "Was", "Were", "Be", "Have", "Has", "Had", "Can", "Could", "Would",
    "Should", "Will", "Not", "Just", "Also", "Maybe", "Please", "Ah", "Wow", "Good", "Great", "Nice", "Okay", "OK",
    "Sorry", "Now", "Then", "Today", "Tomorrow", "Yesterday", "Every", "Some", "All", "Any", "One", "A", "An",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
}
STOPWORDS = set("的 了 是 在 我 你 他 她 它 们 也 就 都 和 与 及 或 有 没 不 很 还 又 这 那 吗 呢 吧 啊 呀 哦 么 个 之 其 以 而".split())
# Words that frame a number in time without saying what it is about: sharing one does not make two clauses
# statements of the same fact ("我每天八点起床" is not about "每天早上七点开门").
FRAMING = set("每天 每周 每年 每月 早上 上午 中午 下午 晚上 今天 明天 昨天 现在 平时 一般 大概 大约 左右 开始 时候 时间 我们 你们 他们".split())


@dataclass(frozen=True)
class Claim:
    """One checkable statement in a reply: its text, its kind, and its normalised value."""

    text: str
    kind: str  # date | time | duration | price | percent | age | length | count | weekday | entity
    value: str
    clause: str = field(default="", compare=False)


@dataclass(frozen=True)
class Contradiction:
    claim: Claim
    stated: str  # the knowledge clause that says otherwise
    shared: tuple[str, ...]  # the content words that make it the same thing


@dataclass(frozen=True)
class Faithfulness:
    """The verdict on one reply."""

    claims: tuple[Claim, ...]
    unsupported: tuple[Claim, ...]
    contradictions: tuple[Contradiction, ...]

    @property
    def faithful(self) -> bool:
        return not self.unsupported and not self.contradictions

    def to_dict(self) -> dict[str, object]:
        return {
            "claims": len(self.claims),
            "unsupported": [c.text for c in self.unsupported],
            "contradictions": [{"claim": x.claim.text, "stated": x.stated, "shared": list(x.shared)}
                               for x in self.contradictions],
        }


def cn_to_int(text: str) -> int | None:
    """二十三 -> 23, 一百 -> 100, 两千五百 -> 2500, 二〇二二 -> 2022; None when it is not a Chinese numeral."""
    if not text or any(ch not in CN_DIGITS and ch not in CN_UNITS for ch in text):
        return None
    if all(ch in CN_DIGITS for ch in text) and len(text) > 1:  # digit by digit: 二〇二二
        return int("".join(str(CN_DIGITS[ch]) for ch in text))
    total, section, digit = 0, 0, 0
    for ch in text:
        if ch in CN_DIGITS:
            digit = CN_DIGITS[ch]
        elif ch in ("万", "亿"):
            section = (section + digit) * CN_UNITS[ch]
            total += section
            section, digit = 0, 0
        else:
            section += (digit or 1) * CN_UNITS[ch]
            digit = 0
    return total + section + digit


def _value(num: str) -> str | None:
    num = num.strip()
    if num.lower() in EN_NUMBERS:
        return str(EN_NUMBERS[num.lower()])
    if num[0].isdigit():
        if ":" in num:
            hours, minutes = num.split(":", 1)
            return f"{int(hours)}" if int(minutes or 0) == 0 else f"{int(hours)}:{int(minutes):02d}"
        cleaned = num.replace(",", "")
        return str(float(cleaned)).removesuffix(".0")
    value = cn_to_int(num)
    return None if value is None else str(value)


def _number_claims(text: str) -> list[Claim]:
    out: list[Claim] = []
    for m in list(NUMBER.finditer(text)) + list(EN_NUMBER_WORD.finditer(text)):
        num, unit = m.group("num"), (m.group("unit") or "")
        cur = m.groupdict().get("cur")
        is_cn = not num[0].isdigit() and num.lower() not in EN_NUMBERS
        if is_cn and not unit and len(num) < 2:
            continue  # 一下, 之一, 一起: a lone Chinese digit without a unit is phrasing, not a claim
        if is_cn and num in ("万", "亿", "千", "百", "十"):
            continue
        value = _value(num)
        if value is None:
            continue
        if ":" in num and not unit:
            kind = "time"
        elif cur:
            kind = "price"
        elif unit:
            kind = UNIT_KINDS.get(unit.lower(), UNIT_KINDS.get(unit, "count"))
        else:
            kind = "count"
        if kind == "count" and value == "1":
            continue  # 一个, 一位: a count of one is how sentences are built
        if not unit and not cur and kind == "count" and not num[0].isdigit():
            continue
        out.append(Claim(m.group(0).strip(), kind, value))
    for m in WEEKDAY.finditer(text):
        day = m.group("d")
        out.append(Claim(m.group(0), "weekday", "7" if day in "日天" else str(CN_DIGITS[day])))
    return out


@lru_cache(maxsize=1)
def _posseg():  # jieba loads its dictionary on first use (~1 s); keep that off import
    import logging

    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    return jieba.posseg


def _person_like(word: str) -> bool:
    """Whether a word jieba tags as a person's name looks like one. Its dictionary tags everyday words so (滑雪,
    太棒了 are "nr"): a dictionary word counts only when it starts with a surname (or 老/小/阿 + surname); a word
    jieba found outside its dictionary (谷爱凌) counts as it is."""
    import jieba

    if word not in jieba.dt.FREQ:
        return True
    if word[:2] in COMPOUND_SURNAMES or word[0] in SURNAMES:
        return True
    return word[0] in "老小阿" and len(word) >= 2 and word[1] in SURNAMES


def _entity_claims(text: str) -> list[Claim]:
    out: list[Claim] = []
    if re.search(r"[\u4e00-\u9fff]", text):
        for pair in _posseg().cut(text):
            if pair.flag in ENTITY_FLAGS and len(pair.word) >= 2 and not re.search(r"[A-Za-z0-9]", pair.word):
                word = pair.word[1:] if pair.word[0] in "和与跟同及" and len(pair.word) > 2 else pair.word
                if pair.flag in ("nr", "nrfg") and not _person_like(word):
                    continue
                out.append(Claim(word, "entity", word))
    for m in LATIN_NAME.finditer(text):
        words = m.group(0).split()
        while words and words[0] in NOT_NAMES:
            words = words[1:]
        if words:
            name = " ".join(words)
            out.append(Claim(name, "entity", name.lower()))
    return out


def find_claims(text: str) -> list[Claim]:
    """Every checkable claim in `text`, each with the clause it stands in."""
    claims: list[Claim] = []
    for clause in (c.strip() for c in CLAUSE_SPLIT.split(text)):
        if clause:
            claims.extend(Claim(c.text, c.kind, c.value, clause) for c in _number_claims(clause) + _entity_claims(clause))
    return claims


def _content_words(clause: str) -> set[str]:
    words: set[str] = set()
    if re.search(r"[\u4e00-\u9fff]", clause):
        import jieba

        _posseg()
        words |= {w for w in jieba.cut(re.sub(r"[0-9零〇一二两三四五六七八九十百千万亿]+", " ", clause))
                  if len(w) >= 2 and w not in STOPWORDS and w not in FRAMING and re.search(r"[\u4e00-\u9fff]", w)}
    words |= {w.lower() for w in re.findall(r"[A-Za-z]{4,}", clause)}
    return words


class Support:
    """Everything a reply may take facts from, indexed once for checking many replies."""

    def __init__(self, knowledge: Iterable[str], context: Iterable[str] = ()) -> None:
        self.knowledge = [k for k in knowledge if k]
        self.text = "\n".join([*self.knowledge, *(c for c in context if c)])
        self.lower = self.text.lower()
        self.values = {(c.kind == "entity", c.value) for c in find_claims(self.text)}
        self.numbers = {c.value for c in find_claims(self.text) if c.kind != "entity"}
        self.clauses = [
            (clause, [c for c in _number_claims(clause)], _content_words(clause))
            for k in self.knowledge for clause in (s.strip() for s in CLAUSE_SPLIT.split(k)) if clause
        ]

    def supports(self, claim: Claim) -> bool:
        if claim.kind == "entity":
            name = claim.text.lower()
            if name in self.lower:
                return True
            stem = re.sub(r"(市|省|县|区|镇|村|山|国)$", "", claim.text)
            return len(stem) >= 2 and stem.lower() in self.lower
        if claim.kind == "weekday":
            return claim.text[-1] in "日天" and "周日" in self.text or claim.text in self.text or (
                f"周{claim.text[-1]}" in self.text or f"星期{claim.text[-1]}" in self.text)
        return claim.value in self.numbers or claim.text in self.text

    def contradiction(self, claim: Claim) -> Contradiction | None:
        if claim.kind in ("entity", "weekday"):
            return None
        words = _content_words(claim.clause)
        found = None
        for clause, numbers, clause_words in self.clauses:
            same_kind = [n for n in numbers if n.kind == claim.kind]
            shared = words & clause_words
            if not (same_kind and shared):
                continue
            if any(n.value == claim.value for n in same_kind):
                return None  # a knowledge clause about the same thing states this very number: it was taken from it
            found = found or Contradiction(claim, clause, tuple(sorted(shared)))
        return found


def check_reply(reply: str, knowledge: Sequence[str], context: Sequence[str] = ()) -> Faithfulness:
    """Judge one reply against the injected `knowledge` and the rest of its prompt (`context`: selected history,
    persona, utterance). Contradictions are taken from `knowledge` only."""
    support = Support(knowledge, context)
    return judge(reply, support)


def prompt_sources(prompt: Any) -> tuple[list[str], list[str]]:
    """(knowledge, context) of an `xdai.prompt.Prompt`: the injected knowledge (QA pairs, descriptions; not the
    lorebook, which is the persona's world) and everything else a reply may take facts from (persona, lore,
    examples, selected exchanges, the utterance)."""
    knowledge = [str(g["text"]) for g in prompt.grounding() if g["kind"] != "lore"]
    context = [str(p.why.get("text", p.text)) if p.kind == "lore" else p.text
               for p in prompt.parts if p.kind in ("persona", "lore", "example", "exchange", "utterance")]
    return knowledge, context


def check_prompt_reply(reply: str, prompt: Any) -> Faithfulness:
    """Judge a reply against the prompt that produced it."""
    knowledge, context = prompt_sources(prompt)
    return check_reply(reply, knowledge, context)


def judge(reply: str, support: Support) -> Faithfulness:
    claims = tuple(find_claims(reply))
    unsupported = tuple(c for c in claims if not support.supports(c))
    contradictions = tuple(x for c in claims if c.kind != "entity" for x in [support.contradiction(c)] if x)
    return Faithfulness(claims, unsupported, contradictions)


def summarise(results: Sequence[Faithfulness]) -> dict[str, float]:
    """Per configuration: unsupported claims per reply, contradictions per reply, share of replies with any."""
    n = max(len(results), 1)
    return {
        "replies": len(results),
        "unsupported_per_reply": sum(len(r.unsupported) for r in results) / n,
        "contradictions_per_reply": sum(len(r.contradictions) for r in results) / n,
        "share_unfaithful": sum(1 for r in results if not r.faithful) / n,
    }
