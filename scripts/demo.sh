#!/bin/sh
# demo.sh — installs what is missing, builds tlsfront, and shows its main
# job: a plaintext demo backend (aiosmtpd) behind tlsfront, a message sent
# with `swaks --tls` (STARTTLS) through tlsfront, and the log lines that
# prove it: the TLS handshake, the delivery, the session summary.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh build

work=$(mktemp -d /tmp/tlsfront-demo.XXXXXX)
free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
backend_port=$(free_port)
front_port=$(free_port)

cat > "$work/tlsfront.conf" <<CONF
# The demo configuration: tlsfront on 127.0.0.1:$front_port in front of a
# plaintext backend on 127.0.0.1:$backend_port. No certificate is given, so
# tlsfront makes a self-signed one in memory (with a warning in the log).
server_name = "mx.demo.test";
workers = 1;
backend = { address = "127.0.0.1:$backend_port"; };
inbound = { tcp = { listen = [ "127.0.0.1:$front_port" ]; }; };
CONF

cleanup() {
	[ -n "${front_pid:-}" ] && kill "$front_pid" 2>/dev/null || true
	[ -n "${backend_pid:-}" ] && kill "$backend_pid" 2>/dev/null || true
}
trap cleanup EXIT

/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$backend_port" -c aiosmtpd.handlers.Debugging \
	>"$work/backend.out" 2>&1 &
backend_pid=$!
./build/tlsfront -c "$work/tlsfront.conf" 2>"$work/tlsfront.log" &
front_pid=$!

i=0
until grep -q "event=started" "$work/tlsfront.log" 2>/dev/null; do
	i=$((i + 1))
	if [ $i -gt 50 ]; then
		cat "$work/tlsfront.log"
		echo "tlsfront did not start" >&2
		exit 1
	fi
	sleep 0.1
done
sleep 0.3 # let the backend come up too

echo "== swaks --tls through tlsfront (127.0.0.1:$front_port)"
swaks --server "127.0.0.1:$front_port" --tls --from demo@sender.test --to you@demo.test \
	--header "Subject: delivered over STARTTLS by tlsfront" --body "Hello from the tlsfront demo."

kill -TERM "$front_pid"
wait "$front_pid" || true
front_pid=""

echo
echo "== what the plaintext backend received"
cat "$work/backend.out"
echo
echo "== tlsfront's log"
cat "$work/tlsfront.log"
if grep -q "event=delivered" "$work/tlsfront.log" && grep -q "tls=TLS1" "$work/tlsfront.log"; then
	echo
	echo "demo OK: the message crossed tlsfront over TLS and reached the plaintext backend"
	echo "(files in $work)"
else
	echo "demo FAILED" >&2
	exit 1
fi
