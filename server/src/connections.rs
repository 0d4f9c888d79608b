//! A bound on concurrent client connections. Each accepted TCP connection takes a permit
//! for as long as it is open. A connection that arrives when none is left is refused: the
//! calls it carries are answered UNAVAILABLE (clients may retry), an HTTP/2 GOAWAY asks for
//! no more, and it is closed. So a flood of connections cannot exhaust the server's file
//! descriptors or memory, and the connections already open keep being served.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How many concurrent connections a server accepts unless told otherwise.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4_096;
/// How long the accept loop pauses after an accept error (out of file descriptors, say),
/// so that it does not spin while the error lasts.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// The smallest kernel accept queue the API listener gets (tokio's own default).
const LISTEN_BACKLOG_CONNECTIONS_MIN: usize = 1_024;
/// Accepted connections waiting for the server to take them.
const ACCEPTED_QUEUE_CONNECTIONS_MAX: usize = 64;
/// Refused connections being told so at one time; beyond this they are closed without a
/// word (the client then sees the connection drop), so refusing stays cheap too.
const REFUSALS_IN_FLIGHT_MAX: usize = 1_024;
/// The longest a refusal may take (the client may never read it).
const REFUSAL_TIMEOUT_MS: u64 = 5_000;
/// How long a refused connection's first call is waited for before the GOAWAY is sent.
const REFUSAL_FIRST_CALL_WAIT_MS: u64 = 2_000;

/// Binds a listener for the API whose kernel accept queue holds as many connections as the
/// server may have open, `connections_max`, and never fewer than tokio's 1,024 (the kernel
/// caps it at `net.core.somaxconn`). A listener's usual backlog (1,024 in tokio)
/// is smaller than the connection limit, and when a burst of new connections overflows it,
/// Linux drops their handshakes or answers them with SYN cookies that can fail: the client
/// then sees its connection reset although the server had room for it. Sizing the queue to
/// the connection limit lets a burst up to that limit wait in the kernel instead.
pub async fn bind_listener(address: &str, connections_max: usize) -> std::io::Result<TcpListener> {
    let backlog =
        u32::try_from(connections_max.max(LISTEN_BACKLOG_CONNECTIONS_MIN)).unwrap_or(u32::MAX);
    let mut last_error = None;
    for resolved in tokio::net::lookup_host(address).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // The same reuse rule as `TcpListener::bind`: a restarted server may bind the port
        // its predecessor's closed connections still linger on.
        socket.set_reuseaddr(true)?;
        match socket.bind(resolved) {
            Ok(()) => return socket.listen(backlog),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the listen address {address} resolves to no address"),
        )
    }))
}

/// Answers a refused connection's calls with a trailers-only gRPC UNAVAILABLE, tells the
/// client (HTTP/2 GOAWAY) to open no more streams, and closes it.
///
/// The GOAWAY waits for the connection's first call (at most `REFUSAL_FIRST_CALL_WAIT_MS`):
/// a client opens a connection to make a call, and one that reads GOAWAY before sending it
/// only sees its connection closed, without the reason and the advice to retry later. Sent
/// right after the handshake, the GOAWAY overtook every call of a loaded client.
async fn refuse(stream: TcpStream) {
    let refusal = async {
        let Ok(mut connection) = h2::server::handshake(stream).await else {
            return;
        };
        let first_call = tokio::time::timeout(
            Duration::from_millis(REFUSAL_FIRST_CALL_WAIT_MS),
            connection.accept(),
        )
        .await;
        match first_call {
            Ok(Some(Ok((_request, respond)))) => answer_unavailable(respond),
            // The client closed the connection, or it broke: nothing is left to tell.
            Ok(Some(Err(_)) | None) => return,
            // No call came in time: the GOAWAY alone tells the client.
            Err(_elapsed) => {}
        }
        connection.graceful_shutdown();
        while let Some(Ok((_request, respond))) = connection.accept().await {
            answer_unavailable(respond);
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(REFUSAL_TIMEOUT_MS), refusal).await;
}

/// The message a refused connection's calls are answered with.
pub const REFUSAL_MESSAGE: &str = "the server has its maximum of open connections; retry later";

/// Answers one call of a refused connection UNAVAILABLE, trailers-only.
fn answer_unavailable(mut respond: h2::server::SendResponse<bytes::Bytes>) {
    let unavailable = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", (tonic::Code::Unavailable as i32).to_string())
        .header("grpc-message", REFUSAL_MESSAGE)
        .body(())
        .expect("a constant response is valid");
    let _ = respond.send_response(unavailable, true);
}

/// An accepted connection holding one permit until it is dropped (closed).
pub struct LimitedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(context, buffer)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }
}

impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Accepts connections from `listener` while fewer than `connections_max` are open and
/// hands them to the receiver; refuses (closes) the others. The task ends when the
/// receiver is dropped and the next connection arrives; abort it to end it sooner.
pub fn accept_limited(
    listener: TcpListener,
    connections_max: usize,
) -> (
    mpsc::Receiver<std::io::Result<LimitedConnection>>,
    tokio::task::JoinHandle<()>,
) {
    let permits = Arc::new(Semaphore::new(connections_max));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX));
    let (sender, receiver) = mpsc::channel(ACCEPTED_QUEUE_CONNECTIONS_MAX);
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(
                    connections_max,
                    "refused a connection: the server has its maximum of open connections"
                );
                if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream).await;
                        drop(refusal);
                    });
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let connection = LimitedConnection {
                stream,
                _permit: permit,
            };
            if sender.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    (receiver, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_binds_a_name_and_accepts_a_connection() {
        let listener = bind_listener("localhost:0", CONNECTIONS_MAX_DEFAULT)
            .await
            .expect("localhost resolves and binds");
        let address = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        client.expect("the client connects");
        accepted.expect("the listener accepts");
    }
}
