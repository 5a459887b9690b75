#![no_main]
//! See `wxgate::fuzzing::return_url` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wxgate::fuzzing::return_url(data);
});
