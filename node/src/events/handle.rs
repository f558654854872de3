//! [`EventsHandle`]: the node's journal of events, shared by the loop that feeds it, the
//! operations that add what only this node sees (a build starting here), and the API's
//! readers, who follow it through a watch of the newest index rather than a broadcast
//! channel: a slow reader then costs nothing and learns exactly when it fell behind.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use parking_lot::Mutex;
use proto::events::{Change, Event, EventLine, Topic};
use tokio::sync::watch;

use crate::control::hlc::unix_ms;
use crate::events::journal::{Gone, Journal};

/// At most this many events per read of the journal: a reader far behind catches up in
/// pieces, without holding the lock long.
const READ_BATCH: usize = 256;

/// Which events a reader wants and may see.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub topic: Option<Topic>,
    pub app: Option<String>,
    /// `Some(t)`: a tenant's caller, who sees node events and the events of its own apps
    /// only. `None`: the administrator, who sees everything.
    pub tenant: Option<String>,
}

impl EventFilter {
    pub fn admits(&self, event: &Event) -> bool {
        if self.topic.is_some_and(|topic| topic != event.topic) {
            return false;
        }
        if let Some(app) = &self.app
            && event.change.app() != Some(app.as_str())
        {
            return false;
        }
        match &self.tenant {
            None => true,
            Some(tenant) => {
                event.topic == Topic::Node || event.tenant.as_deref() == Some(tenant.as_str())
            }
        }
    }
}

pub struct EventsHandle {
    journal: Mutex<Journal>,
    newest: watch::Sender<u64>,
}

pub type EventLines = Pin<Box<dyn Stream<Item = EventLine> + Send>>;

impl EventsHandle {
    pub fn new(capacity: usize) -> EventsHandle {
        EventsHandle {
            journal: Mutex::new(Journal::new(capacity)),
            newest: watch::Sender::new(0),
        }
    }

    /// Records changes this node just saw; `tenant_of` names an app's tenant.
    pub fn publish(&self, changes: Vec<Change>, tenant_of: impl Fn(&str) -> Option<String>) {
        if changes.is_empty() {
            return;
        }
        let newest = self.journal.lock().append(unix_ms(), changes, tenant_of);
        self.newest.send_replace(newest);
    }

    /// Readers following the stream now (each holds a receiver of the newest index).
    pub fn followers(&self) -> usize {
        self.newest.receiver_count()
    }

    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// The kept events after `since` (`None`: every kept one) that `filter` admits, oldest
    /// first, and the index read up to (events the filter dropped move it too).
    pub fn after(
        &self,
        since: Option<u64>,
        filter: &EventFilter,
    ) -> Result<(Vec<Event>, u64), Gone> {
        let mut out = Vec::new();
        let mut cursor = since.unwrap_or_else(|| self.journal.lock().before_oldest());
        loop {
            let batch = self.journal.lock().after(cursor, READ_BATCH)?;
            let Some(last) = batch.last() else {
                return Ok((out, cursor));
            };
            cursor = last.index;
            out.extend(batch.into_iter().filter(|event| filter.admits(event)));
        }
    }

    /// The index of the newest kept event about `app` (0: none kept).
    pub fn newest_about(&self, app: &str) -> u64 {
        let filter = EventFilter {
            app: Some(app.to_string()),
            ..EventFilter::default()
        };
        self.after(None, &filter)
            .ok()
            .and_then(|(events, _)| events.last().map(|event| event.index))
            .unwrap_or(0)
    }

    /// Waits until an event about `app` newer than `index` exists, or `wait` passes;
    /// returns the newest index about it. Consul's blocking query: an `index` this run
    /// of the node never gave out answers at once, so a reader whose node restarted
    /// resets instead of waiting.
    pub async fn wait_about(&self, app: &str, index: u64, wait: Duration) -> u64 {
        let mut newest = self.newest.subscribe();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            let about = self.newest_about(app);
            if index == 0 || about > index || index > *newest.borrow_and_update() {
                return about;
            }
            tokio::select! {
                changed = newest.changed() => if changed.is_err() { return about },
                () = &mut deadline => return about,
            }
        }
    }

    /// The events after `since` that `filter` admits, then, with `follow`, each new one
    /// as it is recorded, with a heartbeat after every `heartbeat` of silence. A reader
    /// that falls a whole journal behind gets [`EventLine::Gone`] and the stream ends.
    pub fn lines(
        self: &std::sync::Arc<Self>,
        since: Option<u64>,
        filter: EventFilter,
        follow: bool,
        heartbeat: Duration,
    ) -> Result<EventLines, Gone> {
        let (first, mut cursor) = self.after(since, &filter)?;
        let handle = self.clone();
        let mut newest = self.newest.subscribe();
        let stream = async_stream::stream! {
            for event in first {
                yield EventLine::Event(Box::new(event));
            }
            if !follow {
                return;
            }
            loop {
                let seen = *newest.borrow_and_update();
                if seen > cursor {
                    match handle.after(Some(cursor), &filter) {
                        Ok((events, read_to)) => {
                            cursor = read_to;
                            for event in events {
                                yield EventLine::Event(Box::new(event));
                            }
                        }
                        Err(gone) => {
                            yield EventLine::Gone { gone: gone.to_string() };
                            return;
                        }
                    }
                    continue;
                }
                tokio::select! {
                    changed = newest.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(heartbeat) => {
                        yield EventLine::Heartbeat { heartbeat: handle.newest() };
                    }
                }
            }
        };
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt as _;
    use proto::events::{Change, EventLine, Topic};

    use super::*;

    fn scaled(app: &str) -> Change {
        Change::Scaled {
            app: app.into(),
            from: 1,
            to: 2,
        }
    }

    fn joined() -> Change {
        Change::NodeJoined {
            node: "n2".into(),
            generation: 1,
        }
    }

    fn tenant_of(app: &str) -> Option<String> {
        (app == "acme-web").then(|| "acme".to_string())
    }

    fn kinds(lines: &[EventLine]) -> Vec<String> {
        lines
            .iter()
            .map(|line| match line {
                EventLine::Event(event) => format!("{} {}", event.index, event.change.kind()),
                EventLine::Heartbeat { heartbeat } => format!("heartbeat {heartbeat}"),
                EventLine::Gone { .. } => "gone".into(),
            })
            .collect()
    }

    #[test]
    fn a_tenant_sees_node_events_and_its_own_apps_only() {
        let events = EventsHandle::new(100);
        events.publish(
            vec![joined(), scaled("acme-web"), scaled("other")],
            tenant_of,
        );
        let acme = EventFilter {
            tenant: Some("acme".into()),
            ..EventFilter::default()
        };
        let (seen, read_to) = events.after(None, &acme).unwrap();
        let subjects: Vec<&str> = seen.iter().map(|e| e.subject.as_str()).collect();
        assert_eq!(subjects, ["n2", "acme-web"]);
        assert_eq!(read_to, 3, "what the filter dropped was read too");
        let admin = EventFilter::default();
        assert_eq!(events.after(None, &admin).unwrap().0.len(), 3);
        let apps_only = EventFilter {
            topic: Some(Topic::App),
            app: Some("other".into()),
            ..EventFilter::default()
        };
        assert_eq!(
            events.after(None, &apps_only).unwrap().0[0].subject,
            "other"
        );
        assert_eq!(events.newest_about("acme-web"), 2);
        assert_eq!(events.newest_about("nothing"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_gets_the_kept_events_then_new_ones_and_heartbeats() {
        let events = Arc::new(EventsHandle::new(100));
        events.publish(vec![joined()], tenant_of);
        let mut lines = events
            .lines(None, EventFilter::default(), true, Duration::from_secs(15))
            .unwrap();
        let first = lines.next().await.unwrap();
        events.publish(vec![scaled("web")], tenant_of);
        let second = lines.next().await.unwrap();
        // Nothing more: a heartbeat after 15 s of silence, with the newest index.
        let third = lines.next().await.unwrap();
        assert_eq!(
            kinds(&[first, second, third]),
            ["1 node.joined", "2 app.scaled", "heartbeat 2"]
        );
        let ended: Vec<EventLine> = events
            .lines(
                Some(1),
                EventFilter::default(),
                false,
                Duration::from_secs(15),
            )
            .unwrap()
            .collect()
            .await;
        assert_eq!(
            kinds(&ended),
            ["2 app.scaled"],
            "without follow the stream ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_that_falls_a_whole_buffer_behind_is_told_and_the_stream_ends() {
        let events = Arc::new(EventsHandle::new(3));
        let mut lines = events
            .lines(None, EventFilter::default(), true, Duration::from_secs(15))
            .unwrap();
        events.publish((0..5).map(|_| joined()).collect(), tenant_of);
        let rest: Vec<EventLine> = lines.by_ref().collect().await;
        assert_eq!(kinds(&rest), ["gone"]);
        assert!(
            events
                .lines(Some(1), EventFilter::default(), true, Duration::ZERO)
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocking_read_returns_when_its_app_changes_or_the_wait_ends() {
        let events = Arc::new(EventsHandle::new(100));
        events.publish(vec![scaled("web")], tenant_of);
        // Index 0, or one this run never gave out: at once.
        assert_eq!(
            events.wait_about("web", 0, Duration::from_secs(60)).await,
            1
        );
        assert_eq!(
            events.wait_about("web", 9, Duration::from_secs(60)).await,
            1
        );
        let waiting = {
            let events = events.clone();
            tokio::spawn(async move { events.wait_about("web", 1, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Another app's change does not end the wait; this app's does.
        events.publish(vec![scaled("other")], tenant_of);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        events.publish(vec![scaled("web")], tenant_of);
        assert_eq!(waiting.await.unwrap(), 3);
        let started = tokio::time::Instant::now();
        assert_eq!(
            events.wait_about("web", 3, Duration::from_secs(30)).await,
            3
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
