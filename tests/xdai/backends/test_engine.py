"""The engine on the bundled GGUFs: equivalence with the one-sequence path, prefix caching, candidates,
cancellation, continuous batching and the KV bound (a reranked turn's race: tests/xdai/turn/test_turn.py).

The one-sequence path is llama-cpp-python's own `Llama` (what the llama_cpp backend decodes with): one sequence,
one context. Alone in its batch, the engine reproduces it bit for bit. With other sequences in the batch,
llama.cpp's CPU kernels are not batch-invariant: the matmul kernel is chosen by the number of rows in the batch
(measured: Qwen's Q4 weights give logits up to 0.3 apart at 3-5 rows than at 1 row), and results also move with
where a sequence's cells lie in the shared cache (SmolLM2: up to ~0.17 nats; the f16 KV rounding turns
reduction-order differences into ulps), and with a prefix evaluated in other batches (llama.cpp's server warns of
the same for its prompt cache). So there logits are compared within BATCH_TOL on each token's log-probability,
and the greedy tokens, whose top-2 margins on these prompts exceed the tolerance, must still be equal. A seeded
sequence reproduces its tokens under the same conditions (alone on an emptied cache, or the same candidates), and
a seeded request evaluates its prompt afresh rather than reuse a cached prefix.
"""

from __future__ import annotations

import math
import threading
import time

import llama_cpp
import numpy as np
import pytest

from xdai.backends.engine import Engine, EngineConfig, Finish, SamplingParams
from xdai.backends.engine.sampling import token_logprobs
from xdai.backends.models import resolve_model

BATCH_TOL = 0.5  # nats, on log P(token): the batch-variance bound stated above, with room to spare
DIALOGUE = (
    "The following is a conversation between a friendly assistant and a user.\n"
    "User: What is the capital of France?\n"
    "Assistant:"
)
ALPHABET = "User: Please list the first letters of the alphabet.\nAssistant: A, B, C, D,"  # top-2 margins > 3
LONG = "User: tell me more about the history of Paris and its bridges. " * 40 + "\nAssistant:"
GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_tokens=10, logprobs=True)
CONFIG = EngineConfig(n_ctx=1024, kv_cells=4096, max_seqs=16, max_running=8)

MODELS = ["smollm2", pytest.param("default", marks=pytest.mark.slow)]


class Model:
    """An engine and the one-sequence reference on the same file."""

    def __init__(self, name: str):
        path = resolve_model(name)
        self.engine = Engine(path, CONFIG)
        self.ref = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=self.engine.runner.threads,
                                   n_threads_batch=self.engine.runner.threads, logits_all=True, verbose=False,
                                   flash_attn=CONFIG.flash_attn)
        self.tok = self.engine.tokenizer

    def greedy(self, ids: list[int], n: int) -> tuple[list[int], list[float], float]:
        """Reference greedy tokens, their log-probabilities and the smallest top-1/top-2 logit margin."""
        self.ref.reset()
        self.ref.eval(ids)
        tokens, lps, margin = [], [], math.inf
        for _ in range(n):
            row = np.array(self.ref.scores[self.ref.n_tokens - 1])
            top2 = np.sort(row)[-2:]
            token = int(np.argmax(row))
            if llama_cpp.llama_vocab_is_eog(self.tok.vocab, token):
                break
            margin = min(margin, float(top2[1] - top2[0]))
            tokens.append(token)
            lps.append(float(token_logprobs(row[None, :], np.asarray([token]))[0]))
            self.ref.eval([token])
        return tokens, lps, margin

    def direct_logprobs(self, ids: list[int], start: int) -> list[float]:
        self.ref.reset()
        self.ref.eval(ids)
        rows = np.asarray(self.ref.scores[start - 1 : len(ids) - 1])
        return token_logprobs(rows, np.asarray(ids[start:])).tolist()


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    m = Model(request.param)
    yield m
    m.engine.close()


@pytest.fixture(scope="module")
def smol():
    m = Model("smollm2")
    yield m
    m.engine.close()


def drain(engine: Engine) -> None:
    """Wait until nothing runs or waits, then drop cached prefixes: the next test starts from an empty cache."""
    deadline = time.monotonic() + 60
    while (s := engine.stats()).running or s.waiting:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    engine.clear_cache()


# -- equivalence ------------------------------------------------------------------------------------------------


def test_greedy_tokens_equal_the_one_sequence_path_whatever_else_is_in_the_batch(model):
    ids = model.tok.encode(DIALOGUE)
    want, want_lps, margin = model.greedy(ids, GREEDY.max_tokens)
    drain(model.engine)

    [alone] = model.engine.generate(ids, GREEDY)
    got = alone.result()
    assert got.tokens == want
    assert got.logprobs == pytest.approx(want_lps, abs=1e-4)  # alone in its batch: the same kernels, same numbers

    drain(model.engine)
    others = model.engine.generate(model.tok.encode(LONG), [SamplingParams(seed=3, max_tokens=24)] * 2)
    others += model.engine.generate(model.tok.encode("User: Tell me a story.\nAssistant:"),
                                    SamplingParams(seed=4, max_tokens=24))
    next(iter(others[2]))  # the others are decoding (and the long prompt is being evaluated in slices)
    assert model.engine.stats().running == 3
    ids = model.tok.encode(ALPHABET)
    want, want_lps, margin = model.greedy(ids, GREEDY.max_tokens)
    assert margin > 2 * BATCH_TOL  # a prompt whose greedy tokens cannot flip within the tolerance
    [busy] = model.engine.generate(ids, GREEDY)
    got = busy.result()
    assert got.tokens == want
    assert np.abs(np.subtract(got.logprobs, want_lps)).max() <= BATCH_TOL
    for o in others:
        o.result()


def test_scores_equal_a_direct_computation_cached_or_not(model):
    ids = model.tok.encode(DIALOGUE + " The capital of France is Paris, on the Seine.")
    start = len(model.tok.encode(DIALOGUE))
    direct = model.direct_logprobs(ids, start)
    drain(model.engine)

    cold = model.engine.score(ids, start).result()
    assert cold.cached_tokens == 0
    assert cold.token_logprobs == pytest.approx(direct, abs=1e-3)  # one sequence: the reference's kernels

    model.engine.warm(ids[: start - 4]).result()
    warm = model.engine.score(ids, start).result()
    assert warm.cached_tokens == start - 4  # only the rest was evaluated
    assert warm.token_logprobs == pytest.approx(cold.token_logprobs, abs=BATCH_TOL)
    assert warm.logprob == pytest.approx(sum(direct), abs=BATCH_TOL * 2)


def test_seeded_sampling_is_reproducible_per_sequence(model):
    ids = model.tok.encode(DIALOGUE)
    a, b = SamplingParams(seed=11, max_tokens=12), SamplingParams(seed=12, max_tokens=12)
    drain(model.engine)
    [alone] = model.engine.generate(ids, a)
    first = alone.result()
    model.ref.set_seed(11)
    model.ref.reset()
    ref = model.ref.generate(ids, temp=0.7, top_p=0.9, top_k=40, min_p=0.0, typical_p=1.0, repeat_penalty=1.15)
    expected = [next(ref) for _ in range(len(first.tokens))]
    assert first.tokens == expected  # the one-sequence path's sampler chain and seed, token for token

    drain(model.engine)
    [again] = model.engine.generate(ids, a)
    assert again.result().tokens == first.tokens
    # a sequence's numbers depend on its row in the batch (see above), so reproducible means: the same request
    # in the same company gives the same tokens, each candidate drawing from its own seed
    drain(model.engine)
    group = [s.result().tokens for s in model.engine.generate(ids, [a, b])]
    drain(model.engine)
    assert [s.result().tokens for s in model.engine.generate(ids, [a, b])] == group
    assert group[0] != group[1]


# -- candidates, prefixes, cancellation ------------------------------------------------------------------------


def test_candidates_evaluate_the_prompt_once_and_share_its_cells(smol):
    engine, ids = smol.engine, smol.tok.encode(LONG)
    drain(engine)
    before = engine.stats()
    streams = engine.generate(ids, [SamplingParams(seed=i, max_tokens=6) for i in range(4)])
    peak = 0
    while not all(s.done for s in streams):
        peak = max(peak, engine.stats().kv_used)
    results = [s.result() for s in streams]
    after = engine.stats()
    assert after.prefill_tokens - before.prefill_tokens == len(ids)
    assert peak <= len(ids) + 4 * 6  # one copy of the prompt's cells, plus each candidate's own tokens
    assert len({tuple(r.tokens) for r in results}) > 1
    assert all(r.cached_tokens == 0 for r in results)


def test_a_prompt_reuses_the_longest_cached_prefix(smol):
    engine, tok = smol.engine, smol.tok
    drain(engine)
    ids = tok.encode(DIALOGUE)
    [s] = engine.generate(ids, SamplingParams(seed=1, max_tokens=8))
    first = s.result()
    follow_up = ids + first.tokens + tok.encode("\nUser: And of Italy?\nAssistant:", add_bos=False)
    [s] = engine.generate(follow_up, SamplingParams(max_tokens=4))
    second = s.result()
    assert second.cached_tokens >= len(ids) + len(first.tokens) - 1  # the previous turn's cells, reply included
    [s] = engine.generate(follow_up, SamplingParams(seed=1, max_tokens=4))
    assert s.result().cached_tokens == 0  # a seeded request evaluates its prompt afresh (see the module docstring)
    stats = engine.stats().prefix
    assert stats.hits >= 1 and 0 < stats.hit_rate < 1


def test_cancelling_frees_the_sequences_cells_at_once(smol):
    engine, ids = smol.engine, smol.tok.encode("Write a very long story about a dragon.\nStory:")
    drain(engine)
    [stream] = engine.generate(ids, SamplingParams(seed=1, max_tokens=500))
    events = iter(stream)
    for _ in range(3):
        next(events)
    assert max(engine.kv_positions().values()) >= len(ids)
    stream.cancel()
    assert stream.result(10).finish is Finish.CANCELLED
    assert set(engine.kv_positions().values()) == {-1}  # llama.cpp holds nothing for any sequence
    assert engine.stats().kv_used == 0

    [stream] = engine.generate(smol.tok.encode(LONG), SamplingParams(max_tokens=4))
    stream.cancel()  # while its prompt is being evaluated
    assert stream.result(10).finish is Finish.CANCELLED
    assert set(engine.kv_positions().values()) == {-1}


def test_ending_a_stream_keeps_its_cells_as_a_prefix(smol):
    engine, ids = smol.engine, smol.tok.encode(DIALOGUE)
    drain(engine)
    [stream] = engine.generate(ids, SamplingParams(seed=2, max_tokens=100))
    events = iter(stream)
    for _ in range(3):
        next(events)
    stream.end()
    done = stream.result(10)
    assert done.finish is Finish.ENDED
    assert engine.stats().cached_prefixes == 1
    [again] = engine.generate(ids + done.tokens, SamplingParams(max_tokens=1))
    assert again.result().cached_tokens == len(ids) + len(done.tokens) - 1


# -- continuous batching and the KV bound ------------------------------------------------------------------------


def test_a_newcomer_joins_the_running_batch_and_the_running_sequence_keeps_streaming(smol):
    engine, tok = smol.engine, smol.tok
    drain(engine)
    [running] = engine.generate(tok.encode("Write a very long story about a dragon.\nStory:"),
                                SamplingParams(seed=1, max_tokens=200))
    seen: list[float] = []

    def read() -> None:
        for _ in running:
            seen.append(time.monotonic())

    reader = threading.Thread(target=read)
    reader.start()
    while len(seen) < 2:
        time.sleep(0.005)
    newcomer_prompt = tok.encode(LONG)
    assert len(newcomer_prompt) > 500
    submitted = time.monotonic()
    [newcomer] = engine.generate(newcomer_prompt, SamplingParams(seed=1, max_tokens=3))
    first = next(iter(newcomer))
    first_at = time.monotonic()
    assert first.text is not None
    streamed_meanwhile = sum(1 for t in seen if submitted < t < first_at)
    # its prompt was evaluated in slices of step_tokens, with a token for the running sequence at every step
    assert streamed_meanwhile >= len(newcomer_prompt) // CONFIG.step_tokens - 2
    newcomer.result()
    assert not running.done  # the newcomer left the batch before the long sequence finished
    running.cancel()
    reader.join(10)


def test_when_the_cache_is_full_new_requests_wait_and_idle_prefixes_are_evicted():
    engine = Engine(resolve_model("smollm2"), EngineConfig(n_ctx=256, kv_cells=384, max_seqs=8, max_running=4))
    try:
        tok = engine.tokenizer
        prompts = [tok.encode(f"{w} " + f"The {w} is quiet tonight and the wind is cold. " * 9)
                   for w in ("Dragons", "Castles", "Rivers", "Forests", "Mountains")]
        assert all(95 < len(p) < 125 for p in prompts)
        for p in prompts[:3]:  # three idle prefixes: ~330 of the 384 cells
            engine.generate(p, SamplingParams(seed=1, max_tokens=2))[0].result()
        assert engine.stats().cached_prefixes == 3
        # each needs ~110 + 130 cells: the first evicts idle prefixes, the second cannot fit beside it and waits
        big = [engine.generate(p, SamplingParams(seed=1, max_tokens=130))[0] for p in prompts[3:]]
        waited = False
        while not all(s.done for s in big):
            waited |= engine.stats().waiting > 0
        assert waited
        assert all(s.result().finish in (Finish.LENGTH, Finish.EOG) for s in big)
        stats = engine.stats()
        assert stats.prefix.evictions >= 2 and stats.kv_used <= stats.kv_capacity
        with pytest.raises(Exception, match="window"):
            engine.generate(tok.encode("word " * 300), SamplingParams())
    finally:
        engine.close()


# -- async streams and reranked streaming ------------------------------------------------------------------------


async def test_streams_iterate_asynchronously(smol):
    [stream] = smol.engine.generate(smol.tok.encode(DIALOGUE), SamplingParams(seed=5, max_tokens=8))
    text = "".join([event.text async for event in stream])
    assert text == (await stream.aresult()).text
