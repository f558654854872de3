//! The cluster's events, as this node sees them: derived from its own gossip view and
//! catalog (never asked of another node), numbered and kept for readers that resume.
//!
//! - [`derive`]: what this node has seen, and the events between two sights (pure);
//! - [`journal`]: the bounded, numbered buffer readers resume from (pure);
//! - [`handle`]: [`EventsHandle`], the journal shared with the API and its followers;
//! - [`feed`]: the loop that watches the view and the catalog and feeds the journal.

pub mod derive;
pub mod feed;
pub mod handle;
pub mod journal;

pub use handle::{EventFilter, EventsHandle};
pub use journal::{Gone, KEPT_EVENTS};
