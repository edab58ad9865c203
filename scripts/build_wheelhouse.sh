#!/usr/bin/env bash
# Download wheels of fedctan's exact dependencies, for installing at a site without internet.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "${HERE}")"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--dest DIR] [--python PY] [--torch-index URL]
                          [--platform TAG --python-version X.Y] [--dry-run]

On a machine with internet: pin every dependency of fedctan to the version installed in the
environment of PY (default: the project's .venv/bin/python, which ./run made and tested, else
python3), download those wheels, a torch wheel for the SITE's hardware, and a fedctan wheel into
DIR.
Copy DIR to the site and install there, with no index:

    pip install --no-index --find-links wheelhouse -c wheelhouse/requirements-lock.txt fedctan

(the lock as a constraint: wheels left in DIR by an earlier build are never picked).

torch must be the wheel matching the site's hardware, not this machine's: pick the PyTorch
index for it, e.g. https://download.pytorch.org/whl/cpu (default), .../whl/cu126, .../whl/rocm6.4.
CUDA wheels pull in nvidia-* wheels (several GB). Use --platform/--python-version when the site's
OS or Python differ from this machine (e.g. --platform manylinux2014_x86_64 --python-version 3.11).

  --dest DIR          output folder (default ./wheelhouse)
  --python PY         interpreter whose installed versions are pinned (default: the project's
                      .venv/bin/python, which ./run made and tested, else python3)
  --torch-index URL   PyTorch wheel index for the site's hardware
  --platform TAG      target platform tag for pip download (binary wheels only)
  --python-version    target Python version, with --platform
  --dry-run           print the pinned list and the pip commands; download nothing
USAGE
}

DEST="wheelhouse"
PY="python3"
[[ ! -x "${REPO}/.venv/bin/python" ]] || PY="${REPO}/.venv/bin/python"
TORCH_INDEX="https://download.pytorch.org/whl/cpu"
PLATFORM=""
PYVER=""
DRY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dest) DEST="${2:?--dest needs a folder}"; shift 2 ;;
        --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
        --torch-index) TORCH_INDEX="${2:?--torch-index needs a URL}"; shift 2 ;;
        --platform) PLATFORM="${2:?--platform needs a tag}"; shift 2 ;;
        --python-version) PYVER="${2:?--python-version needs X.Y}"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -z "${PLATFORM}" || -n "${PYVER}" ]] || die "--platform needs --python-version too"
[[ -z "${PYVER}" || -n "${PLATFORM}" ]] \
    || die "--python-version needs --platform too (e.g. manylinux2014_x86_64)"
[[ -z "${PYVER}" || "${PYVER}" =~ ^3\.[0-9]+$ ]] || die "--python-version must be X.Y, got '${PYVER}'"
command -v "${PY}" >/dev/null || die "interpreter ${PY} not found"

LOCK="$("${PY}" "${HERE}/dependency_lock.py" --package fedctan --exclude torch \
    ${PYVER:+--python-version "${PYVER}"})" \
    || die "could not pin dependencies: install fedctan in ${PY}'s environment first"
TORCH_VERSION="$("${PY}" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')"

TARGET=(--only-binary=:all:)
LOCK_FILE="${DEST}/requirements-lock.txt"
if [[ -z "${PLATFORM}" ]]; then
    # Same platform: `pip wheel` also builds wheels for sdist-only packages, here.
    DEPS_CMD=("${PY}" -m pip wheel --no-deps -r "${LOCK_FILE}" -w "${DEST}")
else
    TARGET+=(--platform "${PLATFORM}" --python-version "${PYVER}")
    DEPS_CMD=("${PY}" -m pip download --no-deps "${TARGET[@]}" -r "${LOCK_FILE}" -d "${DEST}")
fi
TORCH_CMD=("${PY}" -m pip download "${TARGET[@]}" --index-url "${TORCH_INDEX}"
    "torch==${TORCH_VERSION}" -d "${DEST}")
OWN_CMD=("${PY}" -m pip wheel --no-deps --no-build-isolation -w "${DEST}" "${REPO}")

if [[ "${DRY}" -eq 1 ]]; then
    echo "# pinned dependencies (${LOCK_FILE}):"
    echo "${LOCK}"
    echo "# commands:"
    printf '%q ' "${DEPS_CMD[@]}"; echo
    printf '%q ' "${TORCH_CMD[@]}"; echo
    printf '%q ' "${OWN_CMD[@]}"; echo
    echo "# at the site: pip install --no-index --find-links $(printf '%q' "${DEST}") -c $(printf '%q' "${LOCK_FILE}") fedctan"
    exit 0
fi

mkdir -p "${DEST}"
echo "${LOCK}" >"${LOCK_FILE}"
"${DEPS_CMD[@]}"
"${TORCH_CMD[@]}"
"${OWN_CMD[@]}"
echo "wheelhouse ready: ${DEST} ($(find "${DEST}" -name '*.whl' | wc -l) wheels)"
echo "at the site: pip install --no-index --find-links $(printf '%q' "${DEST}") -c $(printf '%q' "${LOCK_FILE}") fedctan"
