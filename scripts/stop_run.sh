#!/usr/bin/env bash
# Coordinator: stop a running federated run (the SuperLink keeps running).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--home DIR] RUN_ID

Stop run RUN_ID ("flwr stop"). Its last completed round stays in the server state, so
launch_run.sh --resume continues from there.

  --home DIR    coordinator folder (default ./coordinator)
USAGE
}

HOME_ARG="coordinator"
RUN_ID=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --home) HOME_ARG="${2:?--home needs a folder}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [[ -z "${RUN_ID}" ]] || die "one run id at a time"; RUN_ID="$1"; shift ;;
    esac
done
[[ "${RUN_ID}" =~ ^[0-9]+$ ]] || die "give the numeric run id (see --help)"
coordinator_paths "${HOME_ARG}"
flower_offline_env
coordinator_cli
FLWR_HOME="${CLI_HOME}" "${FLWR}" stop "${RUN_ID}" "${CONNECTION}"
