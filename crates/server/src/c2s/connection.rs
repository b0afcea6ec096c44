//! The connection loop of a c2s session, the same for every transport.
//!
//! A [`Transport`] turns what the client sends into [`Input`]s (a stream
//! header, a top-level element, the stream's end, the connection's loss) and
//! writes the session's [`Output`]; TCP/TLS (`tcp.rs`), WebSocket and BOSH
//! (in `palaver-http`) implement it. The loop owns what is common: feeding
//! inputs to the session, the messages routed to it, the authentication and
//! idle timeouts, server shutdown (`<system-shutdown/>`), STARTTLS and,
//! once the connection is gone, [`C2sSession::end`].

use super::output::Output;
use super::session::{C2sSession, Next};
use minidom::Element;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::framer::StreamHeader;
use palaver_proto::sasl::ChannelBindings;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::time::Instant;

/// What a transport received from the client.
#[derive(Debug)]
pub enum Input {
    /// A stream header (TCP `<stream:stream>`, RFC 7395 `<open/>`, a BOSH
    /// session request or restart).
    Open(StreamHeader),
    /// A complete top-level element.
    Element(Element),
    /// The client ended its stream (`</stream:stream>`, `<close/>`, a BOSH
    /// terminate request).
    Close,
    /// Input that breaks the stream's rules.
    Error(StreamError),
    /// A sign of life without XMPP content (whitespace, a partial element,
    /// a WebSocket pong): it only keeps the idle timeout away.
    Alive,
    /// The connection is gone without a closing handshake.
    Lost,
}

/// A client connection's transport, as the connection loop sees it.
pub trait Transport: Send {
    /// Wait for the client's next input. Cancel-safe: the loop drops this
    /// future when something else happens first.
    fn recv(&mut self) -> impl Future<Output = Input> + Send;

    /// The next input already received, without waiting (the rest of what
    /// the last [`Transport::recv`] read), so that a burst is handled before
    /// its output is written once.
    fn next_buffered(&mut self) -> Option<Input>;

    /// The session restarted its stream (after SASL): a new header follows.
    fn restart(&mut self) {}

    /// Write the session's output and clear it. Called after every event,
    /// also when there is nothing to write (BOSH answers held requests then).
    fn send(&mut self, out: &mut Output) -> impl Future<Output = io::Result<()>> + Send;

    /// Read at most at this shaper's rate from now on (`None`: unlimited).
    /// Transports that cannot shape ignore it.
    fn set_shaper(&mut self, _shaper: Option<crate::config::Shaper>) {}

    /// Close the connection after the session's stream ended.
    fn close(&mut self) -> impl Future<Output = ()> + Send;

    /// Upgrade to TLS (STARTTLS), giving up at `deadline`; the channel
    /// bindings of the new TLS session, or `None` if the transport cannot
    /// (then the connection ends).
    fn start_tls(
        &mut self,
        _deadline: Instant,
    ) -> impl Future<Output = Option<ChannelBindings>> + Send {
        std::future::ready(None)
    }
}

/// Serve a session over `transport` until the connection ends, then end the
/// session (a resumable one may wait on, detached, without its transport).
///
/// Until a resource is bound the connection must get there by
/// `auth_deadline`; then it times out after `idle` without input (never
/// when `idle` is zero).
///
/// (Not an `async fn`: its arguments would be stored twice in the
/// connection's task, which every idle session carries.)
#[allow(clippy::manual_async_fn)]
pub fn run<T: Transport>(
    mut session: C2sSession,
    mut transport: T,
    auth_deadline: Instant,
    idle: Duration,
) -> impl Future<Output = ()> {
    async move {
        drive(&mut session, &mut transport, auth_deadline, idle).await;
        drop(transport);
        session.end().await;
    }
}

async fn drive<T: Transport>(
    session: &mut C2sSession,
    transport: &mut T,
    auth_deadline: Instant,
    idle: Duration,
) {
    let mut shutdown = session.core().shutdown.clone();
    let mut last_read = Instant::now();
    session.expect_header();
    transport.set_shaper(session.shaper());
    let mut shaped_as_user = false;
    // One timer per connection, re-armed only when it fires (or a stream
    // restarts): the hot path registers no timers.
    let timer =
        tokio::time::sleep_until(session.deadline(auth_deadline, idle, last_read, last_read));
    tokio::pin!(timer);
    let inflight = session.inflight();
    loop {
        let mut next = Next::Continue;
        // The back-pressure level is read once per turn: other tasks finish
        // the session's deferred work concurrently, so two reads could see
        // "not reading" and then "nothing to wait for", arming neither
        // branch (a stall until the next unrelated event).
        let reading = session.reading();
        let waits = !reading || session.ack_pending();
        tokio::select! {
            input = transport.recv(), if reading => {
                last_read = Instant::now();
                let mut input = Some(input);
                while let Some(i) = input {
                    next = match i {
                        Input::Open(h) => match session.handle_open(&h) {
                            Ok(()) => Next::Continue,
                            Err(e) => session.stream_error(e),
                        },
                        Input::Element(el) => match session.handle_element(el).await {
                            Ok(n) => n,
                            Err(e) => session.stream_error(e),
                        },
                        Input::Close => session.close_requested(),
                        Input::Error(e) => session.stream_error(e),
                        Input::Alive => Next::Continue,
                        Input::Lost => {
                            session.closed_by_peer();
                            return;
                        }
                    };
                    match next {
                        Next::Continue => {}
                        Next::Restart => {
                            transport.restart();
                            session.expect_header();
                            let now = Instant::now();
                            timer.as_mut().reset(session.deadline(auth_deadline, idle, now, now));
                            next = Next::Continue;
                        }
                        Next::StartTls | Next::Close => break,
                    }
                    // A burst is handled whole unless the session stops
                    // reading (back-pressure); the rest stays buffered.
                    input = if session.reading() {
                        transport.next_buffered()
                    } else {
                        None
                    };
                }
            }
            () = inflight.changed(), if waits => {
                next = match session.inflight_progress().await {
                    Ok(n) => n,
                    Err(e) => session.stream_error(e),
                };
            }
            msg = session.recv() => {
                if let Some(msg) = msg {
                    next = session.handle_msg(msg);
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                let due = session.deadline(auth_deadline, idle, last_read, now);
                if now >= due {
                    next = session.stream_error(StreamError::with_text(SC::ConnectionTimeout, "timed out"));
                } else {
                    timer.as_mut().reset(due);
                }
            }
            _ = shutdown.changed() => {
                next = session.stream_error(StreamError::new(SC::SystemShutdown));
            }
        }
        if !shaped_as_user && session.is_bound() {
            // Authenticated: the user's shaper replaces the address's.
            shaped_as_user = true;
            transport.set_shaper(session.shaper());
        }
        if transport.send(session.output()).await.is_err() {
            session.closed_by_peer();
            return;
        }
        match next {
            Next::Continue | Next::Restart => {}
            Next::Close => {
                transport.close().await;
                return;
            }
            Next::StartTls => {
                let handshake = Instant::now()
                    + Duration::from_secs(session.listener().tls_handshake_timeout.max(1));
                match transport.start_tls(handshake.min(auth_deadline)).await {
                    Some(cb) => {
                        session.set_secure(cb);
                        session.expect_header();
                        let now = Instant::now();
                        timer
                            .as_mut()
                            .reset(session.deadline(auth_deadline, idle, now, now));
                    }
                    None => return,
                }
            }
        }
    }
}
