"""The bot-turn post-filter and the thread-to-event-loop stream, without a model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from xdai.backends.stream import TurnFilter, stream_in_thread


def run(turn: TurnFilter, pieces: list[str]) -> tuple[list[str], str]:
    shown = [turn.feed(p) for p in pieces]
    return shown, "".join(shown) + turn.finish()


def test_stop_string_split_across_pieces_is_never_shown():
    shown, text = run(TurnFilter(["\n用户："], single_line=False), ["你好呀", "！\n用", "户：", "你是谁"])
    assert text == "你好呀！"
    assert "用" not in "".join(shown)


def test_a_held_back_prefix_that_is_not_a_stop_is_released():
    _, text = run(TurnFilter(["User:"], single_line=False), ["It is Paris. Us", "ually sunny."])
    assert text == "It is Paris. Usually sunny."


def test_single_line_ends_the_turn_at_the_first_line_break():
    turn = TurnFilter([], single_line=True)
    shown, text = run(turn, ["  \n", " Hello", " there.\nUser", ": more"])
    assert text == "Hello there."
    assert shown[0] == ""  # leading whitespace and newlines before the reply are dropped
    assert turn.done


def test_trailing_whitespace_is_held_until_text_follows():
    turn = TurnFilter([])
    assert turn.feed("Hi ") == "Hi"
    assert turn.feed("you ") == " you"
    assert turn.finish() == ""


async def test_stream_in_thread_yields_in_order_and_raises_worker_errors():
    def work(emit, cancel):
        for i in range(5):
            emit(str(i))

    assert [p async for p in stream_in_thread(work)] == ["0", "1", "2", "3", "4"]

    def broken(emit, cancel):
        emit("a")
        raise ValueError("model exploded")

    with pytest.raises(ValueError, match="model exploded"):
        async for _ in stream_in_thread(broken):
            pass


async def test_closing_the_stream_cancels_the_worker():
    stopped = threading.Event()

    def endless(emit, cancel):
        while not cancel.is_set():
            emit("x")
            time.sleep(0.001)
        stopped.set()

    stream = stream_in_thread(endless)
    got = [await stream.__anext__() for _ in range(3)]
    await stream.aclose()
    assert got == ["x", "x", "x"]
    assert await asyncio.to_thread(stopped.wait, 2.0)
