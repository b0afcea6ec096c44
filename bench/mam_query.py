#!/usr/bin/env python3
"""Time the two MAM queries of BENCHMARKS.md end to end, over XMPP.

    bench/mam_query.py HOST PORT DOMAIN USER PASSWORD WITH START_US END_US [ROUNDS]

Logs in (plaintext c2s, SASL PLAIN; the listener must allow it), then runs
ROUNDS (default 500) times each:

  last50  the last 50 messages with WITH: a XEP-0313 query with `with`
          and RSM `<max>50</max><before/>` (the newest page);
  bydate  a paged query by date: `start` at a random time between START_US
          and END_US (microseconds), `<max>50</max>`, then the next page
          with `<after>` the page's last id (two requests per round, each
          timed on its own).

Each time is from writing the request to reading its `<iq type='result'>`
(after the page's messages), so it covers parsing, both SQL statements the
module runs (COUNT and the page), serialising and writing 50 messages.
Prints p50 / p90 / p99 / max in milliseconds, and checks every page had 50
messages (a wrong result is an error, not a fast figure).
"""
import base64
import random
import re
import socket
import sys
import time
from datetime import datetime, timezone


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, text):
        self.s.sendall(text.encode())

    def until(self, pattern):
        rx = re.compile(pattern.encode(), re.S)
        while True:
            m = rx.search(self.buf)
            if m:
                out = self.buf[: m.end()]
                self.buf = self.buf[m.end():]
                return out.decode("utf-8", "replace")
            chunk = self.s.recv(1 << 16)
            if not chunk:
                raise SystemExit("connection closed; got %r" % self.buf[-500:])
            self.buf += chunk


def login(host, port, domain, user, password):
    c = Conn(host, port)
    head = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'>" % domain)
    c.send(head)
    c.until("</stream:features>")
    token = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>" % token)
    r = c.until("<success[^>]*/>|</success>|</failure>")
    if "<success" not in r:
        raise SystemExit("login failed: " + r)
    c.send(head)
    c.until("</stream:features>")
    c.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>bench</resource></bind></iq>")
    c.until("</iq>")
    return c


FORM = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
        "<value>urn:xmpp:mam:2</value></field>%s</x>")


def query(c, qid, fields, rsm):
    """One query; (seconds, messages, last id, complete)."""
    req = ("<iq type='set' id='%s'><query xmlns='urn:xmpp:mam:2' queryid='%s'>%s"
           "<set xmlns='http://jabber.org/protocol/rsm'>%s</set></query></iq>"
           % (qid, qid, FORM % fields, rsm))
    t0 = time.perf_counter()
    c.send(req)
    out = c.until(r"<iq[^>]*id='%s'[^>]*>.*?</iq>" % qid)
    dt = time.perf_counter() - t0
    if "type='result'" not in out.split("<iq", 1)[-1][:200] and "type=\"result\"" not in out:
        raise SystemExit("query failed: " + out[-800:])
    n = out.count("<result xmlns='urn:xmpp:mam:2'")
    last = re.search(r"<last>([^<]+)</last>", out)
    return dt, n, (last.group(1) if last else None), "complete='true'" in out


def iso(us):
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def report(name, xs):
    ms = [x * 1000 for x in xs]
    print("%-8s n=%d  p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms"
          % (name, len(ms), pct(ms, 50), pct(ms, 90), pct(ms, 99), max(ms)))


def main():
    if len(sys.argv) < 9:
        raise SystemExit(__doc__)
    host, port, domain, user, pw, with_jid = sys.argv[1:7]
    start_us, end_us = int(sys.argv[7]), int(sys.argv[8])
    rounds = int(sys.argv[9]) if len(sys.argv) > 9 else 500
    c = login(host, int(port), domain, user, pw)
    random.seed(1)
    last50, bydate = [], []
    for i in range(rounds + 20):
        dt, n, _, _ = query(c, "l%d" % i, "<field var='with'><value>%s</value></field>" % with_jid,
                            "<max>50</max><before/>")
        if n != 50:
            raise SystemExit("last50: %d messages" % n)
        if i >= 20:  # the first rounds warm caches and connections
            last50.append(dt)
        start = random.randint(start_us, end_us)
        fields = "<field var='start'><value>%s</value></field>" % iso(start)
        dt, n, last, complete = query(c, "d%d" % i, fields, "<max>50</max>")
        if n != 50 or last is None:
            raise SystemExit("bydate: %d messages from %s" % (n, iso(start)))
        dt2, n2, _, _ = query(c, "e%d" % i, fields, "<max>50</max><after>%s</after>" % last)
        if n2 != 50:
            raise SystemExit("bydate page 2: %d messages" % n2)
        if i >= 20:
            bydate.extend([dt, dt2])
    report("last50", last50)
    report("bydate", bydate)


if __name__ == "__main__":
    main()
