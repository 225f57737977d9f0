//! What a request's protocol asks of the pipeline, chosen once per request when its route is
//! known: each adapter rewrites the request on the way in (and decodes its body) and adapts the
//! response on the way out. gRPC-Web is translated to gRPC and back, a WebSocket handshake the
//! upstream accepts becomes a relay, and responses are compressed for clients that accept it.
//! (gRPC status mapping and the HTTPS redirect are chosen in [`super::Proxy::handle`], before
//! routing: they apply to requests no route takes too.)

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http::header::HeaderValue;
use http::request::Parts;
use http::{Method, Response, StatusCode};

use super::accept::{ClientBody, Inbound};
use super::compress::{self, Coding};
use super::grpc::{self, Flavour};
use super::websocket::{self, Handshake};
use super::{Ctx, forward, grpc_web};
use crate::snapshot::Route;
use crate::upstream::{Body, ResponseBody};

/// The adapters one request needs.
pub(super) struct Adapters {
    /// gRPC-Web from a browser, sent on as gRPC (routes with `grpc_web`).
    web: Option<Flavour>,
    /// Compression, on routes with `compress`: the coding the client accepts, if any.
    compress: Option<Option<Coding>>,
    /// A WebSocket handshake (HTTP/1.1 `Upgrade`, or HTTP/2's extended CONNECT).
    websocket: Option<Handshake>,
}

impl Adapters {
    /// Choose for a request on `route`, rewriting it as the chosen adapters need.
    pub(super) fn choose(route: &Route, parts: &mut Parts) -> Adapters {
        let web = route
            .config
            .grpc_web
            .then(|| grpc::flavour(&parts.headers))
            .flatten()
            .filter(|f| *f != Flavour::Grpc);
        if web.is_some() {
            grpc_web::translate_request(parts);
        }
        let compress = (route.config.compress && parts.method != Method::HEAD)
            .then(|| compress::negotiate(&parts.headers));
        Adapters {
            web,
            compress,
            websocket: websocket::take_handshake(parts),
        }
    }

    /// The client's body as the upstream and the filters read it.
    pub(super) fn request_body(
        &self,
        body: Inbound,
        counted: Option<Arc<AtomicU64>>,
    ) -> ClientBody {
        match self.web {
            Some(Flavour::WebText) => ClientBody::base64(grpc_web::TextDecoder::new(body), counted),
            _ => ClientBody::plain(body, counted),
        }
    }

    /// The protocol the upstream request asks to switch to.
    pub(super) fn upgrade(&self) -> Option<HeaderValue> {
        self.websocket.as_ref().map(|h| h.protocol.clone())
    }

    /// The upstream switched protocols for a client that asked to: its response goes back as a
    /// relay, not through response phases.
    pub(super) fn switched(&self, resp: &Response<ResponseBody>) -> bool {
        self.websocket.is_some() && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    }

    /// The upstream's response as the client gets it when no response phase runs: a relay
    /// between the two connections when it switched protocols, else its body streamed back.
    pub(super) fn pass_back(
        &mut self,
        resp: Response<ResponseBody>,
        cx: &Ctx<'_>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(handshake) = self.websocket.take()
        {
            let idle = cx.snapshot.websocket_idle;
            return websocket::relay(resp, handshake, idle, cx.request_id.clone());
        }
        forward::stream_back(resp)
    }

    /// The response on its way out: back to gRPC-Web, compressed.
    pub(super) fn response(&self, mut resp: Response<Body>, cx: &Ctx<'_>) -> Response<Body> {
        if let Some(flavour) = self.web {
            resp = grpc_web::translate_response(resp, flavour);
        }
        if let Some(coding) = self.compress {
            resp = compress::apply(resp, coding, &cx.snapshot.compression);
        }
        resp
    }
}
