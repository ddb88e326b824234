#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (Python >= 3.11) on first use, then
#   scripts/dev.sh demo         run the system locally with a short production-like load
#   scripts/dev.sh test         lint and run the whole test suite
#   scripts/dev.sh deeprec ...  any deeprec command inside the virtualenv
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DEEPREC_VENV:-.venv}
python=${PYTHON:-python3}

setup() {
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "dev.sh: deeprec needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    local stamp="$venv/.deeprec-installed"
    if [ ! -x "$venv/bin/python" ]; then
        echo "dev.sh: creating $venv" >&2
        "$python" -m venv "$venv"
    fi
    # Reinstall whenever pyproject.toml changed since the last install.
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "dev.sh: installing deeprec and its dependencies into $venv" >&2
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -e '.[dev]'
        touch "$stamp"
    fi
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        setup
        exec "$venv/bin/deeprec" demo "$@"
        ;;
    test)
        setup
        "$venv/bin/ruff" check .
        "$venv/bin/ruff" format --check --quiet . || {
            echo "dev.sh: code is not formatted; run: $venv/bin/ruff format ." >&2; exit 1; }
        exec "$venv/bin/python" -m pytest "$@"
        ;;
    deeprec)
        setup
        exec "$venv/bin/deeprec" "$@"
        ;;
    *)
        sed -n '2,6p' "$0"
        exit 2
        ;;
esac
