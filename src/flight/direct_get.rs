//! DoGet without copying message bodies.
//!
//! tonic's codec encodes every response message into one buffer, which
//! copies each FlightData body (the stored Arrow buffers, ~all the bytes of
//! a DoGet) once more on its way to the socket. This layer answers the DoGet
//! route itself: it decodes the Ticket, runs the same `FlightService::do_get`
//! (auth, request id, deadline, panic guard included) and frames each
//! FlightData as a gRPC message whose protobuf prefix is encoded and whose
//! body goes out as the stored `Bytes`, which hyper/h2 write with vectored
//! I/O. Every other route goes to the generated server unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{FlightData, Ticket};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::Service as TowerService;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

use super::Service;

const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";

/// Serves DoGet directly and hands every other request to `inner`.
#[derive(Clone)]
pub struct DirectGet<S> {
    inner: S,
    service: Arc<Service>,
    /// Largest request message accepted (the server's message limit).
    max_request: usize,
}

impl<S> DirectGet<S> {
    pub fn new(inner: S, service: Arc<Service>, max_request: usize) -> Self {
        Self { inner, service, max_request }
    }
}

impl<S: NamedService> NamedService for DirectGet<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> TowerService<http::Request<Body>> for DirectGet<S>
where
    S: TowerService<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != DO_GET {
            return Box::pin(self.inner.call(req));
        }
        let (service, max_request) = (self.service.clone(), self.max_request);
        Box::pin(async move { Ok(do_get(service, max_request, req).await.unwrap_or_else(|status| status.into_http())) })
    }
}

async fn do_get(service: Arc<Service>, max_request: usize, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, max_request.saturating_add(5))
        .collect()
        .await
        .map_err(|e| Status::resource_exhausted(format!("DoGet request: {e} (limit {max_request} bytes)")))?
        .to_bytes();
    let ticket = decode_request(&bytes)?;
    let request = tonic::Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, ticket);
    let (metadata, stream, _) = service.do_get(request).await?.into_parts();
    let frames = frames(stream);
    let mut response = http::Response::new(Body::new(StreamBody::new(frames)));
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    Ok(response)
}

/// Largest DATA frame payload h2 copies into its write buffer rather than
/// writing it on its own (h2's `CHAIN_THRESHOLD` is 256 bytes with
/// vectored I/O). Every message's encoded prefix (gRPC header, FlightData
/// fields, Arrow IPC metadata: about 600 bytes for a chunk) goes in pieces
/// of at most this, so it shares one `writev` with the message's body: one
/// write per message instead of two (the second a few hundred bytes that
/// woke the client for nothing).
const COPIED_FRAME: usize = 255;

/// The HTTP/2 frames of a gRPC response stream: each message as its prefix
/// (in pieces of at most [`COPIED_FRAME`] bytes) and its body; the first error's status as trailers and nothing after it,
/// or an OK status after the last message.
fn frames(stream: impl futures::Stream<Item = Result<FlightData, Status>>) -> impl futures::Stream<Item = Result<Frame<Bytes>, Status>> {
    stream
        .map(|item| match item {
            Ok(data) => {
                let (prefix, body) = frame(data);
                // The prefix goes as DATA frames h2 copies into its write
                // buffer, so the body's frame joins them in one writev (a
                // frame of h2's chain threshold or more is written alone).
                let mut frames: Vec<Frame<Bytes>> =
                    (0..prefix.len()).step_by(COPIED_FRAME).map(|at| Frame::data(prefix.slice(at..(at + COPIED_FRAME).min(prefix.len())))).collect();
                frames.push(Frame::data(body));
                futures::stream::iter(frames)
            }
            Err(status) => futures::stream::iter(vec![Frame::trailers(trailers(&status))]),
        })
        .flatten()
        .filter(|f| std::future::ready(f.data_ref().is_none_or(|d| !d.is_empty())))
        .chain(futures::stream::once(async { Frame::trailers(trailers(&Status::ok(""))) }))
        .scan(false, |done, f| {
            let out = (!*done).then(|| {
                *done = f.is_trailers();
                Ok(f)
            });
            std::future::ready(out)
        })
}

/// The Ticket in a unary gRPC request body: one uncompressed message.
fn decode_request(bytes: &[u8]) -> Result<Ticket, Status> {
    let (&flag, rest) = bytes.split_first().ok_or_else(|| Status::invalid_argument("DoGet request: empty body, expected one Ticket message"))?;
    if flag != 0 {
        return Err(Status::unimplemented("DoGet request: compressed messages are not supported"));
    }
    let (len, message) = rest.split_at_checked(4).ok_or_else(|| Status::invalid_argument("DoGet request: truncated message header"))?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if message.len() != len {
        return Err(Status::invalid_argument(format!("DoGet request: message of {} bytes, header says {len}", message.len())));
    }
    Ticket::decode(message).map_err(|e| Status::invalid_argument(format!("DoGet request: not a Ticket: {e}")))
}

/// A FlightData as a gRPC message: the frame header and every field but
/// the body, encoded; then the body as it is.
fn frame(data: FlightData) -> (Bytes, Bytes) {
    const BODY_KEY: u64 = (1000 << 3) | 2; // field 1000, length-delimited
    let body = data.data_body.clone();
    let head = FlightData { data_body: Bytes::new(), ..data };
    let body_prefix = if body.is_empty() { 0 } else { prost::encoding::encoded_len_varint(BODY_KEY) + prost::encoding::encoded_len_varint(body.len() as u64) };
    let len = head.encoded_len() + body_prefix + body.len();
    let mut out = BytesMut::with_capacity(5 + len - body.len());
    out.put_u8(0);
    out.put_u32(len as u32);
    head.encode(&mut out).expect("the buffer was sized for the message");
    if !body.is_empty() {
        prost::encoding::encode_varint(BODY_KEY, &mut out);
        prost::encoding::encode_varint(body.len() as u64, &mut out);
    }
    (out.freeze(), body)
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_flight_data_decodes_as_the_original() {
        for body in [Bytes::new(), Bytes::from(vec![7u8; 300]), Bytes::from(vec![1u8; 70_000])] {
            let data = FlightData { data_header: Bytes::from_static(b"header"), app_metadata: Bytes::from_static(b"m"), data_body: body, ..Default::default() };
            let (prefix, body) = frame(data.clone());
            let whole: Vec<u8> = prefix.iter().chain(body.iter()).copied().collect();
            assert_eq!(whole[0], 0);
            assert_eq!(u32::from_be_bytes(whole[1..5].try_into().unwrap()) as usize, whole.len() - 5);
            assert_eq!(FlightData::decode(&whole[5..]).unwrap(), data);
        }
    }

    #[tokio::test]
    async fn a_stream_ends_with_the_first_errors_status_or_ok() {
        let data = |n: u8| Ok(FlightData { data_header: Bytes::from(vec![n]), data_body: Bytes::from(vec![n; 10]), ..Default::default() });
        let status_of = |f: &Frame<Bytes>| f.trailers_ref().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap().to_string());
        let ok: Vec<_> = frames(futures::stream::iter(vec![data(1), data(2)])).map(Result::unwrap).collect().await;
        assert_eq!(ok.len(), 5);
        assert!(ok[..4].iter().all(|f| f.is_data()));
        assert_eq!(status_of(&ok[4]).as_deref(), Some("0"));
        let failed: Vec<_> = frames(futures::stream::iter(vec![data(1), Err(Status::deadline_exceeded("late")), data(2)])).map(Result::unwrap).collect().await;
        assert_eq!(failed.len(), 3);
        assert_eq!(status_of(&failed[2]).as_deref(), Some("4"));
        assert_eq!(failed[2].trailers_ref().unwrap().get("grpc-message").unwrap(), "late");
        // A message without a body is one frame.
        let empty: Vec<_> = frames(futures::stream::iter(vec![Ok(FlightData { data_header: Bytes::from_static(b"h"), ..Default::default() })]))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(empty.len(), 2);
    }

    /// A prefix longer than h2 copies goes in pieces that h2 copies; they
    /// and the body still make the whole message.
    #[tokio::test]
    async fn long_prefixes_go_in_pieces_h2_copies() {
        let data = FlightData { data_header: Bytes::from(vec![3u8; 600]), data_body: Bytes::from(vec![9u8; 5000]), ..Default::default() };
        let sent: Vec<Frame<Bytes>> = frames(futures::stream::iter(vec![Ok(data.clone())])).map(Result::unwrap).collect().await;
        let (last, messages) = sent.split_last().unwrap();
        assert!(last.is_trailers());
        let pieces: Vec<Bytes> = messages.iter().map(|f| f.data_ref().unwrap().clone()).collect();
        assert_eq!(pieces.len(), 4, "three pieces of the prefix, then the body");
        assert!(pieces[..3].iter().all(|p| p.len() <= COPIED_FRAME));
        assert_eq!(pieces[3], data.data_body);
        let whole: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(FlightData::decode(&whole[5..]).unwrap(), data);
    }

    #[test]
    fn malformed_requests_are_rejected() {
        assert_eq!(decode_request(&[]).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(decode_request(&[1, 0, 0, 0, 0]).unwrap_err().code(), tonic::Code::Unimplemented);
        assert_eq!(decode_request(&[0, 0, 0]).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(decode_request(&[0, 0, 0, 0, 9, 1]).unwrap_err().code(), tonic::Code::InvalidArgument);
        let ticket = Ticket { ticket: Bytes::from_static(b"{}") };
        let mut ok = vec![0, 0, 0, 0, ticket.encoded_len() as u8];
        ticket.encode(&mut ok).unwrap();
        assert_eq!(decode_request(&ok).unwrap(), ticket);
    }
}
