//! The filesystem [`BlobStore`]: blobs at `blobs/<alg>/<2 hex>/<hex>`, staged uploads at
//! `uploads/<id>`, both under one root so that a commit is a single `rename(2)`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::{BlobStore, ByteStream, StoredBlob, UploadWriter};
use crate::oci::{Digest, UploadId};

/// Chunk size for reads: large enough that per-chunk overhead vanishes next to the copy.
const READ_CHUNK: usize = 1 << 20;
/// Chunks in flight between the disk thread and the network.
const PIPELINE_DEPTH: usize = 4;

pub struct FilesystemStore {
    root: PathBuf,
    /// Whether a commit reaches stable storage before it returns (see [`FilesystemStore::open`]).
    sync: bool,
}

impl FilesystemStore {
    /// Opens (creating if needed) a store rooted at `root`. With `sync`, a committed blob
    /// survives power loss: its bytes are flushed before the rename that makes it visible,
    /// and the directory entry after it. Without, a commit survives a crash of the process
    /// only.
    pub fn open(root: &Path, sync: bool) -> io::Result<FilesystemStore> {
        fs::create_dir_all(root.join("blobs"))?;
        fs::create_dir_all(root.join("uploads"))?;
        if sync {
            File::open(root)?.sync_all()?;
        }
        Ok(FilesystemStore { root: root.to_owned(), sync })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("blobs").join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Streams `len` bytes of `file` from `offset`, read on a blocking thread a chunk ahead of
/// the consumer.
fn stream_file(mut file: File, offset: u64, len: u64) -> io::Result<ByteStream> {
    file.seek(SeekFrom::Start(offset))?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(PIPELINE_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        while left > 0 {
            let want = left.min(READ_CHUNK as u64);
            // `read_to_end` fills the spare capacity without zeroing it first: a memset of
            // every chunk would cost a pass over the whole blob.
            let mut buf = Vec::with_capacity(want as usize);
            let result = match (&mut file).take(want).read_to_end(&mut buf) {
                Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than expected")),
                Ok(n) => {
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            if tx.blocking_send(result).is_err() || failed {
                return;
            }
        }
    });
    Ok(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })))
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk without waiting, so
/// that the flush at commit finds little left to do and a large upload streams to disk
/// while it arrives instead of all at the end.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain system call on a file descriptor this function borrows; no memory is
    // passed. A failure only means the flush at commit does all the work.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Removes `dir` and then its parents up to (not including) `stop`, while they are empty.
fn prune_empty_dirs(mut dir: &Path, stop: &Path) {
    while dir != stop && dir.starts_with(stop) {
        if fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return,
        }
    }
}

/// Bytes gathered before one write: network frames are small (tens of KiB), and a system
/// call per frame would cost more than copying them together.
const WRITE_CHUNK: usize = 1 << 20;

struct FileUploadWriter {
    tx: Option<mpsc::Sender<Bytes>>,
    pending: BytesMut,
    done: tokio::task::JoinHandle<io::Result<u64>>,
}

impl FileUploadWriter {
    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        let tx = self.tx.as_ref().expect("write after finish");
        if tx.send(data).await.is_err() {
            // The disk thread stopped on an error; finish() reports it.
            self.tx = None;
            return Err(io::Error::other("upload writer stopped"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl UploadWriter for FileUploadWriter {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        if self.pending.is_empty() && data.len() >= WRITE_CHUNK {
            return self.send(data).await;
        }
        self.pending.extend_from_slice(&data);
        if self.pending.len() >= WRITE_CHUNK {
            let chunk = self.pending.split().freeze();
            self.pending.reserve(WRITE_CHUNK);
            self.send(chunk).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> io::Result<u64> {
        if !self.pending.is_empty() {
            let chunk = self.pending.split().freeze();
            self.send(chunk).await?;
        }
        self.tx = None;
        (&mut self.done).await.map_err(io::Error::other)?
    }
}

#[async_trait::async_trait]
impl BlobStore for FilesystemStore {
    async fn create_upload(&self, id: &UploadId) -> io::Result<()> {
        let path = self.upload_path(id);
        let sync = self.sync;
        blocking(move || {
            OpenOptions::new().write(true).create_new(true).open(&path)?;
            if sync {
                // The session is acknowledged once its row is flushed: its file must
                // survive a power loss as well.
                File::open(path.parent().expect("upload path has a parent"))?.sync_all()?;
            }
            Ok(())
        })
        .await
    }

    async fn upload_writer(&self, id: &UploadId, offset: u64) -> io::Result<Box<dyn UploadWriter>> {
        let path = self.upload_path(id);
        let mut file = blocking(move || {
            let mut file = OpenOptions::new().write(true).open(path)?;
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            Ok(file)
        })
        .await?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
        let sync = self.sync;
        // Writing on its own thread lets hashing (on the caller's side) and the disk copy
        // overlap.
        let done = tokio::task::spawn_blocking(move || {
            let mut written = offset;
            while let Some(data) = rx.blocking_recv() {
                file.write_all(&data)?;
                if sync {
                    start_writeback(&file, written, data.len() as u64);
                }
                written += data.len() as u64;
            }
            file.flush()?;
            if sync {
                // The session's size is recorded once this returns, and a commit renames
                // the file without flushing it again: after a power loss the staged bytes
                // must all still be there.
                file.sync_data()?;
            }
            file.stream_position()
        });
        Ok(Box::new(FileUploadWriter { tx: Some(tx), pending: BytesMut::with_capacity(WRITE_CHUNK), done }))
    }

    async fn read_upload(&self, id: &UploadId, len: u64) -> io::Result<ByteStream> {
        let path = self.upload_path(id);
        let file = blocking(move || File::open(path)).await?;
        stream_file(file, 0, len)
    }

    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> io::Result<()> {
        let from = self.upload_path(id);
        let to = self.blob_path(digest);
        let (sync, stop) = (self.sync, self.root.clone());
        blocking(move || {
            // Bytes first: once the rename is durable, the name must never point at data
            // that a power loss could still take away. They already are on disk: staged
            // bytes arrive only through an upload writer, which flushes them before it
            // returns (with `sync`).
            File::options().write(true).open(&from)?.set_modified(std::time::SystemTime::now())?;
            let dir = to.parent().expect("blob path has a parent");
            // A concurrent delete may prune the shard directory between its creation and
            // the rename; retry until the rename lands.
            let mut tries = 0;
            loop {
                fs::create_dir_all(dir)?;
                match fs::rename(&from, &to) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound && from.exists() && tries < 16 => tries += 1,
                    Err(e) => return Err(e),
                    Ok(()) if !sync => return Ok(()),
                    Ok(()) => break,
                }
            }
            // The blob's entry, and the entries of its shard and algorithm directories,
            // which a delete may have pruned and this commit (or a concurrent one, which
            // may not have flushed yet) recreated. Flushing an unchanged directory costs
            // about 50 µs; knowing which of them changed would need coordination.
            let mut level = dir;
            while level != stop {
                File::open(level)?.sync_all()?;
                level = level.parent().expect("blob path is under the blob root");
            }
            Ok(())
        })
        .await
    }

    async fn delete_upload(&self, id: &UploadId) -> io::Result<()> {
        let path = self.upload_path(id);
        blocking(move || fs::remove_file(path)).await
    }

    async fn blob_size(&self, digest: &Digest) -> io::Result<u64> {
        let path = self.blob_path(digest);
        blocking(move || Ok(fs::metadata(path)?.len())).await
    }

    async fn read_blob(&self, digest: &Digest, offset: u64, len: u64) -> io::Result<ByteStream> {
        let path = self.blob_path(digest);
        let file = blocking(move || File::open(path)).await?;
        stream_file(file, offset, len)
    }

    async fn delete_blob(&self, digest: &Digest) -> io::Result<()> {
        let path = self.blob_path(digest);
        let stop = self.root.join("blobs");
        blocking(move || {
            fs::remove_file(&path)?;
            prune_empty_dirs(path.parent().expect("blob path has a parent"), &stop);
            Ok(())
        })
        .await
    }

    async fn delete_blobs(&self, digests: &[Digest]) -> io::Result<()> {
        // A few threads for the whole batch: an unlink costs tens of microseconds of
        // journaling here, which overlaps across directories; a thread per file would cost
        // more than the unlinks.
        const THREADS: usize = 4;
        let paths: Vec<PathBuf> = digests.iter().map(|d| self.blob_path(d)).collect();
        let stop = self.root.join("blobs");
        blocking(move || {
            let per_thread = paths.len().div_ceil(THREADS).max(1);
            std::thread::scope(|scope| {
                let workers: Vec<_> = paths
                    .chunks(per_thread)
                    .map(|chunk| {
                        scope.spawn(move || {
                            for path in chunk {
                                match fs::remove_file(path) {
                                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                                    _ => {}
                                }
                            }
                            Ok(())
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .try_for_each(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("unlink thread panicked"))))
            })?;
            // Each shard directory once, after its files: a failed rmdir of a full shard
            // scans the directory, which costs more than the unlink itself.
            let mut dirs: Vec<&Path> = paths.iter().map(|p| p.parent().expect("blob path has a parent")).collect();
            dirs.sort();
            dirs.dedup();
            for dir in dirs {
                prune_empty_dirs(dir, &stop);
            }
            Ok(())
        })
        .await
    }

    async fn list_blobs(&self) -> io::Result<Vec<StoredBlob>> {
        let blobs = self.root.join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            for alg in fs::read_dir(&blobs)? {
                let alg = alg?;
                let alg_name = alg.file_name().to_string_lossy().into_owned();
                for shard in fs::read_dir(alg.path())? {
                    for file in fs::read_dir(shard?.path())? {
                        let file = file?;
                        let meta = file.metadata()?;
                        let name = format!("{alg_name}:{}", file.file_name().to_string_lossy());
                        // A file whose name is no digest is not a blob this store wrote; it is
                        // reported so that the caller can decide, never silently skipped.
                        let digest = name
                            .parse()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}")))?;
                        out.push(StoredBlob { digest, size: meta.len(), modified: meta.modified()? });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_uploads(&self) -> io::Result<Vec<(String, std::time::SystemTime)>> {
        let uploads = self.root.join("uploads");
        blocking(move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(&uploads)? {
                let entry = entry?;
                out.push((entry.file_name().to_string_lossy().into_owned(), entry.metadata()?.modified()?));
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    async fn collect(s: ByteStream) -> Vec<u8> {
        s.try_fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b);
            Ok(acc)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn upload_commit_read_delete_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesystemStore::open(dir.path(), true).unwrap();
        let id = UploadId::random();
        store.create_upload(&id).await.unwrap();
        let mut w = store.upload_writer(&id, 0).await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        w.write(Bytes::from_static(b"world")).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 11);
        // Truncating append: the second writer replaces everything after offset 6.
        let mut w = store.upload_writer(&id, 6).await.unwrap();
        w.write(Bytes::from_static(b"there")).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 11);
        let digest = Digest::sha256_of(b"hello there");
        store.commit_upload(&id, &digest).await.unwrap();
        assert_eq!(store.blob_size(&digest).await.unwrap(), 11);
        assert_eq!(collect(store.read_blob(&digest, 6, 5).await.unwrap()).await, b"there");
        assert_eq!(store.list_blobs().await.unwrap().len(), 1);
        store.delete_blob(&digest).await.unwrap();
        assert_eq!(store.blob_size(&digest).await.unwrap_err().kind(), io::ErrorKind::NotFound);
        // The shard and algorithm directories went with their last blob.
        assert_eq!(fs::read_dir(dir.path().join("blobs")).unwrap().count(), 0);
        assert!(store.list_blobs().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn batch_delete_tolerates_missing_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesystemStore::open(dir.path(), true).unwrap();
        let mut digests = Vec::new();
        for content in [&b"one"[..], b"two"] {
            let id = UploadId::random();
            store.create_upload(&id).await.unwrap();
            let mut w = store.upload_writer(&id, 0).await.unwrap();
            w.write(Bytes::copy_from_slice(content)).await.unwrap();
            w.finish().await.unwrap();
            let digest = Digest::sha256_of(content);
            store.commit_upload(&id, &digest).await.unwrap();
            digests.push(digest);
        }
        digests.push(Digest::sha256_of(b"never stored"));
        store.delete_blobs(&digests).await.unwrap();
        assert!(store.list_blobs().await.unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("blobs")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn stray_file_fails_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesystemStore::open(dir.path(), true).unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256/ab")).unwrap();
        fs::write(dir.path().join("blobs/sha256/ab/notadigest"), b"x").unwrap();
        assert!(store.list_blobs().await.is_err());
    }
}
