//! List files: what `callguard import` reads (CSV with or without a header, one number per
//! line, `callguard export` CSV or JSON, an Asterisk AstDB `database show blacklist` dump, a
//! FreePBX blacklist CSV) and what `callguard export` writes. Pure: text in, entries and a
//! report of every rejected line out; entries in, text out. The store write is the caller's.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::SystemTime;

use serde::Deserialize;

use crate::number::{CallerNumber, Normalizer};
use crate::rules::{Entry, ListKind, RulePattern, Tenant};
use crate::store::{EntryJson, EntryMeta, entry_from_parts, format_time, parse_time};

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Guess from the text: JSON array, AstDB dump, else CSV.
    Auto,
    /// CSV (`,`, `;` or tab separated; header optional); one number per line is CSV too.
    Csv,
    /// `callguard export --format json`.
    Json,
    /// Asterisk `database show blacklist` output (also FreePBX's blacklist family).
    Astdb,
}

/// What a row does not say itself.
#[derive(Debug, Clone)]
pub struct ImportDefaults {
    /// List of rows without a `list` column.
    pub list: ListKind,
    /// Tenant of rows without a `tenant` column (`None`: the global list).
    pub tenant: Option<Tenant>,
    /// Reason of rows without one.
    pub reason: String,
    /// Action of block rows without one (`None`: the configured default).
    pub action: Option<String>,
    /// Expiry of rows without one.
    pub expires_at: Option<SystemTime>,
    /// Who imports (`added_by` of rows without one).
    pub added_by: Option<String>,
    /// When (`added_at` of rows without one).
    pub added_at: SystemTime,
}

/// A line that could not become a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line where the record starts.
    pub line: usize,
    /// The rule text as read (or the whole line when there was none).
    pub text: String,
    /// Why.
    pub why: String,
}

/// A record for a rule an earlier record already has (same list, tenant and canonical rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// Its line.
    pub line: usize,
    /// The line kept.
    pub first_line: usize,
    /// The canonical rule.
    pub rule: String,
}

/// Everything read from one file.
#[derive(Debug, Default)]
pub struct Import {
    /// Rules to write, first occurrence of each, in file order, with their lines.
    pub entries: Vec<(usize, Entry)>,
    /// Records that are not rules.
    pub rejected: Vec<Rejected>,
    /// Later records for rules already read (not written twice).
    pub duplicates: Vec<Duplicate>,
}

/// One record with its fields as text: a CSV row, a JSON object, an AstDB line.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Row {
    list: Option<String>,
    tenant: Option<String>,
    // Written by `list --json` and `export --format json`; derived from the rule on import.
    kind: Option<String>,
    rule: String,
    reason: Option<String>,
    action: Option<String>,
    dids: Vec<String>,
    schedule: Option<String>,
    time_zone: Option<String>,
    expires_at: Option<String>,
    added_by: Option<String>,
    added_at: Option<String>,
}

/// Reads `text` in `format` into entries, rejecting (with line and reason) every record that
/// is not a valid rule, and setting duplicates aside.
pub fn read(
    text: &str,
    format: Format,
    defaults: &ImportDefaults,
    normalizer: &Normalizer,
) -> Import {
    let format = match format {
        Format::Auto => detect(text),
        other => other,
    };
    let rows = match format {
        Format::Json => json_rows(text),
        Format::Astdb => astdb_rows(text),
        Format::Csv | Format::Auto => csv_rows(text),
    };
    let mut import = Import::default();
    let mut seen: HashMap<(ListKind, Option<Tenant>, RulePattern), usize> = HashMap::new();
    for (line, row) in rows {
        let row = match row {
            Ok(row) => row,
            Err(why) => {
                import.rejected.push(Rejected {
                    line,
                    text: String::new(),
                    why,
                });
                continue;
            }
        };
        match to_entry(&row, defaults, normalizer) {
            Ok(entry) => {
                let key = (entry.list, entry.tenant.clone(), entry.pattern.clone());
                match seen.get(&key) {
                    Some(&first_line) => import.duplicates.push(Duplicate {
                        line,
                        first_line,
                        rule: entry.pattern.to_string(),
                    }),
                    None => {
                        seen.insert(key, line);
                        import.entries.push((line, entry));
                    }
                }
            }
            Err(why) => import.rejected.push(Rejected {
                line,
                text: row.rule.clone(),
                why,
            }),
        }
    }
    import
}

fn detect(text: &str) -> Format {
    let first = text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if first.starts_with('[') {
        Format::Json
    } else if first.starts_with('/') && first.contains(':') {
        Format::Astdb
    } else {
        Format::Csv
    }
}

fn to_entry(
    row: &Row,
    defaults: &ImportDefaults,
    normalizer: &Normalizer,
) -> Result<Entry, String> {
    let rule = row.rule.trim();
    if rule.is_empty() {
        return Err("no number or rule".to_owned());
    }
    let list = match row.list.as_deref().map(str::trim) {
        None | Some("") => defaults.list,
        Some(text) => ListKind::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| format!("list {text:?} is neither block nor allow"))?,
    };
    let tenant = match row.tenant.as_deref().map(str::trim) {
        None => defaults.tenant.clone(),
        // An empty cell says nothing: the default applies (export writes the global list so).
        Some("") => defaults.tenant.clone(),
        Some("global") => None,
        Some(name) => Some(Tenant::new(name).map_err(|e| e.to_string())?),
    };
    let present = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let time = |field: &str, v: &Option<String>| -> Result<Option<SystemTime>, String> {
        match present(v) {
            None => Ok(None),
            Some(text) => parse_time(&text)
                .map(Some)
                .ok_or_else(|| format!("{field} {text:?} is not an RFC 3339 time")),
        }
    };
    let expires_at = time("expires_at", &row.expires_at)?.or(defaults.expires_at);
    let added_at = time("added_at", &row.added_at)?.unwrap_or(defaults.added_at);
    let action = present(&row.action).or_else(|| {
        // A default action applies to block rows only; an allow row cannot have one.
        (list == ListKind::Block)
            .then(|| defaults.action.clone())
            .flatten()
    });
    let meta = EntryMeta {
        reason: present(&row.reason).unwrap_or_else(|| defaults.reason.clone()),
        added_by: present(&row.added_by).or_else(|| defaults.added_by.clone()),
        added_at: Some(format_time(added_at)),
        action,
        dids: row
            .dids
            .iter()
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect(),
        schedule: present(&row.schedule),
        time_zone: present(&row.time_zone),
    };
    let mut entry = entry_from_parts(normalizer, tenant, list, rule, meta, expires_at)
        .map_err(|e| e.to_string())?;
    if let RulePattern::Exact(CallerNumber::Invalid(_)) = entry.pattern {
        // `callguard block` takes such text on purpose (a caller ID like `SPAM`); in a list
        // file it is far more often a stray header, a name or a typo.
        return Err(
            "not a phone number, mask, range or keyword (block caller-ID text such as this with \
             `callguard block`)"
                .to_owned(),
        );
    }
    entry.added_at = Some(added_at);
    Ok(entry)
}

/// Records of a file with their line numbers, read as they are used.
type Rows<'t> = Box<dyn Iterator<Item = (usize, Result<Row, String>)> + 't>;

fn json_rows(text: &str) -> Rows<'_> {
    match serde_json::from_str::<Vec<serde_json::Value>>(text) {
        Err(e) => Box::new(std::iter::once((
            e.line(),
            Err(format!("not a JSON array of rules: {e}")),
        ))),
        Ok(values) => Box::new(values.into_iter().enumerate().map(|(i, value)| {
            // JSON has no useful line per element once parsed: number the elements.
            let row =
                serde_json::from_value::<Row>(value).map_err(|e| format!("element {}: {e}", i + 1));
            (i + 1, row)
        })),
    }
}

/// `database show blacklist`: `/blacklist/<number>   : <value>` lines, padded with spaces,
/// then `N results found.`. The value is a description in FreePBX and usually `1` in plain
/// Asterisk dialplans; FreePBX's key `blocked` (value `1`) means "block withheld callers".
fn astdb_rows(text: &str) -> Rows<'_> {
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let Some(rest) = line.strip_prefix('/') else {
            // `N results found.`, the CLI banner, blank lines.
            continue;
        };
        let Some((key, value)) = rest.split_once(':') else {
            rows.push((i + 1, Err(format!("not `/family/key : value`: {line:?}"))));
            continue;
        };
        let number = key.trim().rsplit('/').next().unwrap_or("").to_owned();
        let value = value.trim();
        let (rule, reason) = match (number.as_str(), value) {
            ("blocked", "1") => (
                "anonymous".to_owned(),
                "FreePBX: block unknown/blocked caller ID",
            ),
            (_, "1" | "") => (number, ""),
            (_, description) => (number, description),
        };
        rows.push((
            i + 1,
            Ok(Row {
                rule,
                reason: (!reason.is_empty()).then(|| reason.to_owned()),
                ..Row::default()
            }),
        ));
    }
    Box::new(rows.into_iter())
}

/// Column names (lowercase) and the field each fills; several spellings for the two that
/// matter, as other tools export them.
fn column(name: &str) -> Option<&'static str> {
    Some(
        match name.trim().trim_matches('"').to_lowercase().as_str() {
            "rule" | "number" | "phone" | "phone_number" | "phonenumber" | "callerid"
            | "caller_id" | "cid" | "номер" | "телефон" => "rule",
            "reason" | "description" | "comment" | "note" | "name" | "причина" | "комментарий" => {
                "reason"
            }
            "list" => "list",
            "tenant" => "tenant",
            "kind" => "kind",
            "action" => "action",
            "dids" | "did" => "dids",
            "schedule" => "schedule",
            "time_zone" | "timezone" => "time_zone",
            "expires_at" | "expires" => "expires_at",
            "added_by" => "added_by",
            "added_at" => "added_at",
            _ => return None,
        },
    )
}

fn csv_rows(text: &str) -> Rows<'_> {
    let text = text.trim_start_matches('\u{feff}');
    let delimiter = guess_delimiter(text);
    let mut columns: Option<Vec<Option<&'static str>>> = None;
    Box::new(
        csv_records(text, delimiter)
            .enumerate()
            .filter_map(move |(index, (line, fields))| {
                if fields.iter().all(|f| f.trim().is_empty())
                    || fields[0].trim_start().starts_with('#')
                {
                    return None;
                }
                let named: Vec<Option<&'static str>> = fields.iter().map(|f| column(f)).collect();
                // A header: the first record, naming the rule column.
                if index == 0 && columns.is_none() && named.contains(&Some("rule")) {
                    columns = Some(named);
                    return None;
                }
                let mut row = Row::default();
                match &columns {
                    Some(names) => {
                        for (field, name) in fields.iter().zip(names) {
                            set_field(&mut row, *name, field);
                        }
                    }
                    // No header: number, then an optional reason; further columns are ignored.
                    None => {
                        set_field(&mut row, Some("rule"), &fields[0]);
                        if let Some(reason) = fields.get(1) {
                            set_field(&mut row, Some("reason"), reason);
                        }
                    }
                }
                Some((line, Ok(row)))
            }),
    )
}

fn set_field(row: &mut Row, name: Option<&'static str>, value: &str) {
    let text = || Some(value.to_owned());
    match name {
        Some("rule") => row.rule = value.to_owned(),
        Some("reason") => row.reason = text(),
        Some("list") => row.list = text(),
        Some("tenant") => row.tenant = text(),
        Some("action") => row.action = text(),
        Some("dids") => {
            row.dids = value
                .split('|')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect();
        }
        Some("schedule") => row.schedule = text(),
        Some("time_zone") => row.time_zone = text(),
        Some("expires_at") => row.expires_at = text(),
        Some("added_by") => row.added_by = text(),
        Some("added_at") => row.added_at = text(),
        _ => {}
    }
}

/// `,`, `;` (spreadsheets in many locales) or tab: whichever the first line has most of,
/// outside quotes.
fn guess_delimiter(text: &str) -> char {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut quoted = false;
    let mut counts = [(',', 0usize), (';', 0), ('\t', 0)];
    for c in first.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && let Some(slot) = counts.iter_mut().find(|(d, _)| *d == c) {
            slot.1 += 1;
        }
    }
    counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .filter(|(_, n)| *n > 0)
        .map_or(',', |(d, _)| *d)
}

/// RFC 4180 records with the line each starts on: quoted fields may hold the delimiter,
/// doubled quotes and line breaks; `\r\n` and `\n` both end records.
fn csv_records(text: &str, delimiter: char) -> CsvRecords<'_> {
    CsvRecords {
        chars: text.chars().peekable(),
        delimiter,
        line: 1,
    }
}

/// RFC 4180 records of a text, each with the line it starts on, read one at a time (a
/// ten-million-line file is never held as records).
struct CsvRecords<'t> {
    chars: std::iter::Peekable<std::str::Chars<'t>>,
    delimiter: char,
    line: usize,
}

impl Iterator for CsvRecords<'_> {
    type Item = (usize, Vec<String>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let start = self.line;
        while let Some(c) = self.chars.next() {
            match c {
                '"' if quoted => {
                    if self.chars.peek() == Some(&'"') {
                        self.chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                }
                '"' if field.trim().is_empty() => {
                    field.clear();
                    quoted = true;
                }
                '\n' if quoted => {
                    self.line += 1;
                    field.push('\n');
                }
                '\n' => {
                    fields.push(field);
                    self.line += 1;
                    return Some((start, fields));
                }
                '\r' if !quoted && self.chars.peek() == Some(&'\n') => {}
                c if c == self.delimiter && !quoted => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        if !field.is_empty() || !fields.is_empty() {
            fields.push(field);
            return Some((start, fields));
        }
        None
    }
}

/// Export columns, in order; `import` reads them back by name.
const CSV_COLUMNS: [&str; 11] = [
    "list",
    "tenant",
    "rule",
    "reason",
    "action",
    "dids",
    "schedule",
    "time_zone",
    "expires_at",
    "added_by",
    "added_at",
];

fn row_of(entry: &Entry) -> Row {
    let meta = EntryMeta::of(entry);
    Row {
        list: Some(entry.list.as_str().to_owned()),
        tenant: entry.tenant.as_ref().map(ToString::to_string),
        kind: None,
        rule: entry.pattern.to_string(),
        reason: Some(meta.reason),
        action: meta.action,
        dids: meta.dids,
        schedule: meta.schedule,
        time_zone: meta.time_zone,
        expires_at: entry.expires_at.map(format_time),
        added_by: meta.added_by,
        added_at: meta.added_at,
    }
}

/// Writes `entries` as CSV with a header row.
pub fn write_csv<'e>(
    entries: impl IntoIterator<Item = &'e Entry>,
    out: &mut impl Write,
) -> io::Result<()> {
    writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    for entry in entries {
        let row = row_of(entry);
        let cell = |v: &Option<String>| v.clone().unwrap_or_default();
        let fields = [
            cell(&row.list),
            cell(&row.tenant),
            row.rule.clone(),
            cell(&row.reason),
            cell(&row.action),
            row.dids.join("|"),
            cell(&row.schedule),
            cell(&row.time_zone),
            cell(&row.expires_at),
            cell(&row.added_by),
            cell(&row.added_at),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_quote(f)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// Writes `entries` as a JSON array: the objects of `callguard list --json` and the admin API.
pub fn write_json<'e>(
    entries: impl IntoIterator<Item = &'e Entry>,
    out: &mut impl Write,
) -> io::Result<()> {
    let rows: Vec<EntryJson> = entries.into_iter().map(EntryJson::of).collect();
    serde_json::to_writer_pretty(&mut *out, &rows).map_err(io::Error::other)?;
    writeln!(out)
}

/// Quotes a field holding a delimiter, a quote or a line break, or starting with a space
/// (which readers trim).
fn csv_quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r', ';', '\t']) || field.starts_with(' ') {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ImportDefaults {
        ImportDefaults {
            list: ListKind::Block,
            tenant: None,
            reason: String::new(),
            action: None,
            expires_at: None,
            added_by: Some("tester".into()),
            added_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        }
    }

    fn rules(import: &Import) -> Vec<String> {
        import
            .entries
            .iter()
            .map(|(_, e)| format!("{} {}", e.pattern, e.reason))
            .collect()
    }

    #[test]
    fn one_number_per_line_in_any_format_with_rejects_and_duplicates() {
        let text = "8 (495) 123-45-67\n\n+74951234567\n# a comment\nnot a number\n84957654321\r\n+7 812 *\n";
        let import = read(text, Format::Auto, &defaults(), &Normalizer::default());
        assert_eq!(
            rules(&import),
            ["+74951234567 ", "+74957654321 ", "+7812* "]
        );
        assert_eq!(
            import.duplicates,
            [Duplicate {
                line: 3,
                first_line: 1,
                rule: "+74951234567".into()
            }]
        );
        assert_eq!(import.rejected.len(), 1);
        assert_eq!(import.rejected[0].line, 5);
        assert_eq!(import.rejected[0].text, "not a number");
        assert!(!import.rejected[0].why.is_empty());
    }

    #[test]
    fn csv_with_header_aliases_semicolons_and_quotes() {
        let text =
            "Phone;Comment\n\"8 495 123-45-67\";\"collector; calls \"\"daily\"\"\"\n84957654321;\n";
        let import = read(text, Format::Auto, &defaults(), &Normalizer::default());
        assert!(import.rejected.is_empty(), "{:?}", import.rejected);
        assert_eq!(
            rules(&import),
            ["+74951234567 collector; calls \"daily\"", "+74957654321 "]
        );
        assert_eq!(import.entries[0].0, 2);
    }

    #[test]
    fn headerless_csv_takes_number_then_reason() {
        let text = "84951234567,spam,ignored column\n";
        let import = read(text, Format::Csv, &defaults(), &Normalizer::default());
        assert_eq!(rules(&import), ["+74951234567 spam"]);
    }

    #[test]
    fn astdb_dump_as_asterisk_prints_it() {
        let text = "/blacklist/84951234567                           : 1                        \n\
                    /blacklist/blocked                               : 1                        \n\
                    /blacklist/+74957654321                          : Debt collector           \n\
                    /blacklist/garbage!                              : 1                        \n\
                    4 results found.\n";
        let import = read(text, Format::Auto, &defaults(), &Normalizer::default());
        assert_eq!(
            rules(&import),
            [
                "+74951234567 ",
                "anonymous FreePBX: block unknown/blocked caller ID",
                "+74957654321 Debt collector"
            ]
        );
        assert_eq!(import.rejected.len(), 1);
        assert_eq!(import.rejected[0].line, 4);
    }

    #[test]
    fn export_csv_and_json_read_back_the_same_entries() {
        let n = Normalizer::default();
        let mut a = Entry::new(
            ListKind::Block,
            RulePattern::parse("+7495123XXXX", &n).expect("mask"),
        );
        a.reason = "range, \"quoted\"\nand a line break".into();
        a.action = Some("hangup 17".parse().expect("action"));
        a.tenant = Some(Tenant::new("acme").expect("tenant"));
        a.dids = vec![n.normalize("84951112233"), n.normalize("84951112244")];
        a.added_by = Some("ops@pbx".into());
        a.added_at = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        a.expires_at = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000));
        let mut b = Entry::new(
            ListKind::Allow,
            RulePattern::parse("84951230000", &n).expect("exact"),
        );
        b.reason = "our office".into();
        b.schedule = Some(crate::rules::Schedule::parse("mon-fri 09:00-18:00").expect("schedule"));
        b.time_zone = Some("Europe/Moscow".into());
        b.added_at = a.added_at;
        b.added_by = Some("admin".into());
        let original = vec![a, b];
        for format in [Format::Csv, Format::Json] {
            let mut out = Vec::new();
            match format {
                Format::Csv => write_csv(&original, &mut out),
                _ => write_json(&original, &mut out),
            }
            .expect("write");
            let text = String::from_utf8(out).expect("utf8");
            let import = read(&text, Format::Auto, &defaults(), &n);
            assert!(
                import.rejected.is_empty(),
                "{format:?}: {:?}\n{text}",
                import.rejected
            );
            let back: Vec<Entry> = import.entries.into_iter().map(|(_, e)| e).collect();
            assert_eq!(back, original, "{format:?}\n{text}");
        }
    }

    #[test]
    fn defaults_fill_what_rows_leave_out_and_rows_win() {
        let mut d = defaults();
        d.tenant = Some(Tenant::new("acme").expect("tenant"));
        d.reason = "imported".into();
        d.action = Some("busy".into());
        let text = "rule,list,tenant,reason\n84951234567,,,\n84957654321,allow,global,office\n";
        let import = read(text, Format::Csv, &d, &Normalizer::default());
        assert!(import.rejected.is_empty(), "{:?}", import.rejected);
        let (_, first) = &import.entries[0];
        assert_eq!(first.tenant.as_ref().map(Tenant::as_str), Some("acme"));
        assert_eq!(first.reason, "imported");
        assert_eq!(first.action, Some("busy".parse().expect("action")));
        let (_, second) = &import.entries[1];
        assert_eq!(second.list, ListKind::Allow);
        assert_eq!(second.tenant, None);
        assert_eq!(second.action, None, "an allow rule takes no default action");
        assert_eq!(second.reason, "office");
    }

    #[test]
    fn bad_fields_are_rejected_with_the_reason() {
        let text = "rule,list,action,expires_at\n84951234567,maybe,,\n84951234568,,explode,\n84951234569,,,tomorrow\n84951234560,allow,busy,\n";
        let import = read(text, Format::Csv, &defaults(), &Normalizer::default());
        let lines: Vec<usize> = import.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3, 4, 5], "{:?}", import.rejected);
        assert!(import.rejected[0].why.contains("neither block nor allow"));
        assert!(import.rejected[2].why.contains("RFC 3339"));
        assert!(import.entries.is_empty());
    }
}
