#!/bin/sh
# Writes a throwaway PKI for the TLS tests of the fake Docker engine and of etcd into DIR (which
# must exist):
#   ca.pem                 the test CA
#   server.pem/.key        the engine, subjectAltName IP:127.0.0.1 only, signed by the CA
#   client.pem/.key        moat's client certificate, signed by the CA
#   other-ca.pem           an unrelated CA (the "wrong CA")
#   rogue-client.pem/.key  a client certificate signed by the unrelated CA
#   member.pem/.key        an etcd member, IP:127.0.0.1, for server and client use: etcd's JSON
#                          gateway dials its own member's gRPC with it, which --client-cert-auth
#                          checks as a client certificate
#   other-host.pem/.key    the same for another host (DNS:etcd.other.invalid), signed by the CA
# P-256 keys (fast to make), one day of validity. Uses only its own openssl config, so the host's
# /etc/ssl/openssl.cnf cannot add or change extensions. $OPENSSL names the binary (default: openssl).
set -eu
dir=${1:?usage: make_test_certs.sh DIR}
openssl=${OPENSSL:-openssl}
cd "$dir"

cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = moat-test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[member]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[other_host]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:etcd.other.invalid
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

key() {
    "$openssl" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# make_ca NAME CN
make_ca() {
    key "$1.key"
    "$openssl" req -config openssl.cnf -new -x509 -days 1 -key "$1.key" -subj "/CN=$2" \
        -extensions ca -out "$1.pem"
}

# make_leaf NAME CN CA EXTENSIONS
make_leaf() {
    key "$1.key"
    "$openssl" req -config openssl.cnf -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    "$openssl" x509 -req -days 1 -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -set_serial "0x$(
        od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -extfile openssl.cnf -extensions "$4" \
        -out "$1.pem" 2>/dev/null
    rm -f "$1.csr"
}

make_ca ca "moat test CA"
make_leaf server "127.0.0.1" ca server
make_leaf client "moat-test-client" ca client
make_ca other-ca "moat unrelated CA"
make_leaf rogue-client "moat-rogue-client" other-ca client
make_leaf member "127.0.0.1" ca member
make_leaf other-host "etcd.other.invalid" ca other_host
