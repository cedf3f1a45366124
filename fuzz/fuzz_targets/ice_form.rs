//! `body_params`: the POST body of `/v1/ice-servers`, a JSON object or a form. The first
//! input byte picks the content type.

#![no_main]

use callbox_signal::{MAX_BODY_BYTES, RefusalCode, body_params};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_type = match pick % 3 {
        0 => "application/json",
        1 => "application/x-www-form-urlencoded",
        _ => "",
    };
    match body_params(content_type, body) {
        Ok(params) => {
            assert!(body.len() <= MAX_BODY_BYTES);
            if body.is_empty() {
                assert!(params.is_empty());
            }
            let json = content_type == "application/json" || body.first() == Some(&b'{');
            if !json {
                // A form has at most one pair per `&`-separated part.
                assert!(params.len() <= body.iter().filter(|&&b| b == b'&').count() + 1);
            }
        }
        Err(r) => assert!(
            matches!(r.code, RefusalCode::TooLarge | RefusalCode::BadRequest),
            "{:?}",
            r.code
        ),
    }
});
