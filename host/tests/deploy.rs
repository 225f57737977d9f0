//! The container image build file and the Kubernetes manifests (`Dockerfile`,
//! `deploy/kubernetes/`), read as a cluster and `docker build` would read them and checked
//! against each other and against the gateway config the ConfigMap carries: no cluster and no
//! container runtime run here, so what can drift apart (ports, paths, users, probes, drain
//! time, the config itself) is what is checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every document of every manifest in deploy/kubernetes, as JSON values, with its file.
fn manifests() -> Vec<(String, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The gateway config the ConfigMap carries, parsed by the gateway itself.
fn configmap_config(docs: &[(String, Value)]) -> (String, wasmgate::Config) {
    let text = find(docs, "ConfigMap", "wasmgate")["data"]["gateway.toml"]
        .as_str()
        .expect("the ConfigMap has gateway.toml")
        .to_string();
    let config = wasmgate::Config::parse(&text).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
        panic!(
            "the ConfigMap's gateway.toml is refused:\n{}",
            lines.join("\n")
        )
    });
    (text, config)
}

fn port_of(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {name}"))
}

#[test]
fn every_manifest_parses_and_kustomize_lists_them_all() {
    let docs = manifests();
    let files: BTreeSet<&str> = docs.iter().map(|(f, _)| f.as_str()).collect();
    let kustomization = docs
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .map(|(_, d)| d)
        .unwrap();
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let others: BTreeSet<&str> = files
        .into_iter()
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, others, "kustomization.yaml lists every manifest");
    for (file, doc) in &docs {
        if file != "kustomization.yaml" {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{file}: {doc}"
            );
        }
    }
}

#[test]
fn the_deployment_probes_drains_and_runs_the_configmaps_config_as_a_non_root_user() {
    let docs = manifests();
    let (_, config) = configmap_config(&docs);
    let deployment = find(&docs, "Deployment", "wasmgate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "a rollout never serves with fewer replicas"
    );

    // The proxy port is the config's listen port; the Service sends traffic to it.
    assert_eq!(port_of(container, "http"), u64::from(config.listen.port()));
    let service = find(&docs, "Service", "wasmgate");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["targetPort"] == "http")
    );

    // Probes: /ready and /health on the metrics listener, which needs no token and listens
    // beyond loopback; the admin endpoint stays on loopback.
    let metrics = config.metrics.listen.expect("[metrics] listen is set");
    assert!(
        metrics.ip().is_unspecified(),
        "the kubelet reaches {metrics}"
    );
    assert_eq!(port_of(container, "metrics"), u64::from(metrics.port()));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert!(config.admin.listen.unwrap().ip().is_loopback());

    // Drain: the preStop wait plus the gateway's 30 s drain fit in the grace period.
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        pre_stop >= 1 && pre_stop + 30 < grace,
        "preStop {pre_stop}s + drain 30s within {grace}s"
    );

    // The config comes from the ConfigMap mounted as a directory (a subPath is never updated,
    // so a ConfigMap edit would never reload), at the path the container is told to serve.
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["serve", "--config", "/etc/wasmgate/gateway.toml"]);
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no mount of {volume}"))
    };
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    assert_eq!(mount("config")["mountPath"], "/etc/wasmgate");
    assert!(mount("config").get("subPath").is_none());
    assert_eq!(volume("config")["configMap"]["name"], "wasmgate");

    // Non-root, read-only root filesystem: everything the gateway writes is a volume.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    for dir in [
        config.cache_dir.clone().unwrap(),
        config.filters_dir.clone(),
    ] {
        let covered = mounts
            .iter()
            .any(|m| m["readOnly"] != true && dir.starts_with(m["mountPath"].as_str().unwrap()));
        assert!(covered, "{} is on a writable volume", dir.display());
    }

    // Registry credentials: the Docker config.json of an optional docker-registry Secret,
    // where DOCKER_CONFIG points.
    let docker_config = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DOCKER_CONFIG")
        .and_then(|e| e["value"].as_str())
        .unwrap();
    assert_eq!(mount("registry-credentials")["mountPath"], docker_config);
    let secret = volume("registry-credentials")["secret"].clone();
    assert_eq!(secret["optional"], true);
    assert_eq!(secret["items"][0]["key"], ".dockerconfigjson");
    assert_eq!(secret["items"][0]["path"], "config.json");
}

#[test]
fn the_configmaps_filters_come_from_a_registry_and_state_from_the_redis_it_deploys() {
    let docs = manifests();
    let (_, config) = configmap_config(&docs);
    let named: BTreeSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| r.filters.iter().map(|f| f.name.as_str()))
        .collect();
    assert!(!named.is_empty());
    for name in &named {
        assert!(
            config.sources.contains_key(*name),
            "filter {name} comes from a registry"
        );
    }
    assert!(
        config.sources.values().any(|s| s.is_pinned()),
        "one shows a pinned digest"
    );
    assert!(
        config.sources.values().any(|s| !s.is_pinned()),
        "one shows a followed tag"
    );

    assert_eq!(config.state.backend, "redis");
    let redis = find(&docs, "Service", "wasmgate-redis");
    let port = redis["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(config.state.url, format!("redis://wasmgate-redis:{port}"));
    find(&docs, "Deployment", "wasmgate-redis");
}

/// The Dockerfile, instruction by instruction (continuation lines joined).
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((op.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

#[test]
fn the_image_builds_in_one_stage_and_runs_small_and_non_root_in_another() {
    let steps = dockerfile();
    let stages: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a run stage");
    let (build, run) = (&steps[stages[0]..stages[1]], &steps[stages[1]..]);

    // The build stage uses the toolchain rust-toolchain.toml pins, with the filter target.
    let toolchain: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("rust-toolchain.toml")).unwrap())
            .unwrap();
    let channel = toolchain["toolchain"]["channel"].as_str().unwrap();
    assert!(
        build[0].1.starts_with(&format!("rust:{channel}-")) && build[0].1.ends_with(" AS build"),
        "{:?}",
        build[0]
    );
    let runs: Vec<&str> = build
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("rustup target add wasm32-wasip2"))
    );
    let cargo = runs
        .iter()
        .find(|r| r.contains("cargo build"))
        .expect("the build runs cargo");
    assert!(
        cargo.contains("--release") && cargo.contains("--locked") && cargo.contains("-p wasmgate")
    );

    // The run stage: distroless (glibc and CA certificates, no shell), the binary alone, a
    // non-root user the Deployment runs as too.
    assert!(
        run[0]
            .1
            .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "{:?}",
        run[0]
    );
    let copy = run
        .iter()
        .find(|(op, _)| op == "COPY")
        .map(|(_, r)| r.as_str())
        .unwrap();
    let parts: Vec<&str> = copy.split_whitespace().collect();
    assert_eq!(parts[0], "--from=build");
    assert!(cargo.contains(&format!("install -D target/release/wasmgate {}", parts[1])));
    let user = run
        .iter()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| u.as_str())
        .unwrap();
    let uid: u64 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0);
    let docs = manifests();
    let deployment = find(&docs, "Deployment", "wasmgate");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        uid
    );
    let entrypoint = run.iter().find(|(op, _)| op == "ENTRYPOINT").unwrap();
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint.1).unwrap();
    assert_eq!(entrypoint, [parts[2]]);
    let cmd = run.iter().find(|(op, _)| op == "CMD").unwrap();
    let cmd: Vec<String> = serde_json::from_str(&cmd.1).unwrap();
    assert_eq!(cmd, ["serve", "--config", "/etc/wasmgate/gateway.toml"]);

    // It exposes the ports the ConfigMap's config listens on.
    let (_, config) = configmap_config(&docs);
    let exposed: BTreeSet<u16> = run
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, ports)| ports.split_whitespace().map(|p| p.parse().unwrap()))
        .collect();
    assert!(exposed.contains(&config.listen.port()));
    assert!(exposed.contains(&config.metrics.listen.unwrap().port()));

    // What the build context leaves out: build output, never needed inside.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}
