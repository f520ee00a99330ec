//! The frames hub: one broadcast channel per lecture that someone is following.
//!
//! The lecture actor (recording) and the pipeline (transcripts, grading) publish every frame of a
//! lecture here; observers and the learner's connection subscribe. Publishing never creates a
//! channel: with no subscriber a frame is simply not sent (it is in the log). The last subscriber
//! to go removes the channel.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::protocol::ServerMessage;

/// Frames a slow subscriber may fall behind before it is told it lagged.
const CAPACITY: usize = 1024;

/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    channels: Arc<DashMap<Uuid, broadcast::Sender<Arc<ServerMessage>>>>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Sends a frame to the lecture's subscribers, if any.
    pub fn publish(&self, lecture: Uuid, frame: Arc<ServerMessage>) {
        if let Some(tx) = self.channels.get(&lecture) {
            let _ = tx.send(frame);
        }
    }

    /// Follows a lecture's frames from now on (subscribe *before* reading the log).
    pub fn subscribe(&self, lecture: Uuid) -> Subscription {
        let rx = self
            .channels
            .entry(lecture)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Subscription {
            hub: self.clone(),
            lecture,
            rx: Some(rx),
        }
    }

    /// Lectures with a channel (someone following them).
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

/// A lecture's frames; dropping it unsubscribes.
pub struct Subscription {
    hub: Hub,
    lecture: Uuid,
    rx: Option<broadcast::Receiver<Arc<ServerMessage>>>,
}

impl Subscription {
    pub fn lecture(&self) -> Uuid {
        self.lecture
    }

    pub async fn recv(&mut self) -> Result<Arc<ServerMessage>, broadcast::error::RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let rx = self.rx.take();
        // Holding the entry's lock: a concurrent subscribe either came before (and keeps the
        // channel alive) or comes after and makes a new one.
        self.hub
            .channels
            .remove_if(&self.lecture, |_, tx| tx.receiver_count() <= 1);
        drop(rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_reach_subscribers_and_the_last_one_out_removes_the_channel() {
        let hub = Hub::new();
        let id = Uuid::now_v7();
        hub.publish(id, Arc::new(ServerMessage::Pong { nonce: None }));
        assert!(hub.is_empty(), "publishing creates no channel");
        let mut a = hub.subscribe(id);
        let b = hub.subscribe(id);
        hub.publish(id, Arc::new(ServerMessage::Pong { nonce: None }));
        assert!(matches!(
            *a.recv().await.unwrap(),
            ServerMessage::Pong { .. }
        ));
        drop(b);
        assert_eq!(hub.len(), 1);
        drop(a);
        assert!(hub.is_empty());
    }
}
