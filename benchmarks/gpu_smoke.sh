#!/usr/bin/env bash
# GPU smoke test: the test config (workflow/configs/test.yaml) end to end on one GPU in bf16 mixed
# precision, then the training throughput (tokens/s, from the metrics.jsonl every training run
# writes: one row per optimizer step with its target tokens and seconds) and the peak GPU memory
# (nvidia-smi polled in the background while the pipeline runs).
#
#   bash benchmarks/gpu_smoke.sh [WORKDIR]
#
# WORKDIR (default: a new temporary directory) receives results/; the summary is printed and written
# to WORKDIR/gpu_smoke.json (and copied to $OUT when that is set). Environment: CORES (Snakemake
# --cores, default 8), GPU_JOBS (GPU jobs at once, default 4), POLL_MS (nvidia-smi interval, 200),
# CONFIG_SRC (the config to run, default workflow/configs/test.yaml), GPU_SMOKE_ALLOW_CPU=1 (run
# even where torch sees no GPU: only to check this script itself on a CPU machine).
# Exits non-zero when no GPU is visible to torch, or when the pipeline fails.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${1:-$(mktemp -d -t ketchup-gpu-smoke.XXXXXX)}"
CORES="${CORES:-8}"
GPU_JOBS="${GPU_JOBS:-4}"
POLL_MS="${POLL_MS:-200}"
CONFIG_SRC="${CONFIG_SRC:-$REPO/workflow/configs/test.yaml}"
PYTHON="${PYTHON:-python}"
if [ -x "$REPO/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON="$REPO/.venv/bin/python"; fi
mkdir -p "$WORKDIR"
WORKDIR="$(cd "$WORKDIR" && pwd)"

command -v nvidia-smi >/dev/null || { echo "gpu_smoke: nvidia-smi not found" >&2; exit 2; }
GPU_SMOKE_ALLOW_CPU="${GPU_SMOKE_ALLOW_CPU:-0}" "$PYTHON" - <<'EOF' || { echo "gpu_smoke: torch sees no CUDA GPU" >&2; exit 2; }
import os, sys, torch
if not torch.cuda.is_available():
    if os.environ["GPU_SMOKE_ALLOW_CPU"] == "1":
        print("gpu_smoke: WARNING: no CUDA GPU; running on the CPU (GPU_SMOKE_ALLOW_CPU=1)")
        sys.exit(0)
    sys.exit(1)
print(f"gpu_smoke: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}")
EOF
nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv

# The test config with bf16 mixed precision for the teacher and every student method.
CONFIG="$WORKDIR/test_bf16.yaml"
"$PYTHON" - "$CONFIG_SRC" "$CONFIG" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config["teacher"].setdefault("train", {})["mixed_precision"] = "bf16"
config.setdefault("train", {})["mixed_precision"] = "bf16"
for override in [*config.get("method_overrides", {}).values(), config.get("rl_train", {})]:
    override.pop("mixed_precision", None)
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF

# Peak memory: poll nvidia-smi (MiB used on GPU 0, whole device) for the duration of the run.
MEMLOG="$WORKDIR/gpu_memory.csv"
BASELINE_MIB="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1 | tr -d ' ')"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -i 0 \
    -lms "$POLL_MS" > "$MEMLOG" &
POLLER=$!
trap 'kill "$POLLER" 2>/dev/null || true' EXIT

echo "gpu_smoke: running the test config in $WORKDIR (--cores $CORES, at most $GPU_JOBS GPU jobs at once)"
START=$(date +%s)
status=0
(
    cd "$WORKDIR"
    "$PYTHON" -m snakemake -s "$REPO/Snakefile" --configfile "$CONFIG" --cores "$CORES" \
        --resources gpu="$GPU_JOBS" \
        --set-resources teacher:gpu=1 pretrain:gpu=1 student:gpu=1 teacher_outputs:gpu=1 predict:gpu=1 \
        --rerun-incomplete results/tables/main.csv
) > "$WORKDIR/snakemake.log" 2>&1 || status=$?
WALL=$(( $(date +%s) - START ))
kill "$POLLER" 2>/dev/null || true
wait "$POLLER" 2>/dev/null || true
if [ "$status" -ne 0 ]; then
    tail -n 60 "$WORKDIR/snakemake.log" >&2
    echo "gpu_smoke: the pipeline failed (exit $status); logs under $WORKDIR/results/logs" >&2
    exit "$status"
fi

"$PYTHON" - "$WORKDIR" "$MEMLOG" "$BASELINE_MIB" "$WALL" <<'EOF'
import json, sys
from pathlib import Path

workdir, memlog, baseline, wall = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
runs = []
for path in sorted((workdir / "results" / "models").rglob("metrics.jsonl")):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "tokens" in r and "seconds" in r]
    if not steps:
        continue
    tokens, seconds = sum(r["tokens"] for r in steps), sum(r["seconds"] for r in steps)
    name = str(path.parent.relative_to(workdir / "results" / "models"))
    runs.append({"run": name, "steps": len(steps), "tokens": tokens, "seconds": round(seconds, 3),
                 "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
                 # torch's own peak of allocated memory in this run (training.py logs it on CUDA)
                 "torch_peak_mib": max((r.get("cuda_peak_mib", 0.0) for r in steps), default=0.0)})
used = []
for line in memlog.read_text().splitlines():
    parts = [p.strip() for p in line.split(",")]
    try:
        used.append(float(parts[1]))
    except (IndexError, ValueError):
        pass
peak = max(used) if used else None
total_tokens = sum(r["tokens"] for r in runs)
total_seconds = sum(r["seconds"] for r in runs)
summary = {
    "wall_seconds": wall,
    "training_runs": len(runs),
    "train_tokens": total_tokens,
    "train_seconds": round(total_seconds, 2),
    "tokens_per_s": round(total_tokens / total_seconds, 1) if total_seconds else None,
    "peak_gpu_memory_mib": peak,
    "baseline_gpu_memory_mib": baseline,
    "peak_gpu_memory_over_baseline_mib": None if peak is None else peak - baseline,
    "memory_samples": len(used),
    "runs": runs,
}
print(f"{'run':<45} {'steps':>6} {'tokens':>9} {'seconds':>8} {'tokens/s':>9} {'peak MiB':>9}")
for r in runs:
    print(f"{r['run']:<45} {r['steps']:>6} {r['tokens']:>9.0f} {r['seconds']:>8.2f} {r['tokens_per_s'] or 0:>9.1f} "
          f"{r['torch_peak_mib']:>9.0f}")
print(f"\ntraining throughput: {summary['tokens_per_s']} target tokens/s over {len(runs)} runs "
      f"({total_tokens:.0f} tokens in {total_seconds:.1f} s of optimizer steps; jobs ran concurrently)")
print(f"peak GPU memory: {peak} MiB used on GPU 0 ({summary['peak_gpu_memory_over_baseline_mib']} MiB over the "
      f"{baseline:.0f} MiB in use before the run; {len(used)} samples)")
print(f"wall time: {wall} s")
if not runs:
    sys.exit("gpu_smoke: no metrics.jsonl with training steps found")
(workdir / "gpu_smoke.json").write_text(json.dumps(summary, indent=2))
EOF

echo
cat "$WORKDIR/results/tables/main.csv"
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then
    cp "$WORKDIR/gpu_smoke.json" "$WORKDIR/gpu_memory.csv" "$WORKDIR/results/tables/main.csv" "$OUT/" || true
    cp "$WORKDIR/snakemake.log" "$OUT/" || true
fi
echo "gpu_smoke: ok ($WORKDIR)"
