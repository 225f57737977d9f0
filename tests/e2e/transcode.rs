//! JSON/HTTP clients calling a gRPC service through a `transcode` route: a real tonic server
//! for tests/protos/bookstore.proto (every kind of `google.api.http` rule, a server stream, an
//! unannotated method), its descriptor set compiled at test time with protox (as `protoc
//! --include_imports --descriptor_set_out` would write it), JSON in and out, gRPC statuses as
//! HTTP statuses, filters on the JSON side, and gRPC clients passing through the same route.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::{Status, metadata::MetadataValue};
use wasmgate::Config;

use wasmgate_tests::{FileGateway, TestGateway, eventually, temp_dir};

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
    #[prost(string, repeated, tag = "7")]
    tags: Vec<String>,
    #[prost(int64, tag = "8")]
    isbn: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShelfAndId {
    #[prost(string, tag = "1")]
    shelf: String,
    #[prost(string, tag = "2")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListBooksRequest {
    #[prost(string, tag = "1")]
    shelf: String,
    #[prost(string, tag = "2")]
    author: String,
    #[prost(int32, tag = "3")]
    limit: i32,
}

/// `CreateBookRequest` and `UpdateBookRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct ShelfAndBook {
    #[prost(string, tag = "1")]
    shelf: String,
    #[prost(message, optional, tag = "2")]
    book: Option<Book>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RenameBookRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    title: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Nothing {}

#[derive(Clone, PartialEq, prost::Message)]
struct SearchRequest {
    #[prost(string, tag = "1")]
    query: String,
    #[prost(string, repeated, tag = "2")]
    tags: Vec<String>,
    #[prost(bool, tag = "3")]
    in_print_only: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SearchResponse {
    #[prost(message, repeated, tag = "1")]
    results: Vec<Book>,
    #[prost(int32, tag = "2")]
    total: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ArchiveRequest {
    #[prost(string, tag = "1")]
    shelf: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ArchiveResponse {
    #[prost(int32, tag = "1")]
    archived: i32,
}

/// `PingRequest` and `PingReply`.
#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    message: String,
}

fn shelf() -> Vec<Book> {
    let book = |id: &str, title: &str, author: &str, in_print: bool, tags: &[&str]| Book {
        id: id.into(),
        title: title.into(),
        author: author.into(),
        pages: 400 + id.len() as i32,
        in_print,
        shelf: "1".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        isbn: 9_780_441_013_593,
    };
    vec![
        book("1", "Dune", "Herbert", true, &["classic", "scifi"]),
        book("2", "Dune Messiah", "Herbert", false, &["scifi"]),
        book("3", "Neuromancer", "Gibson", true, &["cyberpunk", "scifi"]),
    ]
}

/// A unary method as tonic's server machinery calls it.
struct Unary<F>(F);

impl<F, Req, Resp> tonic::server::UnaryService<Req> for Unary<F>
where
    F: FnMut(tonic::Request<Req>) -> Result<Resp, Status>,
{
    type Response = Resp;
    type Future = std::future::Ready<Result<tonic::Response<Resp>, Status>>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        let mut resp = (self.0)(request).map(tonic::Response::new);
        if let Ok(resp) = &mut resp {
            resp.metadata_mut()
                .insert("x-served-by", MetadataValue::from_static("tonic"));
        }
        std::future::ready(resp)
    }
}

/// A server-streaming method: every message at once.
struct Streaming<F>(F);

impl<F, Req, Resp> tonic::server::ServerStreamingService<Req> for Streaming<F>
where
    F: FnMut(Req) -> Result<Vec<Resp>, Status>,
    Resp: Send + 'static,
{
    type Response = Resp;
    type ResponseStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Resp, Status>>>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        std::future::ready((self.0)(request.into_inner()).map(|all| {
            let items: Vec<_> = all.into_iter().map(Ok).collect();
            tonic::Response::new(futures_util::stream::iter(items))
        }))
    }
}

fn codec<A, B>() -> tonic::server::Grpc<tonic_prost::ProstCodec<A, B>>
where
    A: prost::Message + Send + 'static,
    B: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
}

/// The bookstore: shelf "1" holds three books.
async fn books(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match path.as_str() {
        "/shop.v1.Books/GetBook" => {
            let get = |r: tonic::Request<ShelfAndId>| {
                let r = r.into_inner();
                shelf()
                    .into_iter()
                    .find(|b| b.shelf == r.shelf && b.id == r.id)
                    .ok_or_else(|| {
                        Status::not_found(format!("no book {} on shelf {}", r.id, r.shelf))
                    })
            };
            codec().unary(Unary(get), req).await
        }
        "/shop.v1.Books/ListBooks" => {
            let list = |r: ListBooksRequest| {
                let mut found: Vec<Book> = shelf()
                    .into_iter()
                    .filter(|b| b.shelf == r.shelf && (r.author.is_empty() || b.author == r.author))
                    .collect();
                if r.limit > 0 {
                    found.truncate(r.limit as usize);
                }
                Ok(found)
            };
            codec().server_streaming(Streaming(list), req).await
        }
        "/shop.v1.Books/CreateBook" => {
            let create = |r: tonic::Request<ShelfAndBook>| {
                let r = r.into_inner();
                let mut book = r.book.ok_or_else(|| Status::invalid_argument("no book"))?;
                book.id = "new".into();
                book.shelf = r.shelf;
                Ok(book)
            };
            codec().unary(Unary(create), req).await
        }
        "/shop.v1.Books/UpdateBook" => {
            let update = |r: tonic::Request<ShelfAndBook>| {
                let r = r.into_inner();
                let mut book = r.book.unwrap_or_default();
                book.shelf = r.shelf;
                Ok(book)
            };
            codec().unary(Unary(update), req).await
        }
        "/shop.v1.Books/RenameBook" => {
            let rename = |r: tonic::Request<RenameBookRequest>| {
                let r = r.into_inner();
                Ok(Book {
                    id: r.name,
                    title: r.title,
                    ..Book::default()
                })
            };
            codec().unary(Unary(rename), req).await
        }
        "/shop.v1.Books/DeleteBook" => {
            let delete = |r: tonic::Request<ShelfAndId>| match r.into_inner().id.as_str() {
                "locked" => Err(Status::permission_denied("the book is locked")),
                _ => Ok(Nothing {}),
            };
            codec().unary(Unary(delete), req).await
        }
        "/shop.v1.Books/Search" => {
            let search = |r: tonic::Request<SearchRequest>| {
                let r = r.into_inner();
                let results: Vec<Book> = shelf()
                    .into_iter()
                    .filter(|b| b.title.to_lowercase().contains(&r.query.to_lowercase()))
                    .filter(|b| !r.in_print_only || b.in_print)
                    .filter(|b| r.tags.iter().all(|t| b.tags.contains(t)))
                    .collect();
                Ok(SearchResponse {
                    total: results.len() as i32,
                    results,
                })
            };
            codec().unary(Unary(search), req).await
        }
        "/shop.v1.Books/Archive" => {
            let archive = |r: tonic::Request<ArchiveRequest>| {
                let n = shelf()
                    .iter()
                    .filter(|b| b.shelf == r.get_ref().shelf)
                    .count();
                Ok(ArchiveResponse { archived: n as i32 })
            };
            codec().unary(Unary(archive), req).await
        }
        "/shop.v1.Books/Ping" => {
            let ping = |r: tonic::Request<Ping>| {
                Ok(Ping {
                    message: format!("pong: {}", r.into_inner().message),
                })
            };
            codec().unary(Unary(ping), req).await
        }
        _ => Status::unimplemented(path).into_http(),
    })
}

/// The bookstore on tonic's server machinery over hyper's HTTP/2, on 127.0.0.1:0.
async fn bookstore() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service_fn(books)),
            );
        }
    });
    addr
}

fn protos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("protos")
}

/// Compile `file` (under tests/protos, or `dir`) with its imports into a descriptor set file.
fn descriptor_set(dir: &Path, file: &str) -> PathBuf {
    let set = protox::Compiler::new([dir.to_path_buf(), protos()])
        .unwrap()
        .include_imports(true)
        .open_files([file])
        .unwrap_or_else(|e| panic!("compiling {file}: {e}"))
        .encode_file_descriptor_set();
    let out = temp_dir("transcode").join("api.pb");
    std::fs::write(&out, set).unwrap();
    out
}

const KEY: &str = "books-s3cret";

/// `/v1/` and `/shop.v1.Books/` transcoded; `/guarded/` needs an API key first and has the
/// headers filter set a response header.
async fn gateway(upstream: SocketAddr) -> TestGateway {
    let pb = descriptor_set(&protos(), "bookstore.proto");
    let hash = format!("sha256:{:x}", Sha256::digest(KEY.as_bytes()));
    TestGateway::start(&format!(
        r#"
[services.books]
upstreams = ["http://{upstream}"]
protocol = "h2c"

[[routes]]
name = "guarded"
prefix = "/guarded/"
strip_prefix = true
service = "books"
transcode = {{ descriptors = {pb:?}, services = ["shop.v1.Books"] }}
[[routes.filters]]
name = "auth-apikey"
[routes.filters.config]
keys = [{{ hash = "{hash}", consumer = "reader" }}]
[[routes.filters]]
name = "headers"
config = {{ response = {{ set = {{ "x-via" = "wasmgate" }} }} }}

[[routes]]
name = "books"
prefix = "/"
service = "books"
transcode = {{ descriptors = {pb:?}, services = ["shop.v1.Books"] }}
"#
    ))
    .await
}

async fn call(gw: &TestGateway, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = gw
        .request(method, path, &[("content-type", "application/json")], body)
        .await;
    let json = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.text()));
    (r.status.as_u16(), json)
}

#[tokio::test]
async fn every_rule_kind_reaches_the_grpc_service_and_answers_json() {
    let gw = gateway(bookstore().await).await;

    // GET with two path variables; int64 comes back as a string (proto3 JSON).
    let (status, book) = call(&gw, "GET", "/v1/shelves/1/books/3", "").await;
    assert_eq!(status, 200, "{book}");
    assert_eq!(book["title"], "Neuromancer");
    assert_eq!(book["inPrint"], true);
    assert_eq!(book["isbn"], "9780441013593");
    assert_eq!(book["tags"], json!(["cyberpunk", "scifi"]));

    // POST with a field body: the body is the `book` field, the path gives `shelf`.
    let (status, made) = call(
        &gw,
        "POST",
        "/v1/shelves/2/books",
        r#"{"title": "Hyperion", "pages": 482, "in_print": true}"#,
    )
    .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(
        made,
        json!({"id": "new", "title": "Hyperion", "pages": 482, "inPrint": true, "shelf": "2"})
    );

    // PUT with the whole body, a nested field (`book.id`) from the path.
    let (status, updated) = call(
        &gw,
        "PUT",
        "/v1/shelves/1/books/7",
        r#"{"book": {"title": "Dune", "author": "Frank Herbert", "id": "ignored"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["id"], "7", "the path's value wins: {updated}");
    assert_eq!(updated["author"], "Frank Herbert");
    assert_eq!(updated["shelf"], "1");

    // PATCH with a multi-segment variable and a custom verb.
    let (status, renamed) = call(
        &gw,
        "PATCH",
        "/v1/shelves/1/books/2:rename",
        r#"{"title": "Children of Dune"}"#,
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(
        renamed,
        json!({"id": "shelves/1/books/2", "title": "Children of Dune"})
    );

    // DELETE answering an empty message.
    let (status, deleted) = call(&gw, "DELETE", "/v1/shelves/1/books/2", "").await;
    assert_eq!((status, deleted), (200, json!({})));

    // POST with `body: "*"` and `response_body`: the answer is the `results` field.
    let (status, found) = call(&gw, "POST", "/v1/search", r#"{"query": "dune"}"#).await;
    assert_eq!(status, 200, "{found}");
    let titles = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|b| b["title"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(titles(&found), ["Dune", "Dune Messiah"]);

    // The additional binding: GET with the query in the path, the rest from query parameters
    // (a repeated field given twice, a bool).
    let (_, found) = call(&gw, "GET", "/v1/search/dune?in_print_only=true", "").await;
    assert_eq!(titles(&found), ["Dune"]);
    let (_, found) = call(&gw, "GET", "/v1/search/e?tags=scifi&tags=classic", "").await;
    assert_eq!(titles(&found), ["Dune"]);

    // A custom HTTP method.
    let (status, archived) = call(&gw, "ARCHIVE", "/v1/shelves/1", "").await;
    assert_eq!((status, archived), (200, json!({"archived": 3})));

    // No annotation: POST /package.Service/Method; the upstream's metadata comes back.
    let r = gw
        .request(
            "POST",
            "/shop.v1.Books/Ping",
            &[("content-type", "application/json")],
            r#"{"message": "hi"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["x-served-by"], "tonic");
    assert_eq!(r.json(), json!({"message": "pong: hi"}));
}

#[tokio::test]
async fn a_server_stream_answers_as_a_json_array_or_as_lines() {
    let gw = gateway(bookstore().await).await;
    let (status, all) = call(&gw, "GET", "/v1/shelves/1/books", "").await;
    assert_eq!(status, 200);
    assert_eq!(all.as_array().map(Vec::len), Some(3), "{all}");

    // Query parameters into fields: a string and an int32.
    let (_, some) = call(&gw, "GET", "/v1/shelves/1/books?author=Herbert&limit=1", "").await;
    assert_eq!(some.as_array().map(Vec::len), Some(1), "{some}");
    assert_eq!(some[0]["title"], "Dune");

    let r = gw
        .request(
            "GET",
            "/v1/shelves/1/books?author=Herbert",
            &[("accept", "application/x-ndjson")],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["title"], "Dune Messiah");
}

#[tokio::test]
async fn grpc_statuses_and_bad_requests_answer_as_http_statuses_with_json_errors() {
    let gw = gateway(bookstore().await).await;
    // The service's own statuses, with their messages.
    let (status, err) = call(&gw, "GET", "/v1/shelves/1/books/9", "").await;
    assert_eq!(
        (status, err),
        (404, json!({"code": 5, "message": "no book 9 on shelf 1"}))
    );
    let (status, err) = call(&gw, "DELETE", "/v1/shelves/1/books/locked", "").await;
    assert_eq!((status, err["code"].clone()), (403, json!(7)));

    // Requests the gateway cannot turn into the message: 400, INVALID_ARGUMENT, never sent.
    for (method, path, body, why) in [
        ("POST", "/v1/search", "{not json", "not JSON"),
        (
            "POST",
            "/v1/search",
            r#"{"query": 7}"#,
            "shop.v1.SearchRequest",
        ),
        (
            "POST",
            "/v1/search",
            r#"{"nope": 1}"#,
            "shop.v1.SearchRequest",
        ),
        (
            "GET",
            "/v1/shelves/1/books?limit=many",
            "",
            "ListBooksRequest",
        ),
        (
            "GET",
            "/v1/search/x?in_print_only=maybe",
            "",
            "true or false",
        ),
        ("GET", "/v1/shelves/1/books?colour=red", "", "not a field"),
    ] {
        let (status, err) = call(&gw, method, path, body).await;
        assert_eq!(status, 400, "{method} {path} {body}: {err}");
        assert_eq!(err["code"], 3);
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(why), "{path} {body}: {message}");
    }

    // No rule and no method: 404.
    let (status, err) = call(&gw, "GET", "/v2/anything", "").await;
    assert_eq!((status, err["code"].clone()), (404, json!(5)));
    let (status, _) = call(&gw, "POST", "/shop.v1.Books/Nope", "{}").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_unreachable_service_answers_with_the_gateways_json_error() {
    let gw = gateway(wasmgate_tests::dead_addr().await).await;
    let (status, err) = call(&gw, "GET", "/v1/shelves/1/books/1", "").await;
    assert_eq!(status, 502, "{err}");
    assert_eq!(err["error"]["message"], "upstream unavailable");
}

#[tokio::test]
async fn filters_run_on_the_json_side_of_the_call() {
    let gw = gateway(bookstore().await).await;
    let (status, _) = call(&gw, "GET", "/guarded/v1/shelves/1/books/1", "").await;
    assert_eq!(status, 401, "the key is checked before the call");
    let r = gw
        .request(
            "GET",
            "/guarded/v1/shelves/1/books/1",
            &[("x-api-key", KEY)],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["title"], "Dune");
    assert_eq!(
        r.headers["x-via"], "wasmgate",
        "the response phase saw the answer"
    );
}

#[tokio::test]
async fn grpc_clients_pass_through_a_transcoding_route() {
    let gw = gateway(bookstore().await).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let reply = grpc
        .unary(
            tonic::Request::new(Ping {
                message: "direct".into(),
            }),
            http::uri::PathAndQuery::from_static("/shop.v1.Books/Ping"),
            tonic_prost::ProstCodec::<Ping, Ping>::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "pong: direct");
}

#[tokio::test]
async fn bad_descriptors_and_rules_are_rejected_with_their_place() {
    let dir = temp_dir("transcode-bad");
    let garbage = dir.join("garbage.pb");
    std::fs::write(&garbage, b"\xff\xff not a descriptor set").unwrap();
    let good = descriptor_set(&protos(), "bookstore.proto");
    std::fs::write(
        dir.join("bad_rule.proto"),
        r#"syntax = "proto3";
package bad.v1;
import "google/api/annotations.proto";
service Bad {
  rpc Get(Req) returns (Req) { option (google.api.http) = { get: "/v1/{missing}" }; }
}
message Req { string id = 1; }
"#,
    )
    .unwrap();
    let bad_rule = descriptor_set(&dir, "bad_rule.proto");

    let config = |transcode: String| {
        format!(
            "listen = \"127.0.0.1:0\"\n\n[services.books]\nupstreams = [\"http://127.0.0.1:1\"]\nprotocol = \"h2c\"\n\n[[routes]]\nname = \"books\"\nprefix = \"/\"\nservice = \"books\"\ntranscode = {transcode}\n"
        )
    };
    for (transcode, why) in [
        (
            format!("{{ descriptors = {garbage:?}, services = [\"shop.v1.Books\"] }}"),
            "not a valid FileDescriptorSet",
        ),
        (
            format!(
                "{{ descriptors = {:?}, services = [\"shop.v1.Books\"] }}",
                dir.join("absent.pb")
            ),
            "absent.pb",
        ),
        (
            format!("{{ descriptors = {good:?}, services = [\"shop.v1.Shelves\"] }}"),
            "no service \"shop.v1.Shelves\"",
        ),
        (
            format!("{{ descriptors = {bad_rule:?}, services = [\"bad.v1.Bad\"] }}"),
            "\"missing\" is not a field of bad.v1.Req",
        ),
        (
            format!(
                "{{ descriptors = {good:?}, services = [\"shop.v1.Books\"], stream = \"csv\" }}"
            ),
            "expected \"array\" or \"ndjson\"",
        ),
    ] {
        let errors = Config::parse(&config(transcode)).expect_err(why);
        let text: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains(why) && t.starts_with("11:")),
            "{why}, at the transcode line: {text:?}"
        );
    }
}

#[tokio::test]
async fn descriptors_are_read_again_with_the_config_and_a_bad_file_keeps_the_previous() {
    let upstream = bookstore().await;
    let dir = temp_dir("transcode-reload");
    std::fs::copy(
        descriptor_set(&protos(), "bookstore.proto"),
        dir.join("books.pb"),
    )
    .unwrap();
    // A second version of the service where GetBook moved to /v2/.
    let moved = std::fs::read_to_string(protos().join("bookstore.proto"))
        .unwrap()
        .replace(
            "/v1/shelves/{shelf}/books/{id}\" }",
            "/v2/books/{shelf}/{id}\" }",
        );
    assert!(moved.contains("/v2/books/"));
    let v2 = temp_dir("transcode-v2");
    std::fs::write(v2.join("bookstore.proto"), moved).unwrap();
    std::fs::copy(
        descriptor_set(&v2, "bookstore.proto"),
        dir.join("books-v2.pb"),
    )
    .unwrap();
    std::fs::write(dir.join("broken.pb"), b"\x0a\xff\xff truncated").unwrap();

    let config = |pb: &str| {
        format!(
            "[services.books]\nupstreams = [\"http://{upstream}\"]\nprotocol = \"h2c\"\n\n[[routes]]\nname = \"books\"\nprefix = \"/\"\nservice = \"books\"\ntranscode = {{ descriptors = \"{pb}\", services = [\"shop.v1.Books\"] }}\n"
        )
    };
    let fg = FileGateway::start(dir, &config("books.pb"), &[]).await;
    assert_eq!(fg.get("/v1/shelves/1/books/1").await.status, 200);

    fg.write_config(&config("books-v2.pb"));
    eventually(
        Duration::from_secs(5),
        "the new descriptors to serve",
        || async { (fg.get("/v2/books/1/1").await.status == 200).then_some(()) },
    )
    .await;
    assert_eq!(fg.get("/v1/shelves/1/books/1").await.status, 404);

    fg.write_config(&config("broken.pb"));
    let rejected = eventually(
        Duration::from_secs(5),
        "the broken file to be refused",
        || async {
            let c = fg.admin("/config").await;
            (!c["rejected"].is_null()).then_some(c)
        },
    )
    .await;
    let errors = rejected["rejected"]["errors"].to_string();
    assert!(errors.contains("not a valid FileDescriptorSet"), "{errors}");
    let r = fg.get("/v2/books/1/3").await;
    assert_eq!(r.status, 200, "the previous config keeps serving");
    assert_eq!(r.json()["title"], "Neuromancer");
}
