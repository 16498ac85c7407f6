# Sourced by scripts/run and scripts/test: make .venv with klflow and its test tools, once.
# Needs only Python 3.11+ on PATH (or PYTHON=/path/to/python3); MPI comes from PyPI (mpich).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "klflow needs Python 3.11 or newer; '$PYTHON_BIN' is $("$PYTHON_BIN" --version 2>&1)." >&2
        echo "Set PYTHON=/path/to/python3.11 and run again." >&2
        exit 1
    fi
    echo "Creating $VENV ..." >&2
    "$PYTHON_BIN" -m venv "$VENV"
fi

# Reinstall when the project's metadata changes (the stamp holds its checksum).
STAMP="$VENV/.klflow-install-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | cksum)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "Installing klflow and its test tools into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi

export PYTHONHASHSEED=0
PY="$VENV/bin/python"
MPIEXEC="$VENV/bin/mpiexec"
