use datafusion::arrow::datatypes::{DataType, TimeUnit};

/// Maps a Glue/Hive column type name to its Arrow type, or `None` for a type Lakegate does not
/// serve yet (the catalog refuses such a table at load time rather than guessing).
pub fn glue_type_to_arrow(glue_type: &str) -> Option<DataType> {
    let t = glue_type.trim().to_ascii_lowercase();
    let simple = match t.as_str() {
        "string" | "varchar" | "char" => Some(DataType::Utf8),
        "boolean" => Some(DataType::Boolean),
        "tinyint" => Some(DataType::Int8),
        "smallint" => Some(DataType::Int16),
        "int" | "integer" => Some(DataType::Int32),
        "bigint" => Some(DataType::Int64),
        "float" => Some(DataType::Float32),
        "double" => Some(DataType::Float64),
        "date" => Some(DataType::Date32),
        "timestamp" => Some(DataType::Timestamp(TimeUnit::Microsecond, None)),
        "binary" => Some(DataType::Binary),
        _ => None,
    };
    if simple.is_some() {
        return simple;
    }
    if let Some(args) = t.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')) {
        let mut parts = args.split(',').map(str::trim);
        let precision: u8 = parts.next()?.parse().ok()?;
        let scale: i8 = parts.next().unwrap_or("0").parse().ok()?;
        if parts.next().is_some() || precision == 0 || precision > 38 || scale < 0 {
            return None;
        }
        return Some(DataType::Decimal128(precision, scale));
    }
    if let Some(len) = t
        .strip_prefix("varchar(")
        .or_else(|| t.strip_prefix("char("))
        .and_then(|r| r.strip_suffix(')'))
    {
        return len.trim().parse::<u32>().ok().map(|_| DataType::Utf8);
    }
    None
}

/// The Arrow type a Parquet column of `declared` type is read as: strings and binaries as views
/// (`Utf8View`, `BinaryView`), which is what DataFusion reads Parquet as by default
/// (`schema_force_view_types`). Declaring plain `Utf8` instead makes the reader copy every
/// string and the operators above work on the slower layout: TPC-H-like queries took
/// 1.3-1.6x DataFusion's own time that way (BENCHMARKS.md).
pub fn parquet_read_type(declared: DataType) -> DataType {
    match declared {
        DataType::Utf8 => DataType::Utf8View,
        DataType::Binary => DataType::BinaryView,
        other => other,
    }
}

/// The Glue/Hive type name of an Arrow type read from data files (the inverse of
/// `glue_type_to_arrow`), or `None` for a type Lakegate does not serve.
pub fn arrow_to_glue_type(data_type: &DataType) -> Option<String> {
    let name = match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".to_string(),
        DataType::Boolean => "boolean".to_string(),
        DataType::Int8 => "tinyint".to_string(),
        DataType::Int16 => "smallint".to_string(),
        DataType::Int32 => "int".to_string(),
        DataType::Int64 => "bigint".to_string(),
        DataType::Float32 => "float".to_string(),
        DataType::Float64 => "double".to_string(),
        DataType::Date32 => "date".to_string(),
        DataType::Timestamp(_, _) => "timestamp".to_string(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".to_string(),
        DataType::Decimal128(p, s) if *s >= 0 => format!("decimal({p},{s})"),
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_round_trip_through_glue_names() {
        for t in [
            DataType::Utf8,
            DataType::Int32,
            DataType::Int64,
            DataType::Date32,
            DataType::Decimal128(12, 2),
            DataType::Float64,
        ] {
            let glue = arrow_to_glue_type(&t).expect("served type");
            assert_eq!(glue_type_to_arrow(&glue), Some(t));
        }
        assert_eq!(arrow_to_glue_type(&DataType::UInt64), None);
    }

    #[test]
    fn maps_glue_types() {
        assert_eq!(glue_type_to_arrow("string"), Some(DataType::Utf8));
        assert_eq!(glue_type_to_arrow("BIGINT"), Some(DataType::Int64));
        assert_eq!(
            glue_type_to_arrow("decimal(12, 2)"),
            Some(DataType::Decimal128(12, 2))
        );
        assert_eq!(glue_type_to_arrow("varchar(10)"), Some(DataType::Utf8));
        assert_eq!(glue_type_to_arrow("decimal(99,2)"), None);
        assert_eq!(glue_type_to_arrow("map<string,int>"), None);
    }
}
