"""Seeds a moto server started with INITIAL_NO_AUTH_ACTION_COUNT=3 as an AWS account the way a
platform team would set it up for Lakegate:

- an `admin` user (the first three calls, before IAM is enforced), used for the rest;
- persona roles: `lakegate-gtm-eu-reader` and `lakegate-gtm-steward` may read bucket
  `lake-gtm`, `lakegate-gtm-us-reader` may not read S3 at all, and the gateway may not assume
  `lakegate-gtm-forbidden`;
- the gateway's own user, allowed sts:AssumeRole/SetSourceIdentity/TagSession on the first
  three roles only, and nothing else (it cannot read S3 itself);
- the quickstart's Parquet files under s3://lake-gtm/gtm/;
- Athena for the reader and steward roles, writing results to s3://lake-gtm-athena-results/;
- the quickstart's catalog registered in the Glue Data Catalog as an ingestion job would (database
  `gtm`: its tables with columns, comments, parameters, partition keys and daily partitions; its
  view as Athena's CREATE VIEW stores one, in Presto's encoding),
  plus `gtm.regions`, a CSV table with a header line, `gtm.sales_ctas`, the sales files named as
  Athena's CTAS names them (no extension, `_SUCCESS` beside them; partitions registered),
  `gtm.sales_dated`, with its one partition outside Hive's key=value layout, and `gtm.events`, a table with a column type
  Lakegate does not serve (map).

Prints one JSON object: the access keys of the gateway and of the admin user.

usage: seed.py ENDPOINT DATA_DIR CATALOG_YAML
"""
import base64
import json
import pathlib
import sys

import boto3
import yaml
from botocore.config import Config

ENDPOINT, DATA, CATALOG = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ACCOUNT = "123456789012"
BUCKET = "lake-gtm"
RESULTS = "lake-gtm-athena-results"


def client(service, key, secret):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}),
    )


def document(*statements):
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


iam = client("iam", "AKIAIOSFODNN7EXAMPLE", "bootstrap-secret-" + "x" * 23)
iam.create_user(UserName="admin")
iam.put_user_policy(
    UserName="admin",
    PolicyName="all",
    PolicyDocument=document({"Effect": "Allow", "Action": "*", "Resource": "*"}),
)
admin = iam.create_access_key(UserName="admin")["AccessKey"]
admin = (admin["AccessKeyId"], admin["SecretAccessKey"])
iam = client("iam", *admin)

trust = document(
    {
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/gateway"},
        "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
    }
)
read_lake = document(
    {
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
    },
    # Athena runs with the caller's role and writes its results where the role may.
    {
        "Effect": "Allow",
        "Action": [
            "athena:StartQueryExecution",
            "athena:GetQueryExecution",
            "athena:StopQueryExecution",
            "athena:GetQueryResults",
        ],
        "Resource": "*",
    },
    {
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{RESULTS}", f"arn:aws:s3:::{RESULTS}/*"],
    },
)
glue_only = document({"Effect": "Allow", "Action": ["glue:GetTable"], "Resource": "*"})
roles = {
    "lakegate-gtm-eu-reader": read_lake,
    "lakegate-gtm-steward": read_lake,
    "lakegate-gtm-us-reader": glue_only,
    "lakegate-gtm-forbidden": read_lake,
}
for name, permissions in roles.items():
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
    iam.put_role_policy(RoleName=name, PolicyName="data", PolicyDocument=permissions)

iam.create_user(UserName="gateway")
assumable = [f"arn:aws:iam::{ACCOUNT}:role/{r}" for r in roles if r != "lakegate-gtm-forbidden"]
iam.put_user_policy(
    UserName="gateway",
    PolicyName="assume-persona-roles",
    PolicyDocument=document(
        {
            "Effect": "Allow",
            "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
            "Resource": assumable,
        },
        # The catalog's metadata (never data) is read with the gateway's own credentials.
        {
            "Effect": "Allow",
            "Action": ["glue:GetDatabase", "glue:GetDatabases", "glue:GetTable", "glue:GetTables", "glue:GetPartitions"],
            "Resource": "*",
        },
    ),
)
gateway = iam.create_access_key(UserName="gateway")["AccessKey"]

s3 = client("s3", *admin)
s3.create_bucket(Bucket=BUCKET)
s3.create_bucket(Bucket=RESULTS)
files = 0
for path in sorted((DATA / "gtm").rglob("*.parquet")):
    key = "gtm/" + path.relative_to(DATA / "gtm").as_posix()
    s3.upload_file(str(path), BUCKET, key)
    files += 1
if files == 0:
    sys.exit(f"no Parquet files under {DATA / 'gtm'}")

s3.put_object(
    Bucket=BUCKET,
    Key="gtm/regions/regions.csv",
    Body=b"country,region\nDE,EMEA\nFR,EMEA\nDK,EMEA\nCH,EMEA\nUS,Americas\n",
)

PARQUET = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"},
}
CSV = {
    "InputFormat": "org.apache.hadoop.mapred.TextInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
    "SerdeInfo": {
        "SerializationLibrary": "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
        "Parameters": {"field.delim": ","},
    },
}


def glue_column(column):
    out = {"Name": column["name"], "Type": column["type"]}
    if column.get("comment"):
        out["Comment"] = column["comment"]
    if column.get("parameters"):
        out["Parameters"] = column["parameters"]
    return out


glue = client("glue", *admin)
catalog = yaml.safe_load(CATALOG.read_text())
for database in catalog["databases"]:
    glue.create_database(
        DatabaseInput={
            "Name": database["name"],
            "Description": database.get("description", ""),
            "Parameters": database.get("parameters", {}),
        }
    )
    for table in database["tables"]:
        if "view_sql" in table:
            # As Athena's CREATE VIEW stores a view: its SQL in Presto's encoding.
            view = {
                "originalSql": table["view_sql"],
                "catalog": "awsdatacatalog",
                "schema": database["name"],
                "columns": [{"name": c["name"], "type": c["type"]} for c in table["columns"]],
            }
            encoded = base64.b64encode(json.dumps(view).encode()).decode()
            glue.create_table(
                DatabaseName=database["name"],
                TableInput={
                    "Name": table["name"],
                    "Description": table.get("description", ""),
                    "TableType": "VIRTUAL_VIEW",
                    "Parameters": {**table.get("parameters", {}), "presto_view": "true", "comment": "Presto View"},
                    "ViewOriginalText": f"/* Presto View: {encoded} */",
                    "ViewExpandedText": "/* Presto View */",
                    "StorageDescriptor": {"Columns": [glue_column(c) for c in table["columns"]], "SerdeInfo": {}},
                },
            )
            continue
        location = f"s3://{BUCKET}/{table['location'].removeprefix('data/')}/"
        table_input = {
            "Name": table["name"],
            "Description": table.get("description", ""),
            "TableType": "EXTERNAL_TABLE",
            "Parameters": table.get("parameters", {}),
            "PartitionKeys": [glue_column(c) for c in table.get("partition_keys", [])],
            "StorageDescriptor": {
                "Columns": [glue_column(c) for c in table["columns"]],
                "Location": location,
                **PARQUET,
            },
        }
        glue.create_table(DatabaseName=database["name"], TableInput=table_input)
        keys = table.get("partition_keys", [])
        if keys:
            folders = sorted({p.parent for p in (DATA / table["location"].removeprefix("data/")).rglob("*.parquet")})
            partitions = []
            for folder in folders:
                values = [part.split("=", 1)[1] for part in folder.relative_to(DATA / table["location"].removeprefix("data/")).parts]
                partitions.append(
                    {
                        "Values": values,
                        "StorageDescriptor": {
                            "Columns": [glue_column(c) for c in table["columns"]],
                            "Location": f"{location}{folder.relative_to(DATA / table['location'].removeprefix('data/')).as_posix()}/",
                            **PARQUET,
                        },
                    }
                )
            glue.batch_create_partition(
                DatabaseName=database["name"], TableName=table["name"], PartitionInputList=partitions
            )

glue.create_table(
    DatabaseName="gtm",
    TableInput={
        "Name": "regions",
        "Description": "Sales region of each country",
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"skip.header.line.count": "1", "owner": "commercial-excellence"},
        "StorageDescriptor": {
            "Columns": [
                {"Name": "country", "Type": "string", "Comment": "ISO 3166-1 alpha-2 country code"},
                {"Name": "region", "Type": "string"},
            ],
            "Location": f"s3://{BUCKET}/gtm/regions/",
            **CSV,
        },
    },
)
# `gtm.sales_ctas`: the sales files as Athena's CTAS writes them: no extension, with a
# `_SUCCESS` marker and a hidden checksum file that are not data.
sales = DATA / "gtm" / "sales"
for path in sorted(sales.rglob("*.parquet")):
    folder = path.parent.relative_to(sales).as_posix()
    s3.upload_file(str(path), BUCKET, f"athena-out/sales/{folder}/20260101_000000_00001_{path.stem}")
s3.put_object(Bucket=BUCKET, Key="athena-out/sales/_SUCCESS", Body=b"")
s3.put_object(Bucket=BUCKET, Key="athena-out/sales/.20260101.crc", Body=b"not parquet")
sales_table = next(t for d in catalog["databases"] for t in d["tables"] if t["name"] == "sales")


def sales_like_table(name, location, partitions):
    """A table with the sales columns at `location`, and `partitions` ((day, location) pairs)."""
    glue.create_table(
        DatabaseName="gtm",
        TableInput={
            "Name": name,
            "TableType": "EXTERNAL_TABLE",
            "PartitionKeys": [glue_column(c) for c in sales_table["partition_keys"]],
            "StorageDescriptor": {
                "Columns": [glue_column(c) for c in sales_table["columns"]],
                "Location": location,
                **PARQUET,
            },
        },
    )
    glue.batch_create_partition(
        DatabaseName="gtm",
        TableName=name,
        PartitionInputList=[
            {
                "Values": [day],
                "StorageDescriptor": {
                    "Columns": [glue_column(c) for c in sales_table["columns"]],
                    "Location": where,
                    **PARQUET,
                },
            }
            for day, where in partitions
        ],
    )


days = [folder.name.split("=", 1)[1] for folder in sorted(sales.glob("sale_date=*"))]
sales_like_table(
    "sales_ctas",
    f"s3://{BUCKET}/athena-out/sales/",
    [(day, f"s3://{BUCKET}/athena-out/sales/sale_date={day}/") for day in days],
)

# `gtm.sales_dated`: its partition registered at a location outside Hive's key=value layout.
first_day = sales / f"sale_date={days[0]}"
dated = f"s3://{BUCKET}/dated/sales/{days[0].replace('-', '/')}/"
for path in sorted(first_day.glob("*.parquet")):
    s3.upload_file(str(path), BUCKET, dated.removeprefix(f"s3://{BUCKET}/") + path.name)
sales_like_table("sales_dated", f"s3://{BUCKET}/dated/sales/", [(days[0], dated)])

glue.create_table(
    DatabaseName="gtm",
    TableInput={
        "Name": "events",
        "TableType": "EXTERNAL_TABLE",
        "StorageDescriptor": {
            "Columns": [{"Name": "attributes", "Type": "map<string,string>"}],
            "Location": f"s3://{BUCKET}/gtm/events/",
            **PARQUET,
        },
    },
)

print(
    json.dumps(
        {
            "key": gateway["AccessKeyId"],
            "secret": gateway["SecretAccessKey"],
            "admin_key": admin[0],
            "admin_secret": admin[1],
            "files": files,
        }
    )
)
