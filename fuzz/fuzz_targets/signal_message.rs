//! `parse_client_message`: every text frame a WebSocket client sends to the hub.

#![no_main]

use callbox_signal::protocol::{ClientMessage, parse_client_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_message(s) {
        Ok(ClientMessage::Relay { kind, object, .. }) => {
            assert!(matches!(kind, "offer" | "answer" | "candidate" | "message"));
            // The server sets these itself; a client's are never passed on.
            for k in ["to", "from", "seq"] {
                assert!(!object.contains_key(k), "{k} kept from {s:?}");
            }
            assert_eq!(object.get("type").and_then(|t| t.as_str()), Some(kind));
        }
        Ok(_) => {}
        // The refusal is shown to the client: bounded however long the input.
        Err(e) => assert!(e.len() < 512, "{} bytes of error", e.len()),
    }
});
