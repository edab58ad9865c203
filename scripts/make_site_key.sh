#!/usr/bin/env bash
# Hospital: make the SuperNode's authentication key pair. Only the public key leaves the site.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--out DIR] [--name SITE] [--force]

Make an ECDSA P-384 key pair with "ssh-keygen -t ecdsa -b 384" for SuperNode authentication:
DIR/node (private, mode 600, never leaves the site) and DIR/node.pub (send it to the
coordinator, who registers it with scripts/register_site.sh).

  --out DIR     output folder (default ./site-key, created with mode 700)
  --name SITE   comment written into the public key (default: the host name)
  --force       replace an existing key pair (the coordinator must register the new key)
USAGE
}

OUT="site-key"
NAME="$(hostname)"
FORCE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --name) NAME="${2:?--name needs a site name}"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
command -v ssh-keygen >/dev/null || die "ssh-keygen is needed (package openssh-client)"
mkdir -p "${OUT}"
chmod 700 "${OUT}"
if [[ -e "${OUT}/node" || -e "${OUT}/node.pub" ]]; then
    [[ "${FORCE}" -eq 1 ]] || die "${OUT}/node exists; use --force to replace the key pair"
    rm -f "${OUT}/node" "${OUT}/node.pub"
fi
umask 077
ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedctan ${NAME}" -f "${OUT}/node"
chmod 600 "${OUT}/node"
chmod 644 "${OUT}/node.pub"
echo "private key: ${OUT}/node (mode 600; keep it on this machine)"
echo "public key:  ${OUT}/node.pub (send this file to the coordinator)"
