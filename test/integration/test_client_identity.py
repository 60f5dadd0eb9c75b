"""Client identity (SPEC §3.1, §3.3, §6, §7.5, §7.10; issue 4): XCLIENT to a
real Postfix, PROXY headers to the backend, PROXY headers from a real
HAProxy, the strict PROXY listener, and the connection limits.

Clients bind to other loopback addresses (127.0.0.2, 127.0.0.3...) so the
address the backend is told differs from tlsfront's own 127.0.0.1.
Postfix runs from a private directory (postfix_backend.py); HAProxy from a
config file in tmp_path, in the foreground.
"""
import os
import re
import select
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import postfix_backend
import tfhelpers
from tfhelpers import HOST, IO_TIMEOUT, SmtpClient, insecure_context, wait_until

PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
MESSAGE = (b"From: a@client.test\r\nTo: b@postfix.test\r\nSubject: identity\r\n\r\n"
           b"hello through tlsfront\r\n")


# ---- tlsfront configuration and listeners ---------------------------------

def identity_config(backend_port, tcp_listen, tls_listen, *, client_info="none", workers=1,
                    tcp_proxy=False, tls_port=False, tls_proxy=False, max_connections=10000,
                    max_connections_per_ip=100, log_level="debug"):
    b = lambda v: "true" if v else "false"  # noqa: E731
    return f"""# written by test_client_identity.py
server_name = "mx.test";
workers = {workers};
backend = {{ address = "127.0.0.1:{backend_port}"; connect_timeout = 5; client_info = "{client_info}"; }};
inbound = {{
  tcp = {{ listen = [ "127.0.0.1:{tcp_listen}" ]; proxy_protocol = {b(tcp_proxy)}; }};
  tls = {{ enabled = {b(tls_port)}; listen = [ "127.0.0.1:{tls_listen}" ]; proxy_protocol = {b(tls_proxy)}; }};
}};
limits = {{ max_connections = {max_connections}; max_connections_per_ip = {max_connections_per_ip};
           idle_timeout = 30; shutdown_timeout = 5; }};
log = {{ level = "{log_level}"; }};
tls = {{ priority = "NORMAL"; handshake_timeout = 10; }};
"""


def listeners(tf, want=("tcp",), timeout=5.0):
    """{'tcp': port, 'tls': port} from the event=listening lines (all of them)."""
    def parse():
        found = {}
        for ev in tf.events("listening"):
            m = re.match(r"127\.0\.0\.1:(\d+)$", ev.get("address", ""))
            if m:
                found[ev.get("listener")] = int(m.group(1))
        return found if all(k in found for k in want) else None
    found = wait_until(parse, timeout)
    assert found, "no event=listening for %s:\n%s" % (want, tf.log_text())
    return found


def start_front(factory, backend_port, **kw):
    """tlsfront on ports the kernel picked free a moment ago (tlsfront
    refuses port 0 in listen); retried when one was taken in between."""
    for attempt in range(3):
        tcp_port = tfhelpers.free_port()
        tls_port = tfhelpers.free_port()
        if tls_port == tcp_port:
            continue
        try:
            tf = factory(config_text=identity_config(backend_port, tcp_port, tls_port, **kw))
        except tfhelpers.StartError as e:
            if attempt < 2 and "in use" in e.tf.log_text():
                continue
            raise
        ports = listeners(tf, ("tcp", "tls") if kw.get("tls_port") else ("tcp",))
        assert ports["tcp"] == tcp_port == tf.port, ports
        tf.tls_port = ports.get("tls")
        return tf
    raise AssertionError("no free ports for tlsfront")


# ---- clients ----------------------------------------------------------------

class Client(SmtpClient):
    """SmtpClient from a chosen loopback source address; optionally sends a
    preamble (a PROXY header) first and starts implicit TLS."""

    def __init__(self, port, source=HOST, preamble=b"", tls=False, timeout=IO_TIMEOUT):
        sock = socket.create_connection((HOST, port), timeout=timeout,
                                        source_address=(source, 0))
        sock.settimeout(timeout)
        self.local = "%s:%d" % sock.getsockname()[:2]
        self.local_port = sock.getsockname()[1]
        if preamble:
            sock.sendall(preamble)
        if tls:
            sock = insecure_context().wrap_socket(sock)
        self.sock = sock
        self.buf = b""
        self.sent = 0
        self.received = 0


def closed_silently(c, within):
    """(closed, bytes received, seconds): reads until EOF or `within` s."""
    t0 = time.monotonic()
    try:
        data = c.read_until_closed(within)
        return True, data, time.monotonic() - t0
    except (AssertionError, socket.timeout, TimeoutError):
        return False, c.buf, time.monotonic() - t0


def pp_v1(src, sport, dst, dport):
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def pp_v2(src, sport, dst, dport, command=0x1, family=None):
    if family is None:
        family = 0x21 if ":" in src else 0x11
    if family == 0x11:
        body = (socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
                + struct.pack("!HH", sport, dport))
    elif family == 0x21:
        body = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!HH", sport, dport))
    else:
        body = b""
    return PP2_SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def pp_v2_local():
    return PP2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)


def parse_pp_v2(raw):
    """The test's own v2 parser: {'cmd','fam','len','src','sport','dst','dport'}."""
    assert raw[:12] == PP2_SIG, raw
    ver_cmd, fam, length = raw[12], raw[13], struct.unpack("!H", raw[14:16])[0]
    out = {"ver_cmd": ver_cmd, "fam": fam, "len": length, "total": 16 + length}
    body = raw[16:16 + length]
    assert len(body) == length, "v2 header shorter than its length field: %r" % raw
    if fam == 0x11:
        assert length >= 12, length
        out["src"] = socket.inet_ntop(socket.AF_INET, body[0:4])
        out["dst"] = socket.inet_ntop(socket.AF_INET, body[4:8])
        out["sport"], out["dport"] = struct.unpack("!HH", body[8:12])
    elif fam == 0x21:
        assert length >= 36, length
        out["src"] = socket.inet_ntop(socket.AF_INET6, body[0:16])
        out["dst"] = socket.inet_ntop(socket.AF_INET6, body[16:32])
        out["sport"], out["dport"] = struct.unpack("!HH", body[32:36])
    return out


def parse_pp_v1(line):
    assert line.endswith(b"\r\n") and len(line) <= 107, line
    parts = line[:-2].decode("ascii").split(" ")
    assert parts[0] == "PROXY" and len(parts) == 6, line
    return {"fam": parts[1], "src": parts[2], "dst": parts[3],
            "sport": int(parts[4]), "dport": int(parts[5])}


# ---- a scripted backend: PROXY header, XCLIENT --------------------------------

class ScriptedBackend:
    """Threaded SMTP server on 127.0.0.1:0. proxy='v1'|'v2': reads that PROXY
    header first (recorded raw). Offers ehlo keywords (or answers EHLO with
    ehlo_reply when given); answers XCLIENT with xclient_reply, after which it
    greets again. A 421 reply is followed by the close, as Postfix does.
    Records, per connection, the header bytes, the command lines and
    everything received."""

    def __init__(self, proxy=None, ehlo=("PIPELINING", "8BITMIME", "XCLIENT NAME ADDR PORT"),
                 xclient_reply="220 second.greeting ESMTP after XCLIENT",
                 greeting="220 first.greeting ESMTP scripted", ehlo_reply=None):
        self.proxy = proxy
        self.greeting = greeting
        self.ehlo = list(ehlo)
        self.ehlo_reply = ehlo_reply
        self.xclient_reply = xclient_reply
        self.conns = []  # dicts: header, commands, raw, error
        self.lock = threading.Lock()
        self.stopping = False
        self.socks = []
        self.threads = []
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind((HOST, 0))
        self.srv.listen(32)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        for _ in range(10 ** 6):
            if self.stopping:
                return
            try:
                conn, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            rec = {"header": b"", "commands": [], "raw": bytearray(), "error": None,
                   "pipelined_after_xclient": None}
            with self.lock:
                if len(self.conns) >= 100:
                    conn.close()
                    continue
                self.conns.append(rec)
                self.socks.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, rec), daemon=True)
            t.start()
            self.threads.append(t)

    def _recv_exact(self, conn, n, rec):
        data = b""
        for _ in range(n + 1):
            if len(data) >= n:
                return data
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError("closed after %r" % data)
            rec["raw"] += chunk
            data += chunk
        return data

    def _read_header(self, conn, rec):
        if self.proxy == "v2":
            head = self._recv_exact(conn, 16, rec)
            length = struct.unpack("!H", head[14:16])[0] if head[:12] == PP2_SIG else 0
            rec["header"] = head + (self._recv_exact(conn, length, rec) if length else b"")
        else:  # v1: one line of at most 107 octets, read byte by byte
            line = b""
            for _ in range(107):
                line += self._recv_exact(conn, 1, rec)
                if line.endswith(b"\r\n"):
                    break
            rec["header"] = line

    def _serve(self, conn, rec):
        conn.settimeout(20)
        buf = b""
        try:
            if self.proxy:
                self._read_header(conn, rec)
            conn.sendall(self.greeting.encode() + b"\r\n")
            in_data = False
            for _ in range(100000):
                if in_data:
                    i = buf.find(b"\r\n.\r\n")
                    if i >= 0 or buf.startswith(b".\r\n"):
                        buf = buf[i + 5:] if i >= 0 else buf[3:]
                        in_data = False
                        conn.sendall(b"250 2.0.0 Ok: queued\r\n")
                        continue
                else:
                    i = buf.find(b"\r\n")
                    if i >= 0:
                        line, buf = buf[:i].decode("latin-1"), buf[i + 2:]
                        with self.lock:
                            rec["commands"].append(line)
                        verb = line.split(" ", 1)[0].upper()
                        if verb == "EHLO" and self.ehlo_reply:
                            conn.sendall(self.ehlo_reply.encode() + b"\r\n")
                            if self.ehlo_reply.startswith("421"):
                                return
                        elif verb == "EHLO":
                            kws = ["scripted.backend"] + self.ehlo
                            conn.sendall("".join("250-%s\r\n" % k for k in kws[:-1]).encode()
                                         + ("250 %s\r\n" % kws[-1]).encode())
                        elif verb == "XCLIENT":
                            # Like Postfix: nothing may follow XCLIENT before its reply.
                            time.sleep(0.2)
                            ready, _, _ = select.select([conn], [], [], 0)
                            rec["pipelined_after_xclient"] = bool(buf or ready)
                            conn.sendall(self.xclient_reply.encode() + b"\r\n")
                            if self.xclient_reply.startswith("421"):
                                return
                        elif verb == "DATA":
                            conn.sendall(b"354 go on\r\n")
                            in_data = True
                            buf = b"\r\n" + buf  # so a first line "." is found too
                        elif verb == "QUIT":
                            conn.sendall(b"221 2.0.0 Bye\r\n")
                            return
                        elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
                            conn.sendall(b"250 2.0.0 Ok\r\n")
                        else:  # a NUL, a stray byte, an unknown verb: strict
                            conn.sendall(b"500 5.5.2 Error: command not recognized\r\n")
                        continue
                chunk = conn.recv(65536)
                if not chunk:
                    return
                rec["raw"] += chunk
                buf += chunk
        except (OSError, EOFError) as e:
            rec["error"] = repr(e)
        finally:
            conn.close()

    def wait_conns(self, n, timeout=10.0):
        ok = wait_until(lambda: len(self.conns) >= n and all(
            c["header"] or c["error"] or c["commands"] for c in self.conns[:n]), timeout)
        assert ok, "fewer than %d backend connections: %r" % (n, self.conns)
        return self.conns

    def stop(self):
        self.stopping = True
        try:
            self.srv.close()
        except OSError:
            pass
        self.thread.join(5)
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(2)


# ---- HAProxy -------------------------------------------------------------------

HAPROXY = "/usr/sbin/haproxy"

HAPROXY_CFG = """\
# haproxy.cfg in front of tlsfront (written by test_client_identity.py)
global
    maxconn 200
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend smtp_in
    bind 127.0.0.1:{smtp_port}
    default_backend tlsfront_tcp

frontend submissions_in
    bind 127.0.0.1:{submissions_port}
    default_backend tlsfront_tls

frontend smtp_v1_in
    bind 127.0.0.1:{smtp_v1_port}
    default_backend tlsfront_tcp_v1

backend tlsfront_tcp
    server tlsfront 127.0.0.1:{tlsfront_tcp} send-proxy-v2

backend tlsfront_tls
    server tlsfront 127.0.0.1:{tlsfront_tls} send-proxy-v2

backend tlsfront_tcp_v1
    server tlsfront 127.0.0.1:{tlsfront_tcp} send-proxy
"""


class Haproxy:
    """HAProxy in the foreground (-db) with a config file in directory."""

    def __init__(self, directory, tlsfront_tcp, tlsfront_tls):
        self.cfg_path = os.path.join(directory, "haproxy.cfg")
        self.log_path = os.path.join(directory, "haproxy.log")
        ports = set()
        for _ in range(20):
            ports.add(tfhelpers.free_port())
            if len(ports) == 3:
                break
        self.smtp_port, self.submissions_port, self.smtp_v1_port = sorted(ports)
        self.ports = sorted(ports)
        self.cfg = HAPROXY_CFG.format(smtp_port=self.smtp_port,
                                      submissions_port=self.submissions_port,
                                      smtp_v1_port=self.smtp_v1_port,
                                      tlsfront_tcp=tlsfront_tcp, tlsfront_tls=tlsfront_tls)
        with open(self.cfg_path, "w") as f:
            f.write(self.cfg)
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg_path],
                                     stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=self.log_file)
        ok = wait_until(lambda: self.proc.poll() is not None or all(
            postfix_backend.is_listening(p) for p in self.ports), 10.0)
        if not ok or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("haproxy did not start:\n" + self.log_text())

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log_file.close()


# ---- fixtures -------------------------------------------------------------------

@pytest.fixture
def postfix(tmp_path):
    postfix_backend.require()  # skips; fails under CI=true
    pf = postfix_backend.PostfixBackend(keep_log_to=str(tmp_path / "postfix-maillog"))
    yield pf
    pf.stop()


@pytest.fixture
def scripted_factory():
    make = tfhelpers.Makes(ScriptedBackend)
    yield make
    make.stop_all()


@pytest.fixture
def haproxy_factory(tmp_path):
    if not os.access(HAPROXY, os.X_OK):
        postfix_backend.require_or_skip("%s not installed" % HAPROXY)
    made = []

    def make(tlsfront_tcp, tlsfront_tls):
        h = Haproxy(str(tmp_path), tlsfront_tcp, tlsfront_tls)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def test_postfix_and_haproxy_tests_fail_instead_of_skipping_in_ci(monkeypatch):
    """require_or_skip(): a skip, except in the CI run (CI=true), where a
    missing Postfix or HAProxy is a failure."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="haproxy gone"):
        postfix_backend.require_or_skip("haproxy gone")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        postfix_backend.require_or_skip("haproxy gone")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true, but haproxy gone"):
        postfix_backend.require_or_skip("haproxy gone")
    monkeypatch.setattr(postfix_backend, "available", lambda: "no postfix user")
    with pytest.raises(pytest.fail.Exception, match="no postfix user"):
        postfix_backend.require()
    monkeypatch.setattr(postfix_backend, "available", lambda: "")
    postfix_backend.require()  # nothing missing: neither


# ---- helpers on Postfix's log ------------------------------------------------------

def queue_id_of(data_reply):
    m = re.search(rb"queued as ([0-9A-Za-z]+)", data_reply)
    assert m, data_reply
    return m.group(1).decode()


def postfix_client_of(pf, qid):
    """The client= of Postfix's 'QID: client=NAME[ADDR]' line."""
    m = pf.wait_log(r"postfix-tftest/smtpd\[\d+\]: %s: client=(\S+)" % re.escape(qid))
    return m.group(1)


def smtplib_send(s):
    """MAIL/RCPT/DATA on an smtplib connection; returns the DATA reply."""
    code, resp = s.mail("a@client.test")
    assert code == 250, resp
    code, resp = s.rcpt("b@%s" % postfix_backend.PostfixBackend.DOMAIN)
    assert code == 250, resp
    code, resp = s.data(MESSAGE)
    assert code == 250, resp
    return resp


# ============================================================================
# §3.3 XCLIENT
# ============================================================================

def test_s3_3_xclient_postfix_logs_real_client(tlsfront_factory, postfix):
    tf = start_front(tlsfront_factory, postfix.port, client_info="xclient")
    with smtplib.SMTP(HOST, tf.port, local_hostname="client.test", timeout=IO_TIMEOUT,
                      source_address=("127.0.0.2", 0)) as s:
        client = "%s:%d" % s.sock.getsockname()[:2]
        assert client.startswith("127.0.0.2:")
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("starttls")
        # The backend's XCLIENT is tlsfront's business, not the client's.
        assert not s.has_extn("xclient"), s.esmtp_features
        code, resp = s.starttls(context=insecure_context())
        assert code == 220, resp
        code, _ = s.ehlo()
        assert code == 250
        resp = smtplib_send(s)
        s.quit()

    qid = queue_id_of(resp)
    assert postfix_client_of(postfix, qid) == "unknown[127.0.0.2]", postfix.log_text()
    # (Postfix counts even a successful XCLIENT as "xclient=0/1".)
    m = postfix.wait_log(r"disconnect from (\S+) .*xclient=")
    assert m.group(1) == "unknown[127.0.0.2]", postfix.log_text()
    # tlsfront waited for each reply of its own dialogue (and sent nothing stray).
    assert "improper command pipelining" not in postfix.log_text(), postfix.log_text()
    # Nothing of the mail was attributed to tlsfront's own address.
    assert not re.search(r"client=\S*\[127\.0\.0\.1\]", postfix.log_text()), postfix.log_text()

    summary = tf.session_of(client)
    assert summary["tls"].startswith("TLS1."), summary
    assert summary["messages"] == "1" and summary["reason"] == "quit", summary


def test_s3_3_xclient_command_and_new_greeting(tlsfront_factory, scripted_factory):
    backend = scripted_factory()
    tf = start_front(tlsfront_factory, backend.port, client_info="xclient", tcp_proxy=True)
    # A client at 127.0.0.2 (its PROXY header names itself) ...
    with Client(tf.port, source="127.0.0.2") as c:
        c.send(pp_v1("127.0.0.2", c.local_port, HOST, tf.port))
        v4_port = c.local_port
        g = c.greeting()
        # ... is greeted with the greeting that followed XCLIENT, not the first.
        assert "second.greeting" in g.text, g
        r = c.cmd("EHLO client.test")
        assert r.code == 250, (r, "backend received:", bytes(backend.conns[0]["raw"]))
        # The client's own XCLIENT is refused, not forwarded (§3.2).
        r = c.cmd("XCLIENT ADDR=192.0.2.66")
        assert r.code == 502 and r.enhanced == "5.5.1", r
        assert c.cmd("QUIT").code == 221
    # ... and an IPv6 client named by a PROXY header.
    with Client(tf.port) as c:
        c.send(pp_v1("2001:db8::7", 5000, "2001:db8::1", 25))
        assert "second.greeting" in c.greeting().text
        assert c.cmd("QUIT").code == 221

    # A client that speaks before the greeting (header and EHLO in one
    # write): its EHLO waits until the XCLIENT dialogue is over.
    with Client(tf.port) as c:
        c.send(pp_v1("192.0.2.5", 999, "192.0.2.6", 25) + b"EHLO early.test\r\n")
        assert "second.greeting" in c.greeting().text
        assert c.read_reply().code == 250
        assert c.cmd("QUIT").code == 221

    conns = backend.wait_conns(3)
    assert [x["pipelined_after_xclient"] for x in conns] == [False] * 3, conns
    assert bytes(conns[2]["raw"]) == (
        b"EHLO mx.test\r\nXCLIENT ADDR=192.0.2.5 PORT=999 NAME=[UNAVAILABLE]\r\n"
        b"EHLO early.test\r\nQUIT\r\n"), bytes(conns[2]["raw"])
    first, second = conns[0]["commands"], conns[1]["commands"]
    # Exactly these bytes, nothing between the XCLIENT line and the client's EHLO.
    assert bytes(conns[0]["raw"]) == (
        b"EHLO mx.test\r\nXCLIENT ADDR=127.0.0.2 PORT=%d NAME=[UNAVAILABLE]\r\n"
        b"EHLO client.test\r\nQUIT\r\n" % v4_port), bytes(conns[0]["raw"])
    assert first[:2] == ["EHLO mx.test",
                         "XCLIENT ADDR=127.0.0.2 PORT=%d NAME=[UNAVAILABLE]" % v4_port], first
    assert second[:2] == ["EHLO mx.test",
                          "XCLIENT ADDR=IPV6:2001:db8::7 PORT=5000 NAME=[UNAVAILABLE]"], second


def test_s3_3_xclient_ipv6_client(tlsfront_factory, scripted_factory):
    """A client on ::1 is ADDR=IPV6:::1 (Postfix's form)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")
    backend = scripted_factory()
    v4, v6 = tfhelpers.free_port(), tfhelpers.free_port()
    config = identity_config(backend.port, v4, tfhelpers.free_port(),
                             client_info="xclient").replace(
        '"127.0.0.1:%d" ]' % v4, '"127.0.0.1:%d", "[::1]:%d" ]' % (v4, v6))
    tf = tlsfront_factory(config_text=config)
    found = wait_until(lambda: [e for e in tf.events("listening")
                                if e.get("address") == "[::1]:%d" % v6], 5)
    assert found, tf.log_text()
    sock = socket.create_connection(("::1", v6), timeout=IO_TIMEOUT)
    try:
        c = Client.__new__(Client)
        c.sock, c.buf, c.sent, c.received = sock, b"", 0, 0
        assert "second.greeting" in c.greeting().text
        assert c.cmd("QUIT").code == 221
        port = sock.getsockname()[1]
    finally:
        sock.close()
    # §7.5: bytes_in/bytes_out are the client's own bytes, not tlsfront's
    # EHLO/XCLIENT dialogue with the backend.
    summary = tf.session_of("[::1]:%d" % port)
    assert (summary["bytes_in"], summary["bytes_out"]) == (str(c.sent), str(c.received)), \
        (summary, c.sent, c.received)
    [rec] = backend.wait_conns(1)
    assert rec["commands"][:2] == [
        "EHLO mx.test", "XCLIENT ADDR=IPV6:::1 PORT=%d NAME=[UNAVAILABLE]" % port], rec
    assert tf.session_of("[::1]:%d" % port)["reason"] == "quit"


def test_s3_1_s3_3_xclient_554_greeting_relayed(tlsfront_factory, scripted_factory):
    """A backend that greets 554 gets no XCLIENT: the 554 goes to the client
    unchanged (§3.1 step 4)."""
    backend = scripted_factory(greeting="554 5.3.2 first.greeting no service")
    tf = start_front(tlsfront_factory, backend.port, client_info="xclient")
    with Client(tf.port, source="127.0.0.2") as c:
        r = c.read_reply()
        assert r.raw == b"554 5.3.2 first.greeting no service\r\n", r
        r = c.cmd("QUIT")
        assert r.code == 221, r
    [rec] = backend.wait_conns(1)
    assert not any(x.upper().startswith(("EHLO", "XCLIENT")) for x in rec["commands"]), rec


XCLIENT_FAILURES = {
    # case: (ScriptedBackend options, or None for aiosmtpd; what the note
    # says; the backend reply it quotes, or None)
    "no_xclient_keyword": (None, "does not offer XCLIENT", None),
    "xclient_refused": ({"xclient_reply": "550 5.7.0 Error: insufficient authorization"},
                        "refused XCLIENT", "550 5.7.0 Error: insufficient authorization"),
    # A backend's 421 to tlsfront's own EHLO or XCLIENT is not passed on as
    # the general 421 rule (§3.2) would: it answered tlsfront, not the client.
    "xclient_421": ({"xclient_reply": "421 4.7.0 first.greeting Error: too many connections"},
                    "closed on XCLIENT", "421 4.7.0 first.greeting Error: too many connections"),
    "ehlo_421": ({"ehlo_reply": "421 4.3.2 first.greeting Service not available"},
                 "closed on EHLO before XCLIENT", "421 4.3.2 first.greeting Service not available"),
}


@pytest.mark.parametrize("case", sorted(XCLIENT_FAILURES))
def test_s3_3_xclient_backend_without_xclient(tlsfront_factory, aiosmtpd_backend,
                                              scripted_factory, case):
    options, says, quoted = XCLIENT_FAILURES[case]
    if options is None:
        port = aiosmtpd_backend.port  # aiosmtpd does not offer XCLIENT
    else:
        port = scripted_factory(**options).port
    tf = start_front(tlsfront_factory, port, client_info="xclient")
    with Client(tf.port, source="127.0.0.2") as c:
        r = c.read_reply()
        assert r.code == 421 and r.enhanced == "4.3.5", r
        closed, rest, _ = closed_silently(c, 5)
        assert closed and rest == b"", rest
    notes = [n for n in tf.wait_event("note") if "xclient" in n.get("note", "").lower()]
    assert notes, "no event=note saying why:\n" + tf.log_text()
    [note] = notes
    # A configuration error: level=error, so log.level = "warn" shows it
    # too (§6); it names the backend and quotes its reply.
    assert note["level"] == "error", note
    assert says in note["note"], note
    assert note["backend"] == "127.0.0.1:%d" % port, note
    if quoted:
        assert note["reply"] == quoted, note
    if options is None:
        assert not aiosmtpd_backend.messages
    summary = tf.session_of(c.local)
    assert summary["messages"] == "0", summary
    assert summary["reason"] == "error", summary


def test_s3_3_s6_xclient_failure_seen_at_log_level_warn(tmp_path, tlsfront_bin,
                                                       scripted_factory):
    """An operator running log.level = "warn" still learns why every client
    gets 421 4.3.5. (Started by hand: at "warn" there is no event=listening
    line for tlsfront_factory to wait for.)"""
    backend = scripted_factory(xclient_reply="421 4.7.0 first.greeting Error: too many")
    log_path = str(tmp_path / "warn.log")
    proc = None
    for _attempt in range(3):
        port = tfhelpers.free_port()
        cfg = str(tmp_path / "warn.conf")
        with open(cfg, "w") as f:
            f.write(identity_config(backend.port, port, tfhelpers.free_port(),
                                    client_info="xclient", log_level="warn"))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([tlsfront_bin, "-c", cfg], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log)
        if wait_until(lambda: proc.poll() is not None or postfix_backend.is_listening(port),
                      10.0) and proc.poll() is None:
            break
        proc.wait(10)
    assert proc.poll() is None, "tlsfront did not start:\n" + open(log_path).read()

    def log_lines():
        with open(log_path, "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()

    try:
        with Client(port, source="127.0.0.2") as c:
            r = c.read_reply()
            assert r.code == 421 and r.enhanced == "4.3.5", r
            assert closed_silently(c, 5)[0]
        assert wait_until(lambda: any("event=note" in l for l in log_lines()), 10.0), log_lines()
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, log_lines()
    lines = log_lines()
    [note] = [tfhelpers.parse_kv(l) for l in lines if "event=note" in l]
    assert note["level"] == "error" and "closed on XCLIENT" in note["note"], note
    # Nothing below warn: no listening, session or connect lines.
    assert all(tfhelpers.parse_kv(l).get("level") in ("warn", "error") for l in lines), lines
    assert not [l for l in lines if any(m in l for m in tfhelpers.SANITIZER_MARKERS)], lines
    [rec] = backend.wait_conns(1)
    assert rec["commands"] == ["EHLO mx.test", "XCLIENT ADDR=127.0.0.2 PORT=%d NAME=[UNAVAILABLE]"
                               % c.local_port], rec


# ============================================================================
# §3.3 PROXY headers to the backend
# ============================================================================

@pytest.mark.parametrize("version", ["v1", "v2"])
def test_s3_3_proxy_v1_and_v2_to_backend(tlsfront_factory, scripted_factory, version):
    backend = scripted_factory(proxy=version, ehlo=("PIPELINING", "8BITMIME"))
    tf = start_front(tlsfront_factory, backend.port, client_info="proxy-" + version,
                     tls_port=True)
    with Client(tf.port, source="127.0.0.2") as c:
        g = c.greeting()
        assert "first.greeting" in g.text, g
        c.ehlo()
        assert tfhelpers.send_message(c, "a@client.test", "b@backend.test",
                                      b"Subject: x\r\n\r\nbody\r\n.\r\n").code == 250
        assert c.cmd("QUIT").code == 221
        client_port = c.local_port
    # On the TLS port the destination is the TLS port.
    with Client(tf.tls_port, source="127.0.0.3", tls=True) as c:
        c.greeting()
        assert c.cmd("QUIT").code == 221
        tls_client_port = c.local_port

    rec, tls_rec = backend.wait_conns(2)
    parse = parse_pp_v1 if version == "v1" else parse_pp_v2
    h = parse(tls_rec["header"])
    assert (h["src"], h["sport"], h["dst"], h["dport"]) == (
        "127.0.0.3", tls_client_port, HOST, tf.tls_port), h

    raw = bytes(rec["raw"])
    hdr = rec["header"]
    assert raw.startswith(hdr) and hdr, (rec, raw[:120])
    if version == "v1":
        h = parse_pp_v1(hdr)
        assert h["fam"] == "TCP4"
    else:
        h = parse_pp_v2(hdr)
        assert h["ver_cmd"] == 0x21 and h["fam"] == 0x11, h
        assert h["len"] == 12, h  # TCP over IPv4, no TLVs expected here
        assert h["total"] == len(hdr)
    assert (h["src"], h["sport"]) == ("127.0.0.2", client_port), h
    assert (h["dst"], h["dport"]) == (HOST, tf.port), h
    # The header is followed at once by SMTP (tlsfront's commands of the client).
    assert raw[len(hdr):].startswith(b"EHLO client.test\r\n"), raw[:200]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_s3_3_proxy_header_passes_incoming_identity(tlsfront_factory, scripted_factory,
                                                     version):
    """proxy_protocol = true on the listener and proxy-vN to the backend: the
    incoming header's source AND destination stand for the client (IPv6 too)."""
    backend = scripted_factory(proxy=version, ehlo=("PIPELINING",))
    tf = start_front(tlsfront_factory, backend.port, client_info="proxy-" + version,
                     tcp_proxy=True)
    with Client(tf.port) as c:
        c.send(pp_v2("198.51.100.9", 40001, "203.0.113.25", 25))
        c.greeting()
        assert c.cmd("QUIT").code == 221
    with Client(tf.port) as c:
        c.send(pp_v1("2001:db8::7", 40002, "2001:db8::25", 587))
        c.greeting()
        assert c.cmd("QUIT").code == 221
    recs = backend.wait_conns(2)
    parse = parse_pp_v1 if version == "v1" else parse_pp_v2
    h4, h6 = parse(recs[0]["header"]), parse(recs[1]["header"])
    assert (h4["src"], h4["sport"], h4["dst"], h4["dport"]) == (
        "198.51.100.9", 40001, "203.0.113.25", 25), h4
    assert (h6["src"], h6["sport"], h6["dst"], h6["dport"]) == (
        "2001:db8::7", 40002, "2001:db8::25", 587), h6
    if version == "v1":
        assert h4["fam"] == "TCP4" and h6["fam"] == "TCP6"
    else:
        assert (h4["fam"], h4["len"]) == (0x11, 12) and (h6["fam"], h6["len"]) == (0x21, 36)
    assert tf.session_of("198.51.100.9:40001")["reason"] == "quit"
    assert tf.session_of("[2001:db8::7]:40002")["reason"] == "quit"


# ============================================================================
# §3.3 / §7.10 a real HAProxy in front, Postfix behind
# ============================================================================

def test_s3_3_haproxy_send_proxy_v2_to_postfix(tlsfront_factory, postfix, haproxy_factory):
    tf = start_front(tlsfront_factory, postfix.port, client_info="xclient", tcp_proxy=True,
                     tls_port=True, tls_proxy=True)
    hap = haproxy_factory(tf.port, tf.tls_port)

    # TCP port through HAProxy: STARTTLS, one message.
    with smtplib.SMTP(HOST, hap.smtp_port, local_hostname="client.test", timeout=IO_TIMEOUT,
                      source_address=("127.0.0.3", 0)) as s:
        client = "%s:%d" % s.sock.getsockname()[:2]
        code, _ = s.ehlo()
        assert code == 250 and s.has_extn("starttls"), s.esmtp_features
        code, resp = s.starttls(context=insecure_context())
        assert code == 220, resp
        s.ehlo()
        resp = smtplib_send(s)
        s.quit()
    summary = tf.session_of(client)
    assert summary["listener"] == "tcp" and summary["messages"] == "1", summary
    assert postfix_client_of(postfix, queue_id_of(resp)) == "unknown[127.0.0.3]", \
        postfix.log_text()

    # TLS port through HAProxy: implicit TLS after the PROXY header.
    with smtplib.SMTP_SSL(HOST, hap.submissions_port, local_hostname="client.test",
                          timeout=IO_TIMEOUT, source_address=("127.0.0.4", 0),
                          context=insecure_context()) as s:
        client = "%s:%d" % s.sock.getsockname()[:2]
        code, _ = s.ehlo()
        assert code == 250
        resp = smtplib_send(s)
        s.quit()
    summary = tf.session_of(client)
    assert summary["listener"] == "tls" and summary["tls"].startswith("TLS1."), summary
    assert summary["messages"] == "1", summary
    assert postfix_client_of(postfix, queue_id_of(resp)) == "unknown[127.0.0.4]", \
        postfix.log_text()

    # TCP port through HAProxy's PROXY v1 (send-proxy): no TLS this time.
    with smtplib.SMTP(HOST, hap.smtp_v1_port, local_hostname="client.test",
                      timeout=IO_TIMEOUT, source_address=("127.0.0.5", 0)) as s:
        client = "%s:%d" % s.sock.getsockname()[:2]
        s.ehlo()
        resp = smtplib_send(s)
        s.quit()
    summary = tf.session_of(client)
    assert summary["tls"] == "none" and summary["messages"] == "1", summary
    assert postfix_client_of(postfix, queue_id_of(resp)) == "unknown[127.0.0.5]", \
        postfix.log_text()

    assert "improper command pipelining" not in postfix.log_text(), postfix.log_text()
    # HAProxy's own address never passed for a client.
    assert not any(s.get("client", "").startswith("127.0.0.1:")
                   for s in tf.events("session")), tf.log_text()


# ============================================================================
# §7.10 the strict PROXY listener
# ============================================================================

def test_s7_10_proxy_protocol_strict(tlsfront_factory, scripted_factory):
    backend = scripted_factory(ehlo=("PIPELINING",))
    tf = start_front(tlsfront_factory, backend.port, tcp_proxy=True)
    # Every client socket stays open until the end, so no local port is
    # reused within the test and client=127.0.0.1:PORT names one session.
    kept = []

    def client():
        c = Client(tf.port)
        kept.append(c)
        return c

    t_start = time.monotonic()
    silent = client()  # sends nothing: closed after the header timeout
    partial = client()  # an unfinished header: likewise
    partial.send(b"PROXY TCP4 192.0.2.1 ")
    try:
        bad = {
            "no header": b"EHLO x\r\n",
            "v1 bad address": b"PROXY TCP4 999.0.2.1 127.0.0.1 5000 25\r\n",
            "v1 missing port": b"PROXY TCP4 192.0.2.1 127.0.0.1 5000\r\n",
            "v1 no CRLF": b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 25\n",
            "v2 bad version": PP2_SIG + bytes([0x11, 0x11]) + struct.pack("!H", 12) + bytes(12),
            "v2 PROXY UNSPEC": pp_v2("0.0.0.0", 0, "0.0.0.0", 0, command=0x1, family=0x00),
            "v2 TCP4 short": PP2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", 4) + bytes(4),
            "v1 too long": b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
            "v1 port range": b"PROXY TCP4 192.0.2.1 127.0.0.1 70000 25\r\n",
            "v1 TCP4 with v6": b"PROXY TCP4 2001:db8::1 2001:db8::2 5000 25\r\n",
            "v1 lower case": b"proxy TCP4 192.0.2.1 127.0.0.1 5000 25\r\n",
        }
        clients = {}
        for name, data in bad.items():
            c = client()
            c.send(data)
            clients[name] = c
        results = {name: closed_silently(c, 5) for name, c in clients.items()}
        failures = {n: (r[1], "%.1fs" % r[2]) for n, r in results.items()
                    if not r[0] or r[1] != b""}
        assert not failures, "not closed at once without a reply: %r" % failures
        for name, c in clients.items():
            s = tf.session_of(c.local)
            assert s["reason"] == "error", (name, s)
        assert not backend.conns, "a connection without a valid header reached the backend"

        # v2 LOCAL (a balancer's health check): the connection's own address.
        c = client()
        c.send(pp_v2_local())
        c.greeting()
        c.ehlo()
        assert c.cmd("QUIT").code == 221
        s = tf.session_of(c.local)
        assert s["reason"] == "quit", s

        # v1 UNKNOWN (the PROXY spec: use the connection's own addresses).
        c = client()
        c.send(b"PROXY UNKNOWN\r\n")
        c.greeting()
        assert c.cmd("QUIT").code == 221
        assert tf.session_of(c.local)["reason"] == "quit"

        # v2 LOCAL with addresses (allowed; they are to be ignored).
        c = client()
        c.send(pp_v2("192.0.2.99", 9999, "192.0.2.1", 25, command=0x0))
        c.greeting()
        assert c.cmd("QUIT").code == 221
        s = tf.session_of(c.local)
        assert s["reason"] == "quit", s
        assert not [e for e in tf.events("session") if e.get("client") == "192.0.2.99:9999"], \
            "a LOCAL header's addresses were used"

        # v2 with TLVs after the addresses (ALPN "smtp", NOOP), sent one
        # byte at a time.
        tlv = b"\x01" + struct.pack("!H", 4) + b"smtp" + b"\x04" + struct.pack("!H", 2) + b"\0\0"
        hdr = pp_v2("192.0.2.33", 3333, "192.0.2.1", 25)
        hdr = hdr[:14] + struct.pack("!H", 12 + len(tlv)) + hdr[16:] + tlv
        c = client()
        for i in range(len(hdr)):
            c.send(hdr[i:i + 1])
            time.sleep(0.005)
        c.greeting()
        assert c.cmd("QUIT").code == 221
        assert tf.session_of("192.0.2.33:3333")["reason"] == "quit"

        # A valid v1 header and the first command in one write.
        c = client()
        c.send(pp_v1("192.0.2.44", 1234, "192.0.2.25", 25) + b"EHLO joined.test\r\n")
        c.greeting()
        assert c.read_reply().code == 250
        assert c.cmd("QUIT").code == 221
        assert tf.session_of("192.0.2.44:1234")["reason"] == "quit"

        # The header timeout (10 s; allowed up to 15 s from the connect).
        for name, c in (("silent", silent), ("partial", partial)):
            left = max(0.5, 15.0 - (time.monotonic() - t_start))
            closed, data, _ = closed_silently(c, left)
            waited = time.monotonic() - t_start
            assert closed and data == b"", (name, data, waited)
            assert waited >= 8.0, "%s closed after %.1fs, before the 10 s timeout" % (
                name, waited)
        for c in (silent, partial):
            s = tf.session_of(c.local)
            assert s["reason"] in ("timeout", "error"), s
    finally:
        for c in kept:
            c.close()


def test_s7_10_proxy_header_before_tls_handshake(tlsfront_factory, scripted_factory):
    backend = scripted_factory(ehlo=("PIPELINING",))
    tf = start_front(tlsfront_factory, backend.port, tls_port=True, tls_proxy=True)
    with Client(tf.tls_port, preamble=pp_v2("192.0.2.77", 2525, "192.0.2.1", 465),
                tls=True) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("QUIT").code == 221
    s = tf.session_of("192.0.2.77:2525")
    assert s["listener"] == "tls" and s["tls"].startswith("TLS1."), s
    # A TLS ClientHello where the header should be: closed, no reply.
    c = Client(tf.tls_port)
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            insecure_context().wrap_socket(c.sock)
    finally:
        c.close()
    s = tf.session_of(c.local)
    assert s["reason"] == "error", s


class BioTls:
    """A TLS client over a socket driven through memory BIOs, so the PROXY
    header and the ClientHello can leave in ONE write (as HAProxy may send
    them)."""

    def __init__(self, sock, first=b""):
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = insecure_context().wrap_bio(self.inc, self.out)
        self.buf = b""
        pending = first
        for _ in range(100):
            try:
                self.obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            data = pending + self.out.read()
            pending = b""
            if data:
                sock.sendall(data)
            if done:
                return
            chunk = sock.recv(65536)
            if not chunk:
                raise tfhelpers.Closed("closed during the handshake")
            self.inc.write(chunk)
        raise AssertionError("handshake not done in 100 rounds")

    def send(self, data):
        self.obj.write(data)
        self.sock.sendall(self.out.read())

    def read_line(self):
        for _ in range(1000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line.decode("latin-1")
            try:
                self.buf += self.obj.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            chunk = self.sock.recv(65536)
            if not chunk:
                raise tfhelpers.Closed(repr(self.buf))
            self.inc.write(chunk)
        raise AssertionError("no line")


def test_s7_10_proxy_header_and_client_hello_in_one_write(tlsfront_factory, scripted_factory):
    backend = scripted_factory(ehlo=("PIPELINING",))
    tf = start_front(tlsfront_factory, backend.port, tls_port=True, tls_proxy=True)
    sock = socket.create_connection((HOST, tf.tls_port), timeout=IO_TIMEOUT)
    try:
        t = BioTls(sock, first=pp_v1("192.0.2.78", 2526, "192.0.2.1", 465))
        assert t.read_line().startswith("220 "), t.buf
        t.send(b"QUIT\r\n")
        assert t.read_line().startswith("221 ")
    finally:
        sock.close()
    s = tf.session_of("192.0.2.78:2526")
    assert s["listener"] == "tls" and s["tls"].startswith("TLS1."), s


# ============================================================================
# §3.1 limits
# ============================================================================

def expect_limit(c):
    r = c.read_reply()
    assert r.code == 421 and r.enhanced == "4.7.0", r
    closed, rest, _ = closed_silently(c, 5)
    assert closed and rest == b"", rest
    return r


def admitted_again(port, source, tries=50):
    """A new connection from source is greeted 220 (bounded retry: the
    release of a closed session's slot is asynchronous)."""
    last = None
    for _ in range(tries):
        c = Client(port, source=source)
        r = c.read_reply()
        if r.code == 220:
            return c
        last = r
        c.close()
        time.sleep(0.1)
    raise AssertionError("still refused after %d tries: %r" % (tries, last))


def test_s3_1_limits_per_ip(tlsfront_factory, raw_backend):
    tf = start_front(tlsfront_factory, raw_backend.port, max_connections_per_ip=2,
                     tls_port=True)
    held = []
    try:
        for _ in range(2):
            c = Client(tf.port)
            c.greeting()
            held.append(c)
        with Client(tf.port) as third:
            r = expect_limit(third)
        s = tf.session_of(third.local)
        assert s["reason"] == "limit", s
        # §6: the refused session has its summary line, §7.5 byte counts.
        assert (s["bytes_in"], s["bytes_out"], s["messages"]) == ("0", str(len(r.raw)), "0"), s
        # On the TLS port: the handshake first, then the 421 over TLS.
        with Client(tf.tls_port, tls=True) as tls_third:
            assert tls_third.sock.version().startswith("TLSv1")
            r = expect_limit(tls_third)
        s = tf.session_of(tls_third.local)
        assert s["reason"] == "limit" and s["listener"] == "tls", s
        assert s["tls"].startswith("TLS1.") and s["bytes_out"] == str(len(r.raw)), s
        # Another address is still welcome.
        with Client(tf.port, source="127.0.0.2") as other:
            other.greeting()
            other.ehlo()
            assert other.cmd("QUIT").code == 221
        # Closing one frees its slot.
        held.pop(0).close()
        c = admitted_again(tf.port, HOST)
        held.append(c)
        # The refused sessions left the count exact: still two at most.
        with Client(tf.port) as c:
            expect_limit(c)
        # All closed: two fit again (nothing leaked).
        for c in held:
            c.close()
        held = [admitted_again(tf.port, HOST)]
        held.append(admitted_again(tf.port, HOST))
    finally:
        for c in held:
            c.close()


def test_s3_1_max_connections_across_workers(tlsfront_factory, raw_backend):
    """workers = 2 (SO_REUSEPORT spreads the connections): both limits are
    shared by all workers."""
    tf = start_front(tlsfront_factory, raw_backend.port, workers=2, max_connections=4,
                     max_connections_per_ip=2)
    held = []

    def refused(src):
        with Client(tf.port, source=src) as c:
            expect_limit(c)
        assert tf.session_of(c.local)["reason"] == "limit"

    try:
        for src in ("127.0.0.1", "127.0.0.1", "127.0.0.2"):
            c = Client(tf.port, source=src)
            c.greeting()
            held.append(c)
        refused("127.0.0.1")  # per ip
        c = Client(tf.port, source="127.0.0.3")
        c.greeting()
        held.append(c)
        for src in ("127.0.0.4", "127.0.0.2"):  # total 4
            refused(src)
        held.pop().close()
        held.append(admitted_again(tf.port, "127.0.0.5"))
    finally:
        for c in held:
            c.close()


def test_s3_1_limits_use_proxy_header_address(tlsfront_factory, raw_backend):
    tf = start_front(tlsfront_factory, raw_backend.port, tcp_proxy=True,
                     max_connections_per_ip=1, max_connections=4)
    # Connections closed for a bad header were never counted: they must not
    # be released either (the balancer's own address, 127.0.0.1, stays at 0).
    for _ in range(3):
        with Client(tf.port) as c:
            c.send(b"HELO nothing\r\n")
            assert closed_silently(c, 5)[:2] == (True, b"")
        tf.session_of(c.local)
    held = []

    def admitted(header):
        c = Client(tf.port)
        held.append(c)
        c.send(header)
        c.greeting()

    def refused(header):
        with Client(tf.port) as c:
            c.send(header)
            expect_limit(c)

    try:
        admitted(pp_v2_local())  # a health check: counted as 127.0.0.1
        refused(pp_v2_local())  # per_ip = 1 for 127.0.0.1
        admitted(pp_v1("198.51.100.9", 5000, "192.0.2.25", 25))
        # Same balancer address (127.0.0.1), another client: admitted.
        admitted(pp_v2("198.51.100.10", 5001, "192.0.2.25", 25))
        # Same client address from the header: over the limit.
        refused(pp_v2("198.51.100.9", 5002, "192.0.2.25", 25))
        # max_connections = 4: a fourth address fits; a fifth connection
        # is over the total before its header counts (closed unanswered).
        admitted(pp_v1("198.51.100.11", 5003, "192.0.2.25", 25))
        with Client(tf.port) as fifth:
            fifth.send(pp_v1("198.51.100.12", 5004, "192.0.2.25", 25))
            assert closed_silently(fifth, 30)[:2] == (True, b"")
    finally:
        for c in held:
            c.close()
    s = tf.session_of("198.51.100.9:5002")
    assert s["reason"] == "limit", s
    assert tf.session_of(fifth.local)["reason"] == "limit"


def test_s3_1_max_connections_counts_connections_awaiting_header(tlsfront_factory, raw_backend):
    """A connection still waiting for its PROXY header counts toward
    max_connections (not toward any address's limit: the balancer's address
    is not the client's). Over the total it is closed without a reply."""
    tf = start_front(tlsfront_factory, raw_backend.port, tcp_proxy=True,
                     max_connections=2, max_connections_per_ip=1)
    held = [Client(tf.port), Client(tf.port)]  # two silent: both held
    try:
        with Client(tf.port) as third:
            closed, data, _ = closed_silently(third, 30)
            assert (closed, data) == (True, b"")
        s = tf.session_of(third.local)
        assert s["reason"] == "limit" and s["bytes_out"] == "0", s
        # The first names its client: the hold becomes its admission.
        held[0].send(pp_v1("198.51.100.20", 5000, "192.0.2.25", 25))
        assert held[0].read_reply().code == 220
        # The second goes away: its place is free for a new connection,
        # whose header names another client (per-IP 1 is per client).
        held.pop().close()
        for _ in range(50):  # bounded retry: the close is asynchronous
            c = Client(tf.port, preamble=pp_v2("198.51.100.21", 5001, "192.0.2.25", 25))
            try:
                greeted = c.read_reply().code == 220
            except (tfhelpers.Closed, OSError):
                greeted = False
            if greeted:
                held.append(c)
                break
            c.close()
            time.sleep(0.1)
        else:
            raise AssertionError("the freed place was never given out:\n" + tf.log_text())
        # Both places taken again: the next connection is refused.
        with Client(tf.port) as fourth:
            assert closed_silently(fourth, 30)[:2] == (True, b"")
        assert tf.session_of(fourth.local)["reason"] == "limit"
    finally:
        for c in held:
            c.close()


def _all_stopped(pid):
    """Every thread of pid is stopped (state T): SIGSTOP has taken effect."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
        states = []
        for tid in tids:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
    except OSError:
        return False
    return bool(states) and all(st in ("T", "t") for st in states)


@pytest.mark.parametrize("tcp_proxy", [False, True], ids=["plain", "proxy_protocol"])
def test_s3_1_s6_connection_reset_before_accept_is_no_session(tlsfront_factory, raw_backend,
                                                               tcp_proxy):
    """A connection reset before tlsfront could ask its address (a balancer's
    health check: connect, then RST) is closed quietly: a debug line, no
    summary with a made-up client (it used to be client=unix), nothing
    counted against the limits under a zeroed address.

    Deterministic: tlsfront is stopped (SIGSTOP) while the connections are
    made and reset, so they are reset in the accept queue, and
    getpeername fails once it accepts them."""
    tf = start_front(tlsfront_factory, raw_backend.port, tcp_proxy=tcp_proxy,
                     max_connections=2, max_connections_per_ip=1)
    os.kill(tf.pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: _all_stopped(tf.pid), 5.0), "tlsfront did not stop"
        for _ in range(3):
            s = socket.create_connection((HOST, tf.port), timeout=IO_TIMEOUT,
                                         source_address=("127.0.0.2", 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST
    finally:
        os.kill(tf.pid, signal.SIGCONT)
    lost = tf.wait_event("connect_lost", 3)
    assert all(ev["level"] == "debug" for ev in lost), lost
    # A real client from the same address is admitted (max_connections_per_ip
    # = 1) and is the only session logged.
    preamble = pp_v1("192.0.2.9", 4000, "192.0.2.1", 25) if tcp_proxy else b""
    with Client(tf.port, source="127.0.0.2", preamble=preamble) as c:
        assert c.greeting().code == 220
        assert c.cmd("QUIT").code == 221
    summary = tf.session_of("192.0.2.9:4000" if tcp_proxy else c.local)
    assert summary["reason"] == "quit", summary
    assert len(tf.events("session")) == 1, tf.log_text()
    text = tf.log_text()
    for bad in ("=unix", "=unknown", "event=limit"):
        assert bad not in text, text
