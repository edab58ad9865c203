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
        echo "${FLWR_BIN}/${name}"
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

# Offline and quiet Flower processes: no telemetry, no update check, no `uv sync` at run time.
flower_offline_env() {
    export FLWR_TELEMETRY_ENABLED=0
    export FLWR_DISABLE_UPDATE_CHECK=1
    export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
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
