//! File-system pieces that must be right once: reads bounded by the file's length, an
//! exclusive lock on an output path, the atomic swap of two folders, and syncing a folder.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Largest annotation, listing or class file read whole, in bytes. Far above any real one
/// (ADE20K's largest JSON is a few MB; COCO's keypoint file, 240 MB, is streamed).
pub const MAX_ANNOTATION_BYTES: u64 = 1 << 30;

/// Opens `path` for reading if it is a regular file (after following links). A FIFO would
/// block the open forever, `/dev/zero` never ends: neither is an input.
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).at(path)?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    File::open(path).at(path)
}

/// Reads a whole file, refusing one over `limit` bytes before allocating (a file's length is
/// input too: a 40 GB file named `x.png` must not be read into memory).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata().at(path)?.len();
    if len > limit {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("file of {len} bytes is over the {limit}-byte limit for this input"),
            ),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    // `take` also bounds a file that grows while it is read.
    f.take(limit).read_to_end(&mut out).at(path)?;
    Ok(out)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        )
    })
}

/// Flushes a folder's entries (after a rename into it) to disk; best effort.
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Swaps two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`): at every
/// instant each name holds one complete folder. `Ok(false)` when the file system or kernel
/// cannot (the caller then falls back to two renames).
pub fn exchange(a: &Path, b: &Path) -> Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let ca = std::ffi::CString::new(a.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidArgument(format!("{}: NUL in path", a.display())))?;
        let cb = std::ffi::CString::new(b.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidArgument(format!("{}: NUL in path", b.display())))?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
            _ => Err(Error::io(b, e)),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// True when `p` is a mount point (its device differs from its parent's): it cannot be renamed
/// or replaced, only written into.
pub fn is_mount_point(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(me) = std::fs::metadata(p) else {
            return false;
        };
        let Ok(parent) = std::fs::metadata(p.join("..")) else {
            return false;
        };
        me.dev() != parent.dev() || me.ino() == parent.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        false
    }
}

/// An exclusive, advisory lock on a path, held as long as the value lives: a sibling file
/// `.<name>.lock` locked with `flock`. Two processes (or two threads) can never both hold the
/// lock of one path; a process that dies releases it, so a lock file left behind is never
/// mistaken for a running job.
#[derive(Debug)]
pub struct PathLock {
    file: File,
    path: PathBuf,
}

impl PathLock {
    /// The lock file of `target`: `<parent>/.<name>.lock`.
    pub fn lock_path(target: &Path) -> Result<PathBuf> {
        hidden_sibling(target, "lock")
    }

    /// Takes the lock of `target` without waiting; `Ok(None)` when another process holds it.
    pub fn try_acquire(target: &Path) -> Result<Option<PathLock>> {
        let path = Self::lock_path(target)?;
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .at(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // The holder before us may have removed the file after we opened it: then we hold
            // a lock on a file nobody else can see. Retry on the file the name now points to.
            if same_file(&file, &path) {
                return Ok(Some(PathLock { file, path }));
            }
        }
    }

    /// Whether the lock file is still the one this lock holds (someone may have deleted it,
    /// letting another process take a new one).
    pub fn still_held(&self) -> bool {
        same_file(&self.file, &self.path)
    }

    /// Removes the lock file, if it is still ours, and releases the lock (a waiting process
    /// then retries on a new file, see [`PathLock::try_acquire`]).
    pub fn release(self) {
        if self.still_held() {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

#[cfg(unix)]
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

/// True when `p` is a folder (not a link to one) with nothing in it.
pub fn is_empty_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
        && std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

/// Refuses an output that exists and is anything but an empty folder (synth, convert).
pub fn check_absent_or_empty(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
        Ok(_) if is_empty_dir(p) => Ok(()),
        Ok(_) => Err(Error::InvalidArgument(format!(
            "{} exists and is not an empty folder",
            p.display()
        ))),
    }
}

/// The folder holding `p` (`.` for a bare name).
pub fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A named moment where the crash tests kill the process: with `PARTLENS_CRASH_AT=NAME:K` in
/// the environment, the K-th time (from 1) this process reaches `crash_point(NAME)` it sends
/// itself SIGKILL — no destructor, no flush, as a power cut or `kill -9` would. Without the
/// variable (always, outside the tests) it does nothing.
pub fn crash_point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("PARTLENS_CRASH_AT").ok()?;
        let (n, k) = v.rsplit_once(':').unwrap_or((&v, "1"));
        Some((n.to_string(), k.parse().ok()?))
    });
    if let Some((n, k)) = at {
        if n == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *k {
            #[cfg(unix)]
            // SAFETY: kill(2) on our own pid with a valid signal number.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            std::process::abort();
        }
    }
}

/// Flushes every file and folder under `dir` (and `dir` itself) to disk: what a commit makes
/// durable before the manifest that lists it is replaced.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(dir).follow_links(false) {
        let e = e.map_err(|e| Error::io(dir, std::io::Error::other(e.to_string())))?;
        if e.file_type().is_file() || e.file_type().is_dir() {
            File::open(e.path())
                .and_then(|f| f.sync_all())
                .map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Whether process `pid` is alive (Linux: `/proc/<pid>`; elsewhere assumed alive, so that
/// nothing is ever removed on a guess).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// An output folder built beside its target and moved into place only when complete.
///
/// [`StagedDir::begin`] takes the target's [`PathLock`] (a second writer gets a clear error,
/// never a silent replacement), removes what earlier runs for the same target left behind when
/// they were killed (their process is gone and the lock was free), and creates
/// `<parent>/.<name>.partial-<pid>`. [`StagedDir::commit`] swaps it with the target in one
/// atomic step where the file system allows (`renameat2(RENAME_EXCHANGE)`), so the target always
/// names a complete folder, old or new. Dropping an uncommitted `StagedDir` deletes the stage.
#[derive(Debug)]
pub struct StagedDir {
    target: PathBuf,
    stage: PathBuf,
    lock: Option<PathLock>,
    committed: bool,
    /// A resumable stage survives an error (its committed part is the point of resuming).
    keep: bool,
    /// Leftovers of killed runs that were removed or restored, with what was done.
    pub cleaned: Vec<String>,
}

/// Entries partlens writes into a staging folder besides an index's own
/// ([`crate::store::INDEX_ENTRIES`], which includes `evals/`: an index swapped out by
/// `--overwrite` may hold `report`'s cache): `synth`'s and `convert`'s outputs. A leftover
/// holding anything else is not removed.
const DATASET_ENTRIES: [&str; 7] = [
    "img",
    "ann",
    "obj",
    "classes.txt",
    "object_classes.txt",
    "keypoints.json",
    "keypoints.annotations.tmp",
];

/// Whether folder `p` holds only entries partlens stages.
fn only_staged(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|d| {
        d.filter_map(|e| e.ok()).all(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            crate::store::INDEX_ENTRIES.contains(&name.as_ref())
                || DATASET_ENTRIES.contains(&name.as_ref())
        })
    })
}

/// `<parent>/.<name>.<suffix>`: beside `target`, so renames stay on one file system.
fn hidden_sibling(target: &Path, suffix: &str) -> Result<PathBuf> {
    let name = target.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!("{}: not a folder name", target.display()))
    })?;
    Ok(parent_of(target).join(format!(".{}.{suffix}", name.to_string_lossy())))
}

/// `<parent>/.<name>.<what>-<pid>`.
fn sibling(target: &Path, what: &str, pid: u32) -> Result<PathBuf> {
    hidden_sibling(target, &format!("{what}-{pid}"))
}

/// Checks the folder that will hold `target` can: every existing ancestor is a folder (an
/// output "under" a regular file gets its own message, not `File exists`).
fn check_parent(target: &Path) -> Result<()> {
    for a in target.ancestors().skip(1) {
        let a = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        match std::fs::metadata(a) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{} is a file, not a folder: {} cannot be created inside it",
                    a.display(),
                    target.display()
                )))
            }
            Err(_) => continue,
        }
    }
    Ok(())
}

impl StagedDir {
    /// Locks `target`, cleans up after killed runs, and creates the staging folder. `what`
    /// names the output in messages ("index", "dataset").
    pub fn begin(target: &Path, what: &str) -> Result<StagedDir> {
        let staged = Self::lock_and_clean(target, what, "partial")?;
        std::fs::create_dir(&staged.stage).map_err(|e| {
            Error::io(
                &staged.stage,
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create the staging folder beside {}: {e}",
                        staged.target.display()
                    ),
                ),
            )
        })?;
        Ok(staged)
    }

    /// Locks `target` and cleans up after killed runs like [`StagedDir::begin`], but stages
    /// in `<parent>/.<name>.ingest`, a name that does not depend on the process: a run that
    /// dies leaves it for the next run to resume. It is neither created nor removed here, and
    /// an uncommitted one is kept when the value is dropped.
    pub fn resumable(target: &Path, what: &str) -> Result<StagedDir> {
        let mut staged = Self::lock_and_clean(target, what, "ingest")?;
        staged.keep = true;
        Ok(staged)
    }

    fn lock_and_clean(target: &Path, what: &str, suffix: &str) -> Result<StagedDir> {
        // `out/.` and `a/./out` name `out`; `..` and `/` name no folder partlens may replace.
        let target: PathBuf = target
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let target = target.as_path();
        if !matches!(
            target.components().next_back(),
            Some(std::path::Component::Normal(_))
        ) {
            return Err(Error::InvalidArgument(format!(
                "{}: not a folder name partlens can create or replace",
                target.display()
            )));
        }
        check_parent(target)?;
        if target.exists() && is_mount_point(target) {
            return Err(Error::InvalidArgument(format!(
                "{} is a mount point: partlens builds the {what} beside it and renames it into \
                 place, which a mount point does not allow. Write to a folder inside it, e.g. \
                 {}",
                target.display(),
                target.join(what).display()
            )));
        }
        let parent = parent_of(target);
        std::fs::create_dir_all(&parent).map_err(|e| {
            Error::io(
                &parent,
                std::io::Error::new(
                    e.kind(),
                    format!("cannot create the folder for {}: {e}", target.display()),
                ),
            )
        })?;
        let lock = PathLock::try_acquire(target)?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "another partlens process is writing {} (it holds {}); wait for it to finish",
                target.display(),
                PathLock::lock_path(target)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        })?;
        let stage = if suffix == "partial" {
            sibling(target, "partial", std::process::id())?
        } else {
            hidden_sibling(target, suffix)?
        };
        let mut staged = StagedDir {
            target: target.to_path_buf(),
            stage,
            lock: Some(lock),
            committed: false,
            keep: false,
            cleaned: Vec::new(),
        };
        staged.clean_stale()?;
        Ok(staged)
    }

    /// The staging folder to write into.
    pub fn path(&self) -> &Path {
        &self.stage
    }

    /// The target.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Removes `.<name>.partial-<pid>` folders of dead processes, and puts back an old target
    /// that a killed two-step swap left as `.<name>.old-<pid>`. Runs under the lock, so no
    /// live partlens can own them.
    fn clean_stale(&mut self) -> Result<()> {
        let name = match self.target.file_name() {
            Some(n) => n.to_string_lossy().into_owned(),
            None => return Ok(()),
        };
        let parent = parent_of(&self.target);
        let Ok(entries) = std::fs::read_dir(&parent) else {
            return Ok(());
        };
        let mut found: Vec<(String, u32, PathBuf)> = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = file_name.strip_prefix(&format!(".{name}.")) else {
                continue;
            };
            let Some((kind, pid)) = rest.rsplit_once('-') else {
                continue;
            };
            let (Ok(pid), true) = (pid.parse::<u32>(), matches!(kind, "partial" | "old")) else {
                continue;
            };
            // Only a real folder (not a link) holding nothing but what partlens stages.
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if pid == std::process::id() || process_alive(pid) || !is_dir || !only_staged(&e.path())
            {
                continue;
            }
            found.push((kind.to_string(), pid, e.path()));
        }
        // An interrupted two-step swap: the old target is complete, put it back first.
        if !self.target.exists() {
            if let Some((_, pid, old)) = found.iter().find(|(k, _, _)| k == "old") {
                std::fs::rename(old, &self.target).at(&self.target)?;
                self.cleaned.push(format!(
                    "restored {} from {} (left by process {pid}, killed while replacing it)",
                    self.target.display(),
                    old.display()
                ));
            }
        }
        for (kind, pid, p) in found {
            if !p.exists() {
                continue;
            }
            std::fs::remove_dir_all(&p).at(&p)?;
            self.cleaned.push(format!(
                "removed {} ({kind} output of process {pid}, which is gone)",
                p.display()
            ));
        }
        for c in &self.cleaned {
            tracing::warn!("{c}");
        }
        Ok(())
    }

    /// Moves the finished stage to the target. Whatever the target holds is checked with
    /// `may_replace` once it has been moved aside — so a folder that something else filled
    /// while partlens worked is put back, never deleted — and only then removed. Returns once
    /// the target holds the new folder.
    pub fn commit(mut self, may_replace: &dyn Fn(&Path) -> bool) -> Result<()> {
        let (stage, target) = (self.stage.clone(), self.target.clone());
        if self.lock.as_ref().is_some_and(|l| !l.still_held()) {
            return Err(Error::InvalidArgument(format!(
                "the lock file of {} was removed while partlens was writing it; another process \
                 may be writing it too, so nothing was replaced",
                target.display()
            )));
        }
        let changed = || {
            Error::InvalidArgument(format!(
                "{} changed while partlens was writing it (it is no longer one partlens may \
                 replace); it was left as it was and nothing was written",
                target.display()
            ))
        };
        match std::fs::symlink_metadata(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::rename(&stage, &target).at(&target)?;
                sync_dir(&parent_of(&target));
            }
            Err(e) => return Err(Error::io(&target, e)),
            Ok(_) => {
                if exchange(&stage, &target)? {
                    crash_point("swapped");
                    // The stage now holds the old folder: check it before deleting it.
                    if !may_replace(&stage) {
                        exchange(&stage, &target)?;
                        return Err(changed());
                    }
                    sync_dir(&parent_of(&target));
                    std::fs::remove_dir_all(&stage).at(&stage)?;
                } else {
                    // No atomic exchange here: two renames. A kill between them leaves the old
                    // folder as `.<name>.old-<pid>`, which the next run puts back.
                    let old = sibling(&target, "old", std::process::id())?;
                    std::fs::rename(&target, &old).at(&target)?;
                    if !may_replace(&old) {
                        std::fs::rename(&old, &target).at(&target)?;
                        return Err(changed());
                    }
                    if let Err(e) = std::fs::rename(&stage, &target) {
                        let _ = std::fs::rename(&old, &target);
                        return Err(Error::io(&target, e));
                    }
                    sync_dir(&parent_of(&target));
                    std::fs::remove_dir_all(&old).at(&old)?;
                }
            }
        }
        self.committed = true;
        if let Some(l) = self.lock.take() {
            l.release();
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed && !self.keep {
            let _ = std::fs::remove_dir_all(&self.stage);
        }
        if let Some(l) = self.lock.take() {
            l.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_path() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("idx");
        let a = PathLock::try_acquire(&t).unwrap().expect("free");
        assert!(PathLock::try_acquire(&t).unwrap().is_none());
        a.release();
        let b = PathLock::try_acquire(&t).unwrap().expect("free again");
        drop(b);
        assert!(PathLock::try_acquire(&t).unwrap().is_some());
    }

    #[test]
    fn a_deleted_lock_file_is_not_taken_for_ours() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("idx");
        let a = PathLock::try_acquire(&t).unwrap().unwrap();
        // Someone deletes the lock file while A holds it: B gets a new one.
        std::fs::remove_file(PathLock::lock_path(&t).unwrap()).unwrap();
        assert!(!a.still_held());
        let b = PathLock::try_acquire(&t).unwrap().expect("a new lock file");
        // A's release must not delete B's file, or C could start beside B.
        a.release();
        assert!(PathLock::try_acquire(&t).unwrap().is_none());
        b.release();
    }

    #[test]
    fn exchange_swaps_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x"), b"a").unwrap();
        std::fs::write(b.join("y"), b"b").unwrap();
        if exchange(&a, &b).unwrap() {
            assert!(a.join("y").exists() && b.join("x").exists());
        }
    }

    #[test]
    fn staged_dirs_lock_clean_up_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("out");
        // Leftovers of a dead process (pid 4194304 is above Linux's pid_max default).
        let dead = dir.path().join(".out.partial-4194304");
        std::fs::create_dir_all(dead.join("regions")).unwrap();
        std::fs::write(dead.join("regions/x"), b"half").unwrap();
        // A look-alike holding something partlens never stages is left alone.
        let alike = dir.path().join(".out.partial-4194303");
        std::fs::create_dir(&alike).unwrap();
        std::fs::write(alike.join("thesis.tex"), b"mine").unwrap();
        let s = StagedDir::begin(&t, "index").unwrap();
        assert!(!dead.exists() && alike.join("thesis.tex").exists());
        assert_eq!(s.cleaned.len(), 1);
        std::fs::remove_dir_all(&alike).unwrap();
        assert!(
            StagedDir::begin(&t, "index").is_err(),
            "second writer must be refused"
        );
        std::fs::write(s.path().join("manifest.json"), b"1").unwrap();
        s.commit(&|_| true).unwrap();
        assert_eq!(std::fs::read(t.join("manifest.json")).unwrap(), b"1");
        // Replace it: the target is never absent.
        let s = StagedDir::begin(&t, "index").unwrap();
        std::fs::write(s.path().join("manifest.json"), b"2").unwrap();
        s.commit(&|_| true).unwrap();
        assert_eq!(std::fs::read(t.join("manifest.json")).unwrap(), b"2");
        // An interrupted two-step swap: the old target comes back.
        std::fs::rename(&t, dir.path().join(".out.old-4194304")).unwrap();
        let s = StagedDir::begin(&t, "index").unwrap();
        assert!(t.join("manifest.json").exists(), "{:?}", s.cleaned);
        drop(s);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["out"], "nothing else may remain");
        // Something filled the target while we worked: it is put back, not deleted.
        let s = StagedDir::begin(&t, "index").unwrap();
        std::fs::write(t.join("thesis.tex"), b"mine").unwrap();
        let e = s.commit(&|p| !p.join("thesis.tex").exists()).unwrap_err();
        assert!(
            e.to_string().contains("changed while partlens was writing"),
            "{e}"
        );
        assert!(t.join("thesis.tex").exists() && t.join("manifest.json").exists());
        std::fs::remove_file(t.join("thesis.tex")).unwrap();
        // Under a regular file: a message that says so.
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let e = StagedDir::begin(&dir.path().join("file/idx"), "index").unwrap_err();
        assert!(e.to_string().contains("is a file, not a folder"), "{e}");
    }

    #[test]
    fn bounded_reads_refuse_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 100]).unwrap();
        assert_eq!(read_limited(&p, 100).unwrap().len(), 100);
        let e = read_limited(&p, 99).unwrap_err().to_string();
        assert!(e.contains("100 bytes") && e.contains("limit"), "{e}");
    }
}
