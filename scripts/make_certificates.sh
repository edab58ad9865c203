#!/usr/bin/env bash
# Coordinator: make a CA and the SuperLink's TLS certificate.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${HERE}/deploy_common.sh"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--out DIR] [--days N] [--ca-days N] [--force | --server-only] [SAN ...]

Make a certificate authority (ca.crt, ca.key) and a SuperLink TLS certificate signed by it
(server.pem, server.key) in DIR (default: ./certificates).

The certificate's subject alternative names always include DNS:localhost, IP:127.0.0.1 and
IP:::1 (the SuperLink's own helpers dial a loopback address); add every name or address
hospitals dial, e.g. DNS:fl.example-hospital.org IP:10.0.0.5.

  --out DIR      output folder (created with mode 700 when missing; the keys are mode 600)
  --days N       validity of the SuperLink certificate in days (default 365)
  --ca-days N    validity of the CA in days (default 3650)
  --force        replace every file in DIR, the CA too: every hospital then needs the new ca.crt
  --server-only  keep the CA in DIR and issue a new SuperLink certificate from it (to renew it
                 or add names); hospitals keep their ca.crt
  -h, --help     this help

Give hospitals ca.crt only. ca.key signs certificates: keep it offline.
USAGE
}

OUT="certificates"
DAYS=365
CA_DAYS=3650
FORCE=0
SERVER_ONLY=0
SANS=("DNS:localhost" "IP:127.0.0.1" "IP:::1")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --days) DAYS="${2:?--days needs a number}"; shift 2 ;;
        --ca-days) CA_DAYS="${2:?--ca-days needs a number}"; shift 2 ;;
        --force) FORCE=1; shift ;;
        --server-only) SERVER_ONLY=1; shift ;;
        -h | --help) usage; exit 0 ;;
        DNS:* | IP:*) SANS+=("$1"); shift ;;
        *) die "unknown argument '$1': SANs look like DNS:name or IP:address (see --help)" ;;
    esac
done
for san in "${SANS[@]}"; do
    value="${san#*:}"
    case "${san}" in
        DNS:*) [[ "${value}" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] \
            || die "'${san}' is not a DNS name (letters, digits, '.' and '-')" ;;
        IP:*) [[ "${value}" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ || "${value}" =~ ^[0-9A-Fa-f:]*:[0-9A-Fa-f:]*$ ]] \
            || die "'${san}' is not an IP address (a name goes as DNS:${value})" ;;
    esac
done
[[ "${DAYS}" =~ ^[1-9][0-9]*$ ]] || die "--days must be a positive integer, got '${DAYS}'"
[[ "${CA_DAYS}" =~ ^[1-9][0-9]*$ ]] || die "--ca-days must be a positive integer, got '${CA_DAYS}'"
((FORCE + SERVER_ONLY < 2)) || die "--force makes a new CA and --server-only keeps it: give one"
command -v openssl >/dev/null || die "openssl is needed"

if [[ ! -d "${OUT}" ]]; then
    mkdir -p "${OUT}"
    chmod 700 "${OUT}"
fi
if [[ "${SERVER_ONLY}" -eq 1 ]]; then
    for f in ca.key ca.crt; do
        require_file "${OUT}/${f}" "CA file (--server-only issues from the existing CA)"
    done
elif [[ "${FORCE}" -eq 0 ]]; then
    for f in ca.key ca.crt server.key server.pem; do
        [[ ! -e "${OUT}/${f}" ]] || die "${OUT}/${f} exists; use --server-only to renew or extend" \
            "the SuperLink certificate from this CA, or --force to replace the CA as well"
    done
fi

SAN_LIST="$(IFS=,; echo "${SANS[*]}")"
umask 077
# Every new file is made beside the old ones and moved into place only once the SuperLink
# certificate is signed, so a failure (a name openssl refuses, a ca.key that does not match
# ca.crt) leaves the folder as it was: the CA is never replaced by one that signed nothing.
CA_KEY="${OUT}/ca.key"
CA_CRT="${OUT}/ca.crt"
NEW_KEY="${OUT}/.server.key.new"
NEW_PEM="${OUT}/.server.pem.new"
trap 'rm -f "${NEW_KEY}" "${NEW_PEM}" "${OUT}/.ca.key.new" "${OUT}/.ca.crt.new" "${OUT}/server.csr" "${OUT}/.ca.srl"' EXIT
if [[ "${SERVER_ONLY}" -eq 0 ]]; then
    CA_KEY="${OUT}/.ca.key.new"
    CA_CRT="${OUT}/.ca.crt.new"
    MADE="$(openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -sha384 \
        -days "${CA_DAYS}" -subj "/CN=fedctan federation CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "${CA_KEY}" -out "${CA_CRT}" 2>&1)" \
        || die "openssl could not make the CA; the files in ${OUT} are unchanged: ${MADE}"
fi
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -sha384 \
    -subj "/CN=fedctan superlink" -keyout "${NEW_KEY}" -out "${OUT}/server.csr" 2>/dev/null \
    || die "openssl could not make the SuperLink key"
SIGNED="$(openssl x509 -req -in "${OUT}/server.csr" -CA "${CA_CRT}" -CAkey "${CA_KEY}" \
    -CAserial "${OUT}/.ca.srl" -CAcreateserial -days "${DAYS}" -sha384 -out "${NEW_PEM}" \
    -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' "${SAN_LIST}") \
    2>&1)" || die "signing the SuperLink certificate with ${CA_KEY} failed; the files in" \
        "${OUT} are unchanged. openssl said: ${SIGNED}"
if [[ "${SERVER_ONLY}" -eq 0 ]]; then
    chmod 644 "${CA_CRT}"
    mv "${CA_KEY}" "${OUT}/ca.key"
    mv "${CA_CRT}" "${OUT}/ca.crt"
fi
chmod 644 "${NEW_PEM}"
mv "${NEW_KEY}" "${OUT}/server.key"
mv "${NEW_PEM}" "${OUT}/server.pem"
if [[ "${SERVER_ONLY}" -eq 1 ]]; then
    echo "CA unchanged: ${OUT}/ca.crt (hospitals keep theirs); restart the SuperLink to use the new certificate"
else
    echo "CA certificate (give to hospitals): ${OUT}/ca.crt"
fi
echo "SuperLink certificate: ${OUT}/server.pem (key ${OUT}/server.key), SANs: ${SAN_LIST}"
echo "Keep ${OUT}/ca.key offline."
