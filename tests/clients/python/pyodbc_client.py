"""psqlODBC through unixODBC with pyodbc: the catalog functions Power BI's ODBC connector
calls (SQLTables, SQLColumns, SQLPrimaryKeys, SQLStatistics, SQLGetTypeInfo), parameters,
and UseDeclareFetch=1 (rows fetched through a server-side cursor), as Power BI uses it.

The driver is named by its library path (LAKEGATE_ODBC_DRIVER), so no system odbcinst.ini is
needed and no CommLog file is written."""
import os
import threading

import pyodbc

from lakegate_scenario import *

DRIVER = os.environ.get("LAKEGATE_ODBC_DRIVER", "/usr/lib/x86_64-linux-gnu/odbc/psqlodbcw.so")


def connect(user, declare_fetch):
    return pyodbc.connect(
        f"Driver={{{DRIVER}}};Server={HOST};Port={PORT};Database={DATABASE};"
        f"Uid={user};Pwd={user};SSLmode=require;UseDeclareFetch={declare_fetch};Fetch=5000;"
        + os.environ.get("LAKEGATE_ODBC_LOG", "CommLog=0;Debug=0"),
        autocommit=False,
    )


def scenario(user, declare_fetch):
    conn = connect(user, declare_fetch)
    check(conn.getinfo(pyodbc.SQL_DBMS_NAME) == "PostgreSQL", "DBMS name")
    check(conn.getinfo(pyodbc.SQL_DBMS_VER).startswith("16."), f"version {conn.getinfo(pyodbc.SQL_DBMS_VER)}")
    cur = conn.cursor()
    tables = [r.table_name for r in cur.tables(schema="gtm")]
    check_tables(user, tables)
    check(any(r.table_schem == "gtm" for r in cur.tables(schema="%", tableType="TABLE")), "tables of all schemas")
    columns = [(c.column_name, c.type_name, c.nullable == pyodbc.SQL_NULLABLE, c.remarks)
               for c in cur.columns(table="hcp", schema="gtm")]
    check_hcp_columns(user, columns, comments=False)
    check(list(cur.primaryKeys(table="hcp", schema="gtm")) == [], "no primary key in the lake")
    statistics = [r for r in cur.statistics(table="hcp", schema="gtm") if r.index_name is not None]
    check(statistics == [], f"no index in the lake: {statistics}")
    type_names = {r.type_name for r in cur.getTypeInfo()}
    check({"int8", "text", "numeric", "date", "timestamptz"} <= type_names, f"SQLGetTypeInfo: {sorted(type_names)}")

    cur.execute(AGGREGATE_SQL.format(param="?"), MIN_UNITS)
    check_aggregate(user, cur.fetchall())

    if user == "alice":
        cur.execute("SELECT hcp_id, email FROM gtm.hcp")
        check_masked_emails([tuple(r) for r in cur.fetchall()])
        try:
            cur.execute("SELECT * FROM gtm.patients")
            fail("alice read patients")
        except pyodbc.ProgrammingError as e:
            check("42P01" in str(e), f"patients: {e}")
        conn.rollback()

    cur.execute(LARGE_SQL)
    count = 0
    while True:
        rows = cur.fetchmany(5000)
        if not rows:
            break
        count += len(rows)
    check(count == expected_large_count(user) and count >= 100_000, f"{user}: large result {count}")
    conn.commit()

    # SQLCancel from another thread sends a CancelRequest for the running statement.
    done = threading.Event()
    cancel_until_done(cur.cancel, done)
    try:
        cur.execute(LONG_SQL)
        fail("long query was not cancelled")
    except pyodbc.Error as e:
        check("57014" in str(e) or "cancel" in str(e).lower(), f"cancel: {e}")
    finally:
        done.set()
    conn.rollback()

    cur.execute("SELECT 1")
    check(cur.fetchone()[0] == 1, "usable")
    conn.close()


for declare_fetch in (0, 1):
    for user in USERS:
        scenario(user, declare_fetch)
ok(f"pyodbc {pyodbc.version} + psqlODBC (UseDeclareFetch 0 and 1)")
