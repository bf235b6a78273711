//! # The PostgreSQL wire protocol front end
//!
//! ```text
//!   TCP accept ──▶ per connection: Handlers { session: Mutex<Session> }
//!                     ├─ simple query:   parse → execute each statement → rows / tags
//!                     ├─ extended query: Parse (sql → statement + described types)
//!                     │                  Bind (decode parameters by type) → Execute
//!                     └─ errors → ErrorResponse with SQLSTATE (+ position for syntax)
//! ```
//! The protocol itself is the `pgwire` crate's; this crate maps it onto
//! [`amberdb_sql::Session`]. One session per connection; the transaction status sent
//! in ReadyForQuery follows the session's.
//!
//! Invariants:
//! - An error never closes the connection (only startup errors are FATAL).
//! - In a simple-query string, statements after the first error are not executed.

use amberdb_consensus::Node;
use amberdb_error::Error;
use amberdb_sql::{DataType, OutColumn, Outcome, Session, Value};
use async_trait::async_trait;
use futures::stream;
use futures::Sink;
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver, DefaultServerParameterProvider,
    StartupHandler,
};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyResponse, DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type, METADATA_DATABASE, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::fmt::Debug;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// The only database a server has (PostgreSQL's default database is named after the
/// default user, `amberdb`).
pub const DATABASE: &str = "amberdb";

/// Who may connect. With no users configured, clients are trusted (the server listens
/// on loopback by default); with users, every connection must pass SCRAM-SHA-256.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// User name → password.
    pub users: std::collections::BTreeMap<String, String>,
}

/// Salted SCRAM secrets of the configured users (salts drawn at start-up).
#[derive(Debug)]
struct Users {
    secrets: std::collections::HashMap<String, (Vec<u8>, Vec<u8>)>,
}

const SCRAM_ITERATIONS: usize = 4096;

impl Users {
    fn new(config: &AuthConfig) -> Self {
        let secrets = config
            .users
            .iter()
            .map(|(u, pw)| {
                let salt: Vec<u8> = (0..16).map(|_| rand_byte()).collect();
                let salted = pgwire::api::auth::sasl::scram::gen_salted_password(pw, &salt, SCRAM_ITERATIONS);
                (u.clone(), (salt, salted))
            })
            .collect();
        Self { secrets }
    }
}

/// A random byte from the OS-seeded hasher (no extra dependency for 16 salt bytes).
fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish() as u8
}

#[async_trait]
impl pgwire::api::auth::AuthSource for Users {
    async fn get_password(&self, login: &pgwire::api::auth::LoginInfo) -> PgWireResult<pgwire::api::auth::Password> {
        let user = login.user().unwrap_or_default();
        match self.secrets.get(user) {
            Some((salt, salted)) => Ok(pgwire::api::auth::Password::new(Some(salt.clone()), salted.clone())),
            None => Err(fatal("28P01", format!("password authentication failed for user \"{user}\""))),
        }
    }
}

/// Serves connections from `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    env: Arc<amberdb_sql::Env>,
    auth: AuthConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let connections = Arc::new(ConnectionManager::new());
    let interrupts: Arc<Interrupts> = Arc::default();
    let scram = if auth.users.is_empty() {
        None
    } else {
        let mut s = pgwire::api::auth::sasl::scram::ScramAuth::new(Arc::new(Users::new(&auth)));
        s.set_iterations(SCRAM_ITERATIONS);
        Some(Arc::new(s))
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let handlers = Handlers::new(
                        node.clone(),
                        env.clone(),
                        Cancel { connections: connections.clone(), interrupts: interrupts.clone() },
                        scram.clone(),
                    );
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// A prepared statement: the parsed statement and what Describe reports.
#[derive(Debug, Clone)]
pub struct Prepared {
    stmt: Option<amberdb_sql::Statement>,
    params: Vec<Type>,
    columns: Option<Vec<OutColumn>>,
}

struct Conn {
    node: Arc<Node>,
    session: Mutex<Session>,
}

/// The per-connection protocol handlers.
pub struct Handlers {
    conn: Arc<Conn>,
    parser: Arc<Parser>,
    cancel: Cancel,
    /// The session's interrupt flag, registered for cancel requests at startup.
    interrupt: Arc<amberdb_sql::Interrupt>,
    scram: Option<Arc<ScramAuth>>,
}

/// Interrupt flags of the open sessions by their cancel key (pid, secret). Weak: a
/// closed connection's entry is dead and swept at the next registration.
type Interrupts =
    std::sync::Mutex<std::collections::HashMap<(i32, bytes::Bytes), std::sync::Weak<amberdb_sql::Interrupt>>>;

/// Cancel requests: pgwire's (which drops the running `do_query` at its next await)
/// plus the session's interrupt flag (which stops the loops of a statement executing
/// synchronously: sorts, groupings, scans; see `amberdb_sql` interrupt).
#[derive(Clone)]
struct Cancel {
    connections: Arc<ConnectionManager>,
    interrupts: Arc<Interrupts>,
}

impl Cancel {
    fn register(&self, pid: i32, key: &pgwire::messages::startup::SecretKey, flag: &Arc<amberdb_sql::Interrupt>) {
        match self.interrupts.lock() {
            Ok(mut map) => {
                map.retain(|_, f| f.strong_count() > 0);
                map.insert((pid, key.to_bytes()), Arc::downgrade(flag));
            }
            // Only a panic elsewhere poisons it; the connection still works, but a cancel
            // request will only reach its awaiting phases.
            Err(_) => tracing::warn!(
                pid,
                "cancel registry lock poisoned: this connection's statements cancel only between steps"
            ),
        }
    }
}

#[async_trait]
impl pgwire::api::cancel::CancelHandler for Cancel {
    async fn on_cancel_request(&self, req: pgwire::messages::cancel::CancelRequest) {
        let flag = match self.interrupts.lock() {
            Ok(m) => m.get(&(req.pid, req.secret_key.to_bytes())).cloned(),
            Err(_) => {
                tracing::warn!(pid = req.pid, "cancel registry lock poisoned: cancel reaches only awaiting phases");
                None
            }
        };
        if let Some(flag) = flag.and_then(|f| f.upgrade()) {
            flag.cancel();
        }
        self.connections.cancel(req.pid, &req.secret_key).await;
    }
}

type ScramAuth = pgwire::api::auth::sasl::scram::ScramAuth;

impl Handlers {
    fn new(node: Arc<Node>, env: Arc<amberdb_sql::Env>, cancel: Cancel, scram: Option<Arc<ScramAuth>>) -> Self {
        let session = Session::new(node.clone(), env);
        let interrupt = session.interrupt_flag();
        let conn = Arc::new(Conn { session: Mutex::new(session), node });
        Self { parser: Arc::new(Parser { conn: conn.clone() }), conn, cancel, interrupt, scram }
    }
}

/// The startup parameter naming the client's time zone (JDBC sends it; libpq sends
/// `PGTZ` as it), looked up without regard to case as PostgreSQL's settings are.
fn startup_time_zone<C: ClientInfo>(client: &C) -> Option<&String> {
    client.metadata().iter().find(|(k, _)| k.eq_ignore_ascii_case("timezone")).map(|(_, v)| v)
}

/// The parameters reported at startup: PostgreSQL 15's, with the session's time zone
/// (a valid `TimeZone` startup parameter, else UTC).
struct ServerParams(DefaultServerParameterProvider);

impl pgwire::api::auth::ServerParameterProvider for ServerParams {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<std::collections::HashMap<String, String>> {
        let mut params = self.0.server_parameters(client)?;
        let zone = startup_time_zone(client).and_then(|v| amberdb_sql::Zone::parse(v).ok());
        params.insert("TimeZone".into(), zone_name(zone.as_ref()));
        Some(params)
    }
}

/// Startup: checks the database name and trusts loopback clients (no password is
/// configured yet); applies a `TimeZone` startup parameter; reports PostgreSQL 15
/// parameters.
struct Startup {
    driver: AuthDriver<ServerParams>,
    conn: Arc<Conn>,
    scram: Option<Arc<ScramAuth>>,
    cancel: Cancel,
    interrupt: Arc<amberdb_sql::Interrupt>,
}

impl Startup {
    fn new(
        conn: Arc<Conn>,
        cancel: Cancel,
        interrupt: Arc<amberdb_sql::Interrupt>,
        scram: Option<Arc<ScramAuth>>,
    ) -> Self {
        let connections = cancel.connections.clone();
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = amberdb_sql::SERVER_VERSION.to_string();
        params.time_zone = "UTC".to_string();
        params.date_style = "ISO, MDY".to_string();
        Self {
            driver: AuthDriver::new(ServerParams(params)).with_connection_manager(connections),
            conn,
            scram,
            cancel,
            interrupt,
        }
    }
}

impl Startup {
    async fn finish<C>(&self, client: &mut C, outcome: pgwire::api::auth::driver::AuthOutcome) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let pgwire::api::auth::driver::AuthOutcome::Authenticated { final_message, .. } = outcome {
            self.driver.complete_authentication(client, final_message).await?;
            self.registered(client);
        }
        Ok(())
    }
}

impl Startup {
    /// The connection has its cancel key now (sent in BackendKeyData): cancel requests
    /// carrying it reach the session's interrupt flag.
    fn registered<C: ClientInfo>(&self, client: &C) {
        let (pid, key) = client.pid_and_secret_key();
        self.cancel.register(pid, &key, &self.interrupt);
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".to_string(), code.to_string(), message)))
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
            // Like PostgreSQL, the database defaults to the user name.
            let database = client.metadata().get(METADATA_DATABASE).cloned().unwrap_or_else(|| user.clone());
            if database != DATABASE {
                return Err(fatal("3D000", format!("database \"{database}\" does not exist")));
            }
            if let Some(value) = startup_time_zone(client) {
                let zone = amberdb_sql::Zone::parse(value).map_err(|e| fatal("22023", e.to_string()))?;
                self.conn.session.lock().await.set_time_zone(Some(zone));
            }
            match &self.scram {
                None => {
                    self.driver.complete_authentication(client, None).await?;
                    self.registered(client);
                }
                Some(scram) => {
                    use pgwire::api::auth::mechanism::AuthMechanismFactory;
                    let outcome = self.driver.begin_authentication(client, scram.create()).await?;
                    self.finish(client, outcome).await?;
                }
            }
        } else if let PgWireFrontendMessage::PasswordMessageFamily(msg) = message {
            let outcome = self.driver.advance_authentication(client, msg).await?;
            self.finish(client, outcome).await?;
        }
        Ok(())
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(Query { conn: self.conn.clone(), parser: self.parser.clone() })
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Query { conn: self.conn.clone(), parser: self.parser.clone() })
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Startup::new(self.conn.clone(), self.cancel.clone(), self.interrupt.clone(), self.scram.clone()))
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        Arc::new(Query { conn: self.conn.clone(), parser: self.parser.clone() })
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(self.cancel.clone())
    }
}

fn pg_type(ty: Option<DataType>) -> Type {
    match ty {
        Some(DataType::Bool) => Type::BOOL,
        Some(DataType::Int2) => Type::INT2,
        Some(DataType::Int4) => Type::INT4,
        Some(DataType::Int8) => Type::INT8,
        Some(DataType::Float4) => Type::FLOAT4,
        Some(DataType::Float8) => Type::FLOAT8,
        Some(DataType::Text) => Type::TEXT,
        Some(DataType::Varchar(_)) => Type::VARCHAR,
        Some(DataType::Char(_)) => Type::BPCHAR,
        Some(DataType::Date) => Type::DATE,
        Some(DataType::Timestamp) => Type::TIMESTAMP,
        Some(DataType::TimestampTz) => Type::TIMESTAMPTZ,
        Some(DataType::Bytea) => Type::BYTEA,
        Some(DataType::Numeric(_)) => Type::NUMERIC,
        Some(DataType::Interval) => Type::INTERVAL,
        Some(DataType::Time) => Type::TIME,
        Some(DataType::Uuid) => Type::UUID,
        None => Type::TEXT,
    }
}

/// Maps an AmberDB error to an ErrorResponse.
pub fn error_info(e: &Error) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".to_string(), e.sqlstate().to_string(), e.message());
    if let Error::Sql { position: Some(p), .. } = e {
        info.position = Some(p.to_string());
    }
    info
}

fn user_error(e: Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&e)))
}

fn fields(columns: &[OutColumn], format: Option<&Format>) -> Vec<FieldInfo> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let fmt = format.map_or(FieldFormat::Text, |f| f.format_for(i));
            FieldInfo::new(c.name.clone(), None, None, pg_type(c.ty), fmt)
        })
        .collect()
}

fn encode_value(enc: &mut DataRowEncoder, v: &Value, field: &FieldInfo) -> PgWireResult<()> {
    if field.format() == FieldFormat::Text {
        let ty = match *field.datatype() {
            Type::FLOAT4 => Some(DataType::Float4),
            _ => None,
        };
        return enc.encode_field(&v.to_pg_text(ty));
    }
    let ty = field.datatype().clone();
    let cast = |target: DataType| v.clone().cast(target).map_err(user_error);
    match ty {
        Type::BOOL => match cast(DataType::Bool)? {
            Value::Bool(b) => enc.encode_field(&Some(b)),
            _ => enc.encode_field(&None::<bool>),
        },
        Type::INT2 => match cast(DataType::Int2)? {
            Value::Int(i) => enc.encode_field(&Some(i as i16)),
            _ => enc.encode_field(&None::<i16>),
        },
        Type::INT4 => match cast(DataType::Int4)? {
            Value::Int(i) => enc.encode_field(&Some(i as i32)),
            _ => enc.encode_field(&None::<i32>),
        },
        Type::INT8 => match cast(DataType::Int8)? {
            Value::Int(i) => enc.encode_field(&Some(i)),
            _ => enc.encode_field(&None::<i64>),
        },
        Type::FLOAT4 => match cast(DataType::Float4)? {
            Value::Float(f) => enc.encode_field(&Some(f as f32)),
            _ => enc.encode_field(&None::<f32>),
        },
        Type::FLOAT8 => match cast(DataType::Float8)? {
            Value::Float(f) => enc.encode_field(&Some(f)),
            _ => enc.encode_field(&None::<f64>),
        },
        // PostgreSQL's binary date is days since 2000-01-01 (i32); timestamps are µs
        // since 2000-01-01 (i64).
        Type::DATE => match cast(DataType::Date)? {
            Value::Date(d) => enc.encode_field(&Some((d - PG_EPOCH_DAYS) as i32)),
            _ => enc.encode_field(&None::<i32>),
        },
        // µs since midnight (i64).
        Type::TIME => match cast(DataType::Time)? {
            Value::Time(t) => enc.encode_field(&Some(t)),
            _ => enc.encode_field(&None::<i64>),
        },
        Type::TIMESTAMP => match cast(DataType::Timestamp)? {
            Value::Timestamp(t) => enc.encode_field(&Some(t - PG_EPOCH_MICROS)),
            _ => enc.encode_field(&None::<i64>),
        },
        // An instant: µs since 2000-01-01 UTC, whatever the session's zone (the cast to
        // timestamp would give the local wall-clock time).
        Type::TIMESTAMPTZ => match cast(DataType::TimestampTz)? {
            Value::TimestampTz(t) => enc.encode_field(&Some(t - PG_EPOCH_MICROS)),
            _ => enc.encode_field(&None::<i64>),
        },
        Type::NUMERIC => match cast(DataType::Numeric(None))? {
            Value::Numeric(d) => enc.encode_field(&Some(d.to_pg_binary())),
            _ => enc.encode_field(&None::<Vec<u8>>),
        },
        // 16 bytes, most significant first.
        Type::UUID => match cast(DataType::Uuid)? {
            Value::Uuid(u) => enc.encode_field(&Some(u.to_be_bytes().to_vec())),
            _ => enc.encode_field(&None::<Vec<u8>>),
        },
        Type::BYTEA => match cast(DataType::Bytea)? {
            Value::Bytes(b) => enc.encode_field(&Some(b)),
            _ => enc.encode_field(&None::<Vec<u8>>),
        },
        // PostgreSQL's binary interval: µs (i64), days (i32), months (i32), big-endian.
        Type::INTERVAL => match cast(DataType::Interval)? {
            Value::Interval(iv) => {
                let mut raw = Vec::with_capacity(16);
                raw.extend_from_slice(&iv.micros.to_be_bytes());
                raw.extend_from_slice(&iv.days.to_be_bytes());
                raw.extend_from_slice(&iv.months.to_be_bytes());
                enc.encode_field(&Some(raw))
            }
            _ => enc.encode_field(&None::<Vec<u8>>),
        },
        _ => enc.encode_field(&v.to_pg_text(None)),
    }
}

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
/// The same, in microseconds.
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400_000_000;

/// Items pulled inline before a result moves to its own producer thread: small results
/// (point reads, pgbench) never pay for a thread hand-off.
const INLINE_ITEMS: usize = 256;
/// Time spent producing inline before the rest moves to the producer thread, so a
/// selective filter over a big table does not hold an async worker (or dodge a cancel
/// request) while it looks for its first rows.
const INLINE_BUDGET: std::time::Duration = std::time::Duration::from_millis(2);
/// Items per message on the producer channel, and batches in flight: the producer runs
/// at most this far ahead of the socket.
const BATCH_ITEMS: usize = 256;
const BATCHES_IN_FLIGHT: usize = 4;

/// Turns a lazily produced result into a response stream. The first items are produced
/// here; if there are more, a blocking-pool thread produces the rest into a bounded
/// channel, so a large result is never held in memory, its storage reads never block an
/// async worker, and a client that reads slowly (or goes away) stops the producer.
fn stream_items<T: Send + 'static>(
    mut items: Box<dyn Iterator<Item = PgWireResult<T>> + Send>,
) -> futures::stream::BoxStream<'static, PgWireResult<T>> {
    use futures::StreamExt;
    let mut first = Vec::new();
    let started = std::time::Instant::now();
    let mut done = true;
    for item in items.by_ref() {
        let failed = item.is_err();
        first.push(item);
        if failed {
            return stream::iter(first).boxed();
        }
        if first.len() == INLINE_ITEMS || started.elapsed() > INLINE_BUDGET {
            done = false;
            break;
        }
    }
    if done {
        return stream::iter(first).boxed();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<PgWireResult<T>>>(BATCHES_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(BATCH_ITEMS);
        for item in items {
            let failed = item.is_err();
            batch.push(item);
            if failed || batch.len() == BATCH_ITEMS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ITEMS));
                if tx.blocking_send(full).is_err() || failed {
                    return; // the client went away, or the result ended in an error
                }
            }
        }
        if !batch.is_empty() {
            // A closed channel means the client went away; nothing is left to do.
            let _ = tx.blocking_send(batch);
        }
    });
    let rest =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (stream::iter(b), rx)) }).flatten();
    stream::iter(first).chain(rest).boxed()
}

fn rows_response(
    columns: &[OutColumn],
    rows: amberdb_sql::RowIter,
    format: Option<&Format>,
    tag: &str,
    zone: Option<amberdb_sql::Zone>,
) -> PgWireResult<Response> {
    Ok(Response::Query(query_response(columns, rows, format, tag, zone)))
}

/// Sends a result straight to the client as its rows are produced — from inside
/// `do_query`, so a cancel request stops it and nothing is held back: pgwire would
/// otherwise keep an extended-protocol result in a portal, collected whole. With
/// `describe` (simple protocol) the row description goes first and the command
/// completion last; otherwise (Execute) the returned tag completes it. An error after
/// some rows ends the result with an ErrorResponse, as in PostgreSQL.
/// A session zone as `SHOW timezone` and the `TimeZone` parameter name it.
fn zone_name(zone: Option<&amberdb_sql::Zone>) -> String {
    zone.map_or_else(|| "UTC".to_string(), |z| z.name().to_string())
}

/// Reports the session's `TimeZone` if a statement changed it from `before`, as
/// PostgreSQL reports its GUC_REPORT settings: drivers present timestamptz values in
/// the zone they were last told (psycopg, pgjdbc), and libpq's `PQparameterStatus`.
async fn report_zone<C>(client: &mut C, before: &str, session: &Session) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use futures::SinkExt;
    let now = zone_name(session.time_zone().as_ref());
    if now != before {
        let status = pgwire::messages::startup::ParameterStatus::new("TimeZone".into(), now);
        client.send(PgWireBackendMessage::ParameterStatus(status)).await?;
    }
    Ok(())
}

async fn send_rows<C>(client: &mut C, mut resp: QueryResponse, describe: bool) -> PgWireResult<Tag>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use futures::{SinkExt, StreamExt};
    let verb = resp.command_tag().to_string();
    if describe {
        pgwire::api::query::send_query_response(client, resp, true).await?;
        return Ok(Tag::new(&verb));
    }
    let mut sent = 0;
    while let Some(row) = resp.data_rows().next().await {
        client.feed(PgWireBackendMessage::DataRow(row?)).await?;
        sent += 1;
    }
    Ok(Tag::new(&verb).with_rows(sent))
}

/// `zone`: the session's time zone, in which `timestamptz` values are written as text.
fn query_response(
    columns: &[OutColumn],
    rows: amberdb_sql::RowIter,
    format: Option<&Format>,
    tag: &str,
    zone: Option<amberdb_sql::Zone>,
) -> QueryResponse {
    let schema = Arc::new(fields(columns, format));
    let row_schema = schema.clone();
    let mut enc = DataRowEncoder::new(schema.clone());
    let encoded = rows.map(move |row| {
        let row = row.map_err(user_error)?;
        amberdb_sql::with_zone(zone.as_ref(), || {
            for (v, f) in row.iter().zip(row_schema.iter()) {
                encode_value(&mut enc, v, f)?;
            }
            Ok(enc.take_row())
        })
    });
    let mut resp = QueryResponse::new(schema, stream_items(Box::new(encoded)));
    // The row count is appended when the rows are sent. INSERT's tag carries an oid
    // (always 0) before it — `INSERT 0 2` — which pgwire's tag has no place for in a
    // row-returning response; without it psql cannot read the tag and drivers report
    // no row count for INSERT … RETURNING.
    match tag.split_once(' ') {
        Some(("INSERT", _)) => resp.set_command_tag("INSERT 0"),
        Some((verb, _)) => resp.set_command_tag(verb),
        None => resp.set_command_tag(tag),
    }
    resp
}

fn tag_response(tag: &str) -> Response {
    // "INSERT 0 3" → verb "INSERT", oid 0, rows 3; "CREATE TABLE" → verb only.
    let words: Vec<&str> = tag.split(' ').collect();
    let n_nums = words.iter().rev().take_while(|w| w.parse::<u64>().is_ok()).count();
    let verb = words[..words.len() - n_nums].join(" ");
    let nums: Vec<u64> = words[words.len() - n_nums..].iter().filter_map(|w| w.parse().ok()).collect();
    match verb.as_str() {
        "BEGIN" => Response::TransactionStart(Tag::new("BEGIN")),
        "COMMIT" | "ROLLBACK" => Response::TransactionEnd(Tag::new(&verb)),
        _ => {
            let t = Tag::new(&verb);
            Response::Execution(match nums.as_slice() {
                [oid, rows] => t.with_oid(*oid as u32).with_rows(*rows as usize),
                [rows] => t.with_rows(*rows as usize),
                _ => t,
            })
        }
    }
}

fn outcome_response(o: Outcome, format: Option<&Format>, zone: Option<amberdb_sql::Zone>) -> PgWireResult<Response> {
    match o {
        Outcome::Rows { columns, rows, tag } => rows_response(&columns, rows, format, &tag, zone),
        Outcome::Command(tag) => Ok(tag_response(&tag)),
        Outcome::CopyIn { columns } => Ok(Response::CopyIn(CopyResponse::new(0, columns, stream::empty()))),
        Outcome::CopyOut { columns, records } => {
            let data = records.map(|r| r.map(|r| CopyData::new(bytes::Bytes::from(r))).map_err(user_error));
            Ok(Response::CopyOut(CopyResponse::new(0, columns, stream_items(Box::new(data)))))
        }
    }
}

struct Query {
    conn: Arc<Conn>,
    parser: Arc<Parser>,
}

#[async_trait]
impl SimpleQueryHandler for Query {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmts = match amberdb_sql::parse(query) {
            Ok(s) => s,
            Err(e) => return Ok(vec![Response::Error(Box::new(error_info(&e)))]),
        };
        let mut session = self.conn.session.lock().await;
        let mut out = Vec::new();
        for stmt in &stmts {
            // Prepared statements live in the protocol layer's store, not in the session.
            if let Some(amberdb_sql::ast::Statement::Deallocate { name, .. }) = stmt.ast() {
                if !name.value.eq_ignore_ascii_case("all") || name.quote_style.is_some() {
                    client.portal_store().rm_statement(&name.value);
                }
                // DEALLOCATE ALL: statements left in the store are replaced when a name
                // is reused, which is what drivers do after deallocating everything.
                out.push(Response::Execution(Tag::new("DEALLOCATE")));
                continue;
            }
            let zone_before = zone_name(session.time_zone().as_ref());
            let result = session.execute(stmt, &[]).await;
            report_zone(client, &zone_before, &session).await?;
            match result {
                // Rows go out as they are produced while nothing else is waiting to be
                // sent before them (responses in `out` are sent after this returns).
                Ok(Outcome::Rows { columns, rows, tag }) if out.is_empty() => {
                    let resp = query_response(&columns, rows, None, &tag, session.time_zone());
                    send_rows(client, resp, true).await?;
                }
                Ok(o) => out.push(outcome_response(o, None, session.time_zone())?),
                Err(e) => {
                    out.push(Response::Error(Box::new(error_info(&e))));
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl CopyHandler for Query {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.conn.session.lock().await.copy_data(&copy_data.data);
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let rows = self.conn.session.lock().await.copy_done().await.map_err(user_error)?;
        client.send(PgWireBackendMessage::CommandComplete(Tag::new("COPY").with_rows(rows as usize).into())).await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.conn.session.lock().await.copy_fail();
        user_error(Error::sql("57014", format!("COPY from stdin failed: {}", fail.message)))
    }
}

/// Parses statements for the extended protocol and describes them.
struct Parser {
    conn: Arc<Conn>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut stmts = amberdb_sql::parse(sql).map_err(user_error)?;
        if stmts.len() > 1 {
            return Err(user_error(Error::sql("42601", "cannot insert multiple commands into a prepared statement")));
        }
        let Some(stmt) = stmts.pop() else { return Ok(None) };
        let (inferred, columns) = amberdb_sql::describe_statement(&self.conn.node, &stmt).map_err(user_error)?;
        let n = inferred.len().max(types.len());
        let params = (0..n)
            .map(|i| match types.get(i).cloned().flatten() {
                Some(t) => t,
                None => match inferred.get(i).copied().flatten() {
                    Some(t) => pg_type(Some(t)),
                    None => Type::UNKNOWN,
                },
            })
            .collect();
        Ok(Some(Prepared { stmt: Some(stmt), params, columns }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.params.iter().map(|t| if *t == Type::UNKNOWN { Type::TEXT } else { t.clone() }).collect())
    }

    fn get_result_schema(&self, stmt: &Prepared, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        Ok(stmt.columns.as_deref().map(|c| fields(c, column_format)).unwrap_or_default())
    }
}

fn decode_params(portal: &Portal<Prepared>) -> PgWireResult<Vec<Value>> {
    let types = &portal.statement.statement.params;
    let mut out = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let ty = types.get(i).cloned().unwrap_or(Type::UNKNOWN);
        let v = match ty {
            Type::BOOL => portal.parameter::<bool>(i, &ty)?.map(Value::Bool),
            Type::INT2 => portal.parameter::<i16>(i, &ty)?.map(|x| Value::Int(x.into())),
            Type::INT4 => portal.parameter::<i32>(i, &ty)?.map(|x| Value::Int(x.into())),
            Type::INT8 => portal.parameter::<i64>(i, &ty)?.map(Value::Int),
            Type::FLOAT4 => portal.parameter::<f32>(i, &ty)?.map(|x| Value::Float(x.into())),
            Type::FLOAT8 => portal.parameter::<f64>(i, &ty)?.map(Value::Float),
            Type::BYTEA => portal.parameter::<Vec<u8>>(i, &ty)?.map(Value::Bytes),
            Type::NUMERIC if portal.parameter_format.is_binary(i) => {
                match portal.parameters.get(i).cloned().flatten() {
                    None => None,
                    Some(raw) => Some(Value::Numeric(amberdb_sql::Numeric::from_pg_binary(&raw).map_err(user_error)?)),
                }
            }
            Type::UUID if portal.parameter_format.is_binary(i) => match portal.parameters.get(i).cloned().flatten() {
                None => None,
                Some(raw) => Some(Value::Uuid(u128::from_be_bytes(
                    <[u8; 16]>::try_from(&raw[..])
                        .map_err(|_| user_error(Error::sql("22P03", "invalid binary uuid: expected 16 bytes")))?,
                ))),
            },
            Type::INTERVAL => match portal.parameters.get(i).cloned().flatten() {
                None => None,
                Some(raw) if portal.parameter_format.is_binary(i) => Some(Value::Interval(binary_interval(&raw)?)),
                Some(raw) => Some(Value::Text(String::from_utf8_lossy(&raw).into_owned())),
            },
            // Binary dates, times and timestamps (sqlx, tokio-postgres send them so):
            // days as i32 and µs as i64 since 2000-01-01 (a timestamptz's µs are UTC),
            // a time's µs since midnight.
            Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIME if portal.parameter_format.is_binary(i) => {
                match portal.parameters.get(i).cloned().flatten() {
                    None => None,
                    Some(raw) => Some(binary_datetime(&ty, &raw)?),
                }
            }
            _ => portal.parameter::<String>(i, &Type::TEXT)?.map(Value::Text),
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(out)
}

/// Decodes PostgreSQL's binary date, time, timestamp or timestamptz.
fn binary_datetime(ty: &Type, raw: &[u8]) -> PgWireResult<Value> {
    let bad = |n: usize| user_error(Error::sql("22P03", format!("invalid binary {}: expected {n} bytes", ty.name())));
    if *ty == Type::DATE {
        let days: [u8; 4] = raw.try_into().map_err(|_| bad(4))?;
        return Ok(Value::Date(i64::from(i32::from_be_bytes(days)) + PG_EPOCH_DAYS));
    }
    if *ty == Type::TIME {
        let us = i64::from_be_bytes(raw.try_into().map_err(|_| bad(8))?);
        if !(0..=86_400_000_000).contains(&us) {
            return Err(user_error(Error::sql("22008", "time out of range")));
        }
        return Ok(Value::Time(us));
    }
    let micros = i64::from_be_bytes(raw.try_into().map_err(|_| bad(8))?).checked_add(PG_EPOCH_MICROS);
    // ±infinity (i64::MAX/MIN) and values past our range are refused, never wrapped.
    let micros = micros
        .filter(|m| m.abs() < i64::MAX / 2)
        .ok_or_else(|| user_error(Error::sql("22008", format!("{} out of range", ty.name()))))?;
    Ok(if *ty == Type::TIMESTAMP { Value::Timestamp(micros) } else { Value::TimestampTz(micros) })
}

/// Decodes PostgreSQL's binary interval (µs i64, days i32, months i32, big-endian).
fn binary_interval(raw: &[u8]) -> PgWireResult<amberdb_sql::Interval> {
    let bad = || user_error(Error::sql("22P03", "invalid binary interval: expected 16 bytes"));
    let (micros, rest) = raw.split_first_chunk::<8>().ok_or_else(bad)?;
    let (days, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let months: [u8; 4] = rest.try_into().map_err(|_| bad())?;
    Ok(amberdb_sql::Interval {
        micros: i64::from_be_bytes(*micros),
        days: i32::from_be_bytes(*days),
        months: i32::from_be_bytes(months),
    })
}

#[async_trait]
impl ExtendedQueryHandler for Query {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(stmt) = &portal.statement.statement.stmt else { return Ok(Response::EmptyQuery) };
        let params = decode_params(portal)?;
        let mut session = self.conn.session.lock().await;
        let zone_before = zone_name(session.time_zone().as_ref());
        let result = session.execute(stmt, &params).await;
        report_zone(client, &zone_before, &session).await?;
        match result.map_err(user_error)? {
            // A row limit (a driver's fetch size) leaves the result in the portal, which
            // then holds at most that many rows at a time.
            Outcome::Rows { columns, rows, tag } if max_rows == 0 => {
                let resp =
                    query_response(&columns, rows, Some(&portal.result_column_format), &tag, session.time_zone());
                Ok(Response::Execution(send_rows(client, resp, false).await?))
            }
            outcome => outcome_response(outcome, Some(&portal.result_column_format), session.time_zone()),
        }
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = self.parser.get_parameter_types(&target.statement)?;
        let fields = self.parser.get_result_schema(&target.statement, None)?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self.parser.get_result_schema(&portal.statement.statement, Some(&portal.result_column_format))?;
        Ok(DescribePortalResponse::new(fields))
    }
}
