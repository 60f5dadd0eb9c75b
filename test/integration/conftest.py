"""Fixtures of tlsfront's integration tests (SPEC §2, §3, §5, §6, §7).

- aiosmtpd_backend: a real, strict SMTP server (aiosmtpd) recording every
  message's envelope and exact content bytes;
- raw_backend_factory: the scriptable lenient backend of tfhelpers.RawBackend
  (a broken legacy server, or one that closes mid-session);
- tlsfront_factory: starts tlsfront with a config written into tmp_path,
  waits for event=listening, and at teardown stops it and fails the test if
  its log holds a sanitizer report.

The binary is $TLSFRONT_BIN (meson sets it), else build/tlsfront of this checkout.
"""
import os
import sys

import pytest

import postfix_backend
import tfhelpers


def pytest_report_header(config):
    lines = ["tlsfront binary: %s" % tfhelpers.tlsfront_bin()]
    if postfix_backend.in_ci():  # postfix_backend.require_or_skip()
        lines.append("CI=true: a missing Postfix or HAProxy fails its tests")
    return lines


@pytest.fixture(scope="session")
def tlsfront_bin():
    path = tfhelpers.tlsfront_bin()
    if not os.access(path, os.X_OK):
        pytest.fail("tlsfront binary %s not found or not executable (set TLSFRONT_BIN)" % path)
    return path


@pytest.fixture
def aiosmtpd_backend():
    backend = tfhelpers.AiosmtpdBackend()
    yield backend
    backend.stop()


@pytest.fixture
def raw_backend_factory():
    make = tfhelpers.Makes(tfhelpers.RawBackend)
    yield make
    make.stop_all()


@pytest.fixture
def raw_backend(raw_backend_factory):
    return raw_backend_factory()


@pytest.fixture
def tlsfront_factory(tmp_path, tlsfront_bin):
    """tlsfront_factory(backend_port, **make_config options) or
    tlsfront_factory(config_text=...): a running tfhelpers.TlsFront."""
    started = []

    def start(backend_port=None, config_text=None, **options):
        # listen_port defaults to 0: the kernel picks it, tlsfront logs it.
        if config_text is None:
            config_text = tfhelpers.make_config(backend_port, **options)
        try:
            tf = tfhelpers.TlsFront(str(tmp_path), config_text,
                                    name="tlsfront%d" % len(started))
        except tfhelpers.StartError as e:
            started.append(e.tf)
            raise
        started.append(tf)
        return tf

    yield start

    reports = []
    for tf in started:
        if tf.running():
            try:
                tf.stop(timeout=10)
            except AssertionError:
                pass
        tf.kill()
        bad = tf.sanitizer_lines()
        if bad:
            reports.append("%s:\n%s\n---- full log ----\n%s"
                           % (tf.log_path, "\n".join(bad[:20]), tf.log_text()[-20000:]))
    assert not reports, "sanitizer report in tlsfront's log:\n" + "\n".join(reports)


@pytest.fixture
def front(tlsfront_factory, aiosmtpd_backend):
    """tlsfront in front of aiosmtpd with the default test configuration."""
    return tlsfront_factory(aiosmtpd_backend.port)


@pytest.fixture
def figures(request, capsys, tlsfront_bin):
    """figures(key=value, ...): one "FIGURES test=NAME key=value ..." line on
    the real stdout (past pytest's capture, so meson's testlog has it) and in
    $TLSFRONT_FIGURES; returns the line for assertion messages. Used by the
    abuse and soak tests."""
    build = "sanitized" if tfhelpers.is_sanitized_build(tlsfront_bin) else "plain"

    def report(**values):
        line = "FIGURES test=%s build=%s %s" % (
            request.node.name, build, " ".join("%s=%s" % kv for kv in values.items()))
        with capsys.disabled():
            sys.stdout.write("\n" + line + "\n")
            sys.stdout.flush()
        path = os.environ.get("TLSFRONT_FIGURES")
        if path:
            with open(path, "a") as f:
                f.write(line + "\n")
        return line
    return report
