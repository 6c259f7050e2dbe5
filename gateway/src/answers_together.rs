//! Under load, a Sync's answers let the other connections' ready statements go first, so
//! that answers leave together, as Redis writes its replies just before it waits for more
//! input.
//!
//! Every answer written wakes its client. With many connections on few cores, writing each
//! answer the moment it was ready woke a client per answer: pgbench, 32 connections of one
//! prepared lookup each on two threads, spent twice the CPU per query against the gateway that
//! it spent against PostgreSQL, most of it sleeping in `ppoll` and being woken for one answer
//! at a time. Where other connections have statements in flight, the answers a Sync writes
//! (the extended protocol's, which drivers use: JDBC, Npgsql, asyncpg) now yield to them
//! first (`tokio::task::yield_now`: the task runs again once its connection thread has run
//! what was ready and looked at its sockets), and that round's answers reach their clients
//! together. A lone connection's answer leaves at once: a yield would cost it a round of the
//! scheduler.
//! The simple protocol's answers leave as before: the same yield measured no different there.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Statements in flight over all connections of one server. Not of one connection thread
/// (`runtimes`): counting only the thread's own connections took a fifth off prepared
/// lookups at 32 clients (2026-12-01, alternating runs): a yield also lets the thread take
/// in the statements that arrived meanwhile, whose answers then leave with this one.
#[derive(Debug, Default)]
pub struct Flights(AtomicUsize);

/// One connection's share of `Flights`: its statement counts from its start to its answer.
#[derive(Debug)]
pub struct Flight {
    all: Arc<Flights>,
    counted: AtomicBool,
}

impl Flight {
    pub fn new(all: Arc<Flights>) -> Self {
        Flight {
            all,
            counted: AtomicBool::new(false),
        }
    }

    /// A statement of this connection started (again, for an Execute before the Sync).
    pub fn start(&self) {
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.all.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Just before this connection's answer is written: the other connections' statements in
    /// flight go first where there are any.
    pub async fn answer(&self) {
        let own = usize::from(self.counted.load(Ordering::Relaxed));
        if self.all.0.load(Ordering::Relaxed) > own {
            tokio::task::yield_now().await;
        }
        self.end();
    }

    fn end(&self) {
        if self.counted.swap(false, Ordering::Relaxed) {
            self.all.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A connection that ends mid-statement (an Execute with no Sync after it, an error) leaves
/// no statement counted.
impl Drop for Flight {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    fn in_flight(all: &Flights) -> usize {
        all.0.load(Ordering::Relaxed)
    }

    /// Whether `answer` finishes at its first poll (it yields only where others are in flight).
    fn answers_at_once(flight: &Flight) -> bool {
        let mut answer = pin!(flight.answer());
        let mut cx = Context::from_waker(Waker::noop());
        if answer.as_mut().poll(&mut cx).is_ready() {
            return true;
        }
        while answer.as_mut().poll(&mut cx).is_pending() {}
        false
    }

    #[tokio::test]
    async fn an_answer_yields_only_while_other_connections_have_statements_in_flight() {
        let all = Arc::new(Flights::default());
        let (one, two) = (Flight::new(all.clone()), Flight::new(all.clone()));
        one.start();
        one.start(); // an Execute before the Sync counts once
        assert_eq!(in_flight(&all), 1);
        assert!(answers_at_once(&one), "alone, an answer leaves at once");
        assert_eq!(in_flight(&all), 0);

        one.start();
        two.start();
        assert!(
            !answers_at_once(&one),
            "another statement in flight goes first"
        );
        assert_eq!(in_flight(&all), 1);
        assert!(answers_at_once(&two));

        // a connection that goes mid-statement is no longer counted
        one.start();
        drop(one);
        assert_eq!(in_flight(&all), 0);
    }
}
