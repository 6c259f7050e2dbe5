"""Seeds a moto server started with INITIAL_NO_AUTH_ACTION_COUNT=3 as an AWS account the way a
platform team would set it up for Lakegate:

- an `admin` user (the first three calls, before IAM is enforced), used for the rest;
- persona roles: `lakegate-gtm-eu-reader` and `lakegate-gtm-steward` may read bucket
  `lake-gtm`, `lakegate-gtm-us-reader` may not read S3 at all, and the gateway may not assume
  `lakegate-gtm-forbidden`;
- the gateway's own user, allowed sts:AssumeRole/SetSourceIdentity/TagSession on the first
  three roles only, and nothing else (it cannot read S3 itself);
- the quickstart's Parquet files under s3://lake-gtm/gtm/.

Prints one JSON object: the gateway's access key and secret.

usage: seed.py ENDPOINT DATA_DIR
"""
import json
import pathlib
import sys

import boto3
from botocore.config import Config

ENDPOINT, DATA = sys.argv[1], pathlib.Path(sys.argv[2])
ACCOUNT = "123456789012"
BUCKET = "lake-gtm"


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
    }
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
        }
    ),
)
gateway = iam.create_access_key(UserName="gateway")["AccessKey"]

s3 = client("s3", *admin)
s3.create_bucket(Bucket=BUCKET)
files = 0
for path in sorted((DATA / "gtm").rglob("*.parquet")):
    key = "gtm/" + path.relative_to(DATA / "gtm").as_posix()
    s3.upload_file(str(path), BUCKET, key)
    files += 1
if files == 0:
    sys.exit(f"no Parquet files under {DATA / 'gtm'}")

print(json.dumps({"key": gateway["AccessKeyId"], "secret": gateway["SecretAccessKey"], "files": files}))
