"""STARTTLS (SPEC §3.4, §3.5) and the TLS layer (§5) with Python clients."""
import smtplib
import ssl

import pytest

from tfhelpers import (SmtpClient, insecure_context, run_tool, send_message)

MESSAGE = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hello\r\n\r\n"
           b"first line\r\n.a line that starts with a dot\r\n\r\nlast line\r\n")


def smtplib_client(port):
    return smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)


def test_s3_4_s3_5_smtplib_starttls_delivers(front, aiosmtpd_backend):
    # aiosmtpd itself does not offer STARTTLS: tlsfront adds it (§3.4).
    with smtplib_client(aiosmtpd_backend.port) as direct:
        direct.ehlo()
        assert not direct.has_extn("starttls")
        direct.quit()

    with smtplib_client(front.port) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("starttls")
        code, reply = s.starttls(context=insecure_context())
        assert code == 220 and reply.startswith(b"2.0.0"), reply
        code, _ = s.ehlo()
        assert code == 250
        assert not s.has_extn("starttls"), s.esmtp_features
        assert s.sock.version() == "TLSv1.3"
        refused = s.sendmail("a@example.org", ["b@example.net"], MESSAGE)
        assert refused == {}
        s.quit()

    assert aiosmtpd_backend.wait_messages(1)
    [msg] = aiosmtpd_backend.messages
    assert msg["mail_from"] == "a@example.org"
    assert msg["rcpt_tos"] == ["b@example.net"]
    assert msg["content"] == MESSAGE

    [tls] = front.wait_event("tls")
    assert tls["tls"] == "TLS1.3"
    [summary] = front.wait_event("session")
    assert summary["messages"] == "1"
    assert summary["reason"] == "quit"
    assert summary["tls"] == "TLS1.3"


def test_s3_5_tls12_works(front):
    with front.connect() as c:
        c.greeting()
        c.ehlo()
        c.starttls(insecure_context(max_version=ssl.TLSVersion.TLSv1_2))
        assert c.sock.version() == "TLSv1.2"
        r = c.ehlo()
        assert "STARTTLS" not in r.keywords()
        assert c.cmd("QUIT").code == 221
        summary = front.session_of(c.local)
    assert summary["tls"] == "TLS1.2"
    assert [e["tls"] for e in front.events("tls")] == ["TLS1.2"]


def peer_certificate_text(port, tmp_path):
    with SmtpClient(port) as c:
        c.greeting()
        c.ehlo()
        c.starttls(insecure_context())
        der = c.sock.getpeercert(binary_form=True)
        c.cmd("QUIT")
    pem = tmp_path / "peer.pem"
    pem.write_text(ssl.DER_cert_to_PEM_cert(der))
    out = run_tool(["openssl", "x509", "-in", str(pem), "-noout", "-subject", "-issuer",
                    "-ext", "subjectAltName", "-text"], timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def test_s5_default_self_signed_certificate_names_server_name(tlsfront_factory,
                                                               aiosmtpd_backend, tmp_path):
    tf = tlsfront_factory(aiosmtpd_backend.port, server_name="relay.example.test")
    text = peer_certificate_text(tf.port, tmp_path)
    assert "subject=CN = relay.example.test" in text, text
    assert "issuer=CN = relay.example.test" in text, text  # self-signed
    assert "DNS:relay.example.test" in text, text
    assert "id-ecPublicKey" in text and "prime256v1" in text, text  # ECDSA P-256
    assert "event=self_signed_certificate" in tf.log_text()


def tls_session(port, ctx):
    """EHLO, STARTTLS with ctx; returns the client (TLS) or raises ssl.SSLError."""
    c = SmtpClient(port)
    try:
        c.greeting()
        c.ehlo()
        c.starttls(ctx)
        return c
    except BaseException:
        c.close()
        raise


def test_s5_alpn_without_smtp_fails_handshake(front):
    c = SmtpClient(front.port)
    with c:
        c.greeting()
        c.ehlo()
        with pytest.raises(ssl.SSLError) as exc:
            c.starttls(insecure_context(alpn=["h2"]))
        text = str(exc.value).upper().replace("_", " ")
        assert "NO APPLICATION PROTOCOL" in text, exc.value
    summary = front.session_of(c.local)
    assert summary["reason"] == "tls_error"  # §7.5


@pytest.mark.parametrize("offer", [["smtp"], ["h2", "smtp"]])
def test_s5_alpn_smtp_selected(front, offer):
    with tls_session(front.port, insecure_context(alpn=offer)) as c:
        assert c.sock.selected_alpn_protocol() == "smtp"
        c.ehlo()
        assert c.cmd("QUIT").code == 221


def test_s5_no_alpn_served(front):
    with tls_session(front.port, insecure_context()) as c:
        assert c.sock.selected_alpn_protocol() is None
        c.ehlo()
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221


def test_s3_5_starttls_injection_discarded(tlsfront_factory, raw_backend):
    tf = tlsfront_factory(raw_backend.port)
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        c.send(b"STARTTLS\r\nMAIL FROM:<x@y>\r\n")  # one write: CVE-2011-0411
        r = c.read_reply()
        assert r.code == 220 and r.enhanced == "2.0.0", r
        assert c.buf == b"", c.buf
        c.sock = insecure_context().wrap_socket(c.sock)
        r = c.ehlo()
        assert "STARTTLS" not in r.keywords()
        assert send_message(c, "ok@y", "rcpt@z", b"Subject: t\r\n\r\nbody\r\n.\r\n").code == 250
        assert c.cmd("QUIT").code == 221
    tf.session_of(c.local)
    cmds = raw_backend.command_texts()
    assert "MAIL FROM:<x@y>" not in cmds, cmds
    assert "MAIL FROM:<ok@y>" in cmds, cmds
    assert not raw_backend.saw_command("STARTTLS"), cmds  # §3.5: never passed on
    # RFC 3207 §4.2: after the handshake tlsfront resets the backend.
    assert cmds.index("RSET") < cmds.index("EHLO client.test", 1), cmds
    [inj] = tf.wait_event("starttls_injection")
    assert int(inj["discarded"]) == len(b"MAIL FROM:<x@y>\r\n")


def test_s3_5_commands_before_new_ehlo_refused(front, aiosmtpd_backend):
    with front.connect() as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("MAIL FROM:<plain@x>").code == 250  # forgotten by the RSET
        c.starttls(insecure_context())
        r = c.cmd("MAIL FROM:<a@b>")
        assert r.code == 503 and r.enhanced == "5.5.1", r
        r = c.cmd("RCPT TO:<c@d>")
        assert r.code == 503 and r.enhanced == "5.5.1", r
        assert c.cmd("NOOP").code == 250  # allowed before EHLO
        c.ehlo()
        assert send_message(c, "a@b", "c@d", b"Subject: t\r\n\r\nx\r\n.\r\n").code == 250
        assert c.cmd("QUIT").code == 221
    assert aiosmtpd_backend.wait_messages(1)
    assert aiosmtpd_backend.messages[0]["mail_from"] == "a@b"
    assert "a@b" in aiosmtpd_backend.handler.mail_from


def test_s3_5_starttls_state_replies(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port)
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        r = c.cmd("STARTTLS now")
        assert r.code == 501 and r.enhanced == "5.5.4", r
        c.starttls(insecure_context())
        c.ehlo()
        r = c.cmd("STARTTLS")
        assert r.code == 503 and r.enhanced == "5.5.1", r
        assert c.cmd("QUIT").code == 221

    off = tlsfront_factory(aiosmtpd_backend.port, starttls=False)
    with off.connect() as c:
        c.greeting()
        r = c.ehlo()
        assert "STARTTLS" not in r.keywords(), r
        r = c.cmd("STARTTLS")
        assert r.code == 502 and r.enhanced == "5.5.1", r
        assert c.cmd("QUIT").code == 221
