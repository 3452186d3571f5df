"""Run a piece of code in a fresh interpreter and measure it: wall time of the code and the process's peak RSS.

For tests that assert a bound on time and memory (an alias bomb refused in under 2 s and 200 MB): in-process
numbers would include whatever the test session already holds. The child also runs under an address-space cap,
so that a regression fails the test with a MemoryError instead of taking the shared machine's memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WRAPPER = """
import json, resource, sys, time, traceback
{setup}
started = time.monotonic()
try:
{code}
    error = None
except BaseException as exc:
    error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
seconds = time.monotonic() - started
try:  # VmHWM: the peak of this image's own address space. ru_maxrss would not do: Linux carries it across
    # execve, so a child forked from a test session holding 2 GB of models reports 2 GB whatever it did itself.
    with open("/proc/self/status") as status:
        rss_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
except (OSError, StopIteration):
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("\\n" + json.dumps({{"seconds": seconds, "rss_mb": rss_mb, "error": error, "result": result}}))
"""


@dataclass
class Measured:
    seconds: float  # the code's wall time (imports in `setup` excluded)
    rss_mb: float  # the child's peak resident memory (its own image: interpreter, imports and the code)
    error: str | None  # the exception the code raised, as "Type: message", or None
    result: object  # what the code assigned to `result` (JSON-able), or None


def measure(code: str, setup: str = "", *, timeout: float = 120, address_space_mb: int = 2048) -> Measured:
    """Run `code` (after `setup`) in a child interpreter at the repository root. The code may set `result`."""
    body = textwrap.indent("result = None\n" + textwrap.dedent(code), "    ")
    script = _WRAPPER.format(setup=textwrap.dedent(setup), code=body)

    def cap() -> None:
        limit = address_space_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise AssertionError(f"child failed (rc {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return Measured(**json.loads(lines[-1]))
