//! A first QUIC handshake for a name whose certificate this node does not hold yet gets it,
//! as a first TCP handshake does. rustls asks for the certificate from within quinn's packet
//! processing, where nothing can be awaited; so the client's first Initial packet is looked
//! at before quinn sees it: its ClientHello's SNI is read (the Initial keys derive from the
//! packet's own connection id, RFC 9001 §5.2, with rustls's QUIC key schedule), and while
//! that name's certificate is loaded or issued, the client's Initial packets are set aside
//! (the client sends them again, QUIC's loss recovery). Once the certificate is held, or
//! the attempt is over, they go through.
//!
//! Only names a host pattern gives a certificate are held back, for at most the handshake
//! deadline, and at most 1,024 names at once; anything unreadable goes through as it
//! came (quinn decides about it).

use std::collections::HashMap;
use std::fmt;
use std::io::IoSliceMut;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use portico_certs::Certs;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Names whose certificate is being got at once, at most.
const MAX_WARMING: usize = 1024;

/// After an attempt that got no certificate, a name's packets go through for this long (the
/// fallback certificate is served, as over TCP) before it is tried again.
const SETTLED_FOR: Duration = Duration::from_secs(30);

/// The endpoint's socket, reading each client's first packets before quinn does.
pub(crate) struct Peeking {
    inner: Arc<dyn AsyncUdpSocket>,
    warming: Arc<Warming>,
    assembler: Mutex<Assembler>,
}

impl fmt::Debug for Peeking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peeking").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl Peeking {
    /// `inner`, whose Initial packets for names without a held certificate wait while
    /// `certs` gets it (for at most `deadline`).
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, certs: Arc<Certs>, deadline: Duration) -> Self {
        let warming = Arc::new(Warming { certs, deadline, names: Mutex::default() });
        Self { inner, warming, assembler: Mutex::default() }
    }
}

impl AsyncUdpSocket for Peeking {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let mut count = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(count)) => count,
            other => return other,
        };
        let mut i = 0;
        while i < count {
            // An entry may hold several datagrams of one sender (GRO): its first tells.
            let first = &bufs[i][..meta[i].len.min(meta[i].stride.max(1))];
            let sni = self.assembler.lock().unwrap_or_else(|e| e.into_inner()).sni(first);
            let held = sni.is_some_and(|sni| self.warming.hold(&sni));
            if held {
                // Set aside: the later datagrams move up one place.
                for j in i + 1..count {
                    let len = meta[j].len;
                    let (before, after) = bufs.split_at_mut(j);
                    before[j - 1][..len].copy_from_slice(&after[0][..len]);
                    meta[j - 1] = meta[j];
                }
                count -= 1;
            } else {
                i += 1;
            }
        }
        Poll::Ready(Ok(count))
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The names whose certificates are being got for a QUIC handshake.
struct Warming {
    certs: Arc<Certs>,
    deadline: Duration,
    names: Mutex<HashMap<String, State>>,
}

#[derive(Clone, Copy)]
enum State {
    /// Being got; its packets wait until then at the latest.
    Until(Instant),
    /// Tried, and none held: its packets go through until then.
    Settled(Instant),
}

impl Warming {
    /// Whether a packet for `sni` waits: its certificate is not held, a host gives it one,
    /// and getting it is under way (started now if need be).
    fn hold(self: &Arc<Self>, sni: &str) -> bool {
        if self.certs.resolve_held(sni).is_some() {
            return false;
        }
        let Ok(name) = portico_model::Hostname::parse(sni) else { return false };
        if self.certs.owner(name.as_str()).is_none() {
            return false;
        }
        let now = Instant::now();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        match names.get(name.as_str()).copied() {
            Some(State::Until(until)) => now < until,
            Some(State::Settled(until)) if now < until => false,
            _ if names.len() >= MAX_WARMING => false,
            _ => {
                names.insert(name.as_str().to_owned(), State::Until(now + self.deadline));
                let (warming, name) = (self.clone(), name.as_str().to_owned());
                tokio::spawn(async move {
                    let got = warming.certs.resolve(Some(&name)).await.is_some();
                    let mut names = warming.names.lock().unwrap_or_else(|e| e.into_inner());
                    if got {
                        names.remove(&name);
                    } else {
                        names.insert(name, State::Settled(Instant::now() + SETTLED_FOR));
                    }
                    let now = Instant::now();
                    names.retain(|_, state| !matches!(state, State::Settled(until) if *until <= now));
                });
                true
            }
        }
    }
}

/// The CRYPTO data of a QUIC v1 Initial packet: the connection id it was sent to (the same
/// in all of a client's first packets) and its pieces, each with its offset in the stream.
/// `None` for anything else, or a packet that does not decrypt.
fn initial_crypto(datagram: &[u8]) -> Option<(Vec<u8>, Pieces)> {
    // Long header, fixed bit, type Initial (RFC 9000 §17.2.2), version 1.
    let first = *datagram.first()?;
    if first & 0xf0 != 0xc0 || datagram.get(1..5)? != [0, 0, 0, 1] {
        return None;
    }
    let mut at = 5;
    let dcid_len = usize::from(*datagram.get(at)?);
    let dcid = datagram.get(at + 1..at + 1 + dcid_len)?;
    at += 1 + dcid_len;
    let scid_len = usize::from(*datagram.get(at)?);
    at += 1 + scid_len;
    let (token_len, n) = varint(datagram.get(at..)?)?;
    at += n + usize::try_from(token_len).ok()?;
    let (length, n) = varint(datagram.get(at..)?)?;
    at += n;
    let pn_offset = at;
    let end = pn_offset.checked_add(usize::try_from(length).ok()?)?;
    let mut packet = datagram.get(..end)?.to_vec();

    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13()?.quic_suite()?;
    let keys = suite.keys(dcid, rustls::Side::Server, rustls::quic::Version::V1);
    let sample = packet.get(pn_offset + 4..pn_offset + 4 + 16)?.to_vec();
    let (head, rest) = packet.split_at_mut(pn_offset);
    keys.remote.header.decrypt_in_place(&sample, &mut head[0], rest.get_mut(..4)?).ok()?;
    let pn_len = usize::from(head[0] & 0x03) + 1;
    let number = rest[..pn_len].iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    let (header, payload) = packet.split_at_mut(pn_offset + pn_len);
    let frames = keys.remote.packet.decrypt_in_place(number, header, payload).ok()?;
    Some((dcid.to_vec(), crypto_pieces(frames)?))
}

/// Pieces of a CRYPTO stream, each with its offset.
type Pieces = Vec<(u64, Vec<u8>)>;

/// Reads the SNI of clients' ClientHellos from their Initial packets, keeping what a first
/// packet has of one until the rest arrives (a ClientHello with a post-quantum key share
/// spans two packets).
#[derive(Default)]
struct Assembler {
    /// CRYPTO pieces by connection id, and when they came.
    partial: HashMap<Vec<u8>, (Pieces, Instant)>,
}

/// Connection ids whose ClientHello is incomplete, at most, and for how long.
const MAX_PARTIAL: usize = 4096;
const PARTIAL_FOR: Duration = Duration::from_secs(10);

impl Assembler {
    /// The SNI of the ClientHello `datagram` completes (or holds whole), if any.
    fn sni(&mut self, datagram: &[u8]) -> Option<String> {
        let (dcid, pieces) = initial_crypto(datagram)?;
        let now = Instant::now();
        let mut all = self.partial.remove(&dcid).map(|(pieces, _)| pieces).unwrap_or_default();
        all.extend(pieces);
        let stream = contiguous(&all);
        match client_hello_sni(&stream) {
            Some(name) => Some(name),
            None => {
                // Not all of the ClientHello yet: kept for the next packet (within bounds).
                let complete = stream.len() >= 4 && stream.len() >= 4 + hello_length(&stream);
                let size: usize = all.iter().map(|(_, piece)| piece.len()).sum();
                if !complete && size <= 65_536 {
                    if self.partial.len() >= MAX_PARTIAL {
                        self.partial.retain(|_, (_, at)| now.duration_since(*at) < PARTIAL_FOR);
                    }
                    if self.partial.len() < MAX_PARTIAL {
                        self.partial.insert(dcid, (all, now));
                    }
                }
                None
            }
        }
    }
}

/// The length a handshake message's header gives.
fn hello_length(message: &[u8]) -> usize {
    message.get(1..4).map_or(0, |l| usize::from(l[0]) << 16 | usize::from(l[1]) << 8 | usize::from(l[2]))
}

/// The CRYPTO frames' pieces, each with its offset.
fn crypto_pieces(mut frames: &[u8]) -> Option<Pieces> {
    let mut pieces = Vec::new();
    while let Some(&kind) = frames.first() {
        match kind {
            // PADDING, PING
            0x00 | 0x01 => frames = &frames[1..],
            // ACK (with ECN counts for 0x03)
            0x02 | 0x03 => {
                let mut rest = &frames[1..];
                let mut field = || -> Option<u64> {
                    let (value, n) = varint(rest)?;
                    rest = &rest[n..];
                    Some(value)
                };
                let (_largest, _delay, ranges, _first) = (field()?, field()?, field()?, field()?);
                for _ in 0..ranges.min(256) {
                    field()?;
                    field()?;
                }
                if kind == 0x03 {
                    field()?;
                    field()?;
                    field()?;
                }
                frames = rest;
            }
            // CRYPTO
            0x06 => {
                let (offset, n) = varint(&frames[1..])?;
                let (len, m) = varint(&frames[1 + n..])?;
                let start = 1 + n + m;
                let data = frames.get(start..start + usize::try_from(len).ok()?)?;
                pieces.push((offset, data.to_vec()));
                frames = &frames[start + data.len()..];
            }
            // Anything else ends what can be read (CONNECTION_CLOSE, or not an Initial's).
            _ => break,
        }
    }
    (!pieces.is_empty()).then_some(pieces)
}

/// The stream `pieces` make from offset 0 on, as far as it is contiguous.
fn contiguous(pieces: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut sorted: Vec<&(u64, Vec<u8>)> = pieces.iter().collect();
    sorted.sort_by_key(|(offset, _)| *offset);
    let mut stream = Vec::new();
    for (offset, data) in sorted {
        let Ok(offset) = usize::try_from(*offset) else { break };
        if offset > stream.len() {
            break;
        }
        if offset + data.len() > stream.len() {
            stream.extend_from_slice(&data[stream.len() - offset..]);
        }
    }
    stream
}

/// The `server_name` of the ClientHello `hello` starts with, when its bytes reach it (a
/// ClientHello may span several Initial packets).
fn client_hello_sni(hello: &[u8]) -> Option<String> {
    let mut r = Reader(hello);
    if r.u8()? != 1 {
        return None;
    }
    r.skip(3 + 2 + 32)?; // length, legacy_version, random
    let session = usize::from(r.u8()?);
    r.skip(session)?;
    let suites = r.u16()?;
    r.skip(suites)?;
    let compression = usize::from(r.u8()?);
    r.skip(compression)?;
    r.u16()?; // the extensions' length
    loop {
        let (kind, len) = (r.u16()?, r.u16()?);
        if kind != 0 {
            r.skip(len)?;
            continue;
        }
        r.u16()?; // the list's length
        if r.u8()? != 0 {
            return None;
        }
        let name_len = r.u16()?;
        let name = r.take(name_len)?;
        return std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
    }
}

/// Reads a byte string front to back; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(taken)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// A QUIC variable-length integer (RFC 9000 §16) and its length.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    let raw = bytes.get(..len)?;
    let value = raw[1..].iter().fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
    Some((value, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first `count` datagrams a quinn client sends to a server for `name`.
    async fn first_initials(name: &str, provider: rustls::crypto::CryptoProvider, count: usize) -> Vec<Vec<u8>> {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let _connecting = client.connect(server.local_addr().unwrap(), name).unwrap();
        let mut datagrams = Vec::new();
        for _ in 0..count {
            let mut buf = vec![0u8; 65536];
            let (n, _) = server.recv_from(&mut buf).await.unwrap();
            buf.truncate(n);
            datagrams.push(buf);
        }
        datagrams
    }

    #[tokio::test]
    async fn the_sni_of_a_client_s_first_initial_packets_is_read() {
        let mut small = rustls::crypto::aws_lc_rs::default_provider();
        small.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        let packets = first_initials("Peek.Example.test", small, 1).await;
        assert!(packets[0].len() >= 1200, "an Initial is padded");
        let mut assembler = Assembler::default();
        assert_eq!(assembler.sni(&packets[0]).as_deref(), Some("peek.example.test"));
        assert!(assembler.partial.is_empty(), "nothing kept for a whole ClientHello");

        // A post-quantum key share makes the ClientHello span two packets. rustls shuffles
        // its extensions, so the SNI is in the first packet or the second: either way it is
        // read, and the second case (the first packet's pieces kept) comes up within a few
        // tries.
        let mut split_seen = false;
        for _ in 0..20 {
            let mut big = rustls::crypto::aws_lc_rs::default_provider();
            big.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
            let packets = first_initials("pq.example.test", big, 2).await;
            let mut assembler = Assembler::default();
            match assembler.sni(&packets[0]) {
                Some(name) => assert_eq!(name, "pq.example.test"),
                None => {
                    split_seen = true;
                    assert_eq!(assembler.partial.len(), 1, "its pieces kept");
                    assert_eq!(assembler.sni(&packets[1]).as_deref(), Some("pq.example.test"));
                    assert!(assembler.partial.is_empty());
                }
            }
        }
        assert!(split_seen, "a ClientHello whose SNI is in its second packet");
        let packets = first_initials("pq.example.test", rustls::crypto::aws_lc_rs::default_provider(), 1).await;

        // Anything else is not read.
        let mut tampered = packets[0].clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(initial_crypto(&tampered).is_none(), "an Initial that does not authenticate");
        assert!(initial_crypto(&packets[0][..40]).is_none(), "cut short");
        assert!(initial_crypto(b"\x40short header").is_none());
        assert!(initial_crypto(&[]).is_none());
    }

    #[test]
    fn varints_read_every_length() {
        assert_eq!(varint(&[0x25]), Some((37, 1)));
        assert_eq!(varint(&[0x7b, 0xbd]), Some((15293, 2)));
        assert_eq!(varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]), Some((151_288_809_941_952_652, 8)));
        assert_eq!(varint(&[0x7b]), None);
    }
}
