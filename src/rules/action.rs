//! What a block rule does to a call: [`RuleAction`], its text form (`hangup 17`, `busy`,
//! `playback ss-noservice`, `redirect voicemail,s,1`, `tag`) and its checks. Protocol front
//! ends map it to their own commands; nothing here knows AGI or ESL.

use std::fmt;
use std::str::FromStr;

/// Q.850 cause for "call rejected", the default hang-up cause.
pub const CAUSE_CALL_REJECTED: u8 = 21;
/// Q.850 "normal clearing", used after a played announcement.
pub const CAUSE_NORMAL_CLEARING: u8 = 16;

/// Errors from reading an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// Not one of the action words.
    #[error(
        "{0:?}: unknown action (use hangup [CAUSE], busy, congestion, playback SOUND, redirect CONTEXT,EXTEN,PRIORITY or tag)"
    )]
    Unknown(String),
    /// A cause that is not a Q.850 code (1-127) or a known name.
    #[error("{0:?}: hang-up cause must be 1-127 or rejected, busy, unallocated, normal")]
    BadCause(String),
    /// A sound name with characters a dialplan application would misread.
    #[error("{0:?}: sound names use letters, digits and _ - . / (no '..')")]
    BadSound(String),
    /// A redirect target that is not `context,exten,priority`.
    #[error("{0:?}: redirect needs CONTEXT[,EXTEN[,PRIORITY]] of letters, digits and _ - + * # .")]
    BadTarget(String),
}

/// The action of a block rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RuleAction {
    /// Hang up with a Q.850 cause (21 rejected, 17 busy, 1 unallocated number: auto-diallers
    /// drop numbers that answer 1).
    Hangup {
        /// Q.850 cause code, 1-127.
        cause: u8,
    },
    /// Signal busy, then hang up.
    Busy,
    /// Signal congestion (all circuits busy), then hang up.
    Congestion,
    /// Answer, play a sound, then hang up.
    Playback {
        /// Sound file name as the PBX knows it (`ss-noservice`, `custom/blocked`).
        sound: String,
    },
    /// Send the call elsewhere in the dialplan (voicemail, an IVR, an operator queue).
    Redirect {
        /// Dialplan context.
        context: String,
        /// Extension in it.
        exten: String,
        /// Priority number or label.
        priority: String,
    },
    /// Let the call through but mark it (`CALLGUARD_VERDICT=tag`) so the CRM can flag it.
    Tag,
}

impl Default for RuleAction {
    fn default() -> RuleAction {
        RuleAction::Hangup {
            cause: CAUSE_CALL_REJECTED,
        }
    }
}

impl RuleAction {
    /// The first word of the text form: `hangup`, `busy`, `congestion`, `playback`, `redirect`, `tag`.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleAction::Hangup { .. } => "hangup",
            RuleAction::Busy => "busy",
            RuleAction::Congestion => "congestion",
            RuleAction::Playback { .. } => "playback",
            RuleAction::Redirect { .. } => "redirect",
            RuleAction::Tag => "tag",
        }
    }
}

impl FromStr for RuleAction {
    type Err = ActionError;

    fn from_str(text: &str) -> Result<RuleAction, ActionError> {
        let text = text.trim();
        // The separator may be a multi-byte space (U+00A0, U+0085, ...): skip its whole width.
        let (word, arg) = match text
            .char_indices()
            .find(|&(_, c)| c.is_whitespace() || c == '(' || c == ':')
        {
            Some((i, c)) => (
                &text[..i],
                text[i + c.len_utf8()..].trim().trim_end_matches(')').trim(),
            ),
            None => (text, ""),
        };
        match (word.to_ascii_lowercase().as_str(), arg) {
            ("hangup", "") => Ok(RuleAction::default()),
            ("hangup", cause) => Ok(RuleAction::Hangup {
                cause: parse_cause(cause)?,
            }),
            ("busy", "") => Ok(RuleAction::Busy),
            ("congestion", "") => Ok(RuleAction::Congestion),
            ("tag", "") => Ok(RuleAction::Tag),
            ("playback", sound) if valid_sound(sound) => Ok(RuleAction::Playback {
                sound: sound.to_owned(),
            }),
            ("playback", sound) => Err(ActionError::BadSound(sound.to_owned())),
            ("redirect", target) => parse_target(target),
            _ => Err(ActionError::Unknown(text.to_owned())),
        }
    }
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleAction::Hangup { cause } => write!(f, "hangup {cause}"),
            RuleAction::Playback { sound } => write!(f, "playback {sound}"),
            RuleAction::Redirect {
                context,
                exten,
                priority,
            } => write!(f, "redirect {context},{exten},{priority}"),
            other => f.write_str(other.kind()),
        }
    }
}

fn parse_cause(text: &str) -> Result<u8, ActionError> {
    let by_name = match text.to_ascii_lowercase().replace('-', "_").as_str() {
        "rejected" | "call_rejected" => Some(21),
        "busy" | "user_busy" => Some(17),
        "unallocated" | "unallocated_number" => Some(1),
        "normal" | "normal_clearing" => Some(16),
        _ => None,
    };
    by_name
        .or_else(|| text.parse::<u8>().ok().filter(|c| (1..=127).contains(c)))
        .ok_or_else(|| ActionError::BadCause(text.to_owned()))
}

fn valid_sound(sound: &str) -> bool {
    !sound.is_empty()
        && sound.len() <= 200
        && !sound.contains("..")
        && sound
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

fn valid_target_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 80
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '*' | '#' | '.'))
}

fn parse_target(text: &str) -> Result<RuleAction, ActionError> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let (context, exten, priority) = match parts.as_slice() {
        [context] => (*context, "s", "1"),
        [context, exten] => (*context, *exten, "1"),
        [context, exten, priority] => (*context, *exten, *priority),
        _ => return Err(ActionError::BadTarget(text.to_owned())),
    };
    if ![context, exten, priority]
        .into_iter()
        .all(valid_target_part)
    {
        return Err(ActionError::BadTarget(text.to_owned()));
    }
    Ok(RuleAction::Redirect {
        context: context.to_owned(),
        exten: exten.to_owned(),
        priority: priority.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for (input, canonical) in [
            ("hangup", "hangup 21"),
            ("Hangup 17", "hangup 17"),
            ("hangup(1)", "hangup 1"),
            ("hangup unallocated", "hangup 1"),
            ("hangup user-busy", "hangup 17"),
            ("busy", "busy"),
            ("congestion", "congestion"),
            ("tag", "tag"),
            ("playback ss-noservice", "playback ss-noservice"),
            ("playback custom/blocked", "playback custom/blocked"),
            ("redirect voicemail,s,1", "redirect voicemail,s,1"),
            ("redirect operator", "redirect operator,s,1"),
            ("redirect ivr, 100", "redirect ivr,100,1"),
            (
                "redirect from-blocked,_X.,start",
                "redirect from-blocked,_X.,start",
            ),
        ] {
            let action: RuleAction = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(action.to_string(), canonical);
            assert_eq!(canonical.parse::<RuleAction>(), Ok(action));
        }
    }

    /// Found by the `rule_parser` fuzz target: a multi-byte space after the word was cut in
    /// the middle and the parse panicked.
    #[test]
    fn any_space_separates_the_word() {
        assert_eq!(
            "hangup\u{a0}17".parse::<RuleAction>(),
            Ok(RuleAction::Hangup { cause: 17 })
        );
        assert_eq!(
            "playback\u{2003}custom/blocked".parse::<RuleAction>(),
            Ok(RuleAction::Playback {
                sound: "custom/blocked".into()
            })
        );
        assert_eq!("busy\u{85}".parse::<RuleAction>(), Ok(RuleAction::Busy));
        for input in ["%0A\u{85}%0A", "tag\u{3000}x"] {
            assert!(input.parse::<RuleAction>().is_err(), "{input:?}");
        }
    }

    #[test]
    fn unsafe_or_unknown_actions_are_refused() {
        for input in [
            "drop",
            "hangup 0",
            "hangup 300",
            "hangup soon",
            "busy now",
            "playback",
            "playback a b",
            "playback ../../etc/passwd",
            "playback x\"\nEXEC System",
            "redirect",
            "redirect a,b,c,d",
            "redirect a;b",
            "redirect ctx,\"s\",1",
        ] {
            assert!(input.parse::<RuleAction>().is_err(), "{input:?} accepted");
        }
    }
}
