"""Writes the scenario's expected answers as JSON, for the clients not written in Python
(node-postgres, pgjdbc, ODBC): one oracle, computed from the Parquet files, for all of them."""
import json

from lakegate_scenario import *

out = {"min_units": MIN_UNITS, "aggregate_sql": AGGREGATE_SQL, "large_sql": LARGE_SQL,
       "long_sql": LONG_SQL, "users": {}}
for user in USERS:
    out["users"][user] = {
        "aggregate": [[c, n, f"{net:.2f}", first.isoformat(), last.strftime("%Y-%m-%d %H:%M:%S"), never]
                      for c, n, net, first, last, never in expected_aggregate(user)],
        "large_count": expected_large_count(user),
        "sales_rows": len(visible_sales(user)),
        "hcp_columns": HCP_COLUMNS[user],
        "hcp_comments": {k: v for k, v in HCP_COMMENTS.items() if k in HCP_COLUMNS[user]},
    }
out["alice_emails"] = {str(k): v for k, v in expected_alice_emails().items()}
print(json.dumps(out))
