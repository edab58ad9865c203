#!/usr/bin/env bash
# Coordinator: stop the SuperLink started by start_superlink.sh, by its PID file.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--home DIR] [--timeout SECONDS]

Stop the SuperLink whose PID file is DIR/superlink.pid (default ./coordinator): SIGTERM to its
process group (the SuperLink and the ServerApp processes it started), SIGKILL after the timeout
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
coordinator_paths "${HOME_ARG}"
require_file "${PID_FILE}" "PID file"
PID="$(cat "${PID_FILE}")"
[[ "${PID}" =~ ^[0-9]+$ ]] || die "${PID_FILE} does not hold a PID"
if ! kill -0 "${PID}" 2>/dev/null; then
    rm -f "${PID_FILE}"
    echo "SuperLink (PID ${PID}) was not running; removed ${PID_FILE}"
    exit 0
fi
tr '\0' ' ' <"/proc/${PID}/cmdline" | grep -q "flower-superlink" \
    || die "PID ${PID} from ${PID_FILE} is not a flower-superlink; not stopping it"
kill -TERM -- "-${PID}" 2>/dev/null || kill -TERM "${PID}"
for ((i = 0; i < TIMEOUT * 10; i++)); do
    kill -0 "${PID}" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "${PID}" 2>/dev/null; then
    warn "SuperLink did not stop within ${TIMEOUT} s; sending SIGKILL"
    kill -KILL -- "-${PID}" 2>/dev/null || kill -KILL "${PID}"
fi
rm -f "${PID_FILE}"
echo "SuperLink (PID ${PID}) stopped"
