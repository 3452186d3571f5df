"""Install-time smoke test: does the llama-cpp-python we just built run the bundled model?

`make install` runs this after building llama.cpp, so that a build that crashes on this CPU (as a GGML_NATIVE build
with AMX did, with SIGSEGV in llama_decode on the first token) stops the install with the cause and the fix, instead
of surfacing as "Fatal Python error" halfway through the test suite. The model runs in a child process: a crash
there is a return code here, not the end of this script.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

CHILD = r"""
import os, sys
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import llama_cpp
from xdai.backends.models import resolve_model
path = resolve_model(sys.argv[1])
llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=64, n_threads=os.cpu_count() or 1, verbose=False)
out = llm.create_completion("The capital of France is", max_tokens=6, temperature=0.0)
text = out["choices"][0]["text"]
print(f"{path.name}: {out['usage']['completion_tokens']} tokens: {text!r}")
"""

FIX = """\
The llama-cpp-python build in .venv cannot run the bundled model on this CPU ({cause}).
Rebuild it with a smaller instruction set, for example the baseline x86-64 set:
    rm -f .venv/.llama-cmake-args .venv/.xdai-installed
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF \\
        -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" make install
(scripts/llama_cmake_args.sh says which feature sets we build and why; the flags in use: {flags})"""


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else "default"
    print(f"smoke test: loading the bundled model ({model}) and generating a few tokens ...", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, model], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return _fail("it did not finish within 600 s")
    if proc.returncode != 0:
        if proc.returncode < 0:
            cause = f"the process died with {signal.Signals(-proc.returncode).name}"
        else:
            cause = f"exit code {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
        sys.stderr.write(proc.stderr[-2000:])
        return _fail(cause)
    print(f"smoke test: ok in {time.perf_counter() - t0:.1f} s ({proc.stdout.strip()})")
    return 0


def _fail(cause: str) -> int:
    flags_file = os.path.join(os.path.dirname(sys.executable), "..", ".llama-cmake-args")
    try:
        flags = open(flags_file, encoding="utf-8").read().strip()
    except OSError:
        flags = "unknown"
    print("smoke test: FAILED\n" + FIX.format(cause=cause, flags=flags), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
