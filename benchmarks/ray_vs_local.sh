#!/usr/bin/env bash
# Wall time of `lesion reproduce --profile PROFILE` on the local backend (2 worker processes) and on a
# Ray head with 2 CPUs on 127.0.0.1 (tasks of 1 CPU), from empty run directories; checks the tables are
# identical and prints the ratio and the load average before each run. Usage:
#   bash benchmarks/ray_vs_local.sh [profile=quick] [workdir=a new temp dir] [first=local|ray]
set -euo pipefail
profile="${1:-quick}"
work="${2:-$(mktemp -d /tmp/lesion-ray-bench.XXXX)}"
mkdir -p "$work"
first="${3:-local}"  # run the other order too: other processes' load drifts between the two runs
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # keep Ray on loopback (Ray's own switch; see docs/scaling.md)
port=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
raytmp=$(mktemp -d /tmp/lesion-ray.XXXX)
cleanup() { python -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true; rm -rf "$raytmp"; }
trap cleanup EXIT

timed() {  # name, command...: prints "name seconds" after the command, and the load before it
  local name=$1; shift
  echo "$name: load before: $(uptime | sed 's/.*load average: //')"
  local t0; t0=$(date +%s.%N)
  "$@" >"$work/$name.log" 2>&1
  echo "$name: $(python -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s"
}

run_local() { timed local lesion reproduce --profile "$profile" --out "$work/local" --workers 2 --threads 1; }
run_ray() {
  python -m ray.scripts.scripts start --head --node-ip-address=127.0.0.1 --port="$port" --num-cpus=2 \
    --include-dashboard=false --disable-usage-stats --temp-dir="$raytmp" >/dev/null 2>&1
  timed ray lesion reproduce --profile "$profile" --out "$work/ray" --backend ray \
    --address "127.0.0.1:$port" --threads 1
  python -m ray.scripts.scripts stop --force >/dev/null 2>&1
}
if [ "$first" = ray ]; then run_ray; run_local; else run_local; run_ray; fi
python - "$work" <<'EOF'
import json, sys
from pathlib import Path
import pandas as pd
work = Path(sys.argv[1])
names = sorted(p.name for p in (work / "local" / "tables").glob("*.parquet"))
assert names == sorted(p.name for p in (work / "ray" / "tables").glob("*.parquet"))
for n in names:
    pd.testing.assert_frame_equal(pd.read_parquet(work / "ray" / "tables" / n),
                                  pd.read_parquet(work / "local" / "tables" / n), obj=n)
m = {b: json.loads((work / b / "manifest.json").read_text()) for b in ("local", "ray")}
wall = {b: m[b]["timing"]["wall_seconds"] for b in m}
jobs = {b: m[b]["timing"]["job_seconds_total"] for b in m}
print(f"{len(names)} tables identical; {m['ray']['jobs']['total']} jobs")
print(f"wall (manifest): local {wall['local']:.1f} s, ray {wall['ray']:.1f} s, ratio ray/local "
      f"{wall['ray'] / wall['local']:.3f}; summed job time: local {jobs['local']:.1f} s, ray {jobs['ray']:.1f} s")
EOF
echo "run directories and logs: $work"
