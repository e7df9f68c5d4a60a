#!/usr/bin/env bash
# The three full studies of the README, one after another, under the heavy-run lock. Rerunning
# continues where a killed run stopped (finished points are skipped, a half-trained one resumes).
#   nohup benchmarks/studies.sh > /tmp/vitlab-studies.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p runs/study
exec 9>/tmp/vitlab-heavy.lock
flock 9
for study in data-scaling model-scaling transfer; do
  echo "$(date -u +%FT%TZ) $study: start"
  .venv/bin/vitlab study "$study" --preset full --out "runs/study/$study-full"
  echo "$(date -u +%FT%TZ) $study: done"
done
