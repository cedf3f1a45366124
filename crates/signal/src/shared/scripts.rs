//! The Lua scripts that decide everything shared between instances (see `lua/prelude.lua`
//! for the keys). Each is the prelude plus its own body; redis-rs runs them by digest and
//! loads them again when Redis has forgotten them (a restart).

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| Script::new(concat!(include_str!("lua/prelude.lua"), include_str!($file))))
    };
}

pub(super) static CHECK: LazyLock<Script> = script!("lua/check.lua");
pub(super) static RESERVE: LazyLock<Script> = script!("lua/reserve.lua");
pub(super) static UNRESERVE: LazyLock<Script> = script!("lua/unreserve.lua");
pub(super) static JOIN: LazyLock<Script> = script!("lua/join.lua");
pub(super) static RESUME: LazyLock<Script> = script!("lua/resume.lua");
pub(super) static MESSAGE: LazyLock<Script> = script!("lua/message.lua");
pub(super) static ENDED: LazyLock<Script> = script!("lua/ended.lua");
pub(super) static KICK: LazyLock<Script> = script!("lua/kick.lua");
pub(super) static SWEEP: LazyLock<Script> = script!("lua/sweep.lua");
pub(super) static REATTACH: LazyLock<Script> = script!("lua/reattach.lua");
