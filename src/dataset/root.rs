//! Where a dataset's files may come from. Annotations name files (`file_name`, `image`,
//! `instance_mask`, rows of `images.txt`), and folders hold symbolic links; either could lead
//! outside the dataset (`../../x.jpg`, `/etc/passwd`, a link to `/`). By default every file a
//! reader opens must lie inside the dataset's root folder once `..` and symbolic links are
//! resolved; `--allow-outside-root` ([`DatasetRoot::new`] with `allow_outside = true`) lifts
//! that for users whose datasets are made of links. Walking a folder follows links with loop
//! detection, so a link back to a parent is reported once instead of being walked forever.

use std::path::{Component, Path, PathBuf};

use super::Skipped;
use crate::error::{Error, Result};

/// A dataset root and the policy for files outside it.
#[derive(Debug, Clone)]
pub struct DatasetRoot {
    path: PathBuf,
    canonical: PathBuf,
    allow_outside: bool,
}

/// The hint appended to every "outside the dataset folder" message.
const HINT: &str = "pass --allow-outside-root to read files outside the dataset folder";

/// `path` with `.` dropped and `..` applied to the components before it, without touching the
/// file system. A `..` above the start is kept (the path then leaves wherever it started).
fn lexical(path: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            c => out.push(c),
        }
    }
    out.iter().collect()
}

impl DatasetRoot {
    /// The root folder of a dataset (or the folder holding its annotation file). Fails if it
    /// does not exist.
    pub fn new(path: impl AsRef<Path>, allow_outside: bool) -> Result<DatasetRoot> {
        let path = path.as_ref();
        // A listing in the current folder has an empty parent: that is `.`.
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        Ok(DatasetRoot {
            path: path.to_path_buf(),
            canonical,
            allow_outside,
        })
    }

    /// The root as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root with links resolved (what the manifest records).
    pub fn canonical(&self) -> &Path {
        &self.canonical
    }

    /// Whether files outside the root may be read.
    pub fn allows_outside(&self) -> bool {
        self.allow_outside
    }

    /// Joins `rel`, a path read from an annotation, to `base` (a folder inside the root) and
    /// checks the result stays inside the root: lexically (so a missing `../x.jpg` is still
    /// called outside) and, when the file exists, with links resolved. The error is the reason,
    /// for the caller to report with the annotation's name.
    pub fn join(&self, base: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
        if rel.is_empty() {
            return Err("empty file name".into());
        }
        if rel.contains('\0') {
            return Err(format!("file name {rel:?} holds a NUL byte"));
        }
        let joined = base.join(rel);
        if self.allow_outside {
            return Ok(joined);
        }
        if Path::new(rel).is_absolute() {
            return Err(format!(
                "{rel} is an absolute path, outside the dataset folder; {HINT}"
            ));
        }
        if !lexical(&joined).starts_with(lexical(&self.path)) {
            return Err(format!("{rel} leads outside the dataset folder; {HINT}"));
        }
        if joined.exists() {
            self.check(&joined)?;
        }
        Ok(joined)
    }

    /// [`DatasetRoot::join`] for a file that must exist: the path, or why it cannot be read
    /// (outside the dataset folder, or `image file missing`).
    pub fn existing_file(&self, base: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
        let p = self.join(base, rel)?;
        if p.is_file() {
            Ok(p)
        } else {
            Err("image file missing".into())
        }
    }

    /// Checks that an existing file or folder lies inside the root once links are resolved.
    pub fn check(&self, path: &Path) -> std::result::Result<(), String> {
        if self.allow_outside {
            return Ok(());
        }
        let real = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve: {e}"))?;
        if real.starts_with(&self.canonical) {
            Ok(())
        } else {
            Err(format!(
                "a symbolic link leads to {}, outside the dataset folder; {HINT}",
                real.display()
            ))
        }
    }

    /// A file the layout names inside the root (`classes.txt`, `images.txt`, …): the path
    /// joined to the root, checked like any other when it exists; a link leading out is an
    /// error for the whole dataset (these files describe all of it).
    pub fn file(&self, rel: &str) -> Result<PathBuf> {
        let p = self.path.join(rel);
        if p.exists() {
            self.check(&p).map_err(|reason| Error::Dataset {
                path: self.path.clone(),
                message: format!("{rel}: {reason}"),
            })?;
        }
        Ok(p)
    }

    /// The path of `p` relative to the root, `/`-separated (what an index stores).
    pub fn relative(&self, p: &Path) -> String {
        p.strip_prefix(&self.path)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    }

    /// Files below `dir` (a folder inside the root) for which `keep` holds, sorted. Links are
    /// followed with loop detection; a loop, a link leaving the root (unless allowed) or an
    /// unreadable entry is added to `problems` and skipped, and the walk goes on.
    pub fn walk(
        &self,
        dir: &Path,
        keep: &dyn Fn(&Path) -> bool,
        problems: &mut Vec<Skipped>,
    ) -> Result<Vec<PathBuf>> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            ));
        }
        let mut out = Vec::new();
        let mut it = walkdir::WalkDir::new(dir)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = it.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().map(|p| self.relative(p)).unwrap_or_default();
                    let reason = match e.loop_ancestor() {
                        Some(a) => {
                            let to = match self.relative(a) {
                                r if r.is_empty() => "the dataset folder itself".to_string(),
                                r => r,
                            };
                            format!("symbolic link loop back to {to}; not followed")
                        }
                        None => e.to_string(),
                    };
                    problems.push(Skipped::new(path, reason));
                    continue;
                }
            };
            let is_dir = entry.file_type().is_dir();
            if entry.path_is_symlink() {
                if let Err(reason) = self.check(entry.path()) {
                    problems.push(Skipped::new(self.relative(entry.path()), reason));
                    if is_dir {
                        it.skip_current_dir();
                    }
                    continue;
                }
            }
            if !is_dir && keep(entry.path()) {
                out.push(entry.into_path());
            }
        }
        Ok(out)
    }
}

/// Checks that `name` (a split, a class file name, anything that becomes one path component)
/// is a plain file name: not empty, no separator, not `.` or `..`, no NUL. `what` names it in
/// the error.
pub fn check_component(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} {name:?} is not a plain name (no '/', '\\', '..', empty or over 255 bytes): \
             it would become a path"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normalisation() {
        assert_eq!(lexical(Path::new("a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(lexical(Path::new("a/../../x")), PathBuf::from("../x"));
        assert_eq!(lexical(Path::new("/a/../../x")), PathBuf::from("/x"));
    }

    #[test]
    fn joins_stay_inside_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ds");
        std::fs::create_dir_all(root.join("img")).unwrap();
        std::fs::write(dir.path().join("secret.jpg"), b"x").unwrap();
        std::fs::write(root.join("img/a.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.jpg"), root.join("img/link.jpg"))
            .unwrap();
        let r = DatasetRoot::new(&root, false).unwrap();
        assert!(r.join(&root, "img/a.jpg").is_ok());
        assert!(r.join(&root, "img/../img/a.jpg").is_ok());
        for bad in [
            "../secret.jpg",
            "img/../../secret.jpg",
            "/etc/passwd",
            "img/link.jpg",
        ] {
            let e = r.join(&root, bad).unwrap_err();
            assert!(e.contains("--allow-outside-root"), "{bad}: {e}");
        }
        // A missing file inside is fine here (the reader reports it missing).
        assert!(r.join(&root, "img/missing.jpg").is_ok());
        let open = DatasetRoot::new(&root, true).unwrap();
        assert!(open.join(&root, "../secret.jpg").is_ok());
    }

    #[test]
    fn walk_reports_loops_and_escaping_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ds");
        std::fs::create_dir_all(root.join("cats")).unwrap();
        std::fs::write(root.join("cats/a.jpg"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/b.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink("..", root.join("cats/loop")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("cats/out")).unwrap();
        let r = DatasetRoot::new(&root, false).unwrap();
        let mut problems = Vec::new();
        let files = r.walk(&root, &|_| true, &mut problems).unwrap();
        assert_eq!(files, vec![root.join("cats/a.jpg")]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.reason.contains("loop")));
        assert!(problems.iter().any(|p| p.reason.contains("outside")));
        // Allowed outside: the escaping link is walked, the loop still reported once.
        let r = DatasetRoot::new(&root, true).unwrap();
        let mut problems = Vec::new();
        let files = r.walk(&root, &|_| true, &mut problems).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn path_components_are_checked() {
        for good in ["train", "val-2", "a b"] {
            check_component(good, "split").unwrap();
        }
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "x\0"] {
            assert!(check_component(bad, "split").is_err(), "{bad:?}");
        }
    }
}
