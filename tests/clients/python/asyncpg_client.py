"""asyncpg: binary codecs with type introspection, prepared statements, cursors, COPY, cancel."""
import asyncio
import ssl

import asyncpg

from lakegate_scenario import *


def tls():
    # sslmode=require: encrypted, certificate not verified (the quickstart's is self-signed).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def scenario(user):
    conn = await asyncpg.connect(host=HOST, port=PORT, database=DATABASE, user=user, password=user, ssl=tls())
    check(conn.get_server_version().major >= 16, f"version {conn.get_server_version()}")
    tables = await conn.fetch("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = $1", "gtm")
    views = await conn.fetch("SELECT viewname FROM pg_catalog.pg_views WHERE schemaname = $1", "gtm")
    check_tables(user, [r[0] for r in tables] + [r[0] for r in views])
    columns = await conn.fetch(
        "SELECT a.attname, t.typname, NOT a.attnotnull, col_description(a.attrelid, a.attnum) "
        "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = $1::regclass AND a.attnum > 0 ORDER BY a.attnum", "gtm.hcp")
    check_hcp_columns(user, [tuple(r) for r in columns])

    statement = await conn.prepare(AGGREGATE_SQL.format(param="$1"))
    for _ in range(3):
        check_aggregate(user, await statement.fetch(MIN_UNITS))
    check([a.type.name for a in statement.get_attributes()][:4] == ["text", "int8", "numeric", "date"],
          f"described types {[a.type.name for a in statement.get_attributes()]}")

    if user == "alice":
        check_masked_emails([tuple(r) for r in await conn.fetch("SELECT hcp_id, email FROM gtm.hcp")])
        try:
            await conn.fetch("SELECT * FROM gtm.patients")
            fail("alice read patients")
        except asyncpg.exceptions.UndefinedTableError:
            pass

    count = 0
    async with conn.transaction():
        async for _ in conn.cursor(LARGE_SQL, prefetch=5000):
            count += 1
    check(count == expected_large_count(user) and count >= 100_000, f"{user}: large result {count}")

    copied = []

    async def sink(chunk):
        copied.append(chunk)

    await conn.copy_from_query("SELECT hcp_id, country FROM gtm.sales", output=sink,
                               format="csv")
    check(b"".join(copied).count(b"\n") == len(visible_sales(user)), f"{user}: COPY rows")

    # asyncpg cancels the running query when its task is cancelled (by timeout).
    try:
        await conn.fetchval(LONG_SQL, timeout=1.0)
        fail("long query finished")
    except asyncio.TimeoutError:
        pass
    check(await conn.fetchval("SELECT 1") == 1, "connection usable after cancel")
    await conn.close()
    check(conn.is_closed(), "closed cleanly")


async def main():
    for user in USERS:
        await scenario(user)


asyncio.run(main())
ok("asyncpg " + asyncpg.__version__)
