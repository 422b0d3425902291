//! The filesystem [`BlobStore`]: blobs at `blobs/<alg>/<2 hex>/<hex>`, staged uploads at
//! `uploads/<id>`, both under one root so that a commit is a single `rename(2)`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::{BlobStore, ByteStream, StoredBlob, UploadWriter};
use crate::oci::{Digest, UploadId};

/// Chunk size for reads: large enough that per-chunk overhead vanishes next to the copy.
const READ_CHUNK: usize = 1 << 20;
/// Chunks read from the page cache on the consumer's task: small enough to stay in the
/// core's cache until the network copies them out, large enough that a system call per
/// chunk costs nothing next to the copy.
const CACHED_CHUNK: usize = 256 << 10;
/// Chunks read ahead of the network once a read goes to the disk: enough to keep reading
/// while the network copies out a chunk, and to absorb a hiccup on either side.
const PIPELINE_DEPTH: usize = 4;
/// Threads that unlink a batch of blobs. Freeing a file's blocks can wait for the device:
/// ext4 without a journal, mounted with `discard`, trims them inside `unlink(2)`, tens of
/// microseconds each. Those waits overlap across threads (16 unlinked 1,000 small files in
/// a third of the time 1 thread took, and faster than 4, 32 or 64 threads, on such a disk).
const UNLINK_THREADS: usize = 16;
/// Files a thread unlinks before another one is worth it: a few hundred microseconds of
/// waits, against the cost of handing work to one more thread.
const FILES_PER_UNLINK_THREAD: usize = 8;

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
        writable_dirs(root)?;
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

/// Refuses a store whose directories this process cannot write in (a data directory made
/// by root, then only its top handed to the service's user): the server started, answered
/// healthy, and failed every push with a 500. The blob directories go two levels deep
/// (`blobs/<alg>/<2 hex>`), a few hundred checks at most.
fn writable_dirs(root: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut dirs = vec![root.join("uploads"), root.join("blobs")];
    for alg in fs::read_dir(root.join("blobs"))? {
        let alg = alg?.path();
        if alg.is_dir() {
            dirs.extend(fs::read_dir(&alg)?.filter_map(|d| d.ok().map(|d| d.path())).filter(|d| d.is_dir()));
            dirs.push(alg);
        }
    }
    for dir in dirs {
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // With the effective ids, as the writes will be made.
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK | libc::X_OK, libc::AT_EACCESS) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("{} is not writable by this process ({e}): the whole data directory must be", dir.display()),
            ));
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Streams `len` bytes of `file` from `offset`. What the page cache holds is read on the
/// consumer's task (`RWF_NOWAIT`, which answers "not cached" instead of waiting for the
/// data), in chunks that are still in the core's cache when the network copies them out;
/// from the first chunk not in the cache on, blocking threads read ahead of the consumer.
fn stream_file(file: File, offset: u64, len: u64) -> ByteStream {
    Box::pin(FileStream { file: Some(file), offset, left: len, from_disk: None })
}

struct FileStream {
    /// The file while it is read from the page cache; taken by the disk reader.
    file: Option<File>,
    offset: u64,
    left: u64,
    from_disk: Option<ByteStream>,
}

impl Stream for FileStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(disk) = &mut this.from_disk {
                return disk.as_mut().poll_next(cx);
            }
            let Some(file) = &this.file else { return Poll::Ready(None) };
            if this.left == 0 {
                return Poll::Ready(None);
            }
            let want = this.left.min(CACHED_CHUNK as u64) as usize;
            match read_cached(file, this.offset, want) {
                Ok(Some(bytes)) => {
                    this.offset += bytes.len() as u64;
                    this.left -= bytes.len() as u64;
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Ok(None) => {
                    let file = this.file.take().expect("checked above");
                    this.from_disk = Some(read_ahead(file, this.offset, this.left)?);
                }
                Err(e) => {
                    this.file = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// Up to `len` bytes at `offset` if the page cache holds them (a prefix if it holds a
/// prefix); `None` when reading would wait for the disk, or the kernel cannot tell.
#[cfg(target_os = "linux")]
fn read_cached(file: &File, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::<u8>::with_capacity(len);
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    // SAFETY: the iovec points at `len` bytes of `buf`'s spare capacity, which outlives
    // the call; the kernel writes at most `len` bytes there and reports how many.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    if n == 0 {
        // Nothing cached at `offset`, or the file ends there: the disk reader tells which.
        return Ok(None);
    }
    // SAFETY: the kernel initialised the first `n` bytes (n <= len <= capacity).
    unsafe { buf.set_len(n as usize) };
    Ok(Some(Bytes::from(buf)))
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &File, _offset: u64, _len: usize) -> io::Result<Option<Bytes>> {
    Ok(None)
}

/// State shared by an async side and a blocking thread that works for it while it has
/// work, with a signal at each step the thread makes and when it ends.
struct Handoff<S> {
    state: std::sync::Mutex<S>,
    progress: tokio::sync::Notify,
}

impl<S: Send + 'static> Handoff<S> {
    fn new(state: S) -> Arc<Handoff<S>> {
        Arc::new(Handoff { state: std::sync::Mutex::new(state), progress: tokio::sync::Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `work` on a blocking thread. If it panics, `failed` sets the state right and
    /// the waiters are told, instead of waiting for a signal that never comes.
    fn spawn(
        self: &Arc<Self>,
        work: impl FnOnce(&Self) + Send + 'static,
        failed: impl FnOnce(&mut S) + Send + 'static,
    ) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&this))).is_err() {
                failed(&mut this.lock());
                this.progress.notify_one();
            }
        });
    }
}

/// Streams `len` bytes of `file` from `offset`, read ahead of the consumer by up to
/// [`PIPELINE_DEPTH`] chunks. A blocking thread reads while there is room ahead and ends
/// when there is none; taking a chunk starts another. No thread waits on the consumer: a
/// client that stops reading holds a file and the chunks read ahead, not one of the
/// blocking pool's threads (a few hundred stalled downloads would otherwise take them all,
/// and with them every file operation of every other client). One thread reading in order
/// keeps the kernel's read-ahead going: chunks read by tasks of their own, each at its
/// offset, made first reads from the disk 13 % slower.
fn read_ahead(file: File, offset: u64, len: u64) -> io::Result<ByteStream> {
    (&file).seek(SeekFrom::Start(offset))?;
    let ahead = Handoff::new(ReadState { chunks: VecDeque::new(), file: None, left: len, reading: true });
    ahead.start(file);
    Ok(Box::pin(futures_util::stream::unfold(ahead, |ahead| async move {
        let chunk = ahead.next().await?;
        Some((chunk, ahead))
    })))
}

struct ReadState {
    chunks: VecDeque<io::Result<Bytes>>,
    /// Here while no thread reads; the reading thread holds it meanwhile.
    file: Option<File>,
    /// Bytes not read yet (none after an error).
    left: u64,
    reading: bool,
}

impl Handoff<ReadState> {
    fn start(self: &Arc<Self>, file: File) {
        self.spawn(
            |ahead| ahead.fill(file),
            |state| {
                state.chunks.push_back(Err(io::Error::other("a blob's reading thread panicked")));
                (state.left, state.reading) = (0, false);
            },
        );
    }

    /// Reads chunks in order while there is room ahead (on a blocking thread). The room is
    /// found full and the thread marked as ended under one lock, as a chunk is taken and
    /// the mark read under one: a chunk taken always finds a thread reading or starts one.
    fn fill(&self, mut file: File) {
        loop {
            let want = {
                let mut state = self.lock();
                if state.left == 0 || state.chunks.len() >= PIPELINE_DEPTH {
                    (state.file, state.reading) = (Some(file), false);
                    break;
                }
                state.left.min(READ_CHUNK as u64)
            };
            // `read_to_end` fills the spare capacity without zeroing it first: a memset of
            // every chunk would cost a pass over the whole blob.
            let mut buf = Vec::with_capacity(want as usize);
            let read = match (&mut file).take(want).read_to_end(&mut buf) {
                Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than expected")),
                Ok(n) => Ok(n),
                Err(e) => Err(e),
            };
            let mut state = self.lock();
            match read {
                Ok(n) => {
                    state.left -= n as u64;
                    state.chunks.push_back(Ok(Bytes::from(buf)));
                }
                Err(e) => {
                    state.left = 0;
                    state.chunks.push_back(Err(e));
                }
            }
            drop(state);
            self.progress.notify_one();
        }
        self.progress.notify_one();
    }

    /// The next chunk, once read; `None` at the end.
    async fn next(self: &Arc<Self>) -> Option<io::Result<Bytes>> {
        loop {
            // Made before the check, so that a signal between the check and the wait is
            // not missed (Notify keeps one for the next waiter).
            let progress = self.progress.notified();
            {
                let mut state = self.lock();
                let chunk = state.chunks.pop_front();
                if !state.reading && state.left > 0 && state.chunks.len() < PIPELINE_DEPTH {
                    let file = state.file.take().expect("a reader that stopped left the file");
                    state.reading = true;
                    drop(state);
                    self.start(file);
                } else if chunk.is_none() && !state.reading {
                    return None;
                }
                if chunk.is_some() {
                    return chunk;
                }
            }
            progress.await;
        }
    }
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

/// Unlinks the files of each shard (a missing one is not an error), then prunes the shard's
/// directory if that left it empty. Returns the blobs it could not unlink.
fn unlink_shards(shards: &[Vec<(PathBuf, Digest)>], stop: &Path) -> Vec<(Digest, io::Error)> {
    let mut failed = Vec::new();
    for shard in shards {
        for (path, digest) in shard {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => failed.push((digest.clone(), e)),
                _ => {}
            }
        }
        prune_empty_dirs(shard[0].0.parent().expect("blob path has a parent"), stop);
    }
    failed
}

/// Removes `dir` if it is an empty directory; whether it did.
fn removed_if_empty(dir: &Path) -> io::Result<bool> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

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
/// The alignment of a direct write's buffer address, length and file offset: `O_DIRECT`
/// asks for the device's logical block size, 4096 bytes or less on the devices in common
/// use. A device that needs more refuses with EINVAL, and the writer falls back to the
/// page cache.
const DIRECT_ALIGN: usize = 4096;
/// Full buffers an upload queues for its writing thread before it waits: two keep the
/// disk busy, and each one more is a megabyte per concurrent upload.
const WRITES_QUEUED: usize = 2;

/// A write buffer of up to [`WRITE_CHUNK`] bytes whose data starts on a [`DIRECT_ALIGN`]
/// boundary, so that a write can hand it to the device as it is.
struct ChunkBuf {
    /// Never grows past its first allocation: a reallocation would lose the alignment.
    raw: Vec<u8>,
    /// Where the aligned data starts in `raw`.
    start: usize,
}

impl ChunkBuf {
    fn new() -> ChunkBuf {
        let mut raw: Vec<u8> = Vec::with_capacity(WRITE_CHUNK + DIRECT_ALIGN);
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        raw.resize(start, 0);
        ChunkBuf { raw, start }
    }

    fn data(&self) -> &[u8] {
        &self.raw[self.start..]
    }

    fn is_full(&self) -> bool {
        self.data().len() == WRITE_CHUNK
    }

    /// Appends as much of `data` as fits and returns how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(WRITE_CHUNK - self.data().len());
        self.raw.extend_from_slice(&data[..n]);
        n
    }

    fn clear(&mut self) {
        self.raw.truncate(self.start);
    }
}

/// Turns `O_DIRECT` on or off for `file`. Fails where the filesystem cannot do direct I/O.
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, _on: bool) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Bytes of an upload that go through the page cache before the rest goes around it. A
/// blob is often pulled right after its push (a build, then its deployment), and up to
/// this size it is then read from memory. Beyond it, copying into the cache costs as much
/// CPU as hashing, and a huge blob would push out what other clients are reading.
const DIRECT_FROM: u64 = 64 << 20;

/// How an upload writer's bytes go to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Through the page cache until the upload holds [`DIRECT_FROM`] bytes, then direct.
    CacheFirst,
    /// Whole aligned blocks straight from the buffer to the device.
    Direct,
    /// Through the page cache for the rest of this writer: no flush wanted, an unaligned
    /// position, or a filesystem that refuses direct I/O.
    Cache,
}

/// The disk side of an upload writer.
struct DiskSink {
    file: File,
    mode: WriteMode,
    sync: bool,
    written: u64,
}

impl DiskSink {
    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.mode == WriteMode::CacheFirst && self.written >= DIRECT_FROM {
            // Always aligned when the writer started aligned (chunks are whole megabytes);
            // checked, since an unaligned direct write would only fail.
            let aligned = self.written.is_multiple_of(DIRECT_ALIGN as u64);
            self.mode =
                if aligned && set_direct(&self.file, true).is_ok() { WriteMode::Direct } else { WriteMode::Cache };
        }
        let (from, len) = (self.written, data.len() as u64);
        while !data.is_empty() {
            let direct = self.mode == WriteMode::Direct;
            let whole_blocks = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
            if direct && whole_blocks == 0 {
                self.cached()?;
                continue;
            }
            let part = if direct { &data[..whole_blocks] } else { data };
            match self.file.write(part) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Direct I/O refuses what it cannot align (a short write leaves the rest
                // unaligned); the page cache takes anything.
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => self.cached()?,
                Err(e) => return Err(e),
            }
        }
        self.written += len;
        if self.sync && self.mode != WriteMode::Direct {
            start_writeback(&self.file, from, len);
        }
        Ok(())
    }

    fn cached(&mut self) -> io::Result<()> {
        set_direct(&self.file, false)?;
        self.mode = WriteMode::Cache;
        Ok(())
    }

    fn finish(mut self) -> io::Result<u64> {
        self.file.flush()?;
        if self.sync {
            // The session's size is recorded once this returns, and a commit renames the
            // file without flushing it again: after a power loss the staged bytes must all
            // still be there. Direct writes are on the device already, but the file's size
            // and any buffered tail are not.
            self.file.sync_data()?;
        }
        Ok(self.written)
    }
}

/// Writes an upload's buffers on a blocking thread while the caller receives and hashes
/// the next ones. The thread writes as long as full buffers wait, and ends when none does:
/// it never waits for the client, who holds at most [`WRITES_QUEUED`] buffers and the file
/// when it stops sending. (A thread per buffer instead left the disk idle between one
/// buffer and the next: pushes were about 10 % slower.)
struct FileUploadWriter {
    queue: Arc<Handoff<Queued>>,
    pending: ChunkBuf,
}

struct Queued {
    full: VecDeque<ChunkBuf>,
    /// Written buffers, for reuse: a fresh megabyte per chunk would cost a page fault per
    /// page.
    spare: Vec<ChunkBuf>,
    /// Here while no thread writes; the writing thread holds it meanwhile.
    sink: Option<DiskSink>,
    writing: bool,
    /// Why writing stopped; after a failed write the file's end is unknown, and nothing
    /// more goes to it.
    failed: Option<(io::ErrorKind, String)>,
}

impl Queued {
    fn stop(&mut self, e: io::Error) {
        self.failed = Some((e.kind(), e.to_string()));
        self.writing = false;
        self.full.clear();
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }
}

impl Handoff<Queued> {
    /// Writes the queued buffers in order until none is left (on a blocking thread). The
    /// queue is found empty and the thread marked as ended under one lock, as a buffer is
    /// queued and the mark read under one: each buffer is either taken by this thread or
    /// starts another.
    fn drain(&self, mut sink: DiskSink) {
        loop {
            let mut chunk = {
                let mut queued = self.lock();
                let Some(chunk) = queued.full.pop_front() else {
                    queued.sink = Some(sink);
                    queued.writing = false;
                    break;
                };
                chunk
            };
            let written = sink.write(chunk.data());
            chunk.clear();
            self.lock().spare.push(chunk);
            if let Err(e) = written {
                return self.fail(e);
            }
            self.progress.notify_one();
        }
        self.progress.notify_one();
    }

    fn fail(&self, e: io::Error) {
        self.lock().stop(e);
        self.progress.notify_one();
    }
}

impl FileUploadWriter {
    /// Queues the pending buffer, starts a writing thread unless one runs, and waits while
    /// more than [`WRITES_QUEUED`] buffers wait.
    async fn send_pending(&mut self) -> io::Result<()> {
        let spare = {
            let mut queued = self.queue.lock();
            queued.check()?;
            queued.spare.pop()
        };
        let full = std::mem::replace(&mut self.pending, spare.unwrap_or_else(ChunkBuf::new));
        let start = {
            let mut queued = self.queue.lock();
            queued.check()?;
            queued.full.push_back(full);
            if queued.writing {
                None
            } else {
                queued.writing = true;
                queued.sink.take()
            }
        };
        if let Some(sink) = start {
            self.queue.spawn(
                |queue| queue.drain(sink),
                |queued| queued.stop(io::Error::other("an upload's writing thread panicked")),
            );
        }
        self.wait_until(|q| q.full.len() <= WRITES_QUEUED).await
    }

    async fn wait_until(&self, done: impl Fn(&Queued) -> bool) -> io::Result<()> {
        loop {
            // Made before the check, so that a signal between the check and the wait is
            // not missed (Notify keeps one for the next waiter).
            let progress = self.queue.progress.notified();
            {
                let queued = self.queue.lock();
                queued.check()?;
                if done(&queued) {
                    return Ok(());
                }
            }
            progress.await;
        }
    }
}

impl Drop for FileUploadWriter {
    /// Dropped without `finish` (its step failed half-way): the buffers still queued are
    /// never written, so that a retry's writer, which truncates the file first, does not
    /// find them landing after its own bytes. (A buffer being written at the time still
    /// lands; upload steps run to the end on a task of their own, so this takes a panic.)
    fn drop(&mut self) {
        self.queue.lock().full.clear();
    }
}

#[async_trait::async_trait]
impl UploadWriter for FileUploadWriter {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        let mut rest = &data[..];
        while !rest.is_empty() {
            rest = &rest[self.pending.fill(rest)..];
            if self.pending.is_full() {
                self.send_pending().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> io::Result<u64> {
        if !self.pending.data().is_empty() {
            self.send_pending().await?;
        }
        self.wait_until(|q| !q.writing && q.full.is_empty()).await?;
        let sink = self.queue.lock().sink.take().ok_or_else(|| io::Error::other("the upload's file is gone"))?;
        blocking(move || sink.finish()).await
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
        let sync = self.sync;
        let file = blocking(move || {
            let mut file = OpenOptions::new().write(true).open(path)?;
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            Ok(file)
        })
        .await?;
        // Only a flushed upload goes around the page cache: its bytes must reach the device
        // before the acknowledgement anyway. Without `sync` the cache is the faster place.
        let mode =
            if sync && offset.is_multiple_of(DIRECT_ALIGN as u64) { WriteMode::CacheFirst } else { WriteMode::Cache };
        let sink = DiskSink { file, mode, sync, written: offset };
        let queued =
            Queued { full: VecDeque::new(), spare: Vec::new(), sink: Some(sink), writing: false, failed: None };
        Ok(Box::new(FileUploadWriter { queue: Handoff::new(queued), pending: ChunkBuf::new() }))
    }

    async fn read_upload(&self, id: &UploadId, len: u64) -> io::Result<ByteStream> {
        let path = self.upload_path(id);
        let file = blocking(move || File::open(path)).await?;
        Ok(stream_file(file, 0, len))
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
            // A concurrent delete of another blob of the shard may prune the shard directory
            // (and the algorithm's, once empty) while it is being made, or between its
            // making and the rename: `create_dir_all` then fails (EEXIST from a directory
            // gone by the time it is checked, ENOENT from a parent pruned), or the rename
            // does. Retry until the rename lands.
            let mut tries = 0;
            loop {
                match fs::create_dir_all(dir) {
                    Err(e)
                        if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists) && tries < 16 =>
                    {
                        tries += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                    Ok(()) => {}
                }
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

    async fn upload_size(&self, id: &UploadId) -> io::Result<u64> {
        let path = self.upload_path(id);
        blocking(move || Ok(fs::metadata(path)?.len())).await
    }

    async fn blob_size(&self, digest: &Digest) -> io::Result<u64> {
        let path = self.blob_path(digest);
        blocking(move || Ok(fs::metadata(path)?.len())).await
    }

    async fn read_blob(&self, digest: &Digest, offset: u64, len: u64) -> io::Result<ByteStream> {
        let path = self.blob_path(digest);
        let file = blocking(move || File::open(path)).await?;
        Ok(stream_file(file, offset, len))
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

    async fn delete_blobs(&self, digests: &[Digest]) -> Vec<(Digest, io::Error)> {
        let mut paths: Vec<(PathBuf, Digest)> = digests.iter().map(|d| (self.blob_path(d), d.clone())).collect();
        paths.sort();
        let stop = Arc::new(self.root.join("blobs"));
        // One group per shard directory, so that a directory is pruned once, by the thread
        // that emptied it: a failed `rmdir` of a full shard reads the directory.
        let mut shards: Vec<Vec<(PathBuf, Digest)>> =
            paths.chunk_by(|a, b| a.0.parent() == b.0.parent()).map(<[(PathBuf, Digest)]>::to_vec).collect();
        // Threads of the blocking pool, which outlive the call: a collection that removes a
        // few blobs, as most do under steady traffic, would otherwise pay more for creating
        // and tearing down threads than for its unlinks.
        let files = digests.len();
        let threads = files.div_ceil(FILES_PER_UNLINK_THREAD).clamp(1, UNLINK_THREADS);
        let per_thread = shards.len().div_ceil(threads).max(1);
        let mut workers = Vec::with_capacity(threads);
        while !shards.is_empty() {
            let part: Vec<Vec<(PathBuf, Digest)>> = shards.drain(..per_thread.min(shards.len())).collect();
            let digests: Vec<Digest> = part.iter().flatten().map(|(_, d)| d.clone()).collect();
            let stop = stop.clone();
            workers.push((digests, tokio::task::spawn_blocking(move || unlink_shards(&part, &stop))));
        }
        // Every worker runs to its end. One that failed as a whole leaves its blobs unknown:
        // counted as not removed (reconcile finds whatever bytes stayed).
        let mut failed = Vec::new();
        for (digests, worker) in workers {
            match worker.await {
                Ok(some) => failed.extend(some),
                Err(e) => failed.extend(digests.into_iter().map(|d| (d, io::Error::other(e.to_string())))),
            }
        }
        failed
    }

    async fn list_blobs(&self) -> io::Result<Vec<StoredBlob>> {
        let blobs = self.root.join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            // The path goes with an error: "Not a directory" alone names no culprit.
            let read_dir =
                |dir: &Path| fs::read_dir(dir).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())));
            for alg in read_dir(&blobs)? {
                let alg = alg?;
                let alg_name = alg.file_name().to_string_lossy().into_owned();
                let Some(shards) = gone_is_none(read_dir(&alg.path()))? else { continue };
                for shard in shards {
                    let Some(files) = gone_is_none(read_dir(&shard?.path()))? else { continue };
                    for file in files {
                        let file = file?;
                        let Some(meta) = gone_is_none(file.metadata())? else { continue };
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

    /// A shard directory that a commit is filling meanwhile is not empty, or, emptied
    /// between its making and the rename, is made again by the commit (`commit_upload`).
    async fn prune_empty_dirs(&self) -> io::Result<usize> {
        let blobs = self.root.join("blobs");
        blocking(move || {
            let mut pruned = 0;
            for alg in fs::read_dir(&blobs)? {
                let alg = alg?.path();
                let Some(shards) = gone_is_none(fs::read_dir(&alg))? else { continue };
                for shard in shards {
                    pruned += usize::from(removed_if_empty(&shard?.path())?);
                }
                pruned += usize::from(removed_if_empty(&alg)?);
            }
            Ok(pruned)
        })
        .await
    }

    async fn list_uploads(&self) -> io::Result<Vec<super::StoredUpload>> {
        let uploads = self.root.join("uploads");
        blocking(move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(&uploads)? {
                let entry = entry?;
                let Some(meta) = gone_is_none(entry.metadata())? else { continue };
                let name = entry.file_name().to_string_lossy().into_owned();
                out.push(super::StoredUpload { name, size: meta.len(), modified: meta.modified()? });
            }
            Ok(out)
        })
        .await
    }

    async fn free_space(&self) -> io::Result<Option<super::space::DiskSpace>> {
        // statvfs can wait on a network file system: not on a runtime thread.
        let uploads = self.root.join("uploads");
        blocking(move || super::space::disk_space(&uploads).map(Some)).await
    }
}

/// `None` for an entry that went between the directory read and this call: a collection
/// unlinked a blob and pruned its directory, an upload was committed or cancelled. It
/// needs no reconcile, and is no reason to stop one; every other error still is.
fn gone_is_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, TryStreamExt};

    async fn collect(s: ByteStream) -> Vec<u8> {
        s.try_fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b);
            Ok(acc)
        })
        .await
        .unwrap()
    }

    /// A store that flushes, in a directory of its own.
    fn open_store() -> (tempfile::TempDir, FilesystemStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesystemStore::open(dir.path(), true).unwrap();
        (dir, store)
    }

    /// Appends `bytes` to an upload at `offset`, in frames of `frame` bytes as the network
    /// would deliver them, and returns the upload's size.
    async fn append(store: &FilesystemStore, id: &UploadId, offset: usize, bytes: &[u8], frame: usize) -> u64 {
        let mut w = store.upload_writer(id, offset as u64).await.unwrap();
        for f in bytes.chunks(frame) {
            w.write(Bytes::copy_from_slice(f)).await.unwrap();
        }
        w.finish().await.unwrap()
    }

    async fn store_blob(store: &FilesystemStore, content: &[u8]) -> Digest {
        let id = UploadId::random();
        store.create_upload(&id).await.unwrap();
        append(store, &id, 0, content, 1024).await;
        let digest = Digest::sha256_of(content);
        store.commit_upload(&id, &digest).await.unwrap();
        digest
    }

    /// A download or an upload whose client stops half-way holds no blocking thread: with a
    /// pool of one thread, another download and upload still complete beside them.
    #[test]
    fn a_stalled_transfer_holds_no_blocking_thread() {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(1).build().unwrap();
        // Caught, so that a failure ends the test instead of waiting for ever for the
        // blocking thread a stalled transfer holds.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                let (_dir, store) = open_store();
                let content: Vec<u8> = (0..8 * READ_CHUNK).map(|i| (i % 251) as u8).collect();
                let digest = store_blob(&store, &content).await;
                let path = store.blob_path(&digest);
                let len = content.len() as u64;
                let mut stalled_read = read_ahead(File::open(&path).unwrap(), 0, len).unwrap();
                stalled_read.next().await.unwrap().unwrap();
                let others = async {
                    let id = UploadId::random();
                    store.create_upload(&id).await.unwrap();
                    let mut stalled_write = store.upload_writer(&id, 0).await.unwrap();
                    stalled_write.write(Bytes::from(vec![1u8; 2 * WRITE_CHUNK])).await.unwrap();
                    assert!(collect(read_ahead(File::open(&path).unwrap(), 0, len).unwrap()).await == content);
                    let other = UploadId::random();
                    store.create_upload(&other).await.unwrap();
                    assert_eq!(append(&store, &other, 0, b"still served", 4).await, 12);
                    stalled_write
                };
                let stalled_write = tokio::time::timeout(std::time::Duration::from_secs(20), others)
                    .await
                    .expect("a stalled transfer held the only blocking thread");
                drop((stalled_read, stalled_write));
            })
        }));
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    #[tokio::test]
    async fn upload_commit_read_delete_leaves_nothing() {
        let (dir, store) = open_store();
        let id = UploadId::random();
        store.create_upload(&id).await.unwrap();
        assert_eq!(append(&store, &id, 0, b"hello world", 6).await, 11);
        // Truncating append: the second writer replaces everything after offset 6.
        assert_eq!(append(&store, &id, 6, b"there", 5).await, 11);
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

    /// A blob that cannot be unlinked (here a directory stands where its file should) is
    /// returned with its error; the others of the batch go all the same.
    #[tokio::test]
    async fn batch_delete_names_what_it_could_not_remove() {
        let (_dir, store) = open_store();
        let gone = store_blob(&store, b"goes").await;
        let stuck = Digest::sha256_of(b"a directory in its place");
        let path = store.blob_path(&stuck);
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        let failed = store.delete_blobs(&[stuck.clone(), gone.clone()]).await;
        assert_eq!(failed.iter().map(|(d, _)| d).collect::<Vec<_>>(), [&stuck]);
        assert!(!store.blob_path(&gone).exists());
    }

    #[tokio::test]
    async fn batch_delete_tolerates_missing_blobs() {
        let (dir, store) = open_store();
        let mut digests = vec![store_blob(&store, b"one").await, store_blob(&store, b"two").await];
        digests.push(Digest::sha256_of(b"never stored"));
        assert!(store.delete_blobs(&digests).await.is_empty());
        assert!(store.list_blobs().await.unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("blobs")).unwrap().count(), 0);
    }

    /// A directory on the disk the build uses: a memory filesystem such as a tmpfs `/tmp`
    /// cannot drop pages from the cache, and on older kernels refuses direct I/O.
    fn disk_dir() -> tempfile::TempDir {
        let parent = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        fs::create_dir_all(&parent).unwrap();
        tempfile::tempdir_in(parent).unwrap()
    }

    /// Whether `file` can be switched to direct I/O and back. Where it cannot, a test of the
    /// direct path tests nothing: CI must not pass that way, so there this fails; elsewhere
    /// it says what went untested.
    fn takes_direct_io(file: &File) -> bool {
        match set_direct(file, true).and_then(|()| set_direct(file, false)) {
            Ok(()) => true,
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must test direct writes, and this disk refuses them: {e}"
                );
                eprintln!("this disk refuses direct I/O ({e}): direct writes untested");
                false
            }
        }
    }

    #[tokio::test]
    async fn cached_direct_and_tail_writes_land_byte_for_byte() {
        let dir = disk_dir();
        // Without direct I/O the writer falls back to the cache, which this still checks.
        takes_direct_io(&File::create(dir.path().join("probe")).unwrap());
        let store = FilesystemStore::open(dir.path(), true).unwrap();
        let id = UploadId::random();
        store.create_upload(&id).await.unwrap();
        // Position-dependent bytes, so that a block written in the wrong place would show.
        let switch = DIRECT_FROM as usize;
        let content: Vec<u8> =
            (0..switch + 2 * WRITE_CHUNK + 5000).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect();
        // Through the cache, then direct from DIRECT_FROM on; frames of an odd size, so that
        // chunks fill across frame boundaries.
        let aligned = switch + WRITE_CHUNK + DIRECT_ALIGN;
        assert_eq!(append(&store, &id, 0, &content[..aligned], 100_003).await, aligned as u64);
        // From an aligned offset past DIRECT_FROM (direct at once), ending in a short tail.
        let unaligned = aligned + 100_003;
        assert_eq!(append(&store, &id, aligned, &content[aligned..unaligned], 65_536).await, unaligned as u64);
        // From an unaligned offset: through the cache throughout.
        let end = content.len();
        assert_eq!(append(&store, &id, unaligned, &content[unaligned..], 4096).await, end as u64);
        // The store trusts the caller's digest; naming the blob is all this one is for.
        let name = Digest::sha256_of(b"any name");
        store.commit_upload(&id, &name).await.unwrap();
        assert!(collect(store.read_blob(&name, 0, end as u64).await.unwrap()).await == content);
    }

    #[test]
    fn an_upload_goes_direct_past_the_threshold_and_its_short_tail_through_the_cache() {
        let dir = disk_dir();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.set_len(DIRECT_FROM).unwrap();
        if !takes_direct_io(&file) {
            return;
        }
        let mut file = file;
        file.seek(SeekFrom::Start(DIRECT_FROM)).unwrap();
        let mut sink = DiskSink { file, mode: WriteMode::CacheFirst, sync: true, written: DIRECT_FROM };
        let mut chunk = ChunkBuf::new();
        let block: Vec<u8> = (0..2 * DIRECT_ALIGN).map(|i| i as u8).collect();
        assert_eq!(chunk.fill(&block), block.len());
        sink.write(chunk.data()).unwrap();
        assert_eq!(sink.mode, WriteMode::Direct, "aligned blocks from an aligned buffer must go direct");
        sink.write(b"tail").unwrap();
        assert_eq!(sink.mode, WriteMode::Cache);
        assert_eq!(sink.finish().unwrap(), DIRECT_FROM + block.len() as u64 + 4);
        let on_disk = fs::read(&path).unwrap();
        assert_eq!(on_disk[DIRECT_FROM as usize..], [&block[..], b"tail"].concat());
    }

    /// A file of `len` patterned bytes, flushed and then dropped from the page cache. The
    /// kernel may keep a page the advice found busy (on a loaded machine, one still in a
    /// per-CPU list): the advice is repeated until no page of the file is resident.
    fn uncached_file(len: usize) -> (tempfile::TempDir, File, Vec<u8>) {
        let dir = disk_dir();
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("f");
        fs::write(&path, &content).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        for _ in 0..100 {
            // SAFETY: advice on a descriptor this function owns; no memory is passed.
            let advised =
                unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(advised, 0);
            if resident_pages(&file, len) == 0 {
                return (dir, file, content);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the kernel kept {} pages of the file in its cache", resident_pages(&file, len));
    }

    /// How many of the first `len` bytes' pages are in the page cache (mincore(2)).
    fn resident_pages(file: &File, len: usize) -> usize {
        let fd = std::os::fd::AsRawFd::as_raw_fd(file);
        // SAFETY: a private read-only mapping of `len` bytes of a file this test owns, read
        // by mincore into a vector of one byte per page, and unmapped before returning.
        unsafe {
            let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
            assert_ne!(map, libc::MAP_FAILED);
            let mut pages = vec![0u8; len.div_ceil(4096)];
            assert_eq!(libc::mincore(map, len, pages.as_mut_ptr()), 0);
            libc::munmap(map, len);
            pages.iter().filter(|p| **p & 1 == 1).count()
        }
    }

    #[test]
    fn only_bytes_in_the_page_cache_are_read_without_waiting() {
        let (_dir, file, content) = uncached_file(CACHED_CHUNK);
        assert!(read_cached(&file, 0, 4096).unwrap().is_none(), "dropped pages must not be read on the task");
        let mut plain = Vec::new();
        (&file).read_to_end(&mut plain).unwrap();
        assert_eq!(read_cached(&file, 5, 100).unwrap().unwrap(), content[5..105]);
        // Past the end there is nothing: the disk reader reports the short file.
        assert!(read_cached(&file, content.len() as u64, 10).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_read_moves_from_the_page_cache_to_the_disk_where_the_cache_ends() {
        // Long enough that the kernel's read-ahead after the first read cannot reach the end.
        let len = 64 * CACHED_CHUNK + 123;
        let (_dir, file, content) = uncached_file(len);
        // Only the start is cached: two whole chunks read here, so that the stream's first
        // chunk is there whether or not the kernel's read-ahead (asynchronous) has landed.
        let mut start = vec![0; 2 * CACHED_CHUNK];
        (&file).read_exact(&mut start).unwrap();
        let from_disk = read_cached(&file, (len - 4096) as u64, 4096).unwrap();
        assert!(from_disk.is_none(), "the end must still be on the disk only");
        let mut stream =
            FileStream { file: Some(file.try_clone().unwrap()), offset: 7, left: (len - 7) as u64, from_disk: None };
        let mut read = stream.next().await.unwrap().unwrap().to_vec();
        assert!(stream.from_disk.is_none(), "the cached start must be read on the task");
        while let Some(chunk) = stream.next().await {
            read.extend_from_slice(&chunk.unwrap());
        }
        assert!(read == content[7..]);
        assert!(stream.from_disk.is_some(), "the uncached end must come from the disk reader");
        // The disk reader left the rest in the cache: a second read finds all of it there.
        assert_eq!(read_cached(&file, 0, len).unwrap().map(|b| b.len()), Some(len));
        assert!(collect(stream_file(file, 0, len as u64)).await == content);
    }

    #[tokio::test]
    async fn stray_file_fails_the_listing() {
        let (dir, store) = open_store();
        fs::create_dir_all(dir.path().join("blobs/sha256/ab")).unwrap();
        fs::write(dir.path().join("blobs/sha256/ab/notadigest"), b"x").unwrap();
        assert!(store.list_blobs().await.is_err());
    }

    /// Two blobs of one shard, each committed and deleted over and over at once: each delete
    /// prunes the shard (and the algorithm's directory) the other commit is making or
    /// renaming into. Every commit must land. A stress test, as the windows are narrow: with
    /// the making of directories not retried, it failed in 4 of 4 runs here (EEXIST from a
    /// shard pruned between `mkdir` and its check).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_land_while_deletes_prune_their_shard() {
        // Without flushes: the race is about directories, and 10,000 flushed commits would
        // load the disk the other tests share.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FilesystemStore::open(dir.path(), false).unwrap());
        let worker = |n: u8| {
            let store = store.clone();
            tokio::spawn(async move {
                let digest: Digest = format!("sha256:ab{}", format!("{n:02x}").repeat(31)).parse().unwrap();
                for _ in 0..5000 {
                    let id = UploadId::random();
                    store.create_upload(&id).await.unwrap();
                    store.commit_upload(&id, &digest).await.expect("a commit failed beside a prune");
                    store.delete_blob(&digest).await.unwrap();
                }
            })
        };
        let (a, b) = (worker(1), worker(2));
        a.await.unwrap();
        b.await.unwrap();
    }
}
