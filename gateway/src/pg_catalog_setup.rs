//! datafusion-pg-catalog's `setup_pg_catalog`, with one difference: its static tables
//! (pg_proc, pg_type, pg_operator, ... decoded from 1.2 MB of embedded Feather files) are
//! decoded once per process and shared by every session. The library decodes them for each
//! call; as every login builds a session, that cost about 4 MB of memory per idle connection
//! and milliseconds of every login (measured by bench/run.py, see BENCHMARKS.md).
use std::sync::{Arc, OnceLock};

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables, array_bounds_udf, create_current_database_udf,
    create_current_schema_udf, create_current_schemas_udf, create_pg_backend_pid_udf,
    create_pg_encoding_to_char_udf, create_pg_get_constraintdef,
    create_pg_get_partition_ancestors_udf, create_pg_get_partkeydef_udf,
    create_pg_get_statisticsobjdef_columns_udf, create_pg_get_userbyid_udf,
    create_pg_relation_is_publishable_udf, create_pg_relation_size_udf,
    create_pg_stat_get_numscans, create_pg_table_is_visible, create_pg_total_relation_size_udf,
    create_session_user_udf, format_type, generate_series_arg_coercion, has_privilege_udf,
    oid_type_planner, pg_get_expr_udf, quote_ident_udf,
};

fn static_tables() -> DfResult<Arc<PgCatalogStaticTables>> {
    static TABLES: OnceLock<Result<Arc<PgCatalogStaticTables>, String>> = OnceLock::new();
    TABLES
        .get_or_init(|| {
            PgCatalogStaticTables::try_new()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(DataFusionError::Internal)
}

/// Registers pg_catalog in `catalog_name` and the functions clients expect beside it.
pub fn setup(ctx: &SessionContext, catalog_name: &str) -> DfResult<()> {
    let static_tables = static_tables()?;
    let pg_catalog = Arc::new(PgCatalogSchemaProvider::try_new(
        ctx.state().catalog_list().clone(),
        static_tables.clone(),
        EmptyContextProvider,
    )?);
    ctx.catalog(catalog_name)
        .ok_or_else(|| DataFusionError::Configuration(format!("catalog {catalog_name} not found")))?
        .register_schema("pg_catalog", pg_catalog)?;

    ctx.register_udf(create_current_database_udf(catalog_name));
    ctx.register_udf(create_current_schema_udf());
    ctx.register_udf(create_current_schemas_udf());
    ctx.register_udf(create_pg_get_userbyid_udf());
    for name in [
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_any_column_privilege",
    ] {
        ctx.register_udf(has_privilege_udf::create_has_privilege_udf(name));
    }
    ctx.register_udf(create_pg_table_is_visible());
    ctx.register_udf(format_type::create_format_type_udf());
    ctx.register_udf(create_session_user_udf());
    ctx.register_udtf("pg_get_keywords", static_tables.pg_get_keywords.clone());
    ctx.register_udf(pg_get_expr_udf::create_pg_get_expr_udf());
    ctx.register_udf(create_pg_get_partkeydef_udf());
    ctx.register_udf(create_pg_relation_is_publishable_udf());
    ctx.register_udf(create_pg_get_statisticsobjdef_columns_udf());
    ctx.register_udf(create_pg_encoding_to_char_udf());
    ctx.register_udf(create_pg_backend_pid_udf());
    ctx.register_udf(create_pg_relation_size_udf());
    ctx.register_udf(create_pg_total_relation_size_udf());
    ctx.register_udf(create_pg_stat_get_numscans());
    ctx.register_udf(create_pg_get_constraintdef());
    ctx.register_udf(create_pg_get_partition_ancestors_udf());
    ctx.register_udf(quote_ident_udf::create_quote_ident_udf());
    ctx.register_udf(quote_ident_udf::create_parse_ident_udf());
    ctx.register_udf(array_bounds_udf::create_array_upper_udf());
    ctx.register_udf(array_bounds_udf::create_array_lower_udf());

    // regclass, regproc, ... parse as types (int4), as in the library.
    let state = ctx.state_ref();
    let existing = state.read().clone();
    let with_oid_types = SessionStateBuilder::new_from_existing(existing)
        .with_type_planner(Arc::new(oid_type_planner::PgOidTypePlanner))
        .build();
    *state.write() = with_oid_types;

    generate_series_arg_coercion::CoerceIntArgsToBigInt::widen(ctx);
    Ok(())
}
