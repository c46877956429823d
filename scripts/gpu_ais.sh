#!/usr/bin/env bash
# The prepared AIS run for a machine with CUDA, in one command that ends within ten minutes:
# annealed importance sampling started from the guide (16 chains x 1,000 steps x 10 leapfrog
# steps, the setting of Wu et al. 2017 from the encoder) on every test image of a trained run,
# with importance sampling (K = 5,000) beside it on the same images, and the BDMC gap of the
# same setting on points simulated from the model. The run's small files travel to the GPU
# (best.pt of a protocol run is a few MB), and so does MNIST's raw folder.
#
#   scripts/gpu_ais.sh RUN DATA_DIR [OUT_DIR] [NUM_DATA]
#
# RUN: a run folder with best.pt (for example docs/results/burda/vae-batch100); DATA_DIR: the
# folder holding MNIST/raw/; NUM_DATA: test images (default 10000). Everything it measures goes
# to OUT_DIR (default: gpu-ais/): the JSON summaries, the per-image CSVs, the printed tables and
# the wall times.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: scripts/gpu_ais.sh RUN DATA_DIR [OUT_DIR] [NUM_DATA]" >&2
    exit 2
fi
run="$1"
data="$2"
out="${3:-gpu-ais}"
num_data="${4:-10000}"
mkdir -p "$out"
python="${PYTHON:-python}"
status=0

"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(0), torch.__version__)" > "$out/device.txt" 2>&1 || {
    cat "$out/device.txt"; echo "gpu_ais.sh: this machine has no CUDA device" >&2; exit 2; }

common=(--split test --num-data "$num_data" --data-dir "$data" --device cuda --seed 0
        --no-progress --trust-run --overwrite)
# The AIS estimate first, the part the time-out is for (the issue's target: under 10 minutes
# for 10,000 images on one H200-class GPU), with the BDMC gap of its setting on 20 points.
start=$(date +%s)
timeout 480 "$python" scripts/evaluate.py "$run" --estimator ais --ais-start guide \
    --ais-chains 16 --ais-steps 1000 --ais-leapfrog 10 --bdmc 20 "${common[@]}" \
    --out "$out/ais-guide.json" > "$out/ais-guide.txt" 2>&1 || status=1
echo "ais seconds: $(( $(date +%s) - start ))" | tee -a "$out/times.txt"
tail -n 12 "$out/ais-guide.txt"
start=$(date +%s)
timeout 100 "$python" scripts/evaluate.py "$run" --estimator importance --num-samples 5000 \
    "${common[@]}" --out "$out/importance.json" > "$out/importance.txt" 2>&1 || status=1
echo "importance seconds: $(( $(date +%s) - start ))" | tee -a "$out/times.txt"
tail -n 6 "$out/importance.txt"
exit $status
