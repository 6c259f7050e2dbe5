//! `COPY ... TO STDOUT` (psql's `\copy ... to`): the source is turned into a query and runs
//! through the same gate, planner and policy as any SELECT. COPY to or from files and programs,
//! and COPY FROM STDIN (a write), are refused by the gate.
//!
//! The rows are written straight from the query's Arrow batches: arrow-pg turns each value
//! into PostgreSQL's text form (honouring the session's DateStyle and the like) through the
//! `Encoder` below, which adds COPY's escaping or CSV quoting into one buffer. pgwire's own
//! `CopyEncoder` allocates per field and ignores the session's format options; at millions
//! of rows its allocations, and re-reading text DataRows, cost more than the query itself.
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::sqlparser::ast::{CopyOption, CopySource, CopyTarget, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::{Stream, StreamExt, stream};
use pgwire::api::results::{CopyResponse, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::types::ToSqlText;
use postgres_types::{IsNull, ToSql};

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
    Ok(Some(out))
}

impl CopyOut {
    /// The COPY data of a query's batches: one message per row (pgwire counts messages for
    /// the `COPY n` tag), the CSV header in front of the first.
    pub fn response(
        &self,
        fields: Arc<Vec<FieldInfo>>,
        batches: impl Stream<Item = Result<RecordBatch, QueryError>> + Send + Unpin + 'static,
    ) -> Result<CopyResponse, QueryError> {
        let columns = fields.len();
        let mut encoder = RowEncoder::new(self, columns)?;
        if self.header {
            for field in fields.iter() {
                encoder.field(Some(field.name().as_bytes()));
            }
            encoder.out.put_u8(b'\n');
            encoder.column = 0;
        }
        let body = stream::unfold(Some((batches, encoder, fields)), |state| async move {
            let (mut batches, mut encoder, fields) = state?;
            match batches.next().await {
                Some(Ok(batch)) => {
                    let rows = encoder.batch(&batch, &fields);
                    Some((stream::iter(rows), Some((batches, encoder, fields))))
                }
                Some(Err(e)) => Some((stream::iter(vec![Err(e.into())]), None)),
                // no rows at all: the header alone
                None if !encoder.out.is_empty() => {
                    let header = CopyData::new(encoder.out.split().freeze());
                    Some((stream::iter(vec![Ok(header)]), None))
                }
                None => None,
            }
        })
        .flatten();
        Ok(CopyResponse::new(0, columns, body))
    }
}

/// Text or CSV, as PostgreSQL writes them (`CopyAttributeOutText`, `CopyAttributeOutCSV`).
enum Style {
    Text,
    /// A lone `\.` is quoted only where it would read as the end of the data: alone on a line.
    Csv {
        quote: u8,
        single_column: bool,
    },
}

/// Writes rows of COPY text or CSV into one growing buffer; each finished row is split off
/// as its own message without copying.
struct RowEncoder {
    style: Style,
    delimiter: u8,
    null: Vec<u8>,
    column: usize,
    /// One value's text, reused for every value.
    value: BytesMut,
    out: BytesMut,
}

/// Room the output buffer keeps ahead, so that rows are split off one allocation.
const OUT_CHUNK: usize = 64 * 1024;

impl RowEncoder {
    fn new(copy: &CopyOut, columns: usize) -> Result<RowEncoder, QueryError> {
        let delimiter = match copy.delimiter {
            None if copy.csv => b',',
            None => b'\t',
            Some(d) => single_byte(d)?,
        };
        if delimiter == b'\n' || delimiter == b'\r' {
            return Err(QueryError::InvalidParameter(
                "COPY delimiter cannot be newline or carriage return".into(),
            ));
        }
        if !copy.csv && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&delimiter) {
            return Err(QueryError::InvalidParameter(format!(
                "COPY delimiter cannot be \"{}\"",
                delimiter as char
            )));
        }
        if copy.csv && delimiter == b'"' {
            return Err(QueryError::InvalidParameter(
                "COPY delimiter and quote must be different".into(),
            ));
        }
        let null = match &copy.null {
            Some(n) if n.contains(['\n', '\r']) => {
                return Err(QueryError::InvalidParameter(
                    "COPY null representation cannot use newline or carriage return".into(),
                ));
            }
            Some(n) => n.clone().into_bytes(),
            None if copy.csv => Vec::new(),
            None => b"\\N".to_vec(),
        };
        let style = if copy.csv {
            Style::Csv {
                quote: b'"',
                single_column: columns == 1,
            }
        } else {
            Style::Text
        };
        Ok(RowEncoder {
            style,
            delimiter,
            null,
            column: 0,
            value: BytesMut::new(),
            out: BytesMut::with_capacity(OUT_CHUNK),
        })
    }

    fn batch(&mut self, batch: &RecordBatch, fields: &[FieldInfo]) -> Vec<PgWireResult<CopyData>> {
        let schema = batch.schema_ref();
        let mut rows = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            for (index, (column, field)) in batch.columns().iter().zip(fields).enumerate() {
                let arrow_field = schema.field(index);
                let encoded =
                    arrow_pg::encoder::encode_value(self, column, row, arrow_field, field);
                if let Err(e) = encoded {
                    rows.push(Err(e));
                    return rows;
                }
            }
            rows.push(Ok(arrow_pg::encoder::Encoder::take_row(self)));
        }
        rows
    }

    /// One value (`None`: NULL), after a delimiter unless it is the row's first.
    fn field(&mut self, value: Option<&[u8]>) {
        if self.column > 0 {
            self.out.put_u8(self.delimiter);
        }
        self.column += 1;
        let Some(value) = value else {
            self.out.put_slice(&self.null);
            return;
        };
        match self.style {
            Style::Text => escape_text(&mut self.out, value, self.delimiter),
            Style::Csv {
                quote,
                single_column,
            } => {
                // PostgreSQL quotes a value that could be misread: one holding the delimiter,
                // the quote or a line break, one equal to the NULL marker, and `\.` alone on
                // its line.
                let needs_quotes = value
                    .iter()
                    .any(|&b| b == self.delimiter || b == quote || b == b'\n' || b == b'\r')
                    || value == self.null.as_slice()
                    || (single_column && value == b"\\.");
                if needs_quotes {
                    self.out.put_u8(quote);
                    for &b in value {
                        if b == quote {
                            self.out.put_u8(quote);
                        }
                        self.out.put_u8(b);
                    }
                    self.out.put_u8(quote);
                } else {
                    self.out.put_slice(value);
                }
            }
        }
    }
}

impl arrow_pg::encoder::Encoder for RowEncoder {
    type Item = CopyData;

    fn encode_field<T>(&mut self, value: &T, pg_field: &FieldInfo) -> PgWireResult<()>
    where
        T: ToSql + ToSqlText + Sized,
    {
        let mut text = std::mem::take(&mut self.value);
        text.clear();
        let written = value
            .to_sql_text(pg_field.datatype(), &mut text, pg_field.format_options())
            .map_err(PgWireError::ApiError);
        let result = written.map(|is_null| match is_null {
            IsNull::Yes => self.field(None),
            IsNull::No => self.field(Some(&text)),
        });
        self.value = text;
        result
    }

    fn take_row(&mut self) -> CopyData {
        self.out.put_u8(b'\n');
        self.column = 0;
        let row = self.out.split().freeze();
        if self.out.capacity() < 1024 {
            self.out.reserve(OUT_CHUNK);
        }
        CopyData::new(row)
    }
}

/// COPY's text escaping: backslash, the delimiter and control characters get a backslash.
fn escape_text(out: &mut BytesMut, value: &[u8], delimiter: u8) {
    let plain = |b: u8| b >= 0x20 && b != b'\\' && b != delimiter;
    if value.iter().all(|&b| plain(b)) {
        out.put_slice(value);
        return;
    }
    for &b in value {
        match b {
            0x08 => out.put_slice(b"\\b"),
            0x0c => out.put_slice(b"\\f"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0x0b => out.put_slice(b"\\v"),
            b'\\' => out.put_slice(b"\\\\"),
            b if b == delimiter => {
                out.put_u8(b'\\');
                out.put_u8(b);
            }
            b => out.put_u8(b),
        }
    }
}

fn single_byte(c: char) -> Result<u8, QueryError> {
    u8::try_from(c).ok().filter(u8::is_ascii).ok_or_else(|| {
        QueryError::Unsupported("COPY delimiter must be a single one-byte character".into())
    })
}
