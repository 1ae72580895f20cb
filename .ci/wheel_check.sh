#!/usr/bin/env bash
# The newcomer's path, checked: build the wheel, install it into a fresh virtual environment
# WITHOUT the dev extras, and run what a user runs first. `make test` calls it (target wheel-check).
#   1. `pure-prune --help` and `pure-prune demo --help` work with the core dependencies only;
#   2. without the `data` extra, `pure-prune demo` and `pure_prune.app.data.load("digits")` name it in
#      one line (exit 2, no traceback; the library raises extras.MissingExtraError);
#   3. a short `pure-prune run` on an .npz file works with the core dependencies only, and
#      `pure-prune report` on it names the `plots` extra (exit 2) while `--no-plots` writes the table;
#   4. with the `plots` extra, the report of that run with its PNGs.
# torch is installed first from constraints.txt (the local CPU build), so pip never pulls CUDA wheels;
# --no-compile skips byte-compiling torch's thousands of files (most of the install's CPU time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/pure-prune-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
constraints=$PWD/constraints.txt
export OMP_NUM_THREADS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== %s (%ds)\n' "$1" "$((SECONDS - start))"; }
fail() { printf 'wheel-check FAILED: %s\n' "$1" >&2; exit 1; }

# expect_extra EXTRA CMD...: CMD exits 2 and prints exactly one line naming pip install "pure-prune[EXTRA]"
expect_extra() {
    local extra=$1 rc=0
    shift
    "$@" >"$work/out" 2>"$work/err" || rc=$?
    cat "$work/err"
    [ "$rc" -eq 2 ] || fail "'$*' exited $rc, expected 2"
    [ "$(wc -l <"$work/err")" -eq 1 ] || fail "'$*' printed more than one line on stderr"
    grep -qF "pip install \"pure-prune[$extra]\"" "$work/err" || fail "'$*' does not name the $extra extra"
    if grep -q Traceback "$work/err"; then fail "'$*' printed a traceback"; fi
}

step "fresh venv; build the wheel from a copy of the source tree (the checkout gets no build/)"
"$PY" -m venv "$work/venv"
bin=$work/venv/bin
mkdir "$work/src"
tar --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./build --exclude=./dist \
    --exclude=./.hypothesis --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -xf - -C "$work/src"
"$bin/pip" wheel -q --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/pure_prune-*.whl)
echo "$wheel"

step "install torch from constraints.txt, then the wheel without extras"
"$bin/pip" install -q --no-compile -c "$constraints" torch
"$bin/pip" install -q --no-compile -c "$constraints" "$wheel"
"$bin/python" -c "import importlib.util as u; assert not any(u.find_spec(m) for m in ('sklearn', 'mnist1d', 'matplotlib', 'hypothesis', 'pytest'))" \
    || fail "an optional dependency came with the bare wheel"

step "pure-prune --help, pure-prune demo --help"
cd "$work"  # run outside the checkout, so that the installed package is the one imported
"$bin/pure-prune" --help >/dev/null
"$bin/pure-prune" demo --help

step "missing data extra: the CLI and the library name it"
expect_extra data "$bin/pure-prune" demo --no-progress
"$bin/python" - <<'PY'
from pure_prune.app import data, extras

try:
    data.load("digits")
except extras.MissingExtraError as e:
    assert e.extra == "data" and 'pip install "pure-prune[data]"' in str(e), e
    print(f"library: {type(e).__name__}: {e}")
else:
    raise SystemExit("data.load('digits') worked without scikit-learn")
PY

step "a short pure-prune run on an .npz file, core dependencies only"
"$bin/python" - <<'PY'
import numpy as np

g = np.random.default_rng(0)
centres = g.normal(size=(4, 16))
y = g.integers(0, 4, size=600)
x = (centres[y] + 2.0 * g.normal(size=(600, 16))).astype(np.float32)  # overlapping classes
np.savez("blobs.npz", x_train=x[:480], y_train=y[:480], x_test=x[480:], y_test=y[480:])
PY
"$bin/pure-prune" run --model mlp --data npz --root blobs.npz --model-cfg '{"sizes": [16, 32, 4]}' \
    --method imp --rate 0.5 --pruning-times 2 --epochs 2 --batch-size 64 --eager --no-progress \
    --save-dir runs/npz

step "missing plots extra: report names it; --no-plots writes the table"
expect_extra plots "$bin/pure-prune" report runs/npz --out rep-bare
[ ! -e rep-bare ] || fail "report wrote files before refusing"
"$bin/pure-prune" report runs/npz --out rep-bare --no-plots >/dev/null
[ -s rep-bare/report.md ] || fail "report --no-plots wrote no table"

step "the plots extra: the report with its pictures"
"$bin/pip" install -q --no-compile -c "$constraints" "$wheel[plots]"
"$bin/pure-prune" report runs/npz --out rep
for f in rep/report.md rep/rounds.png rep/accuracy_bars.png rep/accuracy_vs_weights.png rep/masks_npz.png; do
    [ -s "$f" ] || fail "report did not write $f"
done

step "wheel-check passed"
times  # CPU seconds: this shell, then its children (user, system); wall time is on the line above
