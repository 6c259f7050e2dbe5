//! Session settings as PostgreSQL reports them: `SHOW name`, `SHOW ALL`, `current_setting()`
//! and `pg_catalog.pg_settings` all read this one table. A value the client set (at startup
//! or with `SET`, kept in the connection's metadata) wins over the default.
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use futures::stream;
use pgwire::api::Type;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response};

use crate::error::QueryError;
use crate::pg_compat;

/// (name, default, description). Lakegate is read-only, so transactions are read only.
const DEFAULTS: &[(&str, &str, &str)] = &[
    (
        "application_name",
        "",
        "Sets the application name to be reported in statistics and logs.",
    ),
    ("bytea_output", "hex", "Sets the output format for bytea."),
    (
        "client_encoding",
        "UTF8",
        "Sets the client's character set encoding.",
    ),
    (
        "client_min_messages",
        "notice",
        "Sets the message levels that are sent to the client.",
    ),
    (
        "DateStyle",
        "ISO, MDY",
        "Sets the display format for date and time values.",
    ),
    (
        "default_transaction_isolation",
        "read committed",
        "Sets the transaction isolation level of each new transaction.",
    ),
    (
        "default_transaction_read_only",
        "on",
        "Sets the default read-only status of new transactions.",
    ),
    (
        "extra_float_digits",
        "1",
        "Sets the number of digits displayed for floating-point values.",
    ),
    (
        "idle_in_transaction_session_timeout",
        "0",
        "Sets the maximum allowed idle time between queries, when in a transaction.",
    ),
    (
        "in_hot_standby",
        "off",
        "Shows whether hot standby is currently active.",
    ),
    (
        "integer_datetimes",
        "on",
        "Shows whether datetimes are integer based.",
    ),
    (
        "IntervalStyle",
        "postgres",
        "Sets the display format for interval values.",
    ),
    (
        "is_superuser",
        "off",
        "Shows whether the current user is a superuser.",
    ),
    ("lc_collate", "C.UTF-8", "Shows the collation order locale."),
    (
        "lc_ctype",
        "C.UTF-8",
        "Shows the character classification and case conversion locale.",
    ),
    (
        "lc_messages",
        "C.UTF-8",
        "Sets the language in which messages are displayed.",
    ),
    (
        "lc_monetary",
        "C.UTF-8",
        "Sets the locale for formatting monetary amounts.",
    ),
    (
        "lc_numeric",
        "C.UTF-8",
        "Sets the locale for formatting numbers.",
    ),
    (
        "lc_time",
        "C.UTF-8",
        "Sets the locale for formatting date and time values.",
    ),
    (
        "lock_timeout",
        "0",
        "Sets the maximum allowed duration of any wait for a lock.",
    ),
    (
        "max_identifier_length",
        "63",
        "Shows the maximum identifier length.",
    ),
    (
        "max_index_keys",
        "32",
        "Shows the maximum number of index keys.",
    ),
    ("row_security", "on", "Enable row security."),
    (
        "search_path",
        "",
        "Sets the schema search order for names that are not schema-qualified.",
    ),
    (
        "server_encoding",
        "UTF8",
        "Shows the server (database) character set encoding.",
    ),
    ("server_version", "", "Shows the server version."),
    (
        "server_version_num",
        "",
        "Shows the server version as an integer.",
    ),
    ("ssl", "on", "Enables SSL connections."),
    (
        "standard_conforming_strings",
        "on",
        "Causes '...' strings to treat backslashes literally.",
    ),
    (
        "statement_timeout",
        "0",
        "Sets the maximum allowed duration of any statement.",
    ),
    (
        "TimeZone",
        "UTC",
        "Sets the time zone for displaying and interpreting time stamps.",
    ),
    (
        "transaction_isolation",
        "read committed",
        "Sets the current transaction's isolation level.",
    ),
    (
        "transaction_read_only",
        "on",
        "Sets the current transaction's read-only status.",
    ),
];

/// The settings of one connection: defaults with the session's own values.
pub struct Settings {
    values: Vec<(&'static str, String, &'static str)>,
}

impl Settings {
    /// `metadata`: the connection's startup parameters and SET values (any case).
    pub fn new(default_schema: &str, metadata: &HashMap<String, String>) -> Settings {
        let lowered: HashMap<String, &String> = metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let values = DEFAULTS
            .iter()
            .map(|&(name, default, description)| {
                let value = match name {
                    // fixed by the server, whatever the client says
                    "server_version" => pg_compat::server_version(),
                    "server_version_num" => pg_compat::server_version_num(),
                    "server_encoding"
                    | "integer_datetimes"
                    | "is_superuser"
                    | "max_identifier_length" => default.to_string(),
                    _ => match lowered.get(&name.to_ascii_lowercase()) {
                        Some(v) => v.trim_matches('\'').to_string(),
                        None if name == "search_path" => default_schema.to_string(),
                        None => default.to_string(),
                    },
                };
                (name, value, description)
            })
            .collect();
        Settings { values }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v, _)| v.as_str())
    }

    /// `SHOW name` (one column named like the setting, lower case as PostgreSQL does).
    pub fn show(&self, name: &str) -> Result<Response, QueryError> {
        let value = self
            .get(name)
            .ok_or_else(|| QueryError::UndefinedSetting(name.to_string()))?;
        Ok(text_rows(
            &[&name.to_ascii_lowercase()],
            vec![vec![value.to_string()]],
        ))
    }

    /// `SHOW ALL`: name, setting, description.
    pub fn show_all(&self) -> Response {
        let rows = self
            .values
            .iter()
            .map(|(n, v, d)| vec![n.to_string(), v.clone(), d.to_string()])
            .collect();
        text_rows(&["name", "setting", "description"], rows)
    }
}

fn text_rows(columns: &[&str], rows: Vec<Vec<String>>) -> Response {
    let fields = Arc::new(
        columns
            .iter()
            .map(|c| FieldInfo::new(c.to_string(), None, None, Type::TEXT, FieldFormat::Text))
            .collect::<Vec<_>>(),
    );
    let encoded: Vec<_> = rows
        .into_iter()
        .map(|row| {
            let mut encoder = DataRowEncoder::new(fields.clone());
            for value in &row {
                encoder.encode_field(&Some(value.as_str()))?;
            }
            Ok(encoder.take_row())
        })
        .collect();
    Response::Query(QueryResponse::new(fields, stream::iter(encoded)))
}

/// `current_setting(name [, missing_ok])` with the connection's values at login.
pub fn current_setting_udf(settings: Settings) -> ScalarUDF {
    let settings = Arc::new(settings);
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
            let names = names
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| {
                    datafusion::error::DataFusionError::Execution(
                        "current_setting takes text".into(),
                    )
                })?;
            let mut out = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                if names.is_null(i) {
                    out.push(None);
                    continue;
                }
                match settings.get(names.value(i)) {
                    Some(v) => out.push(Some(v.to_string())),
                    None => {
                        return Err(datafusion::error::DataFusionError::Execution(format!(
                            "unrecognized configuration parameter \"{}\"",
                            names.value(i)
                        )));
                    }
                }
            }
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
        }),
    )
}

/// The rows of `pg_catalog.pg_settings` as a SQL VALUES body.
pub fn pg_settings_sql(settings: &Settings) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let rows: Vec<String> = settings
        .values
        .iter()
        .map(|(n, v, d)| format!("({}, {}, {})", quote(n), quote(v), quote(d)))
        .collect();
    format!(
        "SELECT name, setting, CAST(NULL AS VARCHAR) AS unit, 'Lakegate' AS category, \
         short_desc, CAST(NULL AS VARCHAR) AS extra_desc, 'user' AS context, 'string' AS vartype, \
         'default' AS source, CAST(NULL AS VARCHAR) AS min_val, CAST(NULL AS VARCHAR) AS max_val, \
         setting AS boot_val, setting AS reset_val, false AS pending_restart \
         FROM (VALUES {}) AS s(name, setting, short_desc)",
        rows.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_values_win_except_fixed_ones() {
        let metadata = HashMap::from([
            ("DateStyle".to_string(), "ISO, YMD".to_string()),
            ("server_version".to_string(), "9.0".to_string()),
        ]);
        let settings = Settings::new("gtm", &metadata);
        assert_eq!(settings.get("datestyle"), Some("ISO, YMD"));
        assert_eq!(settings.get("search_path"), Some("gtm"));
        assert_eq!(
            settings.get("server_version_num"),
            Some(pg_compat::server_version_num().as_str())
        );
        assert_eq!(settings.get("standard_conforming_strings"), Some("on"));
        assert!(settings.get("no_such_setting").is_none());
    }
}
