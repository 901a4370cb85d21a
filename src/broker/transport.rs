//! Listeners: plain TCP, TLS (rustls) and MQTT over WebSocket. All three end in the same
//! connection task.

use super::{conn, BoundAddrs, BrokerError, BrokerState};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

pub async fn start(state: Arc<BrokerState>) -> Result<BoundAddrs, BrokerError> {
    let cfg = state.config.mqtt.clone();
    let mut bound = BoundAddrs::default();

    let tcp = bind(cfg.listen).await?;
    bound.tcp = tcp.local_addr().ok();
    info!(addr = ?bound.tcp, "mqtt listener");
    let s = state.clone();
    tokio::spawn(accept_loop(
        tcp,
        s,
        |stream, peer, state, slot| async move {
            conn::serve(stream, peer, state, slot).await;
        },
    ));

    if let Some(tls) = &cfg.tls {
        let acceptor = tls_acceptor(&tls.cert, &tls.key)?;
        let listener = bind(tls.listen).await?;
        bound.tls = listener.local_addr().ok();
        info!(addr = ?bound.tls, "mqtt tls listener");
        tokio::spawn(accept_loop(
            listener,
            state.clone(),
            move |stream, peer, state, slot| {
                let acceptor = acceptor.clone();
                async move {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => conn::serve(tls, peer, state, slot).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                        Err(_) => debug!(%peer, "tls handshake timed out"),
                    }
                }
            },
        ));
    }

    if let Some(ws) = &cfg.websocket {
        let listener = bind(ws.listen).await?;
        bound.websocket = listener.local_addr().ok();
        info!(addr = ?bound.websocket, path = %ws.path, "mqtt websocket listener");
        let path: Arc<str> = Arc::from(ws.path.as_str());
        tokio::spawn(accept_loop(
            listener,
            state.clone(),
            move |stream, peer, state, slot| {
                let path = path.clone();
                async move { websocket(stream, peer, state, slot, &path).await }
            },
        ));
    }
    Ok(bound)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Bind { addr, source })
}

async fn accept_loop<F, Fut>(listener: TcpListener, state: Arc<BrokerState>, handle: F)
where
    F: Fn(TcpStream, SocketAddr, Arc<BrokerState>, OwnedSemaphorePermit) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Refused sockets cost a close and nothing else: no task, no handshake.
                if state.auth_throttle.is_blocked(peer.ip()) {
                    continue;
                }
                let Ok(slot) = state.connection_slots.clone().try_acquire_owned() else {
                    metrics::counter!(crate::metrics::CONNECTS, "result" => "server_busy")
                        .increment(1);
                    continue;
                };
                // Small chat packets must not wait for Nagle + delayed ACK (a ~40 ms tail).
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, peer, state.clone(), slot));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays up.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, BrokerError> {
    let err = |what: &str, e: &dyn std::fmt::Display| BrokerError::Tls(format!("{what}: {e}"));
    let certs = std::fs::read(cert).map_err(|e| err(&format!("reading {}", cert.display()), &e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&certs)
        .collect::<Result<_, _>>()
        .map_err(|e| err("parsing certificates", &e))?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key_pem = std::fs::read(key).map_err(|e| err(&format!("reading {}", key.display()), &e))?;
    // PKCS#8, PKCS#1 or SEC1: the first private key in the file.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            BrokerError::Tls(format!("no private key in {}", key.display()))
        }
        e => err("parsing private key", &e),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err("certificate/key", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Upgrades to WebSocket on `path` (subprotocol `mqtt`), then bridges binary frames to the
/// connection task through an in-memory pipe.
// The handshake callback's error type is tungstenite's, large by design.
#[allow(clippy::result_large_err)]
async fn websocket(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<BrokerState>,
    slot: OwnedSemaphorePermit,
    path: &str,
) {
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let wants_mqtt = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == "mqtt");
        if wants_mqtt {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    };
    let ws = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_tungstenite::accept_hdr_async(stream, check),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => return,
    };
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut frames) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    Some(Ok(Message::Binary(data))) => {
                        if wr.write_all(&data).await.is_err() { break; }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    // MQTT over WebSocket is binary only; anything else ends the connection.
                    Some(Ok(Message::Text(_) | Message::Close(_))) | Some(Err(_)) | None => break,
                },
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() { break; }
                    }
                },
            }
        }
        let _ = sink.close().await;
    });
    conn::serve(ours, peer, state, slot).await;
}
