#!/bin/bash
# Submit the 4-shard array (dhgen-array.sbatch), then a report job that runs once every task has ended
# (afterany: failed ones too). The report exits 1 when a job failed or a shard never recorded its jobs, and writes
# them to $OUT/failed.csv, ready for `dhgen render $OUT/failed.csv --out $OUT`; when nothing is left to redo it
# removes an earlier failed.csv, so the file exists only while there is work to redo.
#
#   MANIFEST=/shared/batches/nightly.csv OUT=/shared/renders/nightly examples/slurm/submit.sh [SBATCH OPTIONS]
#
# Variables (README's "Under a batch scheduler"): MANIFEST, OUT (required); DHGEN (dhgen on PATH); per array task
# GPUS=1 (0: no GPU request at all), CPUS=16, MEM=64G, TIME=04:00:00, PARTITION (the cluster's default),
# DEVICE (cuda, or cpu with GPUS=0), JOBS=8; LOGS=$OUT/slurm, the folder of Slurm's output files. Arguments go
# to the array's sbatch as they are (--qos=low, --array=0-7 for 8 shards); SBATCH_ACCOUNT and the like reach both
# jobs.
set -euo pipefail

here=$(dirname "$0")
: "${MANIFEST:?set MANIFEST to the batch's manifest (a path every node can read)}"
: "${OUT:?set OUT to the batch's output folder (a path every node can write)}"
wanted=${DHGEN:-dhgen}
if ! DHGEN=$(command -v "$wanted"); then  # the tasks get its full path
    echo "submit.sh: DHGEN=$wanted is not a command here; set DHGEN to dhgen's path (/opt/dhgen/.venv/bin/dhgen)" >&2
    exit 2
fi
GPUS=${GPUS:-1}
DEVICE=${DEVICE:-$([[ $GPUS == 0 ]] && echo cpu || echo cuda)}
JOBS=${JOBS:-8}
LOGS=${LOGS:-$OUT/slurm}
export DHGEN MANIFEST OUT DEVICE JOBS
mkdir -p "$LOGS"  # sbatch does not create the folder of --output; a task without it fails at once

both=()
[[ -z ${PARTITION:-} ]] || both+=(--partition="$PARTITION")
array=(--cpus-per-task="${CPUS:-16}" --mem="${MEM:-64G}" --time="${TIME:-04:00:00}")
[[ $GPUS == 0 ]] || array+=(--gres="gpu:$GPUS")
array_id=$(sbatch --parsable ${both[@]+"${both[@]}"} "${array[@]}" --output="$LOGS/dhgen-%A_%a.out" "$@" \
    "$here/dhgen-array.sbatch")
array_id=${array_id%%;*}  # --parsable prints "id" or "id;cluster"

report=$(printf '%q ' "$DHGEN" report "$OUT" --manifest "$MANIFEST" --failed-manifest "$OUT/failed.csv")
report_id=$(sbatch --parsable ${both[@]+"${both[@]}"} --dependency="afterany:$array_id" --job-name=dhgen-report \
    --cpus-per-task=1 --mem=1G --time=00:30:00 --output="$LOGS/dhgen-report-%j.out" --wrap "$report")
echo "array job $array_id; report job ${report_id%%;*} after it; Slurm's output files in $LOGS"
