"""TLS details (SPEC §2 tls, §3.5 handshake failure, §5, §6, §7.5): several
certificates chosen by SNI, TLS 1.3 session tickets shared by the workers,
handshake failure and timeout, TLS 1.0 and 1.1 never negotiated."""
import ssl
import subprocess
import time

import pytest

from tfhelpers import HOST, SmtpClient, free_port, insecure_context, make_config, run_tool, \
    tlsfront_bin, wait_until


def make_cert(directory, name, key_type="ec"):
    """A self-signed certificate for name (CN and DNS SAN) made by openssl."""
    key = directory / (name + ".key")
    crt = directory / (name + ".pem")
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ec" \
        else ["-newkey", "rsa:2048"]
    out = run_tool(["openssl", "req", "-x509", "-nodes", *newkey, "-keyout", str(key),
                    "-out", str(crt), "-subj", "/CN=" + name,
                    "-addext", "subjectAltName=DNS:" + name, "-days", "2"], timeout=60)
    assert out.returncode == 0, out.stderr
    return crt, key


def tls_config(pairs, handshake_timeout=10):
    certs = ", ".join('{ cert = "%s"; key = "%s"; }' % (c, k) for c, k in pairs)
    return ('tls = { certificates = ( %s ); priority = "NORMAL"; handshake_timeout = %d; };'
            % (certs, handshake_timeout))


def served_cn(port, sni, ctx=None):
    with SmtpClient(port) as c:
        c.greeting()
        c.ehlo()
        c.starttls(ctx or insecure_context(), server_hostname=sni)
        der = c.sock.getpeercert(binary_form=True)
        c.ehlo()
        assert c.cmd("QUIT").code == 221
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    out = run_tool(["openssl", "x509", "-noout", "-subject"], input_bytes=pem, timeout=30)
    return out.stdout.decode().strip().replace("subject=CN = ", "")


def test_s5_certificates_chosen_by_sni(tlsfront_factory, aiosmtpd_backend, tmp_path):
    first = make_cert(tmp_path, "first.test")
    second = make_cert(tmp_path, "second.test")
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=tls_config([first, second]))
    assert "event=self_signed_certificate" not in tf.log_text()
    assert served_cn(tf.port, "second.test") == "second.test"
    assert served_cn(tf.port, "first.test") == "first.test"
    # §5: an SNI that matches no certificate gets the first one listed.
    assert served_cn(tf.port, "nomatch.test") == "first.test"
    assert served_cn(tf.port, None) == "first.test"
    snis = [s["sni"] for s in tf.wait_event("session", n=4)]
    assert snis == ["second.test", "first.test", "nomatch.test", "none"], snis


def test_s2_check_reads_certificate_files(tmp_path):
    from tfhelpers import make_config, tlsfront_bin
    good = make_cert(tmp_path, "good.test")
    path = tmp_path / "good.conf"
    path.write_text(make_config(2525, tls=tls_config([good])))
    assert run_tool([tlsfront_bin(), "-t", "-c", str(path)]).returncode == 0
    missing = (tmp_path / "missing.pem", good[1])
    path = tmp_path / "bad.conf"
    path.write_text(make_config(2525, tls=tls_config([missing])))
    out = run_tool([tlsfront_bin(), "-t", "-c", str(path)])
    assert out.returncode == 1
    assert out.stderr.decode().startswith(str(path) + ":"), out.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_s5_tls13_session_resumption(tlsfront_factory, aiosmtpd_backend, workers):
    tf = tlsfront_factory(aiosmtpd_backend.port, workers=workers)
    ctx = insecure_context()
    session = None
    resumed = []
    for i in range(6):  # with two workers, both get some of the connections
        with SmtpClient(tf.port) as c:
            c.greeting()
            c.ehlo()
            c.cmd("STARTTLS")
            c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.test", session=session)
            c.ehlo()  # the server's tickets arrive with the first records
            assert c.cmd("QUIT").code == 221
            if i:
                resumed.append(c.sock.session_reused)
            session = c.sock.session
            assert session is not None and session.has_ticket
    # A ticket made by one worker is good on the other (shared ticket key).
    assert all(resumed), resumed


def test_s3_5_handshake_failure_closes(tlsfront_factory, raw_backend):
    tf = tlsfront_factory(raw_backend.port)
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        c.send(b"EHLO this is not a ClientHello\r\n" * 4)
        data = c.read_until_closed(5)
        assert b"250" not in data
    assert tf.session_of(c.local)["reason"] == "tls_error"  # §7.5
    assert not raw_backend.saw_command("EHLO this")
    assert not raw_backend.saw_command("RSET")


def test_s3_5_handshake_timeout(tlsfront_factory, raw_backend):
    tf = tlsfront_factory(raw_backend.port, tls="tls = { handshake_timeout = 1; };")
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        t0 = time.monotonic()
        assert c.read_until_closed(6) == b""
        assert 0.5 <= time.monotonic() - t0 <= 4
    assert tf.session_of(c.local)["reason"] == "timeout"  # §7.5


def test_s5_renegotiation_refused(tlsfront_factory, aiosmtpd_backend):
    # openssl s_client starts a TLS 1.2 renegotiation on a line "R".
    tf = tlsfront_factory(aiosmtpd_backend.port)
    proc = subprocess.Popen(["openssl", "s_client", "-starttls", "smtp", "-tls1_2",
                             "-connect", "127.0.0.1:%d" % tf.port],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        tf.wait_event("tls")
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        tf.wait_event("tls_renegotiation_refused", timeout=5)
        try:
            proc.stdin.write(b"QUIT\r\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # the client gave up on its own
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert b"RENEGOTIATING" in out, out
    # Refused: no second handshake ever completed.
    assert len(tf.events("tls")) == 1, tf.log_text()
    assert tf.wait_event("session")[0]["tls"] == "TLS1.2"


# ---- §6 tls=TLS1.3|TLS1.2|none: TLS 1.0 and 1.1 are never negotiated ----------------------

OLD_TLS = ["NORMAL:-VERS-ALL:+VERS-TLS1.1", "NORMAL:-VERS-ALL:+VERS-TLS1.0"]
TLS12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2"


def both_ports_config(backend_port, tls_port, priority):
    """The TCP port (port 0) and the TLS port, with tls.priority = priority."""
    return make_config(backend_port, tls='tls = { priority = "%s"; handshake_timeout = 10; };'
                       % priority).replace(
        "inbound = { tcp = {",
        'inbound = { tls = { enabled = true; listen = [ "127.0.0.1:%d" ]; }; tcp = {' % tls_port)


def gnutls_cli(port, priority, starttls):
    args = ["gnutls-cli", "--insecure", "--priority", priority, "-p", str(port), HOST]
    if starttls:
        args[1:1] = ["--starttls-proto=smtp"]
    p = run_tool(args, input_bytes=b"QUIT\r\n", timeout=30)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


@pytest.mark.parametrize("server_priority", ["NORMAL", "NORMAL:%COMPAT", "SECURE256",
                                             "NORMAL:+VERS-TLS1.1:+VERS-TLS1.0"])
def test_s6_tls10_and_tls11_refused(tlsfront_factory, aiosmtpd_backend, server_priority):
    """Whatever tls.priority says, a client that offers only TLS 1.1 or 1.0
    fails the handshake, after STARTTLS and on the TLS port; TLS 1.2 works
    on both."""
    tls_port = free_port()
    tf = tlsfront_factory(config_text=both_ports_config(aiosmtpd_backend.port, tls_port,
                                                        server_priority))
    assert wait_until(lambda: [e for e in tf.events("listening")
                               if e.get("address") == "127.0.0.1:%d" % tls_port], 5)
    for port, starttls in ((tf.port, True), (tls_port, False)):
        for prio in OLD_TLS:
            rc, out = gnutls_cli(port, prio, starttls)
            # tlsfront answers with a protocol_version alert.
            assert rc != 0 and "Handshake was completed" not in out, (port, prio, out[-2000:])
            assert "protocol version" in out or "Handshake failed" in out, out[-2000:]
    assert tf.events("tls") == [], tf.log_text()[-4000:]
    sessions = tf.wait_event("session", n=4)
    assert [s["tls"] for s in sessions] == ["none"] * 4, sessions
    assert [s["reason"] for s in sessions] == ["tls_error"] * 4, sessions
    for port, starttls in ((tf.port, True), (tls_port, False)):
        rc, out = gnutls_cli(port, TLS12, starttls)
        assert rc == 0 and "Handshake was completed" in out, (port, out[-2000:])
    assert [e["tls"] for e in tf.wait_event("tls", n=2)] == ["TLS1.2", "TLS1.2"]


@pytest.mark.parametrize("priority", OLD_TLS + ["NORMAL:-VERS-TLS-ALL:+VERS-DTLS1.2"])
def test_s2_priority_without_tls12_or_13_is_config_error(tmp_path, priority):
    path = tmp_path / "old.conf"
    path.write_text('backend = { address = "127.0.0.1:2525"; };\n'
                    'tls = {\n  priority = "%s";\n};\n' % priority)
    out = run_tool([tlsfront_bin(), "-t", "-c", str(path)])
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert err.startswith("%s:3: tls.priority: " % path), err
    assert "neither TLS 1.2 nor TLS 1.3" in err, err
