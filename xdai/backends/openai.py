"""`openai`: any OpenAI-compatible HTTP server (vLLM, SGLang, DeepSpeed-MII, llama.cpp's server).

The path for models that outgrow one machine. Generation uses the legacy `/v1/completions` endpoint by default,
because only raw completion continues our prompt honestly; `endpoint="chat"` is there for chat-only servers.
Tokens arrive as server-sent events. `score` asks the server to echo the prompt with log-probabilities. A stream
counts the tokens it received (`TokenStream.tokens`): the server's own count when it reports usage, else one per
event that carries text.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from xdai.backends.base import GenerationSettings, Infill
from xdai.backends.stream import TokenStream, TurnFilter

CHAT_INSTRUCTION = (
    "Continue the dialogue transcript below. Write only the next line's text for the speaker whose tag ends "
    "the transcript, in that speaker's voice and language."
)


class BackendError(RuntimeError):
    """The server could not be reached or answered with an error; the message names the URL."""


class OpenAIBackend:
    """Stream completions from an OpenAI-compatible server and score continuations with echoed logprobs."""

    name = "openai"

    def __init__(
        self,
        model: str = "default",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        endpoint: str = "completions",
        vendor_params: bool = True,
        timeout: float = 120.0,
    ):
        """`base_url`/`api_key`: the server and its key (the configuration's ``backend`` section supplies them; else
        $OPENAI_BASE_URL / $OPENAI_API_KEY, the OpenAI clients' own convention)."""
        base = (base_url or os.environ.get("OPENAI_BASE_URL", "")).rstrip("/")
        if not base:
            raise ValueError("the openai backend needs a server: set backend.base_url (e.g. http://127.0.0.1:8000/v1)")
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"openai backend: endpoint must be 'completions' or 'chat', not {endpoint!r}")
        self.base_url = base
        self.endpoint = endpoint
        self.vendor_params = vendor_params  # top_k, min_p and the repetition penalty under both servers' names
        self.timeout = timeout
        key = api_key or os.environ.get("OPENAI_API_KEY", "")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._model = None if model in ("", "default") else model

    @property
    def model(self) -> str:
        """The served model name; "default" means the first one the server lists."""
        if self._model is None:
            listing = self._post_or_get("GET", "/models")
            try:
                self._model = str(listing["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise BackendError(f"{self.base_url}/models lists no model: {str(listing)[:200]}") from None
        return self._model

    def _payload(self, infill: Infill, settings: GenerationSettings) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "stream": True,
        }
        if settings.stop:
            body["stop"] = settings.stop[:4]  # the API's limit; the turn filter applies all of them anyway
        if settings.seed is not None:
            body["seed"] = settings.seed
        if self.vendor_params:
            top_k = settings.top_k if settings.top_k > 0 else -1  # vLLM's spelling of "no top-k"
            # repetition_penalty is vLLM's and SGLang's name, repeat_penalty llama.cpp's server's (whose own default,
            # 1.1, would otherwise apply); min_p 0 as our local sampler (llama.cpp's server defaults to 0.05).
            body.update(top_k=top_k, repetition_penalty=settings.repetition_penalty,
                        repeat_penalty=settings.repetition_penalty, min_p=0.0,
                        stream_options={"include_usage": True})  # a last event with the server's token count
        if self.endpoint == "chat":
            body["messages"] = [
                {"role": "system", "content": CHAT_INSTRUCTION},
                {"role": "user", "content": infill.before},
            ]
            return "/chat/completions", body
        body["prompt"] = infill.before
        return "/completions", body

    def fill(self, infill: Infill, settings: GenerationSettings) -> TokenStream:
        """Stream the server's continuation, trimmed to the bot's turn. Closing the iterator closes the stream;
        `.tokens` counts the tokens received."""
        stream = TokenStream()
        return stream.of(self._stream(infill, settings, stream))

    async def _stream(self, infill: Infill, settings: GenerationSettings, counter: TokenStream) -> AsyncIterator[str]:
        path, body = self._payload(infill, settings)
        url = self.base_url + path
        turn = TurnFilter(settings.stop)
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                async with client.stream("POST", url, json=body, headers=self._headers) as response:
                    if response.status_code != 200:
                        detail = (await response.aread()).decode("utf-8", "replace")[:300]
                        raise BackendError(f"{url}: HTTP {response.status_code}: {detail}")
                    reported = False
                    async for line in response.aiter_lines():
                        event = _sse_event(line, url)
                        if event is None:
                            break
                        usage = event.get("usage") or {}
                        if usage.get("completion_tokens") is not None:
                            counter.tokens, reported = int(usage["completion_tokens"]), True
                        piece = _event_text(event)
                        if piece and not reported:
                            counter.tokens += 1
                        shown = turn.feed(piece)
                        if shown:
                            yield shown
                        if turn.done:
                            return
        except httpx.HTTPError as exc:
            raise BackendError(f"{url}: {type(exc).__name__}: {exc}") from exc
        tail = turn.finish()
        if tail:
            yield tail

    def score(self, context: str, continuation: str) -> float:
        """Sum of the echoed log-probabilities of the prompt tokens that carry `continuation`."""
        if not continuation:
            return 0.0
        prompt = context + continuation
        answer = self._post_or_get(
            "POST",
            "/completions",
            {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1},
        )
        try:
            lp = answer["choices"][0]["logprobs"]
            tokens, logprobs, offsets = lp["tokens"], lp["token_logprobs"], lp["text_offset"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(
                f"{self.base_url}/completions did not echo prompt logprobs (echo=true, logprobs=1): {str(answer)[:200]}"
            ) from None
        total = 0.0
        for token, logprob, offset in zip(tokens, logprobs, offsets, strict=False):
            if offset >= len(prompt):  # the generated token, not part of the prompt
                break
            if offset + len(token) > len(context) and logprob is not None:
                total += float(logprob)
        return total

    def _post_or_get(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.base_url + path
        try:
            response = httpx.request(method, url, json=body, headers=self._headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise BackendError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise BackendError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()


def _sse_event(line: str, url: str) -> dict[str, Any] | None:
    """The event in one server-sent-event line ({} for keep-alives and other fields); None at [DONE]."""
    if not line.startswith("data:"):
        return {}
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        raise BackendError(f"{url}: malformed event {data[:200]!r}") from None
    if "error" in event:
        raise BackendError(f"{url}: server error {str(event['error'])[:300]}")
    return event


def _event_text(event: dict[str, Any]) -> str:
    """The text an event carries ("" for role-only deltas and the closing usage event)."""
    choices = event.get("choices") or [{}]
    choice = choices[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""
