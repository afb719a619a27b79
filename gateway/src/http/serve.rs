//! The accept loop: HTTP/1 and HTTP/2 connections served by hyper with a deadline on reading request headers
//! (`http.header_timeout_secs`), which `axum::serve` does not set, so a client trickling its headers cannot hold
//! a connection open for ever. Shutdown stops accepting, then lets every connection finish its requests for up
//! to `SHUTDOWN_GRACE`; streams still open then (a listener on an hour-long job) are cut, and their clients
//! resume on another replica with `Last-Event-ID`, losing nothing.

use std::future::Future;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a stopping gateway lets open requests run: inside the 30 s a container orchestrator allows by default.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // WebSockets over HTTP/2 need the CONNECT protocol.
    builder.http2().enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are written as headers then body: without TCP_NODELAY, Nagle's algorithm holds the second
        // write until the client's delayed ACK, adding ~40 ms to every small streamed response.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = app
            .clone()
            .map_request(move |mut request: axum::extract::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request
            });
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(crate::http::parse_errors::ProblemIo::new(tcp)),
                TowerToHyperService::new(service),
            )
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "requests still open after the shutdown grace (live event streams, most likely) are cut; their clients resume elsewhere"
        );
    }
    Ok(())
}
