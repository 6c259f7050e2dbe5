//! PostgreSQL's `json_build_object` (and `jsonb_build_object`), which SQLAlchemy's column
//! reflection calls. DataFusion has no JSON type: the result is JSON text.
use std::sync::Arc;

use datafusion::arrow::array::{Array, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;
use serde_json::{Map, Number, Value};

#[derive(Debug, PartialEq, Eq, Hash)]
struct BuildObject {
    name: &'static str,
    signature: Signature,
}

pub fn udfs() -> Vec<ScalarUDF> {
    ["json_build_object", "jsonb_build_object"]
        .into_iter()
        .map(|name| {
            ScalarUDF::from(BuildObject {
                name,
                signature: Signature::variadic_any(Volatility::Immutable),
            })
        })
        .collect()
}

fn to_json(value: &ScalarValue) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => Value::Bool(*b),
        ScalarValue::Int8(Some(v)) => Value::from(*v),
        ScalarValue::Int16(Some(v)) => Value::from(*v),
        ScalarValue::Int32(Some(v)) => Value::from(*v),
        ScalarValue::Int64(Some(v)) => Value::from(*v),
        ScalarValue::UInt8(Some(v)) => Value::from(*v),
        ScalarValue::UInt16(Some(v)) => Value::from(*v),
        ScalarValue::UInt32(Some(v)) => Value::from(*v),
        ScalarValue::UInt64(Some(v)) => Value::from(*v),
        ScalarValue::Float32(Some(v)) => {
            Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number)
        }
        ScalarValue::Float64(Some(v)) => Number::from_f64(*v).map_or(Value::Null, Value::Number),
        other => Value::String(other.to_string()),
    }
}

impl ScalarUDFImpl for BuildObject {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Plan(format!(
                "{}: argument list must have even number of elements",
                self.name
            )));
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::new();
        for row in 0..args.number_rows {
            let mut object = Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return Err(DataFusionError::Execution(format!(
                        "{}: null value not allowed for object key",
                        self.name
                    )));
                }
                let key = match key {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)) => s,
                    other => other.to_string(),
                };
                object.insert(key, to_json(&ScalarValue::try_from_array(&pair[1], row)?));
            }
            out.append_value(Value::Object(object).to_string());
        }
        let array: Arc<dyn Array> = Arc::new(out.finish());
        Ok(ColumnarValue::Array(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_json_kind() {
        assert_eq!(to_json(&ScalarValue::Int64(Some(3))), Value::from(3));
        assert_eq!(
            to_json(&ScalarValue::Boolean(Some(true))),
            Value::Bool(true)
        );
        assert_eq!(to_json(&ScalarValue::Utf8(None)), Value::Null);
        assert_eq!(
            to_json(&ScalarValue::Utf8(Some("a".into()))),
            Value::from("a")
        );
    }
}
