//! The wall clock stepped forward and back under a running process (libfaketime, whose
//! offset file is re-read on every call; the monotonic clock is left alone, as a real
//! step leaves it): new allocations on REST credentials are judged by the stepped clock
//! (expired 2 h ahead, still valid behind), credentials minted by the stepped clock work,
//! nonces issued before a step are answered 438 and renewed, live allocations keep
//! refreshing and relaying, and nothing panics.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use callbox_core::Secret;
use callbox_core::credentials::mint;
use callbox_core::time::unix_now;
use test_support::{CallboxProcess, TurnClient};

use super::{Ctx, Figures, appliance_config};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub fn run(ctx: &Ctx) -> Figures {
    let mut f = Figures::default();
    if !Path::new(LIBFAKETIME).exists() {
        f.check(false, || {
            format!("{LIBFAKETIME} is missing: apt-get install libfaketime (.ci/run does)")
        });
        return f;
    }
    let offset_dir = tempfile::tempdir().unwrap();
    let offset = offset_dir.path().join("offset");
    let step = |secs: i64| std::fs::write(&offset, format!("{secs:+}\n")).unwrap();
    step(0);
    let offset_s = offset.to_string_lossy().into_owned();
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", offset_s.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let server = CallboxProcess::start_with(&ctx.bin, &appliance_config((25500, 25599), ""), &[], &env);
    let secret = Secret::new(server.secret());
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let client_at = |t: u64, user: &str| {
        let (u, p) = mint(&secret, user, t, 600);
        TurnClient::new(server.udp_v4(), &u, &p, "callbox")
    };
    let relays = |c: &TurnClient| {
        c.send_channel_data(0x4000, b"tick");
        let mut buf = [0u8; 64];
        peer.recv(&mut buf).is_ok()
    };
    let mut live = client_at(unix_now(), "live");
    f.check(live.allocate().code.is_none(), || {
        "the first allocation failed".into()
    });
    live.create_permission(&[peer_addr]);
    live.channel_bind(0x4000, peer_addr);
    f.check(relays(&live), || "no relay before the steps".into());

    let mut rows = Vec::new();
    for (label, secs) in [("forward_2h", 7200i64), ("back_1h", -3600), ("back_to_real", 0)] {
        step(secs);
        std::thread::sleep(Duration::from_millis(200));
        let server_now = unix_now().saturating_add_signed(secs);
        // A credential minted by the real clock, 10 minutes long: expired 2 h ahead,
        // valid behind.
        let mut real = client_at(unix_now(), &format!("real-{label}"));
        let real_code = real.allocate().code;
        // A credential minted by the server's (stepped) clock.
        let mut stepped = client_at(server_now, &format!("stepped-{label}"));
        let stepped_code = stepped.allocate().code;
        // The live allocation's next request carries a nonce from before the step.
        let refresh = live.refresh(600).code;
        let relayed = relays(&live);
        rows.push(format!(
            "{label}:real{}/stepped{}/refresh{}/relay{}",
            real_code.map_or("ok".into(), |c| c.to_string()),
            stepped_code.map_or("ok".into(), |c| c.to_string()),
            refresh.map_or("ok".into(), |c| c.to_string()),
            if relayed { "ok" } else { "LOST" }
        ));
        let real_expected = if secs > 600 { Some(401) } else { None };
        f.check(real_code == real_expected, || {
            format!(
                "{label}: a credential minted by the real clock got {real_code:?}, expected {real_expected:?}"
            )
        });
        f.check(stepped_code.is_none(), || {
            format!("{label}: a credential minted by the stepped clock got {stepped_code:?}")
        });
        f.check(relayed, || {
            format!("{label}: the live allocation stopped relaying")
        });
        // A REST expiry is checked when an allocation is made, not on its refreshes
        // (docs/turn.md; bounded by turn.max_allocation_age): the stale nonce gets 438
        // and the client's retry with the fresh one succeeds.
        f.check(refresh.is_none(), || {
            format!("{label}: the live allocation's Refresh got {refresh:?}")
        });
    }
    let out = server.output();
    f.put("steps", rows.join(","));
    f.check(!out.contains("panicked"), || "callbox panicked".into());
    f.check(
        std::fs::metadata(format!("/proc/{}", server.pid())).is_ok(),
        || "callbox died".into(),
    );
    f
}
