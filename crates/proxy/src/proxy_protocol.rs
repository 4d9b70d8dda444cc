//! The PROXY protocol (v1 text, v2 binary; HAProxy's specification): a load balancer in
//! front sends the client's address before anything else on the connection. Parsed with the
//! `ppp` crate; read here so that not a byte past the header is taken from the connection.

use std::io;
use std::net::SocketAddr;

use ppp::HeaderResult;
use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 header (107 bytes, the specification says).
const V1_MAX: usize = 107;
/// v2's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The most address and TLV bytes accepted after it.
const V2_MAX_PAYLOAD: usize = 4096;

/// v2's signature, the first twelve bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Whether the connection opens with what looks like a PROXY protocol header (seen with
/// `peek`, nothing is taken). `false` when it opens with anything else, HTTP or TLS; waits
/// for the first bytes.
pub async fn starts_with_header(stream: &TcpStream) -> io::Result<bool> {
    let mut seen = [0u8; V2_SIGNATURE.len()];
    let available = stream.peek(&mut seen).await?;
    let seen = &seen[..available];
    // "PROXY " is no HTTP method; no HTTP request or TLS record starts with "\r\n\r\n\0".
    Ok(seen.starts_with(b"PROXY ") || (available >= 5 && V2_SIGNATURE.starts_with(seen)))
}

/// Reads the header at the start of `stream`: the client's address, or `None` when the
/// sender says it has none (a v2 `LOCAL` command, as in a balancer's own health check, or v1
/// `UNKNOWN`). An error when the connection does not start with a valid header.
pub async fn read(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY protocol: {what}"));
    // A v1 header usually arrives whole in the first packet: seen with `peek`, it is taken
    // with one read of exactly its length.
    let mut seen = [0u8; V1_MAX];
    let available = stream.peek(&mut seen).await?;
    if seen[..available].starts_with(b"PROXY ")
        && let Some(end) = seen[..available].windows(2).position(|w| w == b"\r\n")
    {
        let mut header = vec![0u8; end + 2];
        stream.read_exact(&mut header).await?;
        return addresses(&header);
    }
    let mut header = vec![0u8; 1];
    stream.read_exact(&mut header).await?;
    match header[0] {
        b'P' => {
            // v1 split across packets: up to CRLF, a byte at a time to take nothing more.
            let mut byte = [0u8; 1];
            while !header.ends_with(b"\r\n") {
                if header.len() >= V1_MAX {
                    return Err(invalid("a v1 header longer than 107 bytes"));
                }
                stream.read_exact(&mut byte).await?;
                header.push(byte[0]);
            }
        }
        b'\r' => {
            header.resize(V2_FIXED, 0);
            stream.read_exact(&mut header[1..]).await?;
            let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
            if length > V2_MAX_PAYLOAD {
                return Err(invalid("a v2 header longer than 4 KiB"));
            }
            header.resize(V2_FIXED + length, 0);
            stream.read_exact(&mut header[V2_FIXED..]).await?;
        }
        _ => return Err(invalid("the connection does not start with a PROXY header")),
    }
    addresses(&header)
}

/// The client's address a whole header names (`None`: it names none).
fn addresses(header: &[u8]) -> io::Result<Option<SocketAddr>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY protocol: {what}"));
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            (_, v2::Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            _ => None,
        }),
        _ => Err(invalid("a malformed header")),
    }
}
