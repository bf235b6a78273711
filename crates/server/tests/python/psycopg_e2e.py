"""psycopg 3 against a running AmberDB: parameters, transactions, a serialization-failure
retry loop, COPY. Usage: psycopg_e2e.py PORT. Exits non-zero on the first failure."""
import sys
import threading
from datetime import datetime, timedelta
from datetime import time as dtime

import psycopg
from psycopg import errors

PORT = int(sys.argv[1])
DSN = f"host=127.0.0.1 port={PORT} user=amberdb dbname=amberdb"


def main():
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id INT PRIMARY KEY, owner TEXT NOT NULL, bal BIGINT, opened DATE)")
        # Parameters of several types, server-side binding (extended protocol).
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO acct (id, owner, bal, opened) VALUES (%s, %s, %s, %s)",
                [(i, f"owner{i}", 100, "2024-01-0%d" % (1 + i % 9)) for i in range(1, 11)],
            )
            cur.execute("SELECT owner, bal FROM acct WHERE id = %s", (3,))
            assert cur.fetchone() == ("owner3", 100)
            cur.execute("SELECT count(*) FROM acct WHERE bal >= %s AND owner LIKE %s", (50, "owner1%"))
            assert cur.fetchone() == (2,), "owner1 and owner10"
            cur.execute("SELECT id FROM acct WHERE opened = %s ORDER BY id", ("2024-01-04",))
            assert [r[0] for r in cur.fetchall()] == [3]
            # Binary results.
            cur.execute("SELECT id, bal, owner FROM acct WHERE id = %s", (5,), binary=True)
            assert cur.fetchone() == (5, 100, "owner5")
            # A session zone change is reported (ParameterStatus) over the extended protocol
            # and the simple one (PQexec): psycopg presents timestamptz in the zone it was
            # last told, so without the report it would show them in the old one.
            assert conn.info.parameter_status("TimeZone") == "UTC", conn.info.parameter_status("TimeZone")
            cur.execute("SET TIME ZONE 'Asia/Tokyo'")
            assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo", conn.info.parameter_status("TimeZone")
            for binary in (False, True):
                cur.execute("SELECT %s::timestamptz", ("2024-01-01 00:00:00+00",), binary=binary)
                got = cur.fetchone()[0]
                assert str(got.tzinfo) == "Asia/Tokyo" and got.hour == 9, (binary, got)
            conn.pgconn.exec_(b"SET TIME ZONE 'Europe/Paris'")
            assert conn.info.parameter_status("TimeZone") == "Europe/Paris"
            cur.execute("RESET timezone")
            assert conn.info.parameter_status("TimeZone") == "UTC"
            # TIME both ways, in text and binary.
            for binary in (False, True):
                cur.execute("SELECT time '10:11:12.5', %s::time + interval '1 hour'", (dtime(1, 2, 3),), binary=binary)
                assert cur.fetchone() == (dtime(10, 11, 12, 500000), dtime(2, 2, 3)), binary
            # Intervals both ways, in text and binary (psycopg sends timedelta as interval).
            for binary in (False, True):
                cur.execute(
                    "SELECT interval '1 day 02:00:03.5', %s::interval + interval '1 hour', "
                    "timestamp '2024-01-31 10:00' + interval '1 mon'",
                    (timedelta(hours=5, microseconds=7),),
                    binary=binary,
                )
                got = cur.fetchone()
                assert got == (
                    timedelta(days=1, hours=2, seconds=3.5),
                    timedelta(hours=6, microseconds=7),
                    datetime(2024, 2, 29, 10, 0),
                ), (binary, got)
            # NULL parameters and errors with SQLSTATE.
            try:
                cur.execute("INSERT INTO acct (id, owner) VALUES (%s, %s)", (99, None))
                raise AssertionError("NOT NULL not enforced")
            except errors.NotNullViolation:
                pass
            try:
                cur.execute("INSERT INTO acct (id, owner) VALUES (%s, %s)", (1, "dup"))
                raise AssertionError("duplicate accepted")
            except errors.UniqueViolation:
                pass

        # Transactions: rollback leaves nothing; commit keeps everything.
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("UPDATE acct SET bal = bal - 10 WHERE id = %s", (1,))
            conn.rollback()
            cur.execute("SELECT bal FROM acct WHERE id = 1")
            assert cur.fetchone() == (100,)
            conn.rollback()
            with conn.transaction():
                cur.execute("UPDATE acct SET bal = bal - 10 WHERE id = %s", (1,))
                cur.execute("UPDATE acct SET bal = bal + 10 WHERE id = %s", (2,))
        conn.autocommit = True

    # Concurrent transfers with a serialization-failure retry loop: total stays 1000.
    retries = [0]

    def worker(seed):
        with psycopg.connect(DSN) as c:
            for n in range(25):
                a, b = 1 + (seed + n) % 10, 1 + (seed * 3 + n + 1) % 10
                if a == b:
                    continue
                while True:
                    try:
                        with c.transaction():
                            (x,) = c.execute("SELECT bal FROM acct WHERE id = %s", (a,)).fetchone()
                            c.execute("UPDATE acct SET bal = %s WHERE id = %s", (x - 1, a))
                            (y,) = c.execute("SELECT bal FROM acct WHERE id = %s", (b,)).fetchone()
                            c.execute("UPDATE acct SET bal = %s WHERE id = %s", (y + 1, b))
                        break
                    except errors.SerializationFailure:
                        retries[0] += 1

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    with psycopg.connect(DSN, autocommit=True) as conn:
        (total,) = conn.execute("SELECT sum(bal) FROM acct").fetchone()
        assert total == 1000, total
        # COPY both ways.
        with conn.cursor() as cur:
            with cur.copy("COPY acct (id, owner, bal) FROM STDIN") as copy:
                for i in range(100, 150):
                    copy.write_row((i, f"copied{i}", i))
            (n,) = cur.execute("SELECT count(*) FROM acct WHERE id >= 100").fetchone()
            assert n == 50, n
            out = []
            with cur.copy("COPY (SELECT id, owner FROM acct WHERE id < 3 ORDER BY id) TO STDOUT") as copy:
                for row in copy.rows():
                    out.append(row)
            assert out == [("1", "owner1"), ("2", "owner2")], out
    print(f"psycopg e2e ok ({retries[0]} serialization retries)")


if __name__ == "__main__":
    main()
