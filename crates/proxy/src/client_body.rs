//! A request's body as the client sends it: over HTTP/1.1 or HTTP/2 (hyper's `Incoming`), or
//! over HTTP/3 (the receiving half of an h3 request stream). The handler and the upstream
//! client take either, streamed as it comes.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::response::BoxError;

/// The body of a client's request.
pub enum ClientBody {
    /// HTTP/1.1 or HTTP/2.
    Hyper(Incoming),
    /// HTTP/3 (boxed: the common body stays the size of hyper's, which every request's
    /// future carries).
    Quic(Box<QuicBody>),
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hyper(_) => "ClientBody::Hyper",
            Self::Quic(_) => "ClientBody::Quic",
        })
    }
}

/// The client's body could not be read (an HTTP/3 stream reset or cut short): the client's
/// fault, as a broken HTTP/1 body is.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct BodyReadError(String);

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            Self::Quic(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(body) => body.is_end_stream(),
            Self::Quic(body) => body.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(body) => body.size_hint(),
            Self::Quic(body) => body.length.map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

/// The receiving half of an HTTP/3 request stream, as a body: its DATA frames, then its
/// trailers if any.
pub struct QuicBody {
    stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>,
    /// The declared `Content-Length`, if any.
    length: Option<u64>,
    data_done: bool,
    done: bool,
}

impl QuicBody {
    /// The body arriving on `stream`, `length` bytes long if the request said so.
    pub fn new(stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>, length: Option<u64>) -> Self {
        Self { stream, length, data_done: false, done: length == Some(0) }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.stream.poll_recv_data(cx)) {
                Ok(Some(mut chunk)) => {
                    let bytes = chunk.copy_to_bytes(chunk.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Ok(None) => self.data_done = true,
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(BodyReadError(e.to_string()).into())));
                }
            }
        }
        let trailers = ready!(self.stream.poll_recv_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(BodyReadError(e.to_string()).into()))),
        }
    }
}
