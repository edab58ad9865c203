#!/usr/bin/env bash
# Coordinator: register a hospital's SuperNode public key with the SuperLink.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--home DIR] [--name SITE] PUBLIC_KEY

Register a hospital's public key (node.pub from scripts/make_site_key.sh, an
ecdsa-sha2-nistp384 OpenSSH public key) so its SuperNode may connect. Runs
"flwr supernode register PUBLIC_KEY fedctan" with the connection written by start_superlink.sh.

  --home DIR    coordinator folder (default ./coordinator)
  --name SITE   a name shown by list_sites.sh
USAGE
}

HOME_ARG="coordinator"
NAME=()
KEY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --home) HOME_ARG="${2:?--home needs a folder}"; shift 2 ;;
        --name) NAME=(--name "${2:?--name needs a site name}"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [[ -z "${KEY}" ]] || die "one public key at a time"; KEY="$1"; shift ;;
    esac
done
[[ -n "${KEY}" ]] || die "give the hospital's public key file (see --help)"
require_file "${KEY}" "public key"
! grep -q "PRIVATE KEY" "${KEY}" || die "${KEY} is a PRIVATE key, which must never leave the" \
    "site: ask the site to make a new pair (make_site_key.sh --force) and send node.pub only"
grep -q "^ecdsa-sha2-nistp" "${KEY}" \
    || die "${KEY} is not an OpenSSH ECDSA public key; the site makes it with make_site_key.sh"
coordinator_paths "${HOME_ARG}"
flower_offline_env
coordinator_cli
FLWR_HOME="${CLI_HOME}" "${FLWR}" supernode register "${NAME[@]}" "${KEY}" "${CONNECTION}"
