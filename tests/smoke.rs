mod common;
use common::*;

#[tokio::test]
async fn raw_login_and_message() {
    let srv = TestServer::start().await;
    // The suite runs on the backend it was asked for.
    let want = if backend_is_pg() {
        "postgresql"
    } else {
        "sqlite"
    };
    assert_eq!(srv.core().storage().backend, want);
    srv.add_user("alice", DOMAIN, "pw1").await;
    srv.add_user("bob", DOMAIN, "pw2").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw1", "a").await;
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw2", "b").await;
    b.send("<presence/>").await;
    b.until("<presence").await;
    a.send("<message to='bob@localhost' type='chat' id='m1'><body>hello</body></message>")
        .await;
    let got = b.until("</message>").await;
    assert!(
        got.contains("hello") && got.contains("from='alice@localhost/a'"),
        "{got}"
    );
    srv.stop().await;
}
