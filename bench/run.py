#!/usr/bin/env python3
"""Run every benchmark scenario against the upstream, nginx and wasmgate in one go and write
bench/RESULTS.md. Started by bench/run.sh after the release build; see bench/README.md."""

import base64
import datetime
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RELEASE = ROOT / "target" / "release"
FILTERS = ROOT / "target" / "wasm32-wasip2" / "filter"
DURATION = int(os.environ.get("DURATION", "10"))
RATE = int(os.environ.get("RATE", "5000"))
OBS_ROUNDS = int(os.environ.get("OBS_ROUNDS", "3"))
OBS_SLICES = int(os.environ.get("OBS_SLICES", "10"))
OBS_SLICE = 2
CONNECTIONS = 32
JWT_SECRET = b"bench-secret-0123456789abcdef0123"  # as in bench/gateway.toml


def free_ports(n):
    """`n` distinct free ports: all bound at once, since the kernel may hand the same port
    to consecutive binds once each is closed."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(port, what, proc):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start listening on {port}")


def start_wasmgate(config, port, label, procs, log="warn"):
    """Start `wasmgate serve --config config`, stdout (its access log) to /dev/null, and wait
    for `port`; with `log` other than "warn", its stderr goes to /dev/null too."""
    proc = subprocess.Popen(
        [str(RELEASE / "wasmgate"), "serve", "--config", str(config)],
        env={**os.environ, "RUST_LOG": log},
        stdout=subprocess.DEVNULL,
        stderr=None if log == "warn" else subprocess.DEVNULL,
    )
    procs.append(proc)
    wait_for(port, label, proc)
    return proc


def jwt():
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": "bench-user", "exp": int(time.time()) + 3600}).encode())
    signing_input = header + b"." + claims
    sig = b64(hmac.new(JWT_SECRET, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + sig).decode()


def json_body(size):
    """A JSON object of about `size` bytes."""
    items, n = [], 0
    while n < size:
        item = {"id": len(items), "name": f"item-{len(items)}", "tags": ["a", "b"], "price": 12.5}
        items.append(item)
        n += len(json.dumps(item)) + 1
    return json.dumps({"user": "bench", "items": items}).encode()


def ms(text):
    """wrk's latency text (`812.00us`, `1.20ms`, `2.01s`) in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url, connections=CONNECTIONS, body_file=None, headers=(), duration=DURATION):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for h in headers:
        cmd += ["-H", h]
    env = dict(os.environ)
    if body_file:
        cmd += ["-s", str(BENCH / "post.lua")]
        env["BODY_FILE"] = str(body_file)
    out = subprocess.run(cmd + [url], capture_output=True, text=True, env=env, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "failed": failed, "requests": requests}


def h2load(url, headers=(), data=None):
    """HTTP/2 load with h2load: `CONNECTIONS` connections, 10 streams in flight on each; with
    `data`, each request POSTs that file."""
    cmd = ["h2load", "-t1", f"-c{CONNECTIONS}", "-m10", f"-D{DURATION}"]
    for h in headers:
        cmd += ["-H", h]
    if data is not None:
        cmd += ["-d", str(data)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    req = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    failed = int(req.group(2)) + int(req.group(3)) + int(req.group(4))
    failed += int(status.group(3)) + int(status.group(4))
    return {"rps": rps, "mean": ms(mean), "failed": failed}


def tls_session(port):
    """The protocol version and cipher suite a TLS 1.3-capable client gets from `port`."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return f"{tls.version()} {tls.cipher()[0]}"


def make_certificate(work):
    """A self-signed P-256 certificate for localhost, served by both nginx and wasmgate."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem"), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)


def fixed_rate(url, body_file=None, headers=(), rate=RATE):
    cmd = [str(RELEASE / "bench-load"), url, f"--rate={rate}", f"--duration={DURATION}"]
    cmd += [f"--connections={CONNECTIONS}"]
    for h in headers:
        cmd += ["-H", h]
    if body_file:
        cmd += ["--body-file", str(body_file)]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {"p50": out["p50_us"] / 1000, "p99": out["p99_us"] / 1000, "failed": out["errors"]}


def rss_kib(pids):
    """Resident and peak resident memory, summed over `pids`, in KiB."""
    rss = hwm = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        rss += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        hwm += int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    return rss, hwm


def peak_rss_during(pids, work):
    """Run `work()`; return its result and the highest RSS (KiB, summed over `pids`) sampled
    every 100 ms while it ran."""
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], rss_kib(pids)[0])

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return work(), peak[0]
    finally:
        done.set()
        sampler.join()


def nginx_pids(master):
    children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [master] + [int(p) for p in children.split()]


def ratio(value, peer):
    return f"{value / peer:.2f}x" if peer else "-"


def main():
    work = Path(tempfile.mkdtemp(prefix="wasmgate-bench."))
    procs = []
    try:
        return run(work, procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def run(work, procs):
    (up_port, nginx_port, gw_port, nginx_tls, nginx_h2c, gw_tls, redis_port, gwr_port,
     gwr_tls, grpc_port) = free_ports(10)
    upstream = f"127.0.0.1:{up_port}"
    make_certificate(work)

    filters = work / "filters"
    filters.mkdir()
    for name in ["headers", "auth-jwt", "transform", "rate-limit", "cache"]:
        shutil.copy(FILTERS / f"{name.replace('-', '_')}.wasm", filters / f"{name}.wasm")
    fill = {"@UPSTREAM@": upstream, "@FILTERS@": str(filters), "@DIR@": str(work),
            "@GRPC_UPSTREAM@": f"127.0.0.1:{grpc_port}"}

    def template(name, listen, tls_listen, h2c_listen=""):
        text = (BENCH / name).read_text().replace("@LISTEN@", listen)
        text = text.replace("@TLS_LISTEN@", tls_listen).replace("@H2C_LISTEN@", h2c_listen)
        for key, value in fill.items():
            text = text.replace(key, value)
        (work / name).write_text(text)
        return work / name

    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx_version = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.split(" sha=")[0].strip()

    up = subprocess.Popen([str(RELEASE / "bench-upstream"), upstream], stderr=subprocess.DEVNULL)
    procs.append(up)
    wait_for(up_port, "bench-upstream", up)
    nginx = subprocess.Popen(
        [nginx_bin, "-c", str(template("nginx.conf", f"127.0.0.1:{nginx_port}",
                                       f"127.0.0.1:{nginx_tls}", f"127.0.0.1:{nginx_h2c}")), "-e",
         str(work / "nginx-error.log")]
    )
    procs.append(nginx)
    wait_for(nginx_port, "nginx", nginx)
    # The gRPC upstream of the transcoding rows; it writes the descriptor set the gateway reads.
    grpc = subprocess.Popen([str(RELEASE / "bench-grpc"), f"127.0.0.1:{grpc_port}",
                             str(work / "bookstore.pb")], stderr=subprocess.DEVNULL)
    procs.append(grpc)
    wait_for(grpc_port, "bench-grpc", grpc)
    gw_config = template("gateway.toml", f"127.0.0.1:{gw_port}", f"127.0.0.1:{gw_tls}")
    transcode = (BENCH / "transcode.toml").read_text()
    for key, value in fill.items():
        transcode = transcode.replace(key, value)
    gw_config.write_text(gw_config.read_text() + "\n" + transcode)
    gw = start_wasmgate(gw_config, gw_port, "wasmgate", procs)
    # A second gateway, its filters' state in Redis (rate-limit scenario only).
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    procs.append(redis)
    wait_for(redis_port, "redis-server", redis)
    gwr_config = work / "gateway-redis.toml"
    gwr_config.write_text(
        (work / "gateway.toml").read_text()
        .replace(f'"127.0.0.1:{gw_port}"', f'"127.0.0.1:{gwr_port}"')
        .replace(f'"127.0.0.1:{gw_tls}"', f'"127.0.0.1:{gwr_tls}"')
        + f'\n[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis_port}"\n'
    )
    start_wasmgate(gwr_config, gwr_port, "wasmgate (redis state)", procs)

    if "--serve" in sys.argv[1:]:
        # For profiling: keep the three servers up until interrupted.
        print(f"upstream http://{upstream}/\nnginx    http://127.0.0.1:{nginx_port}/\n"
              f"wasmgate http://127.0.0.1:{gw_port}/{{plain,headers,three,json}}/ (pid {gw.pid})\n"
              f"Authorization: Bearer {jwt()}", flush=True)
        # SIGTERM as well as Ctrl-C stops the servers (main's cleanup runs either way).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            gw.wait()
        except KeyboardInterrupt:
            pass
        return 0

    auth = [f"Authorization: Bearer {jwt()}"]
    if "--isolation" in sys.argv[1:]:
        lines, _ = isolation(work, upstream, procs)
        print("\n".join(lines))
        return 0
    if "--observability" in sys.argv[1:]:
        # That section alone (printed, RESULTS.md untouched): for work on its cost.
        lines, _ = observability(work, gw_port, gw_tls, auth, procs)
        print("\n".join(lines))
        return 0

    body16k, body1m = work / "16k.json", work / "1m.json"
    body16k.write_bytes(json_body(16 << 10))
    body1m.write_bytes(json_body(1 << 20))

    direct = f"http://{upstream}"
    ng = f"http://127.0.0.1:{nginx_port}"
    wg = f"http://127.0.0.1:{gw_port}"
    scenarios = [
        ("upstream direct (ceiling)", f"{direct}/", None, None),
        ("nginx", f"{ng}/", None, None),
        ("wasmgate, no filter", f"{wg}/plain/", None, "nginx"),
        ("wasmgate, 1 filter (headers)", f"{wg}/headers/", None, "nginx"),
        ("wasmgate, 3 filters (auth-jwt, transform, headers)", f"{wg}/three/", None, "nginx"),
        ("wasmgate, rate-limit (in-process state)", f"{wg}/limited/", None, "nginx"),
        ("wasmgate, rate-limit (Redis state)", f"http://127.0.0.1:{gwr_port}/limited/", None,
         "nginx"),
        ("wasmgate, cache hit", f"{wg}/cached/", None, "nginx"),
        ("nginx, POST 16 KiB JSON", f"{ng}/", body16k, None),
        ("wasmgate, POST 16 KiB JSON, no filter", f"{wg}/plain/", body16k, "nginx, POST 16 KiB JSON"),
        ("wasmgate, POST 16 KiB JSON through transform (body)", f"{wg}/json/", body16k,
         "nginx, POST 16 KiB JSON"),
    ]
    results = {}
    for name, url, body, _ in scenarios:
        print(f"max throughput: {name}", file=sys.stderr)
        results[name] = wrk(url, body_file=body, headers=auth)
    for name, url, body, _ in scenarios:
        print(f"fixed rate: {name}", file=sys.stderr)
        results[name]["fixed"] = fixed_rate(url, body_file=body, headers=auth)

    # TLS and HTTP/2: the same certificate and cipher suite on both (checked below).
    wait_for(gw_tls, "wasmgate HTTPS", gw)
    sessions = {"nginx": tls_session(nginx_tls), "wasmgate": tls_session(gw_tls)}
    ng_tls, wg_tls = f"https://127.0.0.1:{nginx_tls}", f"https://127.0.0.1:{gw_tls}"
    ng_h2c = f"http://127.0.0.1:{nginx_h2c}"
    protocols = [
        ("HTTPS, HTTP/1.1 (wrk)", wrk, f"{ng_tls}/", f"{wg_tls}/plain/"),
        ("HTTPS, HTTP/2 (h2load)", h2load, f"{ng_tls}/", f"{wg_tls}/plain/"),
        ("h2c, HTTP/2 (h2load)", h2load, f"{ng_h2c}/", f"{wg}/plain/"),
        ("HTTPS, HTTP/2, 1 filter (headers)", h2load, f"{ng_tls}/", f"{wg_tls}/headers/"),
    ]
    protocol_results = []
    for name, tool, ng_url, wg_url in protocols:
        print(f"protocols: {name}", file=sys.stderr)
        protocol_results.append((name, tool(ng_url, headers=auth), tool(wg_url, headers=auth)))

    # JSON to gRPC: GetBook(shelf "1", id "1") as JSON through `transcode`, and the same call as
    # gRPC through the gateway (one length-prefixed message: fields 1 and 2, "1" each).
    frame = work / "getbook.grpc"
    frame.write_bytes(bytes([0, 0, 0, 0, 6, 0x0A, 1, 0x31, 0x12, 1, 0x31]))
    print("transcoding: gRPC through the gateway", file=sys.stderr)
    as_grpc = h2load(f"{wg}/shop.v1.Books/GetBook",
                     headers=["content-type: application/grpc", "te: trailers"], data=frame)
    print("transcoding: JSON through transcode", file=sys.stderr)
    as_json = h2load(f"{wg}/v1/shelves/1/books/1")

    gw_rss = rss_kib([gw.pid])
    nginx_rss = rss_kib(nginx_pids(nginx.pid))

    scaling_conns = []
    for conns in [32, 256, 1024]:
        row = {}
        for target, url, pids in [("nginx", f"{ng}/", nginx_pids(nginx.pid)),
                                  ("wasmgate, no filter", f"{wg}/plain/", [gw.pid]),
                                  ("wasmgate, headers", f"{wg}/headers/", [gw.pid])]:
            print(f"scaling: {conns} connections, {target}", file=sys.stderr)
            row[target], peak = peak_rss_during(
                pids, lambda: wrk(url, connections=conns, headers=auth))
            row[target]["rss"] = peak
        scaling_conns.append((conns, row))
    scaling_body = []
    for label, body in [("0 (GET)", None), ("16 KiB", body16k), ("1 MiB", body1m)]:
        row = {}
        for target, url in [("nginx", f"{ng}/"), ("wasmgate, no filter", f"{wg}/plain/")]:
            print(f"scaling: body {label}, {target}", file=sys.stderr)
            row[target] = wrk(url, body_file=body, headers=auth)
        scaling_body.append((label, row))
    gw_rss_end = rss_kib([gw.pid])
    nginx_rss_end = rss_kib(nginx_pids(nginx.pid))
    filter_rss = loaded_filters(work, procs)

    obs_lines, obs_failed = observability(work, gw_port, gw_tls, auth, procs)
    iso_lines, iso_failed = isolation(work, upstream, procs)

    lines = [
        "# Benchmark results",
        "",
        f"Written by `bench/run.sh` on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}.",
        "",
        f"- Machine: {os.cpu_count()} cores ({cpu_model()}), {mem_gib()} GiB, "
        f"Linux {platform.release()}; load tool, servers and upstream share the same cores.",
        f"- Peer: {nginx_version}, `worker_processes 2`, upstream keep-alive (`bench/nginx.conf`); "
        "wasmgate release build with `RUST_LOG=warn` (`bench/gateway.toml`), as shipped: "
        "metrics on, access log on (to stdout, here /dev/null).",
        f"- Upstream: `bench-upstream` (hyper, 2-byte answer). Load: {wrk_version}, "
        f"`wrk -t1 -c{CONNECTIONS} -d{DURATION}s --latency` with the same `Authorization` header "
        f"everywhere; fixed rate: `bench-load --rate {RATE} --connections {CONNECTIONS} "
        f"--duration {DURATION}` (open loop, latency from when each request was due).",
        "- `rate-limit`: one GCRA limit by client address that the run never reaches (every "
        "request checked, none refused); in-process state on the gateway above, Redis state on "
        f"a second gateway with the same config plus `[state] backend = \"redis\"` "
        f"({redis_version}, on this machine). `cache hit`: the `cache` filter, every request "
        "after the first served from the in-process store.",
        "- Ratios are to nginx measured in this run: requests/s as wasmgate/nginx (higher is "
        "better), p99 as wasmgate/nginx (lower is better).",
        "",
        f"## Maximum throughput and latency at {RATE} req/s",
        "",
        "| scenario | req/s | vs nginx | p50 ms | p99 ms | p50 ms @rate | p99 ms @rate | p99 @rate vs nginx | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _, _, peer in scenarios:
        r = results[name]
        f = r["fixed"]
        p = results.get(peer)
        lines.append(
            f"| {name} | {r['rps']:,.0f} | {ratio(r['rps'], p['rps']) if p else ''} | "
            f"{r['p50']:.2f} | {r['p99']:.2f} | {f['p50']:.2f} | {f['p99']:.2f} | "
            f"{ratio(f['p99'], p['fixed']['p99']) if p else ''} | {r['failed'] + f['failed']} |"
        )
    lines += [
        "",
        "## TLS and HTTP/2",
        "",
        f"Same self-signed P-256 certificate on both; sessions negotiated: nginx "
        f"{sessions['nginx']}, wasmgate {sessions['wasmgate']}. HTTPS/1.1 with "
        f"`wrk -t1 -c{CONNECTIONS}` (p99 from wrk); HTTP/2 with `h2load -t1 -c{CONNECTIONS} -m10 "
        f"-D{DURATION}` (10 streams in flight per connection; h2load reports the mean, not "
        "percentiles). Connections are kept for the whole run, so handshakes are not measured.",
        "",
        "| scenario | nginx req/s | wasmgate req/s | vs nginx | nginx latency ms | "
        "wasmgate latency ms | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, w in protocol_results:
        kind = "p99" if "p99" in n else "mean"
        lines.append(
            f"| {name} | {n['rps']:,.0f} | {w['rps']:,.0f} | {ratio(w['rps'], n['rps'])} | "
            f"{n[kind]:.2f} ({kind}) | {w[kind]:.2f} ({kind}) | {n['failed'] + w['failed']} |"
        )
    lines += [
        "",
        "## JSON to gRPC (transcoding)",
        "",
        "The same unary call (`shop.v1.Books/GetBook` of tests/protos/bookstore.proto, answered by "
        "`bench-grpc`, a tonic server) made through the gateway in cleartext HTTP/2 (`h2load -t1 "
        f"-c{CONNECTIONS} -m10 -D{DURATION}`): as gRPC on a plain route, and as JSON "
        "(`GET /v1/shelves/1/books/1`) on a `transcode` route. The ratio is JSON over gRPC.",
        "",
        "| call | req/s | vs gRPC | mean latency ms | failed |",
        "|---|---:|---:|---:|---:|",
        f"| gRPC through the gateway | {as_grpc['rps']:,.0f} |  | {as_grpc['mean']:.2f} | "
        f"{as_grpc['failed']} |",
        f"| JSON through `transcode` | {as_json['rps']:,.0f} | "
        f"{ratio(as_json['rps'], as_grpc['rps'])} | {as_json['mean']:.2f} | {as_json['failed']} |",
    ]
    lines += [
        "",
        "## Resident memory",
        "",
        "| process | RSS after the scenarios above | RSS after scaling runs | peak RSS |",
        "|---|---:|---:|---:|",
        f"| wasmgate | {gw_rss[0] / 1024:.1f} MiB | {gw_rss_end[0] / 1024:.1f} MiB | "
        f"{gw_rss_end[1] / 1024:.1f} MiB |",
        f"| nginx (master + 2 workers) | {nginx_rss[0] / 1024:.1f} MiB | "
        f"{nginx_rss_end[0] / 1024:.1f} MiB | {nginx_rss_end[1] / 1024:.1f} MiB |",
        "",
        "## Scaling with connections (GET)",
        "",
        "RSS columns: the highest resident memory sampled (every 100 ms) during that run.",
        "",
        "| connections | nginx req/s | nginx p99 ms | nginx RSS | no filter req/s | vs nginx | "
        "p99 ms | RSS | headers req/s | vs nginx | p99 ms | RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for conns, row in scaling_conns:
        n, w, h = row["nginx"], row["wasmgate, no filter"], row["wasmgate, headers"]
        lines.append(
            f"| {conns} | {n['rps']:,.0f} | {n['p99']:.2f} | {n['rss'] / 1024:.1f} MiB | "
            f"{w['rps']:,.0f} | {ratio(w['rps'], n['rps'])} | {w['p99']:.2f} | "
            f"{w['rss'] / 1024:.1f} MiB | {h['rps']:,.0f} | {ratio(h['rps'], n['rps'])} | "
            f"{h['p99']:.2f} | {h['rss'] / 1024:.1f} MiB |"
        )
    lines += [
        "",
        "## Resident memory with the number of loaded filters",
        "",
        "A gateway started afresh for each count, with that many copies of `headers.wasm` "
        "(each its own filter, on its own route) and one route without a filter. RSS once "
        "it serves, then after one request on every route (each filter instantiated once).",
        "",
        "| filters | RSS at start | RSS after a request per route | per filter after requests |",
        "|---:|---:|---:|---:|",
    ]
    base = filter_rss[0][2]
    for count, started, served in filter_rss:
        per = f"{(served - base) / count:,.0f} KiB" if count else "-"
        lines.append(f"| {count} | {started / 1024:.1f} MiB | {served / 1024:.1f} MiB | {per} |")
    lines += [
        "",
        f"## Scaling with request body size ({CONNECTIONS} connections, POST, no filter)",
        "",
        "| body | nginx req/s | nginx p99 ms | wasmgate req/s | vs nginx | wasmgate p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in scaling_body:
        n, w = row["nginx"], row["wasmgate, no filter"]
        lines.append(
            f"| {label} | {n['rps']:,.0f} | {n['p99']:.2f} | {w['rps']:,.0f} | "
            f"{ratio(w['rps'], n['rps'])} | {w['p99']:.2f} |"
        )
    lines += obs_lines
    lines += iso_lines
    failed = sum(r["failed"] + r["fixed"]["failed"] for r in results.values())
    failed += sum(r["failed"] for _, row in scaling_conns + scaling_body for r in row.values())
    failed += sum(n["failed"] + w["failed"] for _, n, w in protocol_results)
    failed += as_grpc["failed"] + as_json["failed"]
    failed += obs_failed + iso_failed
    lines += ["", f"Failed requests over the whole run: {failed}.", ""]
    text = "\n".join(lines)
    (BENCH / "RESULTS.md").write_text(text)
    print(text)
    return 0


FILTER_COUNTS = [0, 16, 64]


def loaded_filters(work, procs):
    """Resident memory of a gateway with 0, 16 and 64 filters loaded: at start, and after one
    request on every route. Returns (count, KiB at start, KiB after)."""
    upstream_port, = free_ports(1)
    up = subprocess.Popen([str(RELEASE / "bench-upstream"), f"127.0.0.1:{upstream_port}"],
                          stderr=subprocess.DEVNULL)
    procs.append(up)
    wait_for(upstream_port, "bench-upstream", up)
    rows = []
    for count in FILTER_COUNTS:
        print(f"memory: {count} filters loaded", file=sys.stderr)
        port, = free_ports(1)
        filters = work / f"filters-{count}"
        filters.mkdir()
        lines = [f'listen = "127.0.0.1:{port}"', f'filters_dir = "{filters}"',
                 "[admin]", "enabled = false",
                 "[services.app]", f'upstreams = ["http://127.0.0.1:{upstream_port}"]',
                 "[[routes]]", 'name = "plain"', 'prefix = "/plain"', 'service = "app"']
        for i in range(count):
            shutil.copy(FILTERS / "headers.wasm", filters / f"headers-{i}.wasm")
            lines += ["[[routes]]", f'name = "r{i}"', f'prefix = "/r{i}/"', 'service = "app"',
                      "[[routes.filters]]", f'name = "headers-{i}"',
                      'config = { response = { set = { "x-n" = "1" } } }']
        config = work / f"gateway-filters-{count}.toml"
        config.write_text("\n".join(lines) + "\n")
        gw = start_wasmgate(config, port, f"wasmgate ({count} filters)", procs)
        started = rss_kib([gw.pid])[0]
        for path in ["/plain/"] + [f"/r{i}/" for i in range(count)]:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            if not reply.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"{path} with {count} filters: {reply[:200]!r}")
        time.sleep(1)
        rows.append((count, started, rss_kib([gw.pid])[0]))
        gw.terminate()
        gw.wait(timeout=10)
    up.terminate()
    return rows


ISOLATION_RATE = int(os.environ.get("ISOLATION_RATE", RATE))
ISOLATION_ROUNDS = int(os.environ.get("ISOLATION_ROUNDS", "3"))
RUNAWAYS = os.environ.get("RUNAWAYS", "loop,alloc,stack,panic").split(",")


def isolation(work, upstream, procs):
    """Time isolation: a healthy route's latency at a fixed rate while one client per kind of
    runaway filter (looping, exhausting its memory, overflowing its stack, panicking) sends
    request after request, against the same clients sending to paths no route matches.
    Returns the table's lines and the failed healthy requests."""
    filters = work / "filters-isolation"
    filters.mkdir(exist_ok=True)
    shutil.copy(FILTERS / "fail.wasm", filters / "fail.wasm")
    (port,) = free_ports(1)
    routes = "".join(
        f'\n[[routes]]\nname = "{mode}"\nprefix = "/{mode}"\nservice = "app"\n'
        f'[[routes.filters]]\nname = "fail"\nconfig = {{ mode = "{mode}" }}\n'
        for mode in RUNAWAYS
    )
    config = work / "gateway-isolation.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\nfilters_dir = "{filters}"\n[admin]\nenabled = false\n'
        f'[server]\nmax_connections = 10000\n[services.app]\nupstreams = ["http://{upstream}"]\n'
        '\n[[routes]]\nname = "plain"\nprefix = "/plain"\nservice = "app"\n' + routes
    )
    base = f"http://127.0.0.1:{port}"
    conditions = [("flood of unmatched paths", "/unmatched-"), ("runaway filters", "/")]
    # condition -> per round: healthy results, flood requests
    rounds = {label: [] for label, _ in conditions}
    for round_ in range(ISOLATION_ROUNDS):
        # A fresh gateway each round: every breaker starts closed, as on a first attack.
        # Its runaways' failures are the point: errors only, and not on the terminal.
        gw = start_wasmgate(config, port, "wasmgate (isolation)", procs, log="error")
        for label, prefix in conditions:
            print(f"isolation: healthy route under {label}, round {round_ + 1}", file=sys.stderr)
            flood = [
                subprocess.Popen(
                    ["wrk", "-t1", "-c1", f"-d{DURATION + 2}s", "--timeout", "5s",
                     f"{base}{prefix}{mode}/"],
                    stdout=subprocess.PIPE, text=True,
                )
                for mode in RUNAWAYS
            ]
            time.sleep(1)
            healthy = fixed_rate(f"{base}/plain/", rate=ISOLATION_RATE)
            sent = 0
            for f in flood:
                out = f.communicate()[0]
                found = re.search(r"(\d+) requests in", out)
                sent += int(found.group(1)) if found else 0
            rounds[label].append((healthy, sent))
        gw.terminate()
        gw.wait()
    lines = [
        "",
        "## Time isolation",
        "",
        f"A gateway with a healthy route (`/plain/`, no filter) and one route per runaway "
        f"filter (the `fail` test filter: {', '.join(RUNAWAYS)}; default limits: 100 ms "
        "deadline, 32 MiB memory). The healthy route gets `bench-load` at "
        f"{ISOLATION_RATE} req/s for {DURATION} s while {len(RUNAWAYS)} clients (`wrk -t1 -c1`, "
        "one per kind) send request after request: first to paths no route matches, then to "
        f"the runaway routes. {ISOLATION_ROUNDS} rounds, each on a freshly started gateway (every "
        "breaker closed); p50 and p99 are medians over the rounds, and the ratio is the "
        "median p99 under runaways against the median p99 under the unmatched flood, each "
        "round's ratio beside it.",
        "",
        "| healthy route under | p50 ms | p99 ms | p99 vs unmatched flood | rounds | "
        "flood requests | healthy failed |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    quiet = rounds[conditions[0][0]]
    quiet_p99 = median([r["p99"] for r, _ in quiet])
    failed = 0
    for label, _ in conditions:
        runs = rounds[label]
        p99 = median([r["p99"] for r, _ in runs])
        each = [r["p99"] / q["p99"] for (r, _), (q, _) in zip(runs, quiet)]
        failed += sum(r["failed"] for r, _ in runs)
        lines.append(
            f"| {label} | {median([r['p50'] for r, _ in runs]):.2f} | {p99:.2f} | "
            f"{p99 / quiet_p99:.2f}x | {', '.join(f'{x:.2f}' for x in each)} | "
            f"{sum(n for _, n in runs):,} | {sum(r['failed'] for r, _ in runs)} |"
        )
    return lines, failed


def observability(work, gw_port, gw_tls, auth, procs):
    """Observability on against off: as shipped (metrics on, access log to stdout, which is
    /dev/null here), logging to a file, and both off. Each round starts the three gateways
    afresh (a long-lived process keeps whatever placement it got, which moved one variant by
    more than the few per cent measured here) and warms them up; then, per route, it runs
    short `wrk` slices on each in turn, the order rotating, so that a drift in the machine's
    speed falls on all three alike. A round's ratio is its requests against off's; the table
    gives the median over rounds and every round's ratio. Returns the table's lines and the
    failed requests."""
    base = (work / "gateway.toml").read_text()
    variants = [
        ("on (as shipped)", ""),
        ("on, access log to a file", f'[access_log]\npath = "{work / "access.log"}"\n'),
        ("off", "[access_log]\nenabled = false\n[metrics]\nenabled = false\n"),
    ]

    def start(index, label, extra):
        for attempt in range(3):
            # A port found free may be taken by an outgoing connection before the gateway
            # binds it; then try other ports.
            port, tls_port = free_ports(2)
            config = work / f"gateway-{index}.toml"
            # The quoted values only (the template's header comment names the ports too).
            text = base.replace(f'"127.0.0.1:{gw_port}"', f'"127.0.0.1:{port}"')
            text = text.replace(f'"127.0.0.1:{gw_tls}"', f'"127.0.0.1:{tls_port}"')
            config.write_text(text + "\n" + extra)
            try:
                return start_wasmgate(config, port, f"wasmgate ({label})", procs), port
            except SystemExit:
                if attempt == 2:
                    raise

    # (route, label) -> per round: requests, seconds, CPU seconds, p99s, failed
    rounds = {}
    for round_ in range(OBS_ROUNDS):
        running = [(label, *start(i, label, extra)) for i, (label, extra) in enumerate(variants)]
        for _, _, port in running:
            for route in ["plain", "headers"]:
                subprocess.run(
                    ["wrk", "-t1", f"-c{CONNECTIONS}", "-d2s", f"http://127.0.0.1:{port}/{route}/"],
                    capture_output=True, check=True,
                )
        for route in ["plain", "headers"]:
            print(f"observability: /{route}/, round {round_ + 1}", file=sys.stderr)
            totals = {label: {"requests": 0, "cpu": 0.0, "p99": [], "failed": 0}
                      for label, _ in variants}
            for slice_ in range(OBS_SLICES):
                turn = (round_ + slice_) % 3
                for label, proc, port in running[turn:] + running[:turn]:
                    before = cpu_seconds(proc.pid)
                    r = wrk(f"http://127.0.0.1:{port}/{route}/", headers=auth,
                            duration=OBS_SLICE)
                    t = totals[label]
                    t["cpu"] += cpu_seconds(proc.pid) - before
                    t["requests"] += r["requests"]
                    t["p99"].append(r["p99"])
                    t["failed"] += r["failed"]
            for label, t in totals.items():
                rounds.setdefault((route, label), []).append(t)
        for _, proc, _ in running:
            proc.terminate()
            proc.wait()

    seconds = OBS_SLICES * OBS_SLICE
    lines = [
        "",
        "## Observability on against off",
        "",
        f"Three gateways with the same config: as shipped (metrics on, access log on to stdout, "
        "here /dev/null), access log to a file on this machine's disk, and both off (`[metrics] "
        f"enabled = false`, `[access_log] enabled = false`). In each of {OBS_ROUNDS} rounds they "
        f"are started afresh and warmed up, then each route gets {OBS_SLICES} slices of "
        f"`wrk -t1 -c{CONNECTIONS} -d{OBS_SLICE}s` on each gateway in turn, the order rotating "
        "from slice to slice, so that a drift in the machine's speed falls on all three alike. "
        "A round's ratio is that variant's requests against off's in the same round; \"vs off\" "
        "is the median over the rounds, each round's ratio beside it. req/s is over all "
        "slices; CPU is the gateway process's user + system time per request; p99 is the "
        "median of the slices'.",
        "",
        "| route | variant | req/s | vs off | rounds | CPU µs/request | p99 ms |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    failed = 0
    for route in ["plain", "headers"]:
        offs = rounds[(route, "off")]
        for label, _ in variants:
            runs = rounds[(route, label)]
            ratios = [r["requests"] / off["requests"] for r, off in zip(runs, offs)]
            requests = sum(r["requests"] for r in runs)
            cpu_us = sum(r["cpu"] for r in runs) * 1e6 / max(requests, 1)
            p99 = median([p for r in runs for p in r["p99"]])
            failed += sum(r["failed"] for r in runs)
            lines.append(
                f"| /{route}/ | {label} | {requests / (seconds * len(runs)):,.0f} | "
                f"{median(ratios):.3f}x | {', '.join(f'{x:.3f}' for x in ratios)} | "
                f"{cpu_us:.1f} | {p99:.2f} |"
            )
    return lines, failed


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def mem_gib():
    kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return round(kib / (1 << 20))


if __name__ == "__main__":
    sys.exit(main())
