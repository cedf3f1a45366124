//! The client messages of PROTOCOL.md section 2, parsed and validated from a text frame
//! before the hub takes any lock, and the server's `error` message.

use serde_json::{Map, Value, json};

/// A validated client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Ping,
    IceServers,
    Leave,
    Relay {
        kind: &'static str,
        to: Option<String>,
        /// The sender's object minus `to`, `from` and `seq`.
        object: Map<String, Value>,
    },
}

/// Parses one text frame; the error is the `message` of the `bad-message` answer.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("a message is a JSON object".into());
    };
    let kind = match object.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err("`type` must be a string".into()),
        None => return Err("`type` is required".into()),
    };
    let to = match object.remove("to") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("`to` must be a string or null".into()),
    };
    object.remove("from");
    object.remove("seq");
    let string_or_null = |o: &Map<String, Value>, k: &str| -> Result<(), String> {
        match o.get(k) {
            None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
            Some(_) => Err(format!("`{k}` must be a string or null")),
        }
    };
    let kind: &'static str = match kind.as_str() {
        "ping" => return Ok(ClientMessage::Ping),
        "ice-servers" => return Ok(ClientMessage::IceServers),
        "leave" => return Ok(ClientMessage::Leave),
        "offer" | "answer" => {
            match object.get("sdp") {
                Some(Value::String(s)) if !s.is_empty() => {}
                _ => return Err("`sdp` must be a non-empty string".into()),
            }
            if kind == "offer" { "offer" } else { "answer" }
        }
        "candidate" => {
            match object.get("candidate") {
                Some(Value::String(_)) => {}
                _ => return Err("`candidate` must be a string".into()),
            }
            string_or_null(&object, "sdpMid")?;
            string_or_null(&object, "usernameFragment")?;
            match object.get("sdpMLineIndex") {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_u64().is_some() => {}
                Some(_) => return Err("`sdpMLineIndex` must be an integer >= 0 or null".into()),
            }
            "candidate"
        }
        "message" => {
            if !object.contains_key("data") {
                return Err("`data` is required".into());
            }
            "message"
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(format!("unknown type `{shown}`"));
        }
    };
    Ok(ClientMessage::Relay { kind, to, object })
}

/// The body of an `error` message with a stable `code`.
/// The `welcome` a joined or resumed connection gets first (PROTOCOL.md section 2).
pub(crate) struct Welcome<'a> {
    pub(crate) peer_id: &'a str,
    pub(crate) room: &'a str,
    /// `{"peer_id", "meta"}` of the other peers.
    pub(crate) peers: Vec<Value>,
    pub(crate) ice: (&'a Value, u64),
    pub(crate) resume_token: &'a str,
    pub(crate) heartbeat_ms: u64,
    pub(crate) resumed: bool,
}

impl Welcome<'_> {
    pub(crate) fn text(&self) -> std::sync::Arc<str> {
        std::sync::Arc::from(
            json!({
                "type": "welcome",
                "peer_id": self.peer_id,
                "room": self.room,
                "peers": self.peers,
                "ice_servers": self.ice.0,
                "ice_ttl": self.ice.1,
                "resume_token": self.resume_token,
                "heartbeat_ms": self.heartbeat_ms,
                "resumed": self.resumed,
            })
            .to_string(),
        )
    }
}

pub(crate) fn error_body(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

/// The close codes the server sends after the upgrade (PROTOCOL.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000, after `leave`.
    Left,
    /// 1003: a binary frame.
    BinaryFrame,
    /// 1009: a message over `signal.max_message_bytes`.
    TooLarge,
    /// 4000: replaced by a resumed connection (do not retry).
    Replaced,
    /// 4003: kicked or banned by admin (do not retry).
    Kicked,
    /// 4009: room closed by admin.
    RoomClosed,
    /// 4012: server draining (reconnect, with `resume`).
    Draining,
    /// 4013: too slow to read (the send buffer went over its limit).
    TooSlow,
    /// 4029: the rate limit exceeded in three consecutive windows.
    RateLimited,
    /// 4410: the resume was refused after the upgrade (it became invalid between the
    /// admission check and the join); the reason carries the refusal's code.
    ResumeRefused,
}

impl CloseCode {
    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Left => 1000,
            CloseCode::BinaryFrame => 1003,
            CloseCode::TooLarge => 1009,
            CloseCode::Replaced => 4000,
            CloseCode::Kicked => 4003,
            CloseCode::RoomClosed => 4009,
            CloseCode::Draining => 4012,
            CloseCode::TooSlow => 4013,
            CloseCode::RateLimited => 4029,
            CloseCode::ResumeRefused => 4410,
        }
    }
}

/// Why a peer left its room for good: the `reason` of `peer-left` and of its session record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaveReason {
    /// `leave`, or a close frame 1000/1001 from the client.
    Left,
    /// The resume grace ended.
    Timeout,
    /// Kicked or banned by admin, or its room closed.
    Kicked,
    /// Closed by the server for 1003, 1009, 4013 or 4029.
    Error,
}

impl LeaveReason {
    /// The word on the wire and in the session history.
    pub const fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Kicked => "kicked",
            LeaveReason::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_the_protocols() {
        let all = [
            (CloseCode::Left, 1000),
            (CloseCode::BinaryFrame, 1003),
            (CloseCode::TooLarge, 1009),
            (CloseCode::Replaced, 4000),
            (CloseCode::Kicked, 4003),
            (CloseCode::RoomClosed, 4009),
            (CloseCode::Draining, 4012),
            (CloseCode::TooSlow, 4013),
            (CloseCode::RateLimited, 4029),
            (CloseCode::ResumeRefused, 4410),
        ];
        for (c, n) in all {
            assert_eq!(c.code(), n, "{c:?}");
        }
    }

    #[test]
    fn leave_reasons_serialize_as_their_words() {
        for r in [
            LeaveReason::Left,
            LeaveReason::Timeout,
            LeaveReason::Kicked,
            LeaveReason::Error,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), Value::String(r.as_str().into()));
        }
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        for (text, why) in [
            ("", "not JSON"),
            ("[]", "a message is a JSON object"),
            ("{}", "`type` is required"),
            (r#"{"type":1}"#, "`type` must be a string"),
            (r#"{"type":"offer"}"#, "`sdp` must be a non-empty string"),
            (
                r#"{"type":"offer","sdp":"x","to":1}"#,
                "`to` must be a string or null",
            ),
            (r#"{"type":"candidate"}"#, "`candidate` must be a string"),
            (
                r#"{"type":"candidate","candidate":"","sdpMLineIndex":-1}"#,
                "`sdpMLineIndex`",
            ),
            (r#"{"type":"message"}"#, "`data` is required"),
            (r#"{"type":"nope"}"#, "unknown type `nope`"),
        ] {
            let e = parse_client_message(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        );
        let Ok(ClientMessage::Relay { kind, to, object }) =
            parse_client_message(r#"{"type":"offer","sdp":"v=0","to":"p1","from":"x","seq":3}"#)
        else {
            panic!("an offer parses");
        };
        assert_eq!((kind, to.as_deref()), ("offer", Some("p1")));
        assert!(!object.contains_key("from") && !object.contains_key("seq"));
    }
}
