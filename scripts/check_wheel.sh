#!/usr/bin/env bash
# A non-editable install must work like the editable one: build the wheel from the project's files, install
# it (no dependencies: they come from the venv) into a temporary folder, and from another folder run
# `ipsolve restore example` and `ipsolve eval` with a packaged config named by its bare name.
#   bash scripts/check_wheel.sh [PYTHON]        (default .venv/bin/python; exits non-zero on any failure)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # absolute, the venv's link kept
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# build from a copy of the tracked and untracked-but-not-ignored files: no stale build/ folder, no venv
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work/src"
# offline with the venv's setuptools (>= 70.1 builds wheels by itself); else an isolated build from PyPI
(cd "$work/src" && { "$python" -m pip wheel --no-deps --no-build-isolation -q . -w "$work/dist" 2>/dev/null ||
                     "$python" -m pip wheel --no-deps -q . -w "$work/dist"; })
"$python" -m pip install -q --no-deps --no-compile --target "$work/site" "$work"/dist/ipsolve-*.whl

mkdir "$work/elsewhere" "$work/elsewhere/digits"
cd "$work/elsewhere"
export PYTHONPATH="$work/site" HF_HUB_OFFLINE=1 PYTHONNOUSERSITE=1
where=$("$python" -c "import ipsolve, degradations, solvers; print(ipsolve.__file__, degradations.__file__)")
case "$where" in
  "$work/site/"*) ;;
  *) echo "check_wheel: ipsolve imported from $where, not from the installed wheel" >&2; exit 1 ;;
esac

"$python" -m ipsolve restore example --outer 2 --inner 2 --quiet --out restored
test -s restored/final.png && test -s restored/strip.png && test -s restored/run.json

# a named model config is packaged too: celeba_hq is known (its weights are missing, and it says so)
if message=$(IPSOLVE_WEIGHTS="$work/no-weights" "$python" -m ipsolve restore example --model celeba_hq \
             --quiet --out unused 2>&1); then
  echo "check_wheel: --model celeba_hq ran without its weights" >&2; exit 1
fi
case "$message" in
  *"celeba_hq.ckpt"*"not found"*) ;;
  *) echo "check_wheel: --model celeba_hq: unexpected answer: $message" >&2; exit 1 ;;
esac

"$python" - <<'EOF'
import shutil
from pathlib import Path

import ipsolve

for k in range(2):  # two copies of the shipped clean digit: enough images for a named eval config
    shutil.copy(Path(ipsolve.__file__).parent / "examples" / "digit_clean.png", f"digits/digit_{k}.png")
EOF
"$python" -m ipsolve eval --config embedded_smoke --data digits --limit 2 --no-fid --out evaluated
test -s evaluated/table.md
echo "check_wheel: the wheel restores the example and runs the packaged eval config embedded_smoke"
