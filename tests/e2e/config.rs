//! Config validation: every invalid config in tests/configs/invalid is rejected with exactly
//! the errors in its `.err` snapshot (`UPDATE_SNAPSHOTS=1` rewrites them), and `check`
//! reports filter problems with their place in the file.

use std::path::{Path, PathBuf};

use wasmgate::Config;
use wasmgate_tests::{FILTERS_DIR, temp_dir};

/// `text` written as `gateway.toml` in a fresh directory; the file's path.
fn config_file(label: &str, text: &str) -> PathBuf {
    let path = temp_dir(label).join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn configs(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no configs in {}", dir.display());
    files
}

#[test]
fn invalid_configs_are_rejected_with_their_snapshot_errors() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut mismatches = Vec::new();
    for file in configs("invalid") {
        let text = std::fs::read_to_string(&file).unwrap();
        let errors = match Config::parse(&text) {
            Ok(_) => panic!("{} was accepted", file.display()),
            Err(errors) => errors,
        };
        let actual: String = errors.iter().map(|d| format!("{d}\n")).collect();
        let snapshot = file.with_extension("err");
        if update {
            std::fs::write(&snapshot, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&snapshot)
            .unwrap_or_else(|_| panic!("missing snapshot {}", snapshot.display()));
        if actual != expected {
            mismatches.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                file.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn valid_configs_parse() {
    for file in configs("valid") {
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.routes.is_empty());
        assert!(config.filters_dir.ends_with("filters"));
        assert!(
            config.filters_dir.is_absolute()
                || config.filters_dir.starts_with(file.parent().unwrap())
        );
    }
}

#[tokio::test]
async fn check_reports_missing_filters_and_rejected_filter_config_with_their_place() {
    let path = config_file(
        "check",
        &format!(
            r#"filters_dir = {FILTERS_DIR:?}

[services.svc]
upstreams = ["http://127.0.0.1:9"]

[[routes]]
name = "good"
prefix = "/good"
service = "svc"
filters = [{{ name = "headers", config = {{ request = {{ set = {{ "x-a" = "1" }} }} }} }}]

[[routes]]
name = "bad"
prefix = "/bad"
service = "svc"
filters = [
    {{ name = "headers", config = {{ requets = {{}} }} }},
    {{ name = "not-there" }},
]
"#
        ),
    );

    let report = wasmgate::check(&path, None)
        .await
        .expect("the config itself is valid");
    let p = path.display();
    assert_eq!(
        report.problems,
        [
            format!(
                "{p}:17:5: route \"bad\": filter \"headers\": config rejected: unknown field `requets`, expected `request` or `response`"
            ),
            format!(
                "{p}:18:5: route \"bad\": filter \"not-there\": {FILTERS_DIR}/not-there.wasm: cannot read: No such file or directory (os error 2)"
            ),
        ]
    );
}

/// Unknown keys do not hide unknown services, which do not hide rejected filter configs or
/// missing filters: one run lists them all, in file order.
#[tokio::test]
async fn check_lists_problems_of_every_kind_in_one_run() {
    let path = config_file(
        "check-all",
        &format!(
            r#"filters_dir = {FILTERS_DIR:?}
listen_on = "127.0.0.1:8080"

[services.svc]
upstreams = ["http://127.0.0.1:9"]

[[routes]]
name = "orders"
prefix = "/orders"
service = "order-service"
timeot = "5s"
filters = [
    {{ name = "headers", config = {{ requets = {{}} }}, on_fail = "fail-open" }},
    {{ name = "not-there" }},
]
"#
        ),
    );

    let report = wasmgate::check(&path, None).await.expect("readable");
    let p = path.display();
    let expected = [
        "2:1: unknown field `listen_on`, expected one of `listen`, `filters_dir`, `cache_dir`, `admin`, `server`, `filter_limits`, `timeouts`, `limits`, `compression`, `tls`, `dns`, `access_log`, `tracing`, `metrics`, `state`, `registry`, `services`, `routes`".to_string(),
        "10:11: route \"orders\": unknown service \"order-service\"".to_string(),
        "11:1: unknown field `timeot`, expected one of `name`, `prefix`, `exact`, `pattern`, `methods`, `host`, `strip_prefix`, `rewrite`, `service`, `timeout`, `max_body_bytes`, `compress`, `grpc_web`, `transcode`, `retry`, `access_log`, `filters`".to_string(),
        "13:5: route \"orders\": filter \"headers\": config rejected: unknown field `requets`, expected `request` or `response`".to_string(),
        "13:52: unknown field `on_fail`, expected one of `name`, `source`, `services`, `limits`, `on_failure`, `config`".to_string(),
        format!("14:5: route \"orders\": filter \"not-there\": {FILTERS_DIR}/not-there.wasm: cannot read: No such file or directory (os error 2)"),
    ];
    let expected: Vec<String> = expected.iter().map(|e| format!("{p}:{e}")).collect();
    assert_eq!(report.problems, expected);

    // The same file is refused as a whole when served or reloaded.
    let refused = wasmgate::Config::load(&path).unwrap_err().to_string();
    assert!(refused.contains("unknown field `timeot`"), "{refused}");
}

/// A new filter is checked from where it was built, before it is copied into the live
/// filters directory.
#[tokio::test]
async fn check_takes_filters_from_another_directory() {
    let path = config_file(
        "check-dir",
        "filters_dir = \"live\"\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nfilters = [{ name = \"deny\", config = { status = 403 } }]\n",
    );
    std::fs::create_dir_all(path.with_file_name("live")).unwrap();
    let live = wasmgate::check(&path, None).await.unwrap();
    assert_eq!(live.problems.len(), 1, "{:?}", live.problems);
    assert!(
        live.problems[0].contains("live/deny.wasm: cannot read"),
        "{:?}",
        live.problems
    );

    let staged = wasmgate::check(&path, Some(std::path::Path::new(FILTERS_DIR)))
        .await
        .unwrap();
    assert_eq!(staged.problems, Vec::<String>::new());
    assert_eq!(staged.filters, 1);
}
