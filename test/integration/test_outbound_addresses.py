"""Outbound next hop by name with several addresses (SPEC §4.1, §4.2.1).

A next hop name may resolve to several addresses (a smart host with IPv4
and IPv6, a cluster). As Postfix does, tlsfront tries them in turn: one
that refuses the connection is logged and the next is tried; only when
every one failed does the legacy server get 421 4.4.1.

The name comes from a hosts file bind-mounted over /etc/hosts in a mount
namespace of the test's own (unshare -m), so nothing outside changes.
"""
import os
import shutil
import smtplib
import socket
import subprocess
import sys

import pytest

import tfhelpers
from tfhelpers import IO_TIMEOUT, RecordingHandler

MSG = b"From: a@legacy.test\r\nTo: b@peer.test\r\nSubject: addresses\r\n\r\nhello\r\n"
NAME = "multi.peer.test"


def test_s4_2_next_hop_name_tries_each_address(tmp_path, tlsfront_bin):
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        pytest.skip("needs root, unshare and mount for a private /etc/hosts")
    r = subprocess.run(["unshare", "-m", sys.executable, os.path.abspath(__file__),
                        "--child", str(tmp_path), tlsfront_bin],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0 and "ADDRESSES-OK" in out, out


def _child(tmp, binary):
    """Runs inside `unshare -m`: /etc/hosts is ours alone."""
    os.environ["TLSFRONT_BIN"] = binary
    hosts = os.path.join(tmp, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n127.0.0.1 %s\n127.0.0.9 %s\n" % (NAME, NAME))
    subprocess.run(["mount", "--make-rprivate", "/"], check=False, timeout=30)
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True, timeout=30)
    port = tfhelpers.free_port()
    # The resolver's order decides which address is tried first: nothing
    # listens on that one, the peer listens on the other.
    order = []
    for ai in socket.getaddrinfo(NAME, port, socket.AF_INET, socket.SOCK_STREAM):
        if ai[4][0] not in order:
            order.append(ai[4][0])
    assert sorted(order) == ["127.0.0.1", "127.0.0.9"], order
    dead, live = order

    from aiosmtpd.controller import Controller
    handler = RecordingHandler()
    peer = Controller(handler, hostname=live, port=port, ready_timeout=10.0,
                      server_hostname="peer.test")
    peer.start()
    out_port = tfhelpers.free_port()
    text = f"""server_name = "out.test";
workers = 1;
backend = {{ address = "127.0.0.1:{tfhelpers.free_port()}"; }};
inbound = {{ tcp = {{ listen = [ "127.0.0.1:{tfhelpers.free_port()}" ]; }}; }};
outbound = {{ enabled = true; listen = [ "127.0.0.1:{out_port}" ];
  next_hop = "{NAME}:{port}"; tls = "negotiated"; }};
"""
    tf = tfhelpers.TlsFront(tmp, text, name="addresses")
    try:
        with smtplib.SMTP("127.0.0.1", out_port, timeout=IO_TIMEOUT) as s:
            assert s.ehlo("legacy.test")[0] == 250
            s.sendmail("a@legacy.test", ["b@peer.test"], MSG)
            s.quit()
        assert tfhelpers.wait_until(lambda: len(handler.messages) >= 1, 10.0)
        failed = tf.wait_event("peer_unavailable")
        assert failed[0]["peer"] == "%s:%d" % (dead, port), failed
        assert failed[0].get("next") == "address", failed
        summary = tf.wait_event("session")[0]
        assert summary["peer"] == "%s:%d" % (live, port), summary
        assert summary["reason"] == "quit", summary

        # Every address refuses: 421 4.4.1, the message stays queued.
        peer.stop()
        peer = None
        try:
            smtplib.SMTP("127.0.0.1", out_port, timeout=IO_TIMEOUT)
            raise AssertionError("connected with no peer address answering")
        except smtplib.SMTPConnectError as e:
            assert e.smtp_code == 421 and e.smtp_error.startswith(b"4.4.1"), e
        tried = [x["peer"] for x in tf.events("peer_unavailable")[1:]]
        assert tried == ["%s:%d" % (dead, port), "%s:%d" % (live, port)], tried
        print("ADDRESSES-OK")
    finally:
        if peer:
            peer.stop()
        tf.stop(timeout=10)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    _child(*sys.argv[2:])
