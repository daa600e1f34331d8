//! When a rule applies: weekly wall-clock windows (`mon-fri 09:00-18:00`) read in a time zone
//! ([`Schedule`], [`TimeZone`]). Pure: parse, display, `is_active` and `next_change` take the
//! instant from the caller; no clock of its own, no I/O except reading the tz database when a
//! [`TimeZone`] is parsed.
//!
//! Text form: groups separated by `;`, each a day list and optional windows:
//! `mon-fri 09:00-13:00,14:00-18:00; sat 10:00-14:00`, `daily 22:00-06:00`, `sat-sun`.
//! - days: `mon`..`sun` or full English names, any case; lists `mon,wed,fri`; ranges `mon-fri`,
//!   which may wrap (`fri-mon`); `daily` for all seven;
//! - windows: `HH:MM-HH:MM`, start inclusive, end exclusive, `24:00` only as an end; a window
//!   whose end is not after its start crosses midnight and belongs to the day it starts on
//!   (`fri 22:00-06:00` is Fri 22:00 to Sat 06:00); no windows = the whole day.
//!
//! A schedule is the set of wall-clock minutes of the week it covers, so two texts that cover
//! the same minutes are equal and display the same canonical text.
//!
//! Daylight saving time: only the local wall clock counts. A window that starts inside a
//! spring-forward gap starts at the first instant after the gap (the transition itself); a
//! window wholly inside the gap does not happen that day. In an autumn fold the repeated wall
//! time is inside the window on each pass, so `sun 02:00-02:30` is active twice on that Sunday.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use jiff::{SignedDuration, Timestamp};

const DAY: u32 = 24 * 60;
const WEEK: u32 = 7 * DAY;
const ALL_DAYS: u8 = 0x7f;
const NANOS_PER_MINUTE: i64 = 60_000_000_000;
/// Schedule text is short; the cap bounds work on text that comes from a store or a request.
const MAX_TEXT_BYTES: usize = 1024;
const MAX_ZONE_NAME_BYTES: usize = 128;
/// Largest offset accepted in `UTC+HH:MM`; real zones stay within 14 hours.
const MAX_OFFSET_MINUTES: i32 = 18 * 60;
/// Bound on tz transitions walked by `next_change`. Real zones change offset a few times a year
/// and a change of `is_active` is found within about a week, so this is never reached by them.
const MAX_SEGMENTS: usize = 1000;
const DAY_NAMES: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

/// Errors from reading a schedule or a time zone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// No text at all.
    #[error("empty schedule (expected e.g. \"mon-fri 09:00-18:00\")")]
    Empty,
    /// Longer than any sensible schedule.
    #[error("schedule is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// Length of the text.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Nothing between two `;` (or before the first, or after the last).
    #[error("{text:?}: empty part between ';'")]
    EmptyPart {
        /// The whole schedule text.
        text: String,
    },
    /// A part that starts with a time instead of days.
    #[error("{part:?}: no days before the times (start with e.g. mon-fri, sat or daily)")]
    MissingDays {
        /// The `;`-separated part.
        part: String,
    },
    /// A word that names no day.
    #[error("{part:?}: unknown day {day:?} (expected mon..sun, a full English day name, or daily)")]
    UnknownDay {
        /// The `;`-separated part.
        part: String,
        /// The word.
        day: String,
    },
    /// A time that is not `HH:MM` from `00:00` to `24:00`.
    #[error("{part:?}: bad time {time:?} (expected HH:MM from 00:00 to 24:00)")]
    BadTime {
        /// The `;`-separated part.
        part: String,
        /// The time as written.
        time: String,
    },
    /// A window that starts at `24:00`.
    #[error("{part:?}: window {window:?} starts at 24:00 (24:00 can only end a window)")]
    StartsAt24 {
        /// The `;`-separated part.
        part: String,
        /// The window as written.
        window: String,
    },
    /// A window whose start equals its end.
    #[error("{part:?}: window {window:?} is empty (for whole days leave the times out)")]
    EmptyWindow {
        /// The `;`-separated part.
        part: String,
        /// The window as written.
        window: String,
    },
    /// Anything else out of place.
    #[error("{part:?}: unexpected {found}, expected {expected}")]
    Syntax {
        /// The `;`-separated part.
        part: String,
        /// What was found, quoted, or `end of text`.
        found: String,
        /// What would have fitted.
        expected: &'static str,
    },
    /// A zone name that the tz database does not have.
    #[error(
        "unknown time zone {name:?} (expected an IANA name like Europe/Moscow, UTC, UTC+3, +03:00 or local)"
    )]
    UnknownTimeZone {
        /// The name as written.
        name: String,
        /// What the tz database said; `None` for an empty or over-long name.
        source: Option<jiff::Error>,
    },
    /// An offset out of range or malformed.
    #[error("bad UTC offset {text:?} (expected e.g. UTC+3, +03:00 or -05:30, at most 18:00)")]
    BadOffset {
        /// The offset as written.
        text: String,
    },
    /// `local` was asked for but the machine's zone is set and cannot be read.
    #[error("cannot read the machine's time zone for \"local\": {source}")]
    SystemZone {
        /// Why it could not be read.
        source: jiff::Error,
    },
}

/// A parsed time zone (IANA name like "Europe/Moscow", "UTC", or a fixed offset). Cheap to clone.
#[derive(Debug, Clone)]
pub struct TimeZone {
    name: Arc<str>,
    zone: jiff::tz::TimeZone,
}

impl TimeZone {
    /// Reads an IANA name (any case, from the system tz database), `UTC`, a fixed offset
    /// (`UTC+3`, `UTC-05:30`, `+03:00`, `+0330`), or `local`: the machine's zone (`TZ`, then
    /// `/etc/localtime`), UTC when neither is set, as POSIX and freedesktop.org prescribe.
    pub fn parse(name: &str) -> Result<TimeZone, ScheduleError> {
        let trimmed = name.trim();
        if trimmed.is_empty() || trimmed.len() > MAX_ZONE_NAME_BYTES {
            return Err(ScheduleError::UnknownTimeZone {
                name: name.to_owned(),
                source: None,
            });
        }
        if trimmed.eq_ignore_ascii_case("local") {
            return TimeZone::system();
        }
        if let Some(offset) = parse_offset(trimmed) {
            return offset.map(TimeZone::fixed);
        }
        let zone =
            jiff::tz::TimeZone::get(trimmed).map_err(|source| ScheduleError::UnknownTimeZone {
                name: trimmed.to_owned(),
                source: Some(source),
            })?;
        let name = zone.iana_name().unwrap_or(trimmed);
        Ok(TimeZone {
            name: name.into(),
            zone,
        })
    }

    /// Coordinated Universal Time.
    pub fn utc() -> TimeZone {
        TimeZone {
            name: "UTC".into(),
            zone: jiff::tz::TimeZone::UTC,
        }
    }

    /// The canonical name: the IANA name, `UTC`, or `UTC+03:00` for a fixed offset.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn fixed(minutes: i32) -> TimeZone {
        if minutes == 0 {
            return TimeZone::utc();
        }
        let sign = if minutes < 0 { '-' } else { '+' };
        let abs = minutes.unsigned_abs();
        // Within MAX_OFFSET_MINUTES, so always inside jiff's ±25:59:59.
        let offset = jiff::tz::Offset::from_seconds(minutes * 60).unwrap_or(jiff::tz::Offset::UTC);
        TimeZone {
            name: format!("UTC{sign}{:02}:{:02}", abs / 60, abs % 60).into(),
            zone: jiff::tz::TimeZone::fixed(offset),
        }
    }

    fn system() -> Result<TimeZone, ScheduleError> {
        match jiff::tz::TimeZone::try_system() {
            Ok(zone) => Ok(TimeZone {
                name: zone.iana_name().unwrap_or("local").into(),
                zone,
            }),
            // A machine with no zone configured runs on UTC; one whose configured zone cannot
            // be read must not silently move every window by hours.
            Err(_) if std::env::var_os("TZ").is_none() && !Path::new("/etc/localtime").exists() => {
                Ok(TimeZone::utc())
            }
            Err(source) => Err(ScheduleError::SystemZone { source }),
        }
    }

    /// Position of `at` in the local week, in nanoseconds from Monday 00:00 wall time.
    fn week_nanos(&self, at: Timestamp) -> i64 {
        let local = self.zone.to_datetime(at);
        let minute = i64::from(local.weekday().to_monday_zero_offset()) * i64::from(DAY)
            + i64::from(local.hour()) * 60
            + i64::from(local.minute());
        minute * NANOS_PER_MINUTE
            + i64::from(local.second()) * 1_000_000_000
            + i64::from(local.subsec_nanosecond())
    }
}

/// `None` when `text` is not written as an offset (so it may be a zone name).
fn parse_offset(text: &str) -> Option<Result<i32, ScheduleError>> {
    let rest = match text.get(..3) {
        Some(prefix) if prefix.eq_ignore_ascii_case("utc") => &text[3..],
        _ => text,
    };
    if rest.is_empty() {
        return Some(Ok(0));
    }
    let (sign, digits) = if let Some(digits) = rest.strip_prefix('+') {
        (1, digits)
    } else if let Some(digits) = rest.strip_prefix('-') {
        (-1, digits)
    } else {
        return None;
    };
    let bad = || ScheduleError::BadOffset {
        text: text.to_owned(),
    };
    let (hours, minutes) = match digits.split_once(':') {
        Some((h, m)) if (1..=2).contains(&h.len()) && m.len() == 2 => (h, m),
        Some(_) => return Some(Err(bad())),
        None if (1..=2).contains(&digits.len()) => (digits, "00"),
        None if digits.len() == 4 => digits.split_at(2),
        None => return Some(Err(bad())),
    };
    if !hours
        .bytes()
        .chain(minutes.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Some(Err(bad()));
    }
    let (Ok(hours), Ok(minutes)) = (hours.parse::<i32>(), minutes.parse::<i32>()) else {
        return Some(Err(bad()));
    };
    let total = hours * 60 + minutes;
    if minutes >= 60 || total > MAX_OFFSET_MINUTES {
        return Some(Err(bad()));
    }
    Some(Ok(sign * total))
}

/// Weekly windows in which a rule applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Covered minutes of the week from Monday 00:00 wall time: half-open, sorted, merged, none
    /// empty. Kept canonical so that equality means "covers the same minutes".
    ranges: Vec<(u32, u32)>,
}

impl Schedule {
    /// Parses the text form, e.g. "mon-fri 09:00-18:00", "mon-fri 09:00-13:00,14:00-18:00; sat
    /// 10:00-14:00", "daily 22:00-06:00", "sun", "sat-sun", "mon,wed,fri 08:00-12:00" (see the
    /// module docs). Errors quote the `;`-separated part at fault.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(ScheduleError::TooLong {
                len: text.len(),
                max: MAX_TEXT_BYTES,
            });
        }
        if text.trim().is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut pieces = Vec::new();
        for part in text.split(';') {
            let part = part.trim();
            if part.is_empty() {
                return Err(ScheduleError::EmptyPart {
                    text: text.trim().to_owned(),
                });
            }
            let (days, windows) = parse_part(part)?;
            for day in (0..7u32).filter(|d| days & (1 << d) != 0) {
                for &(start, end) in &windows {
                    let len = if end > start {
                        end - start
                    } else {
                        DAY - start + end
                    };
                    pieces.push((day * DAY + start, len));
                }
            }
        }
        Ok(Schedule::from_pieces(pieces))
    }

    /// Whether `at` falls inside a window, in time zone `tz`. Instants outside the years
    /// -9999..=9999 fall in none.
    pub fn is_active(&self, at: SystemTime, tz: &TimeZone) -> bool {
        Timestamp::try_from(at).is_ok_and(|at| self.active_at(at, tz))
    }

    /// The next instant after `at` at which `is_active` changes value: the first instant of the
    /// new value. `None` if it never changes (always or never active) or the change lies beyond
    /// the year 9999.
    pub fn next_change(&self, at: SystemTime, tz: &TimeZone) -> Option<SystemTime> {
        if self.ranges.is_empty() || self.ranges == [(0, WEEK)] {
            return None;
        }
        let changes = self.change_minutes();
        let mut now = Timestamp::try_from(at).ok()?;
        let state = self.active_at(now, tz);
        // Between two tz transitions the wall clock runs with real time, so the next change is
        // the next window edge on the wall clock unless a transition comes first and jumps over
        // it; then the value right after the jump decides.
        for _ in 0..MAX_SEGMENTS {
            let position = tz.week_nanos(now);
            let edge = next_edge(&changes, position);
            let candidate = now
                .checked_add(SignedDuration::from_nanos(edge - position))
                .ok()?;
            match tz.zone.following(now).next().map(|t| t.timestamp()) {
                Some(jump) if jump <= candidate => {
                    now = jump;
                    if self.active_at(now, tz) != state {
                        return SystemTime::try_from(now).ok();
                    }
                }
                _ => return SystemTime::try_from(candidate).ok(),
            }
        }
        None
    }

    fn active_at(&self, at: Timestamp, tz: &TimeZone) -> bool {
        let minute = tz.week_nanos(at) / NANOS_PER_MINUTE;
        // week_nanos is within one week, so the minute fits.
        self.covers(u32::try_from(minute).unwrap_or(0))
    }

    fn covers(&self, minute: u32) -> bool {
        let after = self.ranges.partition_point(|&(start, _)| start <= minute);
        after > 0 && minute < self.ranges[after - 1].1
    }

    /// Builds the canonical form from (start minute of the week, length) pieces, each shorter
    /// than a week; pieces may run past Sunday 24:00 and wrap to Monday.
    fn from_pieces(pieces: Vec<(u32, u32)>) -> Schedule {
        let mut linear = Vec::with_capacity(pieces.len() + 1);
        for (start, len) in pieces {
            let end = start + len;
            if end <= WEEK {
                linear.push((start, end));
            } else {
                linear.push((start, WEEK));
                linear.push((0, end - WEEK));
            }
        }
        linear.sort_unstable();
        let mut ranges: Vec<(u32, u32)> = Vec::with_capacity(linear.len());
        for (start, end) in linear {
            match ranges.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => ranges.push((start, end)),
            }
        }
        Schedule { ranges }
    }

    /// Minutes of the week at which coverage starts or stops, sorted. The Sunday/Monday seam is
    /// one only when coverage differs on either side of it.
    fn change_minutes(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .ranges
            .iter()
            .flat_map(|&(start, end)| [start, end % WEEK])
            .filter(|&m| self.covers(m) != self.covers((m + WEEK - 1) % WEEK))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Covered stretches as (start, length), with one that runs over the Sunday/Monday seam
    /// joined into one.
    fn circular(&self) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = self.ranges.iter().map(|&(s, e)| (s, e - s)).collect();
        if out.len() > 1 && self.ranges[0].0 == 0 && self.ranges[self.ranges.len() - 1].1 == WEEK {
            let first = out.remove(0);
            if let Some(last) = out.last_mut() {
                last.1 += first.1;
            }
        }
        out
    }

    /// Windows per day (Monday first) as written in canonical text: (start, end) minutes of the
    /// day, an end not after the start crossing midnight, `(0, DAY)` for a whole day.
    fn day_windows(&self) -> [Vec<(u32, u32)>; 7] {
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        for (start, len) in self.circular() {
            let mut at = start;
            let mut left = len;
            while left > 0 {
                let day = ((at / DAY) % 7) as usize;
                let offset = at % DAY;
                let (end, used) = if offset + left <= DAY {
                    (offset + left, left)
                } else if left < DAY {
                    // Crosses midnight and ends before the start time: one window of the day
                    // it starts on, as a person would write it.
                    (offset + left - DAY, left)
                } else {
                    (DAY, DAY - offset)
                };
                days[day].push((offset, end));
                at = (at + used) % WEEK;
                left -= used;
            }
        }
        for windows in &mut days {
            windows.sort_unstable();
        }
        days
    }
}

impl fmt::Display for Schedule {
    /// Canonical text: days with the same windows grouped, in week order from Monday.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges == [(0, WEEK)] {
            return f.write_str("daily");
        }
        let days = self.day_windows();
        let mut done = 0u8;
        let mut first = true;
        for day in 0..7 {
            if days[day].is_empty() || done & (1 << day) != 0 {
                continue;
            }
            let mask = (day..7)
                .filter(|&d| days[d] == days[day])
                .fold(0u8, |mask, d| mask | 1 << d);
            done |= mask;
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write_days(f, mask)?;
            if days[day] != [(0, DAY)] {
                for (i, &(start, end)) in days[day].iter().enumerate() {
                    let sep = if i == 0 { ' ' } else { ',' };
                    write!(f, "{sep}{}-{}", Clock(start), Clock(end))?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Schedule, ScheduleError> {
        Schedule::parse(text)
    }
}

/// Minutes of a day shown as `HH:MM`.
struct Clock(u32);

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// Writes a day set as runs: `daily`, `mon-fri`, `mon,wed`, `fri-mon` (a run may wrap).
fn write_days(f: &mut fmt::Formatter<'_>, mask: u8) -> fmt::Result {
    if mask == ALL_DAYS {
        return f.write_str("daily");
    }
    let has = |d: u32| mask & (1 << (d % 7)) != 0;
    let mut first = true;
    for start in (0..7).filter(|&d| has(d) && !has(d + 6)) {
        let mut end = start;
        while has(end + 1) {
            end += 1;
        }
        if !first {
            f.write_str(",")?;
        }
        first = false;
        f.write_str(DAY_NAMES[start as usize].0)?;
        if end != start {
            write!(f, "-{}", DAY_NAMES[(end % 7) as usize].0)?;
        }
    }
    Ok(())
}

/// Nanoseconds-of-week position of the first change minute strictly after `position`; past
/// the last one it is the first one of the next week.
fn next_edge(changes: &[u32], position: i64) -> i64 {
    let minute_nanos = |m: u32| i64::from(m) * NANOS_PER_MINUTE;
    changes
        .iter()
        .map(|&m| minute_nanos(m))
        .find(|&edge| edge > position)
        .unwrap_or_else(|| minute_nanos(changes.first().copied().unwrap_or(0) + WEEK))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Time(&'a str),
    Dash,
    Comma,
}

impl Token<'_> {
    fn describe(token: Option<&Token<'_>>) -> String {
        match token {
            None => "end of text".to_owned(),
            Some(Token::Word(text) | Token::Time(text)) => format!("{text:?}"),
            Some(Token::Dash) => "\"-\"".to_owned(),
            Some(Token::Comma) => "\",\"".to_owned(),
        }
    }
}

fn tokenize(part: &str) -> Result<Vec<Token<'_>>, ScheduleError> {
    let mut tokens = Vec::new();
    let mut rest = part;
    while let Some(c) = rest.chars().next() {
        let run = |pred: fn(char) -> bool| rest.find(|c: char| !pred(c)).unwrap_or(rest.len());
        let len = if c.is_whitespace() {
            c.len_utf8()
        } else if c.is_ascii_alphabetic() {
            let len = run(|c| c.is_ascii_alphabetic());
            tokens.push(Token::Word(&rest[..len]));
            len
        } else if c.is_ascii_digit() || c == ':' {
            let len = run(|c| c.is_ascii_digit() || c == ':');
            tokens.push(Token::Time(&rest[..len]));
            len
        } else if c == '-' || c == '\u{2013}' {
            // An en dash, as word processors and wikis turn "-" into.
            tokens.push(Token::Dash);
            c.len_utf8()
        } else if c == ',' {
            tokens.push(Token::Comma);
            c.len_utf8()
        } else {
            return Err(ScheduleError::Syntax {
                part: part.to_owned(),
                found: format!("{c:?}"),
                expected: "day names, HH:MM-HH:MM windows, '-', ',' or ';'",
            });
        };
        rest = &rest[len..];
    }
    Ok(tokens)
}

/// One `;`-separated part: (day bit set, Monday = bit 0; windows as minutes of the day).
fn parse_part(part: &str) -> Result<(u8, Vec<(u32, u32)>), ScheduleError> {
    let tokens = tokenize(part)?;
    let mut at = 0;
    let syntax = |at: usize, expected: &'static str| ScheduleError::Syntax {
        part: part.to_owned(),
        found: Token::describe(tokens.get(at)),
        expected,
    };
    let day = |word: &str| -> Result<u8, ScheduleError> {
        DAY_NAMES
            .iter()
            .position(|(short, long)| {
                word.eq_ignore_ascii_case(short) || word.eq_ignore_ascii_case(long)
            })
            .map(|d| 1 << d)
            .ok_or_else(|| ScheduleError::UnknownDay {
                part: part.to_owned(),
                day: word.to_owned(),
            })
    };

    let mut days = 0u8;
    loop {
        let Some(Token::Word(first)) = tokens.get(at) else {
            if at == 0 && matches!(tokens.first(), Some(Token::Time(_))) {
                return Err(ScheduleError::MissingDays {
                    part: part.to_owned(),
                });
            }
            return Err(syntax(at, "a day name"));
        };
        at += 1;
        if first.eq_ignore_ascii_case("daily") {
            if tokens.get(at) == Some(&Token::Dash) {
                return Err(syntax(
                    at,
                    "',' or times after daily (it is not a range end)",
                ));
            }
            days = ALL_DAYS;
        } else if tokens.get(at) == Some(&Token::Dash) {
            let Some(Token::Word(last)) = tokens.get(at + 1) else {
                return Err(syntax(at + 1, "a day name after '-'"));
            };
            at += 2;
            let (from, to) = (day(first)?.trailing_zeros(), day(last)?.trailing_zeros());
            // A range may wrap over the week's end: fri-mon.
            let count = (to + 7 - from) % 7 + 1;
            for d in from..from + count {
                days |= 1 << (d % 7);
            }
        } else {
            days |= day(first)?;
        }
        match tokens.get(at) {
            Some(Token::Comma) => at += 1,
            None | Some(Token::Time(_)) => break,
            Some(_) => return Err(syntax(at, "',' and another day, or times")),
        }
    }

    let mut windows = Vec::new();
    if at == tokens.len() {
        windows.push((0, DAY));
    }
    while at < tokens.len() {
        let Some(Token::Time(start_text)) = tokens.get(at) else {
            return Err(syntax(at, "a window like 09:00-18:00"));
        };
        if tokens.get(at + 1) != Some(&Token::Dash) {
            return Err(syntax(at + 1, "'-' and the end of the window"));
        }
        let Some(Token::Time(end_text)) = tokens.get(at + 2) else {
            return Err(syntax(at + 2, "the end time of the window"));
        };
        let time = |text: &str| {
            parse_clock(text).ok_or_else(|| ScheduleError::BadTime {
                part: part.to_owned(),
                time: text.to_owned(),
            })
        };
        let (start, end) = (time(start_text)?, time(end_text)?);
        let window = || format!("{start_text}-{end_text}");
        if start == DAY {
            return Err(ScheduleError::StartsAt24 {
                part: part.to_owned(),
                window: window(),
            });
        }
        if start == end {
            return Err(ScheduleError::EmptyWindow {
                part: part.to_owned(),
                window: window(),
            });
        }
        windows.push((start, end));
        at += 3;
        match tokens.get(at) {
            None => {}
            Some(Token::Comma) if at + 1 < tokens.len() => at += 1,
            Some(_) => return Err(syntax(at, "',' and another window, or ';' and other days")),
        }
    }
    Ok((days, windows))
}

/// `H:MM` or `HH:MM` from 00:00 to 24:00 as minutes of the day.
fn parse_clock(text: &str) -> Option<u32> {
    let (hours, minutes) = text.split_once(':')?;
    if !(1..=2).contains(&hours.len()) || minutes.len() != 2 {
        return None;
    }
    // The lexer let ':' through inside the digits; a second one fails here.
    let hours: u32 = hours.parse().ok()?;
    let minutes: u32 = minutes.parse().ok()?;
    let total = hours * 60 + minutes;
    (minutes < 60 && total <= DAY).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule(text: &str) -> Schedule {
        Schedule::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::parse(name).unwrap_or_else(|e| panic!("{name:?}: {e}"))
    }

    /// An instant from RFC 3339 text with an offset, e.g. `2026-03-29T03:00+02:00`.
    fn instant(text: &str) -> SystemTime {
        let ts: Timestamp = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        SystemTime::try_from(ts).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn show(at: Option<SystemTime>) -> String {
        at.map_or("never".to_owned(), |at| {
            Timestamp::try_from(at).map_or("out of range".to_owned(), |ts| ts.to_string())
        })
    }

    #[test]
    fn good_text_has_one_canonical_form() {
        let table = [
            ("mon-fri 09:00-18:00", "mon-fri 09:00-18:00"),
            ("  MON - Fri   9:00 -18:00 ", "mon-fri 09:00-18:00"),
            ("Monday-Friday 09:00-18:00", "mon-fri 09:00-18:00"),
            ("mon\u{2013}fri 09:00\u{2013}18:00", "mon-fri 09:00-18:00"),
            (
                "mon-fri 09:00-13:00,14:00-18:00; sat 10:00-14:00",
                "mon-fri 09:00-13:00,14:00-18:00; sat 10:00-14:00",
            ),
            (
                "mon-fri 09:00-13:00 , 14:00-18:00;sat 10:00-14:00",
                "mon-fri 09:00-13:00,14:00-18:00; sat 10:00-14:00",
            ),
            ("daily 22:00-06:00", "daily 22:00-06:00"),
            ("sun", "sun"),
            ("SUNDAY", "sun"),
            ("sat-sun", "sat-sun"),
            ("saturday, sunday", "sat-sun"),
            ("mon,wed,fri 08:00-12:00", "mon,wed,fri 08:00-12:00"),
            ("fri-mon", "fri-mon"),
            ("fri-mon 10:00-11:00", "fri-mon 10:00-11:00"),
            ("mon-wed,fri", "mon-wed,fri"),
            ("mon-sun", "daily"),
            ("daily", "daily"),
            ("daily 00:00-24:00", "daily"),
            ("sun-sat", "daily"),
            ("wed-wed", "wed"),
            ("mon 18:00-24:00", "mon 18:00-24:00"),
            ("mon 00:00-01:00", "mon 00:00-01:00"),
            ("mon 22:00-00:00", "mon 22:00-24:00"),
            ("fri 22:00-06:00", "fri 22:00-06:00"),
            ("fri 22:00-24:00; sat 00:00-06:00", "fri 22:00-06:00"),
            ("sun 22:00-06:00", "sun 22:00-06:00"),
            ("mon 00:00-06:00; sun 22:00-24:00", "sun 22:00-06:00"),
            ("mon 09:00-12:00,11:00-14:00", "mon 09:00-14:00"),
            ("mon 09:00-12:00,12:00-14:00", "mon 09:00-14:00"),
            ("fri 22:00-06:00; sat", "fri 22:00-24:00; sat"),
            ("sat 20:00-02:00; sun 20:00-02:00", "sat-sun 20:00-02:00"),
            (
                "daily 22:00-06:00; mon 12:00-13:00",
                "mon 12:00-13:00,22:00-06:00; tue-sun 22:00-06:00",
            ),
            ("mon 01:00-24:00; tue-sun", "mon 01:00-24:00; tue-sun"),
            ("sat; sun 00:00-06:00", "sat; sun 00:00-06:00"),
            ("fri 00:00-06:00,22:00-02:00", "fri 00:00-06:00,22:00-02:00"),
            ("tue 18:00-24:00; wed 00:00-09:00", "tue 18:00-09:00"),
            ("mon 12:00-11:00", "mon 12:00-11:00"),
        ];
        for (text, canonical) in table {
            let parsed = schedule(text);
            assert_eq!(parsed.to_string(), canonical, "{text:?}");
            assert_eq!(schedule(canonical), parsed, "{text:?} round trip");
            assert_eq!(
                text.parse::<Schedule>().ok(),
                Some(parsed),
                "{text:?} FromStr"
            );
        }
    }

    #[test]
    fn bad_text_is_refused_with_the_bad_part_quoted() {
        let table = [
            ("", "empty schedule"),
            ("   ", "empty schedule"),
            ("mon;", "empty part between ';'"),
            ("; mon", "empty part between ';'"),
            ("someday", "\"someday\": unknown day \"someday\""),
            (
                "mon-fri 09:00-18:00; tues 10:00-11:00",
                "\"tues 10:00-11:00\": unknown day \"tues\"",
            ),
            ("mon-fry", "unknown day \"fry\""),
            ("09:00-18:00", "\"09:00-18:00\": no days before the times"),
            ("mon 25:00-26:00", "\"mon 25:00-26:00\": bad time \"25:00\""),
            ("mon 09:00-24:01", "bad time \"24:01\""),
            ("mon 9-18", "bad time \"9\""),
            ("mon 0900-1800", "bad time \"0900\""),
            ("mon 09:60-10:00", "bad time \"09:60\""),
            ("mon 09:00:00-10:00", "bad time \"09:00:00\""),
            ("mon 9:5-10:00", "bad time \"9:5\""),
            ("mon 24:00-06:00", "window \"24:00-06:00\" starts at 24:00"),
            ("mon 09:00-09:00", "window \"09:00-09:00\" is empty"),
            ("mon 09:00", "unexpected end of text, expected '-'"),
            (
                "mon 09:00-",
                "unexpected end of text, expected the end time",
            ),
            ("mon 09:00 18:00", "unexpected \"18:00\", expected '-'"),
            (
                "mon 09:00-10:00,",
                "unexpected \",\", expected ',' and another window",
            ),
            (
                "mon 09:00-10:00 tue",
                "unexpected \"tue\", expected ',' and another window",
            ),
            (
                "mon tue",
                "unexpected \"tue\", expected ',' and another day",
            ),
            ("mon,", "unexpected end of text, expected a day name"),
            (
                "mon, 09:00-10:00",
                "unexpected \"09:00\", expected a day name",
            ),
            (
                "mon-",
                "unexpected end of text, expected a day name after '-'",
            ),
            (
                "daily-fri",
                "unexpected \"-\", expected ',' or times after daily",
            ),
            ("-mon", "unexpected \"-\", expected a day name"),
            ("mon 09:00-10:00 # note", "unexpected '#'"),
            ("пн 09:00-10:00", "unexpected 'п'"),
        ];
        for (text, message) in table {
            match Schedule::parse(text) {
                Ok(parsed) => panic!("{text:?} parsed as {parsed}"),
                Err(e) => assert!(e.to_string().contains(message), "{text:?}: {e}"),
            }
        }
        let long = "mon 09:00-10:00,".repeat(100);
        assert!(matches!(
            Schedule::parse(&long),
            Err(ScheduleError::TooLong { max: 1024, .. })
        ));
    }

    #[test]
    fn time_zones_by_name_and_offset() {
        let table = [
            ("UTC", "UTC"),
            ("utc", "UTC"),
            (" UTC ", "UTC"),
            ("UTC+0", "UTC"),
            ("UTC+3", "UTC+03:00"),
            ("utc-5", "UTC-05:00"),
            ("UTC+05:30", "UTC+05:30"),
            ("+03:00", "UTC+03:00"),
            ("+3", "UTC+03:00"),
            ("-0930", "UTC-09:30"),
            ("+18:00", "UTC+18:00"),
            ("Europe/Moscow", "Europe/Moscow"),
            ("europe/berlin", "Europe/Berlin"),
            ("Etc/GMT-3", "Etc/GMT-3"),
        ];
        for (text, name) in table {
            assert_eq!(zone(text).name(), name, "{text:?}");
        }
        assert_eq!(TimeZone::utc().name(), "UTC");
        let local = zone("local");
        assert!(!local.name().is_empty());

        let bad = [
            ("Mars/Olympus", "unknown time zone \"Mars/Olympus\""),
            ("GMT+3", "unknown time zone \"GMT+3\""),
            ("", "unknown time zone \"\""),
            ("../../etc/passwd", "unknown time zone"),
            ("UTC+19", "bad UTC offset \"UTC+19\""),
            ("+3:5", "bad UTC offset"),
            ("+03:60", "bad UTC offset"),
            ("+123", "bad UTC offset"),
            ("UTC+", "bad UTC offset"),
            ("+x3", "bad UTC offset"),
        ];
        for (text, message) in bad {
            match TimeZone::parse(text) {
                Ok(tz) => panic!("{text:?} parsed as {}", tz.name()),
                Err(e) => assert!(e.to_string().contains(message), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn windows_start_inclusive_end_exclusive() {
        let utc = TimeZone::utc();
        // 2026-03-02 is a Monday.
        let table = [
            (
                "mon-fri 09:00-18:00",
                "2026-03-02T08:59:59.999999999Z",
                false,
            ),
            ("mon-fri 09:00-18:00", "2026-03-02T09:00:00Z", true),
            (
                "mon-fri 09:00-18:00",
                "2026-03-02T17:59:59.999999999Z",
                true,
            ),
            ("mon-fri 09:00-18:00", "2026-03-02T18:00:00Z", false),
            ("mon-fri 09:00-18:00", "2026-03-07T10:00:00Z", false),
            (
                "mon-fri 09:00-13:00,14:00-18:00",
                "2026-03-03T13:30:00Z",
                false,
            ),
            (
                "mon-fri 09:00-13:00,14:00-18:00",
                "2026-03-03T14:00:00Z",
                true,
            ),
            ("mon 18:00-24:00", "2026-03-02T23:59:59Z", true),
            ("mon 18:00-24:00", "2026-03-03T00:00:00Z", false),
            // Crossing midnight: the window belongs to the day it starts on.
            ("fri 22:00-06:00", "2026-03-06T21:59:59Z", false),
            ("fri 22:00-06:00", "2026-03-06T22:00:00Z", true),
            ("fri 22:00-06:00", "2026-03-07T05:59:59Z", true),
            ("fri 22:00-06:00", "2026-03-07T06:00:00Z", false),
            ("fri 22:00-06:00", "2026-03-06T05:00:00Z", false),
            // Sunday night runs into Monday morning of the next week.
            ("sun 22:00-06:00", "2026-03-08T22:00:00Z", true),
            ("sun 22:00-06:00", "2026-03-09T05:59:00Z", true),
            ("sun 22:00-06:00", "2026-03-09T06:00:00Z", false),
            ("sun 22:00-06:00", "2026-03-02T05:00:00Z", true),
            ("sun 22:00-06:00", "2026-03-08T05:00:00Z", false),
            ("daily 22:00-06:00", "2026-03-04T03:00:00Z", true),
            ("daily 22:00-06:00", "2026-03-04T12:00:00Z", false),
            // Whole days.
            ("sat-sun", "2026-03-06T23:59:59Z", false),
            ("sat-sun", "2026-03-07T00:00:00Z", true),
            ("sat-sun", "2026-03-08T23:59:59Z", true),
            ("sat-sun", "2026-03-09T00:00:00Z", false),
            ("fri-mon", "2026-03-09T12:00:00Z", true),
            ("fri-mon", "2026-03-10T12:00:00Z", false),
            ("daily", "2026-03-10T12:00:00Z", true),
        ];
        for (text, at, active) in table {
            assert_eq!(
                schedule(text).is_active(instant(at), &utc),
                active,
                "{text:?} at {at}"
            );
        }
    }

    #[test]
    fn zones_shift_the_wall_clock() {
        let hours = schedule("mon-fri 09:00-18:00");
        // 2026-03-27 is a Friday before the Berlin spring switch, 2026-03-30 the Monday after.
        let table = [
            ("Europe/Moscow", "2026-03-27T06:00:00Z", true),
            ("Europe/Moscow", "2026-03-27T05:59:59Z", false),
            ("Europe/Berlin", "2026-03-27T08:00:00Z", true),
            ("Europe/Berlin", "2026-03-27T07:59:59Z", false),
            ("Europe/Berlin", "2026-03-30T07:00:00Z", true),
            ("Europe/Berlin", "2026-03-30T06:59:59Z", false),
            ("Europe/Berlin", "2026-03-30T16:00:00Z", false),
            // Moscow keeps +03:00 all year.
            ("Europe/Moscow", "2026-03-30T06:00:00Z", true),
            ("Europe/Moscow", "2026-10-26T06:00:00Z", true),
            ("Europe/Moscow", "2026-10-26T05:59:59Z", false),
            // Berlin is back on +01:00 after 25 October.
            ("Europe/Berlin", "2026-10-23T07:00:00Z", true),
            ("Europe/Berlin", "2026-10-26T07:00:00Z", false),
            ("Europe/Berlin", "2026-10-26T08:00:00Z", true),
            ("UTC+3", "2026-03-27T06:00:00Z", true),
            ("+03:00", "2026-03-27T05:59:59Z", false),
            ("UTC-05:30", "2026-03-27T14:30:00Z", true),
            ("UTC-05:30", "2026-03-27T14:29:00Z", false),
            // 09:00 Friday in UTC+14 is still Thursday in UTC.
            ("UTC+14", "2026-03-26T19:00:00Z", true),
        ];
        for (tz, at, active) in table {
            assert_eq!(
                hours.is_active(instant(at), &zone(tz)),
                active,
                "{tz} at {at}"
            );
        }
    }

    #[test]
    fn wall_clock_rules_across_berlin_dst_2026() {
        let berlin = zone("Europe/Berlin");
        // 29 March: 02:00 CET jumps to 03:00 CEST (01:00Z). 25 October: 03:00 CEST falls back
        // to 02:00 CET (01:00Z).
        let table = [
            // A window that starts in the gap starts when the gap ends.
            ("sun 02:30-04:00", "2026-03-29T00:59:59Z", false),
            ("sun 02:30-04:00", "2026-03-29T01:00:00Z", true),
            ("sun 02:30-04:00", "2026-03-29T01:59:59Z", true),
            ("sun 02:30-04:00", "2026-03-29T02:00:00Z", false),
            // A window wholly in the gap does not happen that day.
            ("sun 02:15-02:45", "2026-03-29T00:59:59Z", false),
            ("sun 02:15-02:45", "2026-03-29T01:00:00Z", false),
            // A window that ends in the gap ends when the gap starts.
            ("sun 01:30-02:30", "2026-03-29T00:59:59Z", true),
            ("sun 01:30-02:30", "2026-03-29T01:00:00Z", false),
            // The repeated hour is inside the window on both passes.
            ("sun 02:00-02:30", "2026-10-25T00:00:00Z", true),
            ("sun 02:00-02:30", "2026-10-25T00:30:00Z", false),
            ("sun 02:00-02:30", "2026-10-25T01:00:00Z", true),
            ("sun 02:00-02:30", "2026-10-25T01:29:59Z", true),
            ("sun 02:00-02:30", "2026-10-25T01:30:00Z", false),
            ("sun 01:00-02:30", "2026-10-25T00:45:00Z", false),
            ("sun 01:00-02:30", "2026-10-25T01:15:00Z", true),
        ];
        for (text, at, active) in table {
            assert_eq!(
                schedule(text).is_active(instant(at), &berlin),
                active,
                "{text:?} at {at}"
            );
        }
    }

    #[test]
    fn next_change_finds_each_edge() {
        // schedule | zone | from | next change ("never" for none)
        let table = [
            "mon-fri 09:00-18:00 | UTC | 2026-03-02T08:00:00Z | 2026-03-02T09:00:00Z",
            "mon-fri 09:00-18:00 | UTC | 2026-03-02T09:00:00Z | 2026-03-02T18:00:00Z",
            "mon-fri 09:00-18:00 | UTC | 2026-03-02T08:59:59.5Z | 2026-03-02T09:00:00Z",
            "mon-fri 09:00-18:00 | UTC | 2026-03-06T18:00:00Z | 2026-03-09T09:00:00Z",
            "mon-fri 09:00-18:00 | Europe/Moscow | 2026-03-02T00:00:00Z | 2026-03-02T06:00:00Z",
            "mon-fri 09:00-18:00 | UTC+05:30 | 2026-03-02T00:00:00Z | 2026-03-02T03:30:00Z",
            "sun 22:00-06:00 | UTC | 2026-03-08T23:00:00Z | 2026-03-09T06:00:00Z",
            "sun 22:00-06:00 | UTC | 2026-03-09T06:00:00Z | 2026-03-15T22:00:00Z",
            "sat-sun | UTC | 2026-03-07T10:00:00Z | 2026-03-09T00:00:00Z",
            "fri 22:00-06:00; sat | UTC | 2026-03-06T23:00:00Z | 2026-03-08T00:00:00Z",
            // Everything but one hour a week.
            "mon 01:00-24:00; tue-sun | UTC | 2026-03-03T00:00:00Z | 2026-03-09T00:00:00Z",
            "daily | UTC | 2026-03-03T00:00:00Z | never",
            "daily | Europe/Berlin | 2026-03-29T00:59:59Z | never",
            "mon-sun 00:00-24:00 | UTC | 2026-03-03T00:00:00Z | never",
            // Berlin spring forward: the gap swallows a window start, or a whole window.
            "sun 02:30-04:00 | Europe/Berlin | 2026-03-28T12:00:00Z | 2026-03-29T01:00:00Z",
            "sun 02:30-04:00 | Europe/Berlin | 2026-03-29T01:00:00Z | 2026-03-29T02:00:00Z",
            "sun 02:15-02:45 | Europe/Berlin | 2026-03-28T12:00:00Z | 2026-04-05T00:15:00Z",
            "sun 01:30-02:30 | Europe/Berlin | 2026-03-29T00:30:00Z | 2026-03-29T01:00:00Z",
            // 09:00 on the Monday after the switch is an hour earlier in UTC.
            "mon-fri 09:00-18:00 | Europe/Berlin | 2026-03-27T17:00:00Z | 2026-03-30T07:00:00Z",
            "daily 22:00-06:00 | Europe/Berlin | 2026-03-28T21:00:00Z | 2026-03-29T04:00:00Z",
            // Berlin fall back: the repeated half hour is entered twice.
            "sun 02:00-02:30 | Europe/Berlin | 2026-10-24T12:00:00Z | 2026-10-25T00:00:00Z",
            "sun 02:00-02:30 | Europe/Berlin | 2026-10-25T00:00:00Z | 2026-10-25T00:30:00Z",
            "sun 02:00-02:30 | Europe/Berlin | 2026-10-25T00:30:00Z | 2026-10-25T01:00:00Z",
            "sun 02:00-02:30 | Europe/Berlin | 2026-10-25T01:00:00Z | 2026-10-25T01:30:00Z",
            "sun 02:00-02:30 | Europe/Berlin | 2026-10-25T01:30:00Z | 2026-11-01T01:00:00Z",
            "daily 22:00-06:00 | Europe/Berlin | 2026-10-24T21:00:00Z | 2026-10-25T05:00:00Z",
            // Moscow has no switch: one +03:00 all year.
            "sun 02:00-02:30 | Europe/Moscow | 2026-10-24T12:00:00Z | 2026-10-24T23:00:00Z",
            "sun 02:00-02:30 | Europe/Moscow | 2026-10-24T23:00:00Z | 2026-10-24T23:30:00Z",
            "sun 02:00-02:30 | Europe/Moscow | 2026-10-24T23:30:00Z | 2026-10-31T23:00:00Z",
        ];
        for row in table {
            let [text, tz, from, expected] = row.split(" | ").collect::<Vec<_>>()[..] else {
                panic!("bad row {row:?}");
            };
            let (s, tz, from) = (schedule(text), zone(tz), instant(from));
            let next = s.next_change(from, &tz);
            let expected = (expected != "never").then(|| instant(expected));
            assert_eq!(show(next), show(expected), "{row:?}");
            if let Some(next) = next {
                assert_ne!(s.is_active(next, &tz), s.is_active(from, &tz), "{row:?}");
            }
        }
    }

    #[test]
    fn instants_out_of_range_are_never_active() {
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(400 * 365 * 86_400 * 100);
        let s = schedule("daily");
        assert!(!s.is_active(far, &TimeZone::utc()));
        assert_eq!(s.next_change(far, &TimeZone::utc()), None);
        assert_eq!(schedule("mon").next_change(far, &TimeZone::utc()), None);
    }

    fn schedule_text() -> impl Strategy<Value = String> {
        let window = (0u32..=DAY, 0u32..=DAY)
            .prop_filter("a window must not be empty", |(s, e)| s != e && *s != DAY)
            .prop_map(|(s, e)| format!("{}-{}", Clock(s), Clock(e)));
        let part =
            (1u8..=ALL_DAYS, prop::collection::vec(window, 0..3)).prop_map(|(mask, windows)| {
                let days: Vec<&str> = (0..7)
                    .filter(|d| mask & (1 << d) != 0)
                    .map(|d| DAY_NAMES[d].0)
                    .collect();
                format!("{} {}", days.join(","), windows.join(","))
            });
        prop::collection::vec(part, 1..4).prop_map(|parts| parts.join("; "))
    }

    fn zone_name() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "UTC",
            "UTC+05:30",
            "-09:30",
            "Europe/Berlin",
            "Europe/Moscow",
            "America/New_York",
            // Half-hour DST shift.
            "Australia/Lord_Howe",
            // DST switch at midnight.
            "America/Santiago",
        ])
    }

    /// Instants in 2025-2027, and some within days of the 2026 Berlin and New York switches.
    fn instant_nanos() -> impl Strategy<Value = i128> {
        const SECOND: i128 = 1_000_000_000;
        let switches = [
            1_774_746_000i128, // 2026-03-29T01:00Z
            1_792_890_000,     // 2026-10-25T01:00Z
            1_773_558_000,     // 2026-03-08T07:00Z
            1_793_512_800,     // 2026-11-01T06:00Z
        ];
        prop_oneof![
            (1_735_689_600i128 * SECOND)..(1_830_297_600i128 * SECOND),
            (
                prop::sample::select(switches.to_vec()),
                -4 * 86_400 * SECOND..4 * 86_400 * SECOND
            )
                .prop_map(|(switch, delta)| switch * SECOND + delta),
        ]
    }

    fn system_time(nanos: i128) -> SystemTime {
        let ts = Timestamp::from_nanosecond(nanos).expect("in range");
        SystemTime::try_from(ts).expect("in range")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn display_round_trips(text in schedule_text()) {
            let parsed = schedule(&text);
            let canonical = parsed.to_string();
            prop_assert_eq!(schedule(&canonical), parsed, "{:?} -> {:?}", text, canonical);
            prop_assert_eq!(schedule(&canonical).to_string(), canonical);
        }

        #[test]
        fn is_active_holds_until_next_change_then_flips(
            text in schedule_text(),
            tz in zone_name(),
            at in instant_nanos(),
            samples in prop::collection::vec(0.0f64..1.0, 4),
        ) {
            let (s, tz) = (schedule(&text), zone(tz));
            let from = system_time(at);
            let state = s.is_active(from, &tz);
            let Some(next) = s.next_change(from, &tz) else {
                let week = 7 * 86_400 * 1_000_000_000i128;
                for k in 1..=14 {
                    prop_assert_eq!(s.is_active(system_time(at + k * week / 2), &tz), state);
                }
                return Ok(());
            };
            let end = Timestamp::try_from(next).expect("in range").as_nanosecond();
            prop_assert!(end > at, "{} not after {}", show(Some(next)), show(Some(from)));
            prop_assert_ne!(s.is_active(next, &tz), state, "no flip at {}", show(Some(next)));
            let span = (end - at) as f64;
            for f in samples {
                let probe = at + (span * f) as i128;
                prop_assert_eq!(s.is_active(system_time(probe.min(end - 1)), &tz), state);
            }
            prop_assert_eq!(s.is_active(system_time(end - 1), &tz), state);
            // Edges and transitions fall on whole UTC minutes in these zones and years, so
            // checking every minute boundary in between misses no change.
            const MINUTE: i128 = 60_000_000_000;
            let mut probe = (at / MINUTE + 1) * MINUTE;
            while probe < end {
                prop_assert_eq!(
                    s.is_active(system_time(probe), &tz),
                    state,
                    "change at {} before {}",
                    show(Some(system_time(probe))),
                    show(Some(next))
                );
                probe += MINUTE;
            }
        }
    }
}
