"""SMTP smuggling defence (SPEC §3.7) against a lenient legacy backend, and
the content round trip through a strict one."""
import time

import pytest

from tfhelpers import send_message

HEADER = b"From: a@x\r\nTo: b@y\r\nSubject: smuggle\r\n\r\nhello"
SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n"
TRUE_END = b"\r\n.\r\n"

# Each fake end of data, and what the backend must receive instead (as on
# the wire, dot-stuffed): lines end only at CRLF; a leading dot of a true
# line is removed; bare CR/LF become CRLF; a line starting with "." now gets
# one more dot (§3.7 "sanitize").
VARIANTS = {
    "LF.LF": (b"\n.\n", b"hello\r\n..\r\nMAIL"),
    "CR.CR": (b"\r.\r", b"hello\r\n..\r\nMAIL"),
    "LF.CRLF": (b"\n.\r\n", b"hello\r\n..\r\nMAIL"),
    "CRLF.LF": (b"\r\n.\n", b"hello\r\n\r\nMAIL"),
}


def smuggling_content(sep):
    return HEADER + sep + SMUGGLED + TRUE_END


def no_bare_newline(data):
    rest = data.replace(b"\r\n", b"")
    return b"\r" not in rest and b"\n" not in rest


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_s3_7_smuggling_sanitized(tlsfront_factory, raw_backend, variant):
    sep, expected_middle = VARIANTS[variant]
    tf = tlsfront_factory(raw_backend.port, bare_newlines="sanitize")
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        r = send_message(c, "good@x", "rcpt@y", smuggling_content(sep))
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
    tf.session_of(c.local)
    cmds = raw_backend.command_texts()
    assert cmds[-1] == "QUIT", cmds  # the backend read everything
    assert len(raw_backend.messages) == 1, raw_backend.messages
    assert "MAIL FROM:<evil@x>" not in cmds, cmds
    assert "RCPT TO:<victim@y>" not in cmds, cmds
    assert cmds.count("DATA") == 1, cmds
    [content] = raw_backend.messages
    expected = (b"From: a@x\r\nTo: b@y\r\nSubject: smuggle\r\n\r\n" + expected_middle
                + SMUGGLED[4:] + b"\r\n")
    assert content == expected
    assert no_bare_newline(bytes(raw_backend.raw[0])), bytes(raw_backend.raw[0])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_s3_7_smuggling_rejected(tlsfront_factory, raw_backend, variant):
    sep, _ = VARIANTS[variant]
    tf = tlsfront_factory(raw_backend.port, bare_newlines="reject")
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        r = send_message(c, "good@x", "rcpt@y", smuggling_content(sep))
        assert r.code == 550 and r.enhanced == "5.5.2", r
        r = c.read_reply()
        assert r.code == 421 and r.enhanced == "4.7.0", r
        assert c.read_until_closed(5) == b""
    assert tf.session_of(c.local)["reason"] == "policy"
    assert raw_backend.messages == []
    cmds = raw_backend.command_texts()
    assert "MAIL FROM:<evil@x>" not in cmds, cmds
    assert "RCPT TO:<victim@y>" not in cmds, cmds
    assert tf.events("backend_dropped"), tf.log_text()


def test_s3_7_reject_mode_clean_message_delivered(tlsfront_factory, raw_backend):
    tf = tlsfront_factory(raw_backend.port, bare_newlines="reject")
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        r = send_message(c, "good@x", "rcpt@y", b"Subject: ok\r\n\r\n..dot\r\nbody\r\n.\r\n")
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
    assert raw_backend.messages == [b"Subject: ok\r\n\r\n..dot\r\nbody\r\n"]


def test_s3_7_sanitize_round_trip_strict_backend(front, aiosmtpd_backend):
    # bare LF and bare CR; stuffed dot lines (one of them a lone dot).
    sent = (b"Subject: strict\r\n\r\nline1\nline2\rline3\r\n"
            b"..dotted line\r\n...two dots\r\nx\n.\ny\r\n..\r\nend\r\n.\r\n")
    expected = (b"Subject: strict\r\n\r\nline1\r\nline2\r\nline3\r\n"
                b".dotted line\r\n..two dots\r\nx\r\n.\r\ny\r\n.\r\nend\r\n")
    with front.connect() as c:
        c.greeting()
        c.ehlo()
        assert send_message(c, "a@x", "b@y", sent).code == 250
        assert c.cmd("QUIT").code == 221
    assert aiosmtpd_backend.wait_messages(1)
    assert aiosmtpd_backend.messages[0]["content"] == expected


def send_in_pieces(c, data, size=1, pause=0.001):
    for i in range(0, len(data), size):
        c.send(data[i:i + size])
        time.sleep(pause)


@pytest.mark.parametrize("mode", ["sanitize", "reject"])
@pytest.mark.parametrize("variant", ["CR.CR", "CRLF.LF"])
def test_s3_7_smuggling_byte_by_byte(tlsfront_factory, raw_backend, mode, variant):
    # The same attack, one octet per write: the scanner keeps its state
    # across reads.
    sep, expected_middle = VARIANTS[variant]
    tf = tlsfront_factory(raw_backend.port, bare_newlines=mode)
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("MAIL FROM:<good@x>").code == 250
        assert c.cmd("RCPT TO:<rcpt@y>").code == 250
        assert c.cmd("DATA").code == 354
        send_in_pieces(c, smuggling_content(sep))
        r = c.read_reply()
        if mode == "sanitize":
            assert r.code == 250, r
            assert c.cmd("QUIT").code == 221
        else:
            assert r.code == 550 and r.enhanced == "5.5.2", r
            r = c.read_reply()
            assert r.code == 421 and r.enhanced == "4.7.0", r
    tf.session_of(c.local)
    cmds = raw_backend.command_texts()
    assert "MAIL FROM:<evil@x>" not in cmds, cmds
    if mode == "sanitize":
        assert raw_backend.messages == [b"From: a@x\r\nTo: b@y\r\nSubject: smuggle\r\n\r\n"
                                        + expected_middle + SMUGGLED[4:] + b"\r\n"]
    else:
        assert raw_backend.messages == []


def test_s3_7_long_lines_and_any_octet(tlsfront_factory, raw_backend):
    # §3.7: content lines of any length holding any octet but bare CR/LF.
    octets = bytes(b for b in range(256) if b not in (10, 13))
    long_line = (octets * 1200)[:300000]  # 300 kB in one line
    content = b"Subject: octets\r\n\r\n" + long_line + b"\r\n" + octets + b"\r\n"
    tf = tlsfront_factory(raw_backend.port, bare_newlines="reject")
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        wire = content.replace(b"\r\n.", b"\r\n..") + b".\r\n"
        assert send_message(c, "a@x", "b@y", wire).code == 250
        assert c.cmd("QUIT").code == 221
    assert raw_backend.messages == [content.replace(b"\r\n.", b"\r\n..")]
