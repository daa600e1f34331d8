//! The snapshot file (`redis.snapshot_file`): the last list loaded from Redis, written to disk
//! so a restart decides from it at once instead of from an empty list while millions of keys
//! stream in (tens of seconds during which every blocked number would get through).
//!
//! Format (little-endian): magic `CALLGUARD-SNAPSHOT-1\n`; the store identity (length-prefixed
//! UTF-8, e.g. `redis://host:6379/0 callguard`) so a file never applies to another store; the
//! string table (u32 count, then u32 length + UTF-8 each); the compact rules (u64 count, 32
//! bytes each); the general rules (u32 count, then u32 length + one JSON record each). Written
//! to a temp file, fsynced and renamed over the old one, so a crash leaves the previous file.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{EntryMeta, entry_from_parts};
use crate::number::Normalizer;
use crate::rules::{Entry, ListKind, Snapshot, Tenant, TimeZone};

const MAGIC: &[u8] = b"CALLGUARD-SNAPSHOT-1\n";
/// Caps that keep a damaged length field from allocating without bound.
const MAX_TEXT: u32 = 1 << 20;
const MAX_STRINGS: u32 = 1 << 26;

/// A general rule as the file stores it.
#[derive(Serialize, Deserialize)]
struct Record {
    tenant: Option<String>,
    list: ListKind,
    rule: String,
    meta: EntryMeta,
    expires_ms: Option<u64>,
}

fn bad(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// Writes `snapshot` to `path` for the store named `identity`.
pub fn write(path: &Path, identity: &str, snapshot: &Snapshot) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let file = std::fs::File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC)?;
    write_text(&mut out, identity)?;
    let (strings, slots, rich) = snapshot.cache_parts();
    let strings: Vec<&str> = strings.collect();
    out.write_all(&u32_len(strings.len())?.to_le_bytes())?;
    for s in strings {
        write_text(&mut out, s)?;
    }
    let slots: Vec<[u8; 32]> = slots.collect();
    out.write_all(&(slots.len() as u64).to_le_bytes())?;
    for slot in &slots {
        out.write_all(slot)?;
    }
    let rich: Vec<&Entry> = rich.collect();
    out.write_all(&u32_len(rich.len())?.to_le_bytes())?;
    for e in rich {
        let record = Record {
            tenant: e.tenant.as_ref().map(|t| t.as_str().to_owned()),
            list: e.list,
            rule: e.pattern.to_string(),
            meta: EntryMeta::of(e),
            expires_ms: e.expires_at.map(crate::rules::unix_ms),
        };
        let json = serde_json::to_string(&record).map_err(std::io::Error::other)?;
        write_text(&mut out, &json)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads the file at `path`; `Ok(None)` when it was written for another store.
pub fn read(
    path: &Path,
    identity: &str,
    normalizer: &Normalizer,
    zone: &TimeZone,
) -> std::io::Result<Option<Snapshot>> {
    let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut magic = vec![0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(bad("not a callguard snapshot file"));
    }
    if read_text(&mut input)? != identity {
        return Ok(None);
    }
    let count = read_u32(&mut input)?;
    if count > MAX_STRINGS {
        return Err(bad("string table too large"));
    }
    let strings = (0..count)
        .map(|_| read_text(&mut input))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut n = [0u8; 8];
    input.read_exact(&mut n)?;
    let slot_count = u64::from_le_bytes(n);
    let file_len = std::fs::metadata(path)?.len();
    if slot_count > file_len / 32 {
        return Err(bad("slot count larger than the file"));
    }
    let mut slots = Vec::with_capacity(usize::try_from(slot_count).unwrap_or(0));
    for _ in 0..slot_count {
        let mut b = [0u8; 32];
        input.read_exact(&mut b)?;
        slots.push(b);
    }
    let rich_count = read_u32(&mut input)?;
    let mut rich = Vec::new();
    for _ in 0..rich_count {
        let record: Record = serde_json::from_str(&read_text(&mut input)?)
            .map_err(|e| bad(format!("general rule: {e}")))?;
        let tenant = match record.tenant.as_deref() {
            None => None,
            Some(name) => Some(Tenant::new(name).map_err(|e| bad(e.to_string()))?),
        };
        let expires = record
            .expires_ms
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let entry = entry_from_parts(
            normalizer,
            tenant,
            record.list,
            &record.rule,
            record.meta,
            expires,
        )
        .map_err(|e| bad(format!("general rule {}: {e}", record.rule)))?;
        rich.push(entry);
    }
    Snapshot::from_cache_parts(strings, &slots, rich, 0, zone)
        .map(Some)
        .ok_or_else(|| bad("compact rules do not match the string table"))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn u32_len(n: usize) -> std::io::Result<u32> {
    u32::try_from(n).map_err(|_| bad("too many items"))
}

fn write_text(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    out.write_all(&u32_len(text.len())?.to_le_bytes())?;
    out.write_all(text.as_bytes())
}

fn read_u32(input: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_text(input: &mut impl Read) -> std::io::Result<String> {
    let len = read_u32(input)?;
    if len > MAX_TEXT {
        return Err(bad("text too long"));
    }
    let mut b = vec![0u8; len as usize];
    input.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| bad("text is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{CallFacts, RulePattern, decide};

    #[test]
    fn roundtrip_decides_the_same_and_rejects_damage() {
        let n = Normalizer::default();
        let zone = TimeZone::utc();
        let mut entries = Vec::new();
        for (text, list, reason) in [
            ("+79991234567", ListKind::Block, "spam"),
            ("+79991234568", ListKind::Allow, "friend"),
            ("+7495123XXXX", ListKind::Block, "exchange"),
        ] {
            let mut e = Entry::new(list, RulePattern::parse(text, &n).expect("rule"));
            e.reason = reason.into();
            entries.push(e);
        }
        let mut scoped = Entry::new(
            ListKind::Block,
            RulePattern::parse("+79990000000", &n).expect("rule"),
        );
        scoped.tenant = Some(Tenant::new("acme").expect("tenant"));
        scoped.expires_at = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(4_000_000_000_123));
        entries.push(scoped);
        let snapshot = Snapshot::compile(entries, 3);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snap.bin");
        write(&path, "redis://x/0 callguard", &snapshot).expect("write");

        assert!(
            read(&path, "redis://other/0 callguard", &n, &zone)
                .expect("read")
                .is_none()
        );
        let back = read(&path, "redis://x/0 callguard", &n, &zone)
            .expect("read")
            .expect("same store");
        assert!(back.same_rules(&snapshot, Duration::ZERO + Duration::from_millis(1)));
        for number in ["89991234567", "+79991234568", "84951234444", "+79990000000"] {
            let number = n.normalize(number);
            let a = decide(
                CallFacts::number(&number),
                &snapshot,
                SystemTime::UNIX_EPOCH,
            );
            let b = decide(CallFacts::number(&number), &back, SystemTime::UNIX_EPOCH);
            assert_eq!(a.decided_by, b.decided_by);
        }

        // Truncated anywhere: an error, never a panic or a half list.
        let bytes = std::fs::read(&path).expect("bytes");
        for cut in [5, MAGIC.len() + 3, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).expect("write cut");
            assert!(
                read(&path, "redis://x/0 callguard", &n, &zone).is_err(),
                "cut {cut}"
            );
        }
    }
}
