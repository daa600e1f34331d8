//! The bare servers callguard's throughput is measured against (`callguard loadgen baseline`):
//! the same stack (tokio, multi-threaded runtime, a task per connection, `TCP_NODELAY`), and the
//! least a server of each protocol can do per call. FastAGI: accept, read the environment
//! block, write one `HANGUP` line, close. Event Socket: accept, send `connect`, read the channel
//! data, send one `sendmsg` hang-up, close. No decision, no metrics, no logging.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Longest header block a baseline session reads.
const MAX_BLOCK: usize = 64 * 1024;
/// Longest wait for it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Which protocol a baseline listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// FastAGI.
    Agi,
    /// Outbound Event Socket.
    Esl,
}

/// Accepts and serves until the process ends; accept errors back off briefly.
pub async fn serve(listener: TcpListener, flavor: Flavor) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "baseline: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            // A failed session just ends: the generator counts it.
            let _ended = timeout(READ_TIMEOUT, session(stream, flavor)).await;
        });
    }
}

async fn session(mut stream: TcpStream, flavor: Flavor) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    if flavor == Flavor::Esl {
        stream.write_all(b"connect\n\n").await?;
    }
    let mut buf = Vec::with_capacity(8 * 1024);
    while !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_BLOCK || stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    let reply: &[u8] = match flavor {
        Flavor::Agi => b"HANGUP\n",
        Flavor::Esl => b"sendmsg\ncall-command: hangup\nhangup-cause: CALL_REJECTED\n\n",
    };
    stream.write_all(reply).await?;
    stream.shutdown().await
}

/// Binds `addr` (port 0: any free port) and returns the listener with its bound address.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
