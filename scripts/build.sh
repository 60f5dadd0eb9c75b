#!/bin/sh
# build.sh — configures and builds tlsfront in build/ (or $1). Extra
# arguments after the directory go to `meson setup`; a directory configured
# earlier with other options is reconfigured with these, so a leftover
# build-asan can never run unsanitized. Never deletes a build directory.
set -eu
cd "$(dirname "$0")/.."
dir=${1:-build}
[ $# -gt 0 ] && shift
if [ ! -f "$dir/build.ninja" ]; then
	meson setup "$dir" --werror "$@" >/dev/null
elif [ $# -gt 0 ]; then
	meson configure "$dir" --werror "$@" >/dev/null
fi
ninja -C "$dir" >/dev/null
echo "built $dir/tlsfront"
