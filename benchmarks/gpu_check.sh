#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU where CuPy and torch (with CUDA) are
# installed, such as the device machine (docs/benchmarks.md, "GPU"). Runs the GPU tests
# (pytest -m gpu) and benchmarks/gpu_bench.py, and writes their logs and results under
# $OUT (default benchmarks/results/gpu): gpu.txt, gpu_tests.log, gpu_bench.{md,json,log}.
# Installs nothing from the network: if lark is missing, it is installed from wheels in
# .whl/ (pip download lark there first). Fits in 5 minutes; exits non-zero if a test or
# the benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
if ! "$py" -c "import lark" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --target /tmp/optdsl-site .whl/*.whl
    export PYTHONPATH="/tmp/optdsl-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
status=0
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
        --format=csv
    "$py" -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'torch', \
torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.version.cuda)"
} > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
timeout 200 "$py" -m pytest -m gpu -q -p no:cacheprovider -o addopts=-ra tests/gpu tests/torch_integration 2>&1 \
    | tee "$out/gpu_tests.log" || status=1
timeout 150 "$py" -m benchmarks.gpu_bench --out "$out" 2>&1 \
    | tee "$out/gpu_bench.log" || status=1
echo "gpu_check: exit $status"
exit $status
