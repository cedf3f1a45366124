//! kill -9 of the whole process mid-call, then a restart on the same state and ports: the
//! TURN client finds its allocation gone (437) and allocates again with the same
//! credentials (the secret survives in the state directory); the signaling peers' resume
//! is refused with 410 `resume-expired` (rooms live in memory) and they join afresh.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::json;
use test_support::ws::WsClient;
use test_support::{CallboxProcess, TurnClient};

use super::relay_faults::Peer;
use super::{Ctx, Figures};

const TURN_PORT: u16 = 23478;
const SIGNAL: &str = "127.0.0.1:23480";

fn config() -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:{TURN_PORT}\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\n\
         relay_port_min = 25300\nrelay_port_max = 25399\nallow_peers = [\"127.0.0.1/32\"]\n"
    )
}

fn relayed(c: &mut TurnClient, peer: &Peer, n: usize) -> usize {
    for i in 0..n {
        c.send_channel_data(0x4000, format!("p{i}").as_bytes());
    }
    peer.count()
}

pub fn run(ctx: &Ctx) -> Figures {
    let mut f = Figures::default();
    let env = [("CALLBOX_SIGNAL__LISTEN", "\"127.0.0.1:23480\"")];
    let rounds = ctx.pick(2, 10);
    let mut server = CallboxProcess::start_with(&ctx.bin, &config(), &[], &env);
    let signal: SocketAddr = SIGNAL.parse().unwrap();
    let peer = Peer::new();
    let peer_addr = peer.addr();
    let mut c = server.turn_client("restart");
    let setup = |c: &mut TurnClient| {
        c.allocate().code.is_none()
            && c.create_permission(&[peer_addr]).code.is_none()
            && c.channel_bind(0x4000, peer_addr).code.is_none()
    };
    f.check(setup(&mut c), || "the first allocation failed".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let join = |room: &str| {
        rt.block_on(async {
            let a = WsClient::connect(signal, &format!("room={room}"), &[])
                .await
                .ok()?;
            let b = WsClient::connect(signal, &format!("room={room}"), &[])
                .await
                .ok()?;
            Some((a, b))
        })
    };
    let Some((mut a, mut b)) = join("restart") else {
        f.check(false, || "the first join failed".into());
        return f;
    };
    let mut ready_ms = Vec::new();
    let mut turn_back_ms = Vec::new();
    let mut codes = Vec::new();
    for round in 0..rounds {
        f.check(relayed(&mut c, &peer, 20) == 20, || {
            format!("round {round}: no relay before the kill")
        });
        let token = a.resume_token();
        let dir = server.kill9();
        let t0 = Instant::now();
        server = CallboxProcess::start_in(&ctx.bin, &config(), &[], &env, dir);
        ready_ms.push(t0.elapsed().as_millis());
        // TURN: the allocation is gone; the same credentials allocate again.
        let t1 = Instant::now();
        let refresh = c.refresh(600).code;
        codes.push(refresh.map_or("ok".into(), |c| c.to_string()));
        f.check(refresh == Some(437), || {
            format!("round {round}: Refresh after the restart answered {refresh:?}, not 437")
        });
        f.check(setup(&mut c), || {
            format!("round {round}: allocating again failed")
        });
        let back = relayed(&mut c, &peer, 20);
        turn_back_ms.push(t1.elapsed().as_millis());
        f.check(back == 20, || {
            format!("round {round}: {back} of 20 relayed after the restart")
        });
        // Signaling: the old sockets are dead, the resume is refused, a fresh join works.
        let resumed = rt.block_on(WsClient::connect(
            signal,
            &format!("room=restart&resume={token}"),
            &[],
        ));
        let code = resumed.as_ref().err().map(|r| (r.status, r.code().to_string()));
        f.check(code == Some((410, "resume-expired".into())), || {
            format!("round {round}: the resume got {code:?}")
        });
        drop(resumed);
        drop((a, b));
        match join("restart") {
            Some((na, nb)) => (a, b) = (na, nb),
            None => {
                f.check(false, || format!("round {round}: joining afresh failed"));
                return f;
            }
        }
        let echoed = rt.block_on(async {
            let _ = a.recv().await; // B's join
            a.send(json!({"type": "message", "data": {"round": round}})).await;
            b.recv().await.map(|m| m["data"]["round"] == round)
        });
        f.check(echoed == Some(true), || {
            format!("round {round}: no relay between the rejoined peers")
        });
    }
    f.put("restarts", rounds);
    f.put("ready_ms", format!("{ready_ms:?}").replace(' ', ""));
    f.put(
        "turn_relaying_again_ms",
        format!("{turn_back_ms:?}").replace(' ', ""),
    );
    f.put("refresh_after_restart", codes.join(","));
    f
}
