#!/usr/bin/env bash
# The GPU check on a fresh machine, in at most ~8 minutes including installation.
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [extra arguments of gpu_check.py]
#
# Run from anywhere; it works in the repository that holds this file.  OUTDIR defaults to
# $OUT (the device tool's output folder), else ./gpu_check_out.  It
#   1. makes a virtualenv in ${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/tcomplex-gpu-check-venv} with the
#      system site-packages visible, so a torch that `python3 -c "import torch"` already finds is
#      reused (no multi-GB download);
#   2. pip-installs only the modules that are missing (torch==2.14.1 and torchvision==0.29.1,
#      the project's pins, only when there is no torch at all), with a time limit; a failed
#      installation is printed clearly and written into OUTDIR/gpu_check_install.log;
#   3. runs benchmarks/gpu_check.py with the repository on PYTHONPATH (no install of tcomplex
#      itself, so nothing has to be built), giving it what is left of the 8 minutes.
# Data: chapter 1 needs MNIST; set TCOMPLEX_DATA or pass --data-root DIR (the device tool copies
# only the working tree: copy MNIST into ./data/MNIST and carry "data/MNIST", 53 MiB).
set -u
T0=$(date +%s)
LIMIT_S=${GPU_CHECK_LIMIT_S:-480}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$HERE" || exit 2
OUTDIR=${1:-${OUT:-gpu_check_out}}
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check_install.log"
: > "$LOG"
PY=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/tcomplex-gpu-check-venv}

say() { echo "[gpu_check.sh] $*" | tee -a "$LOG" >&2; }

say "repository $HERE, output $OUTDIR, python $($PY --version 2>&1)"
if [ ! -x "$VENV/bin/python" ]; then
    if ! $PY -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1; then
        say "WARNING: could not create a virtualenv at $VENV (see $LOG); using $PY itself"
        VENV=""
    fi
fi
VPY=${VENV:+$VENV/bin/python}
VPY=${VPY:-$PY}

missing() {  # pip requirement of every module the check needs that does not import
    "$VPY" - <<'EOF'
import importlib
need = [("torch", "torch==2.14.1"), ("torchvision", "torchvision==0.29.1"), ("numpy", "numpy>=1.26"),
        ("pandas", "pandas>=2.1"), ("tqdm", "tqdm>=4.66"), ("yaml", "pyyaml"), ("scipy", "scipy>=1.11"),
        ("PIL", "pillow"), ("numba", "numba>=0.60")]
out = []
for mod, req in need:
    try:
        importlib.import_module(mod)
    except Exception:
        out.append(req)
print(" ".join(out))
EOF
}

MISSING=$(missing)
if "$VPY" -c "import torch" >/dev/null 2>&1; then
    say "reusing torch $("$VPY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1)"
fi
CONSTRAINTS=$(mktemp "${TMPDIR:-/tmp}/gpu_check_constraints.XXXXXX")
: > "$CONSTRAINTS"
if TV=$("$VPY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null); then
    # keep the torch that is there: a missing torchvision then comes in the version built for it
    echo "torch==$TV" > "$CONSTRAINTS"
    MISSING=${MISSING/torchvision==0.29.1/torchvision}
fi
if [ -n "$MISSING" ]; then
    say "installing with pip: $MISSING (constraints: $(cat "$CONSTRAINTS"))"
    if ! timeout "${GPU_CHECK_PIP_TIMEOUT_S:-300}" "$VPY" -m pip install --disable-pip-version-check \
            -c "$CONSTRAINTS" $MISSING >>"$LOG" 2>&1; then
        say "INSTALLATION FAILED (pip install $MISSING): no package registry reachable, or it timed out;"
        say "  the last lines of the pip log:"
        tail -n 5 "$LOG" >&2
        say "  the sections that need what is missing will record an import error"
    fi
    STILL=$(missing)
    [ -n "$STILL" ] && say "STILL MISSING after installation: $STILL"
else
    say "every module the check needs is already importable: nothing to install"
fi

if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    say "FATAL: torch cannot be imported, so the check cannot run (see $LOG)"
    printf '{"tool": "benchmarks/gpu_check.sh", "status": "installation failed", "log": "%s"}\n' "$LOG" > "$OUTDIR/gpu_check.json"
    printf '## tcomplex GPU check\n\ninstallation failed: torch cannot be imported (see gpu_check_install.log)\n' > "$OUTDIR/gpu_check.md"
    exit 3
fi

USED=$(( $(date +%s) - T0 ))
LEFT=$(( LIMIT_S - USED - 40 ))   # 40 s margin for start-up and writing
BUDGET=$(( LEFT < 360 ? LEFT : 360 ))
[ "$BUDGET" -lt 60 ] && BUDGET=60
say "installation took ${USED} s; the check gets ${BUDGET} s"
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$VPY" benchmarks/gpu_check.py --out "$OUTDIR" --total-budget "$BUDGET" "$@"
RC=$?
say "done in $(( $(date +%s) - T0 )) s (exit $RC); results in $OUTDIR/gpu_check.md and $OUTDIR/gpu_check.json"
exit $RC
