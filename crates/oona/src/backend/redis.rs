//! The Redis Streams backend: `XADD … MAXLEN ~`, groups created at an explicit
//! id, `XAUTOCLAIM` then `XREADGROUP` with a short block, `XACK`, atomic
//! dead-letter moves (`MULTI`/`XADD`/`XACK`/`EXEC`), `XTRIM MINID` housekeeping.
//!
//! Connections are `redis`'s `ConnectionManager`s, which reconnect after a
//! failure; the failed call itself returns an error and the caller retries.
//! Blocking reads run on a connection of their own ([`RedisBus::reader`]) so
//! that they never stall publishers multiplexed on the shared one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Value};

use super::redis_reply::{
    self as reply, F_ENVELOPE, F_ORIGIN_ATTEMPTS, F_ORIGIN_ID, F_ORIGIN_REASON, F_ORIGIN_STREAM,
    F_PUBLISHED,
};
use super::{Bus, RawDelivery, ReadBatch, ReadOptions, Record, StreamDepth};
use crate::{EntryId, Error, Result, StartFrom, Stream};

/// Redis Streams under one namespace.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    conn: ConnectionManager,
    config: Arc<Settings>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("namespace", &self.config.namespace)
            .field("max_len", &self.config.max_len)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Settings {
    namespace: String,
    max_len: u64,
    keys: [String; Stream::ALL.len()],
}

/// The longest any of our commands is expected to take, blocking reads
/// (≤ 500 ms) included; a connection silent for longer is considered lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

impl RedisBus {
    /// Connects to `url`; streams are `<namespace>.<name>`.
    pub async fn connect(url: &str, namespace: &str, max_len: u64) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|source| Error::Redis {
            op: "connect",
            stream: url.to_owned(),
            source,
        })?;
        let conn = Self::manager(&client).await?;
        let keys = Stream::ALL.map(|s| format!("{namespace}.{}", s.name()));
        Ok(Self {
            client,
            conn,
            config: Arc::new(Settings {
                namespace: namespace.to_owned(),
                max_len,
                keys,
            }),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn manager(client: &redis::Client) -> Result<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|source| Error::Redis {
                op: "connect",
                stream: client.get_connection_info().addr().to_string(),
                source,
            })
    }

    fn key(&self, stream: Stream) -> &str {
        &self.config.keys[stream.index()]
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    async fn query(&self, op: &'static str, stream: Stream, cmd: &Cmd) -> Result<Value> {
        self.check_open()?;
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|source| Error::Redis {
                op,
                stream: self.key(stream).to_owned(),
                source,
            })
    }

    fn xadd(&self, stream: Stream, record: &Record) -> Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key(stream));
        if stream.capped() {
            cmd.arg("MAXLEN").arg("~").arg(self.config.max_len);
        }
        cmd.arg("*")
            .arg(F_ENVELOPE)
            .arg(record.payload.as_ref())
            .arg(F_PUBLISHED)
            .arg(record.published_us);
        for (k, v) in &record.extra {
            cmd.arg(k.as_ref()).arg(v.as_ref());
        }
        if let Some(o) = &record.origin {
            cmd.arg(F_ORIGIN_STREAM)
                .arg(o.stream.name())
                .arg(F_ORIGIN_ID)
                .arg(o.entry.to_string())
                .arg(F_ORIGIN_ATTEMPTS)
                .arg(o.attempts)
                .arg(F_ORIGIN_REASON)
                .arg(&o.reason);
        }
        cmd
    }

    /// Delivery counts of reclaimed entries (XAUTOCLAIM does not return them).
    async fn delivery_counts(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<(EntryId, u32)>> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(self.key(stream))
            .arg(group)
            .arg(first.to_string())
            .arg(last.to_string())
            .arg(10_000)
            .arg(consumer);
        reply::pending_counts(&self.query("XPENDING", stream, &cmd).await?)
    }

    async fn reclaim(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        options: ReadOptions,
        batch: &mut ReadBatch,
    ) -> Result<()> {
        let mut cursor = EntryId::ZERO;
        // A few passes over the pending list at most; the rest waits for the next read.
        for _ in 0..4 {
            let room = options.count.saturating_sub(batch.deliveries.len());
            if room == 0 {
                break;
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(self.key(stream))
                .arg(group)
                .arg(consumer)
                .arg(options.claim_idle.as_millis() as u64)
                .arg(cursor.to_string())
                .arg("COUNT")
                .arg(room);
            let claim = reply::autoclaim(&self.query("XAUTOCLAIM", stream, &cmd).await?)?;
            batch.trimmed.extend(claim.deleted);
            let claimed: Vec<(EntryId, Record)> = claim
                .claimed
                .into_iter()
                .filter_map(|(id, r)| r.map(|r| (id, r)))
                .collect();
            if let (Some((first, _)), Some((last, _))) = (claimed.first(), claimed.last()) {
                let counts = self
                    .delivery_counts(stream, group, consumer, *first, *last)
                    .await?;
                for (id, record) in claimed {
                    let attempt = counts
                        .iter()
                        .find(|(c, _)| *c == id)
                        .map(|(_, n)| *n)
                        .unwrap_or(1);
                    batch.deliveries.push(RawDelivery {
                        stream,
                        entry: id,
                        attempt,
                        record,
                    });
                }
            }
            if claim.next == EntryId::ZERO {
                break;
            }
            cursor = claim.next;
        }
        Ok(())
    }

    async fn read_group(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        options: ReadOptions,
    ) -> Result<ReadBatch> {
        let mut batch = ReadBatch::default();
        self.reclaim(stream, group, consumer, options, &mut batch)
            .await?;
        let room = options.count.saturating_sub(batch.deliveries.len());
        if room == 0 {
            return Ok(batch);
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(room);
        if batch.deliveries.is_empty() && batch.trimmed.is_empty() {
            cmd.arg("BLOCK")
                .arg(options.block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(self.key(stream)).arg(">");
        let v = self.query("XREADGROUP", stream, &cmd).await?;
        for (id, record) in reply::read_group(&v)? {
            // `>` never returns deleted entries; tolerate it anyway.
            if let Some(record) = record {
                batch.deliveries.push(RawDelivery {
                    stream,
                    entry: id,
                    attempt: 1,
                    record,
                });
            }
        }
        Ok(batch)
    }

    async fn xack(&self, stream: Stream, group: &str, entries: &[EntryId]) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(self.key(stream)).arg(group);
        for id in entries {
            cmd.arg(id.to_string());
        }
        let v = self.query("XACK", stream, &cmd).await?;
        reply::int(&v)
            .map(|n| n.max(0) as u64)
            .ok_or_else(|| reply::shape("XACK", "reply is not a number"))
    }
}

/// A missing group (`NOGROUP`: a restarted server without persistence, a
/// deleted group) is its own error, so that a consumer can create it again.
fn no_group(e: Error, stream: Stream, group: &str) -> Error {
    match e {
        Error::Redis { ref source, .. } if source.code() == Some("NOGROUP") => Error::NoGroup {
            stream: stream.name().to_owned(),
            group: group.to_owned(),
        },
        e => e,
    }
}

impl Bus for RedisBus {
    async fn reader(&self) -> Result<Self> {
        self.check_open()?;
        Ok(Self {
            conn: Self::manager(&self.client).await?,
            ..self.clone()
        })
    }

    async fn publish(&self, stream: Stream, record: Record) -> Result<EntryId> {
        let v = self
            .query("XADD", stream, &self.xadd(stream, &record))
            .await?;
        reply::entry_id("XADD", &v)
    }

    async fn publish_many(&self, stream: Stream, records: Vec<Record>) -> Result<Vec<EntryId>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.check_open()?;
        let mut pipe = redis::pipe();
        for record in &records {
            pipe.add_command(self.xadd(stream, record));
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Value> =
            pipe.query_async(&mut conn)
                .await
                .map_err(|source| Error::Redis {
                    op: "XADD (pipelined)",
                    stream: self.key(stream).to_owned(),
                    source,
                })?;
        replies.iter().map(|v| reply::entry_id("XADD", v)).collect()
    }

    async fn ensure_group(&self, stream: Stream, group: &str, start: StartFrom) -> Result<bool> {
        let start = match start {
            StartFrom::Beginning => "0".to_owned(),
            StartFrom::After(id) => id.to_string(),
        };
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(self.key(stream))
            .arg(group)
            .arg(start)
            .arg("MKSTREAM");
        match self.query("XGROUP CREATE", stream, &cmd).await {
            Ok(_) => Ok(true),
            Err(Error::Redis { source, .. }) if source.code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn remove_group(&self, stream: Stream, group: &str) -> Result<bool> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("DESTROY").arg(self.key(stream)).arg(group);
        match self.query("XGROUP DESTROY", stream, &cmd).await {
            Ok(v) => Ok(reply::int(&v).unwrap_or(0) > 0),
            // The stream itself is gone (a restarted server): so is the group.
            Err(Error::Redis { source, .. }) if source.to_string().contains("no such key") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn read(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        options: ReadOptions,
    ) -> Result<ReadBatch> {
        self.read_group(stream, group, consumer, options)
            .await
            .map_err(|e| no_group(e, stream, group))
    }

    async fn ack(&self, stream: Stream, group: &str, entries: &[EntryId]) -> Result<u64> {
        self.xack(stream, group, entries)
            .await
            .map_err(|e| no_group(e, stream, group))
    }

    async fn retry_later(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        delivery: &RawDelivery,
        backoff: Duration,
        claim_idle: Duration,
    ) -> Result<()> {
        // Set the entry's idle time so that it becomes reclaimable after `backoff`;
        // JUSTID keeps the delivery counter as it is (RETRYCOUNT restates it).
        let idle = claim_idle.saturating_sub(backoff);
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(self.key(stream))
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(delivery.entry.to_string())
            .arg("IDLE")
            .arg(idle.as_millis() as u64)
            .arg("RETRYCOUNT")
            .arg(delivery.attempt)
            .arg("JUSTID");
        self.query("XCLAIM", stream, &cmd)
            .await
            .map(|_| ())
            .map_err(|e| no_group(e, stream, group))
    }

    async fn divert(
        &self,
        from: Stream,
        group: &str,
        entry: EntryId,
        to: Stream,
        record: Record,
    ) -> Result<EntryId> {
        self.check_open()?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(self.xadd(to, &record))
            .cmd("XACK")
            .arg(self.key(from))
            .arg(group)
            .arg(entry.to_string())
            .ignore();
        let mut conn = self.conn.clone();
        let v: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|source| Error::Redis {
                op: "MULTI XADD XACK",
                stream: self.key(to).to_owned(),
                source,
            })?;
        let id = v
            .first()
            .ok_or_else(|| reply::shape("MULTI XADD XACK", "empty transaction reply"))?;
        reply::entry_id("XADD", id)
    }

    async fn depth(&self, stream: Stream) -> Result<StreamDepth> {
        self.check_open()?;
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(self.key(stream));
        pipe.cmd("XINFO").arg("GROUPS").arg(self.key(stream));
        let mut conn = self.conn.clone();
        let v: Vec<Value> = match pipe.query_async(&mut conn).await {
            Ok(v) => v,
            // XINFO on a stream that does not exist yet.
            Err(e) if e.to_string().contains("no such key") => return Ok(StreamDepth::default()),
            Err(source) => {
                return Err(Error::Redis {
                    op: "XLEN XINFO",
                    stream: self.key(stream).to_owned(),
                    source,
                });
            }
        };
        let [len, groups] = v.as_slice() else {
            return Err(reply::shape("XLEN XINFO", "expected two replies"));
        };
        let len = reply::int(len).unwrap_or(0).max(0) as u64;
        let depth = reply::groups(groups)?
            .iter()
            .map(|g| g.pending + g.lag.unwrap_or(len))
            .max()
            .unwrap_or(len);
        Ok(StreamDepth { len, depth })
    }

    async fn range(
        &self,
        stream: Stream,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<(EntryId, Record)>> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.key(stream))
            .arg(after.map_or_else(|| "-".to_owned(), |id| format!("({id}")))
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let v = self.query("XRANGE", stream, &cmd).await?;
        Ok(reply::entries("XRANGE", &v)?
            .into_iter()
            .filter_map(|(id, r)| r.map(|r| (id, r)))
            .collect())
    }

    async fn trim_acknowledged(&self, stream: Stream, older_than_ms: u64) -> Result<u64> {
        let mut safe = EntryId {
            ms: older_than_ms,
            seq: 0,
        };
        let mut info = redis::cmd("XINFO");
        info.arg("GROUPS").arg(self.key(stream));
        let groups = match self.query("XINFO GROUPS", stream, &info).await {
            Ok(v) => reply::groups(&v)?,
            Err(Error::Redis { source, .. }) if source.to_string().contains("no such key") => {
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        for g in &groups {
            safe = safe.min(g.last_delivered.next());
        }
        for g in &groups {
            let mut cmd = redis::cmd("XPENDING");
            cmd.arg(self.key(stream)).arg(&g.name);
            if let Some(min) = reply::pending_min(&self.query("XPENDING", stream, &cmd).await?)? {
                safe = safe.min(min);
            }
        }
        let mut cmd = redis::cmd("XTRIM");
        cmd.arg(self.key(stream)).arg("MINID").arg(safe.to_string());
        let v = self.query("XTRIM", stream, &cmd).await?;
        Ok(reply::int(&v).unwrap_or(0).max(0) as u64)
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}
