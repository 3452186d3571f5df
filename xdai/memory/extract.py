"""Finding durable facts a user states about themselves: rules first, the configured model second.

A wrong memory is worse than none, so both extractors are built for precision. `RuleExtractor` reads Chinese and
English with patterns anchored on the user as subject ("我住在…", "I live in…"): a clause whose subject is
someone else ("我朋友住在…", "She lives in…"), a question, a hypothetical ("如果…", "if…") or an opinion about
the bot ("我喜欢你…") yields nothing. `ModelExtractor` asks the bot's own model for the same facts as JSON of a
small schema (`FACTS_SCHEMA`), the reply primed with the schema's opening; its answer is kept only when it
parses, validates, and every value (and relation) is words the user actually wrote, in a statement the rules'
gate accepts (first person, not a question, not hypothetical). `Extractor` combines them: rule facts, then
model facts the rules did not already cover. Summaries of a session (`summarize`) are a description kept like
any other: the model's one line, or the user's own first lines when there is no model.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from xdai.memory.items import MAX_VALUE_CHARS, SINGLE, SLOTS, Fact, normalize

log = logging.getLogger(__name__)
Mode = Literal["rules", "model", "both"]
MODES: tuple[str, ...] = ("rules", "model", "both")

# ------------------------------------------------------------------------------------------------- Chinese
_ZH_LEAD = r"(?:其实|不过|但是|可是|而且|所以|因为|然后|还有|对了|另外|嗯|哦|噢|啊|呃|哈哈|说实话|老实说|顺便说一下)"
_ZH_TIME = (r"(?:现在|目前|最近|今天|明天|后天|今晚|周末|这周末|下周|下星期|下个月|下月|明年|后年|今年|年底|"
            r"暑假|寒假|过年|春节|国庆|以后|将来|月底|下半年)")
_ZH_ADV = (r"(?:现在|目前|一直|也|还|都|其实|就|平时|特别|非常|真的|很|最|超级|超|挺|比较|本来|已经|又|还是|"
           r"蛮|十分|相当|尤其|可|好|贼|巨)*")
_CJK = r"\u4e00-\u9fff"
_ZH_PRONOUN = re.compile(r"[你您他她它咱]|我们|这|那|哪|谁|什么|啥|怎")
_ZH_QUESTION = re.compile(r"吗|什么|哪|谁|几[个岁点]|多少|怎么|为什么|为啥|是不是|有没有|对不对|好不好|呢$|啥")
_ZH_HYPOTHETICAL = re.compile(r"如果|假如|要是|假设|万一|希望|梦想|想象|要不是|但愿|假使|倘若|的话")
_ZH_OCCUPATIONS = (
    "产品经理|自由职业者|退休人员|会计师|建筑师|摄影师|设计师|工程师|程序员|研究员|研究生|本科生|大学生|中学生|小学生|"
    "高中生|初中生|实习生|创业者|科学家|分析师|公务员|服务员|快递员|外卖员|消防员|运动员|药剂师|老师|教师|教授|医生|"
    "护士|学生|律师|会计|司机|厨师|警察|记者|作家|经理|销售|演员|歌手|画家|农民|工人|店员|老板|主播|翻译|编辑|保安|"
    "军人|教练|兽医|博士|硕士|主妇|码农|博主|模特|导游|空姐|飞行员|保姆|木匠|电工|律师助理|客服|HR|设计"
)
_ZH_RELATIONS = ("好朋友|男朋友|女朋友|老婆|妻子|太太|老公|丈夫|妈妈|母亲|爸爸|父亲|哥哥|姐姐|弟弟|妹妹|爷爷|奶奶|外公|"
                 "外婆|女儿|儿子|孩子|宝宝|闺女|对象|室友|同桌|同事|朋友|老板|男友|女友")
_ZH_PETS = "小猫|小狗|猫咪|狗狗|猫|狗|兔子|仓鼠|鹦鹉|乌龟|金鱼|小鸟|鸟"
_ZH_ASPECTS = "吃|喝|看|听|玩"
_ZH_TAIL = r"(?:了|啦|呀|啊|呢|哦|哈|嘛|的)?"
_ZH_NAME = rf"([{_CJK}]{{1,4}}|[A-Za-z][A-Za-z .'-]{{0,30}})"


def _zh(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# Patterns on the clause after its subject "我" (or on a clause that inherits "我" from the one before).
_ZH_BODY: list[tuple[str, re.Pattern[str]]] = [
    ("name", _zh(rf"^(?:的)?(?:名字)?(?:叫|名叫|名字是|名字叫|的名字是)\s*{_ZH_NAME}(?:就好|就行|好了|吧|啊|呀|哦)?$")),
    ("age", _zh(r"^(?:今年|已经|快)?(\d{1,3}|[一二三四五六七八九十两]{1,3})(?:周)?岁(?:了|啦|呀)?$")),
    ("location", _zh(rf"^{_ZH_ADV}(?:住在|家住|家在|生活在|定居在|住|搬到了|搬到|搬去了|搬去)([{_CJK}A-Za-z0-9 ]{{2,20}}?){_ZH_TAIL}$")),
    ("hometown", _zh(rf"^{_ZH_ADV}(?:是)?(?:在)([{_CJK}A-Za-z ]{{2,16}}?)(?:出生|长大)的?$")),
    ("hometown", _zh(rf"^{_ZH_ADV}(?:来自|出生在|出生于)([{_CJK}A-Za-z ]{{2,16}}?){_ZH_TAIL}$")),
    ("hometown", _zh(rf"^{_ZH_ADV}是([{_CJK}]{{2,10}}?)人(?:啊|呀|哦)?$")),
    ("hometown", _zh(rf"^(?:的)?老家(?:是|在)([{_CJK}A-Za-z ]{{2,16}}?)(?:的)?{_ZH_TAIL}$")),
    ("occupation", _zh(rf"^(?:的)?(?:工作|职业)是([{_CJK}A-Za-z ]{{2,12}}?){_ZH_TAIL}$")),
    ("occupation", _zh(rf"^{_ZH_ADV}(?:是|当|做|在当|在做)(?:一名|一个|一位|个|名|位)?([{_CJK}]{{0,6}}(?:{_ZH_OCCUPATIONS})){_ZH_TAIL}$")),
    ("workplace", _zh(rf"^{_ZH_ADV}在([{_CJK}A-Za-z0-9 ]{{2,15}}?)(?:工作|上班|上学|读书|念书|实习|任职|读研|读博|读大学|教书)(?:了|呢|啊)?$")),
    ("like", _zh(rf"^({_ZH_ADV})(喜欢|爱|热爱|最爱|迷上了|爱上了)({_ZH_ASPECTS})?([{_CJK}A-Za-z0-9 ]{{1,15}}?){_ZH_TAIL}$")),
    ("dislike", _zh(rf"^{_ZH_ADV}(?:不喜欢|不太喜欢|讨厌|不爱|受不了|最讨厌|很讨厌|不能|不敢|不吃|不喝)({_ZH_ASPECTS})?([{_CJK}A-Za-z0-9 ]{{1,15}}?){_ZH_TAIL}$")),
    ("plan", _zh(rf"^{_ZH_ADV}({_ZH_TIME})?{_ZH_ADV}(打算|准备|计划|想要|要|将要|会)([{_CJK}A-Za-z0-9 ]{{2,20}}?){_ZH_TAIL}$")),
]
_ZH_FAMILY = _zh(rf"^我(?:的)?({_ZH_RELATIONS})(?:的名字)?(?:叫|名叫|名字叫|名字是)\s*{_ZH_NAME}$")
_ZH_PET = _zh(rf"我(?:家)?(?:养了|有)(?:一只|一条|一头|一个|只|条|两只)?({_ZH_PETS})[，,\s]*(?:它|牠)?(?:叫|名叫|名字叫|的名字是)\s*{_ZH_NAME}")
_ZH_CALL_ME = _zh(rf"^(?:你)?(?:可以)?叫我\s*{_ZH_NAME}(?:就好|就行|好了|吧|啊|呀|哦)?$")


def _strip_zh(clause: str) -> str:
    clause = clause.strip()
    while True:
        stripped = re.sub(rf"^{_ZH_LEAD}[，,\s]*", "", clause)
        if stripped == clause:
            return clause
        clause = stripped


def _clean_zh_value(value: str) -> str:
    return re.sub(r"(?:了|啦|呀|啊|呢|哦|的|哈|嘛)+$", "", value.strip()).strip()


class RuleExtractor:
    """Patterns for facts a user states about themselves, in Chinese and English."""

    name = "rules"

    def extract(self, text: str, lang: str | None = None) -> list[Fact]:
        """Facts in `text`; a single-valued slot keeps its last value ("我搬到深圳了，现在住在南山": 南山)."""
        lang = lang or detect_language(text)
        facts = self._zh(text) if lang == "zh" else self._en(text)
        return _last_per_key(facts)

    # -- Chinese -------------------------------------------------------------------------------------------------
    def _zh(self, text: str) -> list[Fact]:
        out: list[Fact] = []
        for sentence, asked in _sentences(text, "。！？!?；;\n"):
            if asked or _ZH_HYPOTHETICAL.search(sentence):
                continue
            pet = _ZH_PET.search(sentence)
            pet_name = _clean_zh_value(pet.group(2)) if pet and _name_ok(pet.group(2), "zh") else None
            if pet_name:
                out.append(Fact("pet", pet_name, relation=pet.group(1)))
            self_subject = False
            for raw in re.split(r"[，,]", sentence):
                clause = _strip_zh(raw)
                if not clause:
                    continue
                time = re.match(rf"^({_ZH_TIME})[，,\s]*(?=我)", clause)
                if time:
                    clause = clause[time.end():]
                if _ZH_QUESTION.search(clause):
                    self_subject = False
                    continue
                call = _ZH_CALL_ME.match(clause)
                if call and _name_ok(call.group(1), "zh"):
                    out.append(Fact("name", _clean_zh_value(call.group(1))))
                    self_subject = True
                    continue
                family = _ZH_FAMILY.match(clause)
                if family:
                    if _name_ok(family.group(2), "zh"):
                        out.append(Fact("family", _clean_zh_value(family.group(2)), relation=family.group(1)))
                    self_subject = False  # what follows is about the relation ("我女儿叫小美，今年五岁")
                    continue
                if clause.startswith("我") and not clause.startswith(("我们", "我俩", "我家人")):
                    body = clause[1:]
                    self_subject = True
                elif self_subject:
                    body = clause
                else:
                    continue
                fact = self._zh_body(body, bool(time))
                if fact is not None and fact.slot == "name" and fact.value == pet_name:
                    continue  # "我养了一只猫，叫咪咪": the cat's name
                if fact is not None:
                    out.append(fact)
                elif not clause.startswith("我"):
                    self_subject = False  # a clause we cannot read may have a subject of its own
        return out

    @staticmethod
    def _zh_body(body: str, timed: bool) -> Fact | None:
        for slot, pattern in _ZH_BODY:
            m = pattern.match(body)
            if m is None:
                continue
            if slot == "like":
                adverbs, verb, aspect, value = m.groups()
                favorite = "最" in (adverbs or "") or verb == "最爱"
                value = _clean_zh_value(value)
                if not _value_ok(value, "zh"):
                    return None
                return Fact("like", value, aspect=aspect or "", favorite=favorite)
            if slot == "dislike":
                aspect, value = m.groups()
                value = _clean_zh_value(value)
                return Fact("dislike", value, aspect=aspect or "") if _value_ok(value, "zh") else None
            if slot == "plan":
                when, verb, value = m.groups()
                value = _clean_zh_value(value)
                if verb in ("想要", "要", "会") and not (when or timed):
                    return None  # "我要一杯咖啡" is a request, not a plan
                value = re.sub(rf"^{_ZH_TIME}+", "", value)  # "今年夏天学游泳": the plan is 学游泳
                value = re.sub(r"^(?:夏天|冬天|春天|秋天)", "", value)
                return Fact("plan", value) if _value_ok(value, "zh") and len(value) >= 2 else None
            value = _clean_zh_value(m.group(1))
            if slot == "name" and not _name_ok(value, "zh"):
                return None
            if slot != "name" and not _value_ok(value, "zh"):
                return None
            if slot in ("location", "hometown", "workplace") and value in ("家", "家里", "这里", "那里", "这儿"):
                return None
            if slot == "age":
                value = _zh_number(value)
            return Fact(slot, value)
        return None

    # -- English -------------------------------------------------------------------------------------------------
    def _en(self, text: str) -> list[Fact]:
        out: list[Fact] = []
        for sentence, asked in _sentences(text, ".!?;\n"):
            if asked or _EN_HYPOTHETICAL.search(sentence):
                continue
            greeted = _EN_GREETING.match(sentence)
            if greeted:
                sentence = sentence[greeted.end():]
            for number, clause in enumerate(_EN_SPLIT.split(sentence)):
                clause = _EN_LEAD.sub("", clause.strip()).strip(" ,")
                introduced = _EN_INTRODUCED.match(clause) if greeted and number == 0 else None
                if introduced and _name_ok(introduced.group("v"), "en"):
                    out.append(Fact("name", introduced.group("v")))  # "Hi, I'm Priya"
                elif clause:
                    out.extend(self._en_clause(clause))
        return out

    @staticmethod
    def _en_clause(clause: str) -> list[Fact]:
        for slot, pattern in _EN_PATTERNS:
            m = pattern.match(clause)
            if m is None:
                continue
            groups = m.groupdict()
            value = _clean_en_value(groups.get("v") or "")
            if slot in ("family", "pet"):
                if not _name_ok(value, "en"):
                    return []
                return [Fact(slot, value, relation=groups["r"].lower())]
            if slot == "name":
                return [Fact("name", value)] if _name_ok(value, "en") else []
            if slot in ("location", "hometown", "workplace"):
                value = _EN_PLACE_TAIL.sub("", value).strip()
                return [Fact(slot, value)] if _proper(value) and _value_ok(value, "en") else []
            if slot == "occupation":
                facts = [Fact("occupation", value)] if _value_ok(value, "en") else []
                org = _clean_en_value(groups.get("o") or "")
                if org and _proper(org):
                    facts.append(Fact("workplace", org))
                return facts
            if slot == "like":
                aspect = (groups.get("x") or "").lower()
                value = _EN_LIKE_TAIL.sub("", value).strip()
                ok = _value_ok(value, "en") and not _EN_NOT_OBJECT.match(value)
                return [Fact("like", value, aspect=aspect, favorite=bool(aspect))] if ok else []
            if slot == "dislike":
                value = _EN_LIKE_TAIL.sub("", value).strip()
                return [Fact("dislike", value)] if _value_ok(value, "en") and not _EN_NOT_OBJECT.match(value) else []
            if slot == "plan":
                timed = _EN_TIME.search(value)
                if "need_time" in pattern.groupindex and not timed:
                    return []
                value = _EN_TIME.sub("", value).strip(" ,")
                return [Fact("plan", value)] if _value_ok(value, "en") and len(value.split()) >= 2 else []
            if slot == "age":
                return [Fact("age", value)]
        return []


# -------------------------------------------------------------------------------------------------- English
_EN_ADV = r"(?:(?:really|actually|absolutely|totally|also|just|currently|now|still|originally|truly|do|kind of|sort of)\s+)*"
_EN_OCC = ("nurse|teacher|engineer|developer|programmer|doctor|student|lawyer|designer|accountant|driver|chef|cook|"
           "officer|journalist|writer|researcher|scientist|manager|salesman|saleswoman|actor|actress|singer|artist|"
           "painter|farmer|worker|cashier|waiter|waitress|analyst|architect|photographer|translator|editor|"
           "consultant|pilot|firefighter|soldier|athlete|coach|pharmacist|vet|veterinarian|professor|librarian|"
           "dentist|mechanic|electrician|plumber|carpenter|barista|freelancer|entrepreneur|retiree|intern|tutor|"
           "musician|bartender|nanny|secretary|clerk|banker|economist|psychologist|therapist|surgeon|"
           "physician|paramedic|investor|trader|marketer|recruiter|student|undergrad|undergraduate|postdoc|"
           "housewife|homemaker|streamer|youtuber|blogger|model|guide|lecturer|scientist|biologist|chemist|"
           "physicist|mathematician|statistician|technician|administrator|ceo|cto|founder")
_EN_REL = ("daughter|son|wife|husband|mom|mother|mum|dad|father|brother|sister|boyfriend|girlfriend|partner|"
           "fiancee|fiance|grandma|grandmother|grandpa|grandfather|kid|child|baby|best friend|roommate|boss")
_EN_PETS = "dog|cat|puppy|kitten|rabbit|bunny|hamster|parrot|bird|turtle|fish|goldfish|horse"
_EN_NAME = r"(?P<v>[A-Za-z][\w'-]*(?:\s+[A-Za-z][\w'-]*){0,2})"
_EN_TIME = re.compile(r"\b(?:tomorrow|tonight|this (?:week(?:end)?|month|year|summer|winter|spring|fall|autumn)|"
                      r"next (?:week(?:end)?|month|year|summer|winter|spring|fall|autumn|monday|tuesday|wednesday|"
                      r"thursday|friday|saturday|sunday)|in (?:a|two|three|a few|\d+) (?:days?|weeks?|months?|years?)|"
                      r"soon|someday|one day|after (?:graduation|college))\b", re.IGNORECASE)
_EN_HYPOTHETICAL = re.compile(r"\b(?:if|wish|would|could|might|maybe|perhaps|suppose|imagine|hope)\b", re.IGNORECASE)
_EN_SPLIT = re.compile(r",\s*(?:and|but|so|because|since)?\s*(?=(?:i|i'm|i've|my)\b)|\s+(?:and|but|so|because|since)\s+"
                       r"(?=(?:i|i'm|i've|my)\b)", re.IGNORECASE)
_EN_LEAD = re.compile(r"^(?:(?:well|oh|so|and|but|also|actually|btw|by the way|anyway|haha|hey|yeah|yes|no)\b[,\s]*)+",
                      re.IGNORECASE)
_EN_PLACE_TAIL = re.compile(r"\s+(?:now|these days|currently|at the moment|right now|originally|for (?:now|years|"
                            r"a while)|with (?:my|our) .+|since \w+)$", re.IGNORECASE)
_EN_LIKE_TAIL = re.compile(r"\s+(?:a lot|so much|very much|too|as well|on weekends|every day|all the time)$",
                           re.IGNORECASE)
_EN_NOT_OBJECT = re.compile(r"^(?:you|your|yours|it|that|this|these|those|him|her|them|to\b|the idea|how|when|what|"
                            r"talking to|chatting)\b", re.IGNORECASE)
_I_AM = r"i(?:'m|\s+am|’m)\s+"
_EN_GREETING = re.compile(r"^(?:hi|hello|hey|hiya|nice to meet you)(?:\s+there)?\s*[,!.]?\s*", re.IGNORECASE)
_EN_INTRODUCED = re.compile(r"^[iI](?:'m|\s+am|’m)\s+(?P<v>[A-Z][a-z'-]+)$")  # only right after a greeting


def _en(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_EN_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("name", _en(rf"^my\s+name(?:'s|\s+is)\s+{_EN_NAME}$")),
    ("name", _en(rf"^(?:you\s+can\s+)?call\s+me\s+{_EN_NAME}$")),
    ("name", _en(rf"^{_I_AM}called\s+{_EN_NAME}$")),
    ("age", _en(rf"^{_I_AM}(?P<v>\d{{1,3}})(?:\s+years?\s+old|\s*y/?o)?$")),
    ("age", _en(r"^i\s+(?:just\s+)?turned\s+(?P<v>\d{1,3})(?:\s+(?:last|this)\s+(?:week|month|year))?$")),
    ("location", _en(rf"^i\s+{_EN_ADV}live\s+in\s+(?P<v>.{{2,40}})$")),
    ("location", _en(rf"^{_I_AM}{_EN_ADV}(?:based|living)\s+in\s+(?P<v>.{{2,40}})$")),
    ("location", _en(rf"^i\s+{_EN_ADV}(?:moved|relocated)\s+to\s+(?P<v>.{{2,40}})$")),
    ("hometown", _en(rf"^{_I_AM}{_EN_ADV}from\s+(?P<v>.{{2,40}})$")),
    ("hometown", _en(rf"^i\s+{_EN_ADV}(?:grew\s+up|was\s+born|was\s+raised)\s+in\s+(?P<v>.{{2,40}})$")),
    ("hometown", _en(rf"^i\s+{_EN_ADV}come\s+from\s+(?P<v>.{{2,40}})$")),
    ("occupation", _en(rf"^{_I_AM}{_EN_ADV}an?\s+(?P<v>(?:[\w-]+\s+){{0,3}}(?:{_EN_OCC}))(?:\s+(?:at|for|in)\s+(?P<o>.{{2,40}}))?$")),
    ("occupation", _en(rf"^i\s+{_EN_ADV}work\s+as\s+(?:an?\s+)?(?P<v>(?:[\w-]+\s+){{0,3}}[\w-]+)(?:\s+(?:at|for)\s+(?P<o>.{{2,40}}))?$")),
    ("occupation", _en(r"^my\s+(?:job|profession|occupation)\s+is\s+(?:an?\s+)?(?P<v>(?:[\w-]+\s+){0,3}[\w-]+)$")),
    ("workplace", _en(rf"^i\s+{_EN_ADV}work\s+(?:at|for)\s+(?P<v>.{{2,40}})$")),
    ("workplace", _en(rf"^i\s+{_EN_ADV}(?:study|studied)\s+at\s+(?P<v>.{{2,40}})$")),
    ("workplace", _en(rf"^{_I_AM}(?:a\s+student|studying)\s+at\s+(?P<v>.{{2,40}})$")),
    ("family", _en(rf"^my\s+(?P<r>{_EN_REL})(?:'s\s+name\s+is|\s+is\s+called|\s+is\s+named)\s+{_EN_NAME}$")),
    ("family", _en(rf"^i\s+have\s+an?\s+(?P<r>{_EN_REL})\s+(?:named|called)\s+{_EN_NAME}$")),
    ("pet", _en(rf"^i\s+have\s+an?\s+(?P<r>{_EN_PETS})\s+(?:named|called)\s+{_EN_NAME}$")),
    ("pet", _en(rf"^my\s+(?P<r>{_EN_PETS})(?:'s\s+name\s+is|\s+is\s+called|\s+is\s+named)\s+{_EN_NAME}$")),
    ("like", _en(r"^my\s+(?:absolute\s+)?favou?rite\s+(?P<x>food|drink|movie|book|sport|music|colou?r|game|song)\s+is\s+"
                 r"(?P<v>.{1,40})$")),
    ("like", _en(rf"^i\s+{_EN_ADV}(?:love|like|enjoy|adore)\s+(?P<v>.{{1,40}})$")),
    ("dislike", _en(rf"^i\s+{_EN_ADV}(?:hate|dislike|detest|can't\s+stand|cannot\s+stand|don't\s+like|do\s+not\s+like|"
                    rf"don't\s+enjoy)\s+(?P<v>.{{1,40}})$")),
    ("plan", _en(rf"^{_I_AM}{_EN_ADV}(?:planning|about)\s+to\s+(?P<v>.{{2,60}})$")),
    ("plan", _en(rf"^i\s+{_EN_ADV}(?:plan|intend)\s+to\s+(?P<v>.{{2,60}})$")),
    ("plan", _en(rf"^{_I_AM}{_EN_ADV}going\s+to\s+(?P<need_time>)(?P<v>.{{2,60}})$")),
    ("plan", _en(r"^i(?:'ll|\s+will)\s+(?P<need_time>)(?P<v>.{2,60})$")),
]


def _clean_en_value(value: str) -> str:
    return value.strip().strip(" .,!;:'\"")


def _proper(value: str) -> bool:
    """A place or organisation as people write one: capitalised, or an acronym (lower-case "home" is not)."""
    words = [w for w in value.split() if w.lower() not in ("the", "of", "in", "a", "an", "and", "de")]
    return bool(words) and all(w[0].isupper() or w[0].isdigit() for w in words)


# -------------------------------------------------------------------------------------------------- shared
def detect_language(text: str) -> str:
    cjk = len(re.findall(rf"[{_CJK}]", text))
    return "zh" if cjk and cjk * 3 >= len(re.findall(r"[A-Za-z]", text)) else "en"


def _sentences(text: str, ends: str) -> list[tuple[str, bool]]:
    """(sentence, is a question) pairs."""
    out = []
    for m in re.finditer(rf"[^{re.escape(ends)}]+[{re.escape(ends)}]*", text):
        chunk = m.group(0)
        body = chunk.rstrip(ends + " ").strip()
        if body:
            out.append((body, "?" in chunk or "？" in chunk))
    return out


def _value_ok(value: str, lang: str) -> bool:
    if not value or len(value) > MAX_VALUE_CHARS:
        return False
    if lang == "zh":
        return not _ZH_PRONOUN.search(value)
    return not re.search(r"\b(?:you|your|yours|what|where|who|which|how|why)\b", value, re.IGNORECASE)


def _name_ok(value: str, lang: str) -> bool:
    value = value.strip()
    if not value or len(value) > 30:
        return False
    if lang == "zh" and re.fullmatch(rf"[{_CJK}]+", value):
        return not _ZH_PRONOUN.search(value) and not re.search(rf"(?:{_ZH_OCCUPATIONS})$", value)
    words = value.split()
    return all(w[0].isupper() for w in words) and not re.search(
        r"\b(?:You|Your|It|That|This|What|Not|Sorry|Happy|Tired|Fine|Good|Here|Sure)\b", value)


_ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}


def _zh_number(text: str) -> str:
    """"二十八" -> "28"; digits stay as written."""
    if text.isdigit():
        return text
    total, current = 0, 0
    for ch in text:
        if ch == "十":
            total += (current or 1) * 10
            current = 0
        elif ch in _ZH_DIGITS:
            current = _ZH_DIGITS[ch]
        else:
            return text
    return str(total + current)


def _last_per_key(facts: Sequence[Fact]) -> list[Fact]:
    """One fact per key (the last said wins), in the order first seen."""
    by_key: dict[str, Fact] = {}
    for fact in facts:
        by_key.pop(fact.key, None)
        by_key[fact.key] = fact
    return list(by_key.values())


def self_disclosure(text: str, lang: str | None = None) -> bool:
    """The gate a model's facts must pass: the user speaks of themselves, states rather than asks, and does not
    imagine."""
    lang = lang or detect_language(text)
    if lang == "zh":
        return bool(_ZH_SELF.search(text)) and not _ZH_HYPOTHETICAL.search(text) and not any(
            asked for _, asked in _sentences(text, "。！？!?；;\n")) and not _ZH_QUESTION.search(text)
    if re.search(r"\?\s*$", text.strip()) or _EN_HYPOTHETICAL.search(text):
        return False
    return bool(_EN_SELF.search(text))


# The user as the subject: "我" but not "我们" or "我朋友…" (someone else's fact); "I", "my name/job/…".
_ZH_SELF = re.compile(rf"我(?!们|俩|家人|的?(?:{_ZH_RELATIONS}))")
_EN_OTHERS = r"friends?|colleagues?|coworkers?|neighbou?rs?|cousins?|aunt|uncle|classmates?|teacher|parents|kids"
_EN_SELF = re.compile(rf"\b(?:i|i'm|i've|i am|call me|my (?!(?:{_EN_REL}|{_EN_PETS}|{_EN_OTHERS})\b)\w+)\b",
                      re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------- model
FACTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["facts"],
    "additionalProperties": False,
    "properties": {
        "facts": {
            "type": "array",
            "maxItems": 6,
            "items": {
                "type": "object",
                "required": ["slot", "value"],
                "additionalProperties": False,
                "properties": {
                    "slot": {"enum": list(SLOTS)},
                    "value": {"type": "string", "minLength": 1, "maxLength": MAX_VALUE_CHARS},
                    "relation": {"type": "string", "maxLength": 16},
                },
            },
        }
    },
}
_PRIME = '{"facts": ['
_INSTRUCTIONS = {
    "zh": ("从用户的一句话里找出用户陈述的关于自己的长期事实，只输出 JSON。slot 只能是："
           + "、".join(SLOTS) + "。value 必须是用户原话里的词。family/pet 要写 relation（如 女儿、猫）。"
           "问题、假设、别人的事、对机器人的评价都不算，没有事实就输出 {\"facts\": []}。"),
    "en": ("Find durable facts the user states about themselves in one message; answer with JSON only. slot is one "
           "of: " + ", ".join(SLOTS) + ". value must be the user's own words. family/pet also give relation (e.g. "
           "daughter, dog). Questions, hypotheticals, other people's facts and opinions about the assistant do not "
           "count; with no fact answer {\"facts\": []}."),
}
_EXAMPLES = {
    "zh": [("我叫王芳，在医院当护士", '{"facts": [{"slot": "name", "value": "王芳"}, '
                                  '{"slot": "occupation", "value": "护士"}]}'),
           ("你喜欢吃什么？", '{"facts": []}')],
    "en": [("My name is Tom and I hate onions.", '{"facts": [{"slot": "name", "value": "Tom"}, '
                                               '{"slot": "dislike", "value": "onions"}]}'),
           ("Where do you live?", '{"facts": []}')],
}


class ModelExtractor:
    """The bot's model, decoding JSON of `FACTS_SCHEMA` under the schema's constraints; only grounded facts
    survive.

    The model never writes the JSON's structure: the decoder does. Whether another fact follows or the list
    ends is decided by the model's likelihoods of exactly those two continuations; the model writes only the
    strings (a slot, checked against the schema's enum; a value; a relation), each closed at its quote. The
    result always validates; `parse_facts` then keeps the facts whose words the user actually wrote. This needs
    only a backend's `fill` and `score`, so it works with every backend (llama.cpp's grammars are not reachable
    through that interface).
    """

    name = "model"
    max_facts = 4

    def __init__(self, backend: Any, *, max_value_tokens: int = 16) -> None:
        self.backend = backend
        self.max_value_tokens = max_value_tokens
        score = getattr(backend, "score", None)
        try:
            self._special = score is not None and "special" in inspect.signature(score).parameters
        except (TypeError, ValueError):
            self._special = False

    def prompt(self, text: str, lang: str) -> Any:
        """The request as an `Infill` ending with the schema's opening: the model's chat template when it has
        one (and its backend scores such text), else a plain few-shot transcript."""
        from xdai.generation import Infill
        from xdai.render import chat_template_of

        lang = "zh" if lang == "zh" else "en"
        shots = _EXAMPLES[lang]
        template = chat_template_of(self.backend) if self._special else None
        if template is not None:
            messages = [{"role": "system", "content": _INSTRUCTIONS[lang]}]
            for q, a in shots:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": _one_line(text)})
            before = template.apply(messages, add_generation_prompt=True) + _PRIME
            return Infill(before=before, special=True)
        lines = [_INSTRUCTIONS[lang], ""]
        for q, a in shots:
            lines += [f"Message: {q}", f"JSON: {a}", ""]
        lines += [f"Message: {_one_line(text)}", f"JSON: {_PRIME}"]
        return Infill(before="\n".join(lines))

    def _score(self, context: str, continuation: str, special: bool) -> float:
        if special:
            return float(self.backend.score(context, continuation, special=True))
        return float(self.backend.score(context, continuation))

    async def _scores(self, context: str, continuations: list[str], special: bool) -> list[float]:
        """The continuations' log-likelihoods, asked together (an engine that batches scores them as one)."""
        return list(await asyncio.gather(*(asyncio.to_thread(self._score, context, c, special)
                                           for c in continuations)))

    async def _string(self, context: str, special: bool) -> str:
        """A JSON string's content as the model writes it, up to its closing quote."""
        from xdai.generation import GenerationSettings, Infill

        settings = GenerationSettings(temperature=0.0, top_p=1.0, top_k=1, repetition_penalty=1.0,
                                      max_tokens=self.max_value_tokens, stop=['"', "\n"], seed=0)
        pieces = [piece async for piece in self.backend.fill(Infill(before=context, special=special), settings)]
        return "".join(pieces).split('"', 1)[0].replace("\\", "").strip()

    async def decode(self, text: str, lang: str) -> str:
        """The model's answer as JSON text, decoded under the schema."""
        infill = self.prompt(text, lang)
        context, special = infill.before, infill.special
        out = _PRIME
        for number in range(self.max_facts):
            opener = '{"slot": "' if number == 0 else ', {"slot": "'
            end, more = await self._scores(context, ["]}", opener], special)
            if end >= more:
                break
            context, out = context + opener, out + opener
            slot = await self._string(context, special)
            if slot not in SLOTS:  # the schema's enum: anything else ends the answer (what came before stands)
                context, out = context[: -len(opener)], out[: -len(opener)]
                break
            step = f'{slot}", "value": "'
            context, out = context + step, out + step
            value = await self._string(context, special)
            step = json.dumps(value, ensure_ascii=False)[1:]  # the value, escaped, and its closing quote
            context, out = context + step, out + step
            if slot in ("family", "pet"):
                step = ', "relation": "'
                relation = await self._string(context + step, special)
                step += json.dumps(relation, ensure_ascii=False)[1:]
                context, out = context + step, out + step
            context, out = context + "}", out + "}"
        return out + "]}"

    async def extract(self, text: str, lang: str | None = None) -> list[Fact]:
        lang = lang or detect_language(text)
        if not self_disclosure(text, lang):
            return []
        return parse_facts(await self.decode(text, lang), text, lang)


def parse_facts(raw: str, utterance: str, lang: str) -> list[Fact]:
    """The facts of a model's answer that validate against `FACTS_SCHEMA` and are grounded in `utterance`;
    anything else (not JSON, another shape, words the user did not write) yields nothing."""
    from jsonschema import Draft202012Validator

    data = _first_object(raw)
    if data is None or not Draft202012Validator(FACTS_SCHEMA).is_valid(data):
        return []
    said = normalize(utterance)
    out = []
    for item in data["facts"]:
        value = item["value"].strip()
        relation = (item.get("relation") or "").strip()
        if item["slot"] in ("family", "pet") and ":" in value and not relation:
            relation, value = (part.strip() for part in value.split(":", 1))
        if not value or normalize(value) not in said or not _value_ok(value, lang):
            continue
        if item["slot"] in ("family", "pet") and (not relation or normalize(relation) not in said):
            continue
        if item["slot"] == "name" and not (_name_ok(value, lang) and re.search(
                rf"(?:我叫|我名叫|名字是|名字叫|叫我|name is|name's|call me|\bi'?m|\bi am)\s*{re.escape(value)}", utterance,
                re.IGNORECASE)):
            continue  # a name is introduced as one ("I'm a software engineer at Microsoft" names no one)
        if not _EVIDENCE[item["slot"]].search(utterance):  # the user must have said something of that kind
            continue
        out.append(Fact(item["slot"], value, relation=relation, source="model"))
    return _last_per_key(out)


# What a statement of each slot says, in either language: a model's fact needs its slot's words in the utterance.
_EVIDENCE: dict[str, re.Pattern[str]] = {slot: re.compile(pattern, re.IGNORECASE) for slot, pattern in {
    "name": r"叫|名字|\bname\b|call me|\bi'?m\b|\bi am\b",
    "age": r"岁|年龄|years? old|\bage\b|turned",
    "location": r"住|家.{0,2}在|生活在|定居|搬|\blive|\bliving\b|based in|moved",
    "hometown": r"老家|家乡|来自|出生|长大|是\S{1,8}人|\bfrom\b|grew up|born|raised",
    "occupation": r"是|当|做|工作|职业|\bwork|\bjob\b|profession|\bi'?m an?\b|\bi am an?\b",
    "workplace": r"在\S{1,15}(?:工作|上班|上学|读书|念书|实习|任职)|\bwork(?:s|ing)? (?:at|for)\b|\bstud(?:y|ying|ied) at\b",
    "like": r"喜欢|爱|热爱|迷上|\blove|\blike|enjoy|adore|favou?rite",
    "dislike": r"不喜欢|讨厌|受不了|不爱|不吃|不喝|\bhate|dislike|can'?t stand|don'?t (?:like|enjoy)|detest",
    "plan": r"打算|准备|计划|想要|将要|\bplan|going to|\bwill\b|'ll\b|intend",
    "family": rf"{_ZH_RELATIONS}|\b(?:{_EN_REL})\b",
    "pet": rf"{_ZH_PETS}|\b(?:{_EN_PETS})\b",
}.items()}


def _first_object(raw: str) -> Any:
    """The first JSON object in `raw`; a reply cut short is closed ("]}" appended) before giving up."""
    start = raw.find("{")
    if start < 0:
        return None
    text = raw[start:]
    decoder = json.JSONDecoder()
    for tail in ("", "]}", "}]}", "\"}]}"):
        try:
            value, _ = decoder.raw_decode(text + tail)
            return value
        except json.JSONDecodeError:
            continue
    return None


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:500]


@dataclass
class Extractor:
    """Rules, the model, or both (rule facts first; a model fact only for a key the rules left open)."""

    mode: Mode = "rules"
    backend: Any = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"memory extractor {self.mode!r}: choose one of {', '.join(MODES)}")
        self.rules = RuleExtractor()
        self.model = ModelExtractor(self.backend) if self.backend is not None and self.mode != "rules" else None

    async def extract(self, text: str, lang: str | None = None) -> list[Fact]:
        lang = lang or detect_language(text)
        facts = self.rules.extract(text, lang) if self.mode in ("rules", "both") else []
        if self.model is None:
            return facts
        try:
            found = await self.model.extract(text, lang)
        except Exception as exc:  # the model failing costs its facts, never the rules' ones
            log.warning("memory: the model could not extract facts: %s", exc)
            return facts
        return combine(facts, found)


def combine(rules: Sequence[Fact], model: Sequence[Fact]) -> list[Fact]:
    """The rules' facts, then the model's facts about what the rules left open (another key, another slot)."""
    taken = {f.key for f in rules} | {f.slot for f in rules if f.slot in SINGLE}
    return list(rules) + [f for f in model if f.key not in taken and f.slot not in taken]


# ------------------------------------------------------------------------------------------------- summaries
_SUMMARY = {
    "zh": "用一句话（不超过60字）概括下面这段对话里用户说了什么、聊了什么，只写概括：",
    "en": "Summarise in one sentence (at most 40 words) what the user said and talked about in this conversation. "
          "Write only the summary:",
}


def rule_summary(exchanges: Sequence[tuple[str, str]], lang: str, when: str) -> str:
    """The user's own first lines, clipped: what was talked about, in their words."""
    said = [_one_line(u) for u, _ in exchanges if u.strip()]
    said = [s if len(s) <= 30 else s[:29] + "…" for s in said[:4]]
    if lang == "zh":
        return f"{when}聊过：" + "；".join(said) if said else ""
    return f"On {when} the user talked about: " + "; ".join(said) if said else ""


async def summarize(exchanges: Sequence[tuple[str, str]], lang: str, when: str, backend: Any = None) -> str:
    """A short description of a session: the model's one line when there is a model (kept only when it is one
    plausible line), else `rule_summary`."""
    fallback = rule_summary(exchanges, lang, when)
    if backend is None or not exchanges:
        return fallback
    from xdai.generation import GenerationSettings, Infill
    from xdai.render import chat_template_of

    lang = "zh" if lang == "zh" else "en"
    lines = "\n".join(f"{'用户' if lang == 'zh' else 'User'}: {_one_line(u)}\n"
                      f"{'机器人' if lang == 'zh' else 'Assistant'}: {_one_line(b)}" for u, b in exchanges[-8:])
    template = chat_template_of(backend)
    if template is not None:
        before = template.apply([{"role": "user", "content": f"{_SUMMARY[lang]}\n\n{lines}"}],
                                add_generation_prompt=True)
        infill = Infill(before=before, special=True)
    else:
        infill = Infill(before=f"{lines}\n\n{_SUMMARY[lang]}\n")
    settings = GenerationSettings(temperature=0.0, top_p=1.0, top_k=1, repetition_penalty=1.1, max_tokens=80,
                                  stop=["\n", "<|im_end|>", "</s>"], seed=0)
    try:
        text = "".join([piece async for piece in backend.fill(infill, settings)]).strip()
    except Exception as exc:
        log.warning("memory: the model could not summarise a session: %s", exc)
        return fallback
    if not text or len(text) > 200:
        return fallback
    return f"{when}：{text}" if lang == "zh" else f"On {when}: {text}"
