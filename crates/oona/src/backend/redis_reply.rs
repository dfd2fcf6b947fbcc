//! Parsing Redis replies (`XREADGROUP`, `XAUTOCLAIM`, `XRANGE`, `XPENDING`,
//! `XINFO GROUPS`) into our types, tolerating RESP2 arrays and RESP3 maps.
//! A reply of an unexpected shape is an error naming the command; an entry
//! whose *fields* are wrong is not — it becomes a record with an empty payload,
//! which fails verification and is quarantined by the consumer.

use bytes::Bytes;
use redis::Value;

use super::{Origin, Record};
use crate::{EntryId, Error, Result, Stream};

/// Field names of a stored entry.
pub(super) const F_ENVELOPE: &str = "e";
pub(super) const F_PUBLISHED: &str = "p";
pub(super) const F_ORIGIN_STREAM: &str = "os";
pub(super) const F_ORIGIN_ID: &str = "oi";
pub(super) const F_ORIGIN_ATTEMPTS: &str = "oa";
pub(super) const F_ORIGIN_REASON: &str = "or";

pub(super) fn shape(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Reply {
        op,
        detail: detail.into(),
    }
}

pub(super) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

pub(super) fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

pub(super) fn entry_id(op: &'static str, v: &Value) -> Result<EntryId> {
    let t = text(v).ok_or_else(|| shape(op, "entry id is not a string"))?;
    t.parse()
        .map_err(|e: crate::stream::BadEntryId| shape(op, e.to_string()))
}

/// Key/value pairs of a flat array or a map.
pub(super) fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(kv) => Some(kv.iter().map(|(k, v)| (k, v)).collect()),
        other => {
            let items = array(other)?;
            Some(items.chunks_exact(2).map(|c| (&c[0], &c[1])).collect())
        }
    }
}

/// A stored entry's fields as a record. Missing or malformed fields give an
/// empty payload (quarantined later), never an error.
pub(super) fn record(fields: &Value) -> Record {
    let mut payload = Bytes::new();
    let mut published_us = 0;
    let (mut os, mut oi, mut oa, mut or) = (None, None, None, None);
    let mut extra = Vec::new();
    for (k, v) in pairs(fields).unwrap_or_default() {
        match text(k) {
            Some(F_ENVELOPE) => payload = Bytes::copy_from_slice(bytes(v).unwrap_or_default()),
            Some(F_PUBLISHED) => {
                published_us = int(v).and_then(|i| u64::try_from(i).ok()).unwrap_or(0)
            }
            Some(F_ORIGIN_STREAM) => os = text(v).and_then(Stream::from_name),
            Some(F_ORIGIN_ID) => oi = text(v).and_then(|t| t.parse().ok()),
            Some(F_ORIGIN_ATTEMPTS) => oa = int(v).and_then(|i| u32::try_from(i).ok()),
            Some(F_ORIGIN_REASON) => or = text(v).map(str::to_owned),
            Some(_) | None => extra.push((
                Bytes::copy_from_slice(bytes(k).unwrap_or_default()),
                Bytes::copy_from_slice(bytes(v).unwrap_or_default()),
            )),
        }
    }
    let origin = match (os, oi) {
        (Some(stream), Some(entry)) => Some(Origin {
            stream,
            entry,
            attempts: oa.unwrap_or(0),
            reason: or.unwrap_or_default(),
        }),
        _ => None,
    };
    Record {
        payload,
        published_us,
        origin,
        extra,
    }
}

/// `[[id, fields|nil], …]` → entries; a nil fields value (entry deleted) gives `None`.
pub(super) fn entries(op: &'static str, v: &Value) -> Result<Vec<(EntryId, Option<Record>)>> {
    let items = match v {
        Value::Nil => return Ok(Vec::new()),
        other => array(other).ok_or_else(|| shape(op, "entry list is not an array"))?,
    };
    items
        .iter()
        .map(|item| {
            let parts = array(item).ok_or_else(|| shape(op, "entry is not an array"))?;
            let [id, fields] = parts else {
                return Err(shape(
                    op,
                    format!("entry has {} parts, expected 2", parts.len()),
                ));
            };
            let id = entry_id(op, id)?;
            Ok((id, (!matches!(fields, Value::Nil)).then(|| record(fields))))
        })
        .collect()
}

/// `XREADGROUP` reply for one stream: nil on timeout, else `[[key, entries]]`
/// (RESP2) or `{key: entries}` (RESP3).
pub(super) fn read_group(v: &Value) -> Result<Vec<(EntryId, Option<Record>)>> {
    const OP: &str = "XREADGROUP";
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(kv) => kv.iter().map(|(_, e)| e).collect::<Vec<_>>(),
        other => array(other)
            .ok_or_else(|| shape(OP, "reply is not an array"))?
            .iter()
            .map(|s| match array(s) {
                Some([_, e]) => Ok(e),
                Some(_) | None => Err(shape(OP, "stream reply is not [key, entries]")),
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let mut out = Vec::new();
    for e in streams {
        out.extend(entries(OP, e)?);
    }
    Ok(out)
}

/// `XAUTOCLAIM` reply: `[next, entries, deleted]`.
pub(super) struct AutoClaim {
    pub(super) next: EntryId,
    pub(super) claimed: Vec<(EntryId, Option<Record>)>,
    pub(super) deleted: Vec<EntryId>,
}

pub(super) fn autoclaim(v: &Value) -> Result<AutoClaim> {
    const OP: &str = "XAUTOCLAIM";
    let parts = array(v).ok_or_else(|| shape(OP, "reply is not an array"))?;
    let (next, claimed, deleted) = match parts {
        [n, c, d] => (n, c, Some(d)),
        [n, c] => (n, c, None),
        _ => return Err(shape(OP, format!("reply has {} parts", parts.len()))),
    };
    let deleted = match deleted {
        None => Vec::new(),
        Some(d) => array(d)
            .ok_or_else(|| shape(OP, "deleted ids are not an array"))?
            .iter()
            .map(|id| entry_id(OP, id))
            .collect::<Result<_>>()?,
    };
    Ok(AutoClaim {
        next: entry_id(OP, next)?,
        claimed: entries(OP, claimed)?,
        deleted,
    })
}

/// Extended `XPENDING` reply: `[[id, consumer, idle, deliveries], …]` → (id, deliveries).
pub(super) fn pending_counts(v: &Value) -> Result<Vec<(EntryId, u32)>> {
    const OP: &str = "XPENDING";
    array(v)
        .ok_or_else(|| shape(OP, "reply is not an array"))?
        .iter()
        .map(|row| match array(row) {
            Some([id, _, _, n]) => Ok((
                entry_id(OP, id)?,
                int(n)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| shape(OP, "delivery count is not a number"))?,
            )),
            Some(_) | None => Err(shape(OP, "row is not [id, consumer, idle, deliveries]")),
        })
        .collect()
}

/// Summary `XPENDING` reply: `[count, min, max, consumers]` → the smallest pending id.
pub(super) fn pending_min(v: &Value) -> Result<Option<EntryId>> {
    const OP: &str = "XPENDING";
    match array(v) {
        Some([count, min, _, _]) => {
            if int(count).unwrap_or(0) == 0 || matches!(min, Value::Nil) {
                Ok(None)
            } else {
                entry_id(OP, min).map(Some)
            }
        }
        Some(_) | None => Err(shape(OP, "summary is not [count, min, max, consumers]")),
    }
}

/// One group of `XINFO GROUPS`.
pub(super) struct GroupInfo {
    pub(super) name: String,
    pub(super) pending: u64,
    pub(super) last_delivered: EntryId,
    /// `None` when Redis cannot tell (after some deletions).
    pub(super) lag: Option<u64>,
}

pub(super) fn groups(v: &Value) -> Result<Vec<GroupInfo>> {
    const OP: &str = "XINFO GROUPS";
    array(v)
        .ok_or_else(|| shape(OP, "reply is not an array"))?
        .iter()
        .map(|g| {
            let mut info = GroupInfo {
                name: String::new(),
                pending: 0,
                last_delivered: EntryId::ZERO,
                lag: None,
            };
            for (k, val) in pairs(g).ok_or_else(|| shape(OP, "group is not a map"))? {
                match text(k) {
                    Some("name") => info.name = text(val).unwrap_or_default().to_owned(),
                    Some("pending") => info.pending = int(val).unwrap_or(0).max(0) as u64,
                    Some("last-delivered-id") => info.last_delivered = entry_id(OP, val)?,
                    Some("lag") => info.lag = int(val).map(|l| l.max(0) as u64),
                    Some(_) | None => {}
                }
            }
            Ok(info)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
            "[0-9]{1,3}-[0-9]{1,2}".prop_map(|s| Value::BulkString(s.into_bytes())),
            prop_oneof![
                Just("e"),
                Just("p"),
                Just("os"),
                Just("oi"),
                Just("name"),
                Just("lag")
            ]
            .prop_map(|s| Value::SimpleString(s.to_owned())),
            Just(Value::Okay),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        // Replies come from a server we do not control: any shape gives a
        // value or a typed error, never a panic.
        #[test]
        fn any_reply_shape_parses_or_errors(v in value()) {
            let _ = read_group(&v);
            let _ = autoclaim(&v);
            let _ = pending_counts(&v);
            let _ = pending_min(&v);
            let _ = groups(&v);
            let _ = entries("XRANGE", &v);
            let _ = record(&v);
        }
    }

    #[test]
    fn entry_fields_round_trip_and_bad_fields_give_an_empty_payload() {
        let fields = Value::Array(vec![
            Value::BulkString(b"e".to_vec()),
            Value::BulkString(vec![1, 2, 3]),
            Value::BulkString(b"p".to_vec()),
            Value::BulkString(b"42".to_vec()),
            Value::BulkString(b"os".to_vec()),
            Value::BulkString(b"normal".to_vec()),
            Value::BulkString(b"oi".to_vec()),
            Value::BulkString(b"5-1".to_vec()),
            Value::BulkString(b"oa".to_vec()),
            Value::Int(3),
            Value::BulkString(b"or".to_vec()),
            Value::BulkString(b"why".to_vec()),
        ]);
        let r = record(&fields);
        assert_eq!(r.payload.as_ref(), &[1, 2, 3]);
        assert_eq!(r.published_us, 42);
        let o = r.origin.unwrap();
        assert_eq!(
            (o.stream, o.entry.to_string(), o.attempts, o.reason.as_str()),
            (Stream::Normal, "5-1".into(), 3, "why")
        );
        let junk = record(&Value::Array(vec![Value::Int(1)]));
        assert!(junk.payload.is_empty() && junk.origin.is_none());
    }
}
