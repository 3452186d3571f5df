"""One turn, done right: select history, retrieve knowledge, assemble the prompt, stream the reply.

`Agent` is what the terminal chat, the evaluation and the WebSocket service drive. It never appends to the
history itself: the caller appends (utterance, reply) once the reply is complete, so a cancelled or failed turn
leaves the session as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowledge.embed import shared_embedder
from knowledge.fusion import FusionWeights
from xdai.backends.base import Backend, GenerationSettings
from xdai.backends.stream import TurnFilter
from xdai.history import History, ScoredExchange, select_history_by_decayed_similarity
from xdai.prompt import Knowledge, Prompt, PromptBuilder, estimate_tokens
from xdai.render import renderer_for
from xdai.responder import BotEvent, Delta, Reply, Responder, TurnEvent

__all__ = ["Agent", "BotEvent", "Delta", "NamedStore", "Reply", "Responder", "StoreNotFound", "TurnEvent",
           "open_knowledge", "relevance_of"]

if TYPE_CHECKING:
    from knowledge.embed import Embedder
    from knowledge.settings import KnowledgeSettings
    from knowledge.source import KnowledgeSource
    from xdai.persona import Persona

log = logging.getLogger(__name__)
FREE_CONDITION_PREFIX = "text:"
RETRIEVE_SLACK = 6  # extra hits per query, so that both QA pairs and descriptions survive the kind split
ES_PREFIX = "elasticsearch:"  # a knowledge name "elasticsearch:ALIAS" opens an ElasticStore ($XDAI_ES_URL)


@dataclass
class NamedStore:
    """A knowledge source and the name it is shown under in explanations (its path, or "persona:<name>")."""

    name: str
    store: KnowledgeSource


class Agent(Responder):
    """A persona with its knowledge and a backend; `respond` runs one turn."""

    def __init__(
        self,
        persona: Persona,
        *,
        stores: Sequence[KnowledgeSource | NamedStore] = (),
        backend: Backend | None,
        embedder: Embedder | None = None,
        knowledge_settings: KnowledgeSettings | None = None,
        rendering: str = "auto",
    ) -> None:
        """`rendering`: how the prompt is laid out for the model (`xdai.render`): "auto" picks by the backend and
        its model; "transcript", "chat" or "glm" force one (measurement)."""
        self.persona = persona
        self.backend = backend
        self.embedder = embedder if embedder is not None else shared_embedder("default")
        self.knowledge_settings = knowledge_settings
        self.stores = [s if isinstance(s, NamedStore) else NamedStore(_store_name(s), s) for s in stores]
        inline = _inline_store(persona, self.embedder, knowledge_settings)
        if inline is not None:
            self.stores.append(inline)
        count = getattr(backend, "count_tokens", None)
        self.count_tokens = count if callable(count) else estimate_tokens
        self.builder = PromptBuilder(persona, count_tokens=self.count_tokens)
        self.renderer = renderer_for(backend, rendering)
        self.use_knowledge = True  # evaluation ablations switch these off
        self.use_selection = True
        self.use_memory = True

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_names(
        cls,
        persona: str = "xiaodai",
        knowledge: list[str] | str | None = None,
        backend: str | None = "llama_cpp",
        model: str = "default",
        personas_dir: str | Path | None = None,
        stores_dir: str | Path | None = None,
        knowledge_settings: KnowledgeSettings | None = None,
        **backend_options: Any,
    ) -> Agent:
        """Load a persona by name (under `personas_dir`) or path, open its stores plus `knowledge` (names under
        `stores_dir`), and start a backend (None: no model) with `backend_options` (n_ctx, base_url, ...)."""
        from xdai.persona import load_persona

        loaded = load_persona(persona, personas_dir)
        names = list(getattr(loaded.knowledge, "stores", []) or [])
        extra = [knowledge] if isinstance(knowledge, str) else list(knowledge or [])
        opened = {"stores_dir": stores_dir, "settings": knowledge_settings}
        stores = [open_knowledge(n, persona=loaded, **opened) for n in names]
        stores += [open_knowledge(n, **opened) for n in extra]
        engine = None
        if backend:
            from xdai.backends import get_backend

            engine = get_backend(backend, model, **backend_options)
        return cls(loaded, stores=stores, backend=engine, knowledge_settings=knowledge_settings)

    def greeting(self) -> str:
        return self.persona.greeting()

    def new_history(self) -> History:
        return History()

    # -- one turn ----------------------------------------------------------------------------------------------
    def condition_text(self, condition: str | None) -> tuple[str, str] | None:
        """(name, post-response) for a named condition, or free text given as "text:...". Unknown: ValueError."""
        if condition is None or condition == "":
            return None
        if condition.startswith(FREE_CONDITION_PREFIX):
            text = condition[len(FREE_CONDITION_PREFIX) :].strip()
            return ("text", text) if text else None
        conditions = dict(getattr(self.persona, "conditions", {}) or {})
        if condition not in conditions:
            known = ", ".join(sorted(conditions)) or "none"
            raise ValueError(f"unknown condition {condition!r} for persona {self.persona.name!r} (known: {known})")
        return condition, conditions[condition]

    def build_prompt(self, history: History, utterance: str, *, condition: str | None = None) -> Prompt:
        """Select history, retrieve knowledge and assemble the annotated prompt. No model call."""
        spec = self.persona.selection
        cond = self.condition_text(condition)
        utterance = utterance or ""
        context = _recent_texts(history, spec.lore_scan_turns)
        selection, vectors = self._select(history, utterance, self._expanded_queries(utterance, context))
        exchange_knowledge: dict[int, Knowledge] = {}
        utterance_knowledge: Knowledge | None = None
        background: list[Knowledge] = []
        qa: list[Knowledge] = []
        if self.use_knowledge and self.stores:
            qa, background, found = self._retrieve(utterance, context, history, selection, vectors)
            utterance_knowledge = qa[0] if qa else None
            used = {utterance_knowledge.id} if utterance_knowledge else set()
            for index, item in sorted(found.items()):
                if item.id not in used:  # one piece of knowledge is said once, as close to the utterance as possible
                    exchange_knowledge[index] = item
                    used.add(item.id)
        lore = []
        book = getattr(self.persona, "character_book", None)
        if book is not None:
            # The whole conversation, so an entry may scan deeper than `lore_scan_turns` (its own scan depth);
            # replies count the greeting; the rolls of probabilistic entries are seeded, so a turn is reproducible.
            seed = (getattr(self.persona, "generation", None) or {}).get("seed")
            lore = list(book.activate(
                [*_recent_texts(history, len(history)), utterance], default_scan_depth=len(context) + 1,
                replies=len(history) + (1 if getattr(self.persona, "first_mes", "") else 0),
                seed=seed if isinstance(seed, int) else 0, count_tokens=self.count_tokens))
        prompt = self.builder.build(
            utterance,
            selection=selection,
            exchange_knowledge=exchange_knowledge,
            utterance_knowledge=utterance_knowledge,
            background=background,
            lore=lore,
            condition=cond,
            memory=self._recall(history, utterance),
        )
        # Questions the user might ask next: the other QA pairs retrieved for this utterance.
        prompt.suggestions = [k.q for k in qa[1:] if k.q][:3] if self.use_knowledge and self.stores else []
        prompt.rendering, prompt.rendered = self.renderer.name, self.renderer.render(prompt)
        return prompt

    async def respond(
        self,
        history: History,
        utterance: str,
        *,
        condition: str | None = None,
        cancel: asyncio.Event | None = None,
        session: str | None = None,
    ) -> AsyncIterator[TurnEvent]:
        """Stream Delta pieces, then exactly one Reply. Setting `cancel` ends the turn with "cancelled". An agent
        keeps nothing per session: `session` is for flows (`xdai.flows.FlowAgent`)."""
        prompt = self.build_prompt(history, utterance, condition=condition)
        settings = self.generation_settings(prompt)
        usage = {"prompt_tokens": self.count_tokens(prompt.for_model().before), "completion_tokens": 0}
        if self.backend is None:
            raise RuntimeError("this Agent has no backend: build it with a backend to generate replies")
        filt = ReplyFilter(prompt.stop_sequences(), _safety(self.persona))
        finish, error = "stop", None
        # A persona that must not guess has every reply checked (`xdai.choose`), even a single sample.
        reranked = (self._rerank_count() > 1 or bool(self._gen("inverse_prompting", False))
                    or bool(self.persona.generation.get("must_not_guess", False)))
        pieces: Any = None
        try:
            if reranked:
                pieces = self._reranked(prompt, settings, utterance)
            else:
                pieces = self.backend.fill(prompt.for_model(), settings)
            async for piece in _until_cancelled(pieces, cancel):
                usage["completion_tokens"] += self._piece_tokens(piece)
                out = filt.feed(piece)
                if out:
                    yield Delta(out)
                if filt.stopped:
                    break
            else:
                usage["completion_tokens"] = _generated_tokens(pieces, usage["completion_tokens"])
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                elif usage["completion_tokens"] >= settings.max_tokens:
                    finish = "length"
        except asyncio.CancelledError:
            finish = "cancelled"
        except Exception as exc:  # a backend failure ends this turn, never the session
            log.exception("backend %s failed", getattr(self.backend, "name", "?"))
            finish, error = "error", f"{type(exc).__name__}: {exc}"
        usage["completion_tokens"] = _generated_tokens(pieces, usage["completion_tokens"])
        tail = filt.flush()
        if tail:
            yield Delta(tail)
        if reranked and filt.text:  # the best candidate arrives whole: count its tokens
            usage["completion_tokens"] = self.count_tokens(filt.text)
        yield Reply(
            text=filt.text.strip(),
            finish_reason=finish,
            usage=usage,
            grounding=prompt.grounding(),
            prompt=prompt,
            suggestions=list(prompt.suggestions),
            error=error,
        )

    async def reply_text(self, history: History, utterance: str, *, condition: str | None = None) -> Reply:
        """The whole reply at once (evaluation, tests)."""
        reply = None
        async for event in self.respond(history, utterance, condition=condition):
            if isinstance(event, Reply):
                reply = event
        assert reply is not None
        return reply

    def generation_settings(self, prompt: Prompt) -> GenerationSettings:
        """The persona's generation settings, stopping at the next speaker tag."""
        settings = self.persona.generation_settings()
        settings.stop = list(dict.fromkeys([*settings.stop, *prompt.stop_sequences()]))
        return settings

    # -- the parts ---------------------------------------------------------------------------------------------
    def _select(self, history: History, utterance: str, also: list[str]) -> tuple[list[ScoredExchange], Any]:
        """The scored exchanges, and the exchange vectors (None without history)."""
        spec = self.persona.selection
        count = len(history)
        if count == 0:
            return [], None
        vectors, query = history.embed_turn(self.embedder, utterance, also)
        if not self.use_selection:  # ablation: the most recent exchanges, no scoring (knowledge is still injected)
            keep = set(range(max(count - spec.history_pairs, 0), count))
            return [
                ScoredExchange(i, e, 1.0, 0.0, 0.0, selected=i in keep) for i, e in enumerate(history.exchanges)
            ], vectors
        kept, scores, decays, cosines = select_history_by_decayed_similarity(
            vectors, query, alpha=spec.alpha, n=spec.history_pairs
        )
        kept_set = set(kept)
        by_score = sorted(range(count), key=lambda i: (-scores[i], -i))[: spec.history_pairs]
        forced = count - 1 if kept and (count - 1) not in by_score else None
        scored = [
            ScoredExchange(
                i, e, float(decays[i]), float(cosines[i]), float(scores[i]), selected=i in kept_set, forced=i == forced
            )
            for i, e in enumerate(history.exchanges)
        ]
        return scored, vectors

    def _recall(self, history: History, utterance: str) -> list[Any]:
        """The user's memories relevant to this turn (`xdai.memory`): from the memory the session carries
        (``history.memory``, set by whoever opened it for a user), unless the persona keeps none."""
        memory = getattr(history, "memory", None)
        if memory is None or not self.use_memory or not getattr(self.persona, "memory", True):
            return []
        spec = self.persona.selection
        threshold = spec.memory_threshold if spec.memory_threshold is not None else spec.qa_threshold
        return memory.recall(utterance, embedder=self.embedder, k=spec.memory_k, threshold=threshold)

    def _expanded_queries(self, utterance: str, context: list[str]) -> list[str]:
        """The texts the stores' retrievers will embed for the utterance (entity-expanded in dialogue context)."""
        if not (self.use_knowledge and utterance.strip()):
            return []
        out = []
        for named in self.stores:
            query = named.store.resolve(utterance, context).query
            if query != utterance and query not in out:
                out.append(query)
        return out

    def _retrieve(
        self, utterance: str, context: list[str], history: History, selection: list[ScoredExchange], vectors: Any
    ) -> tuple[list[Knowledge], list[Knowledge], dict[int, Knowledge]]:
        """(QA pairs for the utterance, background descriptions, the best QA pair per selected exchange).

        The utterance goes through each store's hybrid retrieval (dense + BM25 + dialogue context), its dense and
        BM25 lists weighted as the persona says (``selection.dense_weight`` / ``bm25_weight``, multiplying the
        store's own weights). A selected exchange's QA pair is the QA item nearest to the exchange's cached
        embedding (cosine, the formula's own similarity): no new embedding, memoised on the history, since an
        exchange never changes.
        """
        spec = self.persona.selection
        ranked: dict[str, list[tuple[int, Knowledge]]] = {"qa": [], "description": []}
        if utterance.strip():
            depth = max(spec.top_k, 1) + spec.background_k + RETRIEVE_SLACK
            weights = FusionWeights(dense=spec.dense_weight, bm25=spec.bm25_weight)
            for named in self.stores:
                hits = named.store.query(utterance, context=context, top_k=depth, kind=None, weights=weights)
                for rank, hit in enumerate(hits):
                    found = self._relevant(hit, named.name)
                    if found is not None:
                        ranked["qa" if found.kind == "qa" else "description"].append((rank, found))
        # A store's own order puts the asked-for fact of the dialogue's entity first (its second stage), and
        # generation copies what comes first: stores interleave by rank, the relevance cosine breaks ties.
        qa = [k for _, k in sorted(ranked["qa"], key=lambda rk: (rk[0], -rk[1].score))]
        background = [k for _, k in sorted(ranked["description"], key=lambda rk: (rk[0], -rk[1].score))]
        key = "qa:" + ",".join(s.name for s in self.stores)
        per_exchange: dict[int, Knowledge] = {}
        for scored in selection:
            if not scored.selected or not scored.exchange.text():
                continue
            memo = history.cached(scored.index, key)
            if memo is None:
                before = _recent_texts(History(history.exchanges[: scored.index]), spec.lore_scan_turns)
                memo = self._nearest_qa(vectors[scored.index], scored.exchange.text(), before) if vectors is not None else None
                history.remember(scored.index, key, memo if memo is not None else False)
            if memo:
                per_exchange[scored.index] = memo
        return qa[: max(spec.top_k, 1)], background[: spec.background_k], per_exchange

    def _nearest_qa(self, vector: Any, text: str, context: list[str]) -> Knowledge | None:
        """The QA item with the highest cosine to an exchange's `vector` over all stores, above the threshold.

        When a store resolves what the exchange is about (named in it, or in the `context` before it), only that
        entity's QA pairs qualify: "那它那里需要门票吗？" must not get another place's ticket price.
        """
        best: Knowledge | None = None
        for named in self.stores:
            hit = named.store.nearest_qa(vector, text=text, context=context)
            if hit is None or hit.score < self.persona.selection.qa_threshold:
                continue
            if best is None or hit.score > best.score:
                best = Knowledge.from_hit(hit, store=named.name)
        return best

    def _relevant(self, hit: Any, store: str) -> Knowledge | None:
        relevance = relevance_of(hit)
        if relevance < self.persona.selection.qa_threshold:
            return None
        return Knowledge.from_hit(hit, store=store, score=relevance)

    def _gen(self, key: str, default: Any) -> Any:
        return self.persona.rerank_options().get(key, default)

    def _rerank_count(self) -> int:
        return int(self._gen("rerank", 0) or 0)

    def _piece_tokens(self, piece: str) -> int:
        """A piece from a backend that does not count its tokens (see `_generated_tokens`) counts as one."""
        return 1 if piece else 0

    async def _reranked(self, prompt: Prompt, settings: GenerationSettings, utterance: str) -> AsyncIterator[str]:
        """Sample n candidates side by side and race them (`xdai.race`): each is scored by the model the moment
        it ends (`xdai.rerank`: likelihood, post-response likelihood, inverse prompting) while the others decode,
        and rivals that run `rerank_slack` tokens past an ended, eligible candidate are cut. The choice
        (`xdai.choose`: grounding, unsupported claims, contradictions, copied examples, weighted as the persona
        says) takes the best that stood, or the fallback when every one asserts something unsupported; it is kept
        on the prompt (`Prompt.rerank`: the standing candidates' scores, and every entrant's tokens, eligibility
        and cut), and yielded whole the moment it is made."""
        from xdai import rerank
        from xdai.choose import ChoiceWeights, PromptFacts, choose
        from xdai.race import Entrant, race

        weights = ChoiceWeights.of(self.persona)
        inverse = None
        if self._gen("inverse_prompting", False) and utterance.strip():
            inverse = rerank.InversePrompt.for_language(
                utterance, self.persona.language, float(self._gen("inverse_weight", 1.0))
            )
        infill, stops, facts = prompt.for_model(), prompt.stop_sequences(), PromptFacts(prompt)

        async def score(entrant: Entrant) -> rerank.Candidate:  # forward from the decode where it was reported
            return await rerank.score_candidate(self.backend, infill, entrant.text, post_weight=weights.post,
                                                forward_weight=weights.likelihood, inverse=inverse,
                                                forward_logprob=entrant.logprob)

        streams = rerank.candidate_streams(self.backend, infill, settings, max(self._rerank_count(), 1))
        entrants = await race(streams, score=score, eligible=lambda text: facts.choosable(_turn_text(text, stops)),
                              slack=self._gen("rerank_slack", None))
        standing = [dataclasses.replace(e.result, text=_turn_text(e.text, stops)) for e in entrants if e.standing]
        choice = choose(standing, prompt, weights, facts)
        prompt.rerank = {**choice.to_json(), "entrants": [e.to_json() for e in entrants]}
        yield choice.text


def _turn_text(text: str, stops: Sequence[str]) -> str:
    """What the user would see of a raw candidate: the bot's turn only (`TurnFilter`), one line."""
    turn = TurnFilter(stops, single_line=True)
    return (turn.feed(text) + turn.finish()).strip()


def relevance_of(hit: Any) -> float:
    """A hit's relevance on the cosine scale the persona's threshold is written in.

    Stores fuse dense and BM25 ranks (RRF), whose scores are not comparable across queries; the dense cosine
    is. A hit found only lexically or through the dialogue's entity counts as relevant at the threshold.
    """
    why = getattr(hit, "why", {}) or {}
    dense = why.get("dense_score")
    if dense is not None:
        return float(dense)
    return float(hit.score)


class ReplyFilter:
    """The backend's bot-turn trimming (`TurnFilter`) plus the persona's safety words, masked across pieces."""

    def __init__(self, stops: Sequence[str], safety: tuple[list[str], str] = ([], "")) -> None:
        self.turn = TurnFilter(stops, single_line=True)
        self.blocked, self.replacement = [w for w in safety[0] if w], safety[1]
        self.hold = max([len(w) for w in self.blocked] + [1]) - 1
        self.buffer = ""
        self.text = ""

    @property
    def stopped(self) -> bool:
        return self.turn.done

    def _release(self, final: bool) -> str:
        for word in self.blocked:
            self.buffer = self.buffer.replace(word, self.replacement)
        split = len(self.buffer) if final else max(len(self.buffer) - self.hold, 0)
        ready, self.buffer = self.buffer[:split], self.buffer[split:]
        self.text += ready
        return ready

    def feed(self, piece: str) -> str:
        self.buffer += self.turn.feed(piece)
        return self._release(final=self.turn.done)

    def flush(self) -> str:
        self.buffer += self.turn.finish()
        return self._release(final=True)


async def _until_cancelled(pieces: AsyncIterator[str], cancel: asyncio.Event | None) -> AsyncIterator[str]:
    """`pieces` until they end or `cancel` is set, whichever comes first (also while waiting for a piece)."""
    iterator = pieces.__aiter__()
    waiter = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    try:
        while True:
            if waiter is None:
                try:
                    piece = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                yield piece
                continue
            step = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if step not in done:  # cancelled while the model was busy: stop it where it is
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step
                return
            try:
                piece = step.result()
            except StopAsyncIteration:
                return
            yield piece
    finally:
        if waiter is not None:
            waiter.cancel()
        close = getattr(iterator, "aclose", None)
        if close is not None:
            with contextlib.suppress(RuntimeError):
                await close()


def _generated_tokens(pieces: Any, counted: int) -> int:
    """Completion tokens: the backend's own count where its stream keeps one (`xdai.backends.stream.TokenStream`),
    else `counted`, the pieces seen."""
    tokens = getattr(pieces, "tokens", None)
    return tokens if isinstance(tokens, int) else counted


def _safety(persona: Any) -> tuple[list[str], str]:
    spec = getattr(persona, "safety", None)
    if spec is None:
        return [], ""
    return list(getattr(spec, "blocked_words", []) or []), str(getattr(spec, "replacement", "") or "")


def _recent_texts(history: History, turns: int) -> list[str]:
    """The last `turns` exchanges as messages, oldest first (retrieval context, lorebook scan)."""
    out: list[str] = []
    for ex in history.exchanges[-turns:] if turns > 0 else []:
        out += [t for t in (ex.user, ex.bot) if t]
    return out


def _store_name(store: Any) -> str:
    return str(getattr(store, "path", None) or getattr(store, "name", None) or type(store).__name__)


def _persona_file(persona: Any) -> str:
    return str(getattr(persona, "path", None) or persona.name)


class StoreNotFound(FileNotFoundError):
    """A knowledge store named by a persona or on the command line does not exist."""


def open_knowledge(name: str, *, persona: Any = None, stores_dir: str | Path | None = None,
                   settings: KnowledgeSettings | None = None) -> NamedStore:
    """Open a knowledge store by path or by name (under `stores_dir`, see `xdai.persona.resolve_store`), or an
    Elasticsearch store as "elasticsearch:ALIAS"; missing: StoreNotFound naming both."""
    from knowledge.store import Store
    from xdai.persona import resolve_store

    if name.startswith(ES_PREFIX):
        from knowledge.elastic import ElasticStore

        return NamedStore(name, ElasticStore.open(name[len(ES_PREFIX) :], settings=settings))
    persona_path = getattr(persona, "path", None)
    path = resolve_store(name, persona_path, stores_dir)
    if path is None:
        owner = f"persona {persona_path or persona.name} names" if persona is not None else "--knowledge names"
        raise StoreNotFound(
            f"{owner} knowledge store {name!r}, but no store exists there "
            f"(build it with: xdai knowledge build SOURCES --out {name})"
        )
    embedder = None
    try:  # the store's own embedder, behind the process-wide cache that history selection shares
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        embedder = shared_embedder(manifest["embedder"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # Store.open reports what is wrong with the store
    return NamedStore(str(path), Store.open(path, embedder=embedder, settings=settings))


def _inline_store(persona: Any, embedder: Any, settings: KnowledgeSettings | None) -> NamedStore | None:
    """The persona's inline background descriptions and QA pairs as an in-memory store."""
    spec = getattr(persona, "knowledge", None)
    if spec is None:
        return None
    from knowledge.item import Item
    from knowledge.store import Store

    source = _persona_file(persona)
    items = []
    for i, qa in enumerate(getattr(spec, "qa", []) or []):
        items.append(Item(id=f"{persona.name}:qa:{i}", kind="qa", text=f"{qa.q} {qa.a}", q=qa.q, a=qa.a,
                          lang=persona.language, source_file=source, source_record=f"knowledge.qa[{i}]"))
    for i, text in enumerate(getattr(spec, "background", []) or []):
        items.append(Item(id=f"{persona.name}:background:{i}", kind="description", text=text, lang=persona.language,
                          source_file=source, source_record=f"knowledge.background[{i}]"))
    if not items:
        return None
    return NamedStore(f"persona:{persona.name}", Store.from_items(items, embedder, settings=settings))
