//! Small tables in local folders, kept decoded in memory.
//!
//! A point lookup on a table of a few thousand rows spent most of its time reading the
//! table's file again on every query: opening it, pruning it with the query's predicate and
//! decoding it, and planning that scan. A table whose files are small is instead read once
//! and kept as Arrow batches, shared by every user under one memory budget. Each query still
//! lists the table's files (as `file_listing_seconds` says), and the kept batches are used
//! only while every file's path, size and modification time are those they were read from.
//!
//! Listing the folder through DataFusion (object_store's local store walks it on a blocking
//! thread) became most of a kept lookup's cost, so a scan first looks at the folder itself:
//! every entry under it, with its size and times, taken before the listing a read or a check
//! was made from. While that is unchanged, so is anything a listing would find, and the kept
//! batches serve without a listing.
//!
//! Reading the folder's entries again was then a tenth of a kept lookup's CPU, so a look whose
//! entries all changed a while before it (`SmallTables::settle`) is checked by asking each of
//! them, and the folder itself, for their times alone: an entry added, removed or renamed
//! changes its folder's change time, a write changes its file's. Only a settled look: the file
//! system's clock ticks coarsely, and a change in the same tick as the look's newest could
//! leave every time as it was. A table read while its folder was not settled is read again
//! once it is, so the rows kept are never those of a change no look could tell apart.
//!
//! Only local folders: a table in S3 is read with each user's own AWS role, and a copy shared
//! by all users would read past those roles. Policy is unchanged: the kept batches are the
//! raw table, which only the policy rewrite scans, beneath the masks and row filters.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Constraints, Result};
use datafusion::datasource::listing::{ListingTable, PartitionedFile};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::TryStreamExt;

use crate::lookup::Lookups;

/// Default memory for kept tables, in megabytes.
pub const DEFAULT_MEGABYTES: u64 = 128;

/// A table is kept when its decoded batches take at most this share of the budget, so one
/// table cannot push out all others.
const SHARE_OF_BUDGET: u64 = 8;

/// The decoded small tables of one catalog, all users together.
pub struct SmallTables {
    /// Per table (`database.table`): its files as read, and their batches. Queries that find
    /// a table missing or changed at once wait for one read of it (moka's entry API).
    kept: moka::future::Cache<String, Arc<Kept>>,
    /// The most a table may take decoded, and (a cheaper first check) its files on disk.
    max_table_bytes: u64,
    /// How many times a table was read into memory (for tests).
    reads: std::sync::atomic::AtomicU64,
    /// Whether a scan may look at a table's folder instead of listing it: only while every
    /// scan's listing is fresh. A kept listing (`file_listing_seconds`) can be older than the
    /// folder, and a look recorded beside it would then keep old rows after it expires.
    look_at_folders: bool,
    /// How long after their last change a folder's entries are taken as settled.
    settle: Duration,
    /// How many times a table's folder was read (for tests).
    looks: std::sync::atomic::AtomicU64,
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
    /// The folder as it was before `files` were listed (`Folder::look`), if it could be taken.
    folder: Option<Folder>,
    /// `Ok(None)`: the table decoded larger than a table may take; it is read from its files.
    /// An error is given to the queries that waited for this read, and the next query reads
    /// the table again.
    batches: std::result::Result<Option<Vec<RecordBatch>>, Arc<DataFusionError>>,
    /// The batches' rows by value, for scans that look one up.
    lookups: Arc<Lookups>,
}

impl Kept {
    fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.batches.iter().flatten().flatten()
    }
}

/// What identifies a file's content for as long as it is kept. Two writes of the same size
/// within one clock tick of the file system look alike (as for DataFusion's statistics cache).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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

/// Every entry under a table's folder, subfolders included, as the file system gives it: a
/// file added, removed, renamed or written anywhere in it changes this.
#[derive(Debug, Clone)]
struct Folder {
    root: Stamp,
    entries: Vec<(PathBuf, Stamp)>,
    /// Every entry (and the folder) changed `settle` or longer before the look: a change
    /// after it shows in their times.
    settled: bool,
}

impl PartialEq for Folder {
    fn eq(&self, other: &Folder) -> bool {
        self.root == other.root && self.entries == other.entries
    }
}

/// What `stat` says of an entry: a write, a rename over it or a change of its times changes
/// this, and so does (for a folder) an entry added, removed or renamed in it. The change time
/// is the kernel's own: no tool sets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    folder: bool,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            folder: meta.is_dir(),
            inode: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether this entry last changed before `cutoff` (not where its time is out of range).
    fn changed_before(&self, cutoff: SystemTime) -> bool {
        let (seconds, nanos) = self.changed;
        let since_epoch = u64::try_from(seconds)
            .ok()
            .zip(u32::try_from(nanos).ok())
            .map(|(s, n)| Duration::new(s, n));
        since_epoch
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .is_some_and(|changed| changed < cutoff)
    }
}

/// More entries than this, and a folder is only looked at through its listing: looking is
/// done on the query's own thread, and must stay short.
const MOST_ENTRIES_LOOKED_AT: usize = 64;

impl Folder {
    /// The folder as it is now; none where it cannot be taken whole and briefly: an error,
    /// a symbolic link (the listing may follow it anywhere), or too many entries.
    fn look(root: &Path, settle: Duration) -> Option<Folder> {
        let looked_at = SystemTime::now();
        let root_stamp = Stamp::of(&std::fs::metadata(root).ok()?);
        let mut entries = Vec::new();
        let mut folders = vec![root.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).ok()? {
                let entry = entry.ok()?;
                let meta = entry.metadata().ok()?;
                if meta.file_type().is_symlink() || entries.len() >= MOST_ENTRIES_LOOKED_AT {
                    return None;
                }
                if meta.is_dir() {
                    folders.push(entry.path());
                }
                entries.push((entry.path(), Stamp::of(&meta)));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let settled = looked_at.checked_sub(settle).is_some_and(|cutoff| {
            root_stamp.changed_before(cutoff)
                && entries
                    .iter()
                    .all(|(_, stamp)| stamp.changed_before(cutoff))
        });
        Some(Folder {
            root: root_stamp,
            entries,
            settled,
        })
    }

    /// Whether a file both looks found changed since `earlier`: a listing can miss that (a
    /// write of the same size, its modification time put back).
    fn rewrote_a_file_since(&self, earlier: &Folder) -> bool {
        self.entries.iter().any(|(path, stamp)| {
            !stamp.folder
                && earlier
                    .entries
                    .binary_search_by(|(p, _)| p.cmp(path))
                    .is_ok_and(|at| earlier.entries[at].1 != *stamp)
        })
    }

    /// Whether the folder is still as this look found it, asked of each entry it found (and
    /// of the folder) rather than by reading the folder again; only a settled look can say.
    fn unchanged(&self, root: &Path) -> bool {
        self.settled
            && std::fs::metadata(root).is_ok_and(|meta| Stamp::of(&meta) == self.root)
            && self.entries.iter().all(|(path, stamp)| {
                std::fs::symlink_metadata(path).is_ok_and(|meta| Stamp::of(&meta) == *stamp)
            })
    }
}

/// How long after its last change a folder's entries are taken as settled (see the module's
/// text): beyond the file system's clock tick (2 s on FAT) and a file server's clock skew.
const SETTLE: Duration = Duration::from_secs(5);

impl SmallTables {
    /// `megabytes`: the budget; 0 keeps no table.
    pub fn new(megabytes: u64) -> SmallTables {
        let budget_kib = megabytes.saturating_mul(1024);
        let kept = moka::future::Cache::builder()
            .name("lakegate small tables")
            .max_capacity(budget_kib)
            .weigher(|_: &String, kept: &Arc<Kept>| {
                let bytes = kept.batches().map(batch_bytes).sum::<u64>();
                u32::try_from(bytes / 1024 + 1).unwrap_or(u32::MAX)
            })
            .build();
        SmallTables {
            kept,
            max_table_bytes: megabytes.saturating_mul(1024 * 1024) / SHARE_OF_BUDGET,
            reads: Default::default(),
            look_at_folders: true,
            settle: SETTLE,
            looks: Default::default(),
        }
    }

    /// Folders settle after `settle` instead (tests, which cannot wait for `SETTLE`).
    #[cfg(test)]
    pub(crate) fn settle_after(mut self, settle: Duration) -> SmallTables {
        self.settle = settle;
        self
    }

    /// How many times a table's folder was read (for tests).
    #[cfg(test)]
    pub(crate) fn looks(&self) -> u64 {
        self.looks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For scans whose listings are kept a while: tables are checked by their listing only.
    pub fn listing_kept(mut self) -> SmallTables {
        self.look_at_folders = false;
        self
    }

    fn enabled(&self) -> bool {
        self.max_table_bytes > 0
    }

    /// How many times a table was read from its files into memory (for tests).
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many tables are kept decoded now (for tests).
    pub async fn kept_tables(&self) -> usize {
        self.kept.run_pending_tasks().await;
        self.kept
            .iter()
            .filter(|(_, kept)| matches!(kept.batches, Ok(Some(_))))
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
    /// The local folder the table's files are in.
    folder: PathBuf,
    files: Arc<ListingTable>,
    kept: Arc<SmallTables>,
}

impl fmt::Debug for SmallTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmallTable({})", self.name)
    }
}

impl SmallTable {
    pub fn new(
        name: String,
        folder: PathBuf,
        files: ListingTable,
        kept: Arc<SmallTables>,
    ) -> SmallTable {
        SmallTable {
            name,
            folder,
            files: Arc::new(files),
            kept,
        }
    }

    /// A scan of `kept`'s `batches`: only of the rows a filter looks up, where one does.
    fn memory_scan(
        &self,
        kept: &Kept,
        batches: &[RecordBatch],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let narrowed = kept.lookups.narrowed(&schema, batches, filters);
        let batches = narrowed.unwrap_or_else(|| batches.to_vec());
        let source =
            MemorySourceConfig::try_new(&[batches], schema, projection.cloned())?.with_limit(limit);
        Ok(DataSourceExec::from_data_source(source))
    }

    /// The whole table, read from its files, as `files` listed them.
    async fn read(
        &self,
        state: &dyn Session,
        files: Vec<FileStamp>,
        folder: Option<Folder>,
    ) -> Arc<Kept> {
        self.kept
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Stops as soon as the decoded rows outgrow a table's share: a small file can decode
        // to far more (long runs of one value), and is then read from its files, in batches.
        let read = async {
            let all = self.files.scan(state, None, &[], None).await?;
            let mut stream = execute_stream(all, state.task_ctx())?;
            let (mut batches, mut decoded) = (Vec::new(), 0u64);
            while let Some(batch) = stream.try_next().await? {
                decoded = decoded.saturating_add(batch_bytes(&batch));
                if decoded > self.kept.max_table_bytes {
                    return Ok((None, decoded));
                }
                batches.push(batch);
            }
            Ok::<_, DataFusionError>((Some(batches), decoded))
        };
        let batches = match read.await {
            Ok((batches, decoded)) => {
                let small = batches.is_some();
                tracing::debug!(table = %self.name, files = files.len(), decoded, small, "table read into memory");
                Ok(batches)
            }
            Err(e) => Err(Arc::new(e)),
        };
        Arc::new(Kept {
            files,
            folder,
            batches,
            lookups: Arc::new(Lookups::new(self.schema().fields().len())),
        })
    }
}

/// Whether `kept` was read while its folder had not settled and `folder` (a look since) has:
/// the table is then read once more, as a change in the same clock tick as that look could
/// have left it looking the same.
fn settled_since(kept: &Kept, folder: Option<&Folder>) -> bool {
    kept.folder.as_ref().is_some_and(|looked| !looked.settled)
        && folder.is_some_and(|folder| folder.settled)
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

    /// None exact, so DataFusion keeps every filter above the scan: kept batches are at most
    /// narrowed to the rows a filter looks up (`lookup`). (Only tables without partitions are
    /// kept, whose files' answers are inexact too; a plan is cached for later queries, when
    /// the table may be kept or not.)
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
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
        let kept = self.kept.kept.get(&self.name).await;
        if let Some(kept) = &kept
            && let Some(looked) = &kept.folder
            && looked.unchanged(&self.folder)
            && let Ok(Some(batches)) = &kept.batches
        {
            return self.memory_scan(kept, batches, projection, filters, limit);
        }
        // Taken before the listing below: a change after it shows in the next look.
        let folder = if self.kept.look_at_folders {
            self.kept
                .looks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Folder::look(&self.folder, self.kept.settle)
        } else {
            None
        };
        if let Some(kept) = &kept
            && folder.is_some()
            && kept.folder == folder
            && !settled_since(kept, folder.as_ref())
            && let Ok(Some(batches)) = &kept.batches
        {
            return self.memory_scan(kept, batches, projection, filters, limit);
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
        let kept = self
            .kept
            .kept
            .entry_by_ref(&self.name)
            .or_insert_with_if(self.read(state, files.clone(), folder.clone()), |kept| {
                kept.files != files
                    || kept.batches.is_err()
                    || settled_since(kept, folder.as_ref())
                    || (kept.folder.as_ref())
                        .zip(folder.as_ref())
                        .is_some_and(|(earlier, now)| now.rewrote_a_file_since(earlier))
            })
            .await
            .into_value();
        if kept.files == files && kept.folder != folder {
            // Same files, the folder changed around them (or was not taken): the next scans
            // look for this folder.
            let looked = Kept {
                files,
                folder,
                batches: kept.batches.clone(),
                lookups: kept.lookups.clone(),
            };
            self.kept
                .kept
                .insert(self.name.clone(), Arc::new(looked))
                .await;
        }
        match &kept.batches {
            Ok(Some(batches)) => self.memory_scan(&kept, batches, projection, filters, limit),
            Ok(None) => self.files.scan(state, projection, filters, limit).await,
            Err(e) => Err(DataFusionError::Shared(e.clone())),
        }
    }
}
