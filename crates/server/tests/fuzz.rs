//! Bounded fuzzing of the front door: random and mangled SQL over one connection, and
//! random bytes on raw sockets. The server must never panic or drop a connection because
//! of bad input, and must keep serving.

mod common;

use common::Server;
use rand::prelude::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const SEEDS: &[&str] = &[
    "CREATE TABLE f (id INT PRIMARY KEY, s TEXT, x DOUBLE PRECISION, b BOOLEAN)",
    "INSERT INTO f VALUES (1, 'a', 1.5, true), (2, NULL, -3, false)",
    "SELECT * FROM f WHERE id = 1 AND s LIKE 'a%' ORDER BY x DESC LIMIT 3",
    "SELECT s, count(*), sum(x), avg(id) FROM f GROUP BY s HAVING count(*) > 0",
    "UPDATE f SET x = x * 2 + 1 WHERE b IS NOT NULL RETURNING *",
    "DELETE FROM f WHERE id IN (SELECT id FROM f WHERE x > 100)",
    "SELECT CASE WHEN id > 1 THEN 'big' ELSE s END, coalesce(s, 'z') || '!' FROM f a JOIN f b ON a.id = b.id",
    "SELECT CAST('12' AS INT) + 1, 3 / 0, -9223372036854775808 - 1, 'x'::int",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT (SELECT 1), EXISTS (SELECT * FROM f)",
    "INSERT INTO f (id, s) VALUES (3, repeat('z', 10)) ON CONFLICT (id) DO UPDATE SET s = excluded.s",
    "WITH w (k) AS (SELECT id FROM f WHERE x > 0) SELECT k, (WITH w AS (SELECT 2) SELECT * FROM w) FROM w",
    "SELECT id, rank() OVER (PARTITION BY b ORDER BY x DESC), lag(s, 1, 'none') OVER (ORDER BY id) FROM f",
    "SELECT s, sum(x), dense_rank() OVER (ORDER BY sum(x)) FROM f GROUP BY s",
    "SELECT 123456789012345678901234567890.5::numeric / 7, sqrt(2.0000000000000000000000001), 2::numeric ^ 99",
    "SELECT string_agg(s, ',' ORDER BY id DESC), generate_series(1, 3) FROM f",
    "SELECT * FROM generate_series('2024-01-31'::timestamp, '2024-05-01', interval '1 month')",
    "CREATE TABLE g (id SERIAL PRIMARY KEY, u UUID DEFAULT gen_random_uuid(), n NUMERIC(40, 20))",
    "INSERT INTO g (n) VALUES (DEFAULT), (1.5e10) RETURNING *",
    "CREATE OR REPLACE VIEW v AS SELECT id, s FROM f WHERE id > 0",
    "SELECT * FROM v JOIN g ON v.id = g.id",
    "TRUNCATE g RESTART IDENTITY",
    "ALTER TABLE f ADD UNIQUE (s)",
    "ALTER TABLE f DROP CONSTRAINT f_pkey",
    "ALTER TABLE f ADD PRIMARY KEY (id)",
    "ALTER TABLE f ALTER COLUMN x TYPE NUMERIC(10, 2) USING x * 2",
    "ALTER TABLE f ALTER COLUMN s SET NOT NULL",
    "ALTER TABLE f RENAME TO f2",
    "ALTER TABLE f2 RENAME TO f",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r WHERE n < 50) SELECT * FROM r",
    "CREATE TABLE h AS SELECT id, s, ntile(2) OVER (ORDER BY id) FROM f",
    "SELECT pg_typeof(x), first_value(s) OVER (ORDER BY id), cume_dist() OVER (), nth_value(id, 2) OVER () FROM f",
];

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "(",
    ")",
    ",",
    "'",
    "\"",
    "*",
    "+",
    "-",
    "/",
    "%",
    "=",
    "<>",
    "NULL",
    "AND",
    "OR",
    "NOT",
    "f",
    "id",
    "s",
    "1",
    "1e309",
    "-0",
    "''",
    "$1",
    "::",
    "INT",
    "TEXT",
    "GROUP BY",
    "ORDER BY",
    "LIMIT",
    "JOIN",
    "ON",
    "IN",
    "CASE",
    "WHEN",
    "END",
    ";",
    "\\",
    "\u{0}",
    "é",
    "99999999999999999999",
    "OVER",
    "PARTITION BY",
    "WITH",
    "AS",
    "::numeric",
    "^",
    "1e-16383",
    "gen_random_uuid()",
    "row_number()",
    "v",
    "g",
    "DEFAULT",
    "RECURSIVE",
    "UNION ALL",
    "ALTER TABLE",
    "PRIMARY KEY",
    "TYPE",
];

fn mangle(rng: &mut StdRng) -> String {
    let mut s = SEEDS.choose(rng).unwrap().to_string();
    match rng.random_range(0..4) {
        0 => {
            let cut = rng.random_range(0..=s.len());
            while !s.is_char_boundary(cut.min(s.len())) {
                s.pop();
            }
            s.truncate(cut.min(s.len()));
        }
        1 => {
            let n = rng.random_range(1..12);
            s = (0..n).map(|_| *TOKENS.choose(rng).unwrap()).collect::<Vec<_>>().join(" ");
        }
        2 => {
            let mut bytes = s.into_bytes();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len().max(1));
                if i < bytes.len() {
                    bytes[i] = rng.random_range(32..127);
                }
            }
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        _ => {
            let pos = rng.random_range(0..=s.len());
            let pos = (0..=pos).rev().find(|p| s.is_char_boundary(*p)).unwrap_or(0);
            s.insert_str(pos, TOKENS.choose(rng).unwrap());
        }
    }
    s.replace('\u{0}', "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sql_never_breaks_the_server() {
    let server = Server::start();
    let (client, conn) = tokio_postgres::connect(&server.conn_string(), NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // A mangled recursive query may never end: the timeout ends it (57014, an error
    // like any other here).
    client.simple_query("SET statement_timeout = '2s'").await.unwrap();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let deadline = Instant::now() + Duration::from_secs(8);
    let (mut ok, mut errors, mut n) = (0, 0, 0);
    while Instant::now() < deadline && n < 5000 {
        n += 1;
        let sql = if rng.random_bool(0.3) { SEEDS.choose(&mut rng).unwrap().to_string() } else { mangle(&mut rng) };
        match client.simple_query(&sql).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.as_db_error().is_some(), "non-SQL error (connection lost?) after {sql:?}: {e}");
                errors += 1;
            }
        }
        if n % 50 == 0 {
            // Leave any transaction block and check the connection still answers.
            client.simple_query("ROLLBACK").await.unwrap();
            let rows = client.simple_query("SELECT 1 + 1").await.unwrap();
            assert!(rows
                .iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2"))));
        }
    }
    eprintln!("{n} statements: {ok} ok, {errors} errors");
    assert!(ok > 0 && errors > 0);
}

#[test]
fn random_wire_bytes_never_break_the_server() {
    let server = Server::start();
    let mut rng = StdRng::seed_from_u64(rand::random());
    for i in 0..200 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut junk: Vec<u8> = (0..rng.random_range(1..300)).map(|_| rng.random()).collect();
        if i % 3 == 0 {
            // A plausible startup packet header with a lying length.
            junk.splice(0..0, [0, 0, 0, 8, 0, 3, 0, 0]);
        }
        let _ = s.write_all(&junk);
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    assert!(server_alive(&server), "server died on random bytes");
    // And it still serves real clients.
    let (ok, out, err) = common::psql(&server, &["-At", "-c", "SELECT 6 * 7"], "");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42", "{err}");
}

fn server_alive(server: &Server) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", server.port)).is_ok()
}
