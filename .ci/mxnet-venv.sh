#!/usr/bin/env bash
# Create the optional mxnet 1.9.1 oracle interpreter used by tests/test_mxnet_oracle.py.
#
# mxnet 1.9.1 imports only beside numpy<1.24 (it uses the removed np.bool alias), so it cannot live in the
# project's own environment; it gets a separate venv and is only ever run in a subprocess by the tests.
#
# Usage: .ci/mxnet-venv.sh [DIR]     (default: <repo>/.venv-mxnet)
# Prints the oracle interpreter path on the last line of stdout.
# Environment: PYTHON (default python3.11, else python3) picks the base interpreter.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="${1:-${repo_root}/.venv-mxnet}"

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi

oracle_python="${venv_dir}/bin/python"
if [[ -x "${oracle_python}" ]] && "${oracle_python}" -c "import mxnet" >/dev/null 2>&1; then
    echo "${oracle_python}"
    exit 0
fi

if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    echo "error: base interpreter ${PYTHON} not found (set PYTHON to a python3.11)" >&2
    exit 1
fi
if ! "${PYTHON}" -c 'import sys; sys.exit(0 if sys.version_info < (3, 12) else 1)'; then
    echo "error: ${PYTHON} is Python >= 3.12, but mxnet 1.9.1 needs numpy<1.24, which has no wheels for it;" \
        "install python3.11 or point PYTHON at one" >&2
    exit 1
fi

"${PYTHON}" -m venv "${venv_dir}" >&2
"${oracle_python}" -m pip install --quiet mxnet==1.9.1 'numpy<1.24' >&2
"${oracle_python}" -c "import mxnet; assert mxnet.__version__ == '1.9.1', mxnet.__version__" >&2
echo "${oracle_python}"
