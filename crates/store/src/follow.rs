//! One follower of the store's change feed per node. It reads each changed record once, for
//! every part that asked for that kind, and hands typed changes to each: routing (hosts),
//! certificates (blobs, new wildcard hosts) and the API's live feeds (hosts, DNS providers,
//! domains, tokens). Lost events, from the store or from a subscriber that fell behind, reach
//! a subscriber as one [`Followed::Resync`]: re-read what it holds.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::{Change, Fields, Key, Kind, Store, readable};

/// Changes a subscriber may fall behind by before it is told to resync.
const BACKLOG: usize = 4096;

/// A change, as the follower hands it out.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Followed {
    /// A record of a kind some subscriber asked to have read was written or deleted: `now`
    /// is what it holds now (`None`: deleted, or unreadable, with a warning), read once.
    Record {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
        /// The record now.
        now: Option<Arc<Fields>>,
    },
    /// A record of a kind nobody asked to have read was written or deleted (not read).
    Touched {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
    },
    /// A blob was written or deleted.
    Blob {
        /// The blob's key.
        key: Key,
    },
    /// Changes were lost, or one could not be read: re-read everything.
    Resync,
}

/// A node's one follower of the store's changes.
#[derive(Debug)]
pub struct Follower {
    sender: broadcast::Sender<Followed>,
    /// The kinds subscribers asked to have read.
    read: Arc<Mutex<BTreeSet<Kind>>>,
}

impl Follower {
    /// Starts following `store` until `until` completes (or the store's feed ends).
    pub fn start(store: Arc<dyn Store>, until: impl Future<Output = ()> + Send + 'static) -> Arc<Self> {
        let follower = Arc::new(Self { sender: broadcast::channel(BACKLOG).0, read: Arc::default() });
        let changes = store.changes();
        let (sender, read) = (follower.sender.clone(), follower.read.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = until => {}
                () = follow(store, changes, sender, read) => {}
            }
        });
        follower
    }

    /// A subscription to every change from now on, with the records of `read` kinds read.
    pub fn subscribe(&self, read: &[Kind]) -> Subscription {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).extend(read.iter().copied());
        Subscription(self.sender.subscribe())
    }
}

/// One part's view of the changes.
#[derive(Debug)]
pub struct Subscription(broadcast::Receiver<Followed>);

impl Subscription {
    /// The next change; `None` once the follower has stopped. Changes this subscriber
    /// missed by falling behind come as one [`Followed::Resync`].
    pub async fn next(&mut self) -> Option<Followed> {
        match self.0.recv().await {
            Ok(change) => Some(change),
            Err(RecvError::Lagged(_)) => Some(Followed::Resync),
            Err(RecvError::Closed) => None,
        }
    }

    /// A change already waiting, if any (a subscriber that handles changes in batches takes
    /// what is queued with this).
    pub fn ready(&mut self) -> Option<Followed> {
        match self.0.try_recv() {
            Ok(change) => Some(change),
            Err(TryRecvError::Lagged(_)) => Some(Followed::Resync),
            Err(_) => None,
        }
    }
}

async fn follow(
    store: Arc<dyn Store>,
    mut changes: broadcast::Receiver<Change>,
    sender: broadcast::Sender<Followed>,
    read: Arc<Mutex<BTreeSet<Kind>>>,
) {
    loop {
        let followed = match changes.recv().await {
            Ok(Change::Record { kind, key }) => {
                if read.lock().unwrap_or_else(|e| e.into_inner()).contains(&kind) {
                    match readable(store.record(kind, &key).await) {
                        Ok(now) => Followed::Record { kind, key, now: now.map(Arc::new) },
                        Err(e) => {
                            tracing::warn!(kind = kind.name(), key, error = %e, "cannot read a changed record; everything will be re-read");
                            Followed::Resync
                        }
                    }
                } else {
                    Followed::Touched { kind, key }
                }
            }
            Ok(Change::Blob { key }) => Followed::Blob { key },
            Ok(Change::Resync) | Err(RecvError::Lagged(_)) => Followed::Resync,
            Err(RecvError::Closed) => return,
        };
        // No subscriber yet is not an error: nobody needed this change.
        let _ = sender.send(followed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_change_is_read_once_for_the_kinds_asked_and_lost_ones_are_a_resync() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::open(&format!("redb://{}", dir.path().join("s.redb").display())).await.unwrap();
        let follower = Follower::start(store.clone(), std::future::pending());
        let mut hosts = follower.subscribe(&[Kind::Host]);
        let fields: Fields = [("host".to_owned(), "a.test".to_owned())].into();
        store.create(Kind::Host, "a.test", &fields).await.unwrap();
        store.create(Kind::AuthToken, "t1", &fields).await.unwrap();
        store.delete(Kind::Host, "a.test").await.unwrap();
        let Some(Followed::Record { kind: Kind::Host, key, now: Some(now) }) = hosts.next().await else { panic!() };
        assert_eq!((key.as_str(), now.as_ref()), ("a.test", &fields));
        assert!(matches!(hosts.next().await, Some(Followed::Touched { kind: Kind::AuthToken, key }) if key == "t1"));
        assert!(matches!(hosts.next().await, Some(Followed::Record { now: None, .. })), "deleted");
        assert!(hosts.ready().is_none());
        // A subscriber that falls behind hears one resync, then what comes after.
        let mut slow = follower.subscribe(&[]);
        for i in 0..BACKLOG + 10 {
            store.put(Kind::AuthToken, &format!("t{i}"), &fields).await.unwrap();
        }
        let resync = async { while !matches!(slow.next().await, Some(Followed::Resync)) {} };
        tokio::time::timeout(std::time::Duration::from_secs(10), resync).await.expect("a resync");
    }
}
