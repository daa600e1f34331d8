//! "Block the last caller": who last called each extension (or DID), per tenant, so a feature
//! code (`*32`) dialled from that extension can block them. Bounded, in memory, per process;
//! time is passed in. Knows nothing of protocols or stores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::number::CallerNumber;
use crate::rules::Tenant;

/// Most extensions remembered; beyond it the oldest half is dropped.
const MAX_ENTRIES: usize = 100_000;
/// A caller older than this is no longer "the last caller".
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// (tenant, extension) -> (last caller, when).
type CallerMap = HashMap<(Option<Tenant>, Box<str>), (CallerNumber, SystemTime)>;

/// Shared memory of the last caller per (tenant, extension). Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct LastCallers {
    inner: Arc<Mutex<CallerMap>>,
}

/// An extension name as the dialplan passes it: 1-32 characters of `[0-9A-Za-z*#+_.-]`, so a
/// caller-controlled value can never grow the map's keys without bound.
pub fn extension_key(text: &str) -> Option<Box<str>> {
    let text = text.trim();
    let ok = (1..=32).contains(&text.len())
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'*' | b'#' | b'+' | b'_' | b'.' | b'-')
        });
    ok.then(|| text.into())
}

impl LastCallers {
    /// Remembers `caller` as the last caller of `extension`. Withheld callers are not
    /// remembered: there is nothing to block.
    pub fn record(
        &self,
        tenant: Option<&Tenant>,
        extension: &str,
        caller: &CallerNumber,
        now: SystemTime,
    ) {
        if *caller == CallerNumber::Anonymous {
            return;
        }
        let Some(key) = extension_key(extension) else {
            return;
        };
        // The lock covers a hash insert (and, rarely, a bounded sweep); never held across await.
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES && !map.contains_key(&(tenant.cloned(), key.clone())) {
            let mut times: Vec<SystemTime> = map.values().map(|(_, t)| *t).collect();
            times.sort_unstable();
            let cutoff = times[times.len() / 2];
            map.retain(|_, (_, t)| *t > cutoff);
        }
        map.insert((tenant.cloned(), key), (caller.clone(), now));
    }

    /// The last caller of `extension` within [`RETENTION`] of `now`.
    pub fn last(
        &self,
        tenant: Option<&Tenant>,
        extension: &str,
        now: SystemTime,
    ) -> Option<CallerNumber> {
        let key = extension_key(extension)?;
        let map = self.inner.lock().ok()?;
        let (caller, at) = map.get(&(tenant.cloned(), key))?;
        let age = now.duration_since(*at).unwrap_or_default();
        (age < RETENTION).then(|| caller.clone())
    }

    /// How many extensions are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.len())
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Normalizer;

    #[test]
    fn remembers_per_tenant_and_extension_and_forgets_after_retention() {
        let n = Normalizer::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let last = LastCallers::default();
        let acme = Tenant::new("acme").ok();
        last.record(None, "101", &n.normalize("84951234567"), t0);
        last.record(acme.as_ref(), "101", &n.normalize("84957654321"), t0);
        last.record(None, "101", &CallerNumber::Anonymous, t0);
        last.record(None, "bad ext\n", &n.normalize("84951234567"), t0);
        assert_eq!(
            last.last(None, "101", t0).map(|c| c.to_string()).as_deref(),
            Some("+74951234567")
        );
        assert_eq!(
            last.last(acme.as_ref(), "101", t0)
                .map(|c| c.to_string())
                .as_deref(),
            Some("+74957654321")
        );
        assert_eq!(last.last(None, "102", t0), None);
        assert_eq!(last.last(None, "101", t0 + RETENTION), None);
        assert_eq!(last.len(), 2);
    }

    #[test]
    fn memory_is_bounded() {
        let last = LastCallers::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let caller = Normalizer::default().normalize("84951234567");
        for i in 0..(MAX_ENTRIES + 10) {
            last.record(
                None,
                &i.to_string(),
                &caller,
                t0 + Duration::from_secs(i as u64),
            );
        }
        assert!(last.len() <= MAX_ENTRIES);
        let newest = (MAX_ENTRIES + 9).to_string();
        assert!(
            last.last(None, &newest, t0 + Duration::from_secs(MAX_ENTRIES as u64))
                .is_some()
        );
    }
}
