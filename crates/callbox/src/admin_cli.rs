//! `callbox admin ...`: the admin API from the command line. Commands call the running
//! process's API with the token from the state directory; `backup` and `token rotate`
//! work on the database directly (they must work when the token is lost, and a backup
//! through SQLite's backup API is safe while the server writes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use callbox_core::time::UnixSecs;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::bootstrap::{STORE_FILE, TOKEN_FILE};
use crate::settings::Loaded;

/// Options of every `callbox admin` command.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The admin listener to call (default: admin.listen, on loopback when it is a
    /// wildcard address).
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// The token file (default: STATE_DIR/admin-token). `CALLBOX_ADMIN_TOKEN` wins.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// Version, uptime, roles and counts.
    Status,
    /// The effective configuration, secrets redacted.
    Config,
    /// Live TURN allocations.
    Allocations {
        #[command(subcommand)]
        cmd: AllocationsCmd,
    },
    /// The cluster's live nodes (with `cluster.redis_url`).
    Nodes,
    /// Live signaling rooms.
    Rooms {
        #[command(subcommand)]
        cmd: RoomsCmd,
    },
    /// TURN REST secrets.
    Secrets {
        #[command(subcommand)]
        cmd: SecretsCmd,
    },
    /// Static TURN users.
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// API keys for /v1/ice-servers.
    ApiKeys {
        #[command(subcommand)]
        cmd: ApiKeysCmd,
    },
    /// Address and network bans.
    Bans {
        #[command(subcommand)]
        cmd: BansCmd,
    },
    /// Allocation and signaling session history.
    History {
        #[command(subcommand)]
        cmd: HistoryCmd,
    },
    /// The audit log of admin changes.
    Audit {
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        offset: Option<u64>,
    },
    /// An online backup of the database to FILE (safe while serving).
    Backup { file: PathBuf },
    /// The admin token.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum AllocationsCmd {
    List {
        #[arg(long)]
        user: Option<String>,
    },
    Close {
        id: String,
        /// The node it lives on, in a cluster (the listing's `node`).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum RoomsCmd {
    List,
    Show {
        room: String,
        /// The signal instance that holds it, in a cluster.
        #[arg(long)]
        node: Option<String>,
    },
    /// Close every connection of a room (4009).
    Close {
        room: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Kick one peer (4003; it cannot resume).
    Kick {
        room: String,
        peer_id: String,
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum SecretsCmd {
    List,
    /// A new signing secret; the previous ones verify for the overlap.
    Rotate {
        /// Seconds the previous secret keeps verifying (default: admin.rotation_overlap).
        #[arg(long)]
        overlap: Option<u64>,
        /// Read the new secret from this file instead of generating one.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum UsersCmd {
    List,
    /// Add a user; the password is read from --password-file or the first line of stdin.
    Add {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    Remove {
        name: String,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ApiKeysCmd {
    List,
    /// Issue a key (shown once).
    Add {
        name: String,
    },
    Remove {
        name: String,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum BansCmd {
    List,
    Add {
        /// An address or a network (CIDR).
        network: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Lift the ban after this many seconds.
        #[arg(long)]
        expires_in: Option<u64>,
    },
    Remove {
        id: i64,
    },
}

/// Filters shared by both history lists.
#[derive(Args, Debug, Clone)]
pub struct HistoryFilter {
    /// Unix seconds.
    #[arg(long)]
    from: Option<UnixSecs>,
    #[arg(long)]
    to: Option<UnixSecs>,
    #[arg(long)]
    limit: Option<u32>,
    #[arg(long)]
    offset: Option<u64>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum HistoryCmd {
    Allocations {
        #[command(flatten)]
        filter: HistoryFilter,
        /// Only this username.
        #[arg(long)]
        user: Option<String>,
    },
    Sessions {
        #[command(flatten)]
        filter: HistoryFilter,
        /// Only this room.
        #[arg(long)]
        room: Option<String>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum TokenCmd {
    /// Make a new token (the old one stops working at once) and write it to the token file.
    Rotate,
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn history_query(f: &HistoryFilter, filter: (&str, Option<&String>)) -> String {
    query(&[
        ("from", f.from.map(|v| v.to_string())),
        ("to", f.to.map(|v| v.to_string())),
        (filter.0, filter.1.cloned()),
        ("limit", f.limit.map(|v| v.to_string())),
        ("offset", f.offset.map(|v| v.to_string())),
    ])
}

fn read_secret_line(path: Option<&Path>, what: &str) -> anyhow::Result<String> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .with_context(|| format!("reading the {what} from stdin"))?;
            line
        }
    };
    let v = text.lines().next().unwrap_or("").to_string();
    anyhow::ensure!(!v.is_empty(), "the {what} is empty");
    Ok(v)
}

/// Runs an admin command; returns the process exit code.
pub fn run(loaded: &Loaded, args: &AdminArgs, cmd: &AdminCommand) -> anyhow::Result<u8> {
    let (method, path, body): (&str, String, Option<Value>) = match cmd {
        AdminCommand::Backup { file } => return backup(loaded, file),
        AdminCommand::Token {
            cmd: TokenCmd::Rotate,
        } => return rotate_token(loaded),
        AdminCommand::Status => ("GET", "/admin/v1/status".into(), None),
        AdminCommand::Config => ("GET", "/admin/v1/config".into(), None),
        AdminCommand::Allocations { cmd } => match cmd {
            AllocationsCmd::List { user } => (
                "GET",
                format!("/admin/v1/allocations{}", query(&[("user", user.clone())])),
                None,
            ),
            AllocationsCmd::Close { id, node } => (
                "DELETE",
                format!(
                    "/admin/v1/allocations/{}{}",
                    enc(id),
                    query(&[("node", node.clone())])
                ),
                None,
            ),
        },
        AdminCommand::Nodes => ("GET", "/admin/v1/nodes".into(), None),
        AdminCommand::Rooms { cmd } => match cmd {
            RoomsCmd::List => ("GET", "/admin/v1/rooms".into(), None),
            RoomsCmd::Show { room, node } => (
                "GET",
                format!(
                    "/admin/v1/rooms/{}{}",
                    enc(room),
                    query(&[("node", node.clone())])
                ),
                None,
            ),
            RoomsCmd::Close { room, node } => (
                "DELETE",
                format!(
                    "/admin/v1/rooms/{}{}",
                    enc(room),
                    query(&[("node", node.clone())])
                ),
                None,
            ),
            RoomsCmd::Kick { room, peer_id, node } => (
                "DELETE",
                format!(
                    "/admin/v1/rooms/{}/peers/{}{}",
                    enc(room),
                    enc(peer_id),
                    query(&[("node", node.clone())])
                ),
                None,
            ),
        },
        AdminCommand::Secrets { cmd } => match cmd {
            SecretsCmd::List => ("GET", "/admin/v1/secrets".into(), None),
            SecretsCmd::Rotate { overlap, secret_file } => {
                let mut b = json!({});
                if let Some(o) = overlap {
                    b["overlap_seconds"] = json!(o);
                }
                if let Some(f) = secret_file {
                    b["secret"] = json!(read_secret_line(Some(f), "secret")?);
                }
                ("POST", "/admin/v1/secrets".into(), Some(b))
            }
        },
        AdminCommand::Users { cmd } => match cmd {
            UsersCmd::List => ("GET", "/admin/v1/users".into(), None),
            UsersCmd::Add { name, password_file } => {
                let password = read_secret_line(password_file.as_deref(), "password")?;
                (
                    "POST",
                    "/admin/v1/users".into(),
                    Some(json!({"name": name, "password": password})),
                )
            }
            UsersCmd::Remove { name } => ("DELETE", format!("/admin/v1/users/{}", enc(name)), None),
        },
        AdminCommand::ApiKeys { cmd } => match cmd {
            ApiKeysCmd::List => ("GET", "/admin/v1/api-keys".into(), None),
            ApiKeysCmd::Add { name } => ("POST", "/admin/v1/api-keys".into(), Some(json!({"name": name}))),
            ApiKeysCmd::Remove { name } => ("DELETE", format!("/admin/v1/api-keys/{}", enc(name)), None),
        },
        AdminCommand::Bans { cmd } => match cmd {
            BansCmd::List => ("GET", "/admin/v1/bans".into(), None),
            BansCmd::Add {
                network,
                reason,
                expires_in,
            } => {
                let mut b = json!({"network": network, "reason": reason});
                if let Some(e) = expires_in {
                    b["expires_in_seconds"] = json!(e);
                }
                ("POST", "/admin/v1/bans".into(), Some(b))
            }
            BansCmd::Remove { id } => ("DELETE", format!("/admin/v1/bans/{id}"), None),
        },
        AdminCommand::History { cmd } => match cmd {
            HistoryCmd::Allocations { filter, user } => (
                "GET",
                format!(
                    "/admin/v1/history/allocations{}",
                    history_query(filter, ("user", user.as_ref()))
                ),
                None,
            ),
            HistoryCmd::Sessions { filter, room } => (
                "GET",
                format!(
                    "/admin/v1/history/sessions{}",
                    history_query(filter, ("room", room.as_ref()))
                ),
                None,
            ),
        },
        AdminCommand::Audit { limit, offset } => (
            "GET",
            format!(
                "/admin/v1/audit{}",
                query(&[
                    ("limit", limit.map(|v| v.to_string())),
                    ("offset", offset.map(|v| v.to_string())),
                ])
            ),
            None,
        ),
    };
    call(loaded, args, method, &path, body.as_ref())
}

fn target(loaded: &Loaded, args: &AdminArgs) -> SocketAddr {
    let mut addr = args.admin.unwrap_or(loaded.config.admin.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    addr
}

fn token(loaded: &Loaded, args: &AdminArgs) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("CALLBOX_ADMIN_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let path = args
        .token_file
        .clone()
        .unwrap_or_else(|| loaded.state_dir.join(TOKEN_FILE));
    let t = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the admin token from {} (run as the service user, or `callbox admin token rotate`)",
            path.display()
        )
    })?;
    Ok(t.trim().to_string())
}

fn call(
    loaded: &Loaded,
    args: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<u8> {
    let addr = target(loaded, args);
    let auth = format!("Bearer {}", token(loaded, args)?);
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let r = callbox_admin::client::request(
        addr,
        method,
        path,
        &headers,
        text.as_bytes(),
        Duration::from_secs(30),
    )
    .with_context(|| {
        format!("calling the admin API at {addr} (is `callbox serve` running with the admin role?)")
    })?;
    let value: Option<Value> = serde_json::from_slice(&r.body).ok();
    if r.status >= 400 {
        let (code, message) = value
            .as_ref()
            .map(|v| {
                (
                    v["error"]["code"].as_str().unwrap_or("?").to_string(),
                    v["error"]["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_else(|| ("?".into(), String::from_utf8_lossy(&r.body).into_owned()));
        if args.json {
            println!("{}", String::from_utf8_lossy(&r.body));
        }
        eprintln!("error: {} {code}: {message}", r.status);
        return Ok(1);
    }
    match value {
        None => {
            if args.json {
                println!("{{}}");
            } else {
                println!("ok");
            }
        }
        Some(v) if args.json => println!("{}", serde_json::to_string_pretty(&v)?),
        Some(v) => print!("{}", human(&v)),
    }
    Ok(0)
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// A table for a list of objects, `key: value` lines for an object.
fn human(v: &Value) -> String {
    match v {
        Value::Array(rows) if rows.is_empty() => "(none)\n".into(),
        Value::Array(rows) if rows.iter().all(Value::is_object) => {
            let mut cols: Vec<String> = rows[0]
                .as_object()
                .map_or(vec![], |o| o.keys().cloned().collect());
            // Identifiers first; the rest keep the API's (alphabetical) order.
            cols.sort_by_key(|c| !matches!(c.as_str(), "id" | "name" | "room" | "peer_id"));
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cols.iter().map(|c| cell(&r[c])).collect())
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |items: &[String]| -> String {
                let mut s = items
                    .iter()
                    .zip(&widths)
                    .map(|(x, w)| format!("{x:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ");
                s.truncate(s.trim_end().len());
                s + "\n"
            };
            let mut out = line(&cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>());
            for r in &cells {
                out.push_str(&line(r));
            }
            out
        }
        Value::Object(o) if o.contains_key("items") => {
            let mut out = human(&o["items"]);
            if let Some(n) = o.get("next_offset").and_then(Value::as_u64) {
                out.push_str(&format!("(more: --offset {n})\n"));
            }
            out
        }
        Value::Object(o) => {
            let mut out = String::new();
            for (k, v) in o {
                let nested = match v {
                    Value::Array(a) => a.iter().any(Value::is_object),
                    Value::Object(_) => true,
                    _ => false,
                };
                if nested {
                    out.push_str(&format!("{k}:\n"));
                    for l in human(v).lines() {
                        out.push_str(&format!("  {l}\n"));
                    }
                } else {
                    out.push_str(&format!("{k}: {}\n", cell(v)));
                }
            }
            out
        }
        other => format!("{}\n", cell(other)),
    }
}

fn open_store(loaded: &Loaded) -> anyhow::Result<callbox_store::Store> {
    let path = loaded.state_dir.join(STORE_FILE);
    anyhow::ensure!(
        path.exists(),
        "no database at {} (has `callbox serve` run with this state directory?)",
        path.display()
    );
    callbox_store::Store::open(&path).with_context(|| format!("opening {}", path.display()))
}

fn backup(loaded: &Loaded, file: &Path) -> anyhow::Result<u8> {
    anyhow::ensure!(!file.exists(), "{} exists; choose a new file", file.display());
    let store = open_store(loaded)?;
    store
        .backup(file)
        .with_context(|| format!("writing {}", file.display()))?;
    let copy = callbox_store::Store::open(file)?;
    anyhow::ensure!(copy.integrity_ok()?, "the backup failed its integrity check");
    println!(
        "backup written to {} (schema version {}, integrity ok)",
        file.display(),
        copy.schema_version()?
    );
    Ok(0)
}

fn rotate_token(loaded: &Loaded) -> anyhow::Result<u8> {
    let store = open_store(loaded)?;
    let path = crate::bootstrap::write_new_token(&store, &loaded.state_dir, "cli")?;
    println!(
        "new admin token written to {}; the previous one no longer works",
        path.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_objects() {
        let t = human(&json!([{"id": 1, "name": "a"}, {"id": 22, "name": null}]));
        assert_eq!(t, "ID  NAME\n1   a\n22  -\n");
        let t = human(&json!([{"active": true, "id": 1}]));
        assert!(t.starts_with("ID  ACTIVE"), "{t}");
        let o = human(&json!({"version": "1", "roles": ["turn", "signal"]}));
        assert!(o.contains("roles: turn,signal\n"));
        assert_eq!(human(&json!([])), "(none)\n");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(query(&[("a", None), ("b", Some("x y".into()))]), "?b=x%20y");
    }
}
