#!/usr/bin/env bash
# Hospital: start this site's Flower SuperNode (TLS, key authentication, site settings).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") --superlink HOST:PORT --ca CA.crt --key PRIVATE_KEY --site NAME
                        --data-format FORMAT --data-root DIR --tasks T1[,T2...]
                        [--device auto|cpu|cuda|cuda:N] [--state-dir DIR]
                        [--cache-dir DIR] [--skip-bad]
                        [--target-epsilon EPS] [--delta DELTA]
                        [--runtime-port PORT] [--health-address HOST:PORT]
                        [--home DIR] [--max-wait-time SECONDS] [--trusted-entities YAML]

Run flower-supernode in the foreground (use systemd or similar to keep it running). It dials
the SuperLink over TLS, verifying its certificate with the federation CA, and authenticates
with the site's private key (registered by the coordinator). The site settings below become
the SuperNode's node config; they never come from the coordinator.

  --superlink      SuperLink address as the coordinator gave it (must match its certificate;
                   checked before the SuperNode starts: a certificate that does not cover the
                   address or is not signed by --ca stops here, an address nobody answers at
                   only warns, since the SuperNode retries until the SuperLink is up)
  --ca             the federation's CA certificate (ca.crt)
  --key            the site's private key from make_site_key.sh (mode 600 or stricter)
  --site           site name (letters, digits, . _ -)
  --data-format    ham10000 | openkbp | stoic | manifest
  --data-root      folder of the site's data, or a manifest CSV (made absolute)
  --tasks          comma-separated tasks whose labels the site holds
  --device         training device (default auto)
  --state-dir      where site state lives (heads, optimiser, payload log; default
                   DIR/state under --home)
  --cache-dir      where decoded cases are cached (default: .ctan-cache in the data folder
                   when it can be written, else ~/.cache/ctan)
  --skip-bad       leave out cases that cannot be read (logged) instead of stopping
  --target-epsilon the site's differential-privacy budget (default: no DP)
  --delta          DP delta (default 1e-5, used with --target-epsilon)
  --runtime-port   this SuperNode's local runtime API port (default 9094; one per SuperNode)
  --health-address gRPC health service, no TLS (default 127.0.0.1:9095; "off" disables; one
                   per SuperNode, like the runtime port)
  --home DIR       this SuperNode's FLWR_HOME (default ./site-home)
  --max-wait-time  give up after this many seconds without reaching the SuperLink
  --trusted-entities  only run app bundles signed by these keys (see docs/deployment.md)

Node config keys: site, data-format, data-root, tasks, device, state-dir, and optionally
cache-dir, skip-bad, target-epsilon, delta.
USAGE
}

SUPERLINK=""; CA=""; KEY=""; SITE=""; FORMAT=""; DATA_ROOT=""; TASKS=""
DEVICE="auto"; STATE_DIR=""; CACHE_DIR=""; SKIP_BAD=""; EPSILON=""; DELTA=""; RUNTIME_PORT=9094
HEALTH="127.0.0.1:9095"; HOME_ARG="site-home"; MAX_WAIT=""; TRUSTED=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --superlink) SUPERLINK="${2:?--superlink needs HOST:PORT}"; shift 2 ;;
        --ca) CA="${2:?--ca needs a file}"; shift 2 ;;
        --key) KEY="${2:?--key needs a file}"; shift 2 ;;
        --site) SITE="${2:?--site needs a name}"; shift 2 ;;
        --data-format) FORMAT="${2:?--data-format needs a format}"; shift 2 ;;
        --data-root) DATA_ROOT="${2:?--data-root needs a folder}"; shift 2 ;;
        --tasks) TASKS="${2:?--tasks needs task names}"; shift 2 ;;
        --device) DEVICE="${2:?--device needs a value}"; shift 2 ;;
        --state-dir) STATE_DIR="${2:?--state-dir needs a folder}"; shift 2 ;;
        --cache-dir) CACHE_DIR="${2:?--cache-dir needs a folder}"; shift 2 ;;
        --skip-bad) SKIP_BAD="true"; shift ;;
        --target-epsilon) EPSILON="${2:?--target-epsilon needs a number}"; shift 2 ;;
        --delta) DELTA="${2:?--delta needs a number}"; shift 2 ;;
        --runtime-port) RUNTIME_PORT="${2:?--runtime-port needs a number}"; shift 2 ;;
        --health-address) HEALTH="${2:?--health-address needs HOST:PORT or off}"; shift 2 ;;
        --home) HOME_ARG="${2:?--home needs a folder}"; shift 2 ;;
        --max-wait-time) MAX_WAIT="${2:?--max-wait-time needs seconds}"; shift 2 ;;
        --trusted-entities) TRUSTED="${2:?--trusted-entities needs a YAML file}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

for pair in "superlink:${SUPERLINK}" "ca:${CA}" "key:${KEY}" "site:${SITE}" \
    "data-format:${FORMAT}" "data-root:${DATA_ROOT}" "tasks:${TASKS}"; do
    [[ -n "${pair#*:}" ]] || die "--${pair%%:*} is required (see --help)"
done
[[ "${SITE}" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] \
    || die "--site '${SITE}' must be letters, digits, '.', '_' or '-'"
case "${FORMAT}" in
    ham10000 | openkbp | stoic | manifest) ;;
    *) die "--data-format '${FORMAT}' unknown; allowed: ham10000, openkbp, stoic, manifest" ;;
esac
[[ "${TASKS}" =~ ^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$ ]] \
    || die "--tasks '${TASKS}' must be comma-separated task names, e.g. lesion,diagnosis"
[[ "${RUNTIME_PORT}" =~ ^[0-9]+$ ]] || die "--runtime-port must be a number"
NUMBER='^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$'
[[ -z "${EPSILON}" || "${EPSILON}" =~ ${NUMBER} ]] \
    || die "--target-epsilon must be a number like 8 or 2.5, got '${EPSILON}'"
[[ -z "${DELTA}" || "${DELTA}" =~ ${NUMBER} ]] \
    || die "--delta must be a number like 1e-5 or 0.00001, got '${DELTA}'"
[[ -z "${DELTA}" || -n "${EPSILON}" ]] || die "--delta needs --target-epsilon, the budget it refines"
for pair in "data-root:${DATA_ROOT}" "state-dir:${STATE_DIR}" "cache-dir:${CACHE_DIR}"; do
    [[ "${pair#*:}" != *[\"\\]* ]] || die "--${pair%%:*} must not hold '\"' or '\\' (node config quoting)"
done
[[ -d "${DATA_ROOT}" || ( "${FORMAT}" == manifest && -f "${DATA_ROOT}" ) ]] \
    || die "--data-root ${DATA_ROOT} is not a folder (nor, for a manifest, a CSV file)"

# The CA certificate must be a certificate, the key an ECDSA private key only we can read.
for pair in "CA certificate:${CA}" "private key:${KEY}"; do
    file="${pair#*:}"
    require_file "${file}" "${pair%%:*}"
    [[ -r "${file}" ]] || die "${file} cannot be read by $(id -un) (owner $(stat -c %U "${file}")):" \
        "run the SuperNode as that user, or give $(id -un) its own copy (mode 600)"
done
openssl x509 -in "${CA}" -noout 2>/dev/null || die "--ca ${CA} is not a PEM certificate"
MODE="$(stat -c '%a' "${KEY}")"
(( (8#${MODE} & 8#077) == 0 )) \
    || die "private key ${KEY} has mode ${MODE}, readable by others; run: chmod 600 ${KEY}"
grep -q -- "-----BEGIN OPENSSH PRIVATE KEY-----" "${KEY}" \
    || die "${KEY} is not an OpenSSH private key, the only format flower-supernode reads; make" \
        "one with scripts/make_site_key.sh, or convert a PEM key with: ssh-keygen -p -N '' -f ${KEY}"
PUBLIC="$(ssh-keygen -y -P "" -f "${KEY}" 2>/dev/null)" \
    || die "${KEY} cannot be read as a private key (damaged or passphrase-protected)"
[[ "${PUBLIC}" == ecdsa-sha2-nistp* ]] \
    || die "${KEY} is a ${PUBLIC%% *} key; SuperNode authentication needs ECDSA (make_site_key.sh)"

HOME_DIR="$(absolute "${HOME_ARG}")"
STATE_DIR="$(absolute "${STATE_DIR:-${HOME_DIR}/state}")"
if [[ -d "${DATA_ROOT}" ]]; then
    DATA_ROOT="$(cd "${DATA_ROOT}" && pwd)"
else
    DATA_ROOT="$(cd "$(dirname "${DATA_ROOT}")" && pwd)/$(basename "${DATA_ROOT}")"
fi
mkdir -p "${HOME_DIR}" "${STATE_DIR}"
chmod 700 "${HOME_DIR}" "${STATE_DIR}"

NODE_CONFIG="site=\"${SITE}\" data-format=\"${FORMAT}\" data-root=\"${DATA_ROOT}\""
NODE_CONFIG+=" tasks=\"${TASKS}\" device=\"${DEVICE}\" state-dir=\"${STATE_DIR}\""
if [[ -n "${CACHE_DIR}" ]]; then
    NODE_CONFIG+=" cache-dir=\"$(absolute "${CACHE_DIR}")\""
fi
[[ -z "${SKIP_BAD}" ]] || NODE_CONFIG+=" skip-bad=true"
if [[ -n "${EPSILON}" ]]; then
    NODE_CONFIG+=" target-epsilon=${EPSILON} delta=${DELTA:-1.0e-5}"
fi

ARGS=(--superlink "${SUPERLINK}" --root-certificates "$(absolute "${CA}")"
    --auth-supernode-private-key "$(absolute "${KEY}")" --node-config "${NODE_CONFIG}"
    --port "${RUNTIME_PORT}")
[[ "${HEALTH}" == "off" ]] || ARGS+=(--health-server-address "${HEALTH}")
[[ -z "${MAX_WAIT}" ]] || ARGS+=(--max-wait-time "${MAX_WAIT}")
if [[ -n "${TRUSTED}" ]]; then
    require_file "${TRUSTED}" "trusted entities file"
    ARGS+=(--trusted-entities "$(absolute "${TRUSTED}")")
fi

# A second SuperNode on this machine needs its own ports; Flower would stop on a busy one later.
if (exec 3<>"/dev/tcp/127.0.0.1/${RUNTIME_PORT}") 2>/dev/null; then
    die "something already listens on port ${RUNTIME_PORT} (another SuperNode?); give this one" \
        "its own --runtime-port"
fi
if [[ "${HEALTH}" != "off" ]] && (exec 3<>"/dev/tcp/${HEALTH%:*}/${HEALTH##*:}") 2>/dev/null; then
    die "something already listens on ${HEALTH} (another SuperNode's health service?); give this" \
        "one its own --health-address, or --health-address off"
fi

check_superlink_certificate "${SUPERLINK}" "${CA}"
flower_offline_env
export FLWR_HOME="${HOME_DIR}"
echo "site ${SITE}: SuperNode -> ${SUPERLINK} (TLS, key auth), runtime port ${RUNTIME_PORT}," \
    "health ${HEALTH}, FLWR_HOME ${HOME_DIR}" >&2
flower_on_path flower-supernode
SUPERNODE="${FLOWER_CMD}"
exec "${SUPERNODE}" "${ARGS[@]}"
