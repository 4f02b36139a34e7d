#!/bin/bash
# Submit a whole al-det experiment to Slurm as one chain of dependent jobs:
#
#   cycle k < last:  train k -> evaluate k -> infer k -> acquire k   (acquire k makes cycle k+1)
#   last cycle:      train   -> evaluate
#
# each job starting only after the previous one succeeded (--dependency=afterok) and the rest
# of the chain cancelled if one fails (--kill-on-invalid-dep=yes). Preempted or timed-out GPU
# jobs requeue themselves with the same id, so the chain just waits for them.
#
#   WORKDIR=runs/coco CONFIG=configs/coco_frcnn.yaml GPUS=8 PARTITION=gpu \
#       scripts/slurm/experiment.sh
#
# Runs `al-det init` here on the login node first when WORKDIR has no config.yaml (needs
# CONFIG); the number of cycles is read from WORKDIR/config.yaml. Every al-det command is
# resumable (rerun, it continues where it stopped), so resubmitting after a failure is safe;
# FIRST_CYCLE skips the cycles already done. Prints one line per job: its id, cycle and stage.
#
# Variables (environment):
#   WORKDIR        the experiment's work dir (required)
#   CONFIG         the experiment YAML, only used to init a new WORKDIR
#   NODES          nodes per GPU job (default 1)
#   GPUS           GPUs per node (default 8)
#   CPUS           CPUs per node for GPU jobs (default 4 per GPU)
#   PARTITION      Slurm partition of the GPU jobs (default: the cluster's default)
#   CPU_PARTITION  partition of the CPU-only acquire jobs (default: PARTITION)
#   ACCOUNT        Slurm account (optional)
#   QOS            Slurm QOS (optional)
#   TIME           time limit of a train job (default 24:00:00; a job that reaches it
#                  checkpoints and requeues itself, so training may span several jobs)
#   EVAL_TIME      time limit of an evaluate job (default 02:00:00)
#   INFER_TIME     time limit of an infer job (default 04:00:00)
#   ACQUIRE_TIME   time limit of an acquire job (default 02:00:00)
#   ACQUIRE_MEM    memory of an acquire job (default 32G)
#   FIRST_CYCLE    first cycle to submit (default 0)
#   AFTER          a job id the first job waits for (optional)
#   VENV           a virtualenv the jobs activate (optional; else they inherit this PATH)
#   LOGDIR         job logs (default WORKDIR/slurm-logs; %x-%j.out, appended on requeue)
#   EXTRA_SBATCH   extra sbatch options for every job, split on spaces, after (so overriding)
#                  the options above, e.g. "--mail-type=FAIL --constraint=a100"
#   PYTHON         python with PyYAML, to read config.yaml (default python3)
#   DRY_RUN        1: print the sbatch commands instead of submitting (fake job ids)

set -euo pipefail

: "${WORKDIR:?set WORKDIR to the experiment work dir}"
CONFIG=${CONFIG:-}
NODES=${NODES:-1}
GPUS=${GPUS:-8}
CPUS=${CPUS:-$((4 * GPUS))}
PARTITION=${PARTITION:-}
CPU_PARTITION=${CPU_PARTITION:-$PARTITION}
ACCOUNT=${ACCOUNT:-}
QOS=${QOS:-}
TIME=${TIME:-24:00:00}
EVAL_TIME=${EVAL_TIME:-02:00:00}
INFER_TIME=${INFER_TIME:-04:00:00}
ACQUIRE_TIME=${ACQUIRE_TIME:-02:00:00}
ACQUIRE_MEM=${ACQUIRE_MEM:-32G}
FIRST_CYCLE=${FIRST_CYCLE:-0}
AFTER=${AFTER:-}
VENV=${VENV:-}
EXTRA_SBATCH=${EXTRA_SBATCH:-}
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}

SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    echo "experiment.sh: error: $*" >&2
    exit 2
}

if [[ -n $VENV ]]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi

mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)  # jobs may start in another directory
[[ $WORKDIR != *,* ]] || die "WORKDIR $WORKDIR contains a comma, which sbatch --export cannot pass"
LOGDIR=${LOGDIR:-$WORKDIR/slurm-logs}
mkdir -p "$LOGDIR"

if [[ ! -f $WORKDIR/config.yaml ]]; then
    [[ -n $CONFIG ]] || die "$WORKDIR/config.yaml not found: set CONFIG to the experiment YAML" \
        "so that al-det init can create the work dir"
    echo "al-det init -c $CONFIG -w $WORKDIR"
    al-det init -c "$CONFIG" -w "$WORKDIR"
fi

CYCLES=$("$PYTHON" -c 'import sys, yaml
with open(sys.argv[1]) as fh:
    print(int(yaml.safe_load(fh)["cycles"]))' "$WORKDIR/config.yaml") \
    || die "cannot read 'cycles' from $WORKDIR/config.yaml"
(( CYCLES >= 1 )) || die "$WORKDIR/config.yaml: cycles is $CYCLES"
(( FIRST_CYCLE >= 0 && FIRST_CYCLE < CYCLES )) \
    || die "FIRST_CYCLE $FIRST_CYCLE is not in 0..$((CYCLES - 1))"

# Options of every job.
common=(--kill-on-invalid-dep=yes --open-mode=append --output="$LOGDIR/%x-%j.out")
[[ -z $ACCOUNT ]] || common+=(--account="$ACCOUNT")
[[ -z $QOS ]] || common+=(--qos="$QOS")
extra=()
[[ -z $EXTRA_SBATCH ]] || read -r -a extra <<< "$EXTRA_SBATCH"
gpu_opts=(--nodes="$NODES" --gpus-per-node="$GPUS" --cpus-per-task="$CPUS")
[[ -z $PARTITION ]] || gpu_opts+=(--partition="$PARTITION")
cpu_opts=(--mem="$ACQUIRE_MEM" --time="$ACQUIRE_TIME")
[[ -z $CPU_PARTITION ]] || cpu_opts+=(--partition="$CPU_PARTITION")

prev=$AFTER
fake_id=0

# submit CYCLE STAGE [sbatch options...]: submit STAGE.sbatch after job $prev; set prev.
submit() {
    local cycle=$1 stage=$2
    shift 2
    local args=("${common[@]}" "$@")
    (( ${#extra[@]} == 0 )) || args+=("${extra[@]}")  # last, so that they override
    args+=(--job-name="al-det-c${cycle}-${stage}"
        --export="ALL,WORKDIR=$WORKDIR,CYCLE=$cycle,GPUS=$GPUS,VENV=$VENV")
    [[ -z $prev ]] || args+=(--dependency="afterok:$prev")
    args+=("$SLURM_DIR/$stage.sbatch")
    local id
    if [[ $DRY_RUN == 1 ]]; then
        fake_id=$((fake_id + 1))
        id="DRY$fake_id"
        echo "sbatch --parsable ${args[*]}"
    else
        id=$(sbatch --parsable "${args[@]}")
        id=${id%%;*}  # --parsable prints "id" or "id;cluster"
    fi
    echo "$id cycle $cycle $stage"
    prev=$id
}

for (( k = FIRST_CYCLE; k < CYCLES; k++ )); do
    submit "$k" train "${gpu_opts[@]}" --time="$TIME"
    submit "$k" evaluate "${gpu_opts[@]}" --time="$EVAL_TIME"
    if (( k < CYCLES - 1 )); then
        submit "$k" infer "${gpu_opts[@]}" --time="$INFER_TIME"
        submit "$k" acquire "${cpu_opts[@]}"
    fi
done
echo "submitted cycles $FIRST_CYCLE..$((CYCLES - 1)) of $WORKDIR; logs in $LOGDIR;" \
    "progress: al-det status -w $WORKDIR"
