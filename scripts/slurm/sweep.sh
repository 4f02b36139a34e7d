#!/bin/bash
# Submit a whole al-det sweep: an array of the per-seed cycle-0 tasks, then an array of one
# task per (arm, seed) work dir that starts once every cycle-0 task succeeded.
#
#   SWEEP=configs/sweeps/table_e.yaml ROOT=runs/table_e GPUS=4 PARTITION=gpu \
#       scripts/slurm/sweep.sh
#
# Variables: SWEEP (a sweep file or config; needed the first time), ROOT (required), GPUS
# (per task, default 1), CPUS (default 4 x GPUS + 4), PARTITION, ACCOUNT, TIME
# (default 24:00:00), MAX_PARALLEL (array tasks at once, default: all), VENV, DRY_RUN=1
# (print the sbatch commands only). Extra al-det sweep flags: SWEEP_ARGS, e.g.
# "--strategies random,entropy --seeds 0,1".
set -euo pipefail
: "${ROOT:?set ROOT to the sweep root}"
GPUS=${GPUS:-1}
CPUS=${CPUS:-$((4 * GPUS + 4))}
TIME=${TIME:-24:00:00}
SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
[[ $ROOT != *,* ]] || { echo "sweep.sh: ROOT must not contain a comma" >&2; exit 2; }
# shellcheck disable=SC2086  # SWEEP_ARGS is a list of flags
al-det sweep ${SWEEP:+-c "$SWEEP"} -w "$ROOT" ${SWEEP_ARGS:-} --list > "$ROOT/tasks.txt"
n_base=$(grep -c ' base ' "$ROOT/tasks.txt")
n_all=$(wc -l < "$ROOT/tasks.txt")
mkdir -p "$ROOT/slurm-logs"
opts=(--parsable --gpus-per-node="$GPUS" --cpus-per-task="$CPUS" --time="$TIME"
      --output="$ROOT/slurm-logs/%x-%A_%a.out" --export="ALL,ROOT=$ROOT,GPUS=$GPUS,VENV=${VENV:-}")
[[ -z ${PARTITION:-} ]] || opts+=(--partition="$PARTITION")
[[ -z ${ACCOUNT:-} ]] || opts+=(--account="$ACCOUNT")
limit=${MAX_PARALLEL:+%$MAX_PARALLEL}
submit() {
    if [[ ${DRY_RUN:-0} == 1 ]]; then echo "sbatch $*" >&2; echo "DRY"; else sbatch "$@"; fi
}
base=$(submit "${opts[@]}" --array="0-$((n_base - 1))$limit" "$SLURM_DIR/sweep.sbatch")
base=${base%%;*}
members=$(submit "${opts[@]}" --array="$n_base-$((n_all - 1))$limit" \
    --dependency="afterok:$base" --kill-on-invalid-dep=yes "$SLURM_DIR/sweep.sbatch")
echo "cycle 0: job $base (tasks 0-$((n_base - 1))); work dirs: job ${members%%;*}" \
    "(tasks $n_base-$((n_all - 1))); tasks: $ROOT/tasks.txt; progress: al-det status -w $ROOT"
