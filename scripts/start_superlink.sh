#!/usr/bin/env bash
# Coordinator: start the Flower SuperLink with TLS and SuperNode authentication, in the background.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--home DIR] [--certs DIR] [--host HOST] [--port PORT]
                         [--health-address HOST:PORT] [--insecure]

Start flower-superlink in the background with TLS (--ssl-ca-certfile/--ssl-certfile/
--ssl-keyfile from --certs), SuperNode authentication (--enable-supernode-auth: only registered
hospital keys may connect), runtime dependency installation off, telemetry and update checks
off, and a persistent state database (registered keys and runs survive a restart).

  --home DIR        coordinator folder (default ./coordinator): superlink/ (its FLWR_HOME),
                    cli/ (FLWR_HOME for flwr, connection "fedctan"), state.db, logs/, superlink.pid
  --certs DIR       folder with ca.crt, server.pem, server.key (default ./certificates)
  --host HOST       listen address of the one HTTPS port serving the fleet API (hospitals),
                    the control API (flwr CLI) and the runtime API (default 127.0.0.1: put the
                    fleet-only reverse proxy of docs/deployment.md in front of it). Any other
                    address exposes the control API, which launches code at every site, to
                    whoever reaches the port: then firewall it (docs/deployment.md, section 4)
  --port PORT       that port (default 8000)
  --health-address  gRPC health service address, no TLS (default: off)
  --insecure        no TLS and no SuperNode authentication: local experiments only
  -h, --help        this help

Stop it with scripts/stop_superlink.sh --home DIR.
USAGE
}

HOME_ARG="coordinator"
CERTS="certificates"
HOST="127.0.0.1"
PORT=8000
HEALTH=""
INSECURE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --home) HOME_ARG="${2:?--home needs a folder}"; shift 2 ;;
        --certs) CERTS="${2:?--certs needs a folder}"; shift 2 ;;
        --host) HOST="${2:?--host needs an address}"; shift 2 ;;
        --port) PORT="${2:?--port needs a number}"; shift 2 ;;
        --health-address) HEALTH="${2:?--health-address needs HOST:PORT}"; shift 2 ;;
        --insecure) INSECURE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "${PORT}" =~ ^[0-9]+$ ]] || die "--port must be a number, got '${PORT}'"
CLI_ADDRESS="${HOST}"
[[ "${HOST}" != "0.0.0.0" && "${HOST}" != "::" ]] || CLI_ADDRESS="127.0.0.1"
coordinator_paths "${HOME_ARG}"
flower_offline_env
flower_on_path flower-superlink
SUPERLINK="${FLOWER_CMD}"

if superlink_running "${PID_FILE}"; then
    die "a SuperLink from ${HOME_DIR} is already running (PID $(cat "${PID_FILE}")); stop it first"
fi
if [[ -f "${PID_FILE}" ]]; then
    echo "removing ${PID_FILE}: its PID $(cat "${PID_FILE}") is no SuperLink (left from before a restart)"
    rm -f "${PID_FILE}"
fi
mkdir -p "${SUPERLINK_HOME}" "${CLI_HOME}" "${LOG_DIR}"
chmod 700 "${HOME_DIR}"

if ! is_loopback "${HOST}"; then
    warn "listening on ${HOST}:${PORT}: the control API (flwr run: code that runs at every site)"
    warn "answers there too, without user authentication. Allow only coordinator and hospital"
    warn "addresses to that port, or keep --host 127.0.0.1 behind the proxy of docs/deployment.md."
fi
if [[ "${INSECURE}" -eq 0 && -f "${CERTS}/ca.key" ]]; then
    warn "${CERTS}/ca.key, which signs certificates every hospital trusts, lies beside the"
    warn "SuperLink's own key: whoever reads this host's TLS files can then impersonate the"
    warn "SuperLink. Keep it offline; bring it back only to renew (make_certificates.sh --server-only)."
fi
if (exec 3<>"/dev/tcp/${CLI_ADDRESS}/${PORT}") 2>/dev/null; then
    die "something already listens on ${CLI_ADDRESS}:${PORT} (another SuperLink, from another" \
        "--home?); stop it or choose another --port"
fi

ARGS=(--host "${HOST}" --port "${PORT}" --database "${HOME_DIR}/state.db"
    --log-file "${LOG_DIR}/superlink.log" --disable-runtime-dependency-installation)
[[ -z "${HEALTH}" ]] || ARGS+=(--health-server-address "${HEALTH}")
if [[ "${INSECURE}" -eq 1 ]]; then
    warn "starting WITHOUT TLS and WITHOUT SuperNode authentication: traffic is readable and"
    warn "anyone who reaches port ${PORT} can join or launch runs. Local experiments only."
    ARGS+=(--insecure)
    TLS_LINE="insecure = true"
else
    CERTS="$(absolute "${CERTS}")"
    for f in ca.crt server.pem server.key; do
        require_file "${CERTS}/${f}" "TLS file (make it with scripts/make_certificates.sh)"
    done
    # The flwr CLI dials CLI_ADDRESS; the SuperLink's own helpers dial the bind address, or
    # loopback for a wildcard one (127.0.0.1 for 0.0.0.0, ::1 for ::).
    DIALLED=("${CLI_ADDRESS}")
    [[ "${HOST}" != "::" ]] || DIALLED+=("::1")
    for address in "${DIALLED[@]}"; do
        certificate_covers "${CERTS}/server.pem" "${address}" \
            || die "${CERTS}/server.pem does not cover ${address}, which the flwr CLI and the" \
                "SuperLink's own helpers dial; reissue it with make_certificates.sh" \
                "--server-only, adding IP:${address} or DNS:${address}"
    done
    ARGS+=(--ssl-ca-certfile "${CERTS}/ca.crt" --ssl-certfile "${CERTS}/server.pem"
        --ssl-keyfile "${CERTS}/server.key" --enable-supernode-auth)
    TLS_LINE="root-certificates = \"${CERTS}/ca.crt\""
fi

# The flwr CLI's connection to this SuperLink (used by register_site.sh and list_sites.sh).
cat >"${CLI_HOME}/config.toml" <<TOML
[superlink]
default = "${CONNECTION}"

[superlink.${CONNECTION}]
address = "$(host_port "${CLI_ADDRESS}" "${PORT}")"
${TLS_LINE}
TOML

cd "${SUPERLINK_HOME}"
FLWR_HOME="${SUPERLINK_HOME}" setsid "${SUPERLINK}" "${ARGS[@]}" \
    >>"${LOG_DIR}/superlink.out" 2>&1 </dev/null &
PID=$!
echo "${PID}" >"${PID_FILE}"
if ! wait_for_port "${CLI_ADDRESS}" "${PORT}" "${PID}" 60; then
    kill -TERM -- "-${PID}" 2>/dev/null || true
    rm -f "${PID_FILE}"
    tail -n 20 "${LOG_DIR}/superlink.out" >&2
    die "flower-superlink did not start listening on ${HOST}:${PORT}; see ${LOG_DIR}/superlink.out"
fi
echo "SuperLink PID ${PID} (process group ${PID}), PID file ${PID_FILE}"
echo "listening on ${HOST}:${PORT} ($([[ ${INSECURE} -eq 1 ]] && echo insecure || echo TLS + SuperNode auth))"
echo "run folder (FLWR_HOME): ${SUPERLINK_HOME}; state: ${HOME_DIR}/state.db"
echo "logs: ${LOG_DIR}/superlink.log and ${LOG_DIR}/superlink.out"
echo "flwr CLI: FLWR_HOME=${CLI_HOME} flwr <command> ${CONNECTION}"
