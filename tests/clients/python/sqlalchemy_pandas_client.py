"""SQLAlchemy 2 (psycopg 3 dialect) and pandas: version detection, inspect(), read_sql with a
bound parameter, chunked read of a large result over a server-side cursor."""
import pandas as pd
import sqlalchemy as sa

from lakegate_scenario import *


def scenario(user):
    engine = sa.create_engine(
        f"postgresql+psycopg://{user}:{user}@{HOST}:{PORT}/{DATABASE}?sslmode=require")
    with engine.connect() as conn:
        check(conn.dialect.server_version_info[0] >= 16, f"version {conn.dialect.server_version_info}")
    inspector = sa.inspect(engine)
    check("gtm" in inspector.get_schema_names(), f"{user}: schemas {inspector.get_schema_names()}")
    check_tables(user, inspector.get_table_names(schema="gtm") + inspector.get_view_names(schema="gtm"))
    columns = inspector.get_columns("hcp", schema="gtm")
    check_hcp_columns(user, [(c["name"], c["type"].compile(dialect=engine.dialect),
                              c["nullable"], c.get("comment")) for c in columns])

    frame = pd.read_sql(sa.text(AGGREGATE_SQL.format(param=":units")), engine, params={"units": MIN_UNITS},
                        coerce_float=False)
    rows = [tuple(None if pd.isna(v) else v for v in row) for row in frame.itertuples(index=False)]
    expected = expected_aggregate(user)
    check([r[:2] for r in rows] == [e[:2] for e in expected], f"{user}: read_sql {rows[:2]} vs {expected[:2]}")
    check([r[2] for r in rows] == [e[2] for e in expected], f"{user}: decimals {rows[:2]}")
    check([pd.Timestamp(r[4]) for r in rows] == [pd.Timestamp(e[4]) for e in expected], f"{user}: timestamps")

    if user == "alice":
        emails = pd.read_sql("SELECT hcp_id, email FROM gtm.hcp", engine)
        check_masked_emails(list(emails.itertuples(index=False, name=None)))
        try:
            pd.read_sql("SELECT * FROM gtm.patients", engine)
            fail("alice read patients")
        except pd.errors.DatabaseError as e:
            # pandas wraps SQLAlchemy's error, which wraps the driver's.
            cause = e.__cause__
            check(isinstance(cause, sa.exc.ProgrammingError) and cause.orig.sqlstate == "42P01",
                  f"patients: {e}")

    # stream_results uses a server-side cursor; chunksize keeps pandas from loading it whole.
    with engine.connect().execution_options(stream_results=True, max_row_buffer=5000) as conn:
        count = sum(len(chunk) for chunk in pd.read_sql_query(sa.text(LARGE_SQL), conn, chunksize=20_000))
    check(count == expected_large_count(user) and count >= 100_000, f"{user}: large result {count}")
    engine.dispose()


for user in USERS:
    scenario(user)
ok(f"SQLAlchemy {sa.__version__} + pandas {pd.__version__}")
