//! Where work runs: each connection on one of a few single-threaded runtimes (one per
//! worker of the main runtime), each query's plan on the main runtime's shared workers,
//! unless the plan answers from memory on one partition.
//!
//! With one runtime whose workers shared all connections, a socket that turned readable was
//! seen by whichever worker's driver polled it, and its task could run on the other: at 32
//! clients of prepared lookups a tenth of the gateway's CPU went to context switches. A
//! connection kept on one thread with its own I/O driver is read, answered and written
//! there, as a PostgreSQL backend is; the gateway's CPU per such lookup fell by about a sixth
//! and its rate rose by a fifth to a third (BENCHMARKS.md, 2026-12-01). Analytical queries
//! still need every core, so a plan that reads files or a remote engine, or runs on several
//! partitions, runs on the shared workers and sends its batches to the connection's thread
//! (DataFusion's receiver stream, which stops the query when the connection drops it).
use std::any::Any;
use std::cell::OnceCell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, execute_stream};
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::kept_run::KeptRunExec;

/// Batches a query on the shared workers may have ready before the connection takes them.
const BATCHES_IN_FLIGHT: usize = 2;

thread_local! {
    /// On a connection thread: the main runtime, which runs plans that do not answer in place.
    static QUERIES_RUN_ON: OnceCell<Handle> = const { OnceCell::new() };
}

type Start = Box<dyn FnOnce() + Send>;

/// The connection threads.
pub struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
}

struct ConnectionThread {
    starts: mpsc::UnboundedSender<Start>,
    /// Connections being served on it, to give a new one to the least busy thread.
    serving: Arc<AtomicUsize>,
}

impl ConnectionThreads {
    /// `count` threads (at least one), each with a runtime of its own; plans that do not
    /// answer in place run on `queries`.
    pub fn start(count: usize, queries: Handle) -> std::io::Result<ConnectionThreads> {
        let threads = (0..count.max(1))
            .map(|at| {
                let (starts, mut waiting) = mpsc::unbounded_channel::<Start>();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let queries = queries.clone();
                std::thread::Builder::new()
                    .name(format!("lakegate-connections-{at}"))
                    .spawn(move || {
                        QUERIES_RUN_ON.with(|on| {
                            on.get_or_init(|| queries);
                        });
                        // Ends when the server stops (its listener failed), and with it the
                        // connections still on this thread.
                        runtime.block_on(async move {
                            while let Some(start) = waiting.recv().await {
                                start();
                            }
                        });
                    })?;
                Ok(ConnectionThread {
                    starts,
                    serving: Arc::default(),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(ConnectionThreads { threads })
    }

    /// Serves a connection on the least busy thread: `make` runs there, inside its runtime
    /// (where the socket is to be registered), and the future it makes is spawned there.
    pub fn serve<M, F>(&self, make: M)
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self
            .threads
            .iter()
            .min_by_key(|t| t.serving.load(Ordering::Relaxed))
        else {
            return;
        };
        let serving = Serving::one_more(&thread.serving);
        let start: Start = Box::new(move || {
            let connection = make();
            tokio::spawn(async move {
                connection.await;
                drop(serving);
            });
        });
        if thread.starts.send(start).is_err() {
            // Only if the thread's runtime failed: the connection is dropped (closed).
            tracing::error!("a connection thread has stopped; a connection was closed");
        }
    }
}

/// One connection counted on its thread until it ends, even by a panic.
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn one_more(count: &Arc<AtomicUsize>) -> Serving {
        count.fetch_add(1, Ordering::Relaxed);
        Serving(count.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `plan` as DataFusion's `execute_stream` does: here when it answers from memory on one
/// partition (or off a connection thread), else on the shared workers.
pub fn execute(
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    let queries = QUERIES_RUN_ON.with(|on| on.get().cloned());
    let Some(queries) = queries.filter(|_| !answers_in_place(plan.as_ref())) else {
        return execute_stream(plan, context);
    };
    let mut builder = RecordBatchReceiverStreamBuilder::new(plan.schema(), BATCHES_IN_FLIGHT);
    let batches = builder.tx();
    builder.spawn_on(
        async move {
            // Executed there, so the plan's own tasks (partitions, exchanges) are spawned there.
            let mut stream = match execute_stream(plan, context) {
                Ok(stream) => stream,
                Err(e) => {
                    batches.send(Err(e)).await.ok();
                    return Ok(());
                }
            };
            while let Some(batch) = stream.next().await {
                if batches.send(batch).await.is_err() {
                    break; // the connection dropped the query
                }
            }
            Ok(())
        },
        &queries,
    );
    Ok(builder.build())
}

/// Whether every node of `plan` has one partition and every leaf holds its rows in memory:
/// work bounded by rows already decoded (a kept table takes at most an eighth of the kept
/// tables' budget), most often a fraction of a millisecond, and not worth a trip to another
/// thread and back.
fn answers_in_place(plan: &dyn ExecutionPlan) -> bool {
    if plan.output_partitioning().partition_count() > 1 {
        return false;
    }
    let children = plan.children();
    if children.is_empty() {
        let any: &dyn Any = plan;
        let in_memory = |source: &DataSourceExec| {
            let source: &dyn Any = source.data_source().as_ref();
            source.is::<MemorySourceConfig>()
        };
        return any.is::<KeptRunExec>()
            || any.is::<PlaceholderRowExec>()
            || any.is::<EmptyExec>()
            || any.downcast_ref::<DataSourceExec>().is_some_and(in_memory);
    }
    children
        .into_iter()
        .all(|child| answers_in_place(child.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// A session planning for `partitions` partitions, with a memory table `t` of two rows.
    async fn session_with_table(partitions: usize) -> SessionContext {
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(partitions),
        );
        ctx.sql("CREATE TABLE t AS VALUES (1, 'a'), (2, 'b')")
            .await
            .expect("creates")
            .collect()
            .await
            .expect("runs");
        ctx
    }

    async fn physical(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        let df = ctx.sql(sql).await.expect("plans");
        df.create_physical_plan().await.expect("physical")
    }

    #[tokio::test]
    async fn plans_in_memory_on_one_partition_answer_in_place_others_do_not() {
        let ctx = session_with_table(2).await;
        assert!(answers_in_place(physical(&ctx, "SELECT 1").await.as_ref()));
        assert!(answers_in_place(
            physical(&ctx, "SELECT column2 FROM t WHERE column1 = 2")
                .await
                .as_ref()
        ));
        // generate_series makes its rows as it runs: it may be ten million of them
        assert!(!answers_in_place(
            physical(&ctx, "SELECT * FROM generate_series(1, 10)")
                .await
                .as_ref()
        ));
        // an aggregate over two partitions
        assert!(!answers_in_place(
            physical(
                &ctx,
                "SELECT count(*) FROM t a JOIN t b ON a.column1 = b.column1 GROUP BY a.column2"
            )
            .await
            .as_ref()
        ));
    }

    /// A new connection goes to the thread serving the fewest, and counts there until it ends.
    #[test]
    fn connections_spread_over_the_threads() {
        let queries = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let threads =
            ConnectionThreads::start(2, queries.handle().clone()).expect("connection threads");
        let (told, answers) = std::sync::mpsc::channel::<Option<String>>();
        let serve = |told: std::sync::mpsc::Sender<Option<String>>| {
            let (end, ended) = tokio::sync::oneshot::channel::<()>();
            threads.serve(move || async move {
                told.send(std::thread::current().name().map(str::to_string))
                    .expect("told");
                ended.await.ok();
            });
            let name = answers
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("served")
                .expect("named");
            (name, end)
        };
        let served: Vec<_> = (0..3).map(|_| serve(told.clone())).collect();
        let busier = served[0].0.clone();
        let on_busier = served.iter().filter(|(name, _)| *name == busier).count();
        assert_eq!(on_busier, 2, "three connections on two threads: {served:?}");
        let at = usize::from(busier.ends_with('1'));
        let serving = |at: usize| threads.threads[at].serving.load(Ordering::Relaxed);
        // the busier thread's connections end (the other's goes on): it is now the least busy
        let going_on: Vec<_> = served
            .into_iter()
            .filter(|(name, _)| *name != busier)
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while serving(at) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "ended connections still counted"
            );
            std::thread::yield_now();
        }
        assert_eq!(serve(told).0, busier);
        drop(going_on);
    }

    /// On a connection thread, a plan over rows in memory runs in place, one that makes or
    /// reads its rows elsewhere runs on the shared workers, and either gives back its rows and
    /// its error. (One partition each: more go to the shared workers, the test above.)
    #[test]
    fn a_connection_thread_sends_plans_off_and_keeps_those_in_memory() {
        use datafusion::arrow::datatypes::DataType;
        use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
        use datafusion::scalar::ScalarValue;

        let queries = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("queries")
            .enable_all()
            .build()
            .expect("runtime");
        let threads =
            ConnectionThreads::start(1, queries.handle().clone()).expect("connection threads");
        // where a row was made: volatile, so planning cannot fold it into a constant
        let ran_on = create_udf(
            "ran_on",
            vec![],
            DataType::Utf8,
            Volatility::Volatile,
            Arc::new(|_| {
                let name = std::thread::current().name().map(str::to_string);
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(name)))
            }),
        );
        let (told, answers) = std::sync::mpsc::channel();
        threads.serve(move || async move {
            let ctx = session_with_table(1).await;
            ctx.register_udf(ran_on);
            let mut seen = Vec::new();
            for sql in [
                "SELECT ran_on()",
                "SELECT ran_on() FROM t WHERE column1 = 2",
                "SELECT DISTINCT ran_on() FROM generate_series(1, 100000)",
                "SELECT CAST(CAST(value AS VARCHAR) || 'x' AS INT) FROM generate_series(1, 3)",
            ] {
                let plan = physical(&ctx, sql).await;
                let rows = execute(plan, ctx.task_ctx()).expect("starts");
                let batches: Vec<_> = rows.collect().await;
                let ran_on = batches
                    .iter()
                    .map(|batch| match batch {
                        Ok(batch) => datafusion::arrow::util::pretty::pretty_format_columns(
                            "ran_on",
                            batch.columns(),
                        )
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                        Err(e) => format!("error: {e}"),
                    })
                    .collect::<Vec<_>>()
                    .join("");
                seen.push(ran_on);
            }
            told.send(seen).expect("told");
        });
        let seen = answers
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("answered");
        assert!(seen[0].contains("lakegate-connections-0"), "{}", seen[0]);
        assert!(seen[1].contains("lakegate-connections-0"), "{}", seen[1]);
        assert!(
            seen[2].contains("queries") && !seen[2].contains("lakegate"),
            "{}",
            seen[2]
        );
        assert!(
            seen[3].starts_with("error: "),
            "the error comes back: {}",
            seen[3]
        );
    }
}
