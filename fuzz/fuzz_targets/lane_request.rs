#![no_main]
//! See `wxgate::fuzzing::lane_request` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wxgate::fuzzing::lane_request(data);
});
