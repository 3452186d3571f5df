"""Resolve a dialogue utterance against its context by tracking the knowledge base's entities.

"那它的门票是怎么收费的？" names no attraction: "它" is the one named a few turns earlier. `EntityTracker` finds
entity names (and their short forms: "鸟巢（国家体育场）" is also "鸟巢" and "国家体育场") in the utterance and in
the dialogue before it and picks the entity the utterance is about: reading the last messages oldest first, each
name becomes the focus, unless it sits in words quoted from the current focus's own knowledge (an address, a cast
list or a ticket rule that names another entity). A referring word in the utterance says what kind of entity it
means (他/她 a person, 这部电影/这首歌 a work, 这里 a place): when the focus is of another kind, the most recent
entity of the right kind takes over. Kinds come from the predicates of an entity's items (出生日期 and 职业 make a
person, 导演 and 上映时间 a work). The retriever then searches with the focus's name added to the query and ranks
that entity's items first; the other recent entities are candidates a second stage may still prefer. What was
measured and chosen is in docs/retrieval.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from knowledge.bm25 import normalize
from knowledge.item import Item

_PAREN = re.compile(r"[(\[（【《〈「『](.*?)[)\]）】》〉」』]")
_HAS_CJK = re.compile(r"[\u3400-\u9fff]")
_NOT_WORD = re.compile(r"[\W_]+")
_SUBJECT = re.compile(r"^\S{1,30}?(?:是|位于|坐落|又称|又名|始建|建于|，|,)")

# The predicates that make an entity a person, a work (film, song, album, book), a place or an organisation:
# infobox fields as Chinese (Baidu Baike, KdConv) and English knowledge bases name them.
KIND_PREDICATES: dict[str, frozenset[str]] = {
    "person": frozenset("""出生日期 出生地 职业 国籍 毕业院校 星座 身高 体重 血型 民族 逝世日期 祖籍 籍贯 配偶 妻子 丈夫
        经纪公司 出道时间 本名 原名 昵称 信仰 特长 爱好 学位 职称 兴趣 擅长乐器 粉丝名 生日 born birthplace birth_date
        occupation nationality spouse""".split()),
    "work": frozenset("""上映时间 上映日期 导演 主演 片长 编剧 制片人 制片地区 制片成本 票房 全球票房 对白语言 出品公司
        出品时间 拍摄地点 拍摄日期 发行公司 在线播放平台 IMDB评分 原著 发行时间 所属专辑 歌曲原唱 原演唱者 演唱者 谱曲
        填词 作词 作曲 编曲 专辑歌手 曲目数量 歌曲数量 专辑语言 专辑时长 歌曲时长 歌曲语言 MV导演 唱片销量 发行地区
        作者 出版社 出版时间 director starring release_date runtime author publisher""".split()),
    "place": frozenset("""地址 门票 开放时间 建议游玩时间 周边景点 所属地区 地理位置 海拔 面积 气候 address
        opening_hours""".split()),
    "organisation": frozenset("""成立时间 创办人 创始人 创建人 创办时间 总部地点 经营范围 公司性质 员工数 旗下艺人
        旗下歌手 乐队成员 主唱 组建时间 解散时间 董事长 founded headquarters""".split()),
}

# Referring words and the kinds of entity they can mean. "其他" and "吉他" are not 他.
_REFERENTS: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = (
    (re.compile(r"(?<![其吉])[他她]们"), frozenset({"person", "organisation"})),
    (re.compile(r"(?<![其吉])[他她](?!们)|这位|那位|此人|\b(?:he|she|him|her|his)\b", re.I), frozenset({"person"})),
    (re.compile(r"[这那该此]部|该片|此片|影片|这片|这个?电影|那个?电影|[这那该此]首|该曲|这歌|[这那该此]张专辑|"
                r"这本书|这部剧|this (?:film|movie|song|album|book)", re.I), frozenset({"work"})),
    (re.compile(r"这里|那里|这儿|那儿|[这那]个地方|[这那该]景点|this place|\bthere\b", re.I), frozenset({"place"})),
)


def entity_kind(predicates: Iterable[str]) -> str | None:
    """The kind most of an entity's predicates point to (None: no predicate names a kind)."""
    counts = {kind: 0 for kind in KIND_PREDICATES}
    for p in predicates:
        for kind, known in KIND_PREDICATES.items():
            counts[kind] += p in known
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] > 0 else None


def referent_kinds(text: str) -> frozenset[str]:
    """The kinds of entity the referring words in `text` can mean (empty: no referring word)."""
    for pattern, kinds in _REFERENTS:
        if pattern.search(text):
            return kinds
    return frozenset()


def names_an_entity(heading: str, text: str = "") -> bool:
    """Whether a section heading names an entity (a person, place, organisation or other proper noun) rather than
    a topic: "黄山", "Kyoto", "潇湘馆" do; "表演", "交通", "北京旅游小贴士" do not. jieba tags the Chinese ones; a
    heading its own text opens with as a subject ("故宫又称紫禁城", "大观园是……") names one too."""
    heading = heading.strip()
    if not heading:
        return False
    if not _HAS_CJK.search(heading):
        words = re.findall(r"[A-Za-z][\w'-]*", heading)
        return bool(words) and all(w[0].isupper() for w in words)
    if _SUBJECT.match(normalize(text).strip()) and normalize(text).strip().startswith(normalize(heading)):
        return True
    from knowledge.pos import proper_noun

    return proper_noun(heading)


@dataclass(frozen=True)
class Resolution:
    """What an utterance is about. ``query`` is the text to retrieve with (the utterance, entity-expanded)."""

    query: str
    entity: str | None = None
    source: str = "none"  # "query": named in the utterance; "context": named earlier; "none"
    distance: int | None = None  # messages back where the entity was named (0: the utterance itself)
    candidates: tuple[str, ...] = ()  # the entities named in the window, the focus first, then most recent first
    quoted: frozenset[str] = frozenset()  # candidates only ever named inside the focus's own knowledge (a value)


def aliases(name: str) -> set[str]:
    """The forms a name is written in: itself, without its bracketed part, and the bracketed part alone."""
    name = normalize(name).strip()
    forms = {name}
    inner = _PAREN.findall(name)
    if inner:
        forms.add(_PAREN.sub("", name).strip())
        forms.update(x.strip() for x in inner)
    return {f for f in forms if f}


def _shared_forms(derived: dict[str, str], exact: dict[str, str]) -> set[str]:
    """Short forms that also occur inside another entity's name: "电影" of "雨中曲（电影）" is a word, not a name."""
    lengths = sorted({len(f) for f in derived})
    shared: set[str] = set()
    for form_of_name, name in exact.items():
        for n in lengths:
            for i in range(len(form_of_name) - n + 1):
                form = form_of_name[i : i + n]
                if form in derived and derived[form] != name:
                    shared.add(form)
    return shared


class EntityTracker:
    """Longest-match entity mentions over a name dictionary, and the entity an utterance in context is about."""

    def __init__(
        self,
        names: Iterable[str],
        knowledge: dict[str, str] | None = None,
        *,
        window: int = 15,
        margin: int = 2,
        min_cjk_chars: int = 2,
        min_latin_chars: int = 3,
        kinds: dict[str, str | None] | None = None,
    ):
        self.window = window
        self.margin = margin
        self.kinds = dict(kinds or {})  # entity -> "person" | "work" | "place" | "organisation" (absent: unknown)
        self._canonical: dict[str, str] = {}
        exact = {normalize(n).strip(): n for n in names if n and n.strip()}
        for form, name in exact.items():  # a name's own form wins over another name's short form
            self._canonical[form] = name
        owners: dict[str, set[str]] = {}
        for name in exact.values():
            for form in aliases(name) - exact.keys():
                owners.setdefault(form, set()).add(name)
        derived = {form: next(iter(names)) for form, names in owners.items() if len(names) == 1}
        generic = _shared_forms(derived, exact)
        for form, name in derived.items():
            long_enough = len(form) >= (min_cjk_chars if _HAS_CJK.search(form) else min_latin_chars)
            if long_enough and form not in generic:
                self._canonical[form] = name
        lengths: dict[str, set[int]] = {}
        for form in self._canonical:
            lengths.setdefault(form[0], set()).add(len(form))
        self._lengths = {ch: sorted(ls, reverse=True) for ch, ls in lengths.items()}
        self._knowledge = {name: _NOT_WORD.sub("", normalize(text)) for name, text in (knowledge or {}).items()}
        self._scan = lru_cache(maxsize=65536)(self._scan_uncached)

    @classmethod
    def from_items(cls, items: Sequence[Item], **kwargs) -> EntityTracker:
        """Names from the items' entities, and from the titles that are an entity's or name one (a Markdown
        heading "表演" is a topic, not a referent); each entity's knowledge is the text of its items, its kind
        what its predicates say."""
        subjects = {it.entity.strip() for it in items if it.entity and it.entity.strip()}
        titled: dict[str, str] = {}
        for it in items:
            if it.title and it.title.strip() and it.title.strip() not in subjects:
                titled.setdefault(it.title.strip(), it.text)
        names = subjects | {t for t, text in titled.items() if names_an_entity(t, text)}
        knowledge: dict[str, list[str]] = {}
        predicates: dict[str, set[str]] = {}
        for it in items:
            for name in {it.entity, it.title} - {None, ""}:
                if name.strip() in names:
                    knowledge.setdefault(name, []).append(it.text)
                    if it.predicate:
                        predicates.setdefault(name, set()).add(it.predicate)
        kwargs.setdefault("kinds", {name: entity_kind(ps) for name, ps in predicates.items()})
        return cls(sorted(names), {name: "\n".join(texts) for name, texts in knowledge.items()}, **kwargs)

    def __len__(self) -> int:
        return len(self._canonical)

    def mentions(self, text: str) -> tuple[str, ...]:
        """Entity names mentioned in ``text``, in order, longest match first, non-overlapping."""
        return tuple(name for name, _, _ in self._scan(text)[1])

    def _scan_uncached(self, text: str) -> tuple[str, tuple[tuple[str, int, int], ...]]:
        text = normalize(text)
        found: list[tuple[str, int, int]] = []
        i = 0
        while i < len(text):
            for n in self._lengths.get(text[i], ()):
                name = self._canonical.get(text[i : i + n])
                if name is not None:
                    found.append((name, i, i + n))
                    i += n
                    break
            else:
                i += 1
        return text, tuple(found)

    def _quotes_knowledge(self, focus: str, text: str, start: int, end: int) -> bool:
        """Whether the mention at text[start:end] sits in words quoted from the focus entity's own knowledge.

        "地址在北京市海淀区颐和园路5号" names 颐和园 while giving 北京大学's address: a value, not a change of topic.
        """
        known = self._knowledge.get(focus)
        if not known or self.margin <= 0:
            return False
        name = _NOT_WORD.sub("", text[start:end])
        # punctuation does not count: "三船敏郎、志村乔、津岛惠子" quotes a cast list written "三船敏郎，志村乔，津岛惠子"
        before = _NOT_WORD.sub("", text[max(0, start - 2 * self.margin - 2) : start])[-self.margin :]
        after = _NOT_WORD.sub("", text[end : end + 2 * self.margin + 2])[: self.margin]
        return bool(name) and ((bool(before) and before + name in known) or (bool(after) and name + after in known))

    def resolve(self, query: str, context: Sequence[str] | None = None) -> Resolution:
        """The entity ``query`` is about: the focus after reading the last ``window`` messages and the query.

        Reading oldest first, each entity a message names becomes the focus, unless the mention is quoted from
        the current focus's knowledge (an address, a ticket rule naming another place).
        """
        recent = list(context or [])[-self.window :] if self.window > 0 else []
        messages = [*recent, query]
        focus: str | None = None
        at = 0
        seen: dict[str, tuple[int, int]] = {}  # every name the window mentions -> (message, position) of the last
        named: set[str] = set()  # names mentioned at least once on their own, not inside the focus's knowledge
        for index, message in enumerate(messages):
            text, found = self._scan(message)
            for name, start, end in found:
                seen[name] = (index, start)
                if focus is not None and name != focus and self._quotes_knowledge(focus, text, start, end):
                    continue
                focus, at = name, index
                named.add(name)
        if focus is None:
            return Resolution(query)
        wanted = referent_kinds(query)
        if at < len(messages) - 1 and wanted and self.kinds.get(focus) not in wanted:
            # "这部影片有获得过奖项吗？" after the cast was named: the film, not its last-named actor
            fitting = [(where, name) for name, where in seen.items() if self.kinds.get(name) in wanted]
            if fitting:
                (at, _), focus = max(fitting)
        distance = len(messages) - 1 - at
        others = sorted((name for name in seen if name != focus), key=lambda n: seen[n], reverse=True)
        return Resolution(self._expand(query, focus), focus, "query" if distance == 0 else "context", distance,
                          (focus, *others), frozenset(n for n in others if n not in named))

    @staticmethod
    def _expand(query: str, entity: str) -> str:
        return query if normalize(entity) in normalize(query) else f"{entity} {query}"
