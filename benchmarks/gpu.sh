#!/usr/bin/env bash
# The project's GPU evidence in one command (~9 min on one H100/H200, compilation included):
# benchmarks of Attention-92 / pre-act ResNet-164 (CIFAR) and Attention-56 / ResNet-50 (224)
# in bf16 and float32, then the gpu scale of the arl_vs_nal and ran_vs_resnet studies with
# as many seeds as fit, all into one folder: table.md, records.jsonl, profiles.md, suite.json.
#   bash benchmarks/gpu.sh [OUT] [flags of experiments.gpu_suite]    # from the project's root
#   bash benchmarks/gpu.sh /tmp/dry --dry-run                        # the same on a CPU, tiny
# On a GPU host whose Python has JAX with CUDA but not rattn's input/config packages, carry
# the wheels and data first (../shared/gpu/README.md): `bash ../shared/gpu/wheels.sh .whl
# fashion_mnist` puts them in .whl and .data; this script installs .whl into /tmp/rattn_site
# (--no-deps --target: the host's jax is never touched) and sets PYTHONPATH and
# TFDS_DATA_DIR. Never `pip install -e .` there: it would try to replace the host's jax.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PYTHON=${PYTHON:-python3}
out=runs/gpu-$(date -u +%Y%m%d-%H%M%S)
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out=$1; shift; fi
args=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) args+=(--dry_run) ;;
    *) args+=("$arg") ;;
  esac
done

site=/tmp/rattn_site
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c 'import ml_collections, grain, tensorflow_datasets, etils' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    if compgen -G '.whl/jax*.whl' >/dev/null; then
      echo "ERROR: .whl holds a jax, jaxlib or jax plugin wheel; remove it: the host's jax" \
        "must stay." >&2
      exit 1
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .whl/*.whl
  else
    echo "ERROR: $PYTHON lacks rattn's input/config packages (ml_collections, grain," \
      "tensorflow_datasets) and there is no .whl folder here. Run" \
      "'bash ../shared/gpu/wheels.sh .whl fashion_mnist' where the network is, then copy" \
      ".whl and .data with the project." >&2
    exit 1
  fi
fi
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d .data ]; then export TFDS_DATA_DIR=$root/.data; fi
# A copied tree has no git history: whoever copies it may name the commit.
if commit=$(git rev-parse --short HEAD 2>/dev/null); then export RATTN_GIT_COMMIT=$commit; fi
exec "$PYTHON" -m experiments.gpu_suite --out "$out" "${args[@]}"
