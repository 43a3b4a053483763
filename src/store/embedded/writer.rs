//! The publish writer: one thread that stores publish requests in groups.
//!
//! Every sled transaction takes sled's global write lock, so many API threads each running
//! their own publish transaction mostly wait on that lock and on each other's retries. This
//! thread instead takes the first waiting request, every request that queued up behind it (up to
//! [`MAX_GROUP_EVENTS`] events), stores them all in one transaction and answers each one. Under
//! load the group grows by itself; a lone request is stored at once.

use tokio::sync::oneshot;

use crate::store::embedded::{PublishRequest, Published, StoreError, Trees};

/// Most events gathered into one group transaction. Every sled read (each delivery attempt
/// reads three records) waits while a transaction holds sled's global write lock, so groups
/// stay small enough to keep that wait short; a bigger batch request still goes alone, whole.
const MAX_GROUP_EVENTS: usize = 128;

type Reply = oneshot::Sender<Result<Vec<Published>, StoreError>>;

/// Handle to the writer thread. Dropping every handle stops the thread.
#[derive(Clone)]
pub struct PublishWriter {
    requests: crossbeam_channel::Sender<(PublishRequest, Reply)>,
}

impl PublishWriter {
    pub fn start(trees: Trees) -> std::io::Result<PublishWriter> {
        let (requests, incoming) = crossbeam_channel::unbounded::<(PublishRequest, Reply)>();
        std::thread::Builder::new().name("publish-writer".into()).spawn(move || {
            let beat = trees.health.register("publish-writer", std::time::Duration::from_secs(30));
            while let Ok(first) = incoming.recv() {
                beat.busy();
                let mut events = first.0.events.len();
                let mut group = vec![first];
                while events < MAX_GROUP_EVENTS {
                    let Ok(next) = incoming.try_recv() else { break };
                    events += next.0.events.len();
                    group.push(next);
                }
                let (requests, replies): (Vec<PublishRequest>, Vec<Reply>) = group.into_iter().unzip();
                for (reply, result) in replies.into_iter().zip(trees.publish_group(&requests)) {
                    // An idempotency conflict is the client's error, not the thread's.
                    if result
                        .as_ref()
                        .is_err_and(|err| !matches!(err, StoreError::IdempotencyConflict { .. }))
                    {
                        beat.error();
                    }
                    // A caller that went away (its request was cancelled) is fine to ignore.
                    let _ = reply.send(result.map_err(|err| trees.note(err)));
                }
                beat.idle();
            }
        })?;
        Ok(PublishWriter { requests })
    }

    /// Stores `request` with the group it lands in; resolves once it is written (not durable).
    pub async fn publish(&self, request: PublishRequest) -> Result<Vec<Published>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((request, reply)).map_err(|_| StoreError::Unavailable)?;
        answer.await.map_err(|_| StoreError::Unavailable)?
    }
}
