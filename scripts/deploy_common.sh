# Shared helpers for the deployment scripts (sourced, not run).
# shellcheck shell=bash

die() {
    echo "error: $*" >&2
    exit 1
}

warn() {
    echo "warning: $*" >&2
}

# The Flower CLIs: from $FLWR_BIN, else beside the Python that runs fedctan, else PATH.
flower_bin() {
    local name="$1"
    if [[ -n "${FLWR_BIN:-}" ]]; then
        local path
        path="$(absolute "${FLWR_BIN}")/${name}"
        [[ -x "${path}" ]] || die "${path} is not an executable; FLWR_BIN=${FLWR_BIN} must be" \
            "the folder of the Flower commands"
        echo "${path}"
    elif [[ -x "${VIRTUAL_ENV:-/nonexistent}/bin/${name}" ]]; then
        echo "${VIRTUAL_ENV}/bin/${name}"
    elif command -v "${name}" >/dev/null 2>&1; then
        command -v "${name}"
    else
        die "${name} not found: activate the environment that has fedctan, or set FLWR_BIN"
    fi
}

# Flower processes start helpers (flower-superexec) by name: put the CLIs' folder first on PATH
# and set FLOWER_CMD to the command's path (not a $(...) call: PATH must change in this shell).
flower_on_path() {
    FLOWER_CMD="$(flower_bin "$1")"
    PATH="$(dirname "${FLOWER_CMD}"):${PATH}"
    export PATH
}

# Wait until HOST:PORT accepts TCP connections while process PID lives; false on death/timeout.
wait_for_port() {
    local host="$1" port="$2" pid="$3" seconds="$4" i
    for ((i = 0; i < seconds * 5; i++)); do
        kill -0 "${pid}" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# PIDs of the helpers Flower started detached from process PARENT (flower-superexec
# --parent-pid PARENT): each leads a session of its own, with the ServerApp or ClientApp
# processes it runs, so signalling PARENT's process group does not reach them.
flower_helpers_of() {
    local parent="$1" entry cmdline
    for entry in /proc/[0-9]*; do
        cmdline="$(tr '\0' ' ' <"${entry}/cmdline" 2>/dev/null)" || continue
        [[ "${cmdline}" == *" --parent-pid ${parent} "* ]] && echo "${entry#/proc/}"
    done
    return 0
}

# True while process LEADER or a member of its process group is running: a zombie (waiting
# for its parent to reap it) holds nothing and does not count.
group_running() {
    local leader="$1" entry stat state pgrp
    for entry in /proc/[0-9]*; do
        read -r stat <"${entry}/stat" 2>/dev/null || continue
        read -r state _ pgrp _ <<<"${stat##*) }"
        [[ "${state}" != "Z" && ("${pgrp}" == "${leader}" || "${entry}" == "/proc/${leader}") ]] \
            && return 0
    done
    return 1
}

# Offline and quiet Flower processes: no telemetry, no update check, no `uv sync` at run time.
flower_offline_env() {
    export FLWR_TELEMETRY_ENABLED=0
    export FLWR_DISABLE_UPDATE_CHECK=1
    export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
}

# True when the certificate PEM lists HOST (a name or an IP address) among its names.
certificate_covers() {
    local pem="$1" host="$2" option=-checkhost
    [[ "${host}" =~ ^[0-9.]+$ || "${host}" == *:* ]] && option=-checkip
    openssl x509 -in "${pem}" -noout "${option}" "${host}" 2>/dev/null | grep -q " does match "
}

# True when HOST is a loopback address (or localhost).
is_loopback() {
    [[ "$1" == localhost || "$1" == ::1 || "$1" == 127.* ]]
}

require_file() {
    [[ -f "$1" ]] || die "$2 not found: $1"
}

# Absolute path without requiring it to exist.
absolute() {
    case "$1" in
        /*) echo "$1" ;;
        *) echo "$(pwd)/$1" ;;
    esac
}

# The coordinator's layout under one folder (--home): the SuperLink's FLWR_HOME, the CLI's
# FLWR_HOME (holds config.toml with the "fedctan" connection), state database, logs, PID file.
coordinator_paths() {
    HOME_DIR="$(absolute "$1")"
    SUPERLINK_HOME="${HOME_DIR}/superlink"
    CLI_HOME="${HOME_DIR}/cli"
    LOG_DIR="${HOME_DIR}/logs"
    PID_FILE="${HOME_DIR}/superlink.pid"
    CONNECTION="fedctan"
}

# Before a SuperNode starts (it retries quietly for ever), check what retrying cannot fix: the
# certificate served at ADDRESS must chain to the CA file and cover the host part of ADDRESS.
# An address nobody answers at only warns: the SuperLink may simply not be up yet.
# HOST:PORT, an IPv6 host in brackets ([::1]:8000), as URLs and openssl take it.
host_port() {
    if [[ "$1" == *:* ]]; then echo "[$1]:$2"; else echo "$1:$2"; fi
}

check_superlink_certificate() {
    local address="$1" ca="$2" host port check output names
    host="${address%:*}"
    port="${address##*:}"
    host="${host#[}"
    host="${host%]}"
    [[ -n "${host}" && "${port}" =~ ^[0-9]+$ ]] \
        || die "--superlink '${address}' must be HOST:PORT (for example fl.example.org:8000)"
    if ! timeout 5 bash -c "exec 3<>/dev/tcp/${host}/${port}" 2>/dev/null; then
        warn "nothing answers at ${address} now (SuperLink not started yet, wrong address or a"
        warn "firewall in between); the SuperNode keeps retrying (--max-wait-time to give up)."
        return 0
    fi
    if [[ "${host}" =~ ^[0-9.]+$ || "${host}" == *:* ]]; then
        check=(-verify_ip "${host}")
    else
        check=(-verify_hostname "${host}" -servername "${host}")
    fi
    output="$(timeout 20 openssl s_client -connect "$(host_port "${host}" "${port}")" -CAfile "${ca}" \
        "${check[@]}" -verify_return_error -alpn h2 </dev/null 2>&1)" && return 0
    names="$(timeout 20 openssl s_client -connect "$(host_port "${host}" "${port}")" </dev/null 2>/dev/null \
        | openssl x509 -noout -ext subjectAltName 2>/dev/null | tail -n +2 | xargs)"
    case "${output}" in
        *"hostname mismatch"* | *"IP address mismatch"*)
            die "the SuperLink certificate at ${address} does not cover '${host}' (it covers:" \
                "${names:-no subject alternative names}); dial one of those names, or ask the" \
                "coordinator to reissue it with make_certificates.sh --server-only, adding DNS:${host} or" \
                "IP:${host}" ;;
        *"unable to get local issuer"* | *"self-signed"* | *"self signed"* | *"certificate signature failure"*)
            die "the certificate at ${address} is not signed by the CA in ${ca}; ask the" \
                "coordinator for the federation's ca.crt (or check that ${address} is the SuperLink)" ;;
        *"certificate has expired"*)
            die "the SuperLink certificate at ${address} has expired; ask the coordinator to renew it" \
                "(make_certificates.sh --server-only keeps the CA you have)" ;;
        *)
            die "TLS handshake with ${address} failed (is it the SuperLink's TLS port?):" \
                "$(grep -m1 -i 'error' <<<"${output}" || echo "${output}" | tail -n 1)" ;;
    esac
}

# True if PID file $1 names a running flower-superlink (not a stale file from before a reboot,
# whose PID another process may hold now).
superlink_running() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ "${pid}" =~ ^[0-9]+$ ]] && kill -0 "${pid}" 2>/dev/null \
        && tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q "flower-superlink"
}

# The coordinator's flwr command in $FLWR (not a $(...) at each call: a failure there would
# not stop the script), after checking that --home holds the SuperLink connection.
coordinator_cli() {
    FLWR="$(flower_bin flwr)"
    [[ -f "${CLI_HOME}/config.toml" ]] || die "no SuperLink connection in ${CLI_HOME}: give the" \
        "--home that start_superlink.sh was given"
}
