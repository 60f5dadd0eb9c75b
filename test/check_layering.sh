#!/bin/sh
# check_layering.sh — fails when a file breaks the "never" column of
# DESIGN.md: policy/ and certs/ never include libuv; policy/ and proxy/smtp/
# never include GnuTLS or socket headers; certs/ never includes policy/.
# Usage: check_layering.sh SOURCE_ROOT
set -u
root=${1:-.}
fail=0
check() { # dir, forbidden-include regex, what
	hits=$(grep -nE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]($2)" \
		$(find "$root/$1" -maxdepth 1 -name '*.[ch]') 2>/dev/null)
	if [ -n "$hits" ]; then
		echo "layering violation: $1 must never include $3:"
		echo "$hits"
		fail=1
	fi
}
check policy 'uv\.h|uv/|gnutls/|sys/socket\.h|netinet/|arpa/inet\.h|time\.h|sys/time\.h' 'libuv, GnuTLS, sockets or clocks'
check certs 'uv\.h|uv/|policy/' 'libuv or policy/'
check proxy/smtp 'uv\.h|uv/|gnutls/|sys/socket\.h|netinet/|arpa/inet\.h|time\.h|sys/time\.h' 'libuv, GnuTLS, sockets or clocks'
# The check itself must be able to fail: a planted violation is detected.
tmp=$(mktemp -d)
mkdir -p "$tmp/policy"
echo '#include <uv.h>' > "$tmp/policy/planted.c"
if ! grep -qE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]uv\.h' "$tmp/policy/planted.c"; then
	echo "layering check cannot see a planted violation"
	fail=1
fi
rm -rf "$tmp"
[ $fail -eq 0 ] && echo "layering ok"
exit $fail
