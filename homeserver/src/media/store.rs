//! The content-addressed file store under `<data_dir>/media/`.
//!
//! A file is named by the SHA-256 of its bytes, `media/<aa>/<bb>/<sha256>` (the first two
//! pairs of hex digits spread files over directories), so identical uploads, and thumbnails
//! identical to each other, are one file. Content is streamed into a temporary file under
//! `media/tmp/` while it is hashed and counted, flushed to disk, and then renamed into place:
//! a reader never sees a partial file, and an upload that fails or exceeds the limit leaves
//! nothing behind (the temporary file is removed when its guard is dropped, also when the
//! request is cancelled). Files are never changed after the rename.
//!
//! A file may end up with no row pointing at it (the process died between the rename and the
//! database insert, or a racing upload lost): that is harmless, and an identical later upload
//! reuses it.

use std::{
    io,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

/// Write buffer for incoming content: fewer, larger writes to the blocking pool.
const WRITE_BUFFER: usize = 256 * 1024;

/// Content that was written to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub size: u64,
}

/// Why content could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("content larger than {0} bytes")]
    TooLarge(u64),
    /// The sender's stream failed (the client went away, or the remote server did).
    #[error("reading the content failed: {0}")]
    Source(String),
    #[error("writing the content failed: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    tmp: PathBuf,
}

/// Removes a temporary file when dropped, unless it was moved into place.
struct TempFile {
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether `s` is a SHA-256 in lowercase hex, as the store names files. Names from the database
/// are checked before they become paths.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Store {
    /// The store rooted at `root` (`<data_dir>/media`). Creates the directories and removes
    /// temporary files a previous process left behind.
    pub fn open(root: PathBuf) -> io::Result<Store> {
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(Store { root, tmp })
    }

    /// Where the file with this SHA-256 lives, or `None` for a malformed hash.
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        is_sha256(sha256).then(|| {
            self.root
                .join(&sha256[0..2])
                .join(&sha256[2..4])
                .join(sha256)
        })
    }

    /// Streams `content` into the store, refusing more than `limit` bytes.
    pub async fn write<S, E>(&self, mut content: S, limit: u64) -> Result<Stored, WriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self
            .tmp
            .join(format!("upload-{:016x}", rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        let mut guard = TempFile {
            path: Some(path.clone()),
        };
        let mut file = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = content.next().await {
            let chunk = chunk.map_err(|e| WriteError::Source(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(WriteError::TooLarge(limit));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        let file = file.into_inner();
        // On disk before the database says the media exists.
        file.sync_all().await?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        let dest = self.path(&sha256).expect("a SHA-256 in hex");
        if tokio::fs::try_exists(&dest).await? {
            // The same bytes are stored already; the guard removes the copy.
            return Ok(Stored { sha256, size });
        }
        let dir = dest.parent().expect("store paths have parents");
        tokio::fs::create_dir_all(dir).await?;
        tokio::fs::rename(&path, &dest).await?;
        guard.path = None;
        sync_dir(dir).await;
        Ok(Stored { sha256, size })
    }

    /// Stores bytes already in memory (thumbnails).
    pub async fn write_bytes(&self, bytes: Vec<u8>) -> Result<Stored, WriteError> {
        let limit = bytes.len() as u64;
        let stream = futures_util::stream::iter([Ok::<_, io::Error>(Bytes::from(bytes))]);
        self.write(stream, limit).await
    }

    /// Opens a stored file and returns it with its length.
    pub async fn open_file(&self, sha256: &str) -> io::Result<(tokio::fs::File, u64)> {
        let path = self
            .path(sha256)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed content hash"))?;
        let file = tokio::fs::File::open(&path).await?;
        let len = file.metadata().await?.len();
        Ok((file, len))
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Makes a rename durable: the new directory entry is flushed with its directory. Best effort
/// (some file systems refuse to sync a directory).
async fn sync_dir(dir: &Path) {
    let dir = dir.to_owned();
    let _ = tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all()).await;
}

/// The bytes of an open file as a stream of chunks, for response bodies.
pub fn file_stream(file: tokio::fs::File) -> impl Stream<Item = io::Result<Bytes>> + Send {
    const CHUNK: usize = 256 * 1024;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        match tokio::io::AsyncReadExt::read_buf(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), Some(file))),
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root() -> PathBuf {
        std::env::temp_dir().join(format!("myelin-store-{}", rand::random::<u64>()))
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn identical_content_is_one_file_and_failures_leave_nothing() {
        let root = temp_root();
        let store = Store::open(root.clone()).unwrap();
        let a = store
            .write(chunks(&[b"hello ", b"world"]), 100)
            .await
            .unwrap();
        let b = store.write(chunks(&[b"hello world"]), 100).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(files_under(&root), vec![store.path(&a.sha256).unwrap()]);
        let (mut file, len) = store.open_file(&a.sha256).await.unwrap();
        assert_eq!(len, 11);
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut file, &mut text)
            .await
            .unwrap();
        assert_eq!(text, "hello world");

        assert!(matches!(
            store.write(chunks(&[b"0123456789", b"x"]), 10).await,
            Err(WriteError::TooLarge(10))
        ));
        let failing = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"part")),
            Err(io::Error::other("gone")),
        ]);
        assert!(matches!(
            store.write(failing, 100).await,
            Err(WriteError::Source(_))
        ));
        assert_eq!(files_under(&root).len(), 1, "no temporary files are left");
        assert!(store.path("../../etc/passwd").is_none());
        assert!(store.open_file("AB").await.is_err());
        let _ = std::fs::remove_dir_all(root);
    }
}
