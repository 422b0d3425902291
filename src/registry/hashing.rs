//! Hashing an upload's bytes beside their reception: a large body is hashed by a task of
//! its own, so that receiving a chunk and hashing the previous one can use two cores.
//!
//! Hashing is the most expensive step of a push (a core's worth for SHA-256 at about
//! 1.6 GiB/s), and on the task that reads the socket it would add the reception's cost to
//! it. A small body is hashed in place: a handoff would cost more than the hash.
//!
//! A runtime task, not a blocking-pool thread: a thread of that pool is held until its
//! task ends, so a hasher there would hold one for as long as its client takes to send the
//! upload, and a few hundred slow uploads would take every thread that file operations
//! need (an upload's disk writes hold a pool thread only while buffers wait to be
//! written). A batch keeps a worker busy for about half a millisecond, as hashing in place
//! did per frame.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Error, Result};
use crate::oci::Hasher;

/// Bytes gathered before they go to the hashing task, and the size from which a body gets
/// a task at all.
const BATCH_BYTES: usize = 1 << 20;
/// Batches queued for the hashing task: two keep it busy, and a slow hash pushes back on
/// the client instead of buffering its upload in memory (each batch is a megabyte per
/// concurrent upload).
const BATCHES_IN_FLIGHT: usize = 2;

pub(super) struct PipelinedHasher {
    /// Chunks received and not yet handed over.
    batch: Vec<Bytes>,
    batch_len: usize,
    state: State,
}

enum State {
    /// Still small: the hasher is here, and the batch will be hashed in place. (Boxed: a
    /// SHA-512 state is larger than the rest of the struct.)
    InPlace(Box<Hasher>),
    /// Hashing in its own task, which returns the hasher when the channel closes.
    Spawned { tx: mpsc::Sender<Vec<Bytes>>, done: tokio::task::JoinHandle<Hasher> },
}

impl State {
    fn spawn(mut hasher: Hasher) -> State {
        let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(BATCHES_IN_FLIGHT);
        let done = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                batch.iter().for_each(|chunk| hasher.update(chunk));
            }
            hasher
        });
        State::Spawned { tx, done }
    }
}

impl PipelinedHasher {
    pub(super) fn new(hasher: Hasher) -> PipelinedHasher {
        PipelinedHasher { batch: Vec::new(), batch_len: 0, state: State::InPlace(Box::new(hasher)) }
    }

    /// Adds `chunk` to the hash. It shares the chunk's bytes, so the caller can go on to
    /// write them.
    pub(super) async fn update(&mut self, chunk: Bytes) {
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len < BATCH_BYTES {
            return;
        }
        self.batch_len = 0;
        let batch = std::mem::take(&mut self.batch);
        if let State::InPlace(hasher) = &self.state {
            self.state = State::spawn((**hasher).clone());
        }
        if let State::Spawned { tx, .. } = &self.state {
            // The receiver only goes away if the hashing task panicked; `finish` says so.
            let _ = tx.send(batch).await;
        }
    }

    /// The hash of everything added.
    pub(super) async fn finish(self) -> Result<Hasher> {
        match self.state {
            State::InPlace(mut hasher) => {
                self.batch.iter().for_each(|chunk| hasher.update(chunk));
                Ok(*hasher)
            }
            State::Spawned { tx, done } => {
                if !self.batch.is_empty() {
                    let _ = tx.send(self.batch).await;
                }
                drop(tx);
                done.await.map_err(|e| Error::Internal(format!("hashing task failed: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, DigestAlgorithm};

    async fn hash_in_frames(bytes: &[u8], frame: usize) -> Digest {
        let mut hasher = PipelinedHasher::new(Hasher::new(DigestAlgorithm::Sha256));
        for f in bytes.chunks(frame) {
            hasher.update(Bytes::copy_from_slice(f)).await;
        }
        hasher.finish().await.unwrap().finish()
    }

    #[tokio::test]
    async fn small_and_large_bodies_hash_as_one_pass_does() {
        for len in [0, 5, BATCH_BYTES - 1, BATCH_BYTES, 5 * BATCH_BYTES + 12_345] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            assert_eq!(hash_in_frames(&bytes, 40_000).await, Digest::sha256_of(&bytes), "{len} bytes");
        }
    }
}
