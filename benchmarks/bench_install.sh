#!/usr/bin/env bash
# Time the README's install commands as a newcomer meets them: a fresh venv holding only
# torch/torchvision (the releases .ci/run pins), no pip cache, then `pip install -e SPEC` for each
# SPEC given (default: "." and ".[dev,inception]"), the venv put back to torch-only between them,
# with the README's --no-compile (PIP_FLAGS="" for pip's default, which byte-compiles every file).
# Prints the seconds, the packages installed and the megabytes downloaded; pip's timestamped log
# and --report JSON of each are left in $OUT (default /tmp/mad-bench-install).
#   [PIP_FLAGS=...] bash benchmarks/bench_install.sh [SPEC ...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mad-bench-install}
PIP_FLAGS=${PIP_FLAGS---no-compile}
V=$OUT/venv
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$OUT"
if [ ! -x "$V/bin/pip" ]; then
  python -m venv "$V"
  "$V/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$V/bin/pip" freeze > "$OUT/torch-only.txt"
fi
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=("." ".[dev,inception]")
for spec in "${specs[@]}"; do
  # back to torch-only: remove what the previous measurement added
  "$V/bin/pip" freeze | grep -v -x -F -f "$OUT/torch-only.txt" | grep -v -e "^-e " -e "^#" | sed -E "s/[ =@].*//" \
    | xargs -r "$V/bin/pip" uninstall -y -q || true
  "$V/bin/pip" uninstall -y -q mad mad-loops >/dev/null 2>&1 || true
  tag=$(echo "$spec" | tr -c 'a-z0-9' '_')
  rm -f "$OUT/log$tag.txt"  # pip --log appends
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$V/bin/pip" install -q --progress-bar off $PIP_FLAGS --log "$OUT/log$tag.txt" --report "$OUT/report$tag.json" \
    -e "$spec" 2>"$OUT/stderr$tag.txt"
  t1=$(date +%s.%N)
  python - "$OUT/log$tag.txt" "$OUT/report$tag.json" "$spec" "$t0" "$t1" "$PIP_FLAGS" <<'EOF'
import json, re, sys
log, report, spec, t0, t1, flags = sys.argv[1:]
unit = {"kB": 1e-3, "MB": 1.0, "GB": 1e3}
mb = sum(float(n) * unit[u] for n, u in re.findall(r"Downloading \S+ \(([\d.]+) (kB|MB|GB)\)", open(log).read()))
n = len(json.load(open(report))["install"])
print(f'pip install {flags + " " if flags else ""}-e "{spec}": {float(t1) - float(t0):.0f} s, {n} packages, {mb:.0f} MB downloaded '
      f'(load average {open("/proc/loadavg").read().split()[0]})')
EOF
done
