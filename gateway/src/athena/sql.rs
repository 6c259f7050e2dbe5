//! The policy-applied plan as Athena SQL (Trino's dialect), by DataFusion's unparser. Policy
//! barriers give way to what they enforce (masks in a projection, the row filter in a WHERE of
//! a derived table), so the SQL Athena runs carries policy. Where DataFusion and Trino spell a
//! function differently, the dialect below translates it.
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::TimeUnit;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::Like;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, TimezoneInfo, VisitMut, VisitorMut, WindowFrameBound,
    visit_expressions_mut,
};
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::{
    CharacterLengthStyle, DateFieldExtractStyle, Dialect, IntervalStyle,
};
use lakegate_policy::PolicyBarrier;

/// Athena's engine (Trino) as an unparser dialect.
pub struct AthenaDialect;

impl Dialect for AthenaDialect {
    fn identifier_quote_style(&self, _identifier: &str) -> Option<char> {
        Some('"')
    }

    fn use_array_keyword_for_array_literals(&self) -> bool {
        true
    }

    fn use_timestamp_for_date64(&self) -> bool {
        true
    }

    fn interval_style(&self) -> IntervalStyle {
        IntervalStyle::SQLStandard
    }

    fn large_utf8_cast_dtype(&self) -> ast::DataType {
        ast::DataType::Varchar(None)
    }

    fn date_field_extract_style(&self) -> DateFieldExtractStyle {
        DateFieldExtractStyle::Extract
    }

    fn character_length_style(&self) -> CharacterLengthStyle {
        CharacterLengthStyle::Length
    }

    fn timestamp_cast_dtype(&self, _unit: &TimeUnit, tz: &Option<Arc<str>>) -> ast::DataType {
        let tz = match tz {
            Some(_) => TimezoneInfo::WithTimeZone,
            None => TimezoneInfo::None,
        };
        ast::DataType::Timestamp(None, tz)
    }

    fn requires_derived_table_alias(&self) -> bool {
        true
    }

    fn supports_qualify(&self) -> bool {
        false
    }

    /// Trino refuses a frame on ranking and offset functions.
    fn window_func_support_window_frame(
        &self,
        func_name: &str,
        _start: &WindowFrameBound,
        _end: &WindowFrameBound,
    ) -> bool {
        !matches!(
            func_name,
            "row_number"
                | "rank"
                | "dense_rank"
                | "percent_rank"
                | "cume_dist"
                | "ntile"
                | "lag"
                | "lead"
        )
    }

    fn scalar_function_to_sql_overrides(
        &self,
        unparser: &Unparser,
        func_name: &str,
        args: &[Expr],
    ) -> DfResult<Option<ast::Expr>> {
        let sql = |e: &Expr| unparser.expr_to_sql(e);
        Ok(Some(match (func_name, args) {
            // DataFusion's sha256/md5 hash text; Trino's hash varbinary.
            ("sha256" | "md5" | "sha512", [text]) => {
                let hashed = call(func_name, vec![call("to_utf8", vec![sql(text)?])]);
                if func_name == "md5" {
                    call("lower", vec![call("to_hex", vec![hashed])])
                } else {
                    hashed
                }
            }
            // encode(bytes, 'hex') as PostgreSQL and DataFusion write it: lower-case hex.
            ("encode", [bytes, Expr::Literal(ScalarValue::Utf8(Some(f)), _)])
                if f.eq_ignore_ascii_case("hex") =>
            {
                call("lower", vec![call("to_hex", vec![sql(bytes)?])])
            }
            // Trino's repeat makes an array.
            ("repeat", [text, n]) => call(
                "array_join",
                vec![call("repeat", vec![sql(text)?, sql(n)?]), string("")],
            ),
            ("left", [text, n]) => call("substr", vec![sql(text)?, number(1), sql(n)?]),
            // The last n characters, all of them when the text is shorter.
            ("right", [text, n]) => {
                let text = sql(text)?;
                let start = ast::Expr::BinaryOp {
                    left: Box::new(ast::Expr::BinaryOp {
                        left: Box::new(call("length", vec![text.clone()])),
                        op: BinaryOperator::Minus,
                        right: Box::new(sql(n)?),
                    }),
                    op: BinaryOperator::Plus,
                    right: Box::new(number(1)),
                };
                call(
                    "substr",
                    vec![text, call("greatest", vec![start, number(1)])],
                )
            }
            ("btrim", _) => call("trim", unparsed(unparser, args)?),
            ("character_length" | "char_length" | "length", [text]) => {
                call("length", vec![sql(text)?])
            }
            // Trino has a function per field; PostgreSQL's day of week counts from Sunday = 0.
            ("date_part", [Expr::Literal(ScalarValue::Utf8(Some(field)), _), value]) => {
                let value = sql(value)?;
                match field.to_ascii_lowercase().as_str() {
                    f @ ("year" | "quarter" | "month" | "week" | "day" | "hour" | "minute"
                    | "second") => call(f, vec![value]),
                    "doy" => call("day_of_year", vec![value]),
                    "dow" => ast::Expr::BinaryOp {
                        left: Box::new(call("day_of_week", vec![value])),
                        op: BinaryOperator::Modulo,
                        right: Box::new(number(7)),
                    },
                    "epoch" => call("to_unixtime", vec![value]),
                    other => {
                        return Err(DataFusionError::NotImplemented(format!(
                            "date_part('{other}', ...) on Athena"
                        )));
                    }
                }
            }
            // DataFusion's concat skips NULLs; Trino's returns NULL.
            ("concat", _) => call(
                "concat",
                unparsed(unparser, args)?
                    .into_iter()
                    .map(|a| call("coalesce", vec![a, string("")]))
                    .collect(),
            ),
            _ => return Ok(None),
        }))
    }
}

fn unparsed(unparser: &Unparser, args: &[Expr]) -> DfResult<Vec<ast::Expr>> {
    args.iter().map(|a| unparser.expr_to_sql(a)).collect()
}

fn call(name: &str, args: Vec<ast::Expr>) -> ast::Expr {
    crate::scalar_subquery::function_call(name, args)
}

fn string(s: &str) -> ast::Expr {
    ast::Expr::value(ast::Value::SingleQuotedString(s.to_string()))
}

fn number(n: i64) -> ast::Expr {
    ast::Expr::value(ast::Value::Number(n.to_string(), false))
}

/// The SQL Athena runs for a policy-applied, optimized plan.
pub fn to_athena_sql(plan: &LogicalPlan) -> DfResult<String> {
    let policy = policy_expressions(plan)?;
    let plan = without_barriers(plan.clone())?;
    let plan = plan
        .transform_up_with_subqueries(|node| {
            without_fetch_under_limit(node)?
                .transform_data(|node| node.map_expressions(|e| e.transform_up(trino_expr)))
        })?
        .data;
    let plan = with_output_projection(plan)?;
    let mut statement = Unparser::new(&AthenaDialect).plan_to_sql(&plan)?;
    let _ = statement.visit(&mut TrinoQueries);
    let sql = statement.to_string();
    policy_kept(&sql, &policy)?;
    Ok(sql)
}

/// Fails closed unless every row filter and mask is in the SQL Athena gets, whatever the
/// unparser did with the plan's shape.
fn policy_kept(sql: &str, policy: &[(String, String)]) -> DfResult<()> {
    let written = normalized(sql);
    for (table, expr) in policy {
        if !written.contains(&normalized(expr)) {
            return Err(DataFusionError::Plan(format!(
                "the Athena SQL lost part of the policy of {table}"
            )));
        }
    }
    Ok(())
}

/// The row filters and masks of every table of the plan, each as Athena SQL on its own.
fn policy_expressions(plan: &LogicalPlan) -> DfResult<Vec<(String, String)>> {
    let unparser = Unparser::new(&AthenaDialect);
    let mut found = Vec::new();
    plan.apply_with_subqueries(|node| {
        let LogicalPlan::Extension(ext) = node else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let Some(barrier) = ext.node.as_any().downcast_ref::<PolicyBarrier>() else {
            return Ok(TreeNodeRecursion::Continue);
        };
        barrier.input().apply(|inner| {
            let exprs: Vec<Expr> = match inner {
                LogicalPlan::Filter(filter) => split_conjunction(&filter.predicate)
                    .into_iter()
                    .cloned()
                    .collect(),
                LogicalPlan::TableScan(scan) => scan.filters.clone(),
                LogicalPlan::Projection(projection) => projection
                    .expr
                    .iter()
                    .map(|e| e.clone().unalias())
                    .filter(|e| !matches!(e, Expr::Column(_)))
                    .collect(),
                _ => vec![],
            };
            for expr in exprs {
                let expr = expr.transform_up(trino_expr)?.data;
                let text = unparser.expr_to_sql(&expr)?.to_string();
                found.push((barrier.table().to_string(), text));
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(TreeNodeRecursion::Jump)
    })?;
    Ok(found)
}

/// SQL text without what the unparser writes differently by context: qualifiers, parentheses,
/// white space.
fn normalized(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut ident = String::from('"');
                for d in chars.by_ref() {
                    ident.push(d);
                    if d == '"' {
                        break;
                    }
                }
                // a quoted name followed by a dot qualifies the next one: drop it
                if chars.peek() == Some(&'.') {
                    chars.next();
                } else {
                    out.push_str(&ident);
                }
            }
            '\'' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\'' {
                        break;
                    }
                }
            }
            '(' | ')' => {}
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// The plan with a Projection of its own columns under its ORDER BY and LIMIT, where the
/// optimizer removed it: the unparser lists a bare Aggregate's aggregates before its groups,
/// and the result's columns are read by position.
fn with_output_projection(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    match plan {
        LogicalPlan::Projection(_) => Ok(plan),
        LogicalPlan::Limit(_) | LogicalPlan::Sort(_) => {
            let inputs = plan
                .inputs()
                .into_iter()
                .cloned()
                .map(with_output_projection);
            let inputs = inputs.collect::<DfResult<Vec<_>>>()?;
            plan.with_new_exprs(plan.expressions(), inputs)
        }
        other => {
            let columns: Vec<Expr> = other
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect();
            LogicalPlanBuilder::from(other).project(columns)?.build()
        }
    }
}

/// A Sort's own fetch under a Limit: the unparser would write it over the Limit's (a fetch
/// of limit + offset becomes the LIMIT); the Limit bounds the rows anyway.
fn without_fetch_under_limit(node: LogicalPlan) -> DfResult<Transformed<LogicalPlan>> {
    let LogicalPlan::Limit(mut limit) = node else {
        return Ok(Transformed::no(node));
    };
    if let LogicalPlan::Sort(sort) = limit.input.as_ref()
        && sort.fetch.is_some()
    {
        let mut sort = sort.clone();
        sort.fetch = None;
        limit.input = Arc::new(LogicalPlan::Sort(sort));
        return Ok(Transformed::yes(LogicalPlan::Limit(limit)));
    }
    Ok(Transformed::no(LogicalPlan::Limit(limit)))
}

/// Query shapes Trino reads differently: `OFFSET n` comes before the row limit (written as
/// `FETCH FIRST m ROWS ONLY`), and a select list is never empty.
struct TrinoQueries;

impl VisitorMut for TrinoQueries {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<()> {
        if let Some(ast::LimitClause::LimitOffset { offset, .. }) = &mut query.limit_clause
            && offset.as_ref().is_some_and(|o| o.value.to_string() == "0")
        {
            *offset = None;
        }
        if let Some(ast::LimitClause::LimitOffset {
            limit,
            offset: Some(offset),
            limit_by,
        }) = &mut query.limit_clause
            && limit_by.is_empty()
        {
            let rows = limit.take();
            let offset = offset.clone();
            query.limit_clause = Some(ast::LimitClause::LimitOffset {
                limit: None,
                offset: Some(offset),
                limit_by: vec![],
            });
            query.fetch = rows.map(|quantity| ast::Fetch {
                with_ties: false,
                percent: false,
                quantity: Some(quantity),
            });
        }
        if let ast::SetExpr::Select(select) = query.body.as_mut() {
            if select.projection.is_empty() {
                select
                    .projection
                    .push(ast::SelectItem::UnnamedExpr(number(1)));
            }
            requalify_over_derived(select, query.order_by.as_mut());
        }
        ControlFlow::Continue(())
    }
}

/// Over a derived table the unparser made (`derived_*`), it may still qualify columns with
/// the names of relations inside it, which Trino cannot resolve from outside: such columns
/// are qualified with the derived table's alias (its output columns keep their names).
fn requalify_over_derived(select: &mut ast::Select, order_by: Option<&mut ast::OrderBy>) {
    let [from] = select.from.as_slice() else {
        return;
    };
    let ast::TableFactor::Derived {
        subquery,
        alias: Some(alias),
        ..
    } = &from.relation
    else {
        return;
    };
    if !from.joins.is_empty() || !alias.name.value.starts_with("derived_") {
        return;
    }
    let ast::SetExpr::Select(inner) = subquery.body.as_ref() else {
        return;
    };
    let inside: Vec<String> = inner
        .from
        .iter()
        .flat_map(|f| std::iter::once(&f.relation).chain(f.joins.iter().map(|j| &j.relation)))
        .filter_map(|relation| match relation {
            ast::TableFactor::Table { alias: Some(a), .. }
            | ast::TableFactor::Derived { alias: Some(a), .. } => Some(a.name.value.clone()),
            ast::TableFactor::Table { name, .. } => name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.clone()),
            _ => None,
        })
        .collect();
    let outer = alias.name.clone();
    let mut requalify = |expr: &mut ast::Expr| {
        if let ast::Expr::CompoundIdentifier(parts) = expr
            && parts.len() == 2
            && inside.contains(&parts[0].value)
        {
            parts[0] = outer.clone();
        }
        ControlFlow::<()>::Continue(())
    };
    let _ = visit_expressions_mut(&mut select.projection, &mut requalify);
    let _ = visit_expressions_mut(&mut select.group_by, &mut requalify);
    let _ = visit_expressions_mut(&mut select.having, &mut requalify);
    let _ = visit_expressions_mut(&mut select.selection, &mut requalify);
    if let Some(order_by) = order_by {
        let _ = visit_expressions_mut(order_by, &mut requalify);
    }
}

/// Each policy barrier replaced by the plan it guards: the remote engine gets the masks and
/// row filters themselves.
fn without_barriers(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| match &node {
        LogicalPlan::Extension(ext) => match ext.node.as_any().downcast_ref::<PolicyBarrier>() {
            Some(barrier) => Ok(Transformed::yes(barrier.input().clone())),
            None => Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on Athena",
                ext.node.name()
            ))),
        },
        _ => Ok(Transformed::no(node)),
    })
    .map(|t| t.data)
}

/// Expressions Trino spells differently: no ILIKE, and LIKE has no default escape character
/// (PostgreSQL's and DataFusion's is the backslash).
fn trino_expr(expr: Expr) -> DfResult<Transformed<Expr>> {
    let Expr::Like(like) = expr else {
        return Ok(Transformed::no(expr));
    };
    let lower = |e: Box<Expr>| Box::new(datafusion::functions::string::expr_fn::lower(*e));
    let (expr, pattern) = if like.case_insensitive {
        (lower(like.expr), lower(like.pattern))
    } else {
        (like.expr, like.pattern)
    };
    Ok(Transformed::yes(Expr::Like(Like {
        negated: like.negated,
        expr,
        pattern,
        escape_char: Some(like.escape_char.unwrap_or('\\')),
        case_insensitive: false,
    })))
}

/// The cases of `tests/cases/athena/sql.slt`, over the quickstart's catalog and policy with
/// every query routed to Athena.
#[cfg(test)]
mod cases {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use crate::config::Config;
    use crate::lake::Lake;

    struct Case {
        line: usize,
        user: String,
        athena: bool,
        sql: String,
        expected: String,
    }

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace")
            .to_path_buf()
    }

    fn cases(text: &str) -> Vec<Case> {
        let mut cases = Vec::new();
        let mut lines = text.lines().enumerate().peekable();
        while let Some((n, line)) = lines.next() {
            let Some(user) = line.strip_prefix("user ") else {
                continue;
            };
            let (_, engine) = lines.next().expect("athena or local");
            let mut sql = Vec::new();
            for (_, l) in lines.by_ref() {
                if l == "----" {
                    break;
                }
                sql.push(l);
            }
            let mut expected = Vec::new();
            while let Some((_, l)) = lines.peek() {
                if l.is_empty() {
                    break;
                }
                expected.push(*l);
                lines.next();
            }
            cases.push(Case {
                line: n + 1,
                user: user.to_string(),
                athena: engine == "athena",
                sql: sql.join("\n"),
                expected: expected.join("\n"),
            });
        }
        cases
    }

    async fn lake() -> Lake {
        let quickstart = workspace().join("examples/quickstart");
        crate::demo::ensure(&quickstart.join("data")).expect("demo data");
        let mut config = Config::load(&quickstart.join("lakegate.yaml")).expect("config");
        config.aws = Some(
            serde_saphyr::from_str(
                "{ region: us-east-1, roles: [{ persona: steward, role_arn: 'arn:aws:iam::123456789012:role/x' }] }",
            )
            .expect("aws"),
        );
        config.athena = Some(serde_saphyr::from_str("{ workgroup: primary }").expect("athena"));
        config.routes = serde_saphyr::from_str("[{ engine: athena }]").expect("routes");
        let aws = crate::aws::Aws::new(config.aws.as_ref().expect("aws"))
            .await
            .expect("aws");
        let (catalog, _) = crate::load_catalog(&config, None).await.expect("catalog");
        let policy = crate::load_policy(&config.policy).expect("policy");
        Lake::new(Arc::new(config), catalog, policy, Some(Arc::new(aws))).expect("lake")
    }

    /// The Athena SQL of `sql` for `user`, or None when it would run locally.
    async fn athena_sql(lake: &Lake, user: &str, sql: &str) -> Option<String> {
        let identity = lake.identity_of(user).expect("user");
        let session = lake.session_for(identity, None).await.expect("session");
        let state = session.context().state();
        let plan = state.create_logical_plan(sql).await.expect("plan");
        let plan = state.optimize(&plan).expect("optimize");
        let plan = lakegate_policy::unseal(plan, state.config_options()).expect("unseal");
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, &state)
            .await
            .expect("physical plan");
        if physical.name() != "AthenaExec" {
            return None;
        }
        Some(super::to_athena_sql(&plan).expect("athena sql"))
    }

    #[tokio::test]
    async fn sql_that_lost_a_row_filter_or_mask_is_refused() {
        let lake = lake().await;
        let identity = lake.identity_of("alice").expect("alice");
        let session = lake.session_for(identity, None).await.expect("session");
        let state = session.context().state();
        let plan = state
            .create_logical_plan("SELECT hcp_id, email FROM hcp")
            .await
            .expect("plan");
        let plan = state.optimize(&plan).expect("optimize");
        let plan = lakegate_policy::unseal(plan, state.config_options()).expect("unseal");
        let policy = super::policy_expressions(&plan).expect("policy");
        assert!(
            policy.iter().any(|(_, e)| e.contains("sha256")),
            "{policy:?}"
        );
        assert!(
            policy.iter().any(|(_, e)| e.contains(" IN (")),
            "{policy:?}"
        );
        let sql = super::to_athena_sql(&plan).expect("athena sql");
        assert!(super::policy_kept(&sql, &policy).is_ok());
        // (a check that the policy is there, not a proof of its meaning: the cases file shows
        // where it sits)
        let without_filter = sql.replace("IN ('DE', 'FR', 'DK', 'CH')", "IS NOT NULL");
        assert!(super::policy_kept(&without_filter, &policy).is_err());
        let without_mask = sql.replace("sha256", "identity");
        assert!(super::policy_kept(&without_mask, &policy).is_err());
    }

    #[tokio::test]
    async fn athena_sql_cases() {
        let path = workspace().join("tests/cases/athena/sql.slt");
        let text = std::fs::read_to_string(&path).expect("cases");
        let lake = lake().await;
        let mut failures = Vec::new();
        let cases = cases(&text);
        assert!(cases.len() >= 10, "too few cases in {}", path.display());
        for case in &cases {
            let got = athena_sql(&lake, &case.user, &case.sql).await;
            let ok = match (&got, case.athena) {
                (Some(sql), true) => *sql == case.expected,
                (None, false) => true,
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "line {} ({}): {}\n  expected {}: {}\n  got: {}",
                    case.line,
                    case.user,
                    case.sql,
                    if case.athena { "athena" } else { "local" },
                    case.expected,
                    got.as_deref().unwrap_or("(local)")
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}
