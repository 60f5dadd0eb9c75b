#!/usr/bin/python3
"""A scriptable test milter (issue 14), written with python3-milter.

    /usr/bin/python3 milter_script.py --socket inet:PORT@127.0.0.1 \
        --rules RULES.json --log LOG.jsonl [--name NAME]

(--socket unix:/path works too.) test_milters.py starts it as a subprocess
and waits until its socket listens; SIGTERM stops it (libmilter's own
signal handling).

RULES.json is an object; every key is optional:

  "actions": a list of rules; at each event the first rule whose "at" is
      the event and whose "match" (a case-insensitive substring of the
      event's argument: the HELO name, the MAIL or RCPT address, a
      header's "Name: value"; no "match": any) fits decides the answer:
        {"at": "rcpt", "match": "blocked@", "result": "reject",
         "reply": ["550", "5.7.1", "No such user here"]}
      at: connect helo mail rcpt data header eoh body eom
      result: continue (the default) accept reject tempfail discard
      reply: [code, enhanced code or null, text, more lines...]: setreply
      sleep: seconds to sleep before answering ("never answer": sleep
             past the MTA's timeout); at eom the edits come after it.
  "edits": what to change at end of message (before the eom rule's result),
      in order, each an object with "op":
        {"op": "addheader", "name": N, "value": V}
        {"op": "insheader", "index": I, "name": N, "value": V}
        {"op": "chgheader", "name": N, "index": I, "value": V}  (I: 1-based)
        {"op": "delheader", "name": N, "index": I}   (chgheader to nothing)
        {"op": "replacebody", "body": TEXT}
        {"op": "chgfrom", "addr": "<a@b>", "params": "SIZE=1" or null}
        {"op": "addrcpt", "addr": "<a@b>", "params": null}
        {"op": "delrcpt", "addr": "<a@b>"}
        {"op": "quarantine", "reason": TEXT}

LOG.jsonl gets one JSON object per line, flushed at once, for every event:
  {"conn": N, "event": E, "args": [...], "macros": {name: value}, "t": T}
macros: every macro of MACROS that libmilter has a value for (asked at
connect, helo, mail, rcpt, data, eoh and eom); header events carry
"name" and "value"; the eom event carries "headers" (every [name, value]),
"body_size", "body_sha256" and, for a body under 64 KiB, "body" (latin-1);
"edit_error" lines tell an edit that libmilter refused (an action the MTA
did not offer). Events: negotiate (the MTA's offered actions and protocol
steps), connect, helo, mail, rcpt, data, header, eoh, eom, abort, close,
unknown.
"""
import argparse
import hashlib
import json
import sys
import threading
import time

import Milter

MACROS = ("j", "_", "v", "i", "{daemon_name}", "{daemon_addr}", "{if_name}", "{if_addr}",
          "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}",
          "{client_connections}", "{auth_type}", "{auth_authen}", "{auth_author}",
          "{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}",
          "{mail_addr}", "{mail_host}", "{mail_mailer}", "{rcpt_addr}", "{rcpt_host}",
          "{rcpt_mailer}")
BODY_LOG_MAX = 64 * 1024
RESULTS = {"continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
           "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD}

RULES = {}
LOG = None
LOG_LOCK = threading.Lock()


def log(entry):
    entry["t"] = round(time.time(), 3)
    line = json.dumps(entry, ensure_ascii=True)
    with LOG_LOCK:
        LOG.write(line + "\n")
        LOG.flush()


def text(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


class TestMilter(Milter.Base):
    """One MTA connection (one SMTP session)."""

    def __init__(self):
        self.conn = Milter.uniqueID()
        self._reset_message()

    def _reset_message(self):
        self.headers = []
        self.body_hash = hashlib.sha256()
        self.body_size = 0
        self.body_head = bytearray()

    # ---- helpers --------------------------------------------------------------

    def _macros(self):
        out = {}
        for name in MACROS:
            try:
                value = self.getsymval(name)
            except Exception:  # libmilter: no context any more
                value = None
            if value is not None:
                out[name] = text(value)
        return out

    def _log(self, event, args=(), macros=True, **extra):
        entry = {"conn": self.conn, "event": event, "args": [text(a) for a in args]}
        if macros:
            entry["macros"] = self._macros()
        entry.update(extra)
        log(entry)

    def _decide(self, event, subject=""):
        for rule in RULES.get("actions", []):
            if rule.get("at") != event:
                continue
            match = rule.get("match")
            if match is not None and match.lower() not in (subject or "").lower():
                continue
            return rule
        return None

    def _answer(self, rule, event):
        """The callback's return value for the rule (None: continue)."""
        if rule is None:
            return Milter.CONTINUE
        result = rule.get("result", "continue")
        reply = rule.get("reply")
        if reply:
            try:
                self.setreply(*[text(x) if x is not None else None for x in reply])
            except Exception as e:  # noqa: BLE001 - logged for the test
                log({"conn": self.conn, "event": "reply_error", "at": event, "error": repr(e)})
        log({"conn": self.conn, "event": "verdict", "at": event, "result": result,
             "reply": reply})
        return RESULTS[result]

    def _sleep(self, rule, event):
        if rule and rule.get("sleep"):
            log({"conn": self.conn, "event": "sleeping", "at": event,
                 "seconds": rule["sleep"]})
            time.sleep(float(rule["sleep"]))
            log({"conn": self.conn, "event": "woke", "at": event})

    def _simple(self, event, subject, args):
        self._log(event, args)
        rule = self._decide(event, subject)
        self._sleep(rule, event)
        return self._answer(rule, event)

    # ---- callbacks ---------------------------------------------------------------

    def negotiate(self, opts):
        offered_actions, offered_protocol = opts[0], opts[1]
        rc = super().negotiate(opts)
        log({"conn": self.conn, "event": "negotiate", "offered_actions": offered_actions,
             "offered_protocol": offered_protocol, "actions": self._actions,
             "protocol": self._protocol})
        return rc

    def connect(self, hostname, family, hostaddr):
        addr = list(hostaddr) if isinstance(hostaddr, tuple) else [hostaddr]
        return self._simple("connect", text(hostname), [hostname, str(family)] +
                            [str(a) for a in addr])

    def hello(self, hostname):
        return self._simple("helo", text(hostname), [hostname])

    def envfrom(self, mailfrom, *params):
        self._reset_message()
        return self._simple("mail", text(mailfrom), [mailfrom] + list(params))

    def envrcpt(self, to, *params):
        return self._simple("rcpt", text(to), [to] + list(params))

    def data(self):
        return self._simple("data", "", [])

    def header(self, name, value):
        name, value = text(name), text(value)
        self.headers.append([name, value])
        self._log("header", macros=False, name=name, value=value)
        rule = self._decide("header", "%s: %s" % (name, value))
        self._sleep(rule, "header")
        return self._answer(rule, "header")

    def eoh(self):
        return self._simple("eoh", "", [])

    def body(self, chunk):
        self.body_hash.update(chunk)
        self.body_size += len(chunk)
        if len(self.body_head) < BODY_LOG_MAX:
            self.body_head += chunk[:BODY_LOG_MAX - len(self.body_head)]
        rule = self._decide("body", "")
        if rule is None:
            return Milter.CONTINUE
        self._log("body", macros=False, size=len(chunk))
        self._sleep(rule, "body")
        return self._answer(rule, "body")

    def eom(self):
        extra = {"headers": self.headers, "body_size": self.body_size,
                 "body_sha256": self.body_hash.hexdigest()}
        if self.body_size <= BODY_LOG_MAX:
            extra["body"] = bytes(self.body_head).decode("latin-1")
        self._log("eom", **extra)
        rule = self._decide("eom", "")
        self._sleep(rule, "eom")
        for edit in RULES.get("edits", []):
            try:
                self._edit(edit)
            except Exception as e:  # noqa: BLE001 - logged for the test
                log({"conn": self.conn, "event": "edit_error", "edit": edit, "error": repr(e)})
        rc = self._answer(rule, "eom")
        self._log("eom_done", macros=False)
        return rc

    def _edit(self, edit):
        op = edit["op"]
        if op == "addheader":
            self.addheader(edit["name"], edit["value"])
        elif op == "insheader":
            self.addheader(edit["name"], edit["value"], int(edit["index"]))
        elif op == "chgheader":
            self.chgheader(edit["name"], int(edit.get("index", 1)), edit["value"])
        elif op == "delheader":
            self.chgheader(edit["name"], int(edit.get("index", 1)), None)
        elif op == "replacebody":
            body = edit["body"].encode("latin-1")
            for i in range(0, max(len(body), 1), 65536):
                self.replacebody(body[i:i + 65536])
        elif op == "chgfrom":
            self.chgfrom(edit["addr"], edit.get("params"))
        elif op == "addrcpt":
            self.addrcpt(edit["addr"], edit.get("params"))
        elif op == "delrcpt":
            self.delrcpt(edit["addr"])
        elif op == "quarantine":
            self.quarantine(edit["reason"])
        else:
            raise ValueError("unknown edit op %r" % op)
        log({"conn": self.conn, "event": "edited", "edit": edit})

    def abort(self):
        self._log("abort", macros=False)
        self._reset_message()
        return Milter.CONTINUE

    def unknown(self, cmd):
        self._log("unknown", [cmd], macros=False)
        return Milter.CONTINUE

    def close(self):
        self._log("close", macros=False)
        return Milter.CONTINUE


def main(argv=None):
    global RULES, LOG
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True, help="inet:PORT@127.0.0.1 or unix:/path")
    p.add_argument("--rules", help="the JSON rules file (default: continue everything)")
    p.add_argument("--log", required=True, help="the JSON lines log file")
    p.add_argument("--name", default="tftest")
    a = p.parse_args(argv)
    if a.rules:
        with open(a.rules) as f:
            RULES = json.load(f)
    LOG = open(a.log, "a")
    log({"event": "start", "socket": a.socket, "rules": RULES})
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGBODY | Milter.ADDRCPT | Milter.ADDRCPT_PAR |
                     Milter.DELRCPT | Milter.CHGHDRS | Milter.QUARANTINE | Milter.CHGFROM)
    sys.stdout.flush()
    # The second argument: libmilter's own I/O timeout towards the MTA.
    Milter.runmilter(a.name, a.socket, 120)
    log({"event": "stop"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
