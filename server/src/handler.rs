//! The PostgreSQL wire protocol front end: simple and extended query protocol.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use futures::{stream, Sink, SinkExt};
use parking_lot::Mutex;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{self, StartupHandler};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use sabot_planner::pg_catalog::{default_setting, DEFAULT_SETTINGS, SERVER_VERSION};
use sabot_planner::{Database, Output, PlanError, Progress, Session, SessionControl, UserMeta};
use sabot_sql::{Parsed, Statement, UserStatement};

use crate::auth::{verifier, AuthMode, Roles, SCRAM_ITERATIONS};
use crate::cancel::{Cancels, Registration, SessionEntry};
use crate::copy::copy_out;
use crate::encode::{encode_rows, fields};
use crate::params::{bind, infer_types, SabotStatement};

/// Session settings (`SET` / `SHOW` / `RESET`), per connection.
#[derive(Debug, Default)]
struct Settings {
    /// What the client's startup message set (`application_name`, `DateStyle`, ...):
    /// as in PostgreSQL, the session starts with these and `RESET` returns to them.
    startup: BTreeMap<String, String>,
    current: Mutex<BTreeMap<String, String>>,
}

impl Settings {
    fn from_startup(parameters: &std::collections::HashMap<String, String>) -> Self {
        const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];
        let startup: BTreeMap<String, String> = parameters
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_"))
            .collect();
        Self {
            current: Mutex::new(startup.clone()),
            startup,
        }
    }

    fn set(&self, name: &str, value: &str) {
        self.current
            .lock()
            .insert(name.to_string(), value.to_string());
    }

    /// `RESET name`, or `RESET ALL` with `None`.
    fn reset(&self, name: Option<&str>) {
        let mut current = self.current.lock();
        match name {
            None => *current = self.startup.clone(),
            Some(n) => match self.startup.get(n) {
                Some(v) => {
                    current.insert(n.to_string(), v.clone());
                }
                None => {
                    current.remove(n);
                }
            },
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.current.lock().get(name).cloned()
    }

    fn all(&self) -> BTreeMap<String, String> {
        self.current.lock().clone()
    }
}

/// The handler shared by every connection.
pub struct SabotHandler {
    db: Arc<Database>,
    parser: Arc<SabotParser>,
    /// Process ids and cancel keys handed to connections.
    pids: RandomPidSecretKeyGenerator,
    auth: AuthMode,
    /// SCRAM-SHA-256 login, with `--auth password`.
    sasl: Option<SASLAuthStartupHandler<auth::DefaultServerParameterProvider>>,
    /// Sessions a CancelRequest can reach.
    cancels: Arc<Cancels>,
}

/// What a CancelRequest does to the statement a session runs.
enum OnCancel {
    /// Reads hold nothing that must be finished: they stop at once.
    Stop,
    /// A view's backfill stops between steps, and its CREATE fails with nothing left.
    Backfill,
    /// Statements that change state run to their end.
    Finish,
}

fn on_cancel(statement: &Statement) -> OnCancel {
    match statement {
        Statement::Query(_) | Statement::Explain(_) | Statement::ExplainDot(_) => OnCancel::Stop,
        Statement::CreateMaterializedView { .. } => OnCancel::Backfill,
        _ => OnCancel::Finish,
    }
}

fn query_canceled() -> PlanError {
    PlanError::user("57014", "canceling statement due to user request")
}

/// `pg_terminate_backend` ended the session: FATAL, so the connection closes.
fn terminated() -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "57P01".into(),
        "terminating connection due to administrator command".into(),
    )))
}

/// The parameters every session starts with: PostgreSQL 15 (clients pick their
/// introspection queries by it).
fn server_parameters() -> auth::DefaultServerParameterProvider {
    let mut params = auth::DefaultServerParameterProvider::default();
    params.server_version = SERVER_VERSION.to_string();
    params.date_style = "ISO, MDY".to_string();
    params.time_zone = "UTC".to_string();
    params
}

impl SabotHandler {
    pub fn new(db: Arc<Database>, mode: AuthMode) -> Self {
        let sasl = (mode == AuthMode::Password).then(|| {
            let mut scram = ScramAuth::new(Arc::new(Roles(Arc::clone(&db))));
            scram.set_iterations(SCRAM_ITERATIONS as usize);
            SASLAuthStartupHandler::new(Arc::new(server_parameters())).with_scram(scram)
        });
        Self {
            auth: mode,
            sasl,
            parser: Arc::new(SabotParser {
                db: Arc::clone(&db),
            }),
            db,
            pids: RandomPidSecretKeyGenerator::default(),
            cancels: Arc::new(Cancels::default()),
        }
    }

    /// Makes a session that has finished its startup reachable by CancelRequest.
    fn register_for_cancel<C: ClientInfo>(&self, client: &C) {
        if client.session_extensions().get::<Registration>().is_none() {
            let (pid, key) = client.pid_and_secret_key();
            let meta = client.metadata();
            let text = |k: &str| meta.get(k).map_or("", String::as_str);
            let registration =
                self.cancels
                    .register(pid, &key, text("user"), text("application_name"));
            client.session_extensions().insert(registration);
        }
    }

    /// `CREATE | ALTER | DROP USER`. Passwords are hashed here, so only verifiers reach
    /// the catalog. With `--auth password` only superusers manage roles, and any role may
    /// change its own password.
    async fn user_statement(
        &self,
        me: &str,
        stmt: &UserStatement,
    ) -> sabot_planner::Result<Output> {
        if self.auth == AuthMode::Password {
            let superuser = self.db.user(me).is_some_and(|u| u.superuser);
            let own_password = matches!(stmt, UserStatement::Alter { name, options }
                if name == me && options.superuser.is_none());
            if !superuser && !own_password {
                return Err(PlanError::user(
                    "42501",
                    "permission denied: only superusers manage roles",
                ));
            }
        }
        match stmt {
            UserStatement::Create { name, options } => {
                self.db
                    .create_user(
                        UserMeta {
                            name: name.clone(),
                            superuser: options.superuser.unwrap_or(false),
                            verifier: options.password.clone().flatten().map(|p| verifier(&p)),
                        },
                        false,
                    )
                    .await
            }
            UserStatement::Alter { name, options } => {
                let password = options
                    .password
                    .as_ref()
                    .map(|p| p.as_deref().map(verifier));
                self.db.alter_user(name, password, options.superuser).await
            }
            UserStatement::Drop { names, if_exists } => {
                if names.iter().any(|n| n == me) {
                    return Err(PlanError::user("55006", "current user cannot be dropped"));
                }
                self.db.drop_users(names, *if_exists).await
            }
        }
    }

    /// Runs one statement and turns its output into a wire response.
    async fn run<C>(
        &self,
        client: &mut C,
        parsed: &Parsed,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let entry = client
            .session_extensions()
            .get::<Registration>()
            .map(|r| Arc::clone(&r.entry));
        if entry.as_ref().is_some_and(|e| e.terminated()) {
            return Err(terminated());
        }
        if let Some(e) = &entry {
            e.start(&parsed.text);
        }
        let out = self
            .run_statement(client, parsed, format, entry.as_deref())
            .await;
        if let Some(e) = &entry {
            e.finish();
            if e.terminated() {
                return Err(terminated());
            }
        }
        out
    }

    /// [`SabotHandler::run`] for a session that is not ended.
    async fn run_statement<C>(
        &self,
        client: &mut C,
        parsed: &Parsed,
        format: &Format,
        entry: Option<&SessionEntry>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let settings = client
            .session_extensions()
            .get_or_insert_with(|| Settings::from_startup(client.metadata()));
        let sessions: Arc<dyn SessionControl> = Arc::clone(&self.cancels) as _;
        let session = Session {
            user: client.metadata().get("user").cloned(),
            settings: settings.all(),
            pid: entry.map(|e| e.pid),
            sessions: Some(sessions),
        };
        // Registered as a waiter now, before the statement first runs: a cancel that
        // comes while the first poll of a long statement is still running is not lost.
        let mut notified = entry.map(|e| Box::pin(e.notify.notified()));
        if let Some(n) = notified.as_mut() {
            n.as_mut().enable();
        }
        let cancelled = async move {
            match notified {
                Some(n) => n.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancelled);
        let output = match &parsed.statement {
            Statement::SetVariable { name, value } => {
                sabot_planner::gpu::check_setting(name, value).map(|()| {
                    settings.set(name, value);
                    if let Some(e) = entry.filter(|_| name == "application_name") {
                        e.set_application_name(value);
                    }
                    Output::Command {
                        tag: "SET".into(),
                        rows: None,
                    }
                })
            }
            Statement::ResetVariable { name, discard } => {
                settings.reset(name.as_deref());
                if let Some(e) = entry {
                    e.set_application_name(&settings.get("application_name").unwrap_or_default());
                }
                Ok(Output::Command {
                    tag: if *discard { "DISCARD ALL" } else { "RESET" }.into(),
                    rows: None,
                })
            }
            Statement::ShowVariable(name) => show_variable(&settings, name, &self.db),
            Statement::User(u) => {
                let me = client.metadata().get("user").cloned().unwrap_or_default();
                self.user_statement(&me, u).await
            }
            Statement::CopyTo { query, options } => {
                let read = tokio::select! {
                    out = self.db.query_in(query, &session) => out,
                    () = &mut cancelled => Err(query_canceled()),
                };
                return match read {
                    Ok(Output::Rows { schema, batches }) => copy_out(&schema, &batches, options),
                    Ok(_) => Err(PgWireError::ApiError("COPY gave no rows".into())),
                    Err(e) => Ok(Response::Error(Box::new(error_info(&e)))),
                };
            }
            _ => {
                // Long work (a view's backfill) reports progress: NOTICEs while it runs.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let progress = Progress {
                    notices: Some(tx),
                    cancel: Arc::default(),
                };
                let stop = Arc::clone(&progress.cancel);
                let run = self
                    .db
                    .execute_with_progress(parsed, &session, Some(progress));
                tokio::pin!(run);
                let mut cancel_seen = false;
                let out = loop {
                    tokio::select! {
                        out = &mut run => break out,
                        Some(msg) = rx.recv() => send_notice(client, msg).await?,
                        () = &mut cancelled, if !cancel_seen => {
                            cancel_seen = true;
                            match on_cancel(&parsed.statement) {
                                OnCancel::Stop => break Err(query_canceled()),
                                OnCancel::Backfill => stop.store(true, Ordering::SeqCst),
                                OnCancel::Finish => {}
                            }
                        }
                    }
                };
                while let Ok(msg) = rx.try_recv() {
                    send_notice(client, msg).await?;
                }
                out
            }
        };
        match output {
            Ok(Output::Rows { schema, batches }) => {
                let fields = Arc::new(fields(&schema, |i| format.format_for(i)));
                let rows = encode_rows(&batches, &fields)?;
                let response = QueryResponse::new(fields, stream::iter(rows.into_iter().map(Ok)));
                Ok(Response::Query(response))
            }
            Ok(Output::Command { tag, rows }) => Ok(Response::Execution(match rows {
                Some(n) => Tag::new(&tag).with_rows(n),
                None => Tag::new(&tag),
            })),
            Ok(Output::Notice { tag, notice }) => {
                let info = ErrorInfo::new("NOTICE".into(), "42P07".into(), notice);
                client
                    .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                        info,
                    )))
                    .await?;
                Ok(Response::Execution(Tag::new(&tag)))
            }
            Err(e) => Ok(Response::Error(Box::new(error_info(&e)))),
        }
    }
}

/// Sends a NOTICE (SQLSTATE 00000) to the client now.
async fn send_notice<C>(client: &mut C, message: String) -> PgWireResult<()>
where
    C: futures::Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
{
    use futures::SinkExt;
    let info = ErrorInfo::new("NOTICE".into(), "00000".into(), message);
    client
        .send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
            info,
        )))
        .await?;
    Ok(())
}

fn show_variable(settings: &Settings, name: &str, db: &Database) -> sabot_planner::Result<Output> {
    // PostgreSQL's spelled-out forms of some settings (`SHOW TRANSACTION ISOLATION LEVEL`).
    let name = match name {
        "transaction isolation level" => "transaction_isolation",
        "time zone" => "timezone",
        other => other,
    };
    let value = if name == "all" {
        None
    } else {
        let set = settings.get(name);
        let value = set
            .or_else(|| default_setting(name).map(str::to_string))
            .or_else(|| match name {
                "workers" => Some(db.config().workers.to_string()),
                "checkpoint_interval" => {
                    Some(format!("{}ms", db.config().checkpoint_interval.as_millis()))
                }
                "gpu" => Some(db.config().gpu.mode.name().to_string()),
                "gpu_min_rows" => Some(db.config().gpu.min_rows.to_string()),
                // The device the server found, or why it has none.
                "gpu_device" => Some(match sabot_gpu::global() {
                    Some(g) => g.device().name.clone(),
                    None => format!(
                        "none ({})",
                        sabot_gpu::unavailable_reason().unwrap_or_else(|| "gpu = off".into())
                    ),
                }),
                _ => None,
            })
            .ok_or_else(|| {
                PlanError::user(
                    "42704",
                    format!("unrecognized configuration parameter \"{name}\""),
                )
            })?;
        Some(value)
    };
    let (names, values): (Vec<String>, Vec<String>) = match value {
        Some(v) => (vec![name.to_string()], vec![v]),
        None => {
            let mut all: BTreeMap<String, String> = DEFAULT_SETTINGS
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            all.extend(settings.all());
            all.into_iter().unzip()
        }
    };
    let schema = if names.len() == 1 && name != "all" {
        Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
    } else {
        Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("setting", DataType::Utf8, false),
        ]))
    };
    let columns: Vec<arrow::array::ArrayRef> = if schema.fields().len() == 1 {
        vec![Arc::new(StringArray::from(values))]
    } else {
        vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(values)),
        ]
    };
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    Ok(Output::Rows {
        schema,
        batches: vec![batch],
    })
}

/// Maps an error to the client's error response. Syntax error positions from the parser
/// are already relative to the whole query string.
fn error_info(e: &PlanError) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.client_message());
    info.position = e.position().map(|p| p.to_string());
    info
}

#[async_trait]
impl SimpleQueryHandler for SabotHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = match sabot_sql::parse(query) {
            Ok(s) => s,
            Err(e) => {
                return Ok(vec![Response::Error(Box::new(error_info(
                    &PlanError::Sql(e),
                )))])
            }
        };
        let mut responses = Vec::with_capacity(statements.len());
        for parsed in &statements {
            let r = self.run(client, parsed, &Format::UnifiedText).await?;
            let failed = matches!(r, Response::Error(_));
            responses.push(r);
            if failed {
                break;
            }
        }
        Ok(responses)
    }
}

/// Parses statements for the extended protocol and infers their parameter types.
pub struct SabotParser {
    db: Arc<Database>,
}

#[async_trait]
impl QueryParser for SabotParser {
    type Statement = SabotStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<SabotStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut parsed = sabot_sql::parse(sql).map_err(|e| {
            let err = PlanError::Sql(e);
            PgWireError::UserError(Box::new(error_info(&err)))
        })?;
        if parsed.len() > 1 {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "42601".into(),
                "cannot insert multiple commands into a prepared statement".into(),
            ))));
        }
        let Some(parsed) = parsed.pop() else {
            return Ok(Some(SabotStatement {
                parsed: None,
                param_types: vec![],
            }));
        };
        let param_types = infer_types(&self.db, &parsed).await;
        Ok(Some(SabotStatement {
            parsed: Some(parsed),
            param_types,
        }))
    }

    fn get_parameter_types(&self, stmt: &SabotStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        _stmt: &SabotStatement,
        _column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        // Answered by `do_describe_*`, which can plan asynchronously.
        Ok(vec![])
    }
}

impl SabotHandler {
    /// The columns a statement returns (empty for commands).
    async fn result_fields(
        &self,
        stmt: &SabotStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let Some(parsed) = &stmt.parsed else {
            return Ok(vec![]);
        };
        let schema = match &parsed.statement {
            Statement::Query(q) => match self.db.infer_query(q).await {
                Ok((schema, _)) => schema,
                Err(e) => return Err(PgWireError::UserError(Box::new(error_info(&e)))),
            },
            Statement::ShowVariable(name) if name == "all" => Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("setting", DataType::Utf8, false),
            ])),
            Statement::ShowVariable(name) => {
                Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
            }
            // Statements that only read the catalog: their columns are those of running
            // them (clients that prepare them, as psycopg does from the fifth time, take
            // the columns from Describe and then expect exactly those).
            Statement::ShowTables
            | Statement::ShowSources
            | Statement::ShowMaterializedViews
            | Statement::ShowSinks
            | Statement::ShowJobs
            | Statement::Describe(_)
            | Statement::Explain(_)
            | Statement::ExplainDot(_) => match self.db.execute(parsed).await {
                Ok(Output::Rows { schema, .. }) => schema,
                Ok(_) => return Ok(vec![]),
                Err(e) => return Err(PgWireError::UserError(Box::new(error_info(&e)))),
            },
            _ => return Ok(vec![]),
        };
        Ok(fields(&schema, |i| {
            format.map(|f| f.format_for(i)).unwrap_or(FieldFormat::Text)
        }))
    }
}

#[async_trait]
impl ExtendedQueryHandler for SabotHandler {
    type Statement = SabotStatement;
    type QueryParser = SabotParser;

    fn query_parser(&self) -> Arc<SabotParser> {
        Arc::clone(&self.parser)
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &pgwire::api::stmt::StoredStatement<SabotStatement>,
    ) -> PgWireResult<pgwire::api::results::DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = SabotStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &target.statement;
        let params = (0..stmt.param_types.len().max(target.parameter_types.len()))
            .map(|i| {
                target
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .or_else(|| stmt.param_types.get(i).cloned())
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        let fields = self.result_fields(stmt, None).await?;
        Ok(pgwire::api::results::DescribeStatementResponse::new(
            params, fields,
        ))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<SabotStatement>,
    ) -> PgWireResult<pgwire::api::results::DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = SabotStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self
            .result_fields(
                &portal.statement.statement,
                Some(&portal.result_column_format),
            )
            .await?;
        Ok(pgwire::api::results::DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<SabotStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = SabotStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match bind(portal)? {
            None => Ok(Response::EmptyQuery),
            Some(parsed) => {
                self.run(client, &parsed, &portal.result_column_format)
                    .await
            }
        }
    }
}

#[async_trait]
impl StartupHandler for SabotHandler {
    /// No authentication yet: every startup is accepted, and the server's parameters say
    /// PostgreSQL 15 (clients pick their introspection queries by it).
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(sasl) = &self.sasl {
            sasl.on_startup(client, message).await?;
            if matches!(
                client.state(),
                pgwire::api::PgWireConnectionState::ReadyForQuery
            ) {
                self.register_for_cancel(client);
            }
            return Ok(());
        }
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            auth::protocol_negotiation(client, startup).await?;
            auth::save_startup_parameters_to_metadata(client, startup);
            let (pid, key) = self.pids.generate(client);
            client.set_pid_and_secret_key(pid, key);
            auth::finish_authentication(client, &server_parameters()).await?;
            self.register_for_cancel(client);
        }
        Ok(())
    }
}

/// Hands the same handler to every connection.
pub struct HandlerFactory {
    pub handler: Arc<SabotHandler>,
}

impl PgWireServerHandlers for HandlerFactory {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.handler)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.handler)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.handler)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.handler)
    }
}

#[async_trait]
impl CancelHandler for SabotHandler {
    async fn on_cancel_request(&self, request: CancelRequest) {
        if !self
            .cancels
            .cancel_request(request.pid, &request.secret_key)
        {
            tracing::debug!(pid = request.pid, "cancel request for no session: ignored");
        }
    }
}
