//! What the TLS side reads from outside: the first decrypted bytes of a connection on the
//! one TLS port (`sniff`, which routes it to TURN or HTTP) and certificate and key files
//! (`LoadedCert::from_pem`). The first byte splits the input between a certificate and a key.

#![no_main]

use std::path::Path;

use callbox_tls::{LoadedCert, SNIFF_BYTES, Sniff, sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A verdict, once given, stays the same as more bytes arrive, and is given by
    // SNIFF_BYTES at the latest.
    let mut decided = None;
    for end in 0..=data.len().min(2 * SNIFF_BYTES) {
        match (sniff(&data[..end]), decided) {
            (Sniff::NeedMore, None) => assert!(end < SNIFF_BYTES),
            (Sniff::NeedMore, Some(_)) => panic!("a verdict was taken back"),
            (v, None) => decided = Some(v),
            (v, Some(d)) => assert_eq!(v, d),
        }
    }
    if let Some((&split, rest)) = data.split_first() {
        let (cert, key) = rest.split_at(usize::from(split).min(rest.len()));
        let _ = LoadedCert::from_pem(Path::new("cert.pem"), cert, Path::new("key.pem"), key);
    }
});
