#![no_main]
//! See `wxgate::fuzzing::wechat_json` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wxgate::fuzzing::wechat_json(data);
});
