// Drives xmpp.js (@xmpp/client, pinned in package-lock.json) for
// tests/interop.rs: log in on defaults, get the roster, become available,
// send a message to PEER and wait for one from PEER.
//
// Settings come from the environment (no secrets on the command line):
//   XMPP_SERVICE   xmpp://127.0.0.1:PORT (TCP + STARTTLS) or ws://HOST:PORT/ws
//   XMPP_DOMAIN    the account's domain (also the TLS server name)
//   XMPP_USER, XMPP_PASSWORD, XMPP_RESOURCE
//   XMPP_PEER      bare JID to chat with
//   XMPP_SEND      body to send to XMPP_PEER
//   XMPP_EXPECT    body expected from XMPP_PEER
//   XMPP_TIMEOUT_MS (default 30000)
// The server's self-signed certificate is trusted through
// NODE_EXTRA_CA_CERTS (set by the test), so verification stays on.
// WebSocket needs a global WebSocket: run Node 20 with
// --experimental-websocket (Node 22 has it by default).
//
// Prints one JSON object per line on stdout: {"event": ...}. Exits 0 once the
// expected message arrived, 1 on any error or timeout.
import { client, xml } from "@xmpp/client";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) {
    emit({ event: "error", error: `missing ${name}` });
    process.exit(1);
  }
  return v;
};

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const service = env("XMPP_SERVICE");
const domain = env("XMPP_DOMAIN");
const peer = env("XMPP_PEER");
const send = env("XMPP_SEND");
const expect = env("XMPP_EXPECT");
const timeoutMs = Number(env("XMPP_TIMEOUT_MS", "30000"));

const xmpp = client({
  service,
  domain,
  username: env("XMPP_USER"),
  password: env("XMPP_PASSWORD"),
  resource: env("XMPP_RESOURCE", "xmppjs"),
});
// A failed login must fail the test, not be retried forever.
xmpp.reconnect.stop();

let done = false;
const timer = setTimeout(() => fail(new Error(`timeout after ${timeoutMs} ms`)), timeoutMs);

async function finish(code) {
  clearTimeout(timer);
  try {
    await xmpp.stop();
  } catch {
    // Already closed.
  }
  process.exit(code);
}

function fail(err) {
  if (done) return;
  done = true;
  emit({ event: "error", error: String(err?.stack ?? err) });
  finish(1);
}

xmpp.on("error", fail);

// The SASL mechanism the library chose, as it went on the wire.
let mechanism = null;
xmpp.on("send", (el) => {
  if (el?.name === "auth" || el?.name === "authenticate") mechanism = el.attrs.mechanism;
});

xmpp.on("stanza", (stanza) => {
  if (!stanza.is("message")) return;
  const from = String(stanza.attrs.from ?? "");
  const body = stanza.getChildText("body");
  if (body === null) return;
  emit({ event: "message", from, body });
  if (from.split("/")[0] === peer && body === expect && !done) {
    done = true;
    emit({ event: "done" });
    finish(0);
  }
});

xmpp.on("online", async (address) => {
  try {
    emit({
      event: "online",
      jid: address.toString(),
      secure: xmpp.isSecure(),
      mechanism,
    });
    const roster = await xmpp.iqCaller.get(xml("query", "jabber:iq:roster"));
    emit({ event: "roster", items: roster.getChildren("item").map((i) => i.attrs.jid) });
    await xmpp.send(xml("presence"));
    await xmpp.send(
      xml("message", { to: peer, type: "chat", id: "xmppjs-1" }, xml("body", {}, send)),
    );
    emit({ event: "sent", to: peer, body: send });
  } catch (err) {
    fail(err);
  }
});

xmpp.start().catch(fail);
