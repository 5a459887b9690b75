#![no_main]
//! See `wxgate::fuzzing::cookies` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wxgate::fuzzing::cookies(data);
});
