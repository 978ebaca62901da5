#!/usr/bin/env bash
# The warm worker's effect (src/ketchup/worker.py): the tiny test config's main table from an empty
# results/, every job forked from the warm worker (A) against every job in a fresh process (B,
# KETCHUP_WARM_WORKER=0), run in turn with farm-bench, which prints each one's wall time and the
# paired ratio A/B. Run it with the project's environment active (its python has snakemake):
#   bash benchmarks/warm_worker.sh [RUNS]     (default 3; about 2 minutes a pair)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
smk="$(python -c 'import sys, pathlib; print(pathlib.Path(sys.executable).parent)')/snakemake -s $repo/Snakefile --cores 2 --configfile=$repo/workflow/configs/test.yaml results/tables/main.csv"
farm-bench -n "$runs" --warmup 0 --timeout 3600 \
  --vs "sh -c 'rm -rf $work/b && mkdir $work/b && cd $work/b && export KETCHUP_WARM_WORKER=0; exec $smk >/dev/null 2>&1'" \
  -- sh -c "rm -rf $work/a && mkdir $work/a && cd $work/a && export KETCHUP_WARM_WORKER=1; exec $smk >/dev/null 2>&1"
cmp "$work/a/results/tables/main.csv" "$work/b/results/tables/main.csv" && echo "main.csv: identical with and without the worker"
