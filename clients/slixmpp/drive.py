"""Drives slixmpp (Debian's python3-slixmpp) for tests/interop.rs.

Logs in on the library's defaults (STARTTLS, its own SASL mechanism order),
gets the roster, becomes available, sends a message to PEER and waits for one
from PEER. Run with Debian's /usr/bin/python3, where the package lives.

Settings come from the environment (no secrets on the command line):
  XMPP_JID, XMPP_PASSWORD   the account (full JID with resource)
  XMPP_HOST, XMPP_PORT      where the c2s listener is (STARTTLS)
  XMPP_CA                   PEM file of the server certificate to trust
                            (verification stays on)
  XMPP_PEER                 bare JID to chat with
  XMPP_SEND, XMPP_EXPECT    body to send, body expected back
  XMPP_TIMEOUT              seconds (default 30)

Prints one JSON object per line: {"event": ...}. Exits 0 once the expected
message arrived, 1 on failure or timeout.
"""

import asyncio
import json
import os
import sys

import slixmpp


def emit(**obj):
    print(json.dumps(obj), flush=True)


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        emit(event="error", error=f"missing {name}")
        sys.exit(1)
    return value


class Driver(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(env("XMPP_JID"), env("XMPP_PASSWORD"))
        self.peer = env("XMPP_PEER")
        self.to_send = env("XMPP_SEND")
        self.expect = env("XMPP_EXPECT")
        self.ca_certs = env("XMPP_CA")
        self.result = asyncio.get_event_loop().create_future()
        self.failures = []
        self.mechanism = None
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("failed_all_auth", self.on_failed_all_auth)
        self.add_event_handler("auth_success", self.on_auth_success)
        self.add_event_handler("stream_error", self.on_stream_error)
        self.add_event_handler("disconnected", self.on_disconnected)

    def on_failed_auth(self, failure):
        mech = getattr(self["feature_mechanisms"], "mech", None)
        self.failures.append(getattr(mech, "name", None))

    def on_auth_success(self, _event):
        mech = getattr(self["feature_mechanisms"], "mech", None)
        self.mechanism = getattr(mech, "name", None)

    def on_failed_all_auth(self, _event):
        self.finish(1, error=f"all SASL mechanisms failed: {self.failures}")

    def on_stream_error(self, error):
        self.finish(1, error=f"stream error: {error}")

    def on_disconnected(self, reason):
        self.finish(1, error=f"disconnected: {reason}")

    async def on_start(self, _event):
        try:
            tls = self.transport.get_extra_info("ssl_object") if self.transport else None
            emit(
                event="online",
                jid=str(self.boundjid),
                tls=tls.version() if tls is not None else None,
                mechanism=self.mechanism,
                refused=self.failures,
            )
            await self.get_roster()
            emit(event="roster", items=sorted(str(j) for j in self.client_roster.keys()))
            self.send_presence()
            self.send_message(mto=self.peer, mbody=self.to_send, mtype="chat")
            emit(event="sent", to=self.peer, body=self.to_send)
        except Exception as e:  # noqa: BLE001 - report anything
            self.finish(1, error=repr(e))

    def on_message(self, msg):
        body = msg["body"]
        sender = msg["from"].bare
        emit(event="message", **{"from": str(msg["from"]), "body": body})
        if sender == self.peer and body == self.expect:
            emit(event="done")
            self.finish(0)

    def finish(self, code, error=None):
        if self.result.done():
            return
        if error is not None:
            emit(event="error", error=error)
        self.result.set_result(code)


async def main():
    xmpp = Driver()
    xmpp.connect(address=(env("XMPP_HOST"), int(env("XMPP_PORT"))))
    try:
        code = await asyncio.wait_for(xmpp.result, float(env("XMPP_TIMEOUT", "30")))
    except asyncio.TimeoutError:
        emit(event="error", error="timeout")
        code = 1
    # Close the stream and wait (briefly) for the server's </stream:stream>.
    try:
        await asyncio.wait_for(xmpp.disconnect(), 5)
    except (asyncio.TimeoutError, TypeError):
        pass
    return code


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sys.exit(loop.run_until_complete(main()))
