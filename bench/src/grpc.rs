//! `bench-grpc ADDR DESCRIPTORS`: a gRPC upstream for the transcoding rows (tonic's server
//! machinery over hyper's HTTP/2, cleartext). Serves `shop.v1.Books/GetBook` from
//! tests/protos/bookstore.proto with one fixed book, and first writes that proto's descriptor set
//! (with its imports, as `protoc --include_imports --descriptor_set_out` would) to DESCRIPTORS
//! for the gateway's `transcode` route.

use std::convert::Infallible;
use std::path::Path;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Clone, PartialEq, prost::Message)]
struct GetBookRequest {
    #[prost(string, tag = "1")]
    shelf: String,
    #[prost(string, tag = "2")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Book {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    title: String,
    #[prost(string, tag = "3")]
    author: String,
    #[prost(int32, tag = "4")]
    pages: i32,
    #[prost(bool, tag = "5")]
    in_print: bool,
    #[prost(string, tag = "6")]
    shelf: String,
}

struct GetBook;

impl tonic::server::UnaryService<GetBookRequest> for GetBook {
    type Response = Book;
    type Future = std::future::Ready<Result<tonic::Response<Book>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<GetBookRequest>) -> Self::Future {
        let req = req.into_inner();
        std::future::ready(Ok(tonic::Response::new(Book {
            id: req.id,
            title: "Dune".into(),
            author: "Frank Herbert".into(),
            pages: 412,
            in_print: true,
            shelf: req.shelf,
        })))
    }
}

async fn books(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    Ok(match req.uri().path() {
        "/shop.v1.Books/GetBook" => {
            tonic::server::Grpc::new(tonic_prost::ProstCodec::<Book, GetBookRequest>::default())
                .unary(GetBook, req)
                .await
        }
        other => tonic::Status::unimplemented(other.to_owned()).into_http(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9091".into());
    let out = args.next().unwrap_or_else(|| "bookstore.pb".into());
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/protos");
    let set = protox::Compiler::new([protos])?
        .include_imports(true)
        .open_files(["bookstore.proto"])?
        .encode_file_descriptor_set();
    std::fs::write(&out, set)?;

    let listener = TcpListener::bind(&addr).await?;
    eprintln!("bench-grpc on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(books)),
        );
    }
}
