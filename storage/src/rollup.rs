//! The service graph's per-minute history: one row per (minute, version-level edge) with its
//! counts (from spans and from metrics, kept apart so the one-edge rule applies to any window)
//! and its latency sketches. Rows never leave this crate: they come in and go out as domain
//! `EdgeKey`s and `Stats`.

use meshlens_topology::graph::{
    ConnectionType, Counts, EdgeKey, Endpoint, LatencySketch, NodeKey, NodeKind, PolicyCounts,
    Stats, COUNTS_LEN,
};
use serde_json::{json, Value};

use crate::{on_pool, Store, StoreError};

/// One edge's statistics over one minute (unix minutes).
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeMinute {
    pub minute: i64,
    pub key: EdgeKey,
    pub stats: Stats,
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
);

fn endpoint_json(e: &Endpoint) -> Value {
    json!([
        e.node.kind.as_str(),
        e.node.namespace.as_deref(),
        &*e.node.name,
        e.version.as_deref()
    ])
}

/// The edge key as canonical JSON text (also the row's key, so the same edge is one row a minute).
fn edge_text(k: &EdgeKey) -> String {
    json!([
        endpoint_json(&k.client),
        endpoint_json(&k.server),
        k.connection.as_str()
    ])
    .to_string()
}

fn endpoint_from(v: &Value) -> Option<Endpoint> {
    let a = v.as_array()?;
    let kind = NodeKind::parse(a.first()?.as_str()?)?;
    let namespace = a.get(1)?.as_str();
    let name = a.get(2)?.as_str()?;
    let node = match kind {
        NodeKind::Service => NodeKey::service(namespace, name),
        other => NodeKey::virtual_node(other, name),
    };
    Some(Endpoint {
        node,
        version: a.get(3)?.as_str().map(Into::into),
    })
}

fn edge_from(text: &str) -> Option<EdgeKey> {
    let v: Value = serde_json::from_str(text).ok()?;
    let a = v.as_array()?;
    Some(EdgeKey {
        client: endpoint_from(a.first()?)?,
        server: endpoint_from(a.get(1)?)?,
        connection: ConnectionType::parse(a.get(2)?.as_str()?)?,
    })
}

fn counts_text(c: &Counts) -> String {
    json!(c.to_array()).to_string()
}

/// Rows written before later counts were added (mTLS, TCP) have fewer numbers; the missing ones
/// are 0.
fn counts_from(text: &str) -> Option<Counts> {
    let mut a: Vec<u64> = serde_json::from_str(text).ok()?;
    if a.len() < 11 || a.len() > COUNTS_LEN {
        return None;
    }
    a.resize(COUNTS_LEN, 0);
    Some(Counts::from_array(a.try_into().ok()?))
}

/// `[denied, rate_limited]`.
fn policy_counts_text(c: &PolicyCounts) -> String {
    json!([c.denied, c.rate_limited]).to_string()
}

fn policy_counts_from(text: &str) -> Option<PolicyCounts> {
    let [denied, rate_limited]: [u64; 2] = serde_json::from_str(text).ok()?;
    Some(PolicyCounts {
        denied,
        rate_limited,
    })
}

/// Six bytes a bucket: key (i16) and count (u32), little endian.
fn sketch_bytes(s: &LatencySketch) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.bins_in_use().len() * 6);
    for &(k, n) in s.bins_in_use() {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

fn sketch_from(bytes: &[u8]) -> Option<LatencySketch> {
    if !bytes.len().is_multiple_of(6) {
        return None;
    }
    let bins = bytes
        .chunks_exact(6)
        .map(|c| {
            (
                i16::from_le_bytes([c[0], c[1]]),
                u32::from_le_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    LatencySketch::from_bins(bins)
}

/// A minute's row, as stored.
pub(crate) fn encode(r: &EdgeMinute) -> Row {
    (
        r.minute,
        edge_text(&r.key),
        counts_text(&r.stats.counts),
        counts_text(&r.stats.metric_counts),
        policy_counts_text(&r.stats.policy_counts),
        sketch_bytes(&r.stats.server_latency),
        sketch_bytes(&r.stats.client_latency),
        sketch_bytes(&r.stats.metric_latency),
    )
}

pub(crate) fn decode(row: Row) -> Result<EdgeMinute, StoreError> {
    let (minute, edge, counts, metric_counts, policy_counts, server, client, metric) = row;
    let corrupt = || StoreError::Corrupt(format!("edge_minutes row {minute} {edge}"));
    Ok(EdgeMinute {
        minute,
        key: edge_from(&edge).ok_or_else(corrupt)?,
        stats: Stats {
            counts: counts_from(&counts).ok_or_else(corrupt)?,
            metric_counts: counts_from(&metric_counts).ok_or_else(corrupt)?,
            // Empty in rows written before the policy server counted.
            policy_counts: match policy_counts.as_str() {
                "" => PolicyCounts::default(),
                text => policy_counts_from(text).ok_or_else(corrupt)?,
            },
            server_latency: sketch_from(&server).ok_or_else(corrupt)?,
            client_latency: sketch_from(&client).ok_or_else(corrupt)?,
            metric_latency: sketch_from(&metric).ok_or_else(corrupt)?,
        },
    })
}

impl Store {
    /// Writes (or rewrites) minutes of edge statistics, in one transaction.
    pub async fn write_edge_minutes(&self, rows: &[EdgeMinute]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for r in rows {
                let (minute, edge, counts, metric_counts, policy_counts, server, client, metric) =
                    encode(r);
                sqlx::query(
                    "INSERT INTO edge_minutes (minute, edge, counts, metric_counts, policy_counts,
                       server_latency, client_latency, metric_latency)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (minute, edge) DO UPDATE SET counts = excluded.counts,
                       metric_counts = excluded.metric_counts, policy_counts = excluded.policy_counts,
                       server_latency = excluded.server_latency, client_latency = excluded.client_latency,
                       metric_latency = excluded.metric_latency",
                )
                .bind(minute)
                .bind(edge)
                .bind(counts)
                .bind(metric_counts)
                .bind(policy_counts)
                .bind(server)
                .bind(client)
                .bind(metric)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?
        });
        Ok(())
    }

    /// Every stored edge minute in `[from, to)` (unix minutes).
    pub async fn edge_minutes(&self, from: i64, to: i64) -> Result<Vec<EdgeMinute>, StoreError> {
        const MINUTE_NS: i128 = 60_000_000_000;
        self.check_range(i128::from(from) * MINUTE_NS, i128::from(to) * MINUTE_NS)?;
        let rows: Vec<Row> = on_pool!(&self.pool, |p| {
            sqlx::query_as(
                "SELECT minute, edge, counts, metric_counts, policy_counts, server_latency, client_latency,
                   metric_latency
                 FROM edge_minutes WHERE minute >= $1 AND minute < $2 ORDER BY minute, edge",
            )
            .bind(from)
            .bind(to)
            .fetch_all(p)
            .await?
        });
        rows.into_iter().map(decode).collect()
    }

    /// Deletes edge minutes before `minute` (retention). Returns how many rows went.
    pub async fn delete_edge_minutes_before(&self, minute: i64) -> Result<u64, StoreError> {
        Ok(on_pool!(&self.pool, |p| {
            sqlx::query("DELETE FROM edge_minutes WHERE minute < $1")
                .bind(minute)
                .execute(p)
                .await?
                .rows_affected()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_written_before_the_mtls_counts_read_back() {
        let old = counts_from("[5,1,0,1,0,0,0,0,42,3,0]").unwrap();
        assert_eq!(
            (old.requests, old.bytes, old.retries, old.mtls),
            (5, 42, 3, 0)
        );
        let c = Counts {
            mtls: 7,
            tls_known: 9,
            ..old
        };
        assert_eq!(counts_from(&counts_text(&c)), Some(c));
        assert_eq!(counts_from("[1,2]"), None);
    }
}
