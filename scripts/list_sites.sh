#!/usr/bin/env bash
# Coordinator: list the registered SuperNodes and whether they are online.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--home DIR] [--json]

List the SuperNodes registered with the SuperLink and their status
("flwr supernode list fedctan").

  --home DIR    coordinator folder (default ./coordinator)
  --json        machine-readable output
USAGE
}

HOME_ARG="coordinator"
FORMAT=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --home) HOME_ARG="${2:?--home needs a folder}"; shift 2 ;;
        --json) FORMAT=(--format json); shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
coordinator_paths "${HOME_ARG}"
flower_offline_env
coordinator_cli
if [[ ${#FORMAT[@]} -eq 0 ]]; then
    FLWR_HOME="${CLI_HOME}" "${FLWR}" supernode list "${CONNECTION}"
    exit
fi
# With --format json, flwr prints {"success": false, ...} and exits 0 when it fails.
LISTED="$(FLWR_HOME="${CLI_HOME}" "${FLWR}" supernode list "${FORMAT[@]}" "${CONNECTION}")" \
    || { echo "${LISTED:-}"; die "flwr supernode list failed"; }
echo "${LISTED}"
python3 -c 'import json, sys; sys.exit(0 if json.loads(sys.argv[1]).get("success", True) else 1)' \
    "${LISTED}" || die "flwr supernode list failed (see the JSON above)"
