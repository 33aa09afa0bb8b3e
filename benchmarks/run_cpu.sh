#!/usr/bin/env bash
# The CPU measurements behind benchmarks/README.md: every configuration run REPEATS
# times in separate processes, round-robin so that a change in the machine's load
# spreads over all of them; one JSON line per run is appended to $OUT.
#   bash benchmarks/run_cpu.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results.jsonl}
REPEATS=${REPEATS:-2}
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$(cd .. && pwd)/shared/tfds}
bench() { python -m experiments.bench "$@" --json_out "$OUT"; }
# XLA:CPU without its YNNPACK fusions (XLA then uses its own/Eigen kernels).
no_ynn() { XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_experimental_ynn_fusion_type=" bench "$@"; }

for _ in $(seq "$REPEATS"); do
  bench --model ran56_cifar,ran92_cifar,preact_resnet164 --batch_size 64 --steps 10 --warmup 2
  bench --model ran56,resnet50 --batch_size 8 --steps 5 --warmup 1
  bench --input cifar10 --batch_size 128
  # Speed options, each against the float32 rows above.
  bench --model ran56_cifar --batch_size 64 --steps 10 --warmup 2 --dtype bfloat16
  bench --model ran56_cifar --batch_size 64 --steps 10 --warmup 2 --remat
  no_ynn --model ran56_cifar,preact_resnet164 --batch_size 64 --steps 10 --warmup 2
  no_ynn --model resnet50 --batch_size 8 --steps 5 --warmup 1
done
