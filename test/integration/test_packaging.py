"""Packaging and the service manager (issue 11, SPEC §6): what `meson install`
puts where, the systemd unit as systemd's own tools read it, and what
tlsfront tells $NOTIFY_SOCKET: READY=1 once every listener is bound,
RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on SIGTERM.

Installs only into a temporary --destdir, never into the system; starts no
systemd (none runs as PID 1 in CI): the notify socket is the test's own.
"""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

import postfix_backend
from tfhelpers import (SANITIZER_MARKERS, SmtpClient, insecure_context, make_config, run_tool,
                       tlsfront_bin)

SOURCE_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                            ".."))
NOTIFY_TIMEOUT = 20.0  # seconds; an ASan build starts slowly


def build_dir():
    """The meson build directory of the binary under test: meson names it
    (TLSFRONT_BUILD_DIR), else the directory of $TLSFRONT_BIN."""
    d = os.environ.get("TLSFRONT_BUILD_DIR") or os.path.dirname(tlsfront_bin())
    return d if os.path.isdir(os.path.join(d, "meson-private")) else None


def meson_or_skip():
    meson = shutil.which("meson")
    d = build_dir()
    if not meson or not d:
        postfix_backend.require_or_skip("meson or the build directory of %s not found"
                                        % tlsfront_bin())
    return meson, d


def has_libsystemd():
    """Whether the binary under test was built with libsystemd (meson option
    systemd): meson says so in TLSFRONT_SYSTEMD, else its ELF header does."""
    flag = os.environ.get("TLSFRONT_SYSTEMD")
    if flag in ("0", "1"):
        return flag == "1"
    out = run_tool(["readelf", "-d", tlsfront_bin()], timeout=30)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return re.search(rb"\(NEEDED\).*\[libsystemd\.so", out.stdout) is not None


class Installed:
    """One `meson install --destdir` of the build under test."""

    def __init__(self, meson, bdir, destdir):
        self.meson, self.bdir, self.destdir = meson, bdir, destdir
        self.install()
        opts = json.loads(subprocess.run([meson, "introspect", "--buildoptions", bdir],
                                         stdout=subprocess.PIPE, check=True,
                                         timeout=60).stdout)
        self.options = {o["name"]: o["value"] for o in opts}
        # source or build file -> where it is installed (without destdir)
        self.files = json.loads(subprocess.run([meson, "introspect", "--installed", bdir],
                                               stdout=subprocess.PIPE, check=True,
                                               timeout=60).stdout)

    def install(self):
        out = run_tool([self.meson, "install", "-C", self.bdir, "--no-rebuild", "--destdir",
                        self.destdir], timeout=300)
        assert out.returncode == 0, "meson install failed:\n%s\n%s" % (
            out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace"))

    def under_prefix(self, option, *names):
        """prefix/<option's directory>/names..., as installed (no destdir)."""
        return os.path.join(self.options["prefix"], self.options[option], *names)

    def in_destdir(self, path):
        return os.path.join(self.destdir, path.lstrip("/"))

    def installed_as(self, suffix):
        found = [dest for src, dest in self.files.items() if src.endswith(suffix)]
        assert len(found) == 1, "%s installed %d times: %s" % (suffix, len(found), self.files)
        return found[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    meson, bdir = meson_or_skip()
    return Installed(meson, bdir, str(tmp_path_factory.mktemp("destdir")))


def test_meson_install_puts_every_file_in_place(installed):
    # The binary, in sbin; it runs.
    sbin = installed.under_prefix("sbindir", "tlsfront")
    assert installed.installed_as(os.sep + "tlsfront") == sbin
    binary = installed.in_destdir(sbin)
    assert os.access(binary, os.X_OK), binary
    assert run_tool([binary, "-V"], timeout=30).stdout.startswith(b"tlsfront ")

    # The example configuration, as in dist/, and valid as it stands.
    conf = installed.in_destdir(installed.under_prefix("sysconfdir", "tlsfront", "tlsfront.conf"))
    with open(conf, "rb") as f, open(os.path.join(SOURCE_ROOT, "dist", "tlsfront.conf"),
                                     "rb") as g:
        assert f.read() == g.read()
    out = run_tool([binary, "-t", "-c", conf], timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")

    # The unit, in systemd's unit directory, and the user it runs as.
    unit = installed.installed_as(os.sep + "tlsfront.service")
    assert unit.endswith("/systemd/system/tlsfront.service"), unit
    assert os.path.isfile(installed.in_destdir(unit))
    sysusers = installed.installed_as(os.sep + "tlsfront.sysusers")
    assert sysusers.endswith("/sysusers.d/tlsfront.conf"), sysusers
    assert os.path.isfile(installed.in_destdir(sysusers))

    # The man pages.
    for section, page in (("8", "tlsfront.8"), ("5", "tlsfront.conf.5")):
        path = installed.in_destdir(installed.under_prefix("mandir", "man" + section, page))
        assert os.path.isfile(path) or os.path.isfile(path + ".gz"), \
            "meson install did not put man/%s at %s" % (page, path)


def test_reinstall_keeps_an_edited_configuration(installed):
    conf = installed.in_destdir(installed.under_prefix("sysconfdir", "tlsfront", "tlsfront.conf"))
    with open(conf, "a") as f:
        f.write("# edited by the operator\n")
    installed.install()
    with open(conf) as f:
        assert f.read().endswith("# edited by the operator\n"), \
            "a second meson install overwrote the operator's tlsfront.conf"


def unit_settings(text):
    """[Service] and [Unit] assignments of a unit file: key -> [values]."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_says_how_tlsfront_runs(installed):
    with open(installed.in_destdir(installed.installed_as(os.sep + "tlsfront.service"))) as f:
        s = unit_settings(f.read())
    sbin = installed.under_prefix("sbindir", "tlsfront")
    conf = installed.under_prefix("sysconfdir", "tlsfront", "tlsfront.conf")
    assert s["Type"] == ["notify" if has_libsystemd() else "simple"]
    assert s["ExecStartPre"] == ["%s -t -c %s" % (sbin, conf)]
    assert s["ExecStart"] == ["%s -c %s" % (sbin, conf)]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                       ("User", "tlsfront"), ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
                       ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
                       ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX")):
        assert s.get(key) == [value], (key, s.get(key))
    # Two descriptors per session: room for the example's max_connections.
    assert int(s["LimitNOFILE"][0]) >= 2 * 10000 + 100


def systemd_analyze_or_skip():
    tool = shutil.which("systemd-analyze")
    if not tool:
        postfix_backend.require_or_skip("systemd-analyze not installed (package systemd)")
    return tool


def test_systemd_analyze_accepts_the_unit(installed, tmp_path):
    tool = systemd_analyze_or_skip()
    unit = installed.in_destdir(installed.installed_as(os.sep + "tlsfront.service"))
    sbin = installed.under_prefix("sbindir", "tlsfront")
    # verify wants ExecStart's binary to exist. With --root it would look
    # for /bin/kill and systemd's own targets in the destdir too, so check
    # a copy whose binary path points into the destdir instead: the rest
    # of the unit is the installed one, byte for byte.
    with open(unit) as f:
        text = f.read()
    assert sbin in text
    copy = tmp_path / "tlsfront.service"
    copy.write_text(text.replace(sbin, installed.in_destdir(sbin)))
    # --man=no: `man` would read the system's manual, not the destdir's.
    out = run_tool([tool, "verify", "--man=no", str(copy)], timeout=120)
    report = (out.stdout + out.stderr).decode(errors="replace")
    # verify exits 0 even for an unknown key or a bad value: read what it
    # says about the unit.
    ours = [l for l in report.splitlines() if "tlsfront" in l]
    assert out.returncode == 0 and not ours, report

    # The hardening as systemd scores it, without a running systemd
    # (--threshold is ten times the shown exposure): "OK" or better.
    out = run_tool([tool, "security", "--offline=true", "--man=no", "--threshold=20",
                    str(copy)], timeout=120)
    report = (out.stdout + out.stderr).decode(errors="replace")
    assert out.returncode == 0, report


def test_sysusers_makes_the_unit_user(installed, tmp_path):
    tool = shutil.which("systemd-sysusers")
    if not tool:
        postfix_backend.require_or_skip("systemd-sysusers not installed (package systemd)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    d = root / "usr" / "lib" / "sysusers.d"
    d.mkdir(parents=True)
    shutil.copy(installed.in_destdir(installed.installed_as(os.sep + "tlsfront.sysusers")),
                d / "tlsfront.conf")
    out = run_tool([tool, "--root", str(root)], timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    users = [l.split(":") for l in (root / "etc" / "passwd").read_text().splitlines()]
    tf = [u for u in users if u[0] == "tlsfront"]
    assert tf and tf[0][6] == "/usr/sbin/nologin", users
    assert int(tf[0][2]) < 1000  # a system user
    assert "tlsfront:" in (root / "etc" / "group").read_text()


# ---- $NOTIFY_SOCKET ---------------------------------------------------------

class NotifySocket:
    """The service manager's end: an AF_UNIX datagram socket that also
    receives each sender's credentials, as systemd's does."""

    def __init__(self):
        # sun_path holds 108 bytes: a short directory of its own.
        self.dir = tempfile.mkdtemp(prefix="tfnotify.")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)

    def receive(self, timeout=NOTIFY_TIMEOUT):
        """(fields, sender pid) of the next datagram."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            raise AssertionError("no notification within %ss" % timeout)
        pid = None
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", cdata[:12])[0]
        fields = {}
        for line in data.decode().split("\n"):
            if "=" in line:
                key, value = line.split("=", 1)
                fields[key] = value
        return fields, pid

    def pending(self):
        """Every datagram already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.receive(timeout=0)[0])
        except (AssertionError, BlockingIOError):
            return out
        finally:
            self.sock.setblocking(True)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    if not has_libsystemd():
        postfix_backend.require_or_skip(
            "%s was built without libsystemd (meson option systemd): it cannot notify"
            % tlsfront_bin())
    s = NotifySocket()
    yield s
    s.close()


def listening_ports(log_text):
    return [(kind, int(port)) for kind, port in re.findall(
        r"event=listening listener=(\w+) address=127\.0\.0\.1:(\d+)", log_text)]


def test_notify_ready_reload_stopping(notify_socket, aiosmtpd_backend, tmp_path):
    # Two listeners (STARTTLS and implicit TLS) on four workers: READY=1
    # must wait for all eight sockets.
    config = make_config(aiosmtpd_backend.port, workers=4)
    config, n = re.subn(r"inbound = \{ tcp = \{ (.*?) \}; \};",
                        r'inbound = { tcp = { \1 }; tls = { enabled = true; listen = [ "127.0.0.1:0" ]; }; };',
                        config)
    assert n == 1, config
    conf = tmp_path / "tlsfront.conf"
    conf.write_text(config)
    log_path = tmp_path / "tlsfront.log"
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.path)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([tlsfront_bin(), "-c", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, env=env)
    try:
        # READY=1 comes first, from tlsfront itself (NotifyAccess=main
        # checks the sender's pid), and every listener takes a
        # connection at that moment: nothing else is waited for.
        fields, pid = notify_socket.receive()
        log_text = log_path.read_text(errors="replace")
        assert fields.get("READY") == "1", (fields, log_text)
        assert pid == proc.pid, (pid, proc.pid)
        ports = listening_ports(log_text)
        assert sorted(k for k, _ in ports) == ["tcp", "tls"], log_text
        for kind, port in ports:
            with SmtpClient(port, timeout=10) as c:
                if kind == "tls":
                    c.sock = insecure_context().wrap_socket(c.sock)
                c.greeting()
        assert "event=started" in log_text
        assert "serving" in fields.get("STATUS", ""), fields

        # SIGHUP: RELOADING=1, then READY=1 once every worker has the new
        # generation (event=reload status=ok is logged by then).
        proc.send_signal(signal.SIGHUP)
        fields, pid = notify_socket.receive()
        assert fields.get("RELOADING") == "1", fields
        assert int(fields["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
        fields, pid = notify_socket.receive()
        assert fields.get("READY") == "1", fields
        assert pid == proc.pid, (pid, proc.pid)  # sent from a worker thread
        assert re.search(r"event=reload status=ok generation=2",
                         log_path.read_text(errors="replace"))

        # A bad file: RELOADING=1, then READY=1 at once, the old
        # configuration still serving.
        conf.write_text(config + "\nthis is not libconfig\n")
        proc.send_signal(signal.SIGHUP)
        fields, _ = notify_socket.receive()
        assert fields.get("RELOADING") == "1", fields
        fields, _ = notify_socket.receive()
        assert fields.get("READY") == "1", fields
        assert "failed" in fields.get("STATUS", ""), fields
        assert "event=reload status=failed" in log_path.read_text(errors="replace")
        with SmtpClient(ports[0][1], timeout=10) as c:
            c.greeting()

        # SIGTERM: STOPPING=1, then a clean exit.
        proc.send_signal(signal.SIGTERM)
        fields, _ = notify_socket.receive()
        assert fields.get("STOPPING") == "1", fields
        assert proc.wait(30) == 0
        assert notify_socket.pending() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log_text = log_path.read_text(errors="replace")
    bad = [l for l in log_text.splitlines() if any(m in l for m in SANITIZER_MARKERS)]
    assert not bad, "sanitizer report in tlsfront's log:\n" + log_text[-20000:]


def test_unreachable_notify_socket_changes_nothing(monkeypatch, tlsfront_factory,
                                                   aiosmtpd_backend):
    """A $NOTIFY_SOCKET nobody listens on: the notifications are lost, the
    mail is not."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/tlsfront-notify")
    tf = tlsfront_factory(aiosmtpd_backend.port)
    tf.wait_event("started")
    with tf.connect() as c:
        c.greeting()
    tf.send_signal(signal.SIGHUP)
    tf.wait_event("reload")
    with tf.connect() as c:
        c.greeting()
    assert tf.stop() == 0
