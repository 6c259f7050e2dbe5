"""What every Python client checks against the gateway, and the oracle it checks with.

The expected values are computed here from the quickstart's Parquet files with pyarrow,
independently of the gateway, so a test fails if the gateway returns wrong rows, loses
precision, or shows a row or column policy hides.
"""
import datetime
import decimal
import hashlib
import os
import sys
import threading
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

HOST = "127.0.0.1"
PORT = int(os.environ["LAKEGATE_PORT"])
DATA = Path(os.environ["LAKEGATE_DATA"])
DATABASE = "gtm"
EU = ("DE", "FR", "DK", "CH")
USERS = ("alice", "carol")

# Sales of at least MIN_UNITS units per country: count, net amount, first and last day.
# The unit bound is sent as a bound parameter by every client.
MIN_UNITS = 5
AGGREGATE_SQL = (
    "SELECT country, count(*) AS n, sum(amount) AS net, min(sale_date) AS first_day, "
    "CAST(max(sale_date) AS timestamp) AS last_seen, "
    "max(CASE WHEN units < 0 THEN product END) AS never "
    "FROM gtm.sales WHERE units >= {param} GROUP BY country ORDER BY country"
)
# A result of more than 100,000 rows (sales times 50) for the streaming check.
LARGE_SQL = "SELECT s.hcp_id, s.amount, g.v FROM gtm.sales s CROSS JOIN generate_series(1, 50) AS g(v)"
# Runs for minutes unless cancelled.
LONG_SQL = "SELECT count(*) FROM generate_series(1, 100000000000) AS g(v) WHERE v % 7 = 3"

HCP_COLUMNS = {
    "alice": ["hcp_id", "full_name", "email", "country", "specialty"],
    "carol": ["hcp_id", "full_name", "email", "country", "specialty", "npi"],
}
HCP_COMMENTS = {"email": "Professional e-mail address", "npi": "National provider identifier"}


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def _sales():
    table = pq.read_table(DATA / "gtm" / "sales")
    return table.to_pylist()


def visible_sales(user):
    rows = _sales()
    if user == "alice":
        rows = [r for r in rows if r["country"] in EU]
    return rows


def _day(value):
    if isinstance(value, datetime.date):
        return value
    return datetime.date.fromisoformat(str(value))


def expected_aggregate(user):
    """(country, n, net, first_day, last_seen, None) tuples, as the SQL above computes them."""
    groups = {}
    for r in visible_sales(user):
        if r["units"] < MIN_UNITS:
            continue
        g = groups.setdefault(r["country"], [0, decimal.Decimal("0.00"), None, None])
        g[0] += 1
        g[1] += r["amount"]
        day = _day(r["sale_date"])
        g[2] = day if g[2] is None or day < g[2] else g[2]
        g[3] = day if g[3] is None or day > g[3] else g[3]
    return [
        (c, n, net, first, datetime.datetime.combine(last, datetime.time()), None)
        for c, (n, net, first, last) in sorted(groups.items())
    ]


def expected_large_count(user):
    return len(visible_sales(user)) * 50


def hcp_rows():
    return pq.read_table(DATA / "gtm" / "hcp").to_pylist()


def expected_alice_emails():
    """hcp_id -> the masked (sha256 hex) e-mail alice sees, for EU HCPs only."""
    return {
        r["hcp_id"]: None if r["email"] is None else hashlib.sha256(r["email"].encode()).hexdigest()
        for r in hcp_rows()
        if r["country"] in EU
    }


def check_aggregate(user, rows):
    """Rows as tuples of Python values: ints, Decimals with scale 2, dates, datetimes, None."""
    expected = expected_aggregate(user)
    got = [tuple(r) for r in rows]
    check(got == expected, f"{user}: aggregate\n got      {got[:3]}...\n expected {expected[:3]}...")
    for row in got:
        check(isinstance(row[1], int), f"count is an integer: {row!r}")
        check(isinstance(row[2], decimal.Decimal) and row[2].as_tuple().exponent == -2,
              f"net keeps its scale: {row!r}")
        check(type(row[3]) is datetime.date, f"first_day is a date: {row!r}")
        check(isinstance(row[4], datetime.datetime), f"last_seen is a timestamp: {row!r}")


def check_masked_emails(rows):
    expected = expected_alice_emails()
    got = {hcp_id: email for hcp_id, email in rows}
    check(got == expected, f"alice sees EU HCPs with hashed e-mails ({len(got)} vs {len(expected)})")


HCP_TYPES = {"hcp_id": ("bigint", "int8"), "full_name": ("text", "varchar", "character varying")}


def check_hcp_columns(user, columns, comments=True):
    """columns: (name, type name, nullable, comment) in ordinal order, as the client's
    catalog API reports them. comments=False for drivers that never report comments
    (psqlODBC's SQLColumns leaves REMARKS empty against PostgreSQL too)."""
    names = [c[0] for c in columns]
    check(names == HCP_COLUMNS[user], f"{user}: hcp columns {names}")
    by_name = {c[0]: c for c in columns}
    for name, types in HCP_TYPES.items():
        check(str(by_name[name][1]).lower() in types, f"{user}: type of {name}: {by_name[name][1]!r}")
    for name, comment in HCP_COMMENTS.items():
        if name in by_name and comments:
            check(by_name[name][3] == comment, f"{user}: comment of {name}: {by_name[name][3]!r}")
    check(all(c[2] in (True, 1) for c in columns), f"{user}: Glue columns are nullable: {columns}")


def cancel_until_done(cancel, done):
    """Calls cancel() until the event is set: the long query may not have reached the
    gateway when the first cancel request arrives."""
    def loop():
        while not done.wait(0.2):
            cancel()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def check_tables(user, tables):
    tables = set(tables)
    check({"hcp", "sales"} <= tables, f"{user}: tables {sorted(tables)}")
    if user == "alice":
        check("patients" not in tables, f"alice must not see patients: {sorted(tables)}")
    else:
        check("patients" in tables, f"carol sees patients: {sorted(tables)}")


def ok(client):
    print(f"ok: {client}")
