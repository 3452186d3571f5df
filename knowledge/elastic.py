"""`ElasticStore`: the `Store` interface on an Elasticsearch 8.x/9.x cluster, for knowledge that outgrows one box.

- Build: the same sources and curation as `Store` (`knowledge.store.curate_sources`), bulk-indexed into a new
  index ``<alias>-<timestamp>``, then one atomic ``_aliases`` call moves the alias onto it and the old index is
  deleted. A failed build deletes its new index and leaves the alias where it was.
- Text fields use a Chinese-capable analyzer: ``smartcn`` or ``ik`` where the plugin is installed, otherwise the
  built-in ``cjk`` analyzer (CJK bigrams); ``analyzer="auto"`` picks in that order. Embeddings go in a
  ``dense_vector`` field (dot product over L2-normalised vectors) searched with kNN.
- Query: dialogue-context entity resolution (`knowledge.context.EntityTracker`), then BM25, kNN and the resolved
  entity's own items, fused client-side by weighted reciprocal-rank fusion (`knowledge.fusion`, as `Store` does),
  so that no licensed server-side RRF is needed. kNN scores are turned back into cosines, so that hits and
  `nearest_qa` read like a `Store`'s: an `ElasticStore` is a `knowledge.source.KnowledgeSource` too.

Requests go through the official client's `perform_request` with an explicit REST-compatibility header
(``compatible-with=<server major>``), so that the 9.x client serves 8.x servers too.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from knowledge.context import EntityTracker, Resolution
from knowledge.embed import Embedder
from knowledge.fusion import FusionWeights, fuse
from knowledge.item import Hit, Item
from knowledge.settings import KnowledgeSettings
from knowledge.store import BuildReport, StoreError, curate_sources, passage_embedder, resolve_embedder

URL_ENV = "XDAI_ES_URL"
API_KEY_ENV = "XDAI_ES_API_KEY"
ANALYZERS = ("smartcn", "ik", "cjk")
_FIELDS = ("id", "kind", "text", "q", "a", "title", "entity", "predicate", "lang", "tags", "source_file",
           "source_record", "reference")


def connect(url: str | None = None, **options: Any) -> Any:
    """An `elasticsearch.Elasticsearch` client for `url` (default $XDAI_ES_URL; API key from $XDAI_ES_API_KEY)."""
    from elasticsearch import Elasticsearch

    url = url or os.environ.get(URL_ENV)
    if not url:
        raise StoreError(f"no Elasticsearch URL: pass url= or set ${URL_ENV} (e.g. http://localhost:9200)")
    if os.environ.get(API_KEY_ENV) and "api_key" not in options:
        options["api_key"] = os.environ[API_KEY_ENV]
    return Elasticsearch(url, **options)


def choose_analyzer(plugins: Sequence[str], wanted: str = "auto") -> str:
    """The analyzer to index text with: `wanted`, or for "auto" smartcn > ik > the built-in cjk (bigrams)."""
    installed = {"smartcn": "analysis-smartcn" in plugins, "ik": "analysis-ik" in plugins, "cjk": True}
    if wanted == "auto":
        return next(name for name in ANALYZERS if installed[name])
    if wanted not in installed:
        raise StoreError(f"unknown analyzer {wanted!r}: choose auto, {', '.join(ANALYZERS)}")
    if not installed[wanted]:
        raise StoreError(f"analyzer {wanted!r} needs the Elasticsearch plugin analysis-{wanted}, which is not installed")
    return wanted


def index_body(dim: int, analyzer: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Settings and mappings of one store index: analysed text, keyword filters, a dense_vector for kNN."""
    index_analyzer, search_analyzer = {"smartcn": ("smartcn", "smartcn"), "ik": ("ik_max_word", "ik_smart"),
                                       "cjk": ("cjk", "cjk")}[analyzer]
    text = {"type": "text", "analyzer": index_analyzer, "search_analyzer": search_analyzer}
    keyword = {"type": "keyword"}
    return {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {
            "_meta": meta,
            "dynamic": "strict",
            "properties": {
                "id": keyword, "kind": keyword, "lang": keyword, "tags": keyword, "predicate": keyword,
                "entity": keyword, "source_file": keyword, "source_record": keyword,
                "reference": {"type": "keyword", "index": False},
                "position": {"type": "integer"},
                "text": {"type": "text", "index": False},
                "q": {"type": "text", "index": False},
                "a": {"type": "text", "index": False},
                "title": {"type": "keyword", "fields": {"text": text}},
                "search_text": text,
                "vector": {"type": "dense_vector", "dims": dim, "index": True, "similarity": "dot_product"},
            },
        },
    }


class _Rest:
    """The official client's `perform_request`, with the REST-compatibility header the server's major needs."""

    def __init__(self, client: Any) -> None:
        self.client = client
        info = self.call("GET", "/", compat=8)
        self.server_version = info["version"]["number"]
        major = int(self.server_version.split(".")[0])
        if major not in (8, 9):
            raise StoreError(f"Elasticsearch {self.server_version} is not supported (8.x or 9.x)")
        from elasticsearch import __versionstr__

        self.compat = min(major, int(__versionstr__.split(".")[0]))

    def call(self, method: str, path: str, body: Any = None, *, params: dict[str, Any] | None = None,
             ndjson: bool = False, compat: int | None = None) -> Any:
        kind = "x-ndjson" if ndjson else "json"
        version = compat or self.compat
        headers = {"accept": f"application/vnd.elasticsearch+json; compatible-with={version}"}
        if body is not None:
            headers["content-type"] = f"application/vnd.elasticsearch+{kind}; compatible-with={version}"
        return self.client.perform_request(method, path, params=params, headers=headers, body=body).body


class ElasticStore:
    """Knowledge in an Elasticsearch index behind an alias; same build/add/query interface as `Store`."""

    def __init__(self, rest: _Rest, alias: str, embedder: Embedder, meta: dict[str, Any], *,
                 settings: KnowledgeSettings | None = None, context_weight: float = 10.0) -> None:
        self.rest, self.alias, self.embedder, self.manifest = rest, alias, embedder, meta
        self.settings = k = settings if settings is not None else KnowledgeSettings()
        self.dense_weight, self.bm25_weight, self.rrf_k = k.dense_weight, k.bm25_weight, k.rrf_k
        self.context_weight = context_weight
        self.tracker = self._tracker()

    @property
    def path(self) -> str:
        return f"elasticsearch:{self.alias}"

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, sources: Sequence[Any], alias: str, *, url: str | None = None, client: Any = None,
              embedder: str | Embedder = "default", analyzer: str = "auto", skip_bad: bool = False,
              progress: bool = True, settings: KnowledgeSettings | None = None,
              embed_cache: bool | None = None) -> BuildReport:
        """Curate `sources`, bulk-index them into a new index and move `alias` onto it atomically."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", alias):
            raise StoreError(f"{alias!r}: an Elasticsearch store name must be lower case letters, digits, '.', '_', '-'")
        settings = settings if settings is not None else KnowledgeSettings()
        rest = _Rest(client or connect(url))
        emb = resolve_embedder(embedder, settings)
        start = time.perf_counter()
        items, vectors, report, skipped, labels = curate_sources(
            sources, passage_embedder(emb, settings, embed_cache), settings, skip_bad=skip_bad, progress=progress
        )
        chosen = choose_analyzer(_plugins(rest), analyzer)
        meta = _meta(items, emb, chosen, labels, report.to_dict() | {"skipped": len(skipped)}, rest.server_version)
        _index_and_swap(rest, alias, items, vectors, emb.dim, chosen, meta, progress)
        return _report(meta, len(items), report, skipped, time.perf_counter() - start, alias, "built")

    @classmethod
    def open(cls, alias: str, *, url: str | None = None, client: Any = None, embedder: str | Embedder | None = None,
             settings: KnowledgeSettings | None = None) -> ElasticStore:
        rest = _Rest(client or connect(url))
        meta = _current_meta(rest, alias)
        emb = resolve_embedder(embedder or meta["embedder"]["name"], None)
        if emb.dim != meta["embedder"]["dim"]:
            raise StoreError(f"{alias}: indexed with {meta['embedder']['name']} (dim {meta['embedder']['dim']}), "
                             f"cannot query with {emb.name} (dim {emb.dim})")
        return cls(rest, alias, emb, meta, settings=settings)

    def add(self, sources: Sequence[Any], *, skip_bad: bool = False, progress: bool = True,
            embed_cache: bool | None = None) -> BuildReport:
        """New items (deduplicated against the index) go with the old ones into a new index; then the alias moves."""
        start = time.perf_counter()
        encoder = passage_embedder(self.embedder, self.settings, embed_cache)
        existing = self.items
        vectors = self._vectors(existing, encoder)
        shadow = _Existing(existing, vectors)
        new, new_vectors, report, skipped, labels = curate_sources(
            sources, encoder, self.settings, skip_bad=skip_bad, progress=progress, existing=shadow,
        )
        if new:
            items = existing + new
            meta = _meta(items, self.embedder, self.manifest["analyzer"], self.manifest["sources"] + labels,
                         report.to_dict() | {"skipped": len(skipped)}, self.rest.server_version)
            _index_and_swap(self.rest, self.alias, items, np.concatenate([vectors, new_vectors]), self.embedder.dim,
                            self.manifest["analyzer"], meta, progress)
            self.manifest = meta
            self.tracker = self._tracker()
        return _report(self.manifest, len(new), report, skipped, time.perf_counter() - start, self.alias, "added to")

    # -- reading -----------------------------------------------------------------------------------------------
    @property
    def items(self) -> list[Item]:
        return [_item(src) for src in self._scan(["*"], exclude=["vector", "search_text", "position"])]

    def item(self, item_id: str) -> Item:
        found = self.rest.call("POST", f"/{self.alias}/_search",
                               {"query": {"term": {"id": item_id}}, "size": 1, "_source": {"excludes": ["vector"]}})
        hits = found["hits"]["hits"]
        if not hits:
            raise KeyError(f"no item {item_id!r} in {self.alias}")
        return _item(hits[0]["_source"])

    def stats(self) -> dict[str, Any]:
        m = self.manifest
        count = self.rest.call("POST", f"/{self.alias}/_count", {"query": {"match_all": {}}})["count"]
        return {"path": self.path, "items": count, "by_kind": m["counts"]["by_kind"], "by_lang": m["counts"]["by_lang"],
                "entities": len(self.tracker), "embedder": m["embedder"], "analyzer": m["analyzer"],
                "index": m["index"], "server": self.rest.server_version, "built_at": m["built_at"],
                "sources": m["sources"], "curation": m["curation"]}

    def query(self, query: str, *, context: Sequence[str] | None = None, top_k: int | None = None,
              kind: str | None = None, tags: Sequence[str] | None = None,
              weights: FusionWeights | None = None) -> list[Hit]:
        """The best `top_k` hits (default `settings.top_k`) for `query` said after `context`, oldest first."""
        return self.query_batch([{"query": query, "context": list(context or [])}], top_k=top_k, kind=kind,
                                tags=tags, weights=weights)[0]

    def query_batch(self, queries: list[dict[str, Any]], *, top_k: int | None = None, kind: str | None = None,
                    tags: Sequence[str] | None = None, weights: FusionWeights | None = None,
                    candidates: int = 100) -> list[list[Hit]]:
        """BM25 + kNN + resolved-entity lists per query, in one `_msearch`, fused by weighted RRF."""
        if kind is not None and kind not in ("qa", "description"):
            raise ValueError(f"kind must be 'qa' or 'description', got {kind!r}")
        if not queries:
            return []
        top_k = self.settings.top_k if top_k is None else top_k
        scale = weights or FusionWeights()
        weight = {"bm25": self.bm25_weight * scale.bm25, "dense": self.dense_weight * scale.dense,
                  "entity": self.context_weight}
        filters = self._filters(kind, tags)
        resolved = [self.tracker.resolve(q["query"], q.get("context")) for q in queries]
        qvecs = self.embedder.encode([r.query for r in resolved], role="query")
        n = max(candidates, top_k)
        searches: list[dict[str, Any]] = []
        layout: list[list[str]] = []
        for res, vec in zip(resolved, qvecs, strict=True):
            match = {"match": {"search_text": res.query}}
            parts = {}
            if weight["bm25"] > 0:
                parts["bm25"] = {"query": {"bool": {"must": [match], "filter": filters}}, "size": n}
            if weight["dense"] > 0:
                parts["dense"] = {"knn": self._knn(vec, n, filters), "size": n}
            if res.entity is not None and self.context_weight:
                about = {"bool": {"should": [{"term": {"entity": res.entity}}, {"term": {"title": res.entity}}],
                                  "minimum_should_match": 1}}
                parts["entity"] = {"query": {"bool": {"filter": [*filters, about], "should": [match]}}, "size": n}
            layout.append(list(parts))
            for body in parts.values():
                searches.extend([{"index": self.alias}, {**body, "_source": {"excludes": ["vector", "search_text"]}}])
        responses = iter(self._msearch(searches) if searches else [])
        out = []
        for res, names in zip(resolved, layout, strict=True):
            lists, sources = {}, {}
            for name in names:
                response = next(responses)
                if "error" in response:
                    raise StoreError(f"{self.alias}: {name} search failed: {response['error']}")
                ranked = []
                for hit in response["hits"]["hits"]:
                    sources[hit["_id"]] = hit["_source"]
                    score = float(hit["_score"] or 0.0)
                    ranked.append((hit["_id"], _cosine(score) if name == "dense" else score))
                lists[name] = (weight[name], ranked)
            out.append([Hit(_item(sources[doc]), score, why) for doc, score, why in fuse(lists, self.rrf_k, top_k, res)])
        return out

    def nearest_qa(self, vector: Any, *, text: str = "", context: Sequence[str] | None = None) -> Hit | None:
        """The QA item nearest to `vector` by kNN (the hit's score: the cosine); see `KnowledgeSource`."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.embedder.dim:
            return None
        res = self.tracker.resolve(text, context)
        filters = self._filters("qa", None)
        if res.entity:
            filters.append({"bool": {"should": [{"term": {"entity": res.entity}}, {"term": {"title": res.entity}}],
                                     "minimum_should_match": 1}})
        body = {"knn": self._knn(vector, 1, filters), "size": 1, "_source": {"excludes": ["vector", "search_text"]}}
        hits = self.rest.call("POST", f"/{self.alias}/_search", body)["hits"]["hits"]
        if not hits:
            return None
        cosine = round(_cosine(float(hits[0]["_score"] or 0.0)), 6)
        why = {"dense_rank": 1, "dense_score": cosine, "context_entity": res.entity, "entity_source": res.source,
               "query": text}
        return Hit(_item(hits[0]["_source"]), cosine, why)

    def resolve(self, text: str, context: Sequence[str] | None = None) -> Resolution:
        """The entity `text` is about in `context`, and the query this store would search with."""
        return self.tracker.resolve(text, context)

    def as_retriever(self, **kw: Any) -> Any:
        from knowledge.langchain import StoreRetriever

        return StoreRetriever(store=self, **kw)

    def drop(self) -> None:
        """Delete the alias and every index behind it."""
        for index in _indices_of(self.rest, self.alias):
            self.rest.call("DELETE", f"/{index}")

    # -- internals ---------------------------------------------------------------------------------------------
    @staticmethod
    def _filters(kind: str | None, tags: Sequence[str] | None) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = []
        if kind:
            filters.append({"term": {"kind": kind}})
        if tags:
            filters.append({"terms": {"tags": list(tags)}})
        return filters

    @staticmethod
    def _knn(vector: np.ndarray, k: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
        return {"field": "vector", "query_vector": np.asarray(vector).tolist(), "k": k,
                "num_candidates": max(k * 2, 100), **({"filter": filters} if filters else {})}

    def _msearch(self, searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ndjson = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in searches)
        return self.rest.call("POST", "/_msearch", ndjson, ndjson=True)["responses"]

    def _scan(self, fields: list[str], *, query: dict[str, Any] | None = None, exclude: list[str] | None = None):
        """Every document's _source in position order (search_after paging)."""
        after = None
        while True:
            body: dict[str, Any] = {"query": query or {"match_all": {}}, "size": 1000, "sort": [{"position": "asc"}],
                                    "_source": {"includes": fields, "excludes": exclude or []}}
            if after is not None:
                body["search_after"] = after
            hits = self.rest.call("POST", f"/{self.alias}/_search", body)["hits"]["hits"]
            if not hits:
                return
            yield from (h["_source"] for h in hits)
            after = hits[-1]["sort"]

    def _vectors(self, items: list[Item], encoder: Embedder) -> np.ndarray:
        """The indexed vectors of `items`, from _source; re-encoded (through the cache) where the server leaves
        vectors out of _source (newer 9.x servers may)."""
        by_id = {src["id"]: src.get("vector") for src in self._scan(["id", "vector"])}
        out = np.zeros((len(items), self.embedder.dim), dtype=np.float32)
        missing = [i for i, it in enumerate(items) if not by_id.get(it.id)]
        for i, it in enumerate(items):
            if by_id.get(it.id):
                out[i] = by_id[it.id]
        if missing:
            out[missing] = encoder.encode([items[i].search_text for i in missing], role="passage")
        return out

    def _tracker(self) -> EntityTracker:
        knowledge: dict[str, list[str]] = {}
        named = {"bool": {"should": [{"exists": {"field": "entity"}}, {"exists": {"field": "title"}}]}}
        for src in self._scan(["entity", "title", "text"], query=named):
            for name in {src.get("entity"), src.get("title")} - {None, ""}:
                knowledge.setdefault(name, []).append(src["text"])
        return EntityTracker(sorted(knowledge), {n: "\n".join(t) for n, t in knowledge.items()})

    def __repr__(self) -> str:
        return f"ElasticStore({self.alias}, embedder={self.embedder.name})"


def _cosine(score: float) -> float:
    """Elasticsearch's dot_product similarity as a cosine: the server reports (1 + dot) / 2 for unit vectors."""
    return 2.0 * score - 1.0


class _Existing:
    """What `curate_sources` needs of an existing store for dedup: ids, items, a FAISS index of their vectors."""

    def __init__(self, items: list[Item], vectors: np.ndarray) -> None:
        import faiss

        self.items = items
        self._by_id = {it.id: it for it in items}
        self.dense_index = faiss.IndexFlatIP(vectors.shape[1])
        if len(vectors):
            self.dense_index.add(vectors)


def _item(src: dict[str, Any]) -> Item:
    return Item(**{k: src.get(k) if k != "tags" else list(src.get("tags") or []) for k in _FIELDS})


def _plugins(rest: _Rest) -> list[str]:
    return [p.get("component", "") for p in rest.call("GET", "/_cat/plugins", params={"format": "json"})]


def _indices_of(rest: _Rest, alias: str) -> list[str]:
    from elasticsearch import NotFoundError

    try:
        return sorted(rest.call("GET", f"/_alias/{alias}"))
    except NotFoundError:
        return []


def _is_concrete_index(rest: _Rest, name: str) -> bool:
    from elasticsearch import NotFoundError

    try:
        return name in rest.call("GET", f"/{name}")
    except NotFoundError:
        return False


def _current_meta(rest: _Rest, alias: str) -> dict[str, Any]:
    indices = _indices_of(rest, alias)
    if not indices:
        raise StoreError(f"{alias}: no such Elasticsearch store (alias not found)")
    mapping = rest.call("GET", f"/{indices[0]}/_mapping")
    meta = mapping[indices[0]]["mappings"].get("_meta")
    if not meta or meta.get("format") != "xdai-es/1":
        raise StoreError(f"{alias}: index {indices[0]} is not an xdai store")
    return meta


def _meta(items: list[Item], emb: Embedder, analyzer: str, sources: list[str], curation: dict[str, Any],
          server: str) -> dict[str, Any]:
    from elasticsearch import __versionstr__

    return {
        "format": "xdai-es/1",
        "embedder": {"name": emb.name, "dim": emb.dim},
        "analyzer": analyzer,
        "counts": {"items": len(items), "by_kind": dict(Counter(it.kind for it in items)),
                   "by_lang": dict(Counter(it.lang for it in items))},
        "versions": {"elasticsearch_server": server, "elasticsearch_client": __versionstr__},
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": sources,
        "curation": curation,
        "index": "",
    }


def _index_and_swap(rest: _Rest, alias: str, items: list[Item], vectors: np.ndarray, dim: int, analyzer: str,
                    meta: dict[str, Any], progress: bool, chunk: int = 500) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    index = f"{alias}-{stamp}-{uuid.uuid4().hex[:6]}"
    meta["index"] = index
    if _is_concrete_index(rest, alias):
        raise StoreError(f"{alias}: a concrete index has this name; an xdai store needs it free for its alias")
    rest.call("PUT", f"/{index}", index_body(dim, analyzer, meta))
    try:
        with tqdm(total=len(items), desc="bulk index", unit="item", disable=not progress, leave=False) as bar:
            for start in range(0, len(items), chunk):
                lines = []
                for pos in range(start, min(start + chunk, len(items))):
                    it = items[pos]
                    doc = {k: getattr(it, k) for k in _FIELDS} | {
                        "position": pos, "search_text": it.search_text, "vector": vectors[pos].tolist()}
                    lines.append(json.dumps({"index": {"_index": index, "_id": it.id}}))
                    lines.append(json.dumps(doc, ensure_ascii=False))
                result = rest.call("POST", "/_bulk", "\n".join(lines) + "\n", ndjson=True)
                if result.get("errors"):
                    first = next(i for i in result["items"] if i["index"].get("error"))
                    raise StoreError(f"{index}: bulk indexing failed for item {first['index']['_id']}: "
                                     f"{first['index']['error']}")
                bar.update(min(chunk, len(items) - start))
        rest.call("POST", f"/{index}/_refresh")
        count = rest.call("POST", f"/{index}/_count", {"query": {"match_all": {}}})["count"]
        if count != len(items):
            raise StoreError(f"{index}: {count} documents indexed, expected {len(items)}")
        old = _indices_of(rest, alias)
        actions = [{"remove": {"index": o, "alias": alias}} for o in old] + [{"add": {"index": index, "alias": alias}}]
        rest.call("POST", "/_aliases", {"actions": actions})  # one atomic switch
    except BaseException:
        rest.call("DELETE", f"/{index}", params={"ignore_unavailable": "true"})
        raise
    for o in old:
        rest.call("DELETE", f"/{o}", params={"ignore_unavailable": "true"})


def _report(meta: dict[str, Any], added: int, report: Any, skipped: list[Any], seconds: float, alias: str,
            action: str) -> BuildReport:
    return BuildReport(store=alias, items=meta["counts"]["items"], added=added, by_kind=meta["counts"]["by_kind"],
                       by_lang=meta["counts"]["by_lang"], dense_index=f"elasticsearch dense_vector ({meta['index']})",
                       bm25_tokenizer=f"elasticsearch {meta['analyzer']}", seconds=seconds, sources=meta["sources"],
                       curation=report, skipped=skipped, action=action)
