//! An Athena result as Arrow batches, streamed from the CSV object Athena wrote to S3 (not
//! through `GetQueryResults`' 1,000-row pages), typed by the plan the gateway made: the client
//! was described those types before the query ran.
use std::sync::Arc;
use std::task::Poll;

use datafusion::arrow::csv::ReaderBuilder;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Rows per batch sent on.
const BATCH_ROWS: usize = 8192;

/// Whether every column of `schema` can be read back from Athena's CSV results.
pub fn readable(schema: &SchemaRef) -> bool {
    schema.fields().iter().all(|f| {
        let t = f.data_type();
        t.is_primitive()
            || matches!(
                t,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
            )
    }) && !schema.fields().iter().any(|f| {
        matches!(
            f.data_type(),
            DataType::Timestamp(_, Some(_)) | DataType::Interval(_) | DataType::Duration(_)
        )
    })
}

/// Streams the CSV object at `key` (header line first, as Athena writes it) as batches of
/// `schema`.
pub async fn stream_csv(
    store: Arc<dyn ObjectStore>,
    key: &str,
    schema: SchemaRef,
) -> Result<impl Stream<Item = Result<RecordBatch, ArrowError>> + Send + use<>, object_store::Error>
{
    let object = store.get(&Path::from(key)).await?;
    let bytes = object.into_stream();
    let mut decoder = ReaderBuilder::new(schema)
        .with_header(true)
        .with_batch_size(BATCH_ROWS)
        .build_decoder();
    let mut input = bytes.boxed();
    let mut buffered = bytes::Bytes::new();
    let mut ended = false;
    Ok(futures::stream::poll_fn(move |cx| {
        loop {
            if buffered.is_empty() && !ended {
                match input.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(b))) => buffered = b,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Some(Err(ArrowError::ExternalError(Box::new(e)))));
                    }
                    Poll::Ready(None) => ended = true,
                }
            }
            if ended && buffered.is_empty() {
                break;
            }
            let decoded = match decoder.decode(&buffered) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            let _ = buffered.split_to(decoded);
            // Decoding also pauses after the header line; only a full batch is sent on.
            if decoder.capacity() == 0 {
                break;
            }
        }
        Poll::Ready(decoder.flush().transpose())
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use futures::TryStreamExt;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    /// `csv` as Athena would have written it, read back as (id bigint, name text) batches.
    async fn read_back(csv: String) -> Vec<RecordBatch> {
        let store = Arc::new(InMemory::new());
        store
            .put(&Path::from("r/q.csv"), PutPayload::from(csv.into_bytes()))
            .await
            .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        stream_csv(store, "r/q.csv", schema)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    /// Athena's CSV: every value quoted, NULL as nothing, the header first.
    #[tokio::test]
    async fn athena_csv_streams_as_typed_batches() {
        let mut csv = String::from("\"id\",\"name\"\n");
        for i in 0..20_000 {
            if i % 3 == 0 {
                csv.push_str(&format!("\"{i}\",\n"));
            } else {
                csv.push_str(&format!("\"{i}\",\"n, \"\"{i}\"\"\"\n"));
            }
        }
        let batches = read_back(csv).await;
        assert!(batches.len() >= 3, "{} batches", batches.len());
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 20_000);
        let first = &batches[0];
        let ids = first.column(0).as_primitive::<Int64Type>();
        let names = first.column(1).as_string::<i32>();
        assert_eq!(ids.value(0), 0);
        assert!(names.is_null(0));
        assert_eq!(names.value(1), "n, \"1\"");

        // A known loss: an empty string (`""`) reads as NULL, like Athena's NULL (nothing).
        let batches = read_back("\"id\",\"name\"\n\"1\",\"\"\n".to_string()).await;
        assert!(batches[0].column(1).is_null(0));
    }
}
