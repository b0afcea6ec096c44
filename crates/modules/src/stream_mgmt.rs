//! XEP-0198 Stream Management: acknowledgements and stream resumption on c2s
//! streams. The protocol runs in the c2s session (`palaver_server::c2s`);
//! this module offers it on a host and holds its options. An `<a/>` from the
//! server means the stanza is handled, including any storage the router
//! deferred for it.

use palaver_server::c2s::StreamMgmtConfig;
use palaver_server::{HostSetup, Module, ModuleDef};

/// `mod_stream_mgmt`.
pub struct StreamMgmt;

/// `mod_stream_mgmt` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<StreamMgmt>();

impl Module for StreamMgmt {
    const NAME: &'static str = "mod_stream_mgmt";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(StreamMgmt)
    }
}

/// `mod_stream_mgmt` options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Most unacknowledged stanzas to a client before its stream is closed.
    max_ack_queue: usize,
    /// Seconds a session that lost its connection waits to be resumed
    /// (0: resumption is not offered).
    resume_timeout: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_ack_queue: 5000,
            resume_timeout: 300,
        }
    }
}

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    if o.max_ack_queue == 0 {
        return Err("max_ack_queue must be at least 1".into());
    }
    host.enable_stream_mgmt(StreamMgmtConfig {
        max_ack_queue: o.max_ack_queue,
        resume_timeout: o.resume_timeout,
    });
    Ok(())
}
