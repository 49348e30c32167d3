//! What more than one module of this binary needs.
#![cfg(all(feature = "tokio", feature = "smol"))] // what its users need
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Generous: every wait here ends as soon as what it waits for happens.
const GUARD: Duration = Duration::from_secs(20);

/// A WebSocket to `url` (at `addr`) over a socket with a 4 KiB receive buffer: a peer that
/// stops reading it is soon a slow consumer.
pub(crate) async fn small_buffer_client(
    addr: SocketAddr,
    url: String,
) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws
}

/// Reads what a slow consumer's socket still holds once the server closed it: its text frames
/// in order, each given to `check` with its index, then the end of the connection (a close
/// frame, best effort on a socket that was full, must be 4503). How many text frames came.
pub(crate) async fn read_until_closed(
    ws: &mut WebSocketStream<TcpStream>,
    mut check: impl FnMut(usize, &str),
) -> usize {
    let mut seen = 0;
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.expect("hung") {
            Some(Ok(Message::Text(text))) => {
                check(seen, &text);
                seen += 1;
            }
            Some(Ok(Message::Close(frame))) => {
                if let Some(frame) = frame {
                    assert_eq!(u16::from(frame.code), 4503);
                }
                return seen;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return seen,
        }
    }
}
