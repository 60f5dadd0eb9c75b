"""A 20 MiB message over STARTTLS (SPEC §3.7: "tlsfront never buffers a
whole message"): delivered byte-identical, with a bounded peak RSS."""
import base64
import random
import smtplib

import pytest

from tfhelpers import insecure_context, is_sanitized_build, tlsfront_bin

SIZE = 20 * 1024 * 1024
# Peak RSS (VmHWM) bound of a plain (unsanitized) build, in KiB. Measured on
# Debian 12 (gcc -O2, GnuTLS 3.7.9, glibc 2.36): about 5.8 MiB before the
# transfer and 10.1 to 12.7 MiB after it (it varies from run to run and
# plateaus there over repeated 20 MiB messages). A build that buffered the
# message whole would need at least 5.8 + 20 MiB; the bound leaves room for
# allocator noise and stays far below that. (ASan build: 14 MiB before,
# about 156 MiB after: shadow memory and quarantine, so not checked.)
RSS_BOUND_KIB = 16 * 1024


def big_message(size=SIZE, seed=20):
    """CRLF lines of random printable text (at most 900 octets, below
    aiosmtpd's 1001), every 7th one starting with a dot."""
    rng = random.Random(seed)
    text = base64.b64encode(rng.randbytes(size * 3 // 4 + 1024))
    header = b"From: big@example.org\r\nTo: rcpt@example.net\r\nSubject: 20 MiB\r\n\r\n"
    lines = [header]
    total = len(header)
    pos = 0
    n = 0
    while total < size:
        length = rng.randint(0, 900)
        line = text[pos:pos + length]
        pos += length
        if pos >= len(text):
            pos = 0
        if n % 7 == 0:
            line = b"." + line[1:]
        if n % 97 == 0:
            line = b"."  # a lone dot line: must be stuffed and unstuffed
        lines.append(line + b"\r\n")
        total += len(line) + 2
        n += 1
    return b"".join(lines)


def test_s3_7_twenty_mib_message_over_starttls(front, aiosmtpd_backend):
    msg = big_message()
    assert len(msg) >= SIZE
    with smtplib.SMTP("127.0.0.1", front.port, local_hostname="big.test", timeout=120) as s:
        s.ehlo()
        s.starttls(context=insecure_context())
        s.ehlo()
        # Before the transfer: what tlsfront needs to serve one TLS session.
        before_kib = front.vm_hwm_kib()
        assert s.sendmail("big@example.org", ["rcpt@example.net"], msg) == {}
        after_kib = front.vm_hwm_kib()
        s.quit()
    assert aiosmtpd_backend.wait_messages(1, timeout=30)
    got = aiosmtpd_backend.messages[0]["content"]
    assert len(got) == len(msg)
    assert got == msg
    summary = front.wait_event("session")[0]
    assert summary["messages"] == "1"
    assert int(summary["bytes_in"]) > len(msg)

    print("tlsfront VmHWM: %d KiB before, %d KiB after the 20 MiB message (%s)"
          % (before_kib, after_kib, tlsfront_bin()))
    if is_sanitized_build(tlsfront_bin()):
        pytest.skip("sanitized build (VmHWM %d KiB): RSS bound not checked" % after_kib)
    assert after_kib < RSS_BOUND_KIB, "peak RSS %d KiB >= %d KiB" % (after_kib, RSS_BOUND_KIB)
