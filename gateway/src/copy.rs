//! `COPY ... TO STDOUT` (psql's `\copy ... to`): the source is turned into a query and runs
//! through the same gate, planner and policy as any SELECT. COPY to or from files and programs,
//! and COPY FROM STDIN (a write), are refused by the gate.
use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{CopyOption, CopySource, CopyTarget, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::{Stream, StreamExt};
use pgwire::api::Type;
use pgwire::api::results::{
    CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, FieldFormat, FieldInfo,
};
use pgwire::error::PgWireResult;
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;

use crate::error::QueryError;

/// A COPY TO STDOUT, as the query it reads and how to format it.
pub struct CopyOut {
    pub query: Statement,
    csv: bool,
    header: bool,
    delimiter: Option<char>,
    null: Option<String>,
}

/// `Some` for a `COPY ... TO STDOUT` Lakegate serves; `None` for any other statement.
pub fn copy_out(statement: &Statement) -> Result<Option<CopyOut>, QueryError> {
    let Statement::Copy {
        source,
        to: true,
        target: CopyTarget::Stdout,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return Ok(None);
    };
    let query = match source {
        CopySource::Query(query) => Statement::Query(query.clone()),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let list = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let sql = format!("SELECT {list} FROM {table_name}");
            Parser::parse_sql(&PostgreSqlDialect {}, &sql)
                .ok()
                .and_then(|mut s| s.pop())
                .ok_or_else(|| QueryError::Syntax(format!("COPY {table_name}")))?
        }
    };
    if !legacy_options.is_empty() {
        return Err(QueryError::Unsupported(
            "COPY: use the WITH (...) option syntax".into(),
        ));
    }
    let mut out = CopyOut {
        query,
        csv: false,
        header: false,
        delimiter: None,
        null: None,
    };
    for option in options {
        match option {
            CopyOption::Format(f) if f.value.eq_ignore_ascii_case("csv") => out.csv = true,
            CopyOption::Format(f) if f.value.eq_ignore_ascii_case("text") => out.csv = false,
            CopyOption::Header(h) => out.header = *h,
            CopyOption::Delimiter(d) => out.delimiter = Some(*d),
            CopyOption::Null(n) => out.null = Some(n.clone()),
            other => {
                return Err(QueryError::Unsupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    if out.header && !out.csv {
        return Err(QueryError::Unsupported(
            "COPY HEADER available only in CSV mode".into(),
        ));
    }
    Ok(Some(out))
}

impl CopyOut {
    /// Turns text-encoded rows (arrow-pg's DataRows) into COPY data in the requested format.
    pub fn response(
        &self,
        names: Vec<String>,
        rows: impl Stream<Item = PgWireResult<DataRow>> + Send + 'static,
    ) -> CopyResponse {
        let schema: Arc<Vec<FieldInfo>> = Arc::new(
            names
                .iter()
                .map(|n| FieldInfo::new(n.clone(), None, None, Type::TEXT, FieldFormat::Text))
                .collect(),
        );
        let columns = schema.len();
        let mut encoder = if self.csv {
            let mut options = CopyCsvOptions::default();
            if let Some(d) = self.delimiter {
                options.delimiter = d.to_string().into();
            }
            if let Some(n) = &self.null {
                options.null_string = n.as_str().into();
            }
            CopyEncoder::new_csv(schema, options)
        } else {
            let mut options = CopyTextOptions::default();
            if let Some(d) = self.delimiter {
                options.delimiter = d.to_string().into();
            }
            if let Some(n) = &self.null {
                options.null_string = n.as_str().into();
            }
            CopyEncoder::new_text(schema, options)
        };
        // The header travels in the first row's CopyData, so the command tag counts rows only
        // ("COPY n", as PostgreSQL reports it).
        let mut header = None;
        if self.header {
            for name in &names {
                if let Err(e) = encoder.encode_field(&Some(name.as_str())) {
                    return CopyResponse::new(0, columns, futures::stream::iter(vec![Err(e)]));
                }
            }
            header = Some(encoder.take_copy().data);
        }
        let pending = Arc::new(std::sync::Mutex::new(header));
        let first = pending.clone();
        let body = rows.map(move |row| -> PgWireResult<CopyData> {
            let row = row?;
            for value in fields(&row) {
                encoder.encode_field(&value)?;
            }
            let data = encoder.take_copy();
            match first.lock().ok().and_then(|mut h| h.take()) {
                Some(header) => Ok(CopyData::new([header, data.data].concat().into())),
                None => Ok(data),
            }
        });
        // no rows at all: the header alone
        let rest = futures::stream::iter(std::iter::from_fn(move || {
            pending
                .lock()
                .ok()
                .and_then(|mut h| h.take())
                .map(|h| Ok(CopyData::new(h)))
        }));
        CopyResponse::new(0, columns, body.chain(rest))
    }
}

/// The text values of a DataRow: each field is a length (-1 for NULL) and its bytes.
fn fields(row: &DataRow) -> Vec<Option<String>> {
    let data = row.data.as_ref();
    let mut out = Vec::with_capacity(row.field_count.max(0) as usize);
    let mut at = 0usize;
    for _ in 0..row.field_count {
        let Some(len) = data
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            break;
        };
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let end = at + len as usize;
        out.push(
            data.get(at..end)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        );
        at = end;
    }
    out
}
