#!/usr/bin/env python3
"""Instructions per request, per route, counted by callgrind: bench/instructions.sh builds what
it needs and runs this. See bench/README.md, "Instructions per request".

usage: instructions.py WASMGATE [REQUESTS] [ROUTE...]

WASMGATE is a wasmgate binary built with the sandbox's `on-demand-allocator` feature (valgrind
cannot reserve the pooling allocator's address space). It runs under `valgrind --tool=callgrind
--instr-atstart=no` with bench/gateway.toml; for each route, after a warm-up, instrumentation is
on for exactly REQUESTS (default 2000) keep-alive requests from one client, then the counts are
dumped. The client and the upstream are other processes and are not counted."""

import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: ports, templates, the JWT)

ROUTES = ["plain", "headers", "three", "json", "limited", "cached"]
WARM_UP = 200


def requests(port, route, n, auth, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": auth}
    for _ in range(n):
        if route == "json":
            conn.request("POST", f"/{route}/", body=body,
                         headers={**headers, "Content-Type": "application/json"})
        else:
            conn.request("GET", f"/{route}/", headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            sys.exit(f"/{route}/ answered {resp.status}")
    conn.close()


def totals(path):
    """The instructions a dump counted (its `totals:` line; `summary:` may say 0)."""
    counts = [int(line.split()[1]) for line in path.read_text().splitlines()
              if line.startswith(("summary:", "totals:"))]
    if not counts:
        sys.exit(f"no totals in {path}")
    return max(counts)


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    routes = sys.argv[3:] or ROUTES
    work = Path(tempfile.mkdtemp(prefix="wasmgate-instructions."))
    up_port, gw_port, gw_tls = run.free_ports(3)
    run.make_certificate(work)
    filters = work / "filters"
    filters.mkdir()
    for name in ["headers", "auth-jwt", "transform", "rate-limit", "cache"]:
        (filters / f"{name}.wasm").write_bytes(
            (run.FILTERS / f"{name.replace('-', '_')}.wasm").read_bytes())
    text = (run.BENCH / "gateway.toml").read_text()
    for key, value in {"@LISTEN@": f"127.0.0.1:{gw_port}", "@TLS_LISTEN@": f"127.0.0.1:{gw_tls}",
                       "@UPSTREAM@": f"127.0.0.1:{up_port}", "@FILTERS@": str(filters),
                       "@DIR@": str(work)}.items():
        text = text.replace(key, value)
    config = work / "gateway.toml"
    config.write_text(text)
    body = run.json_body(16 << 10)
    auth = f"Bearer {run.jwt()}"
    procs = []
    try:
        up = subprocess.Popen([str(run.RELEASE / "bench-upstream"), f"127.0.0.1:{up_port}"],
                              stderr=subprocess.DEVNULL)
        procs.append(up)
        run.wait_for(up_port, "bench-upstream", up)
        out = work / "cg.out"
        gw = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
             binary, "serve", "--config", str(config)],
            env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gw)
        for _ in range(600):
            try:
                http.client.HTTPConnection("127.0.0.1", gw_port, timeout=1).connect()
                break
            except OSError:
                if gw.poll() is not None:
                    sys.exit("wasmgate exited under valgrind")
                time.sleep(0.5)
        results = {}
        for route in routes:
            requests(gw_port, route, WARM_UP, auth, body)
            subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], check=True,
                           capture_output=True)
            requests(gw_port, route, n, auth, body)
            subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], check=True,
                           capture_output=True)
            before = set(work.glob("cg.out*"))
            subprocess.run(["callgrind_control", "-d", route, str(gw.pid)], check=True,
                           capture_output=True)
            for _ in range(100):
                dumped = set(work.glob("cg.out*")) - before
                if dumped:
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            results[route] = totals(max(dumped, key=lambda p: p.stat().st_mtime)) / n
            print(f"/{route}/ {results[route] / 1000:.1f}k instructions per request", flush=True)
        print(json.dumps({"requests": n, "per_request": results}))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
