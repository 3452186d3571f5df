"""The CLI's console setup: no faiss loader noise, and progress bars as plain lines when stderr is a log file."""

import io
import logging

from tqdm import tqdm

from xdai.console import LineProgress, setup_console


def test_a_progress_bar_in_a_log_file_becomes_lines_without_carriage_returns():
    log = io.StringIO()
    with tqdm(total=3, desc="embed", file=LineProgress(log), mininterval=0, leave=False) as bar:
        for _ in range(3):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("embed:") for line in lines)
    assert any("3/3" in line for line in lines)


def test_plain_writes_pass_through_unchanged():
    log = io.StringIO()
    LineProgress(log).write("bot xiaodai: ready\n")
    assert log.getvalue() == "bot xiaodai: ready\n"


def test_setup_silences_the_faiss_loader():
    setup_console()
    assert logging.getLogger("faiss.loader").getEffectiveLevel() >= logging.WARNING
