//! The bulk layout of big imported lists in Redis: many rules per hash instead of one key per
//! rule. Pure functions (bucket of a rule, meta references); [`super::redis`] does the I/O.
//!
//! One key per rule costs Redis a key lookup (several cache misses) per rule on every cold
//! load: 3 µs a rule, 31 s of Redis CPU for ten million. A hash of ~80 rules is one lookup and
//! one sequential walk of a small, compactly encoded value, about 0.2 µs a rule, and it takes
//! a sixth of the memory (BENCHMARKS.md, "Bulk layout"). Hand edits keep the key-per-rule layout (`redis-cli SET`/`DEL`
//! on a number); `callguard import` writes big files (or `--layout bulk`) this way:
//!
//! - `<prefix>:bulk:<list>:<bucket>` (tenant lists: `<prefix>:tenant:<t>:bulk:<list>:<bucket>`)
//!   is a hash: field = canonical rule text, value = `@<meta id>` or, as in a rule key, a
//!   reason or the JSON metadata.
//! - `<prefix>:bulk-meta` is a hash: meta id -> the JSON metadata (reason, added_by,
//!   added_at...), stored once for the many rules of an import that share it. Ids are content
//!   hashes, so an id always means the same metadata and readers may cache it for good.
//!
//! Rules in the bulk layout have no expiry: Redis (before 7.4) cannot expire a hash field, so
//! an import writes rules with an expiry as keys of their own.

/// Buckets per list and tenant. At ten million rules a bucket holds ~76, under Redis's
/// default `hash-max-listpack-entries` (128), so buckets stay in the compact encoding up to
/// ~16 million rules a list; beyond that they still work, in the larger hash encoding.
pub const BUCKETS: u64 = 1 << 17;

/// Prefix of a bucket value that refers to the metadata hash.
pub const META_REF: u8 = b'@';

/// The bucket that holds the rule whose canonical text is `rule_text`: FNV-1a 64 of the
/// text's bytes, modulo [`BUCKETS`]. Part of the stored format: never change it.
pub fn bucket_of(rule_text: &str) -> u64 {
    fnv1a64(rule_text.as_bytes()) % BUCKETS
}

/// Bucket number as it appears in the key: five lowercase hex digits.
pub fn bucket_name(bucket: u64) -> String {
    format!("{bucket:05x}")
}

/// Parses a bucket name written by [`bucket_name`].
pub fn parse_bucket_name(name: &str) -> Option<u64> {
    if name.len() != 5 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(name, 16).ok().filter(|b| *b < BUCKETS)
}

/// Id of a metadata JSON text: 16 hex digits of its FNV-1a 64 hash.
pub fn meta_id(meta_json: &str) -> String {
    format!("{:016x}", fnv1a64(meta_json.as_bytes()))
}

/// The bucket value that refers to the metadata with id `id`.
pub fn meta_ref(id: &str) -> String {
    format!("{}{id}", char::from(META_REF))
}

/// The meta id a bucket value refers to, or `None` for a value that is the metadata itself.
pub fn referenced_meta(value: &[u8]) -> Option<&str> {
    value
        .strip_prefix(&[META_REF])
        .and_then(|id| std::str::from_utf8(id).ok())
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_in_range() {
        // The stored format: these values must never change.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(bucket_of("+79161234567"), bucket_of("+79161234567"));
        assert_ne!(bucket_of("+79161234567"), bucket_of("+79161234568"));
        let mut counts = vec![0u32; BUCKETS as usize];
        for i in 0..1_000_000u64 {
            let b = bucket_of(&format!("+74{:09}", i * 7919 % 1_000_000_000));
            counts[b as usize] += 1;
        }
        // ~7.6 a bucket: no bucket far above the average (a well-spread hash).
        assert!(counts.iter().all(|c| *c < 40), "{:?}", counts.iter().max());
    }

    #[test]
    fn bucket_names_round_trip() {
        for b in [0, 1, 0xabc, BUCKETS - 1] {
            assert_eq!(parse_bucket_name(&bucket_name(b)), Some(b));
        }
        assert_eq!(bucket_name(0x1f), "0001f");
        for bad in [
            "", "1234", "123456", "0001F", "2000 ", "20000", "zzzzz", "+0001",
        ] {
            assert_eq!(parse_bucket_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn meta_references() {
        let id = meta_id(r#"{"reason":"spam"}"#);
        assert_eq!(id.len(), 16);
        assert_eq!(referenced_meta(meta_ref(&id).as_bytes()), Some(id.as_str()));
        assert_eq!(referenced_meta(b"plain reason"), None);
        assert_eq!(referenced_meta(br#"{"reason":"x"}"#), None);
    }
}
