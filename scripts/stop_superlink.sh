#!/usr/bin/env bash
# Coordinator: stop the SuperLink started by start_superlink.sh, by its PID file.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--home DIR] [--timeout SECONDS]

Stop the SuperLink whose PID file is DIR/superlink.pid (default ./coordinator) and the helpers
it started (its SuperExec and the ServerApp of a run in progress, which live in sessions of their
own): SIGTERM to each of their process groups, SIGKILL to those still running after the timeout
(default 20 s). Refuses a PID that is not a flower-superlink (a stale file after a reboot).
USAGE
}

HOME_ARG="coordinator"
TIMEOUT=20
while [[ $# -gt 0 ]]; do
    case "$1" in
        --home) HOME_ARG="${2:?--home needs a folder}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "${TIMEOUT}" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a whole number of seconds, got '${TIMEOUT}'"
coordinator_paths "${HOME_ARG}"
require_file "${PID_FILE}" "PID file"
PID="$(cat "${PID_FILE}")"
[[ "${PID}" =~ ^[0-9]+$ ]] || die "${PID_FILE} does not hold a PID"
if ! superlink_running "${PID_FILE}"; then
    rm -f "${PID_FILE}"
    echo "no SuperLink runs as PID ${PID} (stopped, or a file from before a restart); removed ${PID_FILE}"
    exit 0
fi
mapfile -t HELPERS < <(flower_helpers_of "${PID}")
PROCESS_GROUPS=("${PID}" "${HELPERS[@]}")

# Signal each process group; SIGTERM also reaches a leader that left its group. SIGKILL goes to
# groups only: a PID whose process already ended may belong to an unrelated process by then.
signal_groups() {
    local group
    for group in "${PROCESS_GROUPS[@]}"; do
        kill "-$1" -- "-${group}" 2>/dev/null \
            || { [[ "$1" == TERM ]] && kill -TERM "${group}" 2>/dev/null; } || true
    done
}

# Wait up to $1 seconds for every group to end; false if one still runs.
wait_groups() {
    local i group running
    for ((i = 0; i < $1 * 5; i++)); do
        running=0
        for group in "${PROCESS_GROUPS[@]}"; do
            group_running "${group}" && running=1 && break
        done
        ((running)) || return 0
        sleep 0.2
    done
    return 1
}

signal_groups TERM
if ! wait_groups "${TIMEOUT}"; then
    warn "SuperLink or its helpers did not stop within ${TIMEOUT} s; sending SIGKILL"
    signal_groups KILL
    wait_groups 10 || warn "processes of the SuperLink's groups ${PROCESS_GROUPS[*]} still run"
fi
rm -f "${PID_FILE}"
echo "SuperLink (PID ${PID}) stopped, with ${#HELPERS[@]} helper process group(s)"
