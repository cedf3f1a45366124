//! HTTP/1.1 responses as `callbox admin` and the tests parse them: any bytes give a
//! response or an error, never a panic, and a chunked body never reads past its input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = callbox_core::http1::parse_response(data) {
        assert!(r.body.len() <= data.len());
        let _ = r.header("content-type");
    }
});
