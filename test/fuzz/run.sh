#!/bin/sh
# run.sh — builds the libFuzzer harnesses with clang (ASan + UBSan) into
# BUILD_DIR and runs each for SECONDS. Each run first replays the harness's
# kept corpus (test/fuzz/corpus/NAME/, minimised from the long runs that
# test/fuzz/README.md records) and the corpus BUILD_DIR/corpus-NAME grown by
# earlier runs, then fuzzes; new inputs go to BUILD_DIR/corpus-NAME only.
# Exit status 0 when no harness crashed, leaked or timed out, in the replay
# or after it. Usage: test/fuzz/run.sh [BUILD_DIR] [SECONDS]
set -eu
cd "$(dirname "$0")/../.."
out=${1:-build-fuzz}
secs=${2:-30}
mkdir -p "$out"
flags="-g -O1 -std=c17 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
status=0
run() { # name, pkg-config packages (or ""), sources...
	name=$1
	pkgs=$2
	shift 2
	cflags="" libs=""
	if [ -n "$pkgs" ]; then # "": the harness needs libc only
		# shellcheck disable=SC2086 # one word per package
		cflags=$(pkg-config --cflags $pkgs) && libs=$(pkg-config --libs $pkgs)
	fi
	# shellcheck disable=SC2086 # $flags and pkg-config's words are meant to split
	if ! clang $flags $cflags "$@" -o "$out/$name" $libs; then
		echo "fuzz: $name does not build"
		status=1
		return
	fi
	corpus="$out/corpus-$name"
	mkdir -p "$corpus"
	kept="test/fuzz/corpus/${name#fuzz_}"
	n=0
	if [ -d "$kept" ]; then
		n=$(find "$kept" -type f | wc -l)
	else
		kept=""
	fi
	echo "fuzz: $name: replay of $n kept inputs, then ${secs}s"
	# A crash, a leak or a timeout ends libFuzzer with a non-zero status,
	# in the replay of the corpora as in the fuzzing after it. $kept is
	# empty or one directory.
	# shellcheck disable=SC2086
	if ! LSAN_OPTIONS="suppressions=$PWD/test/fuzz/lsan.supp:print_suppressions=0" \
		"$out/$name" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix="$out/" \
		-print_final_stats=1 "$corpus" $kept >"$out/$name.log" 2>&1; then
		tail -40 "$out/$name.log"
		echo "fuzz: $name FAILED (log: $out/$name.log)"
		status=1
	fi
}
run fuzz_config libconfig test/fuzz/fuzz_config.c policy/config.c policy/config_read.c \
	policy/config_values.c
run fuzz_smtp_machine libconfig test/fuzz/fuzz_smtp_machine.c proxy/smtp/*.c \
	policy/smtp_rules.c policy/outbound_policy.c
run fuzz_outbound_nego libconfig test/fuzz/fuzz_outbound_nego.c proxy/smtp/*.c \
	policy/smtp_rules.c policy/outbound_policy.c
run fuzz_tls_session "gnutls libconfig" test/fuzz/fuzz_tls_session.c proxy/tls_io.c certs/*.c \
	proxy/smtp/*.c policy/*.c
run fuzz_milter_codec "" test/fuzz/fuzz_milter_codec.c proxy/milter/milter_codec.c \
	proxy/smtp/buf.c
exit $status
