//! `RestUsername::parse` (the USERNAME of every TURN request) on arbitrary text.

#![no_main]

use callbox_core::credentials::{RestUsername, SecretSet, long_term_key, mint, valid_user_id};
use callbox_core::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let stamp = s.split_once(':').map_or(s, |(stamp, _)| stamp);
    match RestUsername::parse(s) {
        Some(r) => {
            assert!(!stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(stamp.parse::<u64>().ok(), Some(r.expiry));
            assert_eq!(r.user, s.split_once(':').map_or("", |(_, user)| user));
        }
        None => {
            // Refused only when the stamp is not a u64 in digits.
            let digits = !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit());
            assert!(
                !digits || stamp.len() > 20 || stamp.parse::<u64>().is_err(),
                "{s:?}"
            );
        }
    }
    let _ = long_term_key(s, "callbox", s);
    let set = SecretSet::new(vec![Secret::new("s3cret"), Secret::new(s)]).unwrap();
    let _ = set.verify_password(s, s, 0);
    let _ = set.verify_password(s, s, u64::MAX);
    if valid_user_id(s) {
        let (u, p) = mint(set.signing(), s, u64::MAX - 5, 10);
        let r = RestUsername::parse(&u).expect("a minted username parses");
        assert_eq!((r.expiry, r.user), (u64::MAX, s));
        assert!(set.verify_password(&u, &p, 0));
    }
});
