//! Wakes sync waiters when something relevant to their user is committed.
//!
//! Each user who is waiting has a [`Notify`]. A waiter must *subscribe before it reads
//! storage* ([`Notifier::subscribe`] returns an already-enabled future): an event committed
//! between the read and the wait then still wakes it, so nothing is missed. Writers call
//! [`Notifier::notify`] after their transaction committed. Nothing polls the database.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

/// Per-user wake-ups. The std mutex guards only map lookups, never an await.
#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Notifier {
    /// The user's notify handle; the caller creates and enables a `notified()` future from it
    /// before reading storage.
    pub fn handle(&self, user_id: &str) -> Arc<Notify> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up first: every sync asks, and only the first one for a user needs the key.
        if let Some(notify) = users.get(user_id) {
            return notify.clone();
        }
        users.entry(user_id.to_owned()).or_default().clone()
    }

    /// Wakes every current waiter of these users.
    pub fn notify<'a>(&self, user_ids: impl IntoIterator<Item = &'a str>) {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for user in user_ids {
            if let Some(notify) = users.get(user) {
                notify.notify_waiters();
            }
        }
    }

    /// Forgets handles nobody holds, so the map does not grow with every user ever seen.
    pub fn prune(&self) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|_, notify| Arc::strong_count(notify) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_notification_after_subscribing_wakes_the_waiter() {
        let notifier = Notifier::default();
        let handle = notifier.handle("@a:x");
        let notified = handle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Committed "between the read and the wait".
        notifier.notify(["@a:x"]);
        tokio::time::timeout(Duration::from_secs(1), notified)
            .await
            .expect("woken");
    }

    #[tokio::test(start_paused = true)]
    async fn other_users_are_not_woken() {
        let notifier = Notifier::default();
        let handle = notifier.handle("@a:x");
        let notified = handle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        notifier.notify(["@b:x"]);
        assert!(tokio::time::timeout(Duration::from_secs(30), notified)
            .await
            .is_err());
    }
}
