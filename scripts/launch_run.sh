#!/usr/bin/env bash
# Coordinator: launch a federated run from a config YAML on the SuperLink and follow it.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--home DIR] [--app DIR] --config YAML [--output-dir DIR] [--rounds N]
                        [--resume] [--no-follow]

Submit the fedctan app with "flwr run" to the SuperLink started by start_superlink.sh, pointing
its run config at the coordinator's YAML, then stream the run's log until it ends and check
that it really completed ("flwr run --stream" exits 0 even when a run failed). Exit status 0
only for a completed run.

The YAML travels inside the app bundle, so it must lie in the configs/ folder of the app (for
example configs/my-federation.yaml: the bundle holds the code and configs/ only); every site
reads the same file from the bundle, with its own data from its node config. The run folder (report, model card, round log, checkpoints, server state
for --resume) is written on the SuperLink host under --output-dir/<federation id>/.

  --home DIR        coordinator folder (default ./coordinator)
  --app DIR         the app folder to bundle (default: this project)
  --config YAML     the experiment YAML with a federation section, in the app's configs/
  --output-dir DIR  where run folders go on this host (default: DIR/runs under --home)
  --rounds N        override federation.rounds
  --resume          continue the federation's interrupted run after its last completed round
  --no-follow       print the run id and return at once (follow later with flwr log)
USAGE
}

HOME_ARG="coordinator"
APP="$(cd "${HERE}/.." && pwd)"
CONFIG=""
OUTPUT=""
ROUNDS=0
RESUME=false
FOLLOW=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --home) HOME_ARG="${2:?--home needs a folder}"; shift 2 ;;
        --app) APP="$(cd "${2:?--app needs a folder}" && pwd)"; shift 2 ;;
        --config) CONFIG="${2:?--config needs a YAML file}"; shift 2 ;;
        --output-dir) OUTPUT="${2:?--output-dir needs a folder}"; shift 2 ;;
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --resume) RESUME=true; shift ;;
        --no-follow) FOLLOW=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n "${CONFIG}" ]] || die "give the run's YAML with --config (see --help)"
require_file "${CONFIG}" "config"
[[ "${ROUNDS}" =~ ^[0-9]+$ ]] || die "--rounds must be a whole number, got '${ROUNDS}'"
coordinator_paths "${HOME_ARG}"
require_file "${CLI_HOME}/config.toml" "SuperLink connection (start_superlink.sh writes it)"
flower_offline_env
flower_on_path flwr
CONFIG_ABS="$(cd "$(dirname "${CONFIG}")" && pwd)/$(basename "${CONFIG}")"
case "${CONFIG_ABS}" in
    "${APP}"/configs/*) CONFIG_IN_APP="${CONFIG_ABS#"${APP}"/}" ;;
    *) die "${CONFIG} is outside ${APP}/configs; put it there so it travels in the app bundle" ;;
esac
OUTPUT="$(absolute "${OUTPUT:-${HOME_DIR}/runs}")"
RUN_CONFIG="config=\"${CONFIG_IN_APP}\" output-dir=\"${OUTPUT}\" rounds=${ROUNDS} resume=${RESUME}"
echo "config ${CONFIG_IN_APP} (in ${APP}); run folders under ${OUTPUT}"

SUBMITTED="$(FLWR_HOME="${CLI_HOME}" "${FLOWER_CMD}" run "${APP}" "${CONNECTION}" \
    --run-config "${RUN_CONFIG}" --format json)" || die "flwr run failed: ${SUBMITTED:-}"
RUN_ID="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["run-id"])' "${SUBMITTED}")" \
    || die "flwr run did not return a run id: ${SUBMITTED}"
echo "run ${RUN_ID} submitted"
if [[ ${FOLLOW} -eq 0 ]]; then
    echo "follow it with: FLWR_HOME=${CLI_HOME} flwr log ${RUN_ID} ${CONNECTION} --stream"
    exit 0
fi
# Follow in the background so a signal to this script also ends the follower (the run itself
# goes on: stop_run.sh stops it); a background job of a script ignores SIGINT otherwise.
FLWR_HOME="${CLI_HOME}" "${FLOWER_CMD}" log "${RUN_ID}" "${CONNECTION}" --stream &
FOLLOWER=$!
trap 'kill "${FOLLOWER}" 2>/dev/null; exit 130' INT
trap 'kill "${FOLLOWER}" 2>/dev/null; exit 143' TERM
trap 'kill "${FOLLOWER}" 2>/dev/null; exit 129' HUP
wait "${FOLLOWER}" || true
trap - INT TERM HUP

status() {
    FLWR_HOME="${CLI_HOME}" "${FLOWER_CMD}" ls "${CONNECTION}" --run-id "${RUN_ID}" --format json \
        | python3 -c 'import json,sys; runs=json.load(sys.stdin).get("runs",[]); print(runs[0]["status"] if runs else "unknown")'
}
STATUS="$(status)"
for _ in $(seq 60); do
    [[ "${STATUS}" == finished* ]] && break
    sleep 1
    STATUS="$(status)"
done
echo "run ${RUN_ID}: ${STATUS}"
[[ "${STATUS}" == "finished:completed" ]] || die "run ${RUN_ID} did not complete (${STATUS}); see ${LOG_DIR}/superlink.log"
