//! `callguard::fuzzing::esl_reader`: see its docs for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callguard::fuzzing::esl_reader(data));
