//! Blob upload sessions: start, append chunks, finish with digest verification, cancel.
//!
//! The running hash of each session is kept in memory so that a chunked upload is hashed
//! once, as its bytes arrive. It is only an accelerator: the session's truth is its
//! metadata row (repository, size) plus the staged bytes, and when the hash state is
//! missing (after a restart) it is rebuilt from the staged bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::hashing::PipelinedHasher;
use super::{Error, Registry, Result, quota};
use crate::failpoints::{UPLOAD_BEFORE_FLUSH, UPLOAD_COMMITTED_BEFORE_ROW, UPLOAD_FILE_BEFORE_ROW};
use crate::metadata::{blobs, now_ms, repositories, uploads};
use crate::metrics::Metrics;
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepoName, UploadId};
use crate::throttle::Throttle;

#[derive(Debug, Clone)]
pub struct UploadStatus {
    pub id: UploadId,
    pub size: u64,
}

/// The in-memory state of one session: the hash of its first `size` bytes.
#[derive(Clone)]
struct HashState {
    size: u64,
    hasher: Hasher,
}

/// One session's lock, and the signal that its client cancelled it.
#[derive(Clone, Default)]
struct SessionSlot {
    state: Arc<tokio::sync::Mutex<Option<HashState>>>,
    /// Fired by a cancel to stop the request holding the lock; each request takes it when
    /// it gets the lock, a fresh one if it has fired (a cancel whose client went away, or
    /// that failed, must not stop the session's later requests).
    cancelled: Arc<Mutex<CancellationToken>>,
}

/// A session's lock, held by one request; derefs to the session's hash state.
struct SessionGuard {
    state: tokio::sync::OwnedMutexGuard<Option<HashState>>,
    /// Fires when the client cancels the session (DELETE) while this request holds it.
    cancelled: CancellationToken,
}

impl SessionGuard {
    /// The guard of `slot`, whose lock is `state`, with the slot's cancel signal (a fresh
    /// one if it has fired).
    fn new(slot: &SessionSlot, state: tokio::sync::OwnedMutexGuard<Option<HashState>>) -> SessionGuard {
        let mut signal = slot.cancelled.lock().expect("session signal poisoned");
        if signal.is_cancelled() {
            *signal = CancellationToken::new();
        }
        SessionGuard { state, cancelled: signal.clone() }
    }
}

impl std::ops::Deref for SessionGuard {
    type Target = Option<HashState>;
    fn deref(&self) -> &Option<HashState> {
        &self.state
    }
}

impl std::ops::DerefMut for SessionGuard {
    fn deref_mut(&mut self) -> &mut Option<HashState> {
        &mut self.state
    }
}

/// A session's lock, held by collection while it removes the session ([`Sessions::claim`]).
pub(crate) struct Claim {
    _lock: tokio::sync::OwnedMutexGuard<Option<HashState>>,
}

/// Per-session locks (one request at a time per upload) holding the hash state.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<UploadId, SessionSlot>>);

impl Sessions {
    fn slot(&self, id: &UploadId) -> SessionSlot {
        self.0.lock().expect("sessions poisoned").entry(id.clone()).or_default().clone()
    }

    pub(crate) fn forget(&self, id: &UploadId) {
        self.0.lock().expect("sessions poisoned").remove(id);
    }

    /// Whether a request is using the session right now (a collection would leave it).
    pub(crate) fn in_use(&self, id: &UploadId) -> bool {
        self.0.lock().expect("sessions poisoned").get(id).is_some_and(|slot| slot.state.try_lock().is_err())
    }

    /// Stops the request that holds the session, if one does (a chunk still being sent):
    /// its client cancelled the session, and the cancel need not wait for the chunk's end.
    fn cancel_in_flight(&self, id: &UploadId) {
        if let Some(slot) = self.0.lock().expect("sessions poisoned").get(id) {
            slot.cancelled.lock().expect("session signal poisoned").cancel();
        }
    }

    /// The session's lock, for one request. One that must wait says so (at debug): a
    /// client's second request on the same session, or a collection removing it, holds it.
    async fn lock(&self, id: &UploadId) -> SessionGuard {
        match self.try_lock(id) {
            Some(guard) => guard,
            None => {
                tracing::debug!(upload = %id, "waiting for the upload session, which another request or a collection holds");
                let slot = self.slot(id);
                let state = slot.state.clone().lock_owned().await;
                SessionGuard::new(&slot, state)
            }
        }
    }

    /// The session's lock, if no one holds it.
    fn try_lock(&self, id: &UploadId) -> Option<SessionGuard> {
        let slot = self.slot(id);
        let state = slot.state.clone().try_lock_owned().ok()?;
        Some(SessionGuard::new(&slot, state))
    }

    /// The session's lock, unless a request holds it. Collection removes a session only
    /// while holding it, so a request that arrives meanwhile waits, then finds the session
    /// gone (404) instead of writing to a file being deleted.
    pub(crate) fn claim(&self, id: &UploadId) -> Option<Claim> {
        self.slot(id).state.try_lock_owned().ok().map(|lock| Claim { _lock: lock })
    }
}

/// A byte range the client declared with `Content-Range` for a chunk (inclusive).
#[derive(Debug, Clone, Copy)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

impl Registry {
    pub async fn start_upload(&self, name: &RepoName) -> Result<UploadStatus> {
        self.check_room_to_add()?;
        self.check_room_for_uploads().await?;
        let id = UploadId::random();
        // The file comes before the row (a crash between leaves a file reconcile removes,
        // never a session without its file), and the session's lock is held across both:
        // reconcile removes a file without a row only once it can take that lock.
        let _opening = self.sessions.lock(&id).await;
        self.store.create_upload(&id).await?;
        self.failpoints.hit(UPLOAD_FILE_BEFORE_ROW).await;
        let (i, n) = (id.clone(), name.clone());
        self.meta.write(move |c| uploads::create(c, &i, &n, now_ms()).map_err(Error::from)).await?;
        Ok(UploadStatus { id, size: 0 })
    }

    /// Refuses a new session while the store's free space is under `min_free_space`
    /// (`storage/space.rs` says why). A store that cannot tell its free space is not held
    /// up by that: the disk's own "full" still answers 507.
    async fn check_room_for_uploads(&self) -> Result<()> {
        let floor = self.options.min_free_space;
        if floor.is_off() {
            return Ok(());
        }
        let space = match self.store.free_space().await {
            Ok(Some(space)) => space,
            Ok(None) => return Ok(()),
            Err(e) => {
                static FAILED: Throttle = Throttle::new();
                if let Some(skipped) = FAILED.due() {
                    tracing::warn!(error = %e, skipped, "reading the storage's free space failed; uploads are let through");
                }
                return Ok(());
            }
        };
        let floor = floor.bytes(space.size);
        if space.available < floor {
            Metrics::add(&self.metrics.uploads_refused_low_space, 1);
            return Err(Error::LowSpace { available: space.available, floor });
        }
        Ok(())
    }

    /// Refuses linking a blob of `size` bytes into `name` if a quota would be exceeded (a
    /// blob the quota's group holds already counts nothing). Also asked before the body of a
    /// monolithic upload is read: a client is not made to send a layer for nothing.
    pub async fn check_quota(&self, name: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        let (policies, n, d) = (self.policies(), name.clone(), digest.clone());
        // Without a quota on the repository, no trip to the database (most registries).
        if policies.quotas_for(name.as_str()).is_empty() {
            return Ok(());
        }
        self.meta.read(move |c| Ok(quota::check(c, &policies, &n, &d, size))).await?
    }

    async fn session_size(&self, name: &RepoName, id: &UploadId) -> Result<u64> {
        let i = id.clone();
        let row = self.meta.read(move |c| uploads::get(c, &i)).await?;
        match row {
            Some(row) if row.repository == name.as_str() => Ok(row.size),
            _ => Err(Error::UploadUnknown),
        }
    }

    pub async fn upload_status(&self, name: &RepoName, id: &UploadId) -> Result<UploadStatus> {
        let size = self.session_size(name, id).await?;
        if !self.staged_holds(id, size).await? {
            // Lost, or being finished right now: under the lock, the session is either
            // ended here or found finished.
            let mut guard = self.sessions.lock(id).await;
            self.usable_session(name, id, &mut guard).await?;
        }
        Ok(UploadStatus { id: id.clone(), size })
    }

    /// Whether the session's staged file holds the `size` bytes its record says it has (a
    /// longer one is a chunk cut off before it was recorded, which the next one overwrites).
    async fn staged_holds(&self, id: &UploadId, size: u64) -> Result<bool> {
        match self.store.upload_size(id).await {
            Ok(staged) => Ok(staged >= size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The lock of `name`'s session `id`; the caller checks the session under it
    /// (`usable_session`). Only before waiting for a held lock is the session checked first:
    /// no session of this repository is answered at once, not after a slow chunk of the
    /// session's own repository lets go.
    async fn lock_session(&self, name: &RepoName, id: &UploadId) -> Result<SessionGuard> {
        if let Some(guard) = self.sessions.try_lock(id) {
            return Ok(guard);
        }
        self.session_size(name, id).await?;
        Ok(self.sessions.lock(id).await)
    }

    /// Whether `name` may go on with the session whose lock the caller holds (as `guard`):
    /// it is `name`'s, and its staged bytes are there (else it ends, as unknown). Returns
    /// the bytes it holds.
    async fn usable_session(&self, name: &RepoName, id: &UploadId, guard: &mut Option<HashState>) -> Result<u64> {
        let size = self.forget_if_unknown(id, self.session_size(name, id).await).await?;
        self.end_if_staged_lost(id, size, guard).await?;
        Ok(size)
    }

    /// Ends a session (lock held, as `guard`) whose staged bytes are gone or fewer than its
    /// recorded `size`, answering it as unknown, so that the client starts its upload again.
    /// A crash between an upload's commit (the staged file renamed into the blob's place)
    /// and its record leaves such a session, and so can a power loss without `sync_writes`
    /// (the record survived, the last bytes did not); every step of it would fail otherwise,
    /// until its age removed it.
    async fn end_if_staged_lost(&self, id: &UploadId, size: u64, guard: &mut Option<HashState>) -> Result<()> {
        // A session this process wrote to has its staged file (a cached hash state).
        if guard.is_some() || self.staged_holds(id, size).await? {
            return Ok(());
        }
        tracing::warn!(upload = %id, recorded = size, "an upload session's staged bytes are gone or short (a crash while it was being finished, or a power loss): the session ends, and its client starts again");
        *guard = None;
        self.cancel_locked(id).await?;
        Err(Error::UploadUnknown)
    }

    /// The hash state of a session's `size` bytes, rebuilt from storage if not in memory.
    async fn hash_state(&self, id: &UploadId, cached: &Option<HashState>, size: u64) -> Result<HashState> {
        if let Some(state) = cached
            && state.size == size
        {
            return Ok(state.clone());
        }
        Ok(HashState { size, hasher: self.rehash(id, size, DigestAlgorithm::Sha256).await? })
    }

    /// Hashes the first `size` staged bytes of a session.
    async fn rehash(&self, id: &UploadId, size: u64, algorithm: DigestAlgorithm) -> Result<Hasher> {
        let mut hasher = Hasher::new(algorithm);
        let mut bytes = self.store.read_upload(id, size).await?;
        while let Some(chunk) = bytes.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(hasher)
    }

    /// Appends `body` to the session. A chunk that does not start where the upload ends is
    /// refused before anything is written; a chunk that fails half-way is rolled back, so
    /// the session is exactly as before the request.
    pub async fn append_upload<S, E>(
        &self,
        name: &RepoName,
        id: &UploadId,
        range: Option<ChunkRange>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::error::Error + 'static,
    {
        let mut guard = self.lock_session(name, id).await?;
        let size = self.usable_session(name, id, &mut guard).await?;
        let (state, received) = self.append_locked(id, &guard, size, range, body).await?;
        let (i, new_size) = (id.clone(), state.size);
        self.meta.write(move |c| uploads::set_size(c, &i, new_size, now_ms()).map_err(Error::from)).await?;
        // Counted once the step is the session's: a chunk rolled back, or lost with a
        // failed write of the new size, counts nothing.
        Metrics::add(&self.metrics.upload_bytes_received, received);
        *guard = Some(state);
        Ok(UploadStatus { id: id.clone(), size: new_size })
    }

    /// Appends to a session whose lock the caller holds (`session`, with its hash state;
    /// `size` the bytes it holds); returns the new state and how many bytes this step
    /// added. A cancel of the session stops it (rolled back, as unknown).
    async fn append_locked<S, E>(
        &self,
        id: &UploadId,
        session: &SessionGuard,
        size: u64,
        range: Option<ChunkRange>,
        mut body: S,
    ) -> Result<(HashState, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::error::Error + 'static,
    {
        let state = self.hash_state(id, session, size).await?;
        if let Some(r) = range {
            if r.start != state.size {
                return Err(Error::ChunkOutOfOrder { got: r.start, have: state.size });
            }
            if r.end < r.start {
                return Err(Error::UploadInvalid(format!("Content-Range {}-{} ends before it starts", r.start, r.end)));
            }
        }
        let mut hasher = PipelinedHasher::new(state.hasher.clone());
        let mut size = state.size;
        let mut writer = self.store.upload_writer(id, state.size).await?;
        let outcome: Result<()> = async {
            loop {
                let chunk = tokio::select! {
                    biased;
                    () = session.cancelled.cancelled() => return Err(Error::UploadUnknown),
                    chunk = body.next() => chunk,
                };
                let Some(chunk) = chunk else { break };
                let chunk = chunk.map_err(|e| Error::body(&e))?;
                size += chunk.len() as u64;
                hasher.update(chunk.clone()).await;
                writer.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        self.failpoints.hit(UPLOAD_BEFORE_FLUSH).await;
        let flushed = writer.finish().await;
        let hashed = hasher.finish().await;
        let outcome = outcome
            .and_then(|()| {
                let written = flushed?;
                debug_assert_eq!(written, size);
                // In u128: a range ending at u64::MAX announces 2^64 bytes.
                let announced = |r: ChunkRange| u128::from(r.end - r.start) + 1;
                match range {
                    Some(r) if announced(r) != u128::from(size - state.size) => Err(Error::UploadInvalid(format!(
                        "Content-Range {}-{} announces {} bytes, the body had {}",
                        r.start,
                        r.end,
                        announced(r),
                        size - state.size
                    ))),
                    _ => Ok(()),
                }
            })
            .and(hashed);
        match outcome {
            Ok(hasher) => Ok((HashState { size, hasher }, size - state.size)),
            Err(e) => {
                // Roll back: a fresh writer at the old size truncates whatever got written.
                self.store.upload_writer(id, state.size).await?.finish().await?;
                Err(e)
            }
        }
    }

    /// Appends the final `body` and completes the upload as `digest`, verifying it. On a
    /// digest mismatch the session is cancelled: nothing is stored.
    pub async fn finish_upload<S, E>(
        &self,
        name: &RepoName,
        id: &UploadId,
        digest: &Digest,
        range: Option<ChunkRange>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::error::Error + 'static,
    {
        let mut guard = self.lock_session(name, id).await?;
        let size = self.usable_session(name, id, &mut guard).await?;
        let (state, received) = self.append_locked(id, &guard, size, range, body).await?;
        let actual = match digest.algorithm() {
            DigestAlgorithm::Sha256 => state.hasher.clone().finish(),
            other => self.rehash(id, state.size, other).await?.finish(),
        };
        if actual != *digest {
            *guard = None;
            self.cancel_locked(id).await?;
            return Err(Error::DigestMismatch { expected: digest.clone(), actual });
        }
        // The digest lock orders this commit against a collector removing the same digest:
        // either the collector finished first and these bytes land after, or this commit
        // records the blob again and the collector sees that and keeps its bytes.
        let _digest_guard = self.digest_locks.lock(digest).await;
        let size = state.size;
        // A quota refusal stores nothing: checked before the bytes are committed, and again
        // in the linking transaction (where a refusal removes bytes nobody else knows).
        // Only a refusal ends the session; a failed read leaves it to be finished again.
        match self.check_quota(name, digest, size).await {
            Err(e @ Error::Denied(_)) => {
                *guard = None;
                self.cancel_locked(id).await?;
                return Err(e);
            }
            other => other?,
        }
        if let Err(e) = self.store.commit_upload(id, digest).await {
            // The staged file may be gone already (renamed before a later step failed): the
            // session could never be finished, so it ends here, and bytes that reached the
            // blob's place unrecorded are reconcile's.
            *guard = None;
            self.cancel_locked(id).await?;
            return Err(e.into());
        }
        self.failpoints.hit(UPLOAD_COMMITTED_BEFORE_ROW).await;
        let (n, i, d, policies) = (name.clone(), id.clone(), digest.clone(), self.policies());
        let linked = self
            .meta
            .write(move |c| {
                let now = now_ms();
                let repo = repositories::ensure(c, &n, now)?;
                quota::check(c, &policies, &n, &d, size)?;
                blobs::insert_or_touch(c, &d, size, now)?;
                quota::link(c, &policies, &n, repo, &d, now)?;
                uploads::delete(c, &i)?;
                Ok::<_, Error>(())
            })
            .await;
        if let Err(e) = linked {
            // A collection may have just removed the blob's row without flushing: the
            // removal seen is made durable (the flush after the read) before the bytes go on
            // the strength of it, or a power loss could bring the row back without them.
            let cleaned = async {
                let d = digest.clone();
                if !self.meta.read(move |c| crate::metadata::gc::blob_known(c, &d.to_string())).await? {
                    self.meta.flush().await?;
                    self.store.delete_blob(digest).await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            // The staged file was renamed away: whatever the clean-up did, the session ends
            // (a failed clean-up leaves bytes for reconcile, never a session nobody can use).
            *guard = None;
            self.cancel_locked(id).await?;
            cleaned?;
            return Err(e);
        }
        *guard = None;
        self.sessions.forget(id);
        Metrics::add(&self.metrics.upload_bytes_received, received);
        Ok(size)
    }

    /// Cancels an upload session and removes its staged bytes.
    pub async fn cancel_upload(&self, name: &RepoName, id: &UploadId) -> Result<()> {
        // Checked first, as by `lock_session`: only the session's own repository stops a
        // chunk still coming (a slow client's), which is not waited for.
        self.session_size(name, id).await?;
        self.sessions.cancel_in_flight(id);
        let mut guard = self.sessions.lock(id).await;
        let known = self.session_size(name, id).await;
        self.forget_if_unknown(id, known).await?;
        *guard = None;
        self.cancel_locked(id).await
    }

    /// Passes `result` on; if it says the session is unknown and no session has that id at
    /// all, drops the lock slot the request made for it. Any client can name any id, and
    /// each would otherwise leave an entry behind. (A session of another repository keeps
    /// its slot: a request of its own may hold that lock.)
    async fn forget_if_unknown<T>(&self, id: &UploadId, result: Result<T>) -> Result<T> {
        if matches!(result, Err(Error::UploadUnknown)) {
            let i = id.clone();
            if self.meta.read(move |c| uploads::get(c, &i)).await?.is_none() {
                self.sessions.forget(id);
            }
        }
        result
    }

    async fn cancel_locked(&self, id: &UploadId) -> Result<()> {
        let i = id.clone();
        self.meta.write(move |c| uploads::delete(c, &i).map_err(Error::from)).await?;
        self.sessions.forget(id);
        match self.store.delete_upload(id).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    /// Requests naming upload ids that do not exist (any client can) leave no lock slots
    /// behind, whichever step they try; a session of another repository keeps its slot.
    #[tokio::test]
    async fn unknown_sessions_leave_no_slots() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config { data_dir: dir.path().to_owned(), ..Default::default() };
        let opened = crate::server::open(&config, crate::metadata::SchemaChange::Allowed).await.unwrap();
        let registry = &opened.state.registry;
        let (name, other): (RepoName, RepoName) = ("r".parse().unwrap(), "s".parse().unwrap());
        let body = || stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"bytes"))]);
        let digest = Digest::sha256_of(b"bytes");
        for _ in 0..10 {
            let id = UploadId::random();
            assert!(matches!(registry.append_upload(&name, &id, None, body()).await, Err(Error::UploadUnknown)));
            assert!(matches!(
                registry.finish_upload(&name, &id, &digest, None, body()).await,
                Err(Error::UploadUnknown)
            ));
            assert!(matches!(registry.cancel_upload(&name, &id).await, Err(Error::UploadUnknown)));
        }
        let slots = || registry.sessions().0.lock().unwrap().len();
        assert_eq!(slots(), 0);
        let session = registry.start_upload(&other).await.unwrap();
        registry.append_upload(&other, &session.id, None, body()).await.unwrap();
        assert!(matches!(registry.append_upload(&name, &session.id, None, body()).await, Err(Error::UploadUnknown)));
        assert_eq!(slots(), 1, "the other repository's session keeps its slot");
    }
}
