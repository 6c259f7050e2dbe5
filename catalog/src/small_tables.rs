//! Small tables in local folders, kept decoded in memory.
//!
//! A point lookup on a table of a few thousand rows spent most of its time reading the
//! table's file again on every query: opening it, pruning it with the query's predicate and
//! decoding it, and planning that scan. A table whose files are small is instead read once
//! and kept as Arrow batches, shared by every user under one memory budget. Each query still
//! lists the table's files (as `file_listing_seconds` says), and the kept batches are used
//! only while every file's path, size and modification time are those they were read from.
//!
//! Only local folders: a table in S3 is read with each user's own AWS role, and a copy shared
//! by all users would read past those roles. Policy is unchanged: the kept batches are the
//! raw table, which only the policy rewrite scans, beneath the masks and row filters.
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Constraints, Result};
use datafusion::datasource::listing::{ListingTable, PartitionedFile};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::{ExecutionPlan, collect};

/// Default memory for kept tables, in megabytes.
pub const DEFAULT_MEGABYTES: u64 = 128;

/// A table is kept when its decoded batches take at most this share of the budget, so one
/// table cannot push out all others.
const SHARE_OF_BUDGET: u64 = 8;

/// The decoded small tables of one catalog, all users together.
pub struct SmallTables {
    /// Per table (`database.table`): its files as read, and their batches.
    kept: moka::sync::Cache<String, Arc<Kept>>,
    /// The most a table may take decoded, and (a cheaper first check) its files on disk.
    max_table_bytes: u64,
}

impl fmt::Debug for SmallTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SmallTables({} kept, up to {} bytes each)",
            self.kept.entry_count(),
            self.max_table_bytes
        )
    }
}

/// One table as last read.
struct Kept {
    files: Vec<FileStamp>,
    /// `None`: the table decoded larger than a table may take; it is read from its files.
    batches: Option<Vec<RecordBatch>>,
}

/// What identifies a file's content for as long as it is kept. Two writes of the same size
/// within one clock tick of the file system look alike (as for DataFusion's statistics cache).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FileStamp {
    path: String,
    size: u64,
    modified_nanos: Option<i64>,
}

impl FileStamp {
    fn of(file: &PartitionedFile) -> FileStamp {
        let meta = &file.object_meta;
        FileStamp {
            path: meta.location.to_string(),
            size: meta.size,
            modified_nanos: meta.last_modified.timestamp_nanos_opt(),
        }
    }
}

impl SmallTables {
    /// `megabytes`: the budget; 0 keeps no table.
    pub fn new(megabytes: u64) -> SmallTables {
        let budget_kib = megabytes.saturating_mul(1024);
        let kept = moka::sync::Cache::builder()
            .name("lakegate small tables")
            .max_capacity(budget_kib)
            .weigher(|_: &String, kept: &Arc<Kept>| {
                let bytes = kept.batches.iter().flatten().map(batch_bytes).sum::<u64>();
                u32::try_from(bytes / 1024 + 1).unwrap_or(u32::MAX)
            })
            .build();
        SmallTables {
            kept,
            max_table_bytes: megabytes.saturating_mul(1024 * 1024) / SHARE_OF_BUDGET,
        }
    }

    fn enabled(&self) -> bool {
        self.max_table_bytes > 0
    }

    /// How many tables are kept decoded now (for tests).
    pub fn kept_tables(&self) -> usize {
        self.kept.run_pending_tasks();
        self.kept
            .iter()
            .filter(|(_, kept)| kept.batches.is_some())
            .count()
    }
}

fn batch_bytes(batch: &RecordBatch) -> u64 {
    u64::try_from(batch.get_array_memory_size()).unwrap_or(u64::MAX)
}

/// A table of files in a local folder, read from memory while it is small and unchanged.
pub struct SmallTable {
    /// `database.table`: the key of its kept batches.
    name: String,
    files: Arc<ListingTable>,
    kept: Arc<SmallTables>,
}

impl fmt::Debug for SmallTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmallTable({})", self.name)
    }
}

impl SmallTable {
    pub fn new(name: String, files: ListingTable, kept: Arc<SmallTables>) -> SmallTable {
        SmallTable {
            name,
            files: Arc::new(files),
            kept,
        }
    }

    fn memory_scan(
        &self,
        batches: &[RecordBatch],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let source =
            MemorySourceConfig::try_new(&[batches.to_vec()], self.schema(), projection.cloned())?
                .with_limit(limit);
        Ok(DataSourceExec::from_data_source(source))
    }
}

#[async_trait]
impl TableProvider for SmallTable {
    fn schema(&self) -> SchemaRef {
        self.files.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.files.constraints()
    }

    fn table_type(&self) -> TableType {
        self.files.table_type()
    }

    /// The files' answers, none exact, so DataFusion keeps every filter above the scan: kept
    /// batches are not filtered. (Only tables without partitions are kept, whose answers are
    /// inexact already; a plan is cached for later queries, when the table may be kept or not.)
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(self
            .files
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|answer| match answer {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Inexact,
                other => other,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !self.kept.enabled() {
            return self.files.scan(state, projection, filters, limit).await;
        }
        let listed = self.files.list_files_for_scan(state, &[], None).await?;
        let mut files: Vec<FileStamp> = listed
            .file_groups
            .iter()
            .flat_map(|group| group.iter())
            .map(FileStamp::of)
            .collect();
        files.sort();
        let on_disk = files.iter().map(|f| f.size).sum::<u64>();
        if files.is_empty() || on_disk > self.kept.max_table_bytes {
            return self.files.scan(state, projection, filters, limit).await;
        }
        if let Some(kept) = self.kept.kept.get(&self.name)
            && kept.files == files
        {
            return match &kept.batches {
                Some(batches) => self.memory_scan(batches, projection, limit),
                None => self.files.scan(state, projection, filters, limit).await,
            };
        }
        // Read the whole table once; this query and the next ones scan it in memory.
        let all = self.files.scan(state, None, &[], None).await?;
        let batches = collect(all, state.task_ctx()).await?;
        let decoded = batches.iter().map(batch_bytes).sum::<u64>();
        let small = decoded <= self.kept.max_table_bytes;
        tracing::debug!(table = %self.name, files = files.len(), on_disk, decoded, small, "table read into memory");
        let plan = self.memory_scan(&batches, projection, limit)?;
        let kept = Kept {
            files,
            batches: small.then_some(batches),
        };
        self.kept.kept.insert(self.name.clone(), Arc::new(kept));
        Ok(plan)
    }
}
