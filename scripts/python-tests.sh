#!/usr/bin/env bash
# The Python face (xme-py, `import XME`), as a user gets it:
#  1. `pip install ./xme-py` in a fresh venv (a source build through maturin's
#     PEP 517 backend), then its pytest suite;
#  2. the manylinux2014 abi3 wheel, built here without a container
#     (`maturin build --release --zig --compatibility manylinux2014`, maturin
#     and ziglang from PyPI), installed in another fresh venv: a seed
#     example, then the suite on every other CPython found (XME_PY_EXTRA,
#     python3.9 ... python3.14 on PATH, and pyenv's 3.9+ versions);
#  3. a short run of the comparison with XME 4.2.5 and multiprocessing
#     (figures only: timing on a shared machine is not asserted).
# Needs python3 with venv (Debian's python3-venv; installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n-- %s\n' "$*"; }
# Build and test with Python's default buffering, whatever the caller set.
unset PYTHONUNBUFFERED

if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
fi
py=$(command -v python3)
echo "CPython for the source build: $("$py" --version) ($py)"

fresh_venv() { rm -rf "$1" && "$2" -m venv "$1" && "$1/bin/pip" install -q --upgrade pip >/dev/null; }

step "pip install ./xme-py in a fresh venv, then pytest"
fresh_venv target/py-src "$py"
target/py-src/bin/pip install -q ./xme-py pytest
(cd xme-py/tests && ../../target/py-src/bin/python -m pytest -q -p no:cacheprovider)

step "the manylinux2014 abi3 wheel (maturin + zig from PyPI, no container)"
fresh_venv target/py-build "$py"
target/py-build/bin/pip install -q "maturin>=1.7,<2" ziglang
rm -rf target/wheels
# maturin finds zig through the venv's python (the ziglang package).
PATH="$(pwd)/target/py-build/bin:$PATH" \
  maturin build --release --zig --compatibility manylinux2014 -m xme-py/Cargo.toml --out target/wheels
wheel=$(ls target/wheels/xme_py-*-cp39-abi3-manylinux*2014*.whl)
echo "built $wheel"

step "the wheel in a fresh venv: the seed's 1.2.1 example, exit under a daemon thread"
fresh_venv target/py-wheel "$py"
target/py-wheel/bin/pip install -q "$wheel" pytest
# From /tmp, so that the installed package is imported, not the sources.
test "$(cd /tmp && "$root/target/py-wheel/bin/python" "$root/xme-py/tests/seed/s1_2_1_single.py")" = 5050
# Exit under a daemon thread in a batch: the zig-linked wheel is where a
# thread ended inside XME's frames crashed (the source build hid it).
(cd xme-py/tests && ../../target/py-wheel/bin/python -m pytest -q -p no:cacheprovider test_shutdown.py)

step "the wheel on every other CPython on this machine"
extra=${XME_PY_EXTRA:-}
for v in 9 10 12 13 14; do
  if command -v "python3.$v" >/dev/null 2>&1 && "python3.$v" -c "import venv" 2>/dev/null; then
    extra="$extra $(command -v "python3.$v")"
  fi
done
# pyenv's CPythons, when this machine has them (3.9+: the wheel is cp39-abi3);
# one per minor version, not the one the source build used.
for other in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*/bin/python3; do
  [ -x "$other" ] || continue
  minor=$("$other" -c 'import sys; print(sys.version_info[1] if sys.version_info >= (3, 9) else "")' 2>/dev/null) || continue
  [ -n "$minor" ] || continue
  [ "$("$other" -c 'import sys; print(sys.version_info[:2])')" = "$("$py" -c 'import sys; print(sys.version_info[:2])')" ] && continue
  case " $extra " in *"/python3.$minor "*|*" $other "*) continue ;; esac
  extra="$extra $other"
done
if [ -z "${extra// /}" ]; then
  echo "none: this machine has only $("$py" --version) (Debian bookworm offers no other CPython)"
fi
for other in $extra; do
  echo "== $("$other" --version) ($other)"
  fresh_venv target/py-other "$other"
  target/py-other/bin/pip install -q "$wheel" pytest
  (cd xme-py/tests && ../../target/py-other/bin/python -m pytest -q -p no:cacheprovider)
done

step "xme beside XME 4.2.5, a fork loop and multiprocessing (a short run; figures only)"
xme425=()
if [ -x target/xmevenv/bin/python ] && target/xmevenv/bin/python -c "import XME.Manager" 2>/dev/null; then
  xme425=(--xme425 target/xmevenv/bin/python)
fi
target/py-src/bin/python xme-py/bench/compare.py "${xme425[@]}" --rounds 2 --per-block 3 --cpu-rounds 1
