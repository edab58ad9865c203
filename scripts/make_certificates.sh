#!/usr/bin/env bash
# Coordinator: make a CA and the SuperLink's TLS certificate.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--out DIR] [--days N] [--force] [SAN ...]

Make a certificate authority (ca.crt, ca.key) and a SuperLink TLS certificate signed by it
(server.pem, server.key) in DIR (default: ./certificates).

The certificate's subject alternative names always include DNS:localhost and IP:127.0.0.1;
add every name or address hospitals dial, e.g. DNS:fl.example-hospital.org IP:10.0.0.5.

  --out DIR     output folder (created, mode 700)
  --days N      validity in days (default 365)
  --force       overwrite existing files in DIR
  -h, --help    this help

Give hospitals ca.crt only. ca.key signs certificates: keep it offline.
USAGE
}

OUT="certificates"
DAYS=365
FORCE=0
SANS=("DNS:localhost" "IP:127.0.0.1")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --days) DAYS="${2:?--days needs a number}"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        DNS:* | IP:*) SANS+=("$1"); shift ;;
        *) die "unknown argument '$1': SANs look like DNS:name or IP:address (see --help)" ;;
    esac
done
[[ "${DAYS}" =~ ^[1-9][0-9]*$ ]] || die "--days must be a positive integer, got '${DAYS}'"
command -v openssl >/dev/null || die "openssl is needed"

mkdir -p "${OUT}"
chmod 700 "${OUT}"
if [[ "${FORCE}" -eq 0 ]]; then
    for f in ca.key ca.crt server.key server.pem; do
        [[ ! -e "${OUT}/${f}" ]] || die "${OUT}/${f} exists; use --force to replace the certificates"
    done
fi

SAN_LIST="$(IFS=,; echo "${SANS[*]}")"
umask 077
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -sha384 \
    -days "${DAYS}" -subj "/CN=fedctan federation CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "${OUT}/ca.key" -out "${OUT}/ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -sha384 \
    -subj "/CN=fedctan superlink" -keyout "${OUT}/server.key" -out "${OUT}/server.csr" 2>/dev/null
openssl x509 -req -in "${OUT}/server.csr" -CA "${OUT}/ca.crt" -CAkey "${OUT}/ca.key" \
    -CAcreateserial -days "${DAYS}" -sha384 -out "${OUT}/server.pem" \
    -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' "${SAN_LIST}") \
    2>/dev/null
rm -f "${OUT}/server.csr" "${OUT}/ca.srl"
chmod 600 "${OUT}/ca.key" "${OUT}/server.key"
chmod 644 "${OUT}/ca.crt" "${OUT}/server.pem"
echo "CA certificate (give to hospitals): ${OUT}/ca.crt"
echo "SuperLink certificate: ${OUT}/server.pem (key ${OUT}/server.key), SANs: ${SAN_LIST}"
echo "Keep ${OUT}/ca.key offline."
