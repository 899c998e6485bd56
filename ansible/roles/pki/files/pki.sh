#!/bin/sh
# The internal CA and the certificates it signs: one script for the Ansible role `pki` (on the
# controller) and the local stack (stack/pki.py), so that both make the same kind of files.
#   pki.sh ca   DIR CA_NAME DAYS              -> DIR/ca.key, DIR/ca.crt (kept if both exist)
#   pki.sh cert DIR BASE CN SANS DAYS          -> DIR/BASE.key, DIR/BASE.crt (kept if the .crt exists)
# SANS: openssl's subjectAltName list, e.g. "DNS:lb1,IP:10.0.0.5". Keys: EC P-256. Serials are
# random, so that several hosts can be signed at once without a shared serial file.
set -eu
umask 077
cmd=$1; dir=$2
mkdir -p "$dir"
case "$cmd" in
ca)
    name=$3; days=$4
    [ -s "$dir/ca.crt" ] && [ -s "$dir/ca.key" ] && exit 0
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
        -subj "/CN=$name" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    chmod 0644 "$dir/ca.crt"
    ;;
cert)
    base="$dir/$3"; cn=$4; sans=$5; days=$6
    [ -s "$base.crt" ] && [ -s "$base.key" ] && exit 0
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$cn" -keyout "$base.key" -out "$base.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=$sans" "extendedKeyUsage=serverAuth,clientAuth" \
        "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" > "$base.ext"
    openssl x509 -req -in "$base.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$base.ext" -out "$base.crt.new" 2>/dev/null
    mv "$base.crt.new" "$base.crt"
    chmod 0644 "$base.crt"
    rm -f "$base.csr" "$base.ext"
    ;;
*)
    echo "usage: pki.sh ca DIR CA_NAME DAYS | pki.sh cert DIR BASE CN SANS DAYS" >&2
    exit 2
    ;;
esac
