#!/usr/bin/env sh
# Prints the CMAKE_ARGS that llama-cpp-python is built with: an explicit, named x86-64 feature level, never
# GGML_NATIVE. A native build enables every feature of the build machine (AMX, AVX512-BF16/FP16, ...), and on one
# such VM that build died with SIGSEGV in llama_decode on the first token. AVX512 and AMX stay off: a Q4 model's
# decode is memory-bound, so they add little speed (docs/backends.md has the measurement) and much risk.
#
#   x86-64-v3  AVX, AVX2, FMA, F16C, BMI2: every x86-64 CPU since Haswell (2013) and Zen (2017)
#   x86-64     SSE only: any other x86-64 CPU (slow, but it runs)
#
# Override with LLAMA_CMAKE_ARGS=... (the install's smoke test still checks the result).
set -eu
if [ -n "${LLAMA_CMAKE_ARGS:-}" ]; then printf '%s\n' "$LLAMA_CMAKE_ARGS"; exit 0; fi
common="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX_VNNI=OFF -DLLAMA_CURL=OFF"
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { case " $flags " in *" $1 "*) return 0;; *) return 1;; esac; }
if has avx2 && has fma && has f16c && has bmi2; then
  printf '%s\n' "$common -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
  printf '%s\n' "$common -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
fi
