//! Texts of a known shape: a query sent again with other values written into it, answered
//! without parsing it again.
//!
//! `literal_params` takes a text's values out so that one plan serves the query with any
//! values, but each new text was still parsed: with a new text per lookup (BI tools and
//! scripts write their values in), sqlparser, datafusion-pg-catalog's rewrite rules and taking
//! the values out were a third of the gateway's CPU. A text is now first split into tokens;
//! one whose tokens are those of a text parsed before, except for the values that text had
//! taken out, is that text's statement with its own values in their places.
//!
//! That gives the statement a parse would give, because the parser decides on tokens, not on
//! the values in them, and no step after it reads a value that is taken out:
//! - the client fragments of `client_compat` are found in the text itself: a text with one in
//!   it is always parsed;
//! - datafusion-pg-catalog's whole-query substitutions compare tokens, values included: they
//!   replace client catalog queries, and no text that names the catalog (a `pg_` word,
//!   `information_schema`) is learned as a shape;
//! - its rules that read values (array literals, `'name'::regclass`) read them under casts and
//!   `ANY`, where `literal_params` takes no value out;
//! - every value that is not taken out (a LIMIT, a value in the select list or under a cast)
//!   is part of the shape: a text with another one there is parsed.
//!
//! A shape is learned only from a text whose taken-out values each sit in exactly one token,
//! and only once the same text with each of those values changed has parsed to the same
//! statement with the new values in their places. Anything else is parsed, as before.
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{Expr, Statement, Value, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use crate::literal_params::{self, Parameterized};
use crate::plan_cache::{STATEMENT_BYTES, STATEMENT_BYTES_PER_CHAR};

/// The most the shapes may hold, estimated as the plan cache estimates parsed statements
/// (least recently used first out): a shape is worth keeping only while it is cheap beside
/// the plans it leads to.
const MOST_BYTES: u64 = 32 * 1024 * 1024;

/// Texts of one shape may differ in a value that is not taken out (`LIMIT 10`, `LIMIT 20`):
/// this many of them are kept side by side. Texts of the shape that match none of them then
/// are parsed without learning more, so that a value that is never taken out (`price > 9.5`)
/// does not cost a second parse of each text.
const VARIANTS: usize = 4;

/// The shapes learned from texts that were parsed, shared by every session (parsing does not
/// depend on the user or the session).
pub struct Shapes {
    known: moka::sync::Cache<Vec<Token>, Arc<Family>>,
}

/// The shapes of one key (the text's tokens, values left out).
#[derive(Debug, Default)]
struct Family {
    variants: Vec<Arc<Shape>>,
    /// No more variants are learned: there are `VARIANTS`, or a text's values changed how it
    /// parsed.
    closed: bool,
}

/// One shape: its statement with placeholders, and what each value token must hold.
#[derive(Debug)]
struct Shape {
    /// Each value token of the text, in the text's order.
    slots: Vec<Slot>,
    statement: Arc<Statement>,
    /// `literal_params`' text of the statement: the plan cache's key.
    text: String,
}

#[derive(Debug, PartialEq)]
enum Slot {
    /// A value that stays in the statement: a text of this shape has this very token.
    Kept(Token),
    /// A value taken out as the placeholder of this index (`$1` is 0).
    Taken(usize),
}

/// A text of a known shape: its values taken out, and as written, to make the statement a
/// parse would give where one is needed (a shape's plan kept in the cache needs none).
#[derive(Debug)]
pub struct Known {
    pub literals: Parameterized,
    written: Vec<Value>,
}

impl Known {
    /// The text's statement, as a parse gives it: its shape's with its values in their places.
    pub fn statement(&self) -> Option<Statement> {
        with_values(&self.literals.statement, &self.written)
    }
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes::within(MOST_BYTES)
    }
}

impl Shapes {
    /// Shapes holding at most about `bytes`.
    fn within(bytes: u64) -> Shapes {
        Shapes {
            known: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &Vec<Token>, family: &Arc<Family>| {
                    let bytes = key.len() * TOKEN_BYTES
                        + family.variants.iter().map(|s| s.bytes()).sum::<usize>();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }
}

/// A token's estimated bytes (the enum and a short string of its own).
const TOKEN_BYTES: usize = 64;

impl Shapes {
    /// `sql` as the statement of a known shape, or None: it is then to be parsed.
    pub fn find(&self, sql: &str) -> Option<Known> {
        let tokens = tokens(sql)?;
        let (key, values) = split(&tokens);
        let family = self.known.get(&key)?;
        let known = family.variants.iter().find_map(|shape| shape.with(&values));
        if known.is_some() {
            tracing::debug!("statement of a known shape");
        }
        known
    }

    /// Learns the shape of `sql`, which parsed to one query whose values were taken out as
    /// `literals`. `parse` is the parser `sql` went through, asked again for the check.
    pub fn learn(
        &self,
        sql: &str,
        literals: &Parameterized,
        parse: impl Fn(&str) -> Option<Vec<Statement>>,
    ) {
        let Some(tokens) = tokens(sql) else {
            return;
        };
        if tokens.iter().any(|t| names_the_catalog(&t.token)) {
            return;
        }
        let (key, values) = split(&tokens);
        let family = self.known.get(&key).unwrap_or_default();
        if family.closed {
            return;
        }
        let Some(slots) = slots(&values, &literals.values) else {
            return;
        };
        if !changed_values_parse_alike(sql, &values, &slots, literals, parse) {
            tracing::debug!("shape not learned: its values change how it parses");
            let closed = Family {
                variants: family.variants.clone(),
                closed: true,
            };
            self.known.insert(key, Arc::new(closed));
            return;
        }
        let mut variants = family.variants.clone();
        variants.push(Arc::new(Shape {
            slots,
            statement: literals.statement.clone(),
            text: literals.text.clone(),
        }));
        let closed = variants.len() >= VARIANTS;
        self.known
            .insert(key, Arc::new(Family { variants, closed }));
    }
}

impl Shape {
    /// Estimated bytes held: the statement (as `plan_cache` weighs one), its text, the slots.
    fn bytes(&self) -> usize {
        self.text.len() * (1 + STATEMENT_BYTES_PER_CHAR)
            + STATEMENT_BYTES
            + self.slots.len() * TOKEN_BYTES
    }

    /// This shape's statement with `values` (the text's value tokens) in their places.
    fn with(&self, values: &[&TokenWithSpan]) -> Option<Known> {
        if values.len() != self.slots.len() {
            return None;
        }
        let mut taken: Vec<Option<(ScalarValue, Value)>> = Vec::new();
        for (slot, token) in self.slots.iter().zip(values) {
            match slot {
                Slot::Kept(kept) if *kept == token.token => {}
                Slot::Kept(_) => return None,
                Slot::Taken(index) => {
                    if taken.len() <= *index {
                        taken.resize(*index + 1, None);
                    }
                    taken[*index] = Some(value_of(&token.token)?);
                }
            }
        }
        let (values, written) = taken.into_iter().collect::<Option<(Vec<_>, Vec<_>)>>()?;
        Some(Known {
            literals: Parameterized {
                statement: self.statement.clone(),
                text: self.text.clone(),
                values,
            },
            written,
        })
    }
}

/// The text's tokens as the parser sees them; None where the text is not tokenized as it is
/// (a client fragment would be replaced in it first) or does not tokenize.
fn tokens(sql: &str) -> Option<Vec<TokenWithSpan>> {
    if matches!(
        crate::client_compat::rewrite(sql),
        std::borrow::Cow::Owned(_)
    ) {
        return None;
    }
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()
        .map(Parser::into_tokens)
}

/// The shape's key (the tokens without white space and comments, values blanked) and the
/// value tokens, in order.
fn split(tokens: &[TokenWithSpan]) -> (Vec<Token>, Vec<&TokenWithSpan>) {
    let mut key = Vec::with_capacity(tokens.len());
    let mut values = Vec::new();
    for token in tokens {
        match &token.token {
            Token::Whitespace(_) => continue,
            Token::Number(_, long) => {
                key.push(Token::Number(String::new(), *long));
                values.push(token);
            }
            Token::SingleQuotedString(_) => {
                key.push(Token::SingleQuotedString(String::new()));
                values.push(token);
            }
            other => key.push(other.clone()),
        }
    }
    (key, values)
}

fn names_the_catalog(token: &Token) -> bool {
    let Token::Word(word) = token else {
        return false;
    };
    let name = word.value.to_ascii_lowercase();
    name.starts_with("pg_") || name == "information_schema"
}

/// A value token as `literal_params` would take it out: an integer or a quoted string.
fn value_of(token: &Token) -> Option<(ScalarValue, Value)> {
    match token {
        Token::Number(n, false) if n.bytes().all(|b| b.is_ascii_digit()) => {
            let value = n.parse::<i64>().ok()?;
            Some((
                ScalarValue::Int64(Some(value)),
                Value::Number(n.clone(), false),
            ))
        }
        Token::SingleQuotedString(s) => Some((
            ScalarValue::Utf8(Some(s.clone())),
            Value::SingleQuotedString(s.clone()),
        )),
        _ => None,
    }
}

/// Each value token's slot: taken out where exactly one token holds a taken-out value (and
/// no other taken-out value is that token's); None where that does not tell them apart.
fn slots(values: &[&TokenWithSpan], taken: &[ScalarValue]) -> Option<Vec<Slot>> {
    let mut slots: Vec<Slot> = values.iter().map(|t| Slot::Kept(t.token.clone())).collect();
    for (index, value) in taken.iter().enumerate() {
        let mut holders = values
            .iter()
            .enumerate()
            .filter(|(_, t)| value_of(&t.token).is_some_and(|(v, _)| &v == value));
        let (at, _) = holders.next()?;
        if holders.next().is_some() || !matches!(slots[at], Slot::Kept(_)) {
            return None;
        }
        slots[at] = Slot::Taken(index);
    }
    Some(slots)
}

/// `statement` with each placeholder `$n` replaced by the `n`th value.
fn with_values(statement: &Statement, values: &[Value]) -> Option<Statement> {
    let mut statement = statement.clone();
    let mut unknown = false;
    let _ = visit_expressions_mut(&mut statement, |expr| {
        if let Expr::Value(literal) = expr
            && let Value::Placeholder(name) = &literal.value
        {
            let value = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| values.get(n.checked_sub(1)?));
            match value {
                Some(value) => literal.value = value.clone(),
                None => unknown = true,
            }
        }
        ControlFlow::<()>::Continue(())
    });
    (!unknown).then_some(statement)
}

/// Whether `sql` with each taken-out value changed parses, through `parse`, to the same
/// statement with the new values taken out in the same places.
fn changed_values_parse_alike(
    sql: &str,
    values: &[&TokenWithSpan],
    slots: &[Slot],
    literals: &Parameterized,
    parse: impl Fn(&str) -> Option<Vec<Statement>>,
) -> bool {
    let mut changed = String::with_capacity(sql.len() + 16);
    let mut expected = vec![ScalarValue::Null; literals.values.len()];
    let mut copied = 0;
    for (token, slot) in values.iter().zip(slots) {
        let Slot::Taken(index) = slot else {
            continue;
        };
        let (Some(start), Some(end)) = (offset(sql, token.span.start), offset(sql, token.span.end))
        else {
            return false;
        };
        let Some(written) = sql.get(start..end) else {
            return false;
        };
        let (new_text, new_value) = match &token.token {
            Token::Number(..) => {
                // Distinct for each placeholder, and never the value written.
                let base = 7_340_033 + 2 * i64::try_from(*index).unwrap_or(0);
                let probe = match value_of(&token.token) {
                    Some((ScalarValue::Int64(Some(written)), _)) if written == base => base + 1,
                    _ => base,
                };
                (probe.to_string(), ScalarValue::Int64(Some(probe)))
            }
            Token::SingleQuotedString(s) => {
                let probe = format!("{s}'shape {index}");
                (quoted(&probe), ScalarValue::Utf8(Some(probe)))
            }
            _ => return false,
        };
        // The token must be written as it reads, or the change would land elsewhere.
        if start < copied || written != rendered(&token.token) {
            return false;
        }
        changed.push_str(&sql[copied..start]);
        changed.push_str(&new_text);
        copied = end;
        expected[*index] = new_value;
    }
    changed.push_str(&sql[copied..]);
    let Some(statements) = parse(&changed) else {
        return false;
    };
    let [statement] = statements.as_slice() else {
        return false;
    };
    literal_params::parameterize(statement)
        .is_some_and(|again| again.text == literals.text && again.values == expected)
}

/// A token as written in a text, for the ones `changed_values_parse_alike` replaces.
fn rendered(token: &Token) -> String {
    match token {
        Token::SingleQuotedString(s) => quoted(s),
        other => other.to_string(),
    }
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The byte offset in `sql` of a tokenizer location (lines and columns from 1, columns in
/// characters).
fn offset(sql: &str, at: Location) -> Option<usize> {
    let line = usize::try_from(at.line).ok()?.checked_sub(1)?;
    let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
    let line_start = if line == 0 {
        0
    } else {
        sql.match_indices('\n').nth(line - 1)?.0 + 1
    };
    let rest = &sql[line_start..];
    match rest.char_indices().nth(column) {
        Some((i, _)) => Some(line_start + i),
        None if rest.chars().count() == column => Some(sql.len()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    /// The parser the gateway parses with, less its own steps (client fragments, scalar
    /// subqueries, description calls), which these texts do not reach.
    fn parse(sql: &str) -> Option<Vec<Statement>> {
        PostgresCompatibilityParser::new().parse(sql).ok()
    }

    fn learned(shapes: &Shapes, sql: &str) {
        let statements = parse(sql).expect("parses");
        let literals = literal_params::parameterize(&statements[0]).expect("values taken out");
        shapes.learn(sql, &literals, parse);
    }

    /// What a parse of `sql` gives: the statement, its text with values taken out and them.
    fn parsed(sql: &str) -> (Statement, String, Vec<ScalarValue>) {
        let statement = parse(sql).expect("parses").remove(0);
        let literals = literal_params::parameterize(&statement).expect("values taken out");
        (statement, literals.text, literals.values)
    }

    fn found(shapes: &Shapes, sql: &str) -> Option<(Statement, String, Vec<ScalarValue>)> {
        shapes.find(sql).map(|k| {
            (
                k.statement().expect("values fit"),
                k.literals.text,
                k.literals.values,
            )
        })
    }

    #[test]
    fn a_text_with_other_values_is_its_shape_with_them() {
        let shapes = Shapes::default();
        learned(
            &shapes,
            "SELECT * FROM gtm.hcp WHERE hcp_id = 17 AND country IN ('DE', 'FR') LIMIT 5",
        );
        for sql in [
            "SELECT * FROM gtm.hcp WHERE hcp_id = 18 AND country IN ('DK', 'CH') LIMIT 5",
            "select * FROM gtm.hcp WHERE hcp_id = 18 AND country IN ('DK', 'CH') LIMIT 5",
            "SELECT *\n  FROM gtm.hcp -- a comment\n WHERE hcp_id=0018 AND country IN ('O''Brien','') LIMIT 5",
            "SELECT * FROM gtm.hcp WHERE hcp_id = 18 AND country IN ('é€', 'DE') LIMIT 5",
        ] {
            let want = parsed(sql);
            let Some(got) = found(&shapes, sql) else {
                // Only the lower-case keyword is another shape: its words differ.
                assert!(sql.starts_with("select"), "{sql} is not found");
                continue;
            };
            assert_eq!(got, want, "{sql}");
        }
    }

    #[test]
    fn a_value_that_stays_in_the_text_must_be_the_same() {
        let shapes = Shapes::default();
        learned(&shapes, "SELECT 'a' AS tag, x FROM t WHERE id = 1 LIMIT 10");
        let same = "SELECT 'a' AS tag, x FROM t WHERE id = 2 LIMIT 10";
        assert_eq!(found(&shapes, same), Some(parsed(same)));
        assert!(found(&shapes, "SELECT 'b' AS tag, x FROM t WHERE id = 2 LIMIT 10").is_none());
        assert!(found(&shapes, "SELECT 'a' AS tag, x FROM t WHERE id = 2 LIMIT 20").is_none());
        // Both limits are kept side by side once each was parsed.
        learned(&shapes, "SELECT 'a' AS tag, x FROM t WHERE id = 3 LIMIT 20");
        for sql in [same, "SELECT 'a' AS tag, x FROM t WHERE id = 4 LIMIT 20"] {
            assert_eq!(found(&shapes, sql), Some(parsed(sql)), "{sql}");
        }
        // Up to `VARIANTS` of them: then no more are learned, and those known stay.
        for limit in 30..40 {
            learned(
                &shapes,
                &format!("SELECT 'a' AS tag, x FROM t WHERE id = 3 LIMIT {limit}"),
            );
        }
        let known = |limit| {
            let sql = format!("SELECT 'a' AS tag, x FROM t WHERE id = 5 LIMIT {limit}");
            found(&shapes, &sql).is_some()
        };
        assert_eq!(
            [10, 20, 30, 31, 32].map(known),
            [true, true, true, true, false]
        );
    }

    #[test]
    fn values_the_text_would_keep_are_parsed() {
        let shapes = Shapes::default();
        learned(&shapes, "SELECT x FROM t WHERE id = 1");
        // Not an integer, out of range, a long number, another kind of token: each is
        // parsed, and `literal_params` decides.
        for sql in [
            "SELECT x FROM t WHERE id = 1.5",
            "SELECT x FROM t WHERE id = 99999999999999999999",
            "SELECT x FROM t WHERE id = 1e3",
            "SELECT x FROM t WHERE id = E'1'",
            "SELECT x FROM t WHERE id = '1'",
            "SELECT x FROM t WHERE id = $1",
            "SELECT x FROM t WHERE id = -1",
        ] {
            assert!(found(&shapes, sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn only_texts_whose_values_can_be_told_apart_are_learned() {
        let shapes = Shapes::default();
        learned(&shapes, "SELECT x FROM t WHERE a = 5 AND b = 5");
        assert!(found(&shapes, "SELECT x FROM t WHERE a = 6 AND b = 7").is_none());
        learned(&shapes, "SELECT 5, x FROM t WHERE a = 5");
        assert!(found(&shapes, "SELECT 5, x FROM t WHERE a = 6").is_none());
        learned(&shapes, "SELECT x FROM t WHERE a = 5 AND b = 6");
        let sql = "SELECT x FROM t WHERE a = 7 AND b = 7";
        assert_eq!(found(&shapes, sql), Some(parsed(sql)));
    }

    #[test]
    fn a_shape_whose_values_change_how_it_parses_is_not_learned() {
        let shapes = Shapes::default();
        // A parser that reads one value: `'a'` parses as written, any other value with a
        // condition added.
        let reads_a_value = |sql: &str| match sql.ends_with("'a'") {
            true => parse(sql),
            false => parse(&format!("{sql} AND y = 1")),
        };
        let sql = "SELECT x FROM t WHERE name = 'a'";
        let statements = reads_a_value(sql).expect("parses");
        let literals = literal_params::parameterize(&statements[0]).expect("values taken out");
        shapes.learn(sql, &literals, reads_a_value);
        assert!(found(&shapes, "SELECT x FROM t WHERE name = 'b'").is_none());
        // Nor later: its texts are parsed without trying again.
        shapes.learn(sql, &literals, parse);
        assert!(found(&shapes, "SELECT x FROM t WHERE name = 'b'").is_none());
        // The same text through a parser that reads no value is learned.
        let fresh = Shapes::default();
        fresh.learn(sql, &literals, parse);
        assert!(found(&fresh, "SELECT x FROM t WHERE name = 'b'").is_some());
    }

    #[test]
    fn texts_naming_the_catalog_are_not_learned() {
        let shapes = Shapes::default();
        learned(
            &shapes,
            "SELECT relname FROM pg_catalog.pg_class WHERE oid = 1259",
        );
        assert!(
            found(
                &shapes,
                "SELECT relname FROM pg_catalog.pg_class WHERE oid = 1"
            )
            .is_none()
        );
        learned(
            &shapes,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'gtm'",
        );
        let other = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'x'";
        assert!(found(&shapes, other).is_none());
    }

    #[test]
    fn a_text_with_a_client_fragment_is_parsed() {
        let shapes = Shapes::default();
        // `i.indisprimary = 't'` is a fragment `client_compat` replaces, `= 'f'` is not.
        learned(&shapes, "SELECT x FROM t AS i WHERE i.indisprimary = 'f'");
        let other = "SELECT x FROM t AS i WHERE i.indisprimary = 'x'";
        assert_eq!(found(&shapes, other), Some(parsed(other)));
        assert!(found(&shapes, "SELECT x FROM t AS i WHERE i.indisprimary = 't'").is_none());
    }

    #[test]
    fn shapes_stay_within_their_budget() {
        let shapes = Shapes::within(1 << 20);
        for i in 0..120 {
            learned(&shapes, &format!("SELECT c{i} FROM t WHERE id = 1"));
        }
        shapes.known.run_pending_tasks();
        assert!(shapes.known.weighted_size() <= 1 << 20);
        let kept = shapes.known.entry_count();
        assert!((20..120).contains(&kept), "{kept} shapes kept");
        let still_found = (0..120)
            .filter(|i| found(&shapes, &format!("SELECT c{i} FROM t WHERE id = 2")).is_some())
            .count();
        assert_eq!(u64::try_from(still_found).ok(), Some(kept));
    }

    #[test]
    fn token_locations_are_byte_offsets() {
        let sql = "SELECT 'é'\n  , 'x''y' FROM t WHERE a = 42";
        let tokens = tokens(sql).expect("tokens");
        let (_, values) = split(&tokens);
        let written: Vec<&str> = values
            .iter()
            .map(|t| &sql[offset(sql, t.span.start).unwrap()..offset(sql, t.span.end).unwrap()])
            .collect();
        assert_eq!(written, ["'é'", "'x''y'", "42"]);
    }
}
