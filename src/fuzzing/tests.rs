//! The committed fuzz corpora and crash inputs replayed through the fuzz targets' own checks,
//! and property tests that no caller or rule text can add an AGI or ESL command or header.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

/// Every file under `tests/fuzz/corpus/<target>/` and `tests/fuzz/artifacts/<target>/`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus dir entry").path();
            if path.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn replay(target: &str) {
    let check = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .expect("known target");
    let files = inputs(target);
    assert!(
        files.len() >= 10,
        "tests/fuzz/corpus/{target} is missing or tiny"
    );
    for path in files {
        let data = std::fs::read(&path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
    }
}

#[test]
fn agi_reader_corpus_replays() {
    replay("agi_reader");
}

#[test]
fn esl_reader_corpus_replays() {
    replay("esl_reader");
}

#[test]
fn normalizer_corpus_replays() {
    replay("normalizer");
}

#[test]
fn rule_parser_corpus_replays() {
    replay("rule_parser");
}

#[test]
fn encoders_corpus_replays() {
    replay("encoders");
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        assert!(dir.join(format!("{name}.rs")).is_file(), "{name}");
    }
}

#[test]
fn chunks_cut_the_whole_stream_within_the_seed() {
    let stream: Vec<u8> = (0..=255).collect();
    assert_eq!(chunks(&stream, 0), vec![&stream[..]]);
    for seed in 1..=u8::MAX {
        let pieces = chunks(&stream, seed);
        assert_eq!(pieces.concat(), stream);
        assert!(
            pieces
                .iter()
                .all(|p| !p.is_empty() && p.len() <= usize::from(seed))
        );
    }
    assert_eq!(chunks(&stream, 1).len(), 256);
}

// ---- injection ----

/// Text that tries to end a value, a line or a command, or to be expanded, in either protocol.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just("\r\n".to_owned()),
        Just("\0".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("%0A".to_owned()),
        Just("%0D%0A".to_owned()),
        Just("%00".to_owned()),
        Just("%".to_owned()),
        Just("$".to_owned()),
        Just("${system(id)}".to_owned()),
        Just("\nHANGUP\n".to_owned()),
        Just("\" \nEXEC Dial PJSIP/evil\n".to_owned()),
        Just("\n\nexit\n\n".to_owned()),
        Just("\ncall-command: hangup\n".to_owned()),
        Just("\n\napi system reboot\n\n".to_owned()),
        Just("execute-app-name: system".to_owned()),
        Just("unload mod_event_socket".to_owned()),
        Just("MOD_EVENT_SOCKET".to_owned()),
        Just("+7 (495) 123-45-67".to_owned()),
        Just("sip:84951234567@host".to_owned()),
        Just("anonymous".to_owned()),
        Just("acme".to_owned()),
        Just("я".to_owned()),
        Just("😀".to_owned()),
        Just("\u{85}".to_owned()),
        Just("\u{2028}".to_owned()),
        Just("\u{7f}".to_owned()),
        Just("\u{fffd}".to_owned()),
        any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        any::<String>(),
        prop::collection::vec(piece.clone(), 0..24).prop_map(|p| p.concat()),
        // Long values (caps and truncation) from a repeated short pattern.
        (prop::collection::vec(piece, 1..6), 40usize..300).prop_map(|(p, n)| p.concat().repeat(n)),
    ]
}

/// Block actions, valid and not.
fn action_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("busy".to_owned()),
        Just("hangup 17".to_owned()),
        Just("playback custom/blocked".to_owned()),
        Just("redirect voicemail,s,1".to_owned()),
        Just("tag".to_owned()),
        hostile().prop_map(|t| format!("playback {t}")),
        hostile().prop_map(|t| format!("redirect {t}")),
    ]
}

// Case counts keep the debug-build run to a few seconds; the `encoders` fuzz target runs the
// same checks millions of times.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Every AGI command callguard writes with a value in it (`SET VARIABLE`, `EXEC`,
    /// `VERBOSE`, `SET CONTEXT/EXTENSION/PRIORITY`) is one command for Asterisk, the value
    /// intact or only sanitized.
    #[test]
    fn agi_values_stay_inside_one_command(value in hostile()) {
        check_agi_value(&value);
    }

    /// The outbound `sendmsg` `set` and the inbound `api uuid_setvar` stay one command with
    /// exactly their own headers, the value intact or only sanitized.
    #[test]
    fn esl_values_stay_inside_one_command(value in hostile()) {
        check_esl_value(&value);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// From the PBX's bytes to the commands written: a hostile caller ID, caller name and
    /// tenant in an AGI environment block and in ESL channel data, a block rule for that
    /// caller with a hostile reason and action; every variable and action command stays one
    /// command in both protocols.
    #[test]
    fn call_to_commands_never_adds_a_command(
        caller_id in hostile(),
        name in hostile(),
        reason in hostile(),
        tenant in prop_oneof![hostile(), Just("acme".to_owned()), Just("Acme-1.x".to_owned())],
        action in action_text(),
    ) {
        check_call_path(&caller_id, &name, &reason, &tenant, &action);
    }

    /// Same through the `encoders` fuzz target's input format.
    #[test]
    fn encoders_target_accepts_any_fields(fields in prop::collection::vec(hostile(), 0..6)) {
        let joined: Vec<u8> = fields.iter().flat_map(|f| f.bytes().chain([0xff])).collect();
        encoders(&joined);
    }
}
