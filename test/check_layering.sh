#!/bin/sh
# check_layering.sh — fails when a file breaks the "never" column of
# DESIGN.md: policy/ and certs/ never reach libuv; policy/ and proxy/smtp/
# never reach GnuTLS, sockets or clocks; policy/ reaches no other part of the
# project, certs/ never reaches policy/ or proxy/, proxy/smtp/ only policy/.
# It checks what the preprocessor really pulls in (cc -M, so an include of a
# header that itself includes uv.h is caught), not the text of #include lines.
# It never edits the tree it checks.
# Usage: check_layering.sh SOURCE_ROOT
set -u
root=${1:-.}
cc=${CC:-cc}

# deps DIR FILE: every file FILE pulls in, one per line, project files
# relative to the root it is scanned in.
deps() {
	(cd "$1" && "$cc" -M -MG -I. -x c "$2" 2>/dev/null) |
		tr ' \\' '\n\n' | sed -e '/^$/d' -e '/:$/d'
}

# check ROOT DIR FORBIDDEN WHAT: 1 when a .c or .h file of DIR pulls in a
# file matching the extended regex FORBIDDEN.
check() {
	bad=0
	for f in $(cd "$1" && find "$2" -maxdepth 1 -name '*.[ch]' | sort); do
		hits=$(deps "$1" "$f" | grep -E "$3" | sort -u)
		if [ -n "$hits" ]; then
			echo "layering violation: $f reaches $4:"
			echo "$hits" | sed 's/^/    /'
			bad=1
		fi
	done
	return $bad
}

SYS='(^|/)uv\.h$|/uv/|/gnutls/|/sys/socket\.h$|/netinet/|/arpa/inet\.h$|^/usr/include/time\.h$|/sys/time\.h$'
scan() {
	fail=0
	check "$1" policy "$SYS|^(proxy|certs)/" 'libuv, GnuTLS, sockets, clocks, proxy/ or certs/' || fail=1
	check "$1" certs '(^|/)uv\.h$|/uv/|^(proxy|policy)/' 'libuv, policy/ or proxy/' || fail=1
	check "$1" proxy/smtp "$SYS|^certs/|^proxy/[^s]|^proxy/s[^m]" \
		'libuv, GnuTLS, sockets, clocks, certs/ or proxy/ outside proxy/smtp/' || fail=1
	return $fail
}

fail=0
scan "$root" || fail=1

# The check itself must be able to fail: in a copy of the tree, a header that
# pulls in libuv indirectly (proxy/session.h) is planted in each layer.
tmp=$(mktemp -d)
cp -r "$root/policy" "$root/certs" "$root/proxy" "$tmp/"
for d in policy certs proxy/smtp; do
	echo '#include "proxy/session.h"' >"$tmp/$d/planted_violation.c"
done
planted=$(scan "$tmp" | grep -c 'planted_violation')
rm -rf "$tmp"
if [ "$planted" -ne 3 ]; then
	echo "layering check saw $planted of 3 planted violations"
	fail=1
fi
[ $fail -eq 0 ] && echo "layering ok"
exit $fail
