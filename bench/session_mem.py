#!/usr/bin/env python3
"""Server memory per session held in a state, from the server's RSS.

    bench/session_mem.py HOST PORT DOMAIN SERVER_PID N STATE

STATE is one of
  plain     logged in and available, no stream management (the baseline);
  online    logged in, stream management enabled with resumption, available;
  inactive  the same, then XEP-0352 `<inactive/>` (a phone in a pocket);
            HOLD=1 in the environment also makes one directed presence from
            another account wait in each session's CSI queue;
  detached  the same as online, then the TCP connection is dropped without
            closing the stream: the session waits for XEP-0198 resumption.

Accounts u0..u{2N-1} with password `pw` must exist (bench/session_mem.sh
makes them). Two batches of N sessions are put in the state one after the
other; VmRSS is read before, after the first and after the second batch
(once it stops changing). The figure to use is the second batch's growth
divided by N: it is the marginal cost of one more session in that state,
after the first batch warmed the allocator (buffers freed by the first
batch's logins are reused, not counted again). Prints both.
"""
import base64
import os
import socket
import sys
import time


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS for %d" % pid)


def settled_rss(pid):
    """RSS once two readings a second apart agree within 64 KiB."""
    last = rss_kib(pid)
    for _ in range(30):
        time.sleep(1)
        now = rss_kib(pid)
        if abs(now - last) <= 64:
            return now
        last = now
    return last


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port))
        self.buf = b""

    def send(self, text):
        self.s.sendall(text.encode())

    def until(self, needle):
        n = needle.encode()
        while n not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise SystemExit("closed while waiting for %r; got %r" % (needle, self.buf[-300:]))
            self.buf += chunk
        i = self.buf.index(n) + len(n)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out.decode("utf-8", "replace")


def login(host, port, domain, user, resource, sm=True):
    c = Conn(host, port)
    head = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'>" % domain)
    c.send(head)
    c.until("</stream:features>")
    token = base64.b64encode(("\0%s\0pw" % user).encode()).decode()
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>" % token)
    r = c.until("/>")
    if "<success" not in r:
        raise SystemExit("login %s failed: %s" % (user, r))
    c.send(head)
    c.until("</stream:features>")
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>%s</resource></bind></iq>" % resource)
    c.until("</iq>")
    c.user = user
    if sm:
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        r = c.until("/>")
        if "<enabled" not in r:
            raise SystemExit("stream management: " + r)
        c.smid = r.split("id='", 1)[1].split("'", 1)[0]
    c.send("<presence/>")
    # A round trip: the presence is processed before the next step.
    c.send("<iq type='get' id='p' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>" % domain)
    c.until("id='p'")
    return c


def check_resumable(host, port, domain, c):
    """The last detached session is there: it resumes."""
    r = Conn(host, port)
    head = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'>" % domain)
    r.send(head)
    r.until("</stream:features>")
    token = base64.b64encode(("\0%s\0pw" % c.user).encode()).decode()
    r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>" % token)
    r.until("/>")
    r.send(head)
    r.until("</stream:features>")
    r.send("<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>" % c.smid)
    out = r.until("/>")
    if "<resumed" not in out:
        raise SystemExit("the detached session did not resume: " + out)
    r.s.close()


def batch(host, port, domain, users, state, driver):
    conns = []
    last = None
    for u in users:
        c = login(host, port, domain, u, "phone", sm=state != "plain")
        if state == "inactive":
            c.send("<inactive xmlns='urn:xmpp:csi:0'/>")
            c.send("<iq type='get' id='i' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>" % domain)
            c.until("id='i'")
            if driver is not None:
                driver.send("<presence to='%s@%s/phone'><status>held</status></presence>" % (u, domain))
        if state == "detached":
            # Drop the connection without </stream:stream>: the session
            # waits for resumption.
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.s.close()
            last = c
        else:
            conns.append(c)
    if last is not None:
        last_detached[:] = [last]
    if driver is not None:
        driver.send("<iq type='get' id='dsync' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>" % domain)
        driver.until("id='dsync'")
    return conns


last_detached = []


def main():
    if len(sys.argv) != 7:
        raise SystemExit(__doc__)
    host, port, domain = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    pid, n, state = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    if state not in ("plain", "online", "inactive", "detached"):
        raise SystemExit(__doc__)
    driver = None
    if state == "inactive" and os.environ.get("HOLD") == "1":
        driver = login(host, port, domain, "driver", "d")
    r0 = settled_rss(pid)
    keep = batch(host, port, domain, ["u%d" % i for i in range(n)], state, driver)
    r1 = settled_rss(pid)
    keep += batch(host, port, domain, ["u%d" % i for i in range(n, 2 * n)], state, driver)
    r2 = settled_rss(pid)
    if state == "detached":
        check_resumable(host, port, domain, last_detached[0])
    print("state=%s%s n=%d rss KiB: before %d, after batch 1 %d, after batch 2 %d"
          % (state, " (one held presence each)" if driver else "", n, r0, r1, r2))
    print("per session: batch 1 %.2f KiB, batch 2 (marginal) %.2f KiB"
          % ((r1 - r0) / n, (r2 - r1) / n))
    for c in keep:
        c.s.close()


if __name__ == "__main__":
    main()
