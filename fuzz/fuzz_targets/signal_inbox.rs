//! What a signaling instance reads from its inbox stream in Redis (the shared rooms' wire
//! format, written by the Lua scripts): fields and values separated by NUL bytes. Whatever
//! the stream holds, parsing gives an entry or nothing, and a text's seq is read without a
//! panic.

#![no_main]

use callbox_signal::shared::{InboxEntry, seq_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    let pairs = parts.chunks(2).filter_map(|p| match p {
        [n, v] => Some((*n, *v)),
        _ => None,
    });
    if let Some(InboxEntry::Text { text, .. }) = InboxEntry::parse(pairs) {
        let _ = seq_of(&text);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = seq_of(text);
    }
});
