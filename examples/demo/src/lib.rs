//! The demo's upstream services: a users service and an orders service, as tiny hyper servers,
//! and a gRPC catalog service (tonic) that JSON clients reach through the gateway's transcoding.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Which demo service to run.
#[derive(Clone, Copy, Debug)]
pub enum DemoService {
    /// `GET /users/{id}`: a user, or 404.
    Users,
    /// `GET /orders/user/{id}`: that user's orders.
    Orders,
}

/// Bind `addr` and serve `service` in the background; returns the bound address.
pub async fn start(service: DemoService, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req| async move {
                    Ok::<_, Infallible>(handle(service, req).await)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn handle(service: DemoService, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let (status, body) = match (service, req.method() == Method::POST) {
        // POST /users {"id": ..., "name": ...} "creates" a user (nothing is stored).
        (DemoService::Users, true) if path == "/users" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) if v["id"].is_string() => {
                    let created =
                        serde_json::json!({ "id": v["id"], "name": v["name"], "created": true });
                    (StatusCode::CREATED, created.to_string())
                }
                _ => (
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"expected a JSON object with an id"}"#.to_string(),
                ),
            }
        }
        _ => {
            let found = match service {
                DemoService::Users => path.strip_prefix("/users/").and_then(user),
                DemoService::Orders => path.strip_prefix("/orders/user/").and_then(orders),
            };
            match found {
                Some(body) => (StatusCode::OK, body),
                None => (
                    StatusCode::NOT_FOUND,
                    r#"{"error":"not found"}"#.to_string(),
                ),
            }
        }
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("server", "demo-upstream")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn user(id: &str) -> Option<String> {
    let name = match id {
        "1" => "Ada Lovelace",
        "2" => "Alan Turing",
        _ => return None,
    };
    Some(format!(r#"{{"id":"{id}","name":"{name}"}}"#))
}

fn orders(id: &str) -> Option<String> {
    match id {
        "1" => Some(r#"[{"id":"o-17","item":"Difference Engine","total":1820}]"#.to_string()),
        "2" => Some(r#"[{"id":"o-42","item":"Bombe","total":1939},{"id":"o-43","item":"ACE","total":1945}]"#.to_string()),
        _ => None,
    }
}

/// The demo's HTTPS certificate: a throwaway CA (`ca.pem`, for `curl --cacert`) and a
/// certificate it signs for `localhost` and `127.0.0.1` (`localhost.pem`, `localhost.key`),
/// written to `dir` unless they are there already. Made on the machine that runs the demo;
/// no private key is committed.
pub fn demo_certificate(dir: &std::path::Path) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    let files = ["ca.pem", "localhost.pem", "localhost.key"].map(|f| dir.join(f));
    if files.iter().all(|f| f.is_file()) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "wasmgate demo CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    std::fs::write(&files[0], ca.pem())?;
    std::fs::write(&files[1], cert.pem())?;
    std::fs::write(&files[2], key.serialize_pem())?;
    Ok(())
}

/// A catalog product, as `proto/catalog.proto` has it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Product {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub price_cents: i64,
}

/// `GetProductRequest` (`id`) and `SearchProductsRequest` (`name`): one string field each.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OneString {
    #[prost(string, tag = "1")]
    pub value: String,
}

fn products() -> Vec<Product> {
    [
        ("1", "Analytical Engine", 1_000_000),
        ("2", "Difference Engine", 250_000),
        ("3", "Loom card", 99),
    ]
    .into_iter()
    .map(|(id, name, price_cents)| Product {
        id: id.into(),
        name: name.into(),
        price_cents,
    })
    .collect()
}

struct GetProduct;

impl tonic::server::UnaryService<OneString> for GetProduct {
    type Response = Product;
    type Future = std::future::Ready<Result<tonic::Response<Product>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<OneString>) -> Self::Future {
        let id = req.into_inner().value;
        std::future::ready(
            products()
                .into_iter()
                .find(|p| p.id == id)
                .map(tonic::Response::new)
                .ok_or_else(|| tonic::Status::not_found(format!("no product {id}"))),
        )
    }
}

struct SearchProducts;

impl tonic::server::ServerStreamingService<OneString> for SearchProducts {
    type Response = Product;
    type ResponseStream =
        futures_util::stream::Iter<std::vec::IntoIter<Result<Product, tonic::Status>>>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<OneString>) -> Self::Future {
        let name = req.into_inner().value.to_lowercase();
        let found: Vec<_> = products()
            .into_iter()
            .filter(|p| p.name.to_lowercase().contains(&name))
            .map(Ok)
            .collect();
        std::future::ready(Ok(tonic::Response::new(futures_util::stream::iter(found))))
    }
}

async fn catalog(req: Request<Incoming>) -> Response<tonic::body::Body> {
    let codec =
        || tonic::server::Grpc::new(tonic_prost::ProstCodec::<Product, OneString>::default());
    match req.uri().path() {
        "/demo.v1.Catalog/GetProduct" => codec().unary(GetProduct, req).await,
        "/demo.v1.Catalog/SearchProducts" => codec().server_streaming(SearchProducts, req).await,
        other => tonic::Status::unimplemented(other.to_owned()).into_http(),
    }
}

/// Bind `addr` and serve the gRPC catalog (HTTP/2 in cleartext) in the background; returns the
/// bound address.
pub async fn start_catalog(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
                    TokioIo::new(stream),
                    service_fn(|req| async { Ok::<_, Infallible>(catalog(req).await) }),
                ),
            );
        }
    });
    Ok(bound)
}

/// Compile `proto/catalog.proto` (with the `google.api.http` protos in `tests/protos`) into the
/// descriptor set the gateway's `products` route reads, as `protoc --include_imports
/// --descriptor_set_out` would write it, at `out`.
pub fn catalog_descriptors(out: &std::path::Path) -> anyhow::Result<()> {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = protox::Compiler::new([demo.join("proto"), demo.join("../../tests/protos")])?
        .include_imports(true)
        .open_files(["catalog.proto"])?
        .encode_file_descriptor_set();
    std::fs::write(out, set)?;
    Ok(())
}
