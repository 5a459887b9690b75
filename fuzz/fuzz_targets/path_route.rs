#![no_main]
//! See `wxgate::fuzzing::path_and_route` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wxgate::fuzzing::path_and_route(data);
});
