"""psycopg2: catalog queries, bound parameters, named (server-side) cursors, copy_expert, cancel."""
import io
import threading

import psycopg2
import psycopg2.errors

from lakegate_scenario import *


def scenario(user):
    conn = psycopg2.connect(host=HOST, port=PORT, dbname=DATABASE, user=user, password=user,
                            sslmode="require")
    check(conn.server_version >= 160000, f"server_version {conn.server_version}")
    cur = conn.cursor()
    cur.execute("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'v')", ("gtm",))
    check_tables(user, [r[0] for r in cur.fetchall()])
    # information_schema, as analysts and Power BI's navigator query it.
    cur.execute("SELECT column_name, data_type, is_nullable = 'YES', "
                "col_description(%s::regclass, ordinal_position) "
                "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                "ORDER BY ordinal_position", ("gtm.hcp", "gtm", "hcp"))
    check_hcp_columns(user, cur.fetchall())
    cur.execute("SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns "
                "WHERE table_schema = 'gtm' AND table_name = 'sales' AND column_name = 'amount'")
    check(cur.fetchone() == ("numeric", 12, 2), "amount is numeric(12,2)")

    cur.execute(AGGREGATE_SQL.format(param="%s"), (MIN_UNITS,))
    check_aggregate(user, cur.fetchall())
    if user == "alice":
        cur.execute("SELECT hcp_id, email FROM gtm.hcp")
        check_masked_emails(cur.fetchall())
        try:
            cur.execute("SELECT * FROM gtm.patients")
            fail("alice read patients")
        except psycopg2.errors.UndefinedTable:
            conn.rollback()
    conn.commit()

    # A named cursor is a server-side cursor: DECLARE ... then FETCH FORWARD itersize.
    big = conn.cursor(name="big")
    big.itersize = 5000
    big.execute(LARGE_SQL)
    count = sum(1 for _ in big)
    big.close()
    conn.commit()
    check(count == expected_large_count(user) and count >= 100_000, f"{user}: large result {count}")

    buf = io.StringIO()
    cur.copy_expert("COPY (SELECT hcp_id, country FROM gtm.sales) TO STDOUT WITH (FORMAT csv, HEADER)", buf)
    lines = buf.getvalue().splitlines()
    check(lines[0] == "hcp_id,country" and len(lines) == len(visible_sales(user)) + 1,
          f"{user}: COPY {lines[:2]} {len(lines)}")

    done = threading.Event()
    cancel_until_done(conn.cancel, done)
    try:
        cur.execute(LONG_SQL)
        fail("long query was not cancelled")
    except psycopg2.errors.QueryCanceled:
        conn.rollback()
    finally:
        done.set()
    cur.execute("SELECT 1")
    check(cur.fetchone() == (1,), "connection usable after cancel")
    conn.close()
    check(conn.closed, "closed cleanly")


for user in USERS:
    scenario(user)
ok("psycopg2 " + psycopg2.__version__)
