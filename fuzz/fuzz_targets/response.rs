#![no_main]
//! See `wxgate::fuzzing::response` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wxgate::fuzzing::response(data);
});
