#!/bin/sh
# test.sh — installs what is missing, builds tlsfront twice (plain, and with
# AddressSanitizer + UndefinedBehaviorSanitizer), runs every suite (unit,
# layering, integration) in both builds, runs the fuzzers briefly, and ends
# with the line "N passed, N failed": the cmocka and pytest cases of both
# builds, the layering check, and one for the fuzz run.
set -u
cd "$(dirname "$0")/.."
./scripts/install-deps.sh || exit 1

passed=0
failed=0
count() { # meson build dir: adds its test cases to passed/failed
	set -- $(/usr/bin/python3 - "$1/meson-logs/testlog.json" <<'PY'
import json, re, sys
ok = bad = 0
try:
    for line in open(sys.argv[1]):
        t = json.loads(line)
        out = t.get("stdout") or ""
        both = out + (t.get("stderr") or "")
        good = t["result"] in ("OK", "EXPECTEDFAIL", "SKIP")
        # Count the cases inside a suite: cmocka writes its summary to
        # stderr, pytest its closing line to stdout.
        p = sum(int(n) for n in re.findall(r"\[  PASSED  \] (\d+) test", both))
        f = sum(int(n) for n in re.findall(r"\[  FAILED  \] (\d+) test", both))
        lines = [l for l in out.splitlines() if re.search(r" in [\d.]+s", l)]
        if lines:
            counts = dict((w, int(n)) for n, w in re.findall(r"(\d+) (\w+)", lines[-1]))
            p += counts.get("passed", 0)
            f += counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
        if p == 0 and f == 0:
            p, f = (1, 0) if good else (0, 1)
        elif not good and f == 0:
            f = 1  # the suite failed (a crash, a timeout) beyond its cases
        ok += p
        bad += f
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
# Any sanitizer report fails the test that triggered it.
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
