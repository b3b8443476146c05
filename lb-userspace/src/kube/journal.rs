//! [`Journal`]: what the watches saw change since the controller last looked, so that a
//! change to some EndpointSlices re-translates only their Services, and anything else (a
//! Service, a Node, an IPPool, a BGP object, a re-list, a watch error) still makes a full
//! sync.
//!
//! The reflector writes an event into its store before the watch stream yields it, and the
//! event is recorded here after that. A sync takes the journal before it reads the stores,
//! so every change it does not see is recorded for the next one: none is lost, and one seen
//! early is simply applied twice (the second time an empty diff).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;

use super::translate::SERVICE_NAME_LABEL;

/// (namespace, name).
type Key = (String, String);

/// The changes since the controller last took the journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Journal {
    /// Something other than an EndpointSlice changed, or a watch re-listed or failed.
    pub full: bool,
    /// The Services whose EndpointSlices changed.
    pub services: BTreeSet<Key>,
}

/// The journal, shared by the watch tasks and the controller.
#[derive(Debug, Clone, Default)]
pub struct SharedJournal(Arc<Mutex<Journal>>);

impl SharedJournal {
    /// Everything recorded so far; the journal starts again empty.
    pub fn take(&self) -> Journal {
        std::mem::take(&mut *self.lock())
    }

    /// Whether what is recorded so far needs a full sync.
    pub fn wants_full(&self) -> bool {
        self.lock().full
    }

    /// A change that needs a full sync.
    pub fn mark_full(&self) {
        self.lock().full = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The EndpointSlice watch's side of the journal: the Service of each changed slice. It
/// remembers each slice's Service, so a slice relabelled to another Service names both
/// (the old one loses its endpoints, the new one gains them).
#[derive(Debug, Default)]
pub struct SliceRecorder {
    journal: SharedJournal,
    owners: HashMap<Key, String>,
}

impl SliceRecorder {
    pub fn new(journal: SharedJournal) -> SliceRecorder {
        SliceRecorder {
            journal,
            owners: HashMap::new(),
        }
    }

    /// One item of the watch stream: an event, or `None` for a watch error.
    pub fn record(&mut self, ev: Option<&watcher::Event<EndpointSlice>>) {
        match ev {
            Some(watcher::Event::Apply(s)) => {
                let (slice, service) = keys(s);
                let before = match &service {
                    Some(svc) => self.owners.insert(slice.clone(), svc.clone()),
                    None => self.owners.remove(&slice),
                };
                let mut j = self.journal.lock();
                for svc in [before, service].into_iter().flatten() {
                    j.services.insert((slice.0.clone(), svc));
                }
            }
            Some(watcher::Event::Delete(s)) => {
                let (slice, service) = keys(s);
                let before = self.owners.remove(&slice);
                let mut j = self.journal.lock();
                for svc in [before, service].into_iter().flatten() {
                    j.services.insert((slice.0.clone(), svc));
                }
            }
            // A re-list: the store is replaced wholesale; remember the owners again.
            Some(watcher::Event::Init) => {
                self.owners.clear();
                self.journal.mark_full();
            }
            Some(watcher::Event::InitApply(s)) => {
                let (slice, service) = keys(s);
                if let Some(svc) = service {
                    self.owners.insert(slice, svc);
                }
                self.journal.mark_full();
            }
            Some(watcher::Event::InitDone) | None => self.journal.mark_full(),
        }
    }
}

/// (namespace, slice name) and the Service the slice's label names.
fn keys(s: &EndpointSlice) -> (Key, Option<String>) {
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    let name = s.metadata.name.clone().unwrap_or_default();
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned();
    ((ns, name), service)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use super::*;

    fn slice(name: &str, service: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_owned(),
                    service.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Vec::new(),
            ports: None,
        }
    }

    fn services(names: &[&str]) -> BTreeSet<Key> {
        names
            .iter()
            .map(|n| ("default".to_owned(), (*n).to_owned()))
            .collect()
    }

    #[test]
    fn slice_events_name_their_services_and_a_take_empties_the_journal() {
        let journal = SharedJournal::default();
        let mut r = SliceRecorder::new(journal.clone());
        r.record(Some(&watcher::Event::Apply(slice("a-1", "a"))));
        r.record(Some(&watcher::Event::Delete(slice("b-1", "b"))));
        assert_eq!(
            journal.take(),
            Journal {
                full: false,
                services: services(&["a", "b"]),
            }
        );
        assert_eq!(journal.take(), Journal::default());
    }

    #[test]
    fn a_relabelled_slice_names_the_service_it_left_too() {
        let journal = SharedJournal::default();
        let mut r = SliceRecorder::new(journal.clone());
        r.record(Some(&watcher::Event::Apply(slice("x", "a"))));
        journal.take();
        r.record(Some(&watcher::Event::Apply(slice("x", "b"))));
        assert_eq!(journal.take().services, services(&["a", "b"]));
        // Deleted under its new label: the Service it was last seen with.
        r.record(Some(&watcher::Event::Delete(slice("x", "b"))));
        assert_eq!(journal.take().services, services(&["b"]));
    }

    #[test]
    fn a_relist_or_a_watch_error_asks_for_a_full_sync_and_keeps_the_owners() {
        let journal = SharedJournal::default();
        let mut r = SliceRecorder::new(journal.clone());
        for ev in [
            watcher::Event::Init,
            watcher::Event::InitApply(slice("x", "a")),
            watcher::Event::InitDone,
        ] {
            r.record(Some(&ev));
        }
        assert!(journal.take().full);
        r.record(None);
        assert!(journal.take().full);
        // The owner learnt during the re-list is named when the slice moves.
        r.record(Some(&watcher::Event::Apply(slice("x", "c"))));
        assert_eq!(journal.take().services, services(&["a", "c"]));
    }
}
