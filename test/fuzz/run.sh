#!/bin/sh
# run.sh — builds the libFuzzer harnesses with clang (ASan + UBSan) into
# BUILD_DIR and runs each for SECONDS. Exit status 0 when no harness found a
# crash. Usage: test/fuzz/run.sh [BUILD_DIR] [SECONDS]
set -eu
cd "$(dirname "$0")/../.."
out=${1:-build-fuzz}
secs=${2:-30}
mkdir -p "$out"
flags="-g -O1 -std=c17 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
status=0
run() { # name, sources...
	name=$1
	shift
	clang $flags "$@" -o "$out/$name" $(pkg-config --libs libconfig)
	corpus="$out/corpus-$name"
	mkdir -p "$corpus"
	seeds="test/fuzz/corpus/${name#fuzz_}"
	[ -d "$seeds" ] || seeds=""
	echo "fuzz: $name for ${secs}s"
	if ! LSAN_OPTIONS="suppressions=$PWD/test/fuzz/lsan.supp:print_suppressions=0" \
		"$out/$name" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix="$out/" \
		-print_final_stats=0 "$corpus" $seeds >"$out/$name.log" 2>&1; then
		tail -40 "$out/$name.log"
		status=1
	fi
}
run fuzz_config test/fuzz/fuzz_config.c policy/config.c
if [ -f test/fuzz/fuzz_smtp_machine.c ]; then
	run fuzz_smtp_machine test/fuzz/fuzz_smtp_machine.c proxy/smtp/*.c policy/smtp_rules.c \
		policy/outbound_policy.c
fi
run fuzz_outbound_nego test/fuzz/fuzz_outbound_nego.c proxy/smtp/*.c policy/smtp_rules.c \
	policy/outbound_policy.c
exit $status
