//! The node's recent events, pure: a bounded buffer numbered from 1. A reader resumes after
//! the index it last saw, and is told plainly when that index has left the buffer or was
//! never given out by this run of the node (it restarted).

use std::collections::VecDeque;

use proto::events::{Change, Event};

/// How many events a node keeps for readers that resume.
pub const KEPT_EVENTS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gone {
    #[error(
        "event {asked} is no longer kept on this node (it keeps {kept} events, the oldest is \
         {oldest}): read the current state, then follow from since={newest}"
    )]
    Dropped {
        asked: u64,
        oldest: u64,
        newest: u64,
        kept: usize,
    },
    #[error(
        "event {asked} was never given out by this node, whose newest is {newest}: it \
         restarted since; read the current state, then follow from since={newest}"
    )]
    Unknown { asked: u64, newest: u64 },
}

#[derive(Debug)]
pub struct Journal {
    events: VecDeque<Event>,
    capacity: usize,
    /// The index of the newest event, 0 before the first.
    newest: u64,
}

impl Journal {
    pub fn new(capacity: usize) -> Journal {
        Journal {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            newest: 0,
        }
    }

    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// Numbers and keeps `changes`, seen at `now_ms`; `tenant_of` names the tenant of an
    /// app. Returns the index of the newest.
    pub fn append(
        &mut self,
        now_ms: u64,
        changes: Vec<Change>,
        tenant_of: impl Fn(&str) -> Option<String>,
    ) -> u64 {
        for change in changes {
            self.newest += 1;
            let event = Event {
                index: self.newest,
                at_ms: now_ms,
                topic: change.topic(),
                subject: change.subject(),
                tenant: change.app().and_then(&tenant_of),
                change,
            };
            if self.events.len() == self.capacity {
                self.events.pop_front();
            }
            self.events.push_back(event);
        }
        self.newest
    }

    /// The index just before the oldest kept event: reading after it reads all kept.
    pub fn before_oldest(&self) -> u64 {
        self.events
            .front()
            .map_or(self.newest, |event| event.index - 1)
    }

    /// The kept events after `since`, oldest first; at most `limit`. Gone when an event
    /// after `since` is no longer kept, so a reader never skips one unknowingly.
    pub fn after(&self, since: u64, limit: usize) -> Result<Vec<Event>, Gone> {
        if since > self.newest {
            return Err(Gone::Unknown {
                asked: since,
                newest: self.newest,
            });
        }
        let oldest = self.events.front().map_or(self.newest + 1, |e| e.index);
        // `since` itself may have left: only the events after it must still be here.
        if since + 1 < oldest {
            return Err(Gone::Dropped {
                asked: since,
                oldest,
                newest: self.newest,
                kept: self.capacity,
            });
        }
        let skip = usize::try_from((since + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        Ok(self.events.iter().skip(skip).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(to: u32) -> Change {
        Change::Scaled {
            app: "web".into(),
            from: 1,
            to,
        }
    }

    #[test]
    fn a_reader_resumes_after_the_index_it_saw() {
        let mut journal = Journal::new(10);
        assert_eq!(journal.after(0, 100), Ok(vec![]));
        assert_eq!(journal.append(5, vec![scaled(2), scaled(3)], |_| None), 2);
        assert_eq!(
            journal.append(6, vec![scaled(4)], |_| Some("acme".into())),
            3
        );
        let all = journal.after(0, 100).unwrap();
        assert_eq!(all.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[2].tenant.as_deref(), Some("acme"));
        assert_eq!(all[2].subject, "web");
        let rest = journal.after(2, 100).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].change, scaled(4));
        assert_eq!(journal.after(3, 100), Ok(vec![]));
        assert_eq!(journal.after(0, 2).unwrap().len(), 2, "the limit holds");
    }

    #[test]
    fn an_index_that_left_the_buffer_or_was_never_given_is_gone() {
        let mut journal = Journal::new(3);
        journal.append(1, (0..5).map(scaled).collect(), |_| None);
        // Kept: 3, 4, 5. After 2 is still whole; after 1 lost event 2.
        assert_eq!(journal.after(2, 10).unwrap().len(), 3);
        let err = journal.after(1, 10).unwrap_err();
        assert_eq!(
            err,
            Gone::Dropped {
                asked: 1,
                oldest: 3,
                newest: 5,
                kept: 3
            }
        );
        assert!(err.to_string().contains("since=5"), "{err}");
        assert_eq!(
            journal.after(9, 10),
            Err(Gone::Unknown {
                asked: 9,
                newest: 5
            })
        );
        // Reading all that is kept starts after the oldest's predecessor.
        assert_eq!(journal.before_oldest(), 2);
        assert!(journal.after(0, 10).is_err(), "events 1 and 2 are gone");
        assert_eq!(journal.after(2, 10).unwrap()[0].index, 3);
    }
}
