#![no_main]
//! See `wxgate::fuzzing::config` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wxgate::fuzzing::config(data);
});
