"""The openai backend against a real OpenAI-compatible server: `python -m llama_cpp.server` (llama-cpp-python's
`[server]` extra) started here on 127.0.0.1 with the bundled SmolLM2 behind it.

Two features of the protocol that server does not implement correctly are checked against a small completion
handler below, with the same model behind it: echoed prompt logprobs (llama-cpp-python 0.3.36 reports each prompt
token's log-probability from the distribution one position late, so a score computed from them is wrong; vLLM and
SGLang get it right) and the `stream_options.include_usage` event (it never sends one). Everything else — streaming
completions and chat, the model list, closing a stream early, HTTP errors — runs against the real server.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from xdai.backends import get_backend
from xdai.backends.base import GenerationSettings, Infill
from xdai.backends.openai import BackendError

PROMPT = "The following is a conversation between a friendly assistant and a user.\nUser: Hi! Who are you?\nAssistant:"


class CompletionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, llm):
        super().__init__(("127.0.0.1", 0), Handler)
        self.llm = llm
        self.lock = threading.Lock()
        self.streams: list[dict] = []  # one record per streamed request: tokens sent, whether it finished

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: CompletionServer

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "smollm2-135m", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("model") != "smollm2-135m":
            return self._json(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
        if self.path == "/v1/completions" and body.get("echo"):
            return self._json(200, self._echo_logprobs(body["prompt"]))
        if self.path not in ("/v1/completions", "/v1/chat/completions") or not body.get("stream"):
            return self._json(400, {"error": {"message": "this test server streams, or echoes logprobs"}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        record = {"tokens": 0, "finished": False}
        self.server.streams.append(record)
        params = dict(
            max_tokens=body.get("max_tokens", 16), temperature=body.get("temperature", 0.8), top_p=body.get("top_p", 1.0),
            top_k=body.get("top_k", 40), min_p=0.0, repeat_penalty=body.get("repetition_penalty", 1.0),
            seed=body.get("seed"), stop=body.get("stop") or [], stream=True,
        )
        with self.server.lock:
            if self.path == "/v1/completions":
                chunks = self.server.llm.create_completion(body["prompt"], **params)
            else:
                chunks = self.server.llm.create_chat_completion(body["messages"], **params)
            try:
                generated = ""
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    text = choice.get("text") or choice.get("delta", {}).get("content") or ""
                    event = {"object": chunk["object"], "choices": [{"index": 0, **{k: v for k, v in choice.items()}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    record["tokens"] += 1 if text else 0
                    generated += text
                if (body.get("stream_options") or {}).get("include_usage"):  # as OpenAI: a last event, no choices
                    n = len(self.server.llm.tokenize(generated.encode(), add_bos=False, special=True))
                    record["reported"] = n
                    usage = {"object": "text_completion", "choices": [], "usage": {"completion_tokens": n}}
                    self.wfile.write(f"data: {json.dumps(usage)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                chunks.close()  # the client went away: stop generating
            record["finished"] = True

    def _echo_logprobs(self, prompt: str) -> dict:
        """Prompt tokens with log P(token | tokens before it), character offsets, and one greedy token."""
        llm = self.server.llm
        with self.server.lock:
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
            llm.reset()
            llm.eval(ids)
            scores = llm.scores[: len(ids)].astype(np.float64)
        logsm = scores - scores.max(1, keepdims=True)
        logsm -= np.log(np.exp(logsm).sum(1, keepdims=True))
        tokens, logprobs, offsets, offset = [], [], [], 0
        for i, token in enumerate(ids):
            text = llm.detokenize([token]).decode("utf-8", "ignore")
            tokens.append(text)
            logprobs.append(None if i == 0 else float(logsm[i - 1, token]))
            offsets.append(offset)
            offset += len(text)
        nxt = int(np.argmax(scores[-1]))
        tokens.append(llm.detokenize([nxt]).decode("utf-8", "ignore"))
        logprobs.append(float(logsm[-1, nxt]))
        offsets.append(offset)
        return {
            "object": "text_completion",
            "choices": [{"index": 0, "text": prompt + tokens[-1], "finish_reason": "length",
                         "logprobs": {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets}}],
        }


@pytest.fixture(scope="module")
def server(reference):
    srv = CompletionServer(reference)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class LlamaCppServer:
    """`python -m llama_cpp.server` in a subprocess on a free loopback port."""

    def __init__(self, model_path: str, alias: str, log_path: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--model_alias", alias,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "1024", "--n_threads", "2",
             "--flash_attn", "true"],  # as the local engine computes attention (EngineConfig.flash_attn)
            stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"), env=env,  # a pipe nobody reads would fill
        )
        self.log_path = log_path
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {open(log_path, errors='replace').read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("llama_cpp.server did not come up within 120 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def real_server(smollm2, tmp_path_factory):
    srv = LlamaCppServer(str(smollm2.model_path), "smollm2-135m", str(tmp_path_factory.mktemp("server") / "log"))
    yield srv
    srv.close()


@pytest.fixture
def remote(real_server):
    return get_backend("openai", "default", base_url=real_server.url)


async def test_greedy_completion_over_sse_matches_the_local_backend(remote, smollm2, collect):
    greedy = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_tokens=16, stop=["\nUser:"])
    pieces = await collect(remote.fill(Infill(PROMPT), greedy))
    assert remote.model == "smollm2-135m"  # "default" asked the server's model list
    assert len(pieces) > 2
    # the server evaluates the prompt from scratch; so must the local engine for bit-equal logits (a cached prefix
    # evaluated in other batches moves them by ~0.1, as llama.cpp's server warns for cache_prompt)
    await asyncio.to_thread(smollm2.engine.clear_cache)
    assert "".join(pieces) == "".join(await collect(smollm2.fill(Infill(PROMPT), greedy)))


async def test_chat_endpoint_streams_a_reply(real_server, collect):
    chat = get_backend("openai", "smollm2-135m", base_url=real_server.url, endpoint="chat")
    reply = "".join(await collect(chat.fill(Infill(PROMPT), GenerationSettings(seed=2, max_tokens=16))))
    assert reply.strip() and "\n" not in reply


@pytest.mark.parametrize("context, continuation", [(PROMPT, " I am a helpful assistant."), ("Hello wor", "ld, how are you?")])
def test_score_from_echoed_logprobs_matches_the_local_backend(server, smollm2, context, continuation):
    echoing = get_backend("openai", "default", base_url=server.url)  # see the module docstring: not llama_cpp.server
    assert echoing.score(context, continuation) == pytest.approx(smollm2.score(context, continuation), abs=1e-3)


async def test_a_stream_counts_tokens_as_the_server_reports_them_else_one_per_event(server, collect):
    short = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_tokens=6, stop=[])
    reporting = get_backend("openai", "default", base_url=server.url)  # vendor params ask for the usage event
    stream = reporting.fill(Infill(PROMPT), short)
    assert "".join(await collect(stream))
    assert stream.tokens == server.streams[-1]["reported"] > 0
    plain = get_backend("openai", "default", base_url=server.url, vendor_params=False)
    stream = plain.fill(Infill(PROMPT), short)
    assert "".join(await collect(stream))
    assert "reported" not in server.streams[-1] and stream.tokens == server.streams[-1]["tokens"] > 0


async def test_without_a_usage_event_a_stream_counts_one_token_per_text_event(real_server, smollm2, collect):
    short = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_tokens=6, stop=[])
    stream = get_backend("openai", "default", base_url=real_server.url).fill(Infill(PROMPT), short)
    text = "".join(await collect(stream))
    assert text
    # llama_cpp.server sends one event per generated token and no usage event
    assert stream.tokens == len(smollm2.tokenize(text)) == 6


async def test_closing_the_stream_makes_the_server_stop(remote, real_server, collect):
    """The real server generates one request at a time: had it gone on with the 400 abandoned tokens, the next
    short request would wait behind them."""
    settings = GenerationSettings(temperature=0.0, max_tokens=8, stop=[])
    t0 = time.monotonic()
    assert "".join(await collect(remote.fill(Infill(PROMPT), settings)))
    short = time.monotonic() - t0
    stream = remote.fill(Infill("Write a very long story about a dragon.\nStory:"), GenerationSettings(seed=1, max_tokens=400, stop=[]))
    await stream.__anext__()
    await stream.aclose()
    t0 = time.monotonic()
    assert "".join(await collect(remote.fill(Infill(PROMPT), settings)))
    assert time.monotonic() - t0 < 10 * short + 2.0


async def test_server_errors_and_unreachable_servers_are_clear(real_server, collect):
    wrong = get_backend("openai", "smollm2-135m", base_url=real_server.url.replace("/v1", "/nope"))
    with pytest.raises(BackendError, match=r"/nope/completions: HTTP 404: .*Not Found"):
        await collect(wrong.fill(Infill(PROMPT), GenerationSettings()))
    with pytest.raises(BackendError, match="HTTP 404"):
        wrong.score("a", "b")
    bad = get_backend("openai", "smollm2-135m", base_url=real_server.url)
    with pytest.raises(BackendError, match=r"/v1/completions: HTTP (422|500): .*max_tokens"):
        await collect(bad.fill(Infill(PROMPT), GenerationSettings(max_tokens=-5)))
    gone = get_backend("openai", "m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9/v1/completions: ConnectError"):
        await collect(gone.fill(Infill(PROMPT), GenerationSettings()))
    with pytest.raises(ValueError, match="needs a server"):
        get_backend("openai", "m", base_url="")
