//! Requests to one node: `{prefix}:rpc:{node}` is a list the node pops with BLPOP (on a
//! connection of its own, since a blocked connection answers nothing else); the caller
//! waits on `{prefix}:reply:{request id}` the same way. Both keys expire, so a request to a
//! node that died, or a reply nobody waits for any more, does not stay in Redis.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Cluster;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("node {0} did not answer in time")]
    Timeout(String),
    #[error("node {node}: {message}")]
    Failed { node: String, message: String },
    #[error("a reply does not parse: {0}")]
    Decode(#[from] serde_json::Error),
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: String,
    op: String,
    args: Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    result: Result<Value, String>,
}

/// What a node does with requests.
pub trait RpcHandler: Send + Sync + 'static {
    /// Answers `op` with `args`; an error is a message for the caller.
    fn handle(
        &self,
        op: String,
        args: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>>;
}

/// How long requests and replies stay in Redis unanswered.
const KEEP_MS: i64 = 10_000;

impl Cluster {
    /// Asks `node` to do `op` and waits up to `timeout` for its answer.
    pub async fn call(
        &self,
        node: &str,
        op: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        let id = format!("{}-{:016x}", self.settings.node_id, rand::random::<u64>());
        let req = serde_json::to_string(&Request {
            id: id.clone(),
            op: op.to_string(),
            args,
        })?;
        let queue = self.key(&format!("rpc:{node}"));
        let reply_key = self.key(&format!("reply:{id}"));
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .lpush(&queue, req)
            .ignore()
            .pexpire(&queue, KEEP_MS)
            .ignore()
            .query_async(&mut conn)
            .await?;
        // A connection of its own: BLPOP holds it until the reply or the timeout.
        let mut wait = self.client.get_multiplexed_async_connection().await?;
        let secs = timeout.as_secs_f64().max(0.01);
        let got: Option<(String, String)> = tokio::time::timeout(
            timeout + Duration::from_millis(500),
            redis::cmd("BLPOP")
                .arg(&reply_key)
                .arg(secs)
                .query_async(&mut wait),
        )
        .await
        .map_err(|_| RpcError::Timeout(node.to_string()))??;
        let (_, text) = got.ok_or_else(|| RpcError::Timeout(node.to_string()))?;
        let reply: Reply = serde_json::from_str(&text)?;
        reply.result.map_err(|message| RpcError::Failed {
            node: node.to_string(),
            message,
        })
    }

    /// Answers this node's requests with `handler` until the task is dropped. Redis away:
    /// waits and connects again.
    pub fn serve_rpc(&self, handler: Arc<dyn RpcHandler>) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let queue = cluster.key(&format!("rpc:{}", cluster.settings.node_id));
            loop {
                let mut conn = match cluster.client.get_multiplexed_async_connection().await {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(cluster.settings.heartbeat).await;
                        continue;
                    }
                };
                loop {
                    let popped: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
                        .arg(&queue)
                        .arg(1)
                        .query_async(&mut conn)
                        .await;
                    let text = match popped {
                        Ok(Some((_, text))) => text,
                        Ok(None) => continue,
                        Err(_) => break,
                    };
                    let Ok(req) = serde_json::from_str::<Request>(&text) else {
                        tracing::warn!("cluster: a request that does not parse; dropped");
                        continue;
                    };
                    let result = handler.handle(req.op, req.args).await;
                    let reply = serde_json::to_string(&Reply { result }).unwrap_or_default();
                    let key = cluster.key(&format!("reply:{}", req.id));
                    let mut c = cluster.conn.clone();
                    let _: redis::RedisResult<()> = redis::pipe()
                        .lpush(&key, reply)
                        .ignore()
                        .pexpire(&key, KEEP_MS)
                        .ignore()
                        .query_async(&mut c)
                        .await;
                }
                tokio::time::sleep(cluster.settings.heartbeat).await;
            }
        })
    }
}
