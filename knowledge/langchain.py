"""langchain-core interop: a store (local or Elasticsearch) as a `BaseRetriever`, and Documents <-> Items.

Ingesting LangChain `Document`s needs nothing from here: pass them to `Store.build`/`add` like files
(`knowledge.sources.read_documents` reads them; metadata ``q``/``a`` make a QA pair, anything else a description).
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from knowledge.item import Hit


def hit_to_document(hit: Hit) -> Document:
    """A hit as a Document: the item's text as content, the wire fields (+ why it ranked) as metadata."""
    meta = hit.to_json()
    meta.pop("text")
    meta["why"] = hit.why
    return Document(page_content=hit.item.text, metadata=meta, id=hit.item.id)


class StoreRetriever(BaseRetriever):
    """`store.as_retriever(top_k=5, kind=None, tags=None, context=None)`; `context` is the dialogue so far."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    top_k: int = 5
    kind: str | None = None
    tags: list[str] | None = None
    context: list[str] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.store.query(query, context=self.context, top_k=self.top_k, kind=self.kind, tags=self.tags)
        return [hit_to_document(h) for h in hits]
