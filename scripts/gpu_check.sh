#!/usr/bin/env bash
# The prepared check of a machine with CUDA, in one command (about five minutes):
#   - the gpu-marked tests: the same log densities on the GPU as on the CPU, every estimator,
#     prior and guide on CUDA, no host-device synchronization inside a training step, a run
#     trained on CUDA loading on the CPU;
#   - the benchmark on CUDA, with a full MNIST epoch when a data folder is given.
# Everything it measures goes to one folder (default: gpu-check/).
#
#   scripts/gpu_check.sh [OUT_DIR] [DATA_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
data="${2:-}"
mkdir -p "$out"
python="${PYTHON:-python}"
status=0

"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(0), torch.__version__)" > "$out/device.txt" 2>&1 || {
    cat "$out/device.txt"; echo "gpu_check.sh: this machine has no CUDA device" >&2; exit 2; }

timeout 150 "$python" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$out/tests.xml" \
    > "$out/tests.txt" 2>&1 || status=1
tail -n 3 "$out/tests.txt"

benchmark=(scripts/benchmark.py --device cuda --variants jit,no-graph,plain
           --out "$out/benchmark.json" --markdown "$out/benchmarks.md")
if [ -n "$data" ]; then
    benchmark+=(--data-dir "$data")
fi
timeout 150 "$python" "${benchmark[@]}" > "$out/benchmark.txt" 2>&1 || status=1
tail -n 12 "$out/benchmark.txt"
exit $status
