#!/bin/sh
# install-deps.sh — installs, from Debian 12's packages, what tlsfront needs
# to build, to run its demo, and to run every test. Safe to run again.
# Packages are installed without their Recommends, so that the list below is
# the whole truth: swaks needs libnet-ssleay-perl for --tls, and clang's
# sanitizer and libFuzzer runtime lives in libclang-rt-14-dev. The systemd
# unit's test runs systemd-analyze (systemd), which wants the unit's
# ExecReload=/bin/kill to exist (procps). The metrics endpoint is served
# by libmicrohttpd; its test scrapes with a real prometheus. The milter
# tests (issue 14) run a test milter written with python3-milter and a real
# OpenDKIM (signing and verifying; opendkim-tools makes the keys,
# python3-dkim checks the signatures).
set -eu
PKGS="build-essential meson ninja-build pkg-config
      libgnutls28-dev libuv1-dev libconfig-dev libcmocka-dev
      gnutls-bin openssl swaks python3 python3-pytest python3-aiosmtpd
      clang clang-format postfix haproxy iptables iproute2 binutils strace
      podman mmdebstrap python3-yaml
      testssl.sh python3-cryptography
      libnet-ssleay-perl libclang-rt-14-dev mandoc libsystemd-dev systemd procps
      libmicrohttpd-dev prometheus
      python3-milter opendkim opendkim-tools python3-dkim"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	echo "installing:$missing"
	# Postfix is a test backend with its own configuration directory:
	# install it without touching the system's mail setup.
	echo "postfix postfix/main_mailer_type select No configuration" |
		$SUDO debconf-set-selections
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
