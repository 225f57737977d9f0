//! Watches the filters directory and the config file, and reloads what changed.
//!
//! Only events that name the config file (or a link on the way to it) or a `.wasm` in the
//! filters directory count; the rest of a busy directory (a log being written beside the config,
//! a cache) is passed over without delaying anything. Events that count are gathered into a
//! batch, which is handled once [`DEBOUNCE`] passes without another one, or at the latest
//! [`MAX_DELAY`] after the batch's first event: the several writes of a plain `cp` become one
//! reload, and a file edited over and over is still reloaded every [`MAX_DELAY`]. A file caught
//! half-written fails to load and is logged; the write that completes it brings another event
//! and another try, and the previous version serves in between.
//!
//! The config path may be absolute, relative or a bare file name (taken from the directory the
//! gateway started in). It may be a link: a link swapped to another target reloads too, which
//! covers Kubernetes' ConfigMap volumes (`gateway.toml -> ..data/gateway.toml`, with `..data`
//! swapped to a new timestamped directory on every update), as does an in-place edit of the file
//! the link points at.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::time::Instant;

use super::Control;

/// Quiet time that ends a batch of file events.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Longest a batch waits after its first event, however many more keep coming.
pub const MAX_DELAY: Duration = Duration::from_millis(300);

/// Start watching; the returned task runs until it is aborted.
pub fn spawn(
    control: Arc<Control>,
    filters_dir: PathBuf,
    config_path: Option<PathBuf>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })?;

    let mut config = match config_path {
        Some(path) => {
            let file = ConfigFile::new(&path);
            watcher.watch(&file.dir, RecursiveMode::NonRecursive)?;
            if let Some(dir) = &file.target_dir {
                watch_target_dir(&mut watcher, dir);
            }
            Some(file)
        }
        None => None,
    };
    let mut filters_dir = canonical(&filters_dir);
    watch_filters_dir(&mut watcher, &filters_dir);

    Ok(tokio::spawn(async move {
        loop {
            let mut batch = Batch::default();
            // Wait for the first event that counts.
            while batch.is_empty() {
                let Some(event) = rx.recv().await else { return };
                batch.add(event, config.as_ref(), &filters_dir);
            }
            let last_by = Instant::now() + MAX_DELAY;
            let mut quiet_by = Instant::now() + DEBOUNCE;
            loop {
                match tokio::time::timeout_at(quiet_by.min(last_by), rx.recv()).await {
                    Ok(Some(event)) => {
                        if batch.add(event, config.as_ref(), &filters_dir) {
                            quiet_by = Instant::now() + DEBOUNCE;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if batch.config && control.reload_config().await.is_ok() {
                let dir = canonical(&control.filters_dir().await);
                if dir != filters_dir {
                    let _ = watcher.unwatch(&filters_dir);
                    filters_dir = dir;
                    watch_filters_dir(&mut watcher, &filters_dir);
                }
            }
            if batch.config {
                // A swapped link may lead somewhere else now.
                follow_links(&mut watcher, &mut config);
            }
            if batch.all_filters {
                control.reload_filters(None).await;
            } else if !batch.filters.is_empty() {
                let names: Vec<String> = batch.filters.into_iter().collect();
                control.reload_filters(Some(&names)).await;
            }
        }
    }))
}

/// What one batch of events asks for.
#[derive(Default)]
struct Batch {
    config: bool,
    filters: BTreeSet<String>,
    /// Events were lost (the kernel's queue overflowed): re-read everything.
    all_filters: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        !self.config && !self.all_filters && self.filters.is_empty()
    }

    /// Take in `event`; true when it counts (names the config or a filter, or asks for a
    /// rescan).
    fn add(
        &mut self,
        event: notify::Result<Event>,
        config: Option<&ConfigFile>,
        filters_dir: &Path,
    ) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!("file watch error: {e}");
                return false;
            }
        };
        if event.need_rescan() {
            tracing::warn!("file events were lost; re-reading the config and every filter");
            self.config = config.is_some();
            self.all_filters = true;
            return true;
        }
        if !is_change(&event.kind) {
            return false;
        }
        let mut counts = false;
        for path in &event.paths {
            if config.is_some_and(|c| c.is_affected_by(path)) {
                self.config = true;
                counts = true;
            }
            if path.parent() == Some(filters_dir)
                && path.extension().is_some_and(|e| e == "wasm")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                self.filters.insert(stem.to_string());
                counts = true;
            }
        }
        counts
    }
}

/// The config file, and the paths whose change may change what it reads.
struct ConfigFile {
    /// The file as given, made absolute.
    path: PathBuf,
    /// Its directory, with links resolved (events name paths under the watched directory).
    dir: PathBuf,
    /// Paths in a watched directory whose change means the config may have changed: the file
    /// itself; the first step of a relative link's target (Kubernetes' `..data`); the file the
    /// links lead to.
    affected_by: Vec<PathBuf>,
    /// The directory of the file the links lead to, when it is not `dir` (watched as well).
    target_dir: Option<PathBuf>,
}

impl ConfigFile {
    fn new(given: &Path) -> ConfigFile {
        let path = std::path::absolute(given).unwrap_or_else(|_| given.to_path_buf());
        let dir = canonical(path.parent().unwrap_or(Path::new("/")));
        let mut file = ConfigFile {
            dir,
            path,
            affected_by: Vec::new(),
            target_dir: None,
        };
        file.resolve();
        file
    }

    /// Work out `affected_by` and `target_dir` from the links as they are now.
    fn resolve(&mut self) {
        let name = self.path.file_name().unwrap_or_default();
        let at = self.dir.join(name);
        self.affected_by = vec![at.clone()];
        if let Ok(target) = std::fs::read_link(&at)
            && target.is_relative()
            && let Some(Component::Normal(first)) = target.components().next()
        {
            self.affected_by.push(self.dir.join(first));
        }
        self.target_dir = None;
        if let Ok(resolved) = std::fs::canonicalize(&at)
            && resolved != at
        {
            if let Some(parent) = resolved.parent()
                && parent != self.dir
            {
                self.target_dir = Some(parent.to_path_buf());
            }
            self.affected_by.push(resolved);
        }
    }

    fn is_affected_by(&self, path: &Path) -> bool {
        self.affected_by.iter().any(|p| p == path)
    }
}

/// Re-resolve the config's links and watch the directory they now lead to.
fn follow_links(watcher: &mut notify::RecommendedWatcher, config: &mut Option<ConfigFile>) {
    let Some(file) = config else { return };
    let before = file.target_dir.take();
    file.resolve();
    if before == file.target_dir {
        return;
    }
    if let Some(old) = before {
        // Gone already when a ConfigMap update removed it.
        let _ = watcher.unwatch(&old);
    }
    if let Some(dir) = &file.target_dir {
        watch_target_dir(watcher, dir);
    }
}

/// Watch `dir`, where the config file's links lead.
fn watch_target_dir(watcher: &mut notify::RecommendedWatcher, dir: &Path) {
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), "cannot watch the directory the config file links to, edits there need a reload: {e}");
    }
}

fn watch_filters_dir(watcher: &mut notify::RecommendedWatcher, dir: &Path) {
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => tracing::info!(dir = %dir.display(), "watching filters directory"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot watch filters directory, changes need a reload: {e}")
        }
    }
}

/// Writes, creations, removals and renames; not our own reads of the files.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

/// `path` with links resolved, made absolute; as given when it cannot be resolved.
fn canonical(path: &Path) -> PathBuf {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmgate-watch-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        canonical(&dir)
    }

    /// A Kubernetes ConfigMap volume: the file is a link through `..data`, which is swapped.
    #[test]
    fn a_configmap_volume_is_affected_by_its_data_link_and_the_file_it_reaches() {
        let dir = temp("configmap");
        std::fs::create_dir(dir.join("..2026_12_04_1")).unwrap();
        std::fs::write(dir.join("..2026_12_04_1/gateway.toml"), "").unwrap();
        std::os::unix::fs::symlink("..2026_12_04_1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/gateway.toml", dir.join("gateway.toml")).unwrap();

        let file = ConfigFile::new(&dir.join("gateway.toml"));
        assert!(file.is_affected_by(&dir.join("gateway.toml")));
        assert!(file.is_affected_by(&dir.join("..data")));
        assert!(file.is_affected_by(&dir.join("..2026_12_04_1/gateway.toml")));
        assert!(!file.is_affected_by(&dir.join("gateway.log")));
        assert!(!file.is_affected_by(&dir.join("..data_tmp")));
        assert_eq!(file.target_dir, Some(dir.join("..2026_12_04_1")));
    }

    /// A bare file name is the file in the current directory, not in "".
    #[test]
    fn a_bare_name_is_taken_from_the_current_directory() {
        let file = ConfigFile::new(Path::new("gateway.toml"));
        let cwd = canonical(&std::env::current_dir().unwrap());
        assert_eq!(file.dir, cwd);
        assert!(file.is_affected_by(&cwd.join("gateway.toml")));
        assert_eq!(canonical(Path::new("")), cwd);
    }

    /// Events elsewhere in the directory do not count, and do not start or extend a batch.
    #[test]
    fn only_the_config_and_wasm_files_count() {
        let dir = temp("batch");
        let filters = dir.join("filters");
        let config = ConfigFile::new(&dir.join("gateway.toml"));
        let event = |path: PathBuf| {
            Ok(Event::new(EventKind::Modify(notify::event::ModifyKind::Any)).add_path(path))
        };
        let mut batch = Batch::default();
        assert!(!batch.add(event(dir.join("gateway.log")), Some(&config), &filters));
        assert!(!batch.add(event(filters.join("notes.txt")), Some(&config), &filters));
        assert!(!batch.add(event(dir.join("auth.wasm")), Some(&config), &filters));
        assert!(batch.is_empty());
        assert!(batch.add(event(filters.join("auth.wasm")), Some(&config), &filters));
        assert!(batch.add(event(dir.join("gateway.toml")), Some(&config), &filters));
        assert!(batch.config);
        assert_eq!(batch.filters.iter().collect::<Vec<_>>(), ["auth"]);
        let lost = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(batch.add(Ok(lost), Some(&config), &filters));
        assert!(batch.all_filters);
    }
}
