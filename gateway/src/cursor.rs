//! SQL cursors of one connection (`DECLARE`, `FETCH`, `CLOSE`). A cursor keeps its query's
//! Arrow batch stream, planned under policy at DECLARE, and FETCH encodes the rows it takes in
//! the format that FETCH asks for (drivers ask for binary in the extended protocol), as
//! PostgreSQL does.
use std::collections::HashMap;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{FetchDirection, Value};
use futures::StreamExt;
use tokio::sync::Mutex;

use crate::error::QueryError;

#[derive(Default)]
pub struct Cursors(Mutex<HashMap<String, Cursor>>);

struct Cursor {
    schema: SchemaRef,
    batches: SendableRecordBatchStream,
    /// Rows of a batch a previous FETCH did not take.
    pending: Option<RecordBatch>,
}

/// How many rows a FETCH asks for: `None` for all of them. Cursors scan forward only.
pub fn fetch_count(direction: &FetchDirection) -> Result<Option<usize>, QueryError> {
    let number = |v: &Value| match v {
        Value::Number(n, _) => n.parse::<usize>().ok(),
        _ => None,
    };
    match direction {
        FetchDirection::Next | FetchDirection::Forward { limit: None } => Ok(Some(1)),
        FetchDirection::Forward { limit: Some(v) } | FetchDirection::Count { limit: v } => {
            number(v)
                .map(Some)
                .ok_or_else(|| QueryError::Syntax("FETCH count must be a number".into()))
        }
        FetchDirection::ForwardAll | FetchDirection::All => Ok(None),
        _ => Err(QueryError::Unsupported(
            "cursor can only scan forward".into(),
        )),
    }
}

impl Cursors {
    pub async fn declare(&self, name: &str, schema: SchemaRef, batches: SendableRecordBatchStream) {
        self.0.lock().await.insert(
            name.to_string(),
            Cursor {
                schema,
                batches,
                pending: None,
            },
        );
    }

    /// Takes up to `count` rows (all for `None`); an exhausted cursor gives no rows.
    pub async fn fetch(
        &self,
        name: &str,
        count: Option<usize>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let mut cursors = self.0.lock().await;
        let cursor = cursors
            .get_mut(name)
            .ok_or_else(|| QueryError::UndefinedCursor(name.to_string()))?;
        let mut out = Vec::new();
        let mut wanted = count.unwrap_or(usize::MAX);
        while wanted > 0 {
            let batch = match cursor.pending.take() {
                Some(batch) => batch,
                None => match cursor.batches.next().await {
                    Some(batch) => batch?,
                    None => break,
                },
            };
            if batch.num_rows() > wanted {
                cursor.pending = Some(batch.slice(wanted, batch.num_rows() - wanted));
                out.push(batch.slice(0, wanted));
                wanted = 0;
            } else {
                wanted -= batch.num_rows();
                out.push(batch);
            }
        }
        Ok((cursor.schema.clone(), out))
    }

    pub async fn close(&self, name: Option<&str>) {
        let mut cursors = self.0.lock().await;
        match name {
            Some(name) => {
                cursors.remove(name);
            }
            None => cursors.clear(),
        }
    }
}
