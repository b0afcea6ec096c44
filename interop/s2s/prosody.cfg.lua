-- Prosody 0.12 for tests/s2s_interop.rs: pr.test on its own loopback
-- address, federating with Palaver by dialback over plain TCP, with a MUC
-- component on conference.pr.test. @DIR@ and @IP@ are replaced by the test.
pidfile = "@DIR@/prosody.pid"
data_path = "@DIR@/data"
run_as_root = true
daemonize = false
interfaces = { "@IP@" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
s2s_require_encryption = false
s2s_secure_auth = false
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
-- Names of the test's domains (Palaver's and its MUC service's).
unbound = { hoststxt = "@DIR@/hosts" }
log = { debug = "@DIR@/prosody.log" }
modules_enabled = { "roster"; "saslauth"; "dialback"; "disco"; "ping" }
VirtualHost "pr.test"
Component "conference.pr.test" "muc"
    restrict_room_creation = false
