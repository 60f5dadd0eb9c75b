#!/bin/sh
# check_manpages.sh — fails when the manual pages fall behind the code or
# have a defect:
#   (a) mandoc -Tlint -Wstyle prints any message for man/tlsfront.8 or
#       man/tlsfront.conf.5;
#   (b) a configuration key of policy/config.c's key table (its leaves[]),
#       a value of one of the enum keys (the *_names[] tables of config.c
#       and config_read.c), a tls.certificates member or a member of a
#       milters group (read_cert_pair() and read_milter() in config_read.c)
#       has no entry in tlsfront.conf.5;
#   (c) an event=NAME logged by proxy/, certs/ or policy/, a close reason of
#       smtp_close_reason_name(), or a key of the event=session summary line
#       has no entry in tlsfront.8.
# The lists are read from the sources, so a new key, event or reason without
# documentation fails. Cross-references to other packages' manuals are
# satisfied by empty stand-ins in a private MANPATH: whether those packages
# are installed on this machine is not the manual's fault.
# Usage: check_manpages.sh SOURCE_ROOT
set -eu
root=${1:-.}
page8=$root/man/tlsfront.8
page5=$root/man/tlsfront.conf.5
fail=0

missing() {
	echo "check_manpages: $1" >&2
	fail=1
}

# mandoc's makewhatis lives in /usr/sbin, often not in a user's PATH.
PATH=$PATH:/usr/sbin
if ! command -v mandoc >/dev/null 2>&1 || ! command -v makewhatis >/dev/null 2>&1; then
	echo "check_manpages: mandoc or makewhatis not found (scripts/install-deps.sh installs mandoc)" >&2
	exit 1
fi
for p in "$page8" "$page5"; do
	[ -r "$p" ] || {
		echo "check_manpages: cannot read $p" >&2
		exit 1
	}
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# section FILE START END: the lines of FILE after the first line matching
# the regex START, up to (not including) the next line matching END.
section() {
	awk -v s="$2" -v e="$3" 'f && $0 ~ e { exit } f { print } $0 ~ s { f = 1 }' "$1"
}

# has_item TEXT NAME MACRO: TEXT holds a list item ".It MACRO NAME", NAME
# alone or among several names separated by " , ".
has_item() {
	re=$(printf '%s' "$2" | sed 's/[.]/[.]/g')
	printf '%s\n' "$1" | grep -Eq "^\.It $3 (.* )?$re( |\$)"
}

# need N WHAT LIST: LIST must have at least N entries, so that a change in
# the sources' layout cannot make a check pass by finding nothing.
need() {
	n=$(printf '%s\n' "$3" | grep -c . || true)
	if [ "$n" -lt "$1" ]; then
		echo "check_manpages: found only $n $2 in the sources; update this script" >&2
		exit 1
	fi
}

# ---- (a) mandoc -Tlint -Wstyle ----------------------------------------------
mkdir -p "$tmp/man/man5" "$tmp/man/man8"
cp "$page5" "$tmp/man/man5/tlsfront.conf.5"
cp "$page8" "$tmp/man/man8/tlsfront.8"
grep -ho 'Xr [^ ]* [0-9][a-z]*' "$page8" "$page5" | sort -u |
	while read -r _ name sec; do
		case $name in
		tlsfront*) ;; # ours: must resolve to the real pages
		*)
			mkdir -p "$tmp/man/man$sec"
			: >"$tmp/man/man$sec/$name.$sec"
			;;
		esac
	done
# An index, or mandoc reports every page it finds without one.
makewhatis "$tmp/man"
for p in "$page8" "$page5"; do
	if ! out=$(MANPATH="$tmp/man" mandoc -Tlint -Wstyle "$p" 2>&1) || [ -n "$out" ]; then
		printf '%s\n' "$out" >&2
		missing "mandoc -Tlint -Wstyle $p: not clean"
	fi
done

# ---- (b) configuration keys -------------------------------------------------
config=$root/policy/config.c
config_read=$root/policy/config_read.c
keys=$(sed -n 's/^[[:space:]]*L_[A-Z]*("\([a-z0-9_.]*\)".*/\1/p' "$config")
need 20 "configuration keys (L_*(\"key\", ...) rows)" "$keys"
text5=$(cat "$page5")
for k in $keys; do
	has_item "$text5" "$k" Ic || missing "key $k has no '.It Ic $k' in tlsfront.conf.5"
done

values=$(sed -n 's/^static const char \*const [a-z_]*_names\[\] = {\(.*\)};/\1/p' \
	"$config" "$config_read" | tr ',' '\n' |
	sed -n 's/^[[:space:]]*"\([^"]*\)"[[:space:]]*$/\1/p')
need 10 "enum values (*_names[] tables)" "$values"
for v in $values; do
	printf '%s\n' "$text5" | grep -Eq "(^\.|[[:space:]])Cm $v( |\$)" ||
		missing "value \"$v\" is never named with Cm in tlsfront.conf.5"
done

members=$(section "$config_read" '^static int read_cert_pair' '^}' |
	sed -n 's/.*strcmp(name, "\([a-z_]*\)").*/\1/p')
need 2 "tls.certificates members" "$members"
for m in $members; do
	printf '%s\n' "$text5" | grep -Eq "Ic $m( |\$)" ||
		missing "tls.certificates member $m is not named in tlsfront.conf.5"
done

members=$(section "$config_read" '^static int read_milter[(]' '^}' |
	sed -n 's/.*strcmp(name, "\([a-z_]*\)").*/\1/p')
need 5 "milter members (read_milter)" "$members"
for m in $members; do
	has_item "$text5" "$m" Ic ||
		missing "milters member $m has no '.It Ic $m' in tlsfront.conf.5"
done

# ---- (c) log events, close reasons, summary keys ----------------------------
sources=$(find "$root/proxy" "$root/certs" "$root/policy" -name '*.[ch]' | sort)
# shellcheck disable=SC2086 # one word per file name
events=$( (grep -ho 'event=[a-z_0-9]*' $sources | sed 's/^event=//'
	grep -ho 'event = "[a-z_0-9]*"' $sources | sed 's/^event = "\(.*\)"$/\1/') |
	grep . | sort -u)
need 20 "log events" "$events"
list=$(section "$page8" '^\.Ss Events' '^\.S[sh] ')
for e in $events; do
	has_item "$list" "$e" Cm || missing "event=$e has no '.It Cm $e' under 'Events' in tlsfront.8"
done

reasons=$(section "$root/proxy/smtp/smtp_machine.c" '^const char \*smtp_close_reason_name' '^}' |
	grep -o '"[a-z_]*"' | tr -d '"' | grep -vx none || true)
need 8 "close reasons (smtp_close_reason_name)" "$reasons"
list=$(section "$page8" '^\.It Ic reason$' '^\.El')
for r in $reasons; do
	has_item "$list" "$r" Cm || missing "reason=$r has no '.It Cm $r' under 'reason' in tlsfront.8"
done

summary=$(for f in "$root/proxy/session.c" "$root/proxy/outbound.c"; do
	section "$f" '^static void log_summary' '^}' | sed -n '/"event=session/,/reason=/p'
done | grep -o '[a-z_]*=' | tr -d '=' | grep -vx event | sort -u)
need 10 "summary line keys (log_summary)" "$summary"
list=$(section "$page8" '^\.Ss The session summary line' '^\.S[sh] ')
for k in $summary; do
	has_item "$list" "$k" Ic || missing "summary key $k= has no '.It Ic $k' in tlsfront.8"
done

[ "$fail" -eq 0 ] || exit 1
echo "check_manpages: man pages clean; $(printf '%s\n' "$keys" | wc -l) keys," \
	"$(printf '%s\n' "$events" | wc -l) events, $(printf '%s\n' "$reasons" | wc -l) reasons," \
	"$(printf '%s\n' "$summary" | wc -l) summary keys documented"
