#!/bin/sh
# build.sh — configures (once) and builds tlsfront in build/ (or $1).
# Extra arguments after the directory go to `meson setup`.
set -eu
cd "$(dirname "$0")/.."
dir=${1:-build}
[ $# -gt 0 ] && shift
if [ ! -f "$dir/build.ninja" ]; then
	meson setup "$dir" --werror "$@" >/dev/null
fi
ninja -C "$dir" >/dev/null
echo "built $dir/tlsfront"
