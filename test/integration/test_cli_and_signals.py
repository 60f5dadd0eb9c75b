"""Configuration checking (SPEC §2), operation and signals (§6), the session
summary line (§6, §7.5)."""
import os
import re
import signal
import smtplib
import shutil
import socket
import subprocess
import threading
import time

import pytest

from tfhelpers import (insecure_context, make_config, run_tool, send_message,
                       tlsfront_bin, wait_until)

SUMMARY_KEYS = ["event", "id", "listener", "client", "tls", "cipher", "sni", "user",
                "messages", "bytes_in", "bytes_out", "duration", "reason"]
MESSAGE = b"Subject: op\r\n\r\nbody\r\n"


def check_config(tmp_path, text, name="check.conf"):
    path = tmp_path / name
    path.write_text(text)
    out = run_tool([tlsfront_bin(), "-t", "-c", str(path)], timeout=30)
    return str(path), out.returncode, out.stdout.decode(), out.stderr.decode()


def line_of(text, needle):
    """1-based number of the line of text holding needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError("%r not in config" % needle)


def deliver_with_smtplib(port, n=0, tls=True):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="w%d.test" % n, timeout=30) as s:
        s.ehlo()
        if tls:
            s.starttls(context=insecure_context())
            s.ehlo()
        assert s.sendmail("s%d@x" % n, ["r%d@y" % n], MESSAGE) == {}
        s.quit()


# ---- §6 -V and §2 -t ---------------------------------------------------------

def test_s6_version_prints_four_versions():
    out = run_tool([tlsfront_bin(), "-V"], timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 4, lines
    for line, name in zip(lines, ["tlsfront", "gnutls", "libuv", "libconfig"]):
        assert re.fullmatch(r"%s \d+\.\d+\.\d+\S*" % name, line), lines
    meson = os.path.join(os.path.dirname(__file__), "..", "..", "meson.build")
    if os.path.exists(meson):
        m = re.search(r"version\s*:\s*'([^']+)'", open(meson).read())
        assert m and lines[0] == "tlsfront " + m.group(1), lines
    cli = run_tool(["gnutls-cli", "--version"], timeout=30).stdout.decode()
    m = re.search(r"gnutls-cli (\d+\.\d+\.\d+)", cli)
    if m:  # the same Debian source package: the library the tool runs on
        assert lines[1] == "gnutls " + m.group(1), (lines, cli)


def test_s2_check_good_config(tmp_path):
    path, rc, out, err = check_config(tmp_path, make_config(2525))
    assert rc == 0, err
    assert err == "" or "error" not in err.lower(), err


def test_s2_check_minimal_config(tmp_path):
    path, rc, out, err = check_config(tmp_path, 'backend = { address = "127.0.0.1:2525"; };\n')
    assert rc == 0, err


def test_s2_s3_5_check_warns_require_tls_on_port_25(tmp_path):
    """-t shows the RFC 3207 §4 warning the server logs when it binds port 25
    with require_tls: valid, exit 0, but said; not for other ports."""
    text = ('backend = { address = "127.0.0.1:2525"; };\n'
            'inbound = { tcp = { listen = [ "127.0.0.1:25", "127.0.0.1:587" ]; '
            'require_tls = true; }; };\n')
    path, rc, out, err = check_config(tmp_path, text)
    assert rc == 0 and "configuration OK" in out, (out, err)
    assert err.count("RFC 3207") == 1 and "127.0.0.1:25)" in err, err
    path, rc, out, err = check_config(tmp_path, text.replace('"127.0.0.1:25", ', ""),
                                      name="587.conf")
    assert rc == 0 and err == "", err


def test_s2_check_unknown_key(tmp_path):
    text = make_config(2525).replace(
        "limits = {", "limits = { idle_timout = 5;", 1)
    path, rc, out, err = check_config(tmp_path, text)
    assert rc == 1
    assert err.startswith("%s:%d:" % (path, line_of(text, "idle_timout"))), err
    assert "idle_timout" in err, err


def test_s2_check_wrong_type(tmp_path):
    text = make_config(2525).replace("workers = 1;", 'workers = "two";')
    path, rc, out, err = check_config(tmp_path, text)
    assert rc == 1
    assert err.startswith("%s:%d:" % (path, line_of(text, "workers"))), err


def test_s2_check_impossible_combination_at_later_key(tmp_path):
    text = ('backend = { address = "127.0.0.1:2525"; };\n'
            'inbound = {\n'
            '  tcp = {\n'
            '    starttls = false;\n'
            '    listen = [ "127.0.0.1:2526" ];\n'
            '    require_tls = true;\n'
            '  };\n'
            '};\n')
    path, rc, out, err = check_config(tmp_path, text)
    assert rc == 1
    assert err.startswith("%s:6:" % path), err


def test_s2_check_not_supported_yet(tmp_path):
    # inbound.tls (issue 3) and outbound (issue 5) have since been built:
    # nothing is refused as "not supported yet" any more.
    text = make_config(2525) + "outbound = { enabled = true; };\n"
    path, rc, out, err = check_config(tmp_path, text)
    assert rc == 0, err
    assert "not supported yet" not in err, err


def test_s2_listen_on_port_zero(tlsfront_factory, aiosmtpd_backend):
    # The kernel chooses the port; tlsfront logs the one it got (every
    # other test relies on this too).
    tf = tlsfront_factory(aiosmtpd_backend.port, listen_port=0)
    assert tf.port != 0
    assert re.search(r"event=listening listener=tcp address=127\.0\.0\.1:%d workers=1"
                     % tf.port, tf.log_text())
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("QUIT").code == 221


# ---- §6 signals --------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_s6_sigterm_without_session_exits_0(front, sig):
    t0 = time.monotonic()
    assert front.stop(timeout=10, sig=sig) == 0
    assert time.monotonic() - t0 < 3
    log = front.log_text()
    assert "event=stopping" in log and "event=stopped" in log, log


def test_s6_sigterm_lets_message_in_progress_finish(front, aiosmtpd_backend):
    with front.connect() as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("MAIL FROM:<late@x>").code == 250
        assert c.cmd("RCPT TO:<r@y>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: during shutdown\r\n\r\nfirst half\r\n")
        front.send_signal(signal.SIGTERM)
        front.wait_event("stopping")
        # Stopped accepting (listeners closed once the worker got the stop).
        refused = wait_until(lambda: not _accepts(front.port), timeout=5)
        assert refused, "tlsfront still accepts connections after SIGTERM"
        assert front.running()
        c.send(b"second half\r\n.\r\n")
        assert c.read_reply().code == 250
        assert front.running()
        assert c.cmd("QUIT").code == 221
    assert front.wait_exit(5) == 0  # exits by itself once the last session ends
    assert aiosmtpd_backend.wait_messages(1)
    assert aiosmtpd_backend.messages[0]["content"] == (
        b"Subject: during shutdown\r\n\r\nfirst half\r\nsecond half\r\n")
    assert front.session_of(c.local)["reason"] == "quit"
    assert "event=stopped" in front.log_text()


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            try:
                return s.recv(1) != b""
            except socket.timeout:
                return True
    except OSError:
        return False


def test_s6_process_exits_when_last_session_ends(front):
    with front.connect() as c:
        c.greeting()
        c.ehlo()
        front.send_signal(signal.SIGTERM)
        front.wait_event("stopping")
        time.sleep(0.3)
        assert front.running()
        assert c.cmd("QUIT").code == 221
    assert front.wait_exit(5) == 0  # exits by itself once the last session ends


def test_s6_second_sigterm_still_lets_session_finish(front, aiosmtpd_backend):
    # A second SIGTERM (an impatient operator, a supervisor that repeats it)
    # is still a SIGTERM: stop accepting, let sessions finish, exit 0.
    with front.connect() as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("MAIL FROM:<twice@x>").code == 250
        front.send_signal(signal.SIGTERM)
        front.wait_event("stopping")
        front.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert front.running(), "killed by the second SIGTERM (status %s)" % front.proc.returncode
        assert c.cmd("RCPT TO:<r@y>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(MESSAGE + b".\r\n")
        assert c.read_reply().code == 250
        assert c.cmd("QUIT").code == 221
    assert front.wait_exit(5) == 0  # exits by itself once the last session ends
    assert "event=stopped" in front.log_text()


def test_s6_shutdown_timeout_closes_idle_session(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, shutdown_timeout=2)
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        t0 = time.monotonic()
        tf.send_signal(signal.SIGTERM)
        r = c.read_reply()
        waited = time.monotonic() - t0
        assert r.code == 421 and r.enhanced == "4.3.2", r
        assert 1.5 <= waited <= 6, waited
        assert c.read_until_closed(5) == b""
    assert tf.wait_exit(5) == 0
    assert tf.session_of(c.local)["reason"] == "shutdown"


def test_s6_two_workers_sequential_and_concurrent(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, workers=2)
    assert tf.wait_event("listening")[0]["workers"] == "2"
    for i in range(20):
        deliver_with_smtplib(tf.port, i)
    errors = []

    def worker(i):
        try:
            deliver_with_smtplib(tf.port, i)
        except Exception as e:  # reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(100 + i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client hangs"
    assert errors == []
    assert aiosmtpd_backend.wait_messages(30)
    senders = sorted(m["mail_from"] for m in aiosmtpd_backend.messages)
    assert senders == sorted(["s%d@x" % i for i in list(range(20)) + list(range(100, 110))])
    assert all(m["content"] == MESSAGE for m in aiosmtpd_backend.messages)
    sessions = tf.wait_event("session", n=30)
    assert len(sessions) == 30
    assert all(s["reason"] == "quit" and s["messages"] == "1" for s in sessions), sessions
    assert len({s["id"] for s in sessions}) == 30  # session ids are unique
    # One listening socket per worker on the port (SO_REUSEPORT): the
    # kernel spreads the connections over two event loops, not one.
    assert listening_sockets(tf.port) == 2


def listening_sockets(port):
    """How many TCP sockets listen on port (any address), from /proc/net."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in list(f)[1:]:
                local, state = row.split()[1], row.split()[3]
                n += state == "0A" and int(local.split(":")[1], 16) == port
    return n


def test_s6_one_write_per_log_line(tlsfront_factory, aiosmtpd_backend, tmp_path):
    """§6: every log line is one write(2) to stderr, so lines of concurrent
    sessions on several workers never interleave. strace attaches to every
    thread and records each write to fd 2."""
    if not shutil.which("strace"):
        pytest.fail("strace is missing: scripts/install-deps.sh installs it")
    tf = tlsfront_factory(aiosmtpd_backend.port, workers=2)
    trace = tmp_path / "writes.trace"
    # -ff with the process id attaches every thread, each traced to a file
    # of its own (trace.TID), so no record is split by another thread's.
    st = subprocess.Popen(["strace", "-ff", "-xx", "-s", "65536", "-e", "trace=write",
                           "-o", str(trace), "-p", str(tf.pid)], stderr=subprocess.PIPE)
    said = []
    reader = threading.Thread(target=lambda: said.extend(st.stderr), daemon=True)
    reader.start()
    assert wait_until(lambda: any(b"attached" in x for x in said) or st.poll() is not None,
                      30), "strace did not attach"
    assert st.poll() is None, b"".join(said)
    before = len(tf.log_text().splitlines())
    threads = [threading.Thread(target=deliver_with_smtplib, args=(tf.port, i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert aiosmtpd_backend.wait_messages(8)
    tf.wait_event("session", n=8)
    # Detach before tlsfront exits: LeakSanitizer (the sanitized build)
    # ptraces the process at exit and cannot while strace holds it.
    st.send_signal(signal.SIGINT)
    st.wait(30)
    reader.join(10)
    writes = []
    rows = []
    for f in sorted(tmp_path.glob("writes.trace.*")):
        rows += f.read_text().splitlines()
    for row in rows:
        m = re.search(r'write\(2, "((?:\\x[0-9a-f]{2})*)", \d+\) = (\d+)', row)
        if m:
            data = bytes.fromhex(m.group(1).replace("\\x", ""))
            assert len(data) == int(m.group(2)), row  # no short write
            writes.append(data)
    lines = tf.log_text().splitlines()[before:]
    tf.stop(timeout=10)
    assert len(lines) >= 8 * 2 and sorted(writes) == sorted(
        (x + "\n").encode() for x in lines), (len(writes), len(lines))
    for data in writes:
        assert data.endswith(b"\n") and data.count(b"\n") == 1, data
        assert data.startswith(b"ts=") and b" level=" in data, data


# ---- §6 / §7.5 the summary line ---------------------------------------------

def test_s6_summary_line_plaintext_session(front):
    with front.connect() as c:
        c.greeting()
        c.ehlo()
        assert send_message(c, "a@x", "b@y", MESSAGE + b".\r\n").code == 250
        time.sleep(0.3)
        assert c.cmd("QUIT").code == 221
        assert c.read_until_closed(5) == b""
    s = front.session_of(c.local)
    line = [l for l in front.log_text().splitlines() if "event=session" in l][0]
    keys = re.findall(r"(?:^|\s)([a-z_]+)=", line)
    for k in SUMMARY_KEYS:
        assert k in keys, (k, line)
    assert keys.index("event") < keys.index("id")  # the order §6 gives
    assert [k for k in keys if k in SUMMARY_KEYS] == SUMMARY_KEYS, line
    assert s["listener"] == "tcp"
    assert s["client"] == c.local
    assert s["tls"] == "none" and s["cipher"] == "none" and s["sni"] == "none"
    assert s["user"] == "none"
    assert s["messages"] == "1"
    assert s["reason"] == "quit"
    assert float(s["duration"]) >= 0.3
    # §7.5: application bytes received from and sent to the client.
    assert int(s["bytes_in"]) == c.sent, (s, c.sent)
    assert int(s["bytes_out"]) == c.received, (s, c.received)


def test_s6_summary_line_tls_session(front):
    with front.connect() as c:
        c.greeting()
        c.ehlo()
        c.starttls(insecure_context(), server_hostname="mx.test")
        c.ehlo()
        assert send_message(c, "a@x", "b@y", MESSAGE + b".\r\n").code == 250
        assert c.cmd("QUIT").code == 221
        assert c.read_until_closed(5) == b""
    s = front.session_of(c.local)
    for k in SUMMARY_KEYS:
        assert k in s, (k, s)
    assert s["tls"] == "TLS1.3"
    assert s["cipher"] not in ("", "none")
    assert s["sni"] == "mx.test"
    assert s["messages"] == "1" and s["reason"] == "quit"
    assert int(s["bytes_in"]) > 0 and int(s["bytes_out"]) > 0
    assert int(s["bytes_in"]) == c.sent, (s, c.sent)
    assert int(s["bytes_out"]) == c.received, (s, c.received)
    [tls] = front.events("tls")
    assert tls["id"] == s["id"] and tls["sni"] == "mx.test" and tls["cipher"] == s["cipher"]
