#!/bin/sh
# test.sh — installs what is missing, builds tlsfront twice (plain, and with
# AddressSanitizer + UndefinedBehaviorSanitizer), runs every suite (unit,
# layering, integration) in both builds, runs the fuzzers briefly, and ends
# with the line "N passed, N failed" (counting meson tests and fuzz runs).
set -u
cd "$(dirname "$0")/.."
./scripts/install-deps.sh || exit 1

passed=0
failed=0
count() { # meson build dir
	set -- $(/usr/bin/python3 - "$1/meson-logs/testlog.json" <<'PY'
import json, sys
ok = bad = 0
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)["result"]
        if r in ("OK", "EXPECTEDFAIL", "SKIP"):
            ok += 1
        else:
            bad += 1
except OSError:
    bad += 1
print(ok, bad)
PY
)
	passed=$((passed + $1))
	failed=$((failed + $2))
}

run_build() { # dir, meson options...
	dir=$1
	shift
	echo "== build $dir $*"
	if ! ./scripts/build.sh "$dir" "$@"; then
		echo "build $dir failed"
		failed=$((failed + 1))
		return
	fi
	echo "== test $dir"
	meson test -C "$dir" --print-errorlogs --num-processes 2
	count "$dir"
}

run_build build
# ASan needs the leak checker off under ptrace-less CI sandboxes? No: keep it
# on; halt_on_error makes any report a failure.
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	run_build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug

if [ -x test/fuzz/run.sh ]; then
	echo "== fuzz"
	if test/fuzz/run.sh build-fuzz 30; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
	fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
