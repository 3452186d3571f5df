#!/usr/bin/env bash
# The one GPU check for a session that is lent a device machine (H100/H200 image: python3 with torch, triton,
# transformers; no network, no DeepSpeed). Fits the 10-minute limit of one device command.
#
# 1. Here, with network, once per session (wheels for what the image lacks; .whl/ is git-ignored locally):
#        bash benchmarks/device_check.sh --prepare
# 2. Through the device tool, from the repo root:
#        run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=600)
#    Results come back under $OUT (at most 8 files): env.txt, gpu_tests.log, kernels.md, kernels.json,
#    kernels_bench.log, glm_engine.log. Record the numbers in benchmarks/RESULTS.md with the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    PY=${PY:-.venv/bin/python}
    ds_version=$($PY -c "import importlib.metadata as m; print(m.version('deepspeed'))")
    # DeepSpeed ships as a source package: build a pure-Python wheel (ops are JIT-built, none needed here).
    DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==${ds_version}"
    # What DeepSpeed needs beyond the image, resolved together (pydantic pins its pydantic-core).
    $PY -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        -d .whl hjson pydantic
    ls -la .whl
    exit 0
fi

OUT=${OUT:-/tmp/xdai_device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
start=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
    $PY -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# GPU tests: ours and the GLM engine's (-o addopts= drops plugins the image lacks, e.g. pytest-asyncio's options).
timeout 200 $PY -m pytest -q -m gpu tests/kernels tests/model -p no:cacheprovider -o addopts="" \
    --import-mode=importlib -ra 2>&1 | tee "$OUT/gpu_tests.log"
echo "gpu tests: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"

timeout 250 $PY benchmarks/kernels.py --out "$OUT" --budget-s 220 2>&1 | tee "$OUT/kernels_bench.log"
echo "kernels benchmark: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"

if [[ -f benchmarks/glm_engine.py ]]; then
    left=$(( 560 - ($(date +%s) - start) ))
    if (( left > 30 )); then
        timeout "$left" $PY benchmarks/glm_engine.py 2>&1 | tee "$OUT/glm_engine.log"
        echo "glm engine benchmark: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
    fi
fi
echo "device_check: done in $(( $(date +%s) - start )) s; results in $OUT"
