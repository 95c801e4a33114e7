#!/bin/bash
# Submit the 4-shard array, then a report job that runs once every task has ended (afterany: failed ones too).
# The report exits 1 when a job failed or a shard never recorded its jobs, and writes them to
# $OUT/failed.csv, ready for `dhgen render $OUT/failed.csv --out $OUT`.
set -euo pipefail

here=$(dirname "$0")
export DHGEN=${DHGEN:-/opt/dhgen/.venv/bin/dhgen}
export MANIFEST=${MANIFEST:-/shared/batches/nightly.csv}
export OUT=${OUT:-/shared/renders/nightly}

array=$(sbatch --parsable "$here/dhgen-array.sbatch")
sbatch --dependency="afterany:$array" --job-name=dhgen-report --output="dhgen-report-%j.out" \
    --wrap "\"$DHGEN\" report \"$OUT\" --manifest \"$MANIFEST\" --failed-manifest \"$OUT/failed.csv\""
echo "array job $array; report after it"
