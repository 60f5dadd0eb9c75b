#!/bin/bash
# test_container.sh — builds the Containerfile with podman and checks the
# image from its own file system: `tlsfront -t` on the shipped example
# passes as the image's user, `tlsfront -V` prints the versions, the image
# runs as a non-root user, exposes 25, 465 and 587, and holds no build tools.
# It also builds the "netinit" stage and runs the init container's command
# from dist/kubernetes/tlsfront-pod.yaml in a private network namespace.
#
#   test/packaging/test_container.sh SOURCE_ROOT [VERSION]
#
# No image registry is needed (none is reachable here): a Debian 12 minbase
# made by mmdebstrap (cached in $TLSFRONT_TEST_CACHE, default
# /var/cache/tlsfront-test, remade after 7 days) is imported under the names
# the Containerfile's FROM lines use, and podman builds with --pull=never and
# --isolation chroot. podman runs with a private storage, run root and tmp
# dir in a temporary directory, so the machine's own podman state is never
# touched. The image is not started with `podman run` (this sandbox cannot
# set rlimits for it): its entrypoint is run by chroot into the mounted image.
# Needs root (mount, chroot), podman, mmdebstrap, python3-yaml, unshare.
# Anything missing is a failure with a message, never a silent pass.
set -eu

src=$(cd "${1:?usage: test_container.sh SOURCE_ROOT [VERSION]}" && pwd)
version=${2:-}
cache=${TLSFRONT_TEST_CACHE:-/var/cache/tlsfront-test}
image=localhost/tlsfront-test:latest
netinit=localhost/tlsfront-netinit-test:latest

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[ "$(id -u)" -eq 0 ] || fail "needs root (podman storage, mount, chroot); run as root"
for tool in podman mmdebstrap chroot unshare timeout python3 findmnt; do
	command -v "$tool" >/dev/null ||
		fail "$tool is not installed (scripts/install-deps.sh installs it)"
done
python3 -c 'import yaml' 2>/dev/null || fail "python3-yaml is not installed"
[ -f "$src/Containerfile" ] || fail "no Containerfile in $src"

work=$(mktemp -d "${TLSFRONT_TEST_TMP:-/var/tmp}/tlsfront-container.XXXXXX")
log=$work/log
mounted=""
cleanup() {
	set +e
	for img in $mounted; do
		timeout 60 $podman image umount -f "$img" >/dev/null 2>&1
	done
	# Never delete while something is still mounted below the work dir.
	if findmnt -rn -o TARGET | grep -q "^$work/"; then
		findmnt -rn -o TARGET | grep "^$work/" | sort -r | while read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
		done
	fi
	if findmnt -rn -o TARGET | grep -q "^$work/"; then
		echo "test_container: $work still has mounts; left in place" >&2
	else
		rm -rf --one-file-system "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/storage" "$work/run" "$work/tmp"

# run TIMEOUT COMMAND...: the command's output goes to the log, shown only
# when it fails.
run() {
	local limit=$1
	shift
	if ! timeout "$limit" "$@" >"$log" 2>&1; then
		tail -n 60 "$log" >&2
		fail "($limit s at most) $*"
	fi
}

# Native overlay where the kernel allows it here, else vfs (slower: every
# layer a full copy, but it works on any file system).
driver=vfs
mkdir -p "$work/ovl/l" "$work/ovl/u" "$work/ovl/w" "$work/ovl/m"
if mount -t overlay overlay -o "lowerdir=$work/ovl/l,upperdir=$work/ovl/u,workdir=$work/ovl/w" \
	"$work/ovl/m" 2>/dev/null; then
	umount "$work/ovl/m" && driver=overlay
fi
rm -rf "$work/ovl"
export TMPDIR=$work/tmp
podman="podman --root $work/storage --runroot $work/run --tmpdir $work/tmp
	--storage-driver $driver --cgroup-manager cgroupfs --events-backend none"
ok "private podman storage in $work (driver $driver)"

# The base: a Debian 12 minbase, the same for debian:bookworm and
# debian:bookworm-slim (a minbase has apt, all the Containerfile needs).
base=$cache/bookworm-minbase.tar
mkdir -p "$cache"
if [ ! -s "$base" ] || [ -n "$(find "$base" -mtime +7 2>/dev/null)" ]; then
	echo "making a Debian 12 minbase with mmdebstrap (about a minute)"
	run 900 mmdebstrap --quiet --variant=minbase bookworm "$cache/new.tar"
	mv "$cache/new.tar" "$base"
fi
run 300 $podman import "$base" localhost/tlsfront-test-base:latest
# Every FROM image that is not an earlier stage gets that name.
stages=" "
for ref in $(awk 'toupper($1) == "FROM" {
		i = 2; while ($i ~ /^--/) i++
		print $i; if (toupper($(i+1)) == "AS") print "AS:" $(i+2) }' "$src/Containerfile"); do
	case $ref in
	AS:*) stages="$stages${ref#AS:} " ;;
	*)
		case $stages in *" $ref "*) continue ;; esac
		stages="$stages$ref "
		run 60 $podman tag localhost/tlsfront-test-base:latest "$ref"
		ok "base imported as $ref"
		;;
	esac
done

echo "building the image (podman build --isolation chroot --pull=never)"
start=$(date +%s)
run 1500 $podman build --isolation chroot --pull=never -f "$src/Containerfile" -t "$image" "$src"
ok "image built in $(($(date +%s) - start)) s"

# What the image declares.
user=$($podman image inspect --format '{{.Config.User}}' "$image")
entrypoint=$($podman image inspect --format '{{range .Config.Entrypoint}}{{.}} {{end}}' "$image")
cmd=$($podman image inspect --format '{{range .Config.Cmd}}{{.}} {{end}}' "$image")
ports=$($podman image inspect --format '{{range $p, $v := .Config.ExposedPorts}}{{$p}} {{end}}' "$image")
for p in 25/tcp 465/tcp 587/tcp; do
	case " $ports " in *" $p "*) ;; *) fail "port $p not exposed (EXPOSE gives: $ports)" ;; esac
done
ok "exposes $ports"
[ "$entrypoint" = "/usr/sbin/tlsfront " ] || fail "entrypoint is '$entrypoint', not /usr/sbin/tlsfront"
[ "$cmd" = "-c /etc/tlsfront/tlsfront.conf " ] || fail "CMD is '$cmd', not -c /etc/tlsfront/tlsfront.conf"
ok "entrypoint: $entrypoint$cmd"

mnt=$($podman image mount "$image")
mounted="$mounted $image"
[ -x "$mnt/usr/sbin/tlsfront" ] || fail "no /usr/sbin/tlsfront in the image"

# The user: set, numeric, not root, and known to the image's /etc/passwd as
# tlsfront (so that the REDIRECT rule's uid is that of tlsfront).
[ -n "$user" ] || fail "the image has no USER: it would run as root"
uid=${user%%:*}
gid=${user#*:}
[ "$gid" != "$user" ] || gid=""
case $uid in '' | *[!0-9]*) fail "USER '$user' is not numeric (Kubernetes runAsNonRoot cannot check a name)" ;; esac
[ "$uid" -ne 0 ] || fail "the image runs as root (USER $user)"
name=$(awk -F: -v u="$uid" '$3 == u { print $1 }' "$mnt/etc/passwd")
[ "$name" = tlsfront ] || fail "uid $uid is '$name' in the image's /etc/passwd, not tlsfront"
ok "runs as $user ($name), not root"

# The configuration: the shipped example, under /etc/tlsfront.
cmp -s "$mnt/etc/tlsfront/tlsfront.conf" "$src/dist/tlsfront.conf" ||
	fail "/etc/tlsfront/tlsfront.conf in the image is not dist/tlsfront.conf"
ok "/etc/tlsfront/tlsfront.conf is dist/tlsfront.conf"

# Only run-time libraries: no compiler, no meson, no headers.
for f in usr/bin/gcc usr/bin/cc usr/bin/meson usr/include/gnutls usr/include/uv.h; do
	[ ! -e "$mnt/$f" ] || fail "/$f is in the run image: the build stage leaked"
done
ok "no build tools in the image"

# The image's entrypoint and CMD, from its own file system, as its user.
spec=$uid${gid:+:$gid}
out=$(timeout 60 chroot --userspec="$spec" "$mnt" $entrypoint $cmd -t 2>&1) ||
	fail "tlsfront -t on the shipped example, as $spec: $out"
case $out in *"configuration OK"*) ;; *) fail "tlsfront -t printed: $out" ;; esac
ok "as $spec: $entrypoint$cmd-t: $out"

out=$(timeout 60 chroot --userspec="$spec" "$mnt" $entrypoint -V 2>&1) || fail "tlsfront -V: $out"
for lib in tlsfront gnutls libuv libconfig; do
	echo "$out" | grep -Eq "^$lib [0-9]+\.[0-9]+" || fail "tlsfront -V has no '$lib VERSION' line: $out"
done
if [ -n "$version" ]; then
	echo "$out" | grep -qx "tlsfront $version" || fail "tlsfront -V does not say version $version: $out"
fi
ok "tlsfront -V: $(echo "$out" | tr '\n' ' ')"
timeout 60 $podman image umount "$image" >/dev/null
mounted=""

# The Kubernetes recipe's init container: its image (the netinit stage) and
# its command, run twice (a rerun must add nothing) in a network namespace of
# its own, must leave one REDIRECT rule for IPv4 and one for IPv6.
manifest=$src/dist/kubernetes/tlsfront-pod.yaml
[ -f "$manifest" ] || fail "no $manifest"
script=$(python3 - "$manifest" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "Pod":
        init = doc["spec"]["initContainers"][0]
        assert init.get("command") == ["/bin/sh", "-c"], init.get("command")
        print(init["args"][0])
        break
else:
    sys.exit("no Pod in the manifest")
PY
) || fail "cannot read the init container's command from $manifest"
echo "building the netinit stage"
run 900 $podman build --isolation chroot --pull=never --target netinit -f "$src/Containerfile" \
	-t "$netinit" "$src"
nmnt=$($podman image mount "$netinit")
mounted="$netinit"
out=$(timeout 60 unshare --net --mount --fork /bin/sh -c '
	set -e
	mount -t proc proc "$1/proc"
	chroot "$1" /bin/sh -c "$2"
	chroot "$1" /bin/sh -c "$2"
	chroot "$1" iptables -t nat -S OUTPUT
	chroot "$1" ip6tables -t nat -S OUTPUT
	umount "$1/proc"' sh "$nmnt" "$script" 2>&1) ||
	fail "the init container's command failed in a private network namespace: $out"
echo "$out" | grep -Eq -- "-A OUTPUT -p tcp .*--dport 25 .*! --uid-owner $uid .*-j REDIRECT --to-ports [0-9]+" ||
	fail "no REDIRECT rule excluding uid $uid after the init container's command: $out"
[ "$(echo "$out" | grep -c -- '-j REDIRECT')" -eq 2 ] ||
	fail "expected one IPv4 and one IPv6 REDIRECT rule: $out"
ok "the init container's command installs: $(echo "$out" | grep -- '-j REDIRECT' | head -n 1)"

echo "container image: all checks passed"
