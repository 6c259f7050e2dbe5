use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::cache::cache_manager::FileStatisticsCache;
use datafusion::execution::cache::default_cache::DefaultCache;

use crate::error::CatalogError;
use crate::glue_table::{GlueRef, GlueTable};
use crate::model::{Catalog, Database, FileNames, Table, TableFormat};
use crate::small_tables::{
    DEFAULT_MEGABYTES as DEFAULT_SMALL_TABLE_MEGABYTES, SmallTable, SmallTables,
};

/// The file names Hive and Athena count as data: any not starting with `_` or `.` (DataFusion
/// matches the glob against file names; `key=value` folders are partitions).
const DATA_FILES: &str = "[!_.]*";
use crate::types::{glue_type_to_arrow, parquet_read_type};

/// The catalog the gateway serves: the databases of a catalog file (the embedded default, each
/// table's files in a local folder or S3) and any added from Glue.
#[derive(Debug, Clone)]
pub struct LocalCatalog {
    catalog: Catalog,
    /// Folder that relative table locations are resolved against.
    base_dir: PathBuf,
    /// Each data file's statistics, read from its footer once rather than on every scan;
    /// an entry is used only while the file's size and modification time are unchanged.
    file_statistics: Arc<FileStatisticsCache>,
    /// Tables in local folders small enough to keep decoded, all users together.
    small_tables: Arc<SmallTables>,
}

/// DataFusion's own default size for this cache.
const FILE_STATISTICS_BYTES: usize = 20 * 1024 * 1024;

fn file_statistics_cache() -> Arc<FileStatisticsCache> {
    Arc::new(DefaultCache::new(FILE_STATISTICS_BYTES).with_name("lakegate file statistics"))
}

impl LocalCatalog {
    /// Reads and validates a catalog file (YAML, Glue's model).
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let catalog: Catalog = serde_saphyr::from_str(&text).map_err(|e| CatalogError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let local = LocalCatalog {
            catalog,
            base_dir,
            file_statistics: file_statistics_cache(),
            small_tables: Arc::new(SmallTables::new(DEFAULT_SMALL_TABLE_MEGABYTES)),
        };
        local.validate()?;
        Ok(local)
    }

    /// No local databases (a configuration serving Glue only).
    pub fn empty() -> Self {
        LocalCatalog {
            catalog: Catalog::default(),
            base_dir: PathBuf::from("."),
            file_statistics: file_statistics_cache(),
            small_tables: Arc::new(SmallTables::new(DEFAULT_SMALL_TABLE_MEGABYTES)),
        }
    }

    /// The memory for small tables kept decoded (see `small_tables`); 0 keeps none.
    /// `listing_seconds`: how long a table's file listing is kept (0: listed on every scan).
    /// Applies to the table providers made after it.
    pub fn keep_small_tables(&mut self, megabytes: u64, listing_seconds: u64) {
        let tables = SmallTables::new(megabytes);
        let tables = match listing_seconds {
            0 => tables,
            _ => tables.listing_kept(),
        };
        self.small_tables = Arc::new(tables);
    }

    /// The small tables kept decoded (for tests).
    pub fn small_tables(&self) -> &SmallTables {
        &self.small_tables
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Adds databases from another source (Glue) beside the local ones.
    pub fn add_databases(&mut self, databases: Vec<Database>) -> Result<(), CatalogError> {
        for db in &databases {
            if self.catalog.database(&db.name).is_some() {
                return Err(CatalogError::Duplicate(db.name.clone()));
            }
        }
        self.catalog.databases.extend(databases);
        self.validate()
    }

    fn validate(&self) -> Result<(), CatalogError> {
        for db in &self.catalog.databases {
            for table in &db.tables {
                let invalid = |message: String| CatalogError::Invalid {
                    database: db.name.clone(),
                    table: table.name.clone(),
                    message,
                };
                if table.is_view()
                    && (!table.location.is_empty() || !table.partition_keys.is_empty())
                {
                    return Err(invalid("a view has no location or partition keys".into()));
                }
                if !table.is_view() && table.location.is_empty() {
                    return Err(invalid("a table needs a location".into()));
                }
                let mut seen = std::collections::BTreeSet::new();
                for column in table.all_columns() {
                    if glue_type_to_arrow(&column.data_type).is_none() {
                        return Err(invalid(format!(
                            "column {} has unsupported type {:?}",
                            column.name, column.data_type
                        )));
                    }
                    if !seen.insert(column.name.as_str()) {
                        return Err(invalid(format!("column {} is declared twice", column.name)));
                    }
                }
            }
        }
        Ok(())
    }

    /// The Arrow schema of a table as declared: data columns, then partition keys.
    pub fn table_schema(table: &Table) -> SchemaRef {
        let fields: Vec<Field> = table
            .all_columns()
            .filter_map(|c| glue_type_to_arrow(&c.data_type).map(|t| Field::new(&c.name, t, true)))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// A DataFusion table over the table's files. This is the *raw* table: only the policy
    /// rewrite may scan it, so it is never registered in a user's session by name.
    /// The DataFusion table of `table`. A partitioned table from Glue, given `glue`, reads the
    /// partitions Glue names (`GlueTable`); any other lists its location.
    pub fn table_provider(
        &self,
        database: &str,
        table: &Table,
        glue: Option<GlueRef>,
    ) -> Result<Arc<dyn TableProvider>, CatalogError> {
        let provider_error = |source| CatalogError::Provider {
            database: database.to_string(),
            table: table.name.clone(),
            source,
        };
        // An object store URL (`s3://bucket/prefix`) is read through the store the user's
        // session registers for it; anything else is a local folder.
        let location = if table.location.contains("://") {
            table.location.trim_end_matches('/').to_string()
        } else {
            self.resolve_location(&table.location).display().to_string()
        };
        let url = ListingTableUrl::parse(format!("{location}/")).map_err(provider_error)?;
        let url = match table.file_names {
            FileNames::Extension => url,
            FileNames::Any => url.with_glob(DATA_FILES).map_err(provider_error)?,
        };
        let options = match table.format {
            TableFormat::Parquet => ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet"),
            TableFormat::Csv => {
                let delimiter = u8::try_from(table.csv.delimiter).unwrap_or(b',');
                let csv = CsvFormat::default()
                    .with_has_header(table.csv.header)
                    .with_delimiter(delimiter);
                ListingOptions::new(Arc::new(csv)).with_file_extension(".csv")
            }
            TableFormat::Json => {
                ListingOptions::new(Arc::new(JsonFormat::default())).with_file_extension(".json")
            }
        };
        let partition_cols = table
            .partition_keys
            .iter()
            .filter_map(|c| glue_type_to_arrow(&c.data_type).map(|t| (c.name.clone(), t)))
            .collect();
        let options = match table.file_names {
            FileNames::Extension => options,
            FileNames::Any => options.with_file_extension(""),
        };
        let options = options.with_table_partition_cols(partition_cols);
        let parquet = matches!(table.format, TableFormat::Parquet);
        let file_fields: Vec<Field> = table
            .columns
            .iter()
            .filter_map(|c| glue_type_to_arrow(&c.data_type).map(|t| (c, t)))
            .map(|(c, t)| {
                let t = if parquet { parquet_read_type(t) } else { t };
                Field::new(&c.name, t, true)
            })
            .collect();
        let file_schema: SchemaRef = Arc::new(Schema::new(file_fields));
        if let Some(glue) = glue.filter(|_| table.from_glue && !table.partition_keys.is_empty())
            && let Some(bucket) = table
                .location
                .strip_prefix("s3://")
                .and_then(|rest| rest.split('/').next())
        {
            let table =
                GlueTable::new(glue, bucket, options, file_schema).map_err(provider_error)?;
            return Ok(Arc::new(table));
        }
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(file_schema);
        let listing = ListingTable::try_new(config)
            .map_err(provider_error)?
            .with_cache(Some(self.file_statistics.clone()));
        // Kept in memory: unpartitioned tables in local folders. A table in S3 is read with
        // each user's own role, which a copy shared by all users would bypass; a partitioned
        // table's partition filters are exact (DataFusion drops them above the scan), which a
        // scan of kept batches would not apply, and such tables are seldom small.
        if table.location.contains("://") || !table.partition_keys.is_empty() {
            return Ok(Arc::new(listing));
        }
        let name = format!("{database}.{}", table.name);
        Ok(Arc::new(SmallTable::new(
            name,
            self.resolve_location(&table.location),
            listing,
            self.small_tables.clone(),
        )))
    }

    fn resolve_location(&self, location: &str) -> PathBuf {
        let path = Path::new(location);
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        };
        // Canonical when it exists, so listing URLs are stable; the raw join otherwise (the
        // scan then lists no files: an empty table, as Athena reads an empty prefix).
        joined.canonicalize().unwrap_or(joined)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::DataType;

    use super::*;

    /// The answer to `sql`, as a table.
    async fn shown(reader: &datafusion::prelude::SessionContext, sql: &str) -> String {
        let batches = reader
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .expect("format")
            .to_string()
    }

    fn provider_types(format: &str) -> Vec<DataType> {
        let yaml = format!(
            "databases:\n  - name: d\n    tables:\n      - name: t\n        location: data/t\n        \
             format: {format}\n        columns:\n          - {{ name: s, type: string }}\n          \
             - {{ name: b, type: binary }}\n          - {{ name: n, type: bigint }}\n"
        );
        let catalog: Catalog = serde_saphyr::from_str(&yaml).expect("catalog yaml");
        let local = LocalCatalog {
            catalog,
            base_dir: PathBuf::from("."),
            file_statistics: file_statistics_cache(),
            small_tables: Arc::new(SmallTables::new(0)),
        };
        let table = &local.catalog.databases[0].tables[0];
        let provider = local.table_provider("d", table, None).expect("provider");
        provider
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect()
    }

    #[test]
    fn parquet_strings_are_read_as_views_like_datafusion_does() {
        assert_eq!(
            provider_types("parquet"),
            [DataType::Utf8View, DataType::BinaryView, DataType::Int64]
        );
        assert_eq!(
            provider_types("csv"),
            [DataType::Utf8, DataType::Binary, DataType::Int64]
        );
    }

    /// Statistics are kept per file; a file rewritten between queries must still be read
    /// anew (DataFusion answers `count(*)` from exact statistics without reading rows).
    /// A kept entry is checked against the file's size and modification time, so the new
    /// file differs in size (two writes within one clock tick of the file system can have
    /// the same time).
    #[tokio::test]
    async fn a_rewritten_file_is_not_answered_from_kept_statistics() {
        let dir = std::env::temp_dir().join(format!("lakegate-stats-{}", std::process::id()));
        let data = dir.join("t");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&data).expect("folder");
        let writer = datafusion::prelude::SessionContext::new();
        let write = |rows: &'static str| {
            let file = data.join("part-0.parquet");
            let writer = writer.clone();
            async move {
                let _ = std::fs::remove_file(&file);
                let sql = format!(
                    "COPY (SELECT column1 AS n FROM (VALUES {rows})) TO '{}' STORED AS PARQUET",
                    file.display()
                );
                writer
                    .sql(&sql)
                    .await
                    .expect("copy")
                    .collect()
                    .await
                    .expect("written");
            }
        };
        write("(1), (2)").await;
        let yaml = "databases:\n  - name: d\n    tables:\n      - name: t\n        location: t\n        \
                    format: parquet\n        columns:\n          - { name: n, type: bigint }\n";
        let local = LocalCatalog {
            catalog: serde_saphyr::from_str(yaml).expect("catalog yaml"),
            base_dir: dir.clone(),
            file_statistics: file_statistics_cache(),
            small_tables: Arc::new(SmallTables::new(0)),
        };
        let table = &local.catalog.databases[0].tables[0];
        // as the gateway reads: listing the files on every scan
        let caches = datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
            .with_list_files_cache_limit(0);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_cache_manager(caches)
            .build_arc()
            .expect("runtime");
        let reader = datafusion::prelude::SessionContext::new_with_config_rt(
            datafusion::prelude::SessionConfig::new(),
            runtime,
        );
        let provider = local.table_provider("d", table, None).expect("provider");
        reader.register_table("t", provider).expect("registered");
        let count = || shown(&reader, "SELECT count(*) FROM t");
        assert!(count().await.contains("| 2 "), "{}", count().await);
        assert_eq!(local.file_statistics.len(), 1, "statistics kept");
        write("(1), (2), (3), (4), (5), (6), (7), (8), (9), (10), (11), (12)").await;
        assert!(count().await.contains("| 12 "), "{}", count().await);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A folder of its own holding table `t`'s folder with one CSV file of `rows`.
    fn csv_folder(name: &str, rows: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("lakegate-{name}-{}", std::process::id()));
        let data = dir.join("t");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&data).expect("folder");
        std::fs::write(data.join("part-0.csv"), rows).expect("csv");
        (dir, data)
    }

    /// A catalog of the CSV table `d.t` (`s` string, `n` bigint) in `dir`, keeping small
    /// tables within `megabytes` (0: read from the files every time).
    fn csv_catalog(dir: &Path, megabytes: u64) -> LocalCatalog {
        let yaml = "databases:\n  - name: d\n    tables:\n      - name: t\n        location: t\n        \
                    format: csv\n        columns:\n          - { name: s, type: string }\n          \
                    - { name: n, type: bigint }\n";
        LocalCatalog {
            catalog: serde_saphyr::from_str(yaml).expect("catalog yaml"),
            base_dir: dir.to_path_buf(),
            file_statistics: file_statistics_cache(),
            small_tables: Arc::new(SmallTables::new(megabytes)),
        }
    }

    /// `sql`'s answer over `local`'s table `t`, from a new provider.
    async fn csv_answer(local: &LocalCatalog, sql: &str) -> String {
        let table = &local.catalog.databases[0].tables[0];
        let provider = local.table_provider("d", table, None).expect("provider");
        let reader = datafusion::prelude::SessionContext::new();
        reader.register_table("t", provider).expect("registered");
        shown(&reader, sql).await
    }

    /// A CSV table kept in memory answers as its file does, and is read again when the file
    /// changes (the gateway's tests cover Parquet).
    #[tokio::test]
    async fn a_kept_csv_table_answers_as_its_file() {
        let (dir, data) = csv_folder("kept-csv", "s,n\nx,1\ny,2\nz,3\n");
        let (kept, files) = (csv_catalog(&dir, 8), csv_catalog(&dir, 0));
        let sql = "SELECT string_agg(s, ',' ORDER BY n) AS s, sum(n) AS n FROM t WHERE n > 1";
        let answer = |local| csv_answer(local, sql);
        let first = answer(&kept).await;
        let again = answer(&kept).await;
        let from_files = answer(&files).await;
        let reads = kept.small_tables().reads();
        std::fs::write(data.join("part-0.csv"), "s,n\nx,1\ny,2\nz,3\nw,4\n").expect("csv");
        let changed = answer(&kept).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(first.contains("| y,z | 5 |"), "{first}");
        assert_eq!(again, first);
        assert_eq!(from_files, first);
        assert_eq!(reads, 1, "read once, then kept");
        assert!(changed.contains("| y,z,w | 9 |"), "{changed}");
        assert_eq!(kept.small_tables().kept_tables().await, 1);
    }

    /// A kept table answers as its files do through every change to its folder, seen by
    /// looking at the folder rather than listing it; a file that is not the table's is no
    /// reason to read the table again.
    #[tokio::test]
    async fn a_kept_table_follows_every_change_to_its_folder() {
        let (dir, data) = csv_folder("kept-folder", "s,n\nx,1\ny,2\n");
        let (kept, files) = (csv_catalog(&dir, 8), csv_catalog(&dir, 0));
        let answer = |local| csv_answer(local, "SELECT count(*) AS rows, sum(n) AS n FROM t");
        let mut answers = vec![(answer(&kept).await, answer(&files).await)];
        answers.push((answer(&kept).await, answer(&files).await));
        // not the table's: the table stays as read
        std::fs::write(data.join("_SUCCESS"), "").expect("marker");
        answers.push((answer(&kept).await, answer(&files).await));
        answers.push((answer(&kept).await, answer(&files).await));
        let reads_after_marker = kept.small_tables().reads();
        let changes: [&dyn Fn(); 4] = [
            &|| std::fs::write(data.join("part-1.csv"), "s,n\nz,3\n").expect("added"),
            &|| {
                std::fs::create_dir_all(data.join("sub")).expect("subfolder");
                std::fs::write(data.join("sub/part-2.csv"), "s,n\nw,4\n").expect("nested");
            },
            &|| std::fs::write(data.join("part-1.csv"), "s,n\nz,30\n").expect("rewritten"),
            &|| std::fs::remove_file(data.join("part-0.csv")).expect("removed"),
        ];
        for change in changes {
            change();
            answers.push((answer(&kept).await, answer(&files).await));
            answers.push((answer(&kept).await, answer(&files).await));
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(answers[0].0.contains("| 2    | 3 |"), "{}", answers[0].0);
        for (step, (from_memory, from_files)) in answers.iter().enumerate() {
            assert_eq!(from_memory, from_files, "step {step}");
        }
        assert_eq!(
            reads_after_marker, 1,
            "read once: the marker is not the table's"
        );
        let last = &answers[answers.len() - 1].0;
        assert!(last.contains("| 30 |") || last.contains("| 34 |"), "{last}");
    }

    /// Once its folder has settled, a kept table is checked by asking its entries for their
    /// times, without reading the folder, and it still follows every change to the folder:
    /// made just after such a check, and seen by the next one.
    #[tokio::test]
    async fn a_settled_folder_is_checked_by_its_entries_and_still_followed() {
        let (dir, data) = csv_folder("kept-settled", "s,n\nx,1\ny,2\n");
        let settle = std::time::Duration::from_millis(20);
        let kept = LocalCatalog {
            small_tables: Arc::new(SmallTables::new(8).settle_after(settle)),
            ..csv_catalog(&dir, 0)
        };
        let files = csv_catalog(&dir, 0);
        let answer = |local| csv_answer(local, "SELECT count(*) AS rows, sum(n) AS n FROM t");
        // what is tested is the file system's clock passing the margin, not a wait for a peer
        let let_settle = || std::thread::sleep(settle * 3);
        let_settle();
        let mut answers = vec![(answer(&kept).await, answer(&files).await)];
        let looks = kept.small_tables().looks();
        answers.push((answer(&kept).await, answer(&files).await));
        answers.push((answer(&kept).await, answer(&files).await));
        let mut looks_when_settled = kept.small_tables().looks() - looks;
        let part_1 = data.join("part-1.csv");
        let changes: [&dyn Fn(); 6] = [
            &|| std::fs::write(&part_1, "s,n\nz,3\n").expect("added"),
            &|| {
                std::fs::create_dir_all(data.join("sub")).expect("subfolder");
                std::fs::write(data.join("sub/part-2.csv"), "s,n\nw,4\n").expect("nested");
            },
            // the same size, in place
            &|| std::fs::write(&part_1, "s,n\nz,5\n").expect("rewritten"),
            // the same size, and its old modification time put back
            &|| {
                let modified = std::fs::metadata(&part_1)
                    .and_then(|m| m.modified())
                    .expect("time");
                std::fs::write(&part_1, "s,n\nz,6\n").expect("rewritten");
                let file = std::fs::File::options().write(true).open(&part_1);
                file.and_then(|f| f.set_modified(modified))
                    .expect("time put back");
            },
            &|| std::fs::write(data.join("sub/part-2.csv"), "s,n\nw,40\n").expect("nested"),
            &|| std::fs::remove_file(data.join("part-0.csv")).expect("removed"),
        ];
        for change in changes {
            change();
            answers.push((answer(&kept).await, answer(&files).await));
            let_settle();
            // read again once settled, then checked by its entries
            answers.push((answer(&kept).await, answer(&files).await));
            let looks = kept.small_tables().looks();
            answers.push((answer(&kept).await, answer(&files).await));
            looks_when_settled += kept.small_tables().looks() - looks;
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(looks_when_settled, 0, "a settled folder is not read");
        for (step, (from_memory, from_files)) in answers.iter().enumerate() {
            assert_eq!(from_memory, from_files, "step {step}");
        }
        let last = &answers[answers.len() - 1].0;
        // part-1's last value, with or without the nested file (as the listing finds it)
        assert!(last.contains("| 6 |") || last.contains("| 46 |"), "{last}");
    }
}
