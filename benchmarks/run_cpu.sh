#!/usr/bin/env bash
# The CPU measurements behind benchmarks/README.md: every configuration run REPEATS
# times in separate processes, round-robin so that a change in the machine's load
# spreads over all of them; one JSON line per run is appended to $OUT.
#   bash benchmarks/run_cpu.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results.jsonl}
REPEATS=${REPEATS:-3}
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$(cd .. && pwd)/shared/tfds}
bench() { python -m experiments.bench "$@" --json_out "$OUT"; }

for _ in $(seq "$REPEATS"); do
  bench --model ran56_cifar,ran92_cifar,preact_resnet164 --batch_size 64 --steps 10 --warmup 2
  bench --model ran56,resnet50 --batch_size 8 --steps 5 --warmup 1
  bench --input cifar10 --batch_size 128
  # Speed options, each against the float32 ran56_cifar rows above.
  bench --model ran56_cifar --batch_size 64 --steps 10 --warmup 2 --dtype bfloat16
  bench --model ran56_cifar --batch_size 64 --steps 10 --warmup 2 --remat
done
# nn.scan over the attention modules: one run, as its steps take a minute on CPU.
bench --model ran92_cifar --batch_size 64 --steps 2 --warmup 1 --no_eval --model_kwargs '{"scan": true}'
