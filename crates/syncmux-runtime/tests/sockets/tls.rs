//! `wss://` over loopback: the tokio server serves TLS with a certificate the test makes
//! (rcgen), and both client adapters trust exactly that certificate.
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::time::Duration;

use syncmux::payload::PullRequest;
use syncmux::Driver;
use syncmux::{ClientConfig, Server, ServerConfig};
use syncmux::{MemoryStore, StoreConfig};
use syncmux_runtime::{self as adapters, ClientOptions, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_round_trip_with_a_generated_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let server_tls = adapters::server_tls(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();

    let driver = Driver::new(
        Server::new(ServerConfig::default()).unwrap(),
        MemoryStore::new(StoreConfig::default()),
    );
    let server = adapters::tokio::start(driver, ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(adapters::tokio::serve(server, listener, Some(server_tls)));

    let url = format!("wss://localhost:{port}/sync/ws");
    let mut options = ClientOptions::default();
    options.tls = Some(adapters::client_tls_trusting(cert_pem.as_bytes()).unwrap());
    let (tokio_client, _events) =
        adapters::tokio::connect_with(ClientConfig::new(&url, "a"), options.clone()).unwrap();
    let (smol_client, _events) =
        adapters::smol::connect_with(ClientConfig::new(&url, "b"), options).unwrap();
    let guard = Duration::from_secs(20);
    let pulled = tokio::time::timeout(guard, tokio_client.pull(PullRequest::new(["docs"])))
        .await
        .unwrap()
        .unwrap();
    assert!(pulled.changes.is_empty());
    let pulled = tokio::time::timeout(guard, smol_client.pull(PullRequest::new(["docs"])))
        .await
        .unwrap()
        .unwrap();
    assert!(pulled.changes.is_empty());
}
