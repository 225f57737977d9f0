# syntax=docker/dockerfile:1
# wasmgate's container image: built in one stage, run from a small non-root one.
#
#   docker build -t wasmgate:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/gateway.toml:/etc/wasmgate/gateway.toml:ro" wasmgate:0.1.0
#
# deploy/kubernetes runs it with its config from a ConfigMap and its filters from a registry
# (docs/operations.md, "Running many replicas").

# Build: the toolchain rust-toolchain.toml pins, with the wasm32-wasip2 target, so that the
# binary carries the bundled filters (`wasmgate filter add`).
FROM rust:1.95.0-slim-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wasmgate \
    && install -D target/release/wasmgate /out/wasmgate

# Run: glibc, CA certificates and a non-root user (65532), nothing else (no shell).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wasmgate /usr/local/bin/wasmgate
USER 65532:65532
# The proxy, and the metrics listener (/metrics, /health, /ready) the probes use.
EXPOSE 8080 9902
ENTRYPOINT ["/usr/local/bin/wasmgate"]
CMD ["serve", "--config", "/etc/wasmgate/gateway.toml"]
