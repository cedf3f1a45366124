//! History writers: allocation and session records from the roles, written to the store in
//! batches off the roles' paths, and finished (their queues drained and flushed) when the
//! process stops, so the rows of allocations the shutdown closed are kept.
//!
//! A write that fails (disk full, file system read-only, database locked by another
//! process) keeps its rows and retries them with the next batch, every 500 ms: an outage of
//! the store loses no history unless it outlasts `general.history_backlog_rows` rows, and
//! then only the oldest, counted in `callbox_store_history_lost_total`.

use std::sync::Arc;
use std::time::Duration;

use callbox_turn::AllocationEvent;

/// The store as the roles share it.
pub type SharedStore = Arc<std::sync::Mutex<callbox_store::Store>>;

/// Where history rows go: the store (if open) and its health counters.
#[derive(Clone)]
pub struct HistorySink {
    pub store: Option<SharedStore>,
    pub health: Arc<callbox_store::Health>,
    /// Rows kept for a retry while the store refuses writes (`general.history_backlog_rows`).
    pub backlog_rows: usize,
}

/// A running history writer. [`HistoryWriter::finish`] writes what is still queued and
/// stops it; call it after the role feeding it has stopped.
#[derive(Debug)]
pub struct HistoryWriter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HistoryWriter {
    /// Starts writing what arrives on `rx` to the store in batches (every 500 ms, or at 512
    /// rows), off the relay's and signaling's paths: they only ever `try_send` into the
    /// channel, so a slow or failing database costs history rows (counted and logged),
    /// never their time.
    pub fn spawn<I: Send + 'static, T: Send + 'static>(
        rx: tokio::sync::mpsc::Receiver<I>,
        map: impl FnMut(I) -> Option<T> + Send + 'static,
        write: fn(&mut callbox_store::Store, &[T]) -> callbox_store::Result<()>,
        sink: HistorySink,
        what: &'static str,
    ) -> HistoryWriter {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(write_history(rx, map, write, sink, what, stopped));
        HistoryWriter { stop, task }
    }

    /// Writes every record queued so far and waits until they are in the store.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "history writer failed");
        }
    }
}

async fn write_history<I, T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<I>,
    mut map: impl FnMut(I) -> Option<T>,
    write: fn(&mut callbox_store::Store, &[T]) -> callbox_store::Result<()>,
    sink: HistorySink,
    what: &'static str,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut batch: Vec<T> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut retrying = false;
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some(item) = got else { break };
                batch.extend(map(item));
                // While the store refuses writes, retries wait for the tick.
                if batch.len() < 512 || retrying {
                    continue;
                }
            }
            _ = tick.tick() => {}
            _ = &mut stopped => {
                // The producer has stopped: what it queued is all there is.
                while let Ok(item) = rx.try_recv() {
                    batch.extend(map(item));
                }
                break;
            }
        }
        retrying = !flush(&sink, &mut batch, write, what).await;
    }
    flush(&sink, &mut batch, write, what).await;
}

/// Writes `batch` (the rows not yet written, oldest first). On failure the rows stay in
/// `batch` for the next try; beyond the backlog cap the oldest are dropped and counted.
/// False when the write failed.
async fn flush<T: Send + 'static>(
    sink: &HistorySink,
    batch: &mut Vec<T>,
    write: fn(&mut callbox_store::Store, &[T]) -> callbox_store::Result<()>,
    what: &'static str,
) -> bool {
    let Some(store) = &sink.store else {
        batch.clear();
        return true;
    };
    if batch.is_empty() {
        return true;
    }
    let rows = std::mem::take(batch);
    let store = Arc::clone(store);
    let n = rows.len();
    let written = tokio::task::spawn_blocking(move || {
        let result = write(&mut store.lock().unwrap_or_else(|e| e.into_inner()), &rows);
        (result, rows)
    })
    .await;
    let (failure, rows) = match written {
        Ok((Ok(()), _)) => return true,
        Ok((Err(e), rows)) => (e.to_string(), rows),
        // The write panicked and took the rows with it.
        Err(e) => (e.to_string(), Vec::new()),
    };
    sink.health.failed();
    *batch = rows;
    let lost = if batch.is_empty() {
        n
    } else {
        let over = batch.len().saturating_sub(sink.backlog_rows);
        batch.drain(..over);
        over
    };
    sink.health
        .history_lost
        .fetch_add(lost as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(error = %failure, kept = batch.len(), lost, "{what} history not written; retrying");
    false
}

/// Logs an allocation event and turns it into a history row (refreshes have none).
pub fn allocation_row(e: AllocationEvent) -> Option<callbox_store::HistoryEvent> {
    use callbox_store::HistoryEvent;
    e.log();
    match e {
        AllocationEvent::Created {
            id,
            username,
            client,
            relay,
            transport,
            at,
            ..
        } => Some(HistoryEvent::Created {
            alloc_id: id.0 as i64,
            username,
            client: client.to_string(),
            relay: relay.to_string(),
            transport: transport.as_str().to_string(),
            at,
        }),
        AllocationEvent::Refreshed { .. } => None,
        AllocationEvent::Closed {
            id,
            reason,
            traffic,
            at,
        } => Some(HistoryEvent::Closed {
            alloc_id: id.0 as i64,
            at,
            reason: reason.as_str().to_string(),
            packets_to_peer: traffic.packets_to_peer as i64,
            bytes_to_peer: traffic.bytes_to_peer as i64,
            packets_to_client: traffic.packets_to_client as i64,
            bytes_to_client: traffic.bytes_to_client as i64,
        }),
    }
}

pub fn session_row(r: callbox_signal::SessionRecord) -> Option<callbox_store::SessionRecord> {
    Some(callbox_store::SessionRecord {
        room: r.room,
        peer_id: r.peer_id,
        client: r.addr.to_string(),
        started_at: r.joined_unix,
        ended_at: r.left_unix,
        close_reason: r.reason.as_str().to_string(),
        messages_in: r.messages_in as i64,
        messages_out: r.messages_out as i64,
    })
}
