//! TLS and MQTT-over-WebSocket listeners, end to end with rumqttc.

mod common;

use common::*;
use rumqttc::{Packet, QoS, TlsConfiguration, Transport};
use std::sync::Arc;
use tokio_rustls::rustls;

/// Sends a DM from `alice` to `bob` (both on `opts_for`'s transport) and checks bob gets it.
async fn chat_round_trip(b: &Broker, opts_for: impl Fn(&str, &str, &str) -> rumqttc::MqttOptions) {
    let (ta, tb) = (b.token("alice"), b.token("bob"));
    let mut bob = v4_connect(opts_for("bob-dev", "bob", &tb));
    assert!(
        matches!(
            next(&mut bob.rx, 5).await,
            Some(Got::Packet(Packet::ConnAck(_)))
        ),
        "bob connects"
    );
    v4_subscribe(&mut bob, "chat/u/bob/in/#").await;
    let mut alice = v4_connect(opts_for("alice-dev", "alice", &ta));
    assert!(
        matches!(
            next(&mut alice.rx, 5).await,
            Some(Got::Packet(Packet::ConnAck(_)))
        ),
        "alice connects"
    );
    let payload = msgpack(
        &serde_json::json!({"cid": "t1", "to": "u:bob", "body": {"type": "text", "text": "over the wire"}}),
    );
    alice
        .client
        .publish("chat/u/alice/out/send", QoS::AtLeastOnce, false, payload)
        .await
        .expect("pub");
    let got = v4_publish_on(&mut bob, "chat/u/bob/in/msg", 5)
        .await
        .expect("delivered");
    assert_eq!(unpack(&got.payload)["body"]["text"], "over the wire");
}

#[tokio::test]
async fn tls_listener_serves_mqtt() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let b = Broker::start_with(|c| {
        c.mqtt.tls = Some(chatmq::config::TlsConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert: cert_path.clone(),
            key: key_path.clone(),
        });
    })
    .await;
    let tls_port = b
        .server
        .as_ref()
        .and_then(|s| s.mqtt.tls)
        .expect("tls bound")
        .port();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client_cfg = Arc::new(client_cfg);
    chat_round_trip(&b, |id, user, token| {
        let mut o = rumqttc::MqttOptions::new(id, "localhost", tls_port);
        o.set_credentials(user, token);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client_cfg.clone(),
        )));
        o
    })
    .await;

    // A client that does not trust the certificate never gets in.
    let untrusting = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut o = rumqttc::MqttOptions::new("x", "localhost", tls_port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(untrusting),
    )));
    let mut c = v4_connect(o);
    assert!(matches!(next(&mut c.rx, 5).await, Some(Got::Error(_))));
    b.stop().await;
}

#[tokio::test]
async fn tls_files_without_a_key_or_certificate_are_refused_at_start() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let start = |cert: &std::path::Path, key: &std::path::Path| {
        let mut cfg = config(dir.path());
        cfg.mqtt.tls = Some(chatmq::config::TlsConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        });
        async move {
            match chatmq::server::Server::start(cfg).await {
                Ok(s) => {
                    s.shutdown().await;
                    String::from("started")
                }
                Err(e) => e.to_string(),
            }
        }
    };
    // The key file holds only a certificate.
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.cert.pem()).expect("write key");
    let e = start(&cert_path, &key_path).await;
    assert!(e.contains("no private key in"), "{e}");
    // The certificate file holds only a key.
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let e = start(&key_path, &key_path).await;
    assert!(e.contains("no certificate in"), "{e}");
    // A broken PEM section.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("write");
    let e = start(&cert_path, &key_path).await;
    assert!(e.contains("parsing certificates"), "{e}");
    let e = start(&key_path.with_extension("gone"), &key_path).await;
    assert!(e.contains("reading"), "{e}");
}

#[tokio::test]
async fn websocket_listener_serves_mqtt_on_its_path() {
    let b = Broker::start_with(|c| {
        c.mqtt.websocket = Some(chatmq::config::WebSocketConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            path: "/mqtt".into(),
        });
    })
    .await;
    let ws_port = b
        .server
        .as_ref()
        .and_then(|s| s.mqtt.websocket)
        .expect("ws bound")
        .port();
    chat_round_trip(&b, |id, user, token| {
        let mut o =
            rumqttc::MqttOptions::new(id, format!("ws://127.0.0.1:{ws_port}/mqtt"), ws_port);
        o.set_credentials(user, token);
        o.set_transport(Transport::Ws);
        o
    })
    .await;
    // Any other path is refused at the HTTP upgrade.
    let mut o = rumqttc::MqttOptions::new("y", format!("ws://127.0.0.1:{ws_port}/other"), ws_port);
    o.set_transport(Transport::Ws);
    let mut c = v4_connect(o);
    assert!(matches!(next(&mut c.rx, 5).await, Some(Got::Error(_))));
    b.stop().await;
}
