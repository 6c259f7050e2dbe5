// node-postgres: TLS, catalog queries, bound parameters (extended protocol), pg-cursor and
// pg-query-stream for a large result, cancel, clean end. Expected answers come from
// tests/clients/python/expected.py (LAKEGATE_EXPECTED), computed from the Parquet files.
import fs from 'node:fs';
import assert from 'node:assert/strict';
import pg from 'pg';
import Cursor from 'pg-cursor';
import QueryStream from 'pg-query-stream';

const expected = JSON.parse(fs.readFileSync(process.env.LAKEGATE_EXPECTED, 'utf8'));
const port = Number(process.env.LAKEGATE_PORT);

// numeric, date and timestamp as the text PostgreSQL sends (pg's defaults would turn
// dates into local-time Date objects).
const types = {
  getTypeParser(oid, format) {
    if ([1082, 1114, 1700, 20].includes(oid)) return (v) => v;
    return pg.types.getTypeParser(oid, format);
  },
};

function connect(user) {
  return new pg.Client({
    host: '127.0.0.1', port, database: 'gtm', user, password: user,
    ssl: { rejectUnauthorized: false }, types,
  });
}

async function scenario(user) {
  const want = expected.users[user];
  const client = connect(user);
  await client.connect();
  const version = await client.query('SHOW server_version_num');
  assert.ok(Number(version.rows[0].server_version_num) >= 160000, 'server_version_num');

  const tables = await client.query(
    "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
    ['gtm']);
  const names = tables.rows.map((r) => r.relname);
  assert.ok(names.includes('hcp') && names.includes('sales'), `${user}: tables ${names}`);
  assert.equal(names.includes('patients'), user === 'carol', `${user}: patients visible? ${names}`);

  const columns = await client.query(
    `SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull AS nullable,
            col_description(a.attrelid, a.attnum) AS comment
       FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 ORDER BY a.attnum`,
    ['gtm.hcp']);
  assert.deepEqual(columns.rows.map((r) => r.attname), want.hcp_columns, `${user}: hcp columns`);
  for (const [name, comment] of Object.entries(want.hcp_comments)) {
    assert.equal(columns.rows.find((r) => r.attname === name).comment, comment, `${user}: comment of ${name}`);
  }
  assert.equal(columns.rows[0].type, 'bigint');

  const sql = expected.aggregate_sql.replace('{param}', '$1');
  const aggregate = await client.query({ text: sql, values: [expected.min_units], rowMode: 'array' });
  // pgwire writes timestamps with six fractional digits where PostgreSQL drops zeros
  // (README, known differences): compare the instant, not the spelling.
  const got = aggregate.rows.map(([c, n, net, first, last, never]) =>
    [c, Number(n), net, first, last.replace(/\.0+$/, ''), never]);
  assert.deepEqual(got, want.aggregate, `${user}: aggregate`);

  if (user === 'alice') {
    const emails = await client.query('SELECT hcp_id, email FROM gtm.hcp');
    const map = Object.fromEntries(emails.rows.map((r) => [String(r.hcp_id), r.email]));
    assert.deepEqual(map, expected.alice_emails, 'alice sees hashed e-mails of EU HCPs');
    await assert.rejects(client.query('SELECT * FROM gtm.patients'), (e) => e.code === '42P01');
  }

  // pg-cursor: rows in batches over the extended protocol's portal.
  const cursor = client.query(new Cursor(expected.large_sql));
  let count = 0;
  for (;;) {
    const rows = await cursor.read(5000);
    if (rows.length === 0) break;
    count += rows.length;
  }
  await cursor.close();
  assert.equal(count, want.large_count, `${user}: large result through pg-cursor`);
  assert.ok(count >= 100000);

  // pg-query-stream: a Node stream with backpressure.
  let streamed = 0;
  const stream = client.query(new QueryStream(expected.large_sql, [], { batchSize: 2000 }));
  for await (const _ of stream) streamed += 1;
  assert.equal(streamed, want.large_count, `${user}: large result through pg-query-stream`);

  // Cancel: node-postgres sends a CancelRequest when a query's query_timeout passes.
  const slow = connect(user);
  slow.connectionParameters.query_timeout = 1000;
  await slow.connect();
  await assert.rejects(slow.query({ text: expected.long_sql, query_timeout: 1000 }), /timeout/i);
  await slow.end();
  const after = await client.query('SELECT 1 AS one');
  assert.equal(Number(after.rows[0].one), 1, 'connection usable after the other one was cancelled');

  await client.end();
}

for (const user of ['alice', 'carol']) await scenario(user);
console.log(`ok: node-postgres ${JSON.parse(fs.readFileSync(new URL('./node_modules/pg/package.json', import.meta.url))).version}`);
