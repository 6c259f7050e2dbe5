"""psycopg 3: catalog through information_schema and pg_catalog, bound parameters with binary
results, server-side cursors, COPY, cancel."""
import threading

import psycopg

from lakegate_scenario import *


def connect(user):
    return psycopg.connect(host=HOST, port=PORT, dbname=DATABASE, user=user, password=user,
                           sslmode="require", autocommit=True)


def scenario(user):
    with connect(user) as conn:
        check(conn.info.server_version >= 160000, f"server_version {conn.info.server_version}")
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", ["gtm"])
            check_tables(user, [r[0] for r in cur.fetchall()])
            cur.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, "
                "col_description(a.attrelid, a.attnum) FROM pg_catalog.pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 ORDER BY a.attnum", ["gtm.hcp"])
            check_hcp_columns(user, cur.fetchall())

            # binary=True: results arrive in binary format, the parameter is bound, not inlined.
            cur.execute(AGGREGATE_SQL.format(param="%s"), [MIN_UNITS], binary=True)
            check_aggregate(user, cur.fetchall())
            cur.execute(AGGREGATE_SQL.format(param="%s"), [MIN_UNITS])
            check_aggregate(user, cur.fetchall())

            if user == "alice":
                cur.execute("SELECT hcp_id, email FROM gtm.hcp")
                check_masked_emails(cur.fetchall())
                try:
                    cur.execute("SELECT * FROM gtm.patients")
                    fail("alice read patients")
                except psycopg.errors.UndefinedTable:
                    pass

        # Server-side (named) cursor: rows arrive in batches of itersize.
        with conn.transaction():
            with conn.cursor(name="big") as cur:
                cur.itersize = 5000
                cur.execute(LARGE_SQL)
                count = sum(1 for _ in cur)
        check(count == expected_large_count(user) and count >= 100_000, f"{user}: large result {count}")

        with conn.cursor() as cur:
            with cur.copy("COPY (SELECT hcp_id, country FROM gtm.sales) TO STDOUT") as copy:
                copied = sum(1 for _ in copy.rows())
            check(copied == len(visible_sales(user)), f"{user}: COPY rows {copied}")

        # Cancel: a long query in one thread, conn.cancel() from another.
        with conn.cursor() as cur:
            done = threading.Event()
            cancel_until_done(conn.cancel, done)
            try:
                cur.execute(LONG_SQL)
                fail("long query was not cancelled")
            except psycopg.errors.QueryCanceled:
                pass
            finally:
                done.set()
            cur.execute("SELECT 1")
            check(cur.fetchone() == (1,), "connection usable after cancel")
    check(conn.closed, "closed cleanly")


for user in USERS:
    scenario(user)
ok("psycopg " + psycopg.__version__)
