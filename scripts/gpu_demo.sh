#!/usr/bin/env bash
# The GPU demo: trains ONE HGAD model with the paper's design (scripts/paper.cfg) on all five
# classes of industrial-mini on the GPU (--device cuda: backbone, training, calibration and the
# flows of the scores), with --auto-group as scripts/demo.sh, and prints the per-class table
# (calibrated mode). Needs an hgad program built with CUDA (scripts/gpu_check.sh builds one).
#
#   scripts/gpu_demo.sh HGAD [DATA] [WEIGHTS] [EPOCHS]
#
# HGAD: the program; DATA, WEIGHTS: default ../shared/datasets/industrial-mini and
# ../shared/weights/resnet18-imagenet (the GPU check passes the compact copy that
# scripts/make_gpu_data.sh makes); EPOCHS: passes over the training data (default 16; the paper
# trains 200).
set -euo pipefail
cd "$(dirname "$0")/.."
hgad=${1:?usage: scripts/gpu_demo.sh HGAD [DATA] [WEIGHTS] [EPOCHS]}
data=${2:-../shared/datasets/industrial-mini}
weights=${3:-../shared/weights/resnet18-imagenet}
epochs=${4:-16}
out=${HGAD_GPU_DEMO_OUT:-build-gpu-check/demo}
mkdir -p "$out"
export OMP_WAIT_POLICY=PASSIVE
start=$(date +%s)
echo "== gpu_demo: scripts/paper.cfg, $epochs passes, --device cuda, --auto-group ($data)"
"$hgad" train --device cuda --data "$data" --backbone "$weights" --config scripts/paper.cfg \
  --epochs "$epochs" --auto-group --out "$out/paper.hgad"
trained=$(date +%s)
"$hgad" test --device cuda --model "$out/paper.hgad" --data "$data" --backbone "$weights" \
  --mode calibrated --json "$out/paper.json"
echo "gpu_demo: training $((trained - start)) s, test $(($(date +%s) - trained)) s, $epochs passes"
