//! The quickstart's data: a small go-to-market domain (HCPs, daily sales, patients) written
//! as Parquet. Deterministic: the same files every run, so tests can count on them.
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int32Array, Int64Array, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

pub const COUNTRIES: [&str; 8] = ["DE", "FR", "DK", "CH", "US", "JP", "GB", "IT"];
const SPECIALTIES: [&str; 5] = [
    "oncology",
    "cardiology",
    "endocrinology",
    "neurology",
    "general practice",
];
const PRODUCTS: [&str; 4] = ["Ozempic", "Wegovy", "Tecentriq", "Ocrevus"];
const DIAGNOSES: [&str; 5] = [
    "E11 type 2 diabetes",
    "E66 obesity",
    "C34 lung cancer",
    "G35 multiple sclerosis",
    "I10 hypertension",
];
const FIRST: [&str; 10] = [
    "Anna", "Lukas", "Marie", "Jonas", "Sofie", "Mads", "Léa", "Hugo", "Yuki", "John",
];
const LAST: [&str; 10] = [
    "Müller", "Schmidt", "Dubois", "Martin", "Jensen", "Nielsen", "Keller", "Tanaka", "Smith",
    "Rossi",
];

pub const HCP_ROWS: i64 = 2000;
pub const PATIENT_ROWS: i64 = 3000;
pub const SALES_DAYS: i64 = 30;
pub const SALES_PER_DAY: i64 = 150;

/// A small deterministic generator (64-bit LCG): no dependency, same output everywhere.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Writes the data set under `dir` (`dir/gtm/...`) unless it is already there.
/// Safe when several processes or threads ask at once: each writes its own temporary folder
/// and moves it in with one rename; the first wins, the others find the data there.
pub fn ensure(dir: &Path) -> std::io::Result<bool> {
    if dir.join("gtm").exists() {
        return Ok(false);
    }
    static WRITERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.with_extension(format!("tmp-{}-{writer}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    write_all(&tmp).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let moved = std::fs::rename(tmp.join("gtm"), dir.join("gtm"));
    let _ = std::fs::remove_dir_all(&tmp);
    match moved {
        Ok(()) => Ok(true),
        Err(_) if dir.join("gtm").exists() => Ok(false),
        Err(e) => Err(e),
    }
}

fn write_parquet(
    path: &Path,
    batch: &RecordBatch,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None)?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

fn write_all(dir: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut rng = Lcg(42);
    let gtm = dir.join("gtm");

    // hcp
    let ids: Vec<i64> = (1..=HCP_ROWS).collect();
    let mut names = Vec::new();
    let mut emails = Vec::new();
    let mut countries = Vec::new();
    let mut specialties = Vec::new();
    let mut npis = Vec::new();
    for id in &ids {
        let (first, last) = (rng.pick(&FIRST), rng.pick(&LAST));
        names.push(format!("{first} {last}"));
        emails.push(format!(
            "{}.{}{id}@clinic.example",
            first.to_lowercase(),
            last.to_lowercase()
        ));
        countries.push(COUNTRIES[(*id as usize) % COUNTRIES.len()].to_string());
        specialties.push(rng.pick(&SPECIALTIES).to_string());
        npis.push(format!("{:010}", 1_000_000_000 + rng.next() % 999_999_999));
    }
    let hcp = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("hcp_id", DataType::Int64, true),
            Field::new("full_name", DataType::Utf8, true),
            Field::new("email", DataType::Utf8, true),
            Field::new("country", DataType::Utf8, true),
            Field::new("specialty", DataType::Utf8, true),
            Field::new("npi", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(emails)),
            Arc::new(StringArray::from(countries)),
            Arc::new(StringArray::from(specialties)),
            Arc::new(StringArray::from(npis)),
        ],
    )?;
    write_parquet(&gtm.join("hcp/part-0.parquet"), &hcp)?;

    // sales, one Hive partition folder per day; a sale's country is its HCP's country
    let sales_schema = Arc::new(Schema::new(vec![
        Field::new("hcp_id", DataType::Int64, true),
        Field::new("product", DataType::Utf8, true),
        Field::new("units", DataType::Int32, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("country", DataType::Utf8, true),
    ]));
    let first_day = 20454; // 2026-01-01 as days since 1970-01-01
    for day in 0..SALES_DAYS {
        let (mut hcp_ids, mut products, mut units, mut amounts, mut sale_countries) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..SALES_PER_DAY {
            let hcp_id = 1 + (rng.next() % HCP_ROWS as u64) as i64;
            let n = 1 + (rng.next() % 20) as i32;
            hcp_ids.push(hcp_id);
            products.push(rng.pick(&PRODUCTS).to_string());
            units.push(n);
            amounts.push(i128::from(n) * (5_000 + (rng.next() % 20_000) as i128));
            sale_countries.push(COUNTRIES[(hcp_id as usize) % COUNTRIES.len()].to_string());
        }
        let batch = RecordBatch::try_new(
            sales_schema.clone(),
            vec![
                Arc::new(Int64Array::from(hcp_ids)) as ArrayRef,
                Arc::new(StringArray::from(products)),
                Arc::new(Int32Array::from(units)),
                Arc::new(Decimal128Array::from(amounts).with_precision_and_scale(12, 2)?),
                Arc::new(StringArray::from(sale_countries)),
            ],
        )?;
        let date = Date32Array::from(vec![first_day + day as i32]);
        let folder = format!(
            "sale_date={}",
            datafusion::arrow::util::display::array_value_to_string(&date, 0)?
        );
        write_parquet(
            &gtm.join("sales").join(folder).join("part-0.parquet"),
            &batch,
        )?;
    }

    // patients
    let ids: Vec<i64> = (1..=PATIENT_ROWS).collect();
    let (mut names, mut births, mut diagnoses, mut countries) = (vec![], vec![], vec![], vec![]);
    for id in &ids {
        names.push(format!("{} {}", rng.pick(&FIRST), rng.pick(&LAST)));
        births.push(-7000 + (rng.next() % 25_000) as i32);
        diagnoses.push(rng.pick(&DIAGNOSES).to_string());
        countries.push(COUNTRIES[(*id as usize) % COUNTRIES.len()].to_string());
    }
    let patients = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("patient_id", DataType::Int64, true),
            Field::new("full_name", DataType::Utf8, true),
            Field::new("birth_date", DataType::Date32, true),
            Field::new("diagnosis", DataType::Utf8, true),
            Field::new("country", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            Arc::new(StringArray::from(names)),
            Arc::new(Date32Array::from(births)),
            Arc::new(StringArray::from(diagnoses)),
            Arc::new(StringArray::from(countries)),
        ],
    )?;
    write_parquet(&gtm.join("patients/part-0.parquet"), &patients)?;
    Ok(())
}
