//! Per-task log files with size-based rotation: `stdout.log` grows to
//! `max_bytes`, then becomes `stdout.log.1` (the older `.1` becomes `.2`, …)
//! and at most `keep` rotated files are kept — Docker's json-file
//! `max-size`/`max-file`, without the JSON.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Default size of one log file before it is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated files kept next to the live one.
pub const DEFAULT_KEEP: usize = 3;

/// An append-only file that rotates itself when it would pass `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (appends to) `path`; an existing file counts toward the limit.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self { path: path.to_path_buf(), max_bytes: max_bytes.max(1), keep, file, size })
    }

    /// Appends `buf`, rotating first if it would not fit. A single write
    /// larger than `max_bytes` still lands whole in a fresh file.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// `path.N` for N ≥ 1.
    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep > 0 {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = OpenOptions::new().create(true).write(true).truncate(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Copies `reader` into `out` until end of file (the writer end closed).
pub fn copy_into(mut reader: impl Read, out: &mut RotatingFile) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn a_full_file_is_rotated_and_only_keep_old_files_remain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingFile::open(&path, 10, 2).unwrap();
        for chunk in ["aaaaaa", "bbbbbb", "cccccc", "dddddd"] {
            log.write_all(chunk.as_bytes()).unwrap();
        }
        assert_eq!(read(path.clone()), "dddddd");
        assert_eq!(read(dir.path().join("stdout.log.1")), "cccccc");
        assert_eq!(read(dir.path().join("stdout.log.2")), "bbbbbb");
        assert!(!dir.path().join("stdout.log.3").exists());
    }

    #[test]
    fn writes_that_fit_share_a_file_and_reopening_counts_existing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        RotatingFile::open(&path, 10, 1).unwrap().write_all(b"12345").unwrap();
        let mut log = RotatingFile::open(&path, 10, 1).unwrap();
        log.write_all(b"678").unwrap();
        assert_eq!(read(path.clone()), "12345678");
        log.write_all(b"9ab").unwrap();
        assert_eq!(read(path), "9ab");
        assert_eq!(read(dir.path().join("out.log.1")), "12345678");
    }

    #[test]
    fn keep_zero_truncates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let mut log = RotatingFile::open(&path, 4, 0).unwrap();
        log.write_all(b"abcd").unwrap();
        log.write_all(b"ef").unwrap();
        assert_eq!(read(path), "ef");
        assert!(!dir.path().join("out.log.1").exists());
    }
}
