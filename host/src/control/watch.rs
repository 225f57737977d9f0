//! Watches the filters directory and the config file, and reloads what changed.
//!
//! Events are debounced: a batch is handled once [`DEBOUNCE`] passes with no new event, so the
//! several writes of a plain `cp` over a file become one reload. A file caught half-written
//! fails to load and is logged; the write that completes it brings another event and another
//! try, and the previous version serves in between.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};

use super::Control;

/// Quiet time that ends a batch of file events.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

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

    let config = config_path.map(|p| {
        let dir = canonical(p.parent().unwrap_or(Path::new(".")));
        let name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        (dir, name)
    });
    if let Some((dir, _)) = &config {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    let mut filters_dir = canonical(&filters_dir);
    watch_filters_dir(&mut watcher, &filters_dir);

    Ok(tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(event)) => batch.push(event),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let mut config_changed = false;
            let mut filters = BTreeSet::new();
            for event in batch {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!("file watch error: {e}");
                        continue;
                    }
                };
                if !is_change(&event.kind) {
                    continue;
                }
                for path in &event.paths {
                    let parent = path.parent().map(canonical);
                    if let Some((dir, name)) = &config
                        && parent.as_ref() == Some(dir)
                        && path.file_name() == Some(name.as_os_str())
                    {
                        config_changed = true;
                    }
                    if parent.as_ref() == Some(&filters_dir)
                        && path.extension().is_some_and(|e| e == "wasm")
                        && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                    {
                        filters.insert(stem.to_string());
                    }
                }
            }
            if config_changed && control.reload_config().await.is_ok() {
                let dir = canonical(&control.filters_dir().await);
                if dir != filters_dir {
                    let _ = watcher.unwatch(&filters_dir);
                    filters_dir = dir;
                    watch_filters_dir(&mut watcher, &filters_dir);
                }
            }
            if !filters.is_empty() {
                let names: Vec<String> = filters.into_iter().collect();
                control.reload_filters(Some(&names)).await;
            }
        }
    }))
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

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
