//! `pg_catalog`: PostgreSQL's system catalogs, built from a snapshot, for clients and BI
//! tools that introspect the database (psql's `\d`, JDBC's `DatabaseMetaData`, ...).
//!
//! The catalogs are in-memory tables made at each read that mentions them; user relations
//! appear with fixed OIDs derived from their creation order. Tables are `r`, materialized
//! views `m`, sources `f` (foreign tables: their data lives elsewhere), and a table's
//! primary key is an index `<table>_pkey` with its constraint. Catalogs that Sabot has no
//! contents for (triggers, policies, ...) exist with PostgreSQL's columns and no rows, so
//! the queries that read them work.
//!
//! [`rewrite`] turns PostgreSQL spellings that DataFusion does not know into ones it does:
//! `pg_catalog.f(...)` → `f(...)`, `OPERATOR(pg_catalog.~)` → `~`, `COLLATE
//! pg_catalog.default` dropped, casts to `regclass`/`regtype`/`oid`/`name`, and bare
//! catalog names (`pg_class`) qualified with `pg_catalog`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int16Builder, Int32Builder, Int64Array, ListBuilder,
    RecordBatch, StringArray, StringBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, IntervalUnit, Schema, SchemaRef};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use sabot_sql::sqlparser::ast::{
    self, BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, Ident, ObjectName, ObjectNamePart, Query, TableFactor, VisitMut, VisitorMut,
};

use crate::engine::{Relation, RelationKind, Snapshot, UserMeta};
use crate::error::{PlanError, Result};
use crate::types::SQL_TYPE_KEY;

/// The database's one name, as `current_database()` and `pg_database` give it.
pub const DATABASE: &str = "sabot";
/// The owner of every object (the bootstrap superuser, OID 10 as in PostgreSQL).
pub const OWNER: &str = "sabot";
const OWNER_OID: u32 = 10;
const DATABASE_OID: u32 = 16383;
const PG_CATALOG_OID: u32 = 11;
const PUBLIC_OID: u32 = 2200;
const INFORMATION_SCHEMA_OID: u32 = 12000;
const SABOT_CATALOG_OID: u32 = 12001;
/// `pg_catalog`'s own tables get OIDs from here on, in the order of [`CATALOGS`].
const FIRST_CATALOG_TABLE_OID: u32 = 12100;
const HEAP_AM: u32 = 2;
const BTREE_AM: u32 = 403;

/// PostgreSQL's version as clients see it.
pub const SERVER_VERSION: &str = "15.0 (Sabot)";

/// Session settings and their defaults, as `SHOW` and `pg_settings` give them.
pub const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_isolation", "serializable"),
    ("extra_float_digits", "1"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", SERVER_VERSION),
    ("server_version_num", "150000"),
    ("standard_conforming_strings", "on"),
    ("timezone", "UTC"),
    ("transaction_isolation", "serializable"),
    ("transaction_read_only", "off"),
];

/// The client session a statement runs in, as the catalog shows it: who is logged in
/// (`current_user`), what it has `SET` (`current_setting`, `pg_settings`), its process id
/// (`pg_backend_pid()`), and the server's other sessions (`pg_stat_activity`,
/// `pg_cancel_backend`, `pg_terminate_backend`).
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The role logged in; `None` reads as the owner, `sabot`.
    pub user: Option<String>,
    /// Settings changed with `SET`, by lowercase name.
    pub settings: BTreeMap<String, String>,
    /// The process id the session was given at startup (its CancelRequest key's).
    pub pid: Option<i32>,
    /// The server's sessions, where the statement comes from a client.
    pub sessions: Option<Arc<dyn SessionControl>>,
}

/// One client session, as `pg_stat_activity` shows it.
#[derive(Debug, Clone)]
pub struct Activity {
    pub pid: i32,
    pub user: String,
    pub application_name: String,
    pub backend_start: std::time::SystemTime,
    /// The statement running, or last run, and when it started.
    pub query: Option<(String, std::time::SystemTime)>,
    /// `active` while a statement runs, else `idle`.
    pub active: bool,
}

/// What a session may do to the server's others (the server keeps them).
pub trait SessionControl: std::fmt::Debug + Send + Sync {
    fn activity(&self) -> Vec<Activity>;
    /// Stops the statement session `pid` runs, as a CancelRequest does. False when no
    /// session has that pid.
    fn cancel(&self, pid: i32) -> bool;
    /// Ends session `pid`: its running statement stops and the connection closes (an
    /// idle one closes at its next message).
    fn terminate(&self, pid: i32) -> bool;
}

impl Session {
    /// A setting as this session sees it: its own `SET`, else the server's default.
    pub fn setting(&self, name: &str) -> Option<String> {
        self.settings
            .get(name)
            .cloned()
            .or_else(|| default_setting(name).map(str::to_string))
    }

    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(OWNER)
    }
}

/// A setting's default, if Sabot knows the setting.
pub fn default_setting(name: &str) -> Option<&'static str> {
    DEFAULT_SETTINGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

/// One PostgreSQL type Sabot can report: OID, name, length, category, array type, and
/// the name `format_type` gives it.
struct PgType {
    oid: u32,
    name: &'static str,
    len: i16,
    category: &'static str,
    array: u32,
    element: u32,
    display: &'static str,
}

const fn ty(
    oid: u32,
    name: &'static str,
    len: i16,
    category: &'static str,
    array: u32,
    display: &'static str,
) -> PgType {
    PgType {
        oid,
        name,
        len,
        category,
        array,
        element: 0,
        display,
    }
}

const fn arr(oid: u32, name: &'static str, element: u32, display: &'static str) -> PgType {
    PgType {
        oid,
        name,
        len: -1,
        category: "A",
        array: 0,
        element,
        display,
    }
}

const TYPES: &[PgType] = &[
    ty(16, "bool", 1, "B", 1000, "boolean"),
    ty(17, "bytea", -1, "U", 1001, "bytea"),
    ty(18, "char", 1, "Z", 1002, "\"char\""),
    ty(19, "name", 64, "S", 1003, "name"),
    ty(20, "int8", 8, "N", 1016, "bigint"),
    ty(21, "int2", 2, "N", 1005, "smallint"),
    ty(23, "int4", 4, "N", 1007, "integer"),
    ty(25, "text", -1, "S", 1009, "text"),
    ty(26, "oid", 4, "N", 1028, "oid"),
    ty(114, "json", -1, "U", 199, "json"),
    ty(700, "float4", 4, "N", 1021, "real"),
    ty(701, "float8", 8, "N", 1022, "double precision"),
    ty(705, "unknown", -2, "X", 0, "unknown"),
    ty(1043, "varchar", -1, "S", 1015, "character varying"),
    ty(1082, "date", 4, "D", 1182, "date"),
    ty(1083, "time", 8, "D", 1183, "time without time zone"),
    ty(
        1114,
        "timestamp",
        8,
        "D",
        1115,
        "timestamp without time zone",
    ),
    ty(
        1184,
        "timestamptz",
        8,
        "D",
        1185,
        "timestamp with time zone",
    ),
    ty(1186, "interval", 16, "T", 1187, "interval"),
    ty(1700, "numeric", -1, "N", 1231, "numeric"),
    ty(2205, "regclass", 4, "N", 2210, "regclass"),
    ty(2206, "regtype", 4, "N", 2211, "regtype"),
    ty(2950, "uuid", 16, "U", 2951, "uuid"),
    ty(3802, "jsonb", -1, "U", 3807, "jsonb"),
    arr(1000, "_bool", 16, "boolean[]"),
    arr(1001, "_bytea", 17, "bytea[]"),
    arr(1002, "_char", 18, "\"char\"[]"),
    arr(1003, "_name", 19, "name[]"),
    arr(1005, "_int2", 21, "smallint[]"),
    arr(1007, "_int4", 23, "integer[]"),
    arr(1009, "_text", 25, "text[]"),
    arr(1015, "_varchar", 1043, "character varying[]"),
    arr(1016, "_int8", 20, "bigint[]"),
    arr(1021, "_float4", 700, "real[]"),
    arr(1022, "_float8", 701, "double precision[]"),
    arr(1028, "_oid", 26, "oid[]"),
    arr(1115, "_timestamp", 1114, "timestamp without time zone[]"),
    arr(1182, "_date", 1082, "date[]"),
    arr(1183, "_time", 1083, "time without time zone[]"),
    arr(1185, "_timestamptz", 1184, "timestamp with time zone[]"),
    arr(1187, "_interval", 1186, "interval[]"),
    arr(1231, "_numeric", 1700, "numeric[]"),
    arr(199, "_json", 114, "json[]"),
    arr(2951, "_uuid", 2950, "uuid[]"),
    arr(3807, "_jsonb", 3802, "jsonb[]"),
];

fn pg_type_by_oid(oid: u32) -> Option<&'static PgType> {
    TYPES.iter().find(|t| t.oid == oid)
}

/// The OID of the PostgreSQL type a column is reported as to clients.
pub fn type_oid(field: &Field) -> u32 {
    match field.metadata().get(SQL_TYPE_KEY).map(String::as_str) {
        Some("jsonb") => return 3802,
        Some("json") => return 114,
        Some("varchar") => return 1043,
        Some("name") => return 19,
        Some("oid") if *field.data_type() == DataType::UInt32 => return 26,
        _ => {}
    }
    match field.data_type() {
        DataType::Boolean => 16,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => 21,
        DataType::Int32 | DataType::UInt16 => 23,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => 20,
        DataType::Float16 | DataType::Float32 => 700,
        DataType::Float64 => 701,
        DataType::Decimal128(..) | DataType::Decimal256(..) => 1700,
        DataType::Date32 | DataType::Date64 => 1082,
        DataType::Time32(_) | DataType::Time64(_) => 1083,
        DataType::Timestamp(_, None) => 1114,
        DataType::Timestamp(_, Some(_)) => 1184,
        DataType::Interval(IntervalUnit::MonthDayNano) => 1186,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => 17,
        DataType::List(item) | DataType::LargeList(item) => match type_oid(item) {
            16 => 1000,
            21 => 1005,
            23 => 1007,
            20 => 1016,
            700 => 1021,
            701 => 1022,
            1700 => 1231,
            1043 => 1015,
            _ => 1009,
        },
        _ => 25,
    }
}

/// PostgreSQL's display name of a type (`format_type`), e.g. `integer`, `text[]`.
fn type_display(oid: u32, typmod: Option<i32>) -> Option<String> {
    let t = pg_type_by_oid(oid)?;
    Some(match (t.oid, typmod) {
        (1043, Some(m)) if m >= 4 => format!("character varying({})", m - 4),
        (1700, Some(m)) if m >= 4 => {
            let m = m - 4;
            format!("numeric({},{})", (m >> 16) & 0xffff, m & 0xffff)
        }
        _ => t.display.to_string(),
    })
}

/// PostgreSQL's storage strategy of a type: `numeric` is kept inline (`m`ain), other
/// variable-length types `x` (extended), fixed-length ones `p`lain.
fn storage(oid: u32, len: i16) -> &'static str {
    match (oid, len) {
        (1700, _) => "m",
        (_, l) if l < 0 => "x",
        _ => "p",
    }
}

/// The `atttypmod` of a column: precision and scale of NUMERIC, else -1.
fn typmod(field: &Field) -> i32 {
    match field.data_type() {
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            ((i32::from(*p) << 16) | i32::from(*s)) + 4
        }
        _ => -1,
    }
}

// ---------------------------------------------------------------------------------------
// Catalog tables

/// A column kind in a catalog table's spec: `o` oid, `n` name, `t` text, `c` "char",
/// `b` bool, `s` int2, `i` int4, `l` int8, `f` float4, `a` text[], `S` int2[].
#[derive(Debug, Clone)]
enum V {
    Null,
    /// Microseconds since the epoch (a `timestamptz`).
    Micros(i64),
    Oid(u32),
    Str(String),
    Bool(bool),
    Int(i64),
    Float(f32),
    Ints(Vec<i16>),
    Strs(Vec<String>),
}

fn s(v: impl Into<String>) -> V {
    V::Str(v.into())
}

/// The catalog tables: name and columns (`name:kind ...`).
const CATALOGS: &[(&str, &str)] = &[
    ("pg_namespace", "oid:o nspname:n nspowner:o nspacl:a"),
    (
        "pg_class",
        "oid:o relname:n relnamespace:o reltype:o reloftype:o relowner:o relam:o relfilenode:o \
         reltablespace:o relpages:i reltuples:f relallvisible:i reltoastrelid:o relhasindex:b \
         relisshared:b relpersistence:c relkind:c relnatts:s relchecks:s relhasrules:b \
         relhastriggers:b relhassubclass:b relrowsecurity:b relforcerowsecurity:b \
         relispopulated:b relreplident:c relispartition:b relrewrite:o relfrozenxid:l \
         relminmxid:l relacl:a reloptions:a relpartbound:t",
    ),
    (
        "pg_attribute",
        "attrelid:o attname:n atttypid:o attstattarget:i attlen:s attnum:s attndims:i \
         attcacheoff:i atttypmod:i attbyval:b attalign:c attstorage:c attcompression:c \
         attnotnull:b atthasdef:b atthasmissing:b attidentity:c attgenerated:c attisdropped:b \
         attislocal:b attinhcount:i attcollation:o attacl:a attoptions:a attfdwoptions:a",
    ),
    (
        "pg_type",
        "oid:o typname:n typnamespace:o typowner:o typlen:s typbyval:b typtype:c typcategory:c \
         typispreferred:b typisdefined:b typdelim:c typrelid:o typsubscript:t typelem:o \
         typarray:o typinput:t typoutput:t typreceive:t typsend:t typmodin:t typmodout:t \
         typanalyze:t typalign:c typstorage:c typnotnull:b typbasetype:o typtypmod:i \
         typndims:i typcollation:o typdefaultbin:t typdefault:t typacl:a",
    ),
    (
        "pg_database",
        "oid:o datname:n datdba:o encoding:i datlocprovider:c datistemplate:b datallowconn:b \
         datconnlimit:i datfrozenxid:l datminmxid:l dattablespace:o datcollate:t datctype:t \
         daticulocale:t datcollversion:t datacl:a",
    ),
    (
        "pg_roles",
        "rolname:n rolsuper:b rolinherit:b rolcreaterole:b rolcreatedb:b rolcanlogin:b \
         rolreplication:b rolconnlimit:i rolpassword:t rolvaliduntil:t rolbypassrls:b \
         rolconfig:a oid:o",
    ),
    (
        "pg_user",
        "usename:n usesysid:o usecreatedb:b usesuper:b userepl:b usebypassrls:b passwd:t \
         valuntil:t useconfig:a",
    ),
    (
        "pg_auth_members",
        "oid:o roleid:o member:o grantor:o admin_option:b",
    ),
    (
        "pg_settings",
        "name:t setting:t unit:t category:t short_desc:t extra_desc:t context:t vartype:t \
         source:t min_val:t max_val:t enumvals:a boot_val:t reset_val:t sourcefile:t \
         sourceline:i pending_restart:b",
    ),
    (
        "pg_description",
        "objoid:o classoid:o objsubid:i description:t",
    ),
    ("pg_shdescription", "objoid:o classoid:o description:t"),
    (
        "pg_stat_activity",
        "datid:o datname:n pid:i leader_pid:i usesysid:o usename:n application_name:t \
         client_addr:t client_hostname:t client_port:i backend_start:T xact_start:T \
         query_start:T state_change:T wait_event_type:t wait_event:t state:t backend_xid:t \
         backend_xmin:t query_id:l query:t backend_type:t",
    ),
    (
        "pg_matviews",
        "schemaname:n matviewname:n matviewowner:n tablespace:n hasindexes:b ispopulated:b \
         definition:t",
    ),
    (
        "pg_views",
        "schemaname:n viewname:n viewowner:n definition:t",
    ),
    (
        "pg_stat_user_tables",
        "relid:o schemaname:n relname:n seq_scan:l seq_tup_read:l idx_scan:l idx_tup_fetch:l \
         n_tup_ins:l n_tup_upd:l n_tup_del:l n_tup_hot_upd:l n_live_tup:l n_dead_tup:l \
         n_mod_since_analyze:l n_ins_since_vacuum:l last_vacuum:t last_autovacuum:t \
         last_analyze:t last_autoanalyze:t vacuum_count:l autovacuum_count:l analyze_count:l \
         autoanalyze_count:l",
    ),
    (
        "pg_tables",
        "schemaname:n tablename:n tableowner:n tablespace:n hasindexes:b hasrules:b \
         hastriggers:b rowsecurity:b",
    ),
    ("pg_am", "oid:o amname:n amhandler:t amtype:c"),
    (
        "pg_index",
        "indexrelid:o indrelid:o indnatts:s indnkeyatts:s indisunique:b \
         indnullsnotdistinct:b indisprimary:b indisexclusion:b indimmediate:b \
         indisclustered:b indisvalid:b indcheckxmin:b indisready:b indislive:b \
         indisreplident:b indkey:S indcollation:a indclass:a indoption:S indexprs:t indpred:t",
    ),
    (
        "pg_constraint",
        "oid:o conname:n connamespace:o contype:c condeferrable:b condeferred:b convalidated:b \
         conrelid:o contypid:o conindid:o conparentid:o confrelid:o confupdtype:c \
         confdeltype:c confmatchtype:c conislocal:b coninhcount:i connoinherit:b conkey:S \
         confkey:S conpfeqop:a conppeqop:a conffeqop:a confdelsetcols:S conexclop:a conbin:t",
    ),
    ("pg_attrdef", "oid:o adrelid:o adnum:s adbin:t"),
    (
        "pg_proc",
        "oid:o proname:n pronamespace:o proowner:o prolang:o procost:f prorows:f \
         provariadic:o prosupport:t prokind:c prosecdef:b proleakproof:b proisstrict:b \
         proretset:b provolatile:c proparallel:c pronargs:s pronargdefaults:s prorettype:o \
         proargtypes:t proallargtypes:a proargmodes:a proargnames:a proargdefaults:t \
         protrftypes:a prosrc:t probin:t prosqlbody:t proconfig:a proacl:a",
    ),
    (
        "pg_range",
        "rngtypid:o rngsubtype:o rngmultitypid:o rngcollation:o rngsubopc:o rngcanonical:t \
         rngsubdiff:t",
    ),
    ("pg_enum", "oid:o enumtypid:o enumsortorder:f enumlabel:n"),
    (
        "pg_sequence",
        "seqrelid:o seqtypid:o seqstart:l seqincrement:l seqmax:l seqmin:l seqcache:l \
         seqcycle:b",
    ),
    (
        "pg_collation",
        "oid:o collname:n collnamespace:o collowner:o collprovider:c collisdeterministic:b \
         collencoding:i collcollate:t collctype:t colliculocale:t collversion:t",
    ),
    (
        "pg_inherits",
        "inhrelid:o inhparent:o inhseqno:i inhdetachpending:b",
    ),
    (
        "pg_trigger",
        "oid:o tgrelid:o tgparentid:o tgname:n tgfoid:o tgtype:s tgenabled:c tgisinternal:b \
         tgconstrrelid:o tgconstrindid:o tgconstraint:o tgdeferrable:b tginitdeferred:b \
         tgnargs:s tgattr:S tgargs:t tgqual:t tgoldtable:n tgnewtable:n",
    ),
    (
        "pg_policy",
        "oid:o polname:n polrelid:o polcmd:c polpermissive:b polroles:a polqual:t \
         polwithcheck:t",
    ),
    (
        "pg_statistic_ext",
        "oid:o stxrelid:o stxname:n stxnamespace:o stxowner:o stxstattarget:i stxkeys:S \
         stxkind:a stxexprs:t",
    ),
    (
        "pg_publication",
        "oid:o pubname:n pubowner:o puballtables:b pubinsert:b pubupdate:b pubdelete:b \
         pubtruncate:b pubviaroot:b",
    ),
    (
        "pg_publication_rel",
        "oid:o prpubid:o prrelid:o prqual:t prattrs:S",
    ),
    ("pg_publication_namespace", "oid:o pnpubid:o pnnspid:o"),
    (
        "pg_rewrite",
        "oid:o rulename:n ev_class:o ev_type:c ev_enabled:c is_instead:b ev_qual:t \
         ev_action:t",
    ),
    (
        "pg_depend",
        "classid:o objid:o objsubid:i refclassid:o refobjid:o refobjsubid:i deptype:c",
    ),
    (
        "pg_extension",
        "oid:o extname:n extowner:o extnamespace:o extrelocatable:b extversion:t extconfig:a \
         extcondition:a",
    ),
    (
        "pg_tablespace",
        "oid:o spcname:n spcowner:o spcacl:a spcoptions:a",
    ),
    ("pg_foreign_table", "ftrelid:o ftserver:o ftoptions:a"),
    (
        "pg_foreign_server",
        "oid:o srvname:n srvowner:o srvfdw:o srvtype:t srvversion:t srvacl:a srvoptions:a",
    ),
    (
        "pg_foreign_data_wrapper",
        "oid:o fdwname:n fdwowner:o fdwhandler:o fdwvalidator:o fdwacl:a fdwoptions:a",
    ),
    (
        "pg_partitioned_table",
        "partrelid:o partstrat:c partnatts:s partdefid:o partattrs:S",
    ),
    (
        "pg_event_trigger",
        "oid:o evtname:n evtevent:n evtowner:o evtfoid:o evtenabled:c",
    ),
];

/// `information_schema`, as PostgreSQL defines the views clients read most.
const INFORMATION_SCHEMA: &[(&str, &str)] = &[
    (
        "schemata",
        "catalog_name:n schema_name:n schema_owner:n default_character_set_catalog:n \
         default_character_set_schema:n default_character_set_name:n sql_path:t",
    ),
    (
        "tables",
        "table_catalog:n table_schema:n table_name:n table_type:t \
         self_referencing_column_name:n reference_generation:t user_defined_type_catalog:n \
         user_defined_type_schema:n user_defined_type_name:n is_insertable_into:t is_typed:t \
         commit_action:t",
    ),
    (
        "columns",
        "table_catalog:n table_schema:n table_name:n column_name:n ordinal_position:i \
         column_default:t is_nullable:t data_type:t character_maximum_length:i \
         character_octet_length:i numeric_precision:i numeric_precision_radix:i \
         numeric_scale:i datetime_precision:i interval_type:t interval_precision:i \
         character_set_catalog:n character_set_schema:n character_set_name:n \
         collation_catalog:n collation_schema:n collation_name:n domain_catalog:n \
         domain_schema:n domain_name:n udt_catalog:n udt_schema:n udt_name:n scope_catalog:n \
         scope_schema:n scope_name:n maximum_cardinality:i dtd_identifier:n \
         is_self_referencing:t is_identity:t identity_generation:t identity_start:t \
         identity_increment:t identity_maximum:t identity_minimum:t identity_cycle:t \
         is_generated:t generation_expression:t is_updatable:t",
    ),
    (
        "views",
        "table_catalog:n table_schema:n table_name:n view_definition:t check_option:t \
         is_updatable:t is_insertable_into:t is_trigger_updatable:t is_trigger_deletable:t \
         is_trigger_insertable_into:t",
    ),
    (
        "table_constraints",
        "constraint_catalog:n constraint_schema:n constraint_name:n table_catalog:n \
         table_schema:n table_name:n constraint_type:t is_deferrable:t initially_deferred:t \
         enforced:t nulls_distinct:t",
    ),
    (
        "key_column_usage",
        "constraint_catalog:n constraint_schema:n constraint_name:n table_catalog:n \
         table_schema:n table_name:n column_name:n ordinal_position:i \
         position_in_unique_constraint:i",
    ),
];

fn namespace_name(oid: u32) -> &'static str {
    match oid {
        PG_CATALOG_OID => "pg_catalog",
        INFORMATION_SCHEMA_OID => "information_schema",
        SABOT_CATALOG_OID => "sabot_catalog",
        _ => "public",
    }
}

/// A column's `information_schema.columns` numeric facts: precision, radix, scale,
/// datetime precision.
fn column_numbers(field: &Field) -> [Option<i64>; 4] {
    match field.data_type() {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => [Some(16), Some(2), Some(0), None],
        DataType::Int32 | DataType::UInt16 => [Some(32), Some(2), Some(0), None],
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => [Some(64), Some(2), Some(0), None],
        DataType::Float16 | DataType::Float32 => [Some(24), Some(2), None, None],
        DataType::Float64 => [Some(53), Some(2), None, None],
        DataType::Decimal128(p, sc) | DataType::Decimal256(p, sc) => {
            [Some(i64::from(*p)), Some(10), Some(i64::from(*sc)), None]
        }
        DataType::Date32 | DataType::Date64 => [None, None, None, Some(0)],
        DataType::Time32(_) | DataType::Time64(_) | DataType::Timestamp(..) => {
            [None, None, None, Some(6)]
        }
        _ => [None; 4],
    }
}

fn information_schema(rels: &[CatalogRel]) -> Result<Vec<(&'static str, RecordBatch)>> {
    let mut rows: BTreeMap<&'static str, Vec<Vec<(&'static str, V)>>> = BTreeMap::new();
    let mut add = |table: &'static str, row: Vec<(&'static str, V)>| {
        rows.entry(table).or_default().push(row);
    };
    for oid in [
        PG_CATALOG_OID,
        PUBLIC_OID,
        INFORMATION_SCHEMA_OID,
        SABOT_CATALOG_OID,
    ] {
        add(
            "schemata",
            vec![
                ("catalog_name", s(DATABASE)),
                ("schema_name", s(namespace_name(oid))),
                ("schema_owner", s(OWNER)),
            ],
        );
    }
    for r in rels {
        // Materialized views are Sabot's main objects, so unlike PostgreSQL they are
        // listed here (as views) for tools that only read information_schema.
        let table_type = match r.kind {
            'r' => "BASE TABLE",
            'f' => "FOREIGN",
            _ => "VIEW",
        };
        let schema = namespace_name(r.namespace);
        add(
            "tables",
            vec![
                ("table_catalog", s(DATABASE)),
                ("table_schema", s(schema)),
                ("table_name", s(r.name.clone())),
                ("table_type", s(table_type)),
                (
                    "is_insertable_into",
                    s(if r.kind == 'r' && r.namespace == PUBLIC_OID {
                        "YES"
                    } else {
                        "NO"
                    }),
                ),
                ("is_typed", s("NO")),
            ],
        );
        if r.kind == 'm' {
            add(
                "views",
                vec![
                    ("table_catalog", s(DATABASE)),
                    ("table_schema", s(schema)),
                    ("table_name", s(r.name.clone())),
                    ("view_definition", s(r.definition.clone())),
                    ("check_option", s("NONE")),
                    ("is_updatable", s("NO")),
                    ("is_insertable_into", s("NO")),
                    ("is_trigger_updatable", s("NO")),
                    ("is_trigger_deletable", s("NO")),
                    ("is_trigger_insertable_into", s("NO")),
                ],
            );
        }
        for (i, f) in r.schema.fields().iter().enumerate() {
            let typ = type_oid(f);
            let t = pg_type_by_oid(typ);
            let data_type = match t {
                Some(t) if t.category == "A" => "ARRAY".to_string(),
                Some(t) => t.display.to_string(),
                None => "text".to_string(),
            };
            let [precision, radix, scale, datetime] = column_numbers(f);
            let opt = |v: Option<i64>| v.map_or(V::Null, V::Int);
            add(
                "columns",
                vec![
                    ("table_catalog", s(DATABASE)),
                    ("table_schema", s(schema)),
                    ("table_name", s(r.name.clone())),
                    ("column_name", s(f.name().clone())),
                    (
                        "ordinal_position",
                        V::Int(i64::try_from(i + 1).unwrap_or(0)),
                    ),
                    (
                        "is_nullable",
                        s(if f.is_nullable() && !r.primary_key.contains(f.name()) {
                            "YES"
                        } else {
                            "NO"
                        }),
                    ),
                    ("data_type", s(data_type)),
                    ("numeric_precision", opt(precision)),
                    ("numeric_precision_radix", opt(radix)),
                    ("numeric_scale", opt(scale)),
                    ("datetime_precision", opt(datetime)),
                    ("udt_catalog", s(DATABASE)),
                    ("udt_schema", s("pg_catalog")),
                    ("udt_name", s(t.map_or("text", |t| t.name))),
                    ("dtd_identifier", s((i + 1).to_string())),
                    ("is_self_referencing", s("NO")),
                    ("is_identity", s("NO")),
                    ("is_generated", s("NEVER")),
                    ("is_updatable", s(if r.kind == 'r' { "YES" } else { "NO" })),
                ],
            );
        }
        if !r.primary_key.is_empty() {
            let name = format!("{}_pkey", r.name);
            add(
                "table_constraints",
                vec![
                    ("constraint_catalog", s(DATABASE)),
                    ("constraint_schema", s(schema)),
                    ("constraint_name", s(name.clone())),
                    ("table_catalog", s(DATABASE)),
                    ("table_schema", s(schema)),
                    ("table_name", s(r.name.clone())),
                    ("constraint_type", s("PRIMARY KEY")),
                    ("is_deferrable", s("NO")),
                    ("initially_deferred", s("NO")),
                    ("enforced", s("YES")),
                ],
            );
            for (i, col) in r.primary_key.iter().enumerate() {
                add(
                    "key_column_usage",
                    vec![
                        ("constraint_catalog", s(DATABASE)),
                        ("constraint_schema", s(schema)),
                        ("constraint_name", s(name.clone())),
                        ("table_catalog", s(DATABASE)),
                        ("table_schema", s(schema)),
                        ("table_name", s(r.name.clone())),
                        ("column_name", s(col.clone())),
                        (
                            "ordinal_position",
                            V::Int(i64::try_from(i + 1).unwrap_or(0)),
                        ),
                    ],
                );
            }
        }
    }
    INFORMATION_SCHEMA
        .iter()
        .map(|(name, spec)| {
            let table_rows = rows.get(name).map(Vec::as_slice).unwrap_or(&[]);
            Ok((*name, catalog_batch(spec, table_rows)?))
        })
        .collect()
}

/// Whether `name` is one of the catalog tables.
pub fn is_catalog_table(name: &str) -> bool {
    CATALOGS.iter().any(|(n, _)| *n == name)
}

fn column_type(kind: char) -> (DataType, Option<&'static str>) {
    match kind {
        'o' => (DataType::UInt32, Some("oid")),
        'n' => (DataType::Utf8, Some("name")),
        'b' => (DataType::Boolean, None),
        's' => (DataType::Int16, None),
        'i' => (DataType::Int32, None),
        'l' => (DataType::Int64, None),
        'f' => (DataType::Float32, None),
        'T' => (
            DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("+00:00".into()),
            ),
            None,
        ),
        'a' => (
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            None,
        ),
        'S' => (
            DataType::List(Arc::new(Field::new("item", DataType::Int16, true))),
            None,
        ),
        _ => (DataType::Utf8, None),
    }
}

fn catalog_schema(spec: &str) -> SchemaRef {
    let fields: Vec<Field> = spec
        .split_whitespace()
        .map(|col| {
            let (name, kind) = col.split_once(':').unwrap_or((col, "t"));
            let (dt, tag) = column_type(kind.chars().next().unwrap_or('t'));
            let f = Field::new(name, dt, true);
            match tag {
                Some(tag) => {
                    f.with_metadata(HashMap::from([(SQL_TYPE_KEY.to_string(), tag.to_string())]))
                }
                None => f,
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Builds a catalog table from rows given as `column → value` (absent columns are NULL).
fn catalog_batch(spec: &str, rows: &[Vec<(&str, V)>]) -> Result<RecordBatch> {
    let schema = catalog_schema(spec);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name().as_str();
        let values = rows.iter().map(|r| {
            r.iter()
                .find(|(n, _)| *n == name)
                .map_or(V::Null, |(_, v)| v.clone())
        });
        let int = |v: V| match v {
            V::Int(i) => Some(i),
            V::Oid(o) => Some(i64::from(o)),
            _ => None,
        };
        let array: ArrayRef = match field.data_type() {
            DataType::UInt32 => Arc::new(
                values
                    .map(|v| int(v).and_then(|i| u32::try_from(i).ok()))
                    .collect::<UInt32Array>(),
            ),
            DataType::Boolean => Arc::new(
                values
                    .map(|v| match v {
                        V::Bool(x) => Some(x),
                        _ => None,
                    })
                    .collect::<BooleanArray>(),
            ),
            DataType::Int16 => Arc::new(
                values
                    .map(|v| int(v).and_then(|i| i16::try_from(i).ok()))
                    .collect::<arrow::array::Int16Array>(),
            ),
            DataType::Int32 => Arc::new(
                values
                    .map(|v| int(v).and_then(|i| i32::try_from(i).ok()))
                    .collect::<arrow::array::Int32Array>(),
            ),
            DataType::Int64 => Arc::new(values.map(int).collect::<Int64Array>()),
            DataType::Timestamp(_, tz) => Arc::new(
                values
                    .map(|v| match v {
                        V::Micros(x) => Some(x),
                        _ => None,
                    })
                    .collect::<arrow::array::TimestampMicrosecondArray>()
                    .with_timezone_opt(tz.clone()),
            ),
            DataType::Float32 => Arc::new(
                values
                    .map(|v| match v {
                        V::Float(x) => Some(x),
                        _ => None,
                    })
                    .collect::<arrow::array::Float32Array>(),
            ),
            DataType::List(item) if *item.data_type() == DataType::Int16 => {
                let mut b = ListBuilder::new(Int16Builder::new());
                for v in values {
                    match v {
                        V::Ints(xs) => {
                            for x in xs {
                                b.values().append_value(x);
                            }
                            b.append(true);
                        }
                        _ => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::List(_) => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for v in values {
                    match v {
                        V::Strs(xs) => {
                            for x in xs {
                                b.values().append_value(x);
                            }
                            b.append(true);
                        }
                        _ => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
            _ => Arc::new(
                values
                    .map(|v| match v {
                        V::Str(x) => Some(x),
                        _ => None,
                    })
                    .collect::<StringArray>(),
            ),
        };
        columns.push(array);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// A relation as the catalog shows it.
#[derive(Debug, Clone)]
struct CatalogRel {
    oid: u32,
    name: String,
    namespace: u32,
    kind: char,
    schema: SchemaRef,
    primary_key: Vec<String>,
    definition: String,
    bytes: usize,
    rows: usize,
}

impl CatalogRel {
    /// The primary key index's OID (and, +1, its constraint's).
    fn pkey_oid(&self) -> u32 {
        self.oid + 1
    }

    fn pkey_attnums(&self) -> Vec<i16> {
        self.primary_key
            .iter()
            .filter_map(|k| self.schema.index_of(k).ok())
            .map(|i| i16::try_from(i + 1).unwrap_or(i16::MAX))
            .collect()
    }
}

fn user_relations(snapshot: &Snapshot) -> Vec<CatalogRel> {
    let mut rels: Vec<CatalogRel> = snapshot
        .relations
        .iter()
        .filter_map(|(name, r): (&String, &Relation)| {
            let kind = match r.kind {
                RelationKind::Table => 'r',
                RelationKind::MaterializedView => 'm',
                RelationKind::Source => 'f',
                RelationKind::Sink => return None,
            };
            Some(CatalogRel {
                oid: r.oid,
                name: name.clone(),
                namespace: PUBLIC_OID,
                kind,
                schema: Arc::clone(&r.schema),
                primary_key: r.primary_key.clone(),
                definition: r.definition.clone(),
                bytes: r.memory_size(),
                rows: r.num_rows(),
            })
        })
        .collect();
    rels.sort_by_key(|r| r.oid);
    rels
}

/// Everything the catalog functions look up, built once per read.
#[derive(Debug, Default)]
struct Lookup {
    by_oid: HashMap<u32, CatalogRel>,
    by_name: HashMap<String, u32>,
    session: Session,
}

impl Lookup {
    fn relation(&self, name: &str) -> Option<u32> {
        let name = name.trim_matches('"');
        let name = name
            .strip_prefix("public.")
            .or_else(|| name.strip_prefix("pg_catalog."))
            .unwrap_or(name);
        self.by_name.get(name).copied()
    }

    /// The primary key index or constraint with this OID: its table.
    fn pkey_owner(&self, oid: u32) -> Option<&CatalogRel> {
        let table = self.by_oid.get(&(oid.checked_sub(1)?))?;
        (!table.primary_key.is_empty()).then_some(table)
    }
    fn constraint_owner(&self, oid: u32) -> Option<&CatalogRel> {
        self.pkey_owner(oid.checked_sub(1)?)
    }
}

/// Registers `pg_catalog` (tables and functions) on `ctx` over `snapshot`.
pub fn register(
    ctx: &SessionContext,
    snapshot: &Snapshot,
    system: &[(&str, SchemaRef)],
    users: &[UserMeta],
    session: &Session,
) -> Result<()> {
    let mut rels = user_relations(snapshot);
    for (i, (name, schema)) in system.iter().enumerate() {
        rels.push(CatalogRel {
            oid: SABOT_CATALOG_OID + 1 + u32::try_from(i).unwrap_or(0),
            name: (*name).to_string(),
            namespace: SABOT_CATALOG_OID,
            kind: 'v',
            schema: Arc::clone(schema),
            primary_key: Vec::new(),
            definition: String::new(),
            bytes: 0,
            rows: 0,
        });
    }
    for (i, (name, spec)) in CATALOGS.iter().enumerate() {
        rels.push(CatalogRel {
            oid: FIRST_CATALOG_TABLE_OID + 2 * u32::try_from(i).unwrap_or(0),
            name: (*name).to_string(),
            namespace: PG_CATALOG_OID,
            kind: 'r',
            schema: catalog_schema(spec),
            primary_key: Vec::new(),
            definition: String::new(),
            bytes: 0,
            rows: 0,
        });
    }
    for (i, (name, spec)) in INFORMATION_SCHEMA.iter().enumerate() {
        rels.push(CatalogRel {
            oid: FIRST_CATALOG_TABLE_OID + 1000 + u32::try_from(i).unwrap_or(0),
            name: (*name).to_string(),
            namespace: INFORMATION_SCHEMA_OID,
            kind: 'v',
            schema: catalog_schema(spec),
            primary_key: Vec::new(),
            definition: String::new(),
            bytes: 0,
            rows: 0,
        });
    }
    let catalog = ctx
        .catalog(DATABASE)
        .ok_or_else(|| PlanError::Internal("no default catalog".into()))?;
    for (schema, tables) in [
        (
            "pg_catalog",
            catalog_tables(&rels, users, session, &builtin_functions(ctx))?,
        ),
        ("information_schema", information_schema(&rels)?),
    ] {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
        for (name, batch) in tables {
            ctx.register_table(
                TableReference::partial(schema, name),
                Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
            )?;
        }
    }
    // A bare name finds the user's relation first, then Sabot's and PostgreSQL's catalogs.
    let mut by_name = HashMap::new();
    for r in rels
        .iter()
        .filter(|r| r.namespace != INFORMATION_SCHEMA_OID)
    {
        by_name.entry(r.name.clone()).or_insert(r.oid);
    }
    let lookup = Arc::new(Lookup {
        by_name,
        by_oid: rels.into_iter().map(|r| (r.oid, r)).collect(),
        session: session.clone(),
    });
    for f in functions(&lookup) {
        ctx.register_udf(ScalarUDF::new_from_impl(f));
    }
    Ok(())
}

/// A function queries can call, as `pg_proc` lists it.
struct BuiltinFunction {
    name: String,
    /// `f` (scalar), `a` (aggregate) or `w` (window).
    kind: char,
    volatility: Volatility,
    /// How many arguments, where the signature fixes it.
    args: Option<usize>,
    variadic: bool,
}

/// OIDs of `pg_proc` rows: functions in name order from here.
const FIRST_FUNCTION_OID: u32 = 20000;

/// Every function `ctx` knows (DataFusion's and Sabot's), by name and kind, except
/// Sabot's internal markers.
fn builtin_functions(ctx: &SessionContext) -> Vec<BuiltinFunction> {
    fn arity(t: &TypeSignature) -> (Option<usize>, bool) {
        match t {
            TypeSignature::Nullary => (Some(0), false),
            TypeSignature::Exact(v) => (Some(v.len()), false),
            TypeSignature::Uniform(n, _) | TypeSignature::Any(n) => (Some(*n), false),
            TypeSignature::Coercible(v) => (Some(v.len()), false),
            TypeSignature::Variadic(_)
            | TypeSignature::VariadicAny
            | TypeSignature::UserDefined => (None, true),
            _ => (None, false),
        }
    }
    let state = ctx.state();
    let mut out = Vec::new();
    let mut add = |name: &str, kind: char, sig: &Signature| {
        if name.starts_with("sabot_") || name.starts_with("__") {
            return;
        }
        let (args, variadic) = arity(&sig.type_signature);
        out.push(BuiltinFunction {
            name: name.to_string(),
            kind,
            volatility: sig.volatility,
            args,
            variadic,
        });
    };
    for (name, f) in state.scalar_functions() {
        add(name, 'f', f.signature());
    }
    for (name, f) in state.aggregate_functions() {
        add(name, 'a', f.signature());
    }
    for (name, f) in state.window_functions() {
        add(name, 'w', f.signature());
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.kind.cmp(&b.kind)));
    out
}

fn catalog_tables(
    rels: &[CatalogRel],
    users: &[UserMeta],
    session: &Session,
    functions: &[BuiltinFunction],
) -> Result<Vec<(&'static str, RecordBatch)>> {
    let mut rows: BTreeMap<&'static str, Vec<Vec<(&'static str, V)>>> = BTreeMap::new();
    let mut add = |table: &'static str, row: Vec<(&'static str, V)>| {
        rows.entry(table).or_default().push(row);
    };
    let micros = |t: std::time::SystemTime| {
        V::Micros(
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    };
    let sessions = session
        .sessions
        .as_ref()
        .map(|c| c.activity())
        .unwrap_or_default();
    for a in sessions {
        let mut row = vec![
            ("datid", V::Oid(DATABASE_OID)),
            ("datname", s(DATABASE)),
            ("pid", V::Int(i64::from(a.pid))),
            ("usename", s(a.user.clone())),
            ("application_name", s(a.application_name.clone())),
            ("client_addr", s("127.0.0.1")),
            ("backend_start", micros(a.backend_start)),
            ("state", s(if a.active { "active" } else { "idle" })),
            ("backend_type", s("client backend")),
        ];
        if let Some((query, started)) = &a.query {
            row.push(("query", s(query.clone())));
            row.push(("query_start", micros(*started)));
            row.push(("state_change", micros(*started)));
            if a.active {
                row.push(("xact_start", micros(*started)));
            }
        }
        add("pg_stat_activity", row);
    }
    for (i, f) in functions.iter().enumerate() {
        let volatile = match f.volatility {
            Volatility::Immutable => "i",
            Volatility::Stable => "s",
            Volatility::Volatile => "v",
        };
        add(
            "pg_proc",
            vec![
                (
                    "oid",
                    V::Oid(FIRST_FUNCTION_OID + u32::try_from(i).unwrap_or(0)),
                ),
                ("proname", s(f.name.clone())),
                ("pronamespace", V::Oid(PG_CATALOG_OID)),
                ("proowner", V::Oid(OWNER_OID)),
                // internal
                ("prolang", V::Oid(12)),
                ("procost", V::Float(1.0)),
                ("prorows", V::Float(0.0)),
                // "any"
                ("provariadic", V::Oid(if f.variadic { 2276 } else { 0 })),
                ("prokind", s(f.kind.to_string())),
                ("prosecdef", V::Bool(false)),
                ("proleakproof", V::Bool(false)),
                ("proisstrict", V::Bool(false)),
                ("proretset", V::Bool(false)),
                ("provolatile", s(volatile)),
                ("proparallel", s("s")),
                (
                    "pronargs",
                    V::Int(f.args.map_or(0, |n| i64::try_from(n).unwrap_or(0))),
                ),
                ("pronargdefaults", V::Int(0)),
                // Result types depend on the arguments: "any".
                ("prorettype", V::Oid(2276)),
                ("proargtypes", s("")),
                ("prosrc", s(f.name.clone())),
            ],
        );
    }
    for (oid, name) in [
        (PG_CATALOG_OID, "pg_catalog"),
        (PUBLIC_OID, "public"),
        (INFORMATION_SCHEMA_OID, "information_schema"),
        (SABOT_CATALOG_OID, "sabot_catalog"),
    ] {
        add(
            "pg_namespace",
            vec![
                ("oid", V::Oid(oid)),
                ("nspname", s(name)),
                ("nspowner", V::Oid(OWNER_OID)),
            ],
        );
    }
    add(
        "pg_database",
        vec![
            ("oid", V::Oid(DATABASE_OID)),
            ("datname", s(DATABASE)),
            ("datdba", V::Oid(OWNER_OID)),
            ("encoding", V::Int(6)),
            ("datlocprovider", s("c")),
            ("datistemplate", V::Bool(false)),
            ("datallowconn", V::Bool(true)),
            ("datconnlimit", V::Int(-1)),
            ("dattablespace", V::Oid(1663)),
            ("datcollate", s("C")),
            ("datctype", s("C")),
        ],
    );
    // The bootstrap superuser, then the roles made with CREATE USER (OIDs in name order).
    let mut roles: Vec<(String, bool, bool, u32)> =
        vec![(OWNER.to_string(), true, true, OWNER_OID)];
    for (i, u) in users.iter().filter(|u| u.name != OWNER).enumerate() {
        let oid = FIRST_CATALOG_TABLE_OID + 2000 + u32::try_from(i).unwrap_or(0);
        roles.push((u.name.clone(), u.superuser, u.verifier.is_some(), oid));
    }
    for (name, superuser, has_password, oid) in roles {
        let password = if has_password || oid == OWNER_OID {
            s("********")
        } else {
            V::Null
        };
        add(
            "pg_roles",
            vec![
                ("rolname", s(name.clone())),
                ("rolsuper", V::Bool(superuser)),
                ("rolinherit", V::Bool(true)),
                ("rolcreaterole", V::Bool(superuser)),
                ("rolcreatedb", V::Bool(superuser)),
                ("rolcanlogin", V::Bool(true)),
                ("rolreplication", V::Bool(false)),
                ("rolconnlimit", V::Int(-1)),
                ("rolpassword", password.clone()),
                ("rolbypassrls", V::Bool(superuser)),
                ("oid", V::Oid(oid)),
            ],
        );
        add(
            "pg_user",
            vec![
                ("usename", s(name)),
                ("usesysid", V::Oid(oid)),
                ("usecreatedb", V::Bool(superuser)),
                ("usesuper", V::Bool(superuser)),
                ("userepl", V::Bool(false)),
                ("usebypassrls", V::Bool(superuser)),
                ("passwd", password),
            ],
        );
    }
    let mut settings: BTreeMap<&str, (&str, bool)> = DEFAULT_SETTINGS
        .iter()
        .map(|(n, v)| (*n, (*v, false)))
        .collect();
    for (name, value) in &session.settings {
        settings.insert(name, (value, true));
    }
    for (name, (value, set)) in settings {
        let default = default_setting(name).unwrap_or("");
        add(
            "pg_settings",
            vec![
                ("name", s(name)),
                ("setting", s(value)),
                ("category", s("Sabot")),
                ("context", s("user")),
                ("vartype", s("string")),
                ("source", s(if set { "session" } else { "default" })),
                ("boot_val", s(default)),
                ("reset_val", s(default)),
                ("pending_restart", V::Bool(false)),
            ],
        );
    }
    for (oid, name, handler, kind) in [
        (HEAP_AM, "heap", "heap_tableam_handler", "t"),
        (BTREE_AM, "btree", "bthandler", "i"),
    ] {
        add(
            "pg_am",
            vec![
                ("oid", V::Oid(oid)),
                ("amname", s(name)),
                ("amhandler", s(handler)),
                ("amtype", s(kind)),
            ],
        );
    }
    add(
        "pg_tablespace",
        vec![
            ("oid", V::Oid(1663)),
            ("spcname", s("pg_default")),
            ("spcowner", V::Oid(OWNER_OID)),
        ],
    );
    for (oid, name) in [(100, "default"), (950, "C")] {
        add(
            "pg_collation",
            vec![
                ("oid", V::Oid(oid)),
                ("collname", s(name)),
                ("collnamespace", V::Oid(PG_CATALOG_OID)),
                ("collowner", V::Oid(OWNER_OID)),
                ("collprovider", s(if oid == 100 { "d" } else { "c" })),
                ("collisdeterministic", V::Bool(true)),
                ("collencoding", V::Int(-1)),
            ],
        );
    }
    add(
        "pg_foreign_data_wrapper",
        vec![
            ("oid", V::Oid(12050)),
            ("fdwname", s("sabot_connector")),
            ("fdwowner", V::Oid(OWNER_OID)),
        ],
    );
    add(
        "pg_foreign_server",
        vec![
            ("oid", V::Oid(12051)),
            ("srvname", s("sabot_source")),
            ("srvowner", V::Oid(OWNER_OID)),
            ("srvfdw", V::Oid(12050)),
        ],
    );
    for t in TYPES {
        add(
            "pg_type",
            vec![
                ("oid", V::Oid(t.oid)),
                ("typname", s(t.name)),
                ("typnamespace", V::Oid(PG_CATALOG_OID)),
                ("typowner", V::Oid(OWNER_OID)),
                ("typlen", V::Int(i64::from(t.len))),
                ("typbyval", V::Bool(matches!(t.len, 1 | 2 | 4 | 8))),
                ("typtype", s(if t.oid == 705 { "p" } else { "b" })),
                ("typcategory", s(t.category)),
                (
                    "typispreferred",
                    V::Bool(matches!(t.oid, 16 | 25 | 701 | 1184 | 1186 | 26)),
                ),
                ("typisdefined", V::Bool(true)),
                ("typdelim", s(",")),
                ("typrelid", V::Oid(0)),
                ("typelem", V::Oid(t.element)),
                ("typarray", V::Oid(t.array)),
                (
                    "typinput",
                    s(format!("{}in", t.name.trim_start_matches('_'))),
                ),
                (
                    "typoutput",
                    s(format!("{}out", t.name.trim_start_matches('_'))),
                ),
                ("typalign", s(if t.len == 8 { "d" } else { "i" })),
                ("typstorage", s(storage(t.oid, t.len))),
                ("typnotnull", V::Bool(false)),
                ("typbasetype", V::Oid(0)),
                ("typtypmod", V::Int(-1)),
                ("typndims", V::Int(0)),
                (
                    "typcollation",
                    V::Oid(if t.category == "S" { 100 } else { 0 }),
                ),
            ],
        );
    }
    for r in rels {
        let natts = i64::try_from(r.schema.fields().len()).unwrap_or(0);
        let has_pkey = !r.primary_key.is_empty();
        add(
            "pg_class",
            vec![
                ("oid", V::Oid(r.oid)),
                ("relname", s(r.name.clone())),
                ("relnamespace", V::Oid(r.namespace)),
                ("reltype", V::Oid(0)),
                ("reloftype", V::Oid(0)),
                ("relowner", V::Oid(OWNER_OID)),
                (
                    "relam",
                    V::Oid(if matches!(r.kind, 'r' | 'm') {
                        HEAP_AM
                    } else {
                        0
                    }),
                ),
                ("relfilenode", V::Oid(r.oid)),
                ("reltablespace", V::Oid(0)),
                ("relpages", V::Int(0)),
                ("reltuples", V::Float(-1.0)),
                ("relallvisible", V::Int(0)),
                ("reltoastrelid", V::Oid(0)),
                ("relhasindex", V::Bool(has_pkey)),
                ("relisshared", V::Bool(false)),
                ("relpersistence", s("p")),
                ("relkind", s(r.kind.to_string())),
                ("relnatts", V::Int(natts)),
                ("relchecks", V::Int(0)),
                ("relhasrules", V::Bool(false)),
                ("relhastriggers", V::Bool(false)),
                ("relhassubclass", V::Bool(false)),
                ("relrowsecurity", V::Bool(false)),
                ("relforcerowsecurity", V::Bool(false)),
                ("relispopulated", V::Bool(true)),
                ("relreplident", s("d")),
                ("relispartition", V::Bool(false)),
                ("relrewrite", V::Oid(0)),
            ],
        );
        for (i, f) in r.schema.fields().iter().enumerate() {
            let typ = type_oid(f);
            let len = pg_type_by_oid(typ).map_or(-1, |t| t.len);
            add(
                "pg_attribute",
                vec![
                    ("attrelid", V::Oid(r.oid)),
                    ("attname", s(f.name().clone())),
                    ("atttypid", V::Oid(typ)),
                    ("attstattarget", V::Int(-1)),
                    ("attlen", V::Int(i64::from(len))),
                    ("attnum", V::Int(i64::try_from(i + 1).unwrap_or(0))),
                    (
                        "attndims",
                        V::Int(i64::from(matches!(f.data_type(), DataType::List(_)))),
                    ),
                    ("attcacheoff", V::Int(-1)),
                    ("atttypmod", V::Int(i64::from(typmod(f)))),
                    ("attbyval", V::Bool(matches!(len, 1 | 2 | 4 | 8))),
                    ("attalign", s("i")),
                    ("attstorage", s(storage(typ, len))),
                    ("attcompression", s("")),
                    (
                        "attnotnull",
                        V::Bool(!f.is_nullable() || r.primary_key.contains(f.name())),
                    ),
                    ("atthasdef", V::Bool(false)),
                    ("atthasmissing", V::Bool(false)),
                    ("attidentity", s("")),
                    ("attgenerated", s("")),
                    ("attisdropped", V::Bool(false)),
                    ("attislocal", V::Bool(true)),
                    ("attinhcount", V::Int(0)),
                    (
                        "attcollation",
                        V::Oid(if typ == 25 || typ == 1043 { 100 } else { 0 }),
                    ),
                ],
            );
        }
        if r.namespace != PUBLIC_OID {
            continue;
        }
        if r.kind == 'r' {
            add(
                "pg_tables",
                vec![
                    ("schemaname", s("public")),
                    ("tablename", s(r.name.clone())),
                    ("tableowner", s(OWNER)),
                    ("hasindexes", V::Bool(has_pkey)),
                    ("hasrules", V::Bool(false)),
                    ("hastriggers", V::Bool(false)),
                    ("rowsecurity", V::Bool(false)),
                ],
            );
        }
        if matches!(r.kind, 'r' | 'm') {
            // Row counts are exact: every relation's rows are in the snapshot.
            let rows = i64::try_from(r.rows).unwrap_or(i64::MAX);
            let mut row = vec![
                ("relid", V::Oid(r.oid)),
                ("schemaname", s("public")),
                ("relname", s(r.name.clone())),
                ("n_live_tup", V::Int(rows)),
                ("n_tup_ins", V::Int(rows)),
            ];
            for zero in [
                "seq_scan",
                "seq_tup_read",
                "idx_scan",
                "idx_tup_fetch",
                "n_tup_upd",
                "n_tup_del",
                "n_tup_hot_upd",
                "n_dead_tup",
                "n_mod_since_analyze",
                "n_ins_since_vacuum",
                "vacuum_count",
                "autovacuum_count",
                "analyze_count",
                "autoanalyze_count",
            ] {
                row.push((zero, V::Int(0)));
            }
            add("pg_stat_user_tables", row);
        }
        match r.kind {
            'm' => add(
                "pg_matviews",
                vec![
                    ("schemaname", s("public")),
                    ("matviewname", s(r.name.clone())),
                    ("matviewowner", s(OWNER)),
                    ("hasindexes", V::Bool(false)),
                    ("ispopulated", V::Bool(true)),
                    ("definition", s(r.definition.clone())),
                ],
            ),
            'f' => add(
                "pg_foreign_table",
                vec![
                    ("ftrelid", V::Oid(r.oid)),
                    ("ftserver", V::Oid(12051)),
                    ("ftoptions", V::Strs(source_options(&r.definition))),
                ],
            ),
            _ => {}
        }
        if has_pkey {
            let keys = r.pkey_attnums();
            let nkeys = i64::try_from(keys.len()).unwrap_or(0);
            let index = format!("{}_pkey", r.name);
            add(
                "pg_class",
                vec![
                    ("oid", V::Oid(r.pkey_oid())),
                    ("relname", s(index.clone())),
                    ("relnamespace", V::Oid(PUBLIC_OID)),
                    ("reltype", V::Oid(0)),
                    ("reloftype", V::Oid(0)),
                    ("relowner", V::Oid(OWNER_OID)),
                    ("relam", V::Oid(BTREE_AM)),
                    ("reltablespace", V::Oid(0)),
                    ("reltoastrelid", V::Oid(0)),
                    ("relhasindex", V::Bool(false)),
                    ("relisshared", V::Bool(false)),
                    ("relpersistence", s("p")),
                    ("relkind", s("i")),
                    ("relnatts", V::Int(nkeys)),
                    ("relchecks", V::Int(0)),
                    ("relhasrules", V::Bool(false)),
                    ("relhastriggers", V::Bool(false)),
                    ("relhassubclass", V::Bool(false)),
                    ("relrowsecurity", V::Bool(false)),
                    ("relforcerowsecurity", V::Bool(false)),
                    ("relispopulated", V::Bool(true)),
                    ("relreplident", s("n")),
                    ("relispartition", V::Bool(false)),
                ],
            );
            for (i, key) in r.primary_key.iter().enumerate() {
                let Ok(field) = r.schema.field_with_name(key) else {
                    continue;
                };
                let typ = type_oid(field);
                add(
                    "pg_attribute",
                    vec![
                        ("attrelid", V::Oid(r.pkey_oid())),
                        ("attname", s(key.clone())),
                        ("atttypid", V::Oid(typ)),
                        (
                            "attlen",
                            V::Int(i64::from(pg_type_by_oid(typ).map_or(-1, |t| t.len))),
                        ),
                        ("attnum", V::Int(i64::try_from(i + 1).unwrap_or(0))),
                        ("attndims", V::Int(0)),
                        ("atttypmod", V::Int(i64::from(typmod(field)))),
                        ("attnotnull", V::Bool(true)),
                        ("atthasdef", V::Bool(false)),
                        ("attidentity", s("")),
                        ("attgenerated", s("")),
                        ("attisdropped", V::Bool(false)),
                        ("attislocal", V::Bool(true)),
                        ("attinhcount", V::Int(0)),
                        (
                            "attcollation",
                            V::Oid(if typ == 25 || typ == 1043 { 100 } else { 0 }),
                        ),
                    ],
                );
            }
            add(
                "pg_index",
                vec![
                    ("indexrelid", V::Oid(r.pkey_oid())),
                    ("indrelid", V::Oid(r.oid)),
                    ("indnatts", V::Int(nkeys)),
                    ("indnkeyatts", V::Int(nkeys)),
                    ("indisunique", V::Bool(true)),
                    ("indnullsnotdistinct", V::Bool(false)),
                    ("indisprimary", V::Bool(true)),
                    ("indisexclusion", V::Bool(false)),
                    ("indimmediate", V::Bool(true)),
                    ("indisclustered", V::Bool(false)),
                    ("indisvalid", V::Bool(true)),
                    ("indcheckxmin", V::Bool(false)),
                    ("indisready", V::Bool(true)),
                    ("indislive", V::Bool(true)),
                    ("indisreplident", V::Bool(false)),
                    ("indkey", V::Ints(keys.clone())),
                    ("indoption", V::Ints(vec![0; keys.len()])),
                ],
            );
            add(
                "pg_constraint",
                vec![
                    ("oid", V::Oid(r.pkey_oid() + 1)),
                    ("conname", s(index)),
                    ("connamespace", V::Oid(PUBLIC_OID)),
                    ("contype", s("p")),
                    ("condeferrable", V::Bool(false)),
                    ("condeferred", V::Bool(false)),
                    ("convalidated", V::Bool(true)),
                    ("conrelid", V::Oid(r.oid)),
                    ("contypid", V::Oid(0)),
                    ("conindid", V::Oid(r.pkey_oid())),
                    ("conparentid", V::Oid(0)),
                    ("confrelid", V::Oid(0)),
                    ("conislocal", V::Bool(true)),
                    ("coninhcount", V::Int(0)),
                    ("connoinherit", V::Bool(true)),
                    ("conkey", V::Ints(keys)),
                ],
            );
        }
    }
    CATALOGS
        .iter()
        .map(|(name, spec)| {
            let table_rows = rows.get(name).map(Vec::as_slice).unwrap_or(&[]);
            Ok((*name, catalog_batch(spec, table_rows)?))
        })
        .collect()
}

/// A source's `WITH` options as `key=value`, as PostgreSQL keeps a foreign table's
/// options; values of keys that look secret are masked.
fn source_options(create: &str) -> Vec<String> {
    let Ok(parsed) = sabot_sql::parse(create) else {
        return Vec::new();
    };
    let Some(sabot_sql::Statement::CreateSource(cs)) =
        parsed.into_iter().next().map(|p| p.statement)
    else {
        return Vec::new();
    };
    let mut out: Vec<String> = cs
        .options
        .iter()
        .map(|(k, v)| {
            let secret = ["password", "secret", "token", "key.pem", "sasl.jaas"]
                .iter()
                .any(|w| k.to_ascii_lowercase().contains(w));
            format!("{k}={}", if secret { "********" } else { v.as_str() })
        })
        .collect();
    if let Some(f) = &cs.format {
        out.push(format!("format={}", f.format.to_ascii_lowercase()));
        out.push(format!("encode={}", f.encode.to_ascii_lowercase()));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Functions

type Body = Box<dyn Fn(&[ArrayRef], usize) -> DfResult<ArrayRef> + Send + Sync>;

/// A catalog function: a name, its arities (any argument types) and a vectorized body.
struct CatalogFn {
    name: &'static str,
    signature: Signature,
    ret: DataType,
    body: Body,
}

impl std::fmt::Debug for CatalogFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogFn")
            .field("name", &self.name)
            .finish()
    }
}

impl PartialEq for CatalogFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for CatalogFn {}
impl Hash for CatalogFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for CatalogFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.ret.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let scalar = !args.args.is_empty()
            && args
                .args
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let n = if args.args.is_empty() {
            rows
        } else {
            arrays.first().map_or(rows, |a| a.len())
        };
        let out = (self.body)(&arrays, n)?;
        if scalar || args.args.is_empty() && rows == 1 {
            Ok(ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::try_from_array(&out, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// An identifier as PostgreSQL's `quote_ident` writes it: quoted unless it is all
/// lowercase letters, digits and underscores, not starting with a digit.
pub fn quote_ident(v: &str) -> String {
    let plain = v
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_lowercase() || (i > 0 && c.is_ascii_digit()));
    if plain && !v.is_empty() {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('"', "\"\""))
    }
}

/// A value as PostgreSQL's `quote_literal` writes it (`E'...'` when it has backslashes).
fn quote_literal(v: &str) -> String {
    let body = v.replace('\'', "''");
    if v.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// PostgreSQL's `format(formatstr, args...)`: `%s` (the value as text, NULL as empty),
/// `%I` (an identifier, quoted as needed), `%L` (a literal, NULL as `NULL`) and `%%`,
/// each with an optional position (`%2$s`), `-` flag and width. Functions every query
/// can call (not only catalog reads).
pub fn general_functions() -> Vec<ScalarUDF> {
    let format = CatalogFn {
        name: "format",
        signature: Signature::variadic_any(Volatility::Stable),
        ret: DataType::Utf8,
        body: Box::new(|args, n| {
            let texts: Vec<StringArray> = args.iter().map(texts).collect::<DfResult<_>>()?;
            let (spec, values) = texts
                .split_first()
                .ok_or_else(|| DataFusionError::Plan("format() needs a format string".into()))?;
            let mut out = StringBuilder::new();
            for row in 0..n {
                if spec.is_null(row) {
                    out.append_null();
                    continue;
                }
                let arg = |i: usize| {
                    values
                        .get(i)
                        .map(|a| (!a.is_null(row)).then(|| a.value(row)))
                };
                out.append_value(format_row(spec.value(row), arg)?);
            }
            Ok(Arc::new(out.finish()))
        }),
    };
    vec![ScalarUDF::new_from_impl(format)]
}

/// One row of `format`: `arg(i)` is the i-th argument after the format string (`None`
/// past the last, `Some(None)` for NULL).
fn format_row<'a>(spec: &str, arg: impl Fn(usize) -> Option<Option<&'a str>>) -> DfResult<String> {
    let err = |m: &str| DataFusionError::Execution(m.to_string());
    let mut out = String::with_capacity(spec.len());
    let mut chars = spec.chars().peekable();
    let mut next = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let mut position = None;
        if chars.peek() == Some(&'$') {
            chars.next();
            let p: usize = digits
                .parse()
                .map_err(|_| err("format specifies argument 0"))?;
            position = Some(
                p.checked_sub(1)
                    .ok_or_else(|| err("format specifies argument 0"))?,
            );
            digits.clear();
        }
        let left = if digits.is_empty() && chars.peek() == Some(&'-') {
            chars.next();
            true
        } else {
            false
        };
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        // PostgreSQL allows widths up to INT_MAX; past a million a row would take a
        // megabyte of padding per value, so larger ones are refused.
        let width: usize = if digits.is_empty() {
            0
        } else {
            digits
                .parse()
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| err("format() width must be at most 1000000"))?
        };
        let kind = chars
            .next()
            .ok_or_else(|| err("unterminated format() type specifier"))?;
        let index = position.unwrap_or(next);
        next = index + 1;
        let value = arg(index).ok_or_else(|| err("too few arguments for format()"))?;
        let text = match (kind, value) {
            ('s', v) => v.unwrap_or("").to_string(),
            ('I', Some(v)) => quote_ident(v),
            ('I', None) => return Err(err("null values cannot be formatted as an SQL identifier")),
            ('L', Some(v)) => quote_literal(v),
            ('L', None) => "NULL".to_string(),
            (other, _) => {
                return Err(err(&format!(
                    "unrecognized format() type specifier \"{other}\""
                )))
            }
        };
        let pad = width.saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&text);
        }
    }
    Ok(out)
}

fn catalog_fn(
    name: &'static str,
    arities: &[usize],
    ret: DataType,
    body: impl Fn(&[ArrayRef], usize) -> DfResult<ArrayRef> + Send + Sync + 'static,
) -> CatalogFn {
    let sigs = arities
        .iter()
        .map(|&n| {
            if n == 0 {
                TypeSignature::Nullary
            } else {
                TypeSignature::Any(n)
            }
        })
        .collect();
    CatalogFn {
        name,
        signature: Signature::one_of(sigs, Volatility::Stable),
        ret,
        body: Box::new(body),
    }
}

/// An argument as OIDs (any integer or text type; NULL where not one).
fn oids(a: &ArrayRef) -> DfResult<UInt32Array> {
    let ints = arrow::compute::cast(a, &DataType::Int64)?;
    let ints = ints.as_primitive::<arrow::datatypes::Int64Type>();
    Ok(ints
        .iter()
        .map(|v| v.and_then(|v| u32::try_from(v).ok()))
        .collect())
}

fn int64s(a: &ArrayRef) -> DfResult<Int64Array> {
    Ok(arrow::compute::cast(a, &DataType::Int64)?
        .as_primitive::<arrow::datatypes::Int64Type>()
        .clone())
}

fn texts(a: &ArrayRef) -> DfResult<StringArray> {
    Ok(arrow::compute::cast(a, &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

fn constant_text(n: usize, v: Option<&str>) -> ArrayRef {
    Arc::new(StringArray::from(vec![v; n]))
}

/// `true` for each row whose first argument is not NULL (privilege and visibility checks:
/// everything is visible and allowed).
fn all_true(args: &[ArrayRef], n: usize) -> DfResult<ArrayRef> {
    Ok(Arc::new(match args.first() {
        Some(a) => (0..n)
            .map(|i| a.is_valid(i).then_some(true))
            .collect::<BooleanArray>(),
        None => BooleanArray::from(vec![true; n]),
    }))
}

fn by_oid(args: &[ArrayRef], f: impl Fn(u32) -> Option<String>) -> DfResult<ArrayRef> {
    let Some(a) = args.first() else {
        return Err(DataFusionError::Plan("missing argument".into()));
    };
    let o = oids(a)?;
    Ok(Arc::new(
        o.iter().map(|v| v.and_then(&f)).collect::<StringArray>(),
    ))
}

fn functions(lookup: &Arc<Lookup>) -> Vec<CatalogFn> {
    let mut fns = vec![
        catalog_fn("format_type", &[1, 2], DataType::Utf8, |args, _| {
            let o = oids(&args[0])?;
            let m = match args.get(1) {
                Some(m) => Some(int64s(m)?),
                None => None,
            };
            Ok(Arc::new(
                (0..o.len())
                    .map(|i| {
                        let oid = o.is_valid(i).then(|| o.value(i))?;
                        let typmod = m
                            .as_ref()
                            .filter(|m| m.is_valid(i))
                            .and_then(|m| i32::try_from(m.value(i)).ok());
                        Some(type_display(oid, typmod).unwrap_or_else(|| "???".to_string()))
                    })
                    .collect::<StringArray>(),
            ))
        }),
        catalog_fn("pg_get_userbyid", &[1], DataType::Utf8, |args, _| {
            by_oid(args, |_| Some(OWNER.to_string()))
        }),
        catalog_fn("pg_encoding_to_char", &[1], DataType::Utf8, |args, _| {
            by_oid(args, |e| {
                Some(if e == 6 { "UTF8" } else { "SQL_ASCII" }.to_string())
            })
        }),
        catalog_fn("current_database", &[0], DataType::Utf8, |_, n| {
            Ok(constant_text(n, Some(DATABASE)))
        }),
        catalog_fn("current_schema", &[0], DataType::Utf8, |_, n| {
            Ok(constant_text(n, Some("public")))
        }),
    ];
    for name in ["current_user", "session_user", "user"] {
        let l = Arc::clone(lookup);
        fns.push(catalog_fn(name, &[0], DataType::Utf8, move |_, n| {
            Ok(constant_text(n, Some(l.session.user())))
        }));
    }
    fns.extend([
        catalog_fn("version", &[0], DataType::Utf8, |_, n| {
            let v = format!(
                "PostgreSQL {SERVER_VERSION} {} on {}, Sabot {}",
                "compatible",
                std::env::consts::ARCH,
                env!("CARGO_PKG_VERSION")
            );
            Ok(constant_text(n, Some(&v)))
        }),
        catalog_fn("pg_backend_pid", &[0], DataType::Int32, |_, n| {
            let pid = i32::try_from(std::process::id()).unwrap_or(0);
            Ok(Arc::new(arrow::array::Int32Array::from(vec![pid; n])))
        }),
        catalog_fn("pg_get_expr", &[2, 3], DataType::Utf8, |args, _| {
            Ok(Arc::new(texts(&args[0])?))
        }),
        catalog_fn("quote_ident", &[1], DataType::Utf8, |args, _| {
            let t = texts(&args[0])?;
            Ok(Arc::new(
                t.iter()
                    .map(|v| v.map(quote_ident))
                    .collect::<StringArray>(),
            ))
        }),
        catalog_fn("pg_size_pretty", &[1], DataType::Utf8, |args, _| {
            let v = int64s(&args[0])?;
            Ok(Arc::new(
                v.iter()
                    .map(|b| b.map(size_pretty))
                    .collect::<StringArray>(),
            ))
        }),
    ]);
    for name in [
        "obj_description",
        "col_description",
        "shobj_description",
        "pg_get_partkeydef",
        "pg_get_statisticsobjdef_columns",
        "pg_get_triggerdef",
        "pg_get_ruledef",
        "pg_get_function_arguments",
        "pg_get_function_result",
        "pg_get_function_identity_arguments",
    ] {
        fns.push(catalog_fn(name, &[1, 2, 3], DataType::Utf8, |args, n| {
            Ok(constant_text(args.first().map_or(n, |a| a.len()), None))
        }));
    }
    for name in [
        "pg_table_is_visible",
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_collation_is_visible",
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_column_privilege",
        "has_any_column_privilege",
        "has_function_privilege",
        "has_sequence_privilege",
        "pg_has_role",
    ] {
        fns.push(catalog_fn(name, &[1, 2, 3, 4], DataType::Boolean, all_true));
    }
    // Sabot has no logical replication: nothing is publishable.
    fns.push(catalog_fn(
        "pg_relation_is_publishable",
        &[1],
        DataType::Boolean,
        |args, _| {
            Ok(Arc::new(
                (0..args[0].len())
                    .map(|i| args[0].is_valid(i).then_some(false))
                    .collect::<BooleanArray>(),
            ))
        },
    ));
    fns.push(catalog_fn(
        "sabot_options_array",
        &[1],
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        |args, _| {
            let mut b = ListBuilder::new(StringBuilder::new());
            let lists = args[0].as_list_opt::<i32>();
            for i in 0..args[0].len() {
                match lists.filter(|l| l.is_valid(i)) {
                    Some(l) => {
                        let items = l.value(i);
                        let items = texts(&items)?;
                        for kv in items.iter().flatten() {
                            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                            b.values()
                                .append_value(format!("{k} '{}'", v.replace('\'', "''")));
                        }
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            Ok(Arc::new(b.finish()))
        },
    ));
    let l = Arc::clone(lookup);
    fns.push(catalog_fn(
        "pg_get_viewdef",
        &[1, 2],
        DataType::Utf8,
        move |args, _| {
            by_oid(args, |o| {
                l.by_oid
                    .get(&o)
                    .filter(|r| r.kind == 'm')
                    .map(|r| format!(" {};", r.definition.trim().trim_end_matches(';')))
            })
        },
    ));
    let l = Arc::clone(lookup);
    fns.push(catalog_fn(
        "pg_get_indexdef",
        &[1, 3],
        DataType::Utf8,
        move |args, _| {
            let col = match args.get(1) {
                Some(c) => Some(int64s(c)?),
                None => None,
            };
            let o = oids(&args[0])?;
            Ok(Arc::new(
                (0..o.len())
                    .map(|i| {
                        let t = l.pkey_owner(o.is_valid(i).then(|| o.value(i))?)?;
                        match col.as_ref().filter(|c| c.is_valid(i)).map(|c| c.value(i)) {
                            Some(k) if k > 0 => {
                                t.primary_key.get(usize::try_from(k - 1).ok()?).cloned()
                            }
                            _ => Some(format!(
                                "CREATE UNIQUE INDEX {}_pkey ON public.{} USING btree ({})",
                                t.name,
                                t.name,
                                t.primary_key.join(", ")
                            )),
                        }
                    })
                    .collect::<StringArray>(),
            ))
        },
    ));
    let l = Arc::clone(lookup);
    fns.push(catalog_fn(
        "pg_get_constraintdef",
        &[1, 2],
        DataType::Utf8,
        move |args, _| {
            by_oid(args, |o| {
                l.constraint_owner(o)
                    .map(|t| format!("PRIMARY KEY ({})", t.primary_key.join(", ")))
            })
        },
    ));
    let l = Arc::clone(lookup);
    fns.push(catalog_fn(
        "pg_backend_pid",
        &[0],
        DataType::Int32,
        move |_, n| {
            Ok(Arc::new(arrow::array::Int32Array::from(vec![
                l.session.pid;
                n
            ])))
        },
    ));
    for (name, terminate) in [("pg_cancel_backend", false), ("pg_terminate_backend", true)] {
        let l = Arc::clone(lookup);
        fns.push(catalog_fn(
            name,
            &[1, 2],
            DataType::Boolean,
            move |args, _| {
                let pids = int64s(&args[0])?;
                Ok(Arc::new(
                    pids.iter()
                        .map(|p| {
                            let pid = i32::try_from(p?).ok()?;
                            let control = l.session.sessions.as_ref()?;
                            Some(if terminate {
                                control.terminate(pid)
                            } else {
                                control.cancel(pid)
                            })
                        })
                        .collect::<BooleanArray>(),
                ))
            },
        ));
    }
    let l = Arc::clone(lookup);
    fns.push(catalog_fn(
        "current_setting",
        &[1, 2],
        DataType::Utf8,
        move |args, _| {
            let names = texts(&args[0])?;
            let missing_ok = match args.get(1) {
                Some(m) => arrow::compute::cast(m, &DataType::Boolean)?
                    .as_boolean()
                    .iter()
                    .collect::<Vec<_>>(),
                None => vec![Some(false); names.len()],
            };
            let mut out = StringBuilder::new();
            for (i, name) in names.iter().enumerate() {
                match name.map(|n| (n, l.session.setting(&n.to_ascii_lowercase()))) {
                    None => out.append_null(),
                    Some((_, Some(v))) => out.append_value(v),
                    Some((_, None)) if missing_ok.get(i).copied().flatten() == Some(true) => {
                        out.append_null()
                    }
                    Some((n, None)) => {
                        return Err(DataFusionError::Execution(format!(
                            "unrecognized configuration parameter \"{n}\""
                        )))
                    }
                }
            }
            Ok(Arc::new(out.finish()))
        },
    ));
    for (name, upper) in [("array_lower", false), ("array_upper", true)] {
        fns.push(catalog_fn(name, &[2], DataType::Int32, move |args, _| {
            // One-dimensional arrays: bounds 1 and the length, NULL when empty.
            let lists = args[0].as_list_opt::<i32>();
            let dims = int64s(&args[1])?;
            Ok(Arc::new(
                (0..args[0].len())
                    .map(|i| {
                        let l = lists.filter(|l| l.is_valid(i))?;
                        let len = l.value_length(i);
                        (dims.is_valid(i) && dims.value(i) == 1 && len > 0).then_some(if upper {
                            len
                        } else {
                            1
                        })
                    })
                    .collect::<arrow::array::Int32Array>(),
            ))
        }));
    }
    fns.push(catalog_fn(
        "parse_ident",
        &[1, 2],
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        |args, _| {
            let t = texts(&args[0])?;
            let mut b = ListBuilder::new(StringBuilder::new());
            for v in t.iter() {
                match v {
                    None => b.append(false),
                    Some(v) => {
                        for part in split_ident(v) {
                            b.values().append_value(part);
                        }
                        b.append(true);
                    }
                }
            }
            Ok(Arc::new(b.finish()))
        },
    ));
    fns.push(catalog_fn(
        "pg_get_serial_sequence",
        &[2],
        DataType::Utf8,
        |args, n| {
            // Sabot has no sequences.
            Ok(constant_text(args.first().map_or(n, |a| a.len()), None))
        },
    ));
    fns.push(catalog_fn(
        "json_build_object",
        &[0, 2, 4, 6, 8, 10, 12, 14, 16],
        DataType::Utf8,
        json_build_object,
    ));
    fns.push(catalog_fn(
        "sabot_subscripts",
        &[1],
        DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
        |args, _| {
            let mut b = ListBuilder::new(Int32Builder::new());
            let lists = args[0].as_list_opt::<i32>();
            for i in 0..args[0].len() {
                match lists.filter(|l| l.is_valid(i)) {
                    Some(l) => {
                        let len = l.value_length(i);
                        for k in 1..=len {
                            b.values().append_value(k);
                        }
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            Ok(Arc::new(b.finish()))
        },
    ));
    fns.push(catalog_fn(
        "to_regtype",
        &[1],
        DataType::UInt32,
        |args, _| {
            let t = texts(&args[0])?;
            Ok(Arc::new(
                t.iter()
                    .map(|v| {
                        let v = v?
                            .trim()
                            .trim_start_matches("pg_catalog.")
                            .to_ascii_lowercase();
                        TYPES
                            .iter()
                            .find(|t| t.name == v || t.display == v)
                            .map(|t| t.oid)
                    })
                    .collect::<UInt32Array>(),
            ))
        },
    ));
    let l = Arc::clone(lookup);
    fns.push(catalog_fn(
        "to_regclass",
        &[1],
        DataType::UInt32,
        move |args, _| {
            let t = texts(&args[0])?;
            Ok(Arc::new(
                t.iter()
                    .map(|v| v.and_then(|v| l.relation(v)))
                    .collect::<UInt32Array>(),
            ))
        },
    ));
    let l = Arc::clone(lookup);
    fns.push(catalog_fn(
        "sabot_regclass_name",
        &[1],
        DataType::Utf8,
        move |args, _| {
            by_oid(args, |o| {
                Some(l.by_oid.get(&o).map_or(o.to_string(), |r| r.name.clone()))
            })
        },
    ));
    let l = Arc::clone(lookup);
    let size = move |args: &[ArrayRef], _: usize| -> DfResult<ArrayRef> {
        let o = oids(&args[0])?;
        Ok(Arc::new(
            o.iter()
                .map(|v| {
                    v.and_then(|o| l.by_oid.get(&o))
                        .map(|r| i64::try_from(r.bytes).unwrap_or(i64::MAX))
                })
                .collect::<Int64Array>(),
        ))
    };
    let size = Arc::new(size);
    for name in [
        "pg_table_size",
        "pg_relation_size",
        "pg_total_relation_size",
    ] {
        let size = Arc::clone(&size);
        fns.push(catalog_fn(name, &[1, 2], DataType::Int64, move |a, n| {
            size(a, n)
        }));
    }
    fns
}

/// `json_build_object(k1, v1, ...)`: a JSON object per row, values typed as JSON
/// (numbers and booleans bare, text quoted, NULL as null).
fn json_build_object(args: &[ArrayRef], n: usize) -> DfResult<ArrayRef> {
    let rows = args.first().map_or(n, |a| a.len());
    let mut texts_of = Vec::with_capacity(args.len());
    for a in args {
        texts_of.push(texts(a)?);
    }
    let mut out = StringBuilder::new();
    for row in 0..rows {
        let mut obj = serde_json::Map::new();
        for pair in 0..args.len() / 2 {
            let (k, v) = (&texts_of[2 * pair], &args[2 * pair + 1]);
            if !k.is_valid(row) {
                return Err(DataFusionError::Execution(
                    "argument 1 cannot be null: object keys must be text".into(),
                ));
            }
            let text = &texts_of[2 * pair + 1];
            let value = if !v.is_valid(row) {
                serde_json::Value::Null
            } else if v.data_type().is_numeric() || *v.data_type() == DataType::Boolean {
                serde_json::from_str(text.value(row))
                    .unwrap_or_else(|_| serde_json::Value::String(text.value(row).to_string()))
            } else {
                serde_json::Value::String(text.value(row).to_string())
            };
            obj.insert(k.value(row).to_string(), value);
        }
        out.append_value(serde_json::Value::Object(obj).to_string());
    }
    Ok(Arc::new(out.finish()))
}

/// A qualified identifier's parts: unquoted parts lower-cased, `"..."` kept as written
/// (`""` inside quotes is one `"`).
fn split_ident(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = text.trim().chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c if quoted => cur.push(c),
            c => cur.extend(c.to_lowercase()),
        }
    }
    parts.push(cur);
    parts
}

fn size_pretty(bytes: i64) -> String {
    let mut v = bytes;
    for unit in ["bytes", "kB", "MB", "GB"] {
        if v.abs() < 10 * 1024 {
            return format!("{v} {unit}");
        }
        v = (v + 512) / 1024;
    }
    format!("{v} TB")
}

// ---------------------------------------------------------------------------------------
// Query rewrites

/// Rewrites PostgreSQL spellings in `query` that DataFusion does not plan (see the module
/// docs). `user_relations` are names that shadow catalog tables.
///
/// The subquery reshapings (a plain scalar subquery read through `max`, `IN` as a count,
/// subqueries over always-empty catalogs as NULL) are only exact for the catalog queries
/// clients send, so they apply only to queries that read a catalog table; a user's query
/// that merely calls a catalog function keeps PostgreSQL's semantics.
pub fn rewrite(query: &mut Query, user_relations: &HashSet<String>) {
    let reshape = reads_catalog(query, user_relations);
    let mut v = Rewriter {
        user_relations,
        reshape,
    };
    let _ = query.visit(&mut v);
}

/// Whether `query` reads a `pg_catalog` or `information_schema` table.
fn reads_catalog(query: &Query, user_relations: &HashSet<String>) -> bool {
    struct Find<'a>(bool, &'a HashSet<String>);
    impl ast::Visitor for Find<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name, args: None, ..
            } = f
            {
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .map(|p| p.to_string().to_ascii_lowercase())
                    .collect();
                self.0 |= match parts.as_slice() {
                    [schema, _] => schema == "pg_catalog" || schema == "information_schema",
                    [n] => is_catalog_table(n) && !self.1.contains(n),
                    _ => false,
                };
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Find(false, user_relations);
    let _ = ast::Visit::visit(query, &mut f);
    f.0
}

/// Whether `query` reads the system catalogs (so they must be registered).
pub fn mentions_catalog(query: &Query) -> bool {
    const HINTS: &[&str] = &[
        "pg_",
        "information_schema",
        "regclass",
        "regtype",
        "current_schema",
        "current_database",
        "current_user",
        "session_user",
        "version(",
        "format_type",
        "has_",
        "_description",
        "quote_ident",
        "to_regclass",
        "to_regtype",
        "current_setting",
        "parse_ident",
        "array_upper",
    ];
    let text = query.to_string().to_ascii_lowercase();
    HINTS.iter().any(|h| text.contains(h))
}

struct Rewriter<'a> {
    user_relations: &'a HashSet<String>,
    /// Apply the subquery reshapings (see [`rewrite`]).
    reshape: bool,
}

fn unqualified(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(schema), ObjectNamePart::Identifier(n)]
            if schema.value.eq_ignore_ascii_case("pg_catalog") =>
        {
            Some(n.value.clone())
        }
        _ => None,
    }
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// The last part of a custom type name, lower case (`pg_catalog.regclass` → `regclass`).
fn custom_type(dt: &ast::DataType) -> Option<String> {
    match dt {
        ast::DataType::Custom(name, _) => name.0.last().map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
            other => other.to_string().to_ascii_lowercase(),
        }),
        ast::DataType::Regclass => Some("regclass".into()),
        _ => None,
    }
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if !self.reshape {
            return ControlFlow::Continue(());
        }
        fn each_select(body: &mut ast::SetExpr) {
            match body {
                ast::SetExpr::Select(select) => {
                    blank_empty_select(select);
                    exists_in_outputs(select);
                }
                ast::SetExpr::SetOperation { left, right, .. } => {
                    each_select(left);
                    each_select(right);
                }
                _ => {}
            }
        }
        each_select(query.body.as_mut());
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        fn each_select(body: &mut ast::SetExpr) {
            match body {
                ast::SetExpr::Select(select) => unique_output_names(select),
                ast::SetExpr::SetOperation { left, right, .. } => {
                    each_select(left);
                    each_select(right);
                }
                _ => {}
            }
        }
        each_select(query.body.as_mut());
        if self.reshape {
            order_by_subqueries(query);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = factor
        {
            if let Some(n) = unqualified(name) {
                *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(n))]);
            }
        }
        if let Some(derived) = scalar_function_in_from(factor) {
            *factor = derived;
        }
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
        {
            if let [ObjectNamePart::Identifier(id)] = name.0.as_slice() {
                let n = id.value.to_ascii_lowercase();
                if is_catalog_table(&n) && !self.user_relations.contains(&n) {
                    name.0
                        .insert(0, ObjectNamePart::Identifier(Ident::new("pg_catalog")));
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let replacement = match expr {
            Expr::CompoundFieldAccess { root, access_chain }
                if access_chain
                    .iter()
                    .all(|a| matches!(a, ast::AccessExpr::Dot(Expr::Identifier(_)))) =>
            {
                // `(record).field` as get_field(record, 'field').
                let mut e = (**root).clone();
                for a in access_chain.iter() {
                    if let ast::AccessExpr::Dot(Expr::Identifier(field)) = a {
                        e = call(
                            "get_field",
                            vec![
                                e,
                                Expr::value(ast::Value::SingleQuotedString(field.value.clone())),
                            ],
                        );
                    }
                }
                Some(e)
            }
            Expr::Function(f)
                if f.name
                    .to_string()
                    .eq_ignore_ascii_case("information_schema._pg_expandarray") =>
            {
                // PostgreSQL's set-returning (x, n) pairs of an array's elements and
                // their subscripts: one row per element, as a struct.
                match &f.args {
                    FunctionArguments::List(list) => match list.args.first() {
                        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(arr))) => {
                            let lit =
                                |v: &str| Expr::value(ast::Value::SingleQuotedString(v.into()));
                            Some(call(
                                "named_struct",
                                vec![
                                    lit("x"),
                                    call("unnest", vec![arr.clone()]),
                                    lit("n"),
                                    call(
                                        "unnest",
                                        vec![call("sabot_subscripts", vec![arr.clone()])],
                                    ),
                                ],
                            ))
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            Expr::Function(f) => {
                if let Some(n) = unqualified(&f.name) {
                    f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(n))]);
                }
                if f.name
                    .to_string()
                    .eq_ignore_ascii_case("generate_subscripts")
                {
                    if let FunctionArguments::List(list) = &f.args {
                        if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(arr))) =
                            list.args.first()
                        {
                            let subscripts = call("sabot_subscripts", vec![arr.clone()]);
                            *expr = call("unnest", vec![subscripts]);
                            return ControlFlow::Continue(());
                        }
                    }
                }
                match &f.args {
                    FunctionArguments::Subquery(q)
                        if self.reshape && f.name.to_string().eq_ignore_ascii_case("array") =>
                    {
                        array_subquery(q)
                    }
                    _ => None,
                }
            }
            Expr::BinaryOp { op, .. } => {
                if let BinaryOperator::PGCustomBinaryOperator(parts) = op {
                    let plain = match parts.last().map(String::as_str) {
                        Some("~") => Some(BinaryOperator::PGRegexMatch),
                        Some("~*") => Some(BinaryOperator::PGRegexIMatch),
                        Some("!~") => Some(BinaryOperator::PGRegexNotMatch),
                        Some("!~*") => Some(BinaryOperator::PGRegexNotIMatch),
                        Some("=") => Some(BinaryOperator::Eq),
                        Some("<>") => Some(BinaryOperator::NotEq),
                        Some("<") => Some(BinaryOperator::Lt),
                        Some(">") => Some(BinaryOperator::Gt),
                        Some("<=") => Some(BinaryOperator::LtEq),
                        Some(">=") => Some(BinaryOperator::GtEq),
                        Some("||") => Some(BinaryOperator::StringConcat),
                        _ => None,
                    };
                    if let Some(p) = plain {
                        *op = p;
                    }
                }
                None
            }
            Expr::Collate { expr: inner, .. } => Some((**inner).clone()),
            Expr::Subquery(q) if self.reshape && reads_only_empty(q) => {
                Some(Expr::value(ast::Value::Null))
            }
            Expr::Subquery(q) if self.reshape => {
                aggregate_scalar_subquery(q);
                hoist_outer_filters(q)
            }
            Expr::Cast {
                expr: inner,
                data_type,
                ..
            } => match custom_type(data_type).as_deref() {
                Some("text" | "name" | "char" | "\"char\"" | "bpchar" | "varchar") => {
                    *data_type = ast::DataType::Text;
                    None
                }
                Some("oid" | "regproc" | "regprocedure" | "regnamespace" | "regrole" | "xid") => {
                    *data_type = ast::DataType::BigInt(None);
                    None
                }
                Some("regclass") => Some(match &**inner {
                    Expr::Value(v) if matches!(v.value, ast::Value::SingleQuotedString(_)) => {
                        call("to_regclass", vec![(**inner).clone()])
                    }
                    other => call("sabot_regclass_name", vec![other.clone()]),
                }),
                Some("regtype") => Some(call(
                    "format_type",
                    vec![(**inner).clone(), Expr::Value(ast::Value::Null.into())],
                )),
                _ => None,
            },
            _ => None,
        };
        if let Some(r) = replacement {
            *expr = r;
        }
        ControlFlow::Continue(())
    }
}

/// `ARRAY(SELECT x FROM unnest(arr) x)` is `arr`, and `ARRAY(SELECT 'p' || x FROM
/// unnest(arr) x)` (psql's `toast.` options) is `arr` with each element prefixed, built
/// without a correlated table function: split on a unit separator after joining.
fn array_of_unnest(
    select: &ast::Select,
    args: &ast::TableFunctionArgs,
    from: &ast::TableWithJoins,
) -> Option<Expr> {
    let arr = args.args.first().and_then(|a| match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
        _ => None,
    })?;
    let TableFactor::Table { alias, .. } = &from.relation else {
        return None;
    };
    let x = alias.as_ref().map(|a| a.name.value.to_ascii_lowercase())?;
    let [ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. }] =
        select.projection.as_slice()
    else {
        return None;
    };
    let is_x = |e: &Expr| matches!(e, Expr::Identifier(i) if i.value.to_ascii_lowercase() == x);
    if is_x(e) {
        return Some(arr);
    }
    let Expr::BinaryOp {
        left,
        op: BinaryOperator::StringConcat,
        right,
    } = e
    else {
        return None;
    };
    if !is_x(right) {
        return None;
    }
    let sep = call(
        "chr",
        vec![Expr::value(ast::Value::Number("31".into(), false))],
    );
    let joined = call(
        "array_to_string",
        vec![
            arr,
            Expr::BinaryOp {
                left: Box::new(sep.clone()),
                op: BinaryOperator::StringConcat,
                right: left.clone(),
            },
        ],
    );
    Some(call(
        "string_to_array",
        vec![
            Expr::BinaryOp {
                left: left.clone(),
                op: BinaryOperator::StringConcat,
                right: Box::new(joined),
            },
            sep,
        ],
    ))
}

/// Catalogs that Sabot never has rows in.
const ALWAYS_EMPTY: &[&str] = &[
    "pg_policy",
    "pg_trigger",
    "pg_statistic_ext",
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_inherits",
    "pg_rewrite",
    "pg_attrdef",
    "pg_event_trigger",
    "pg_description",
    "pg_shdescription",
    "pg_auth_members",
    "pg_depend",
    "pg_extension",
    "pg_enum",
    "pg_range",
    "pg_sequence",
    "pg_partitioned_table",
];

/// Whether a (scalar) subquery's rows all come from an always-empty catalog, so its
/// value is NULL.
fn reads_only_empty(q: &Query) -> bool {
    let ast::SetExpr::Select(select) = q.body.as_ref() else {
        return false;
    };
    select_is_empty(select)
}

/// A SELECT that reads an always-empty catalog through inner or left joins from it (or a
/// comma join) has no rows, so its output expressions are never evaluated: those with
/// subqueries (which DataFusion may not be able to plan, like psql's policy query with
/// `= ANY (pol.polroles)`) are replaced by NULL.
fn blank_empty_select(select: &mut ast::Select) {
    if !select_is_empty(select) {
        return;
    }
    for item in &mut select.projection {
        let (ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. }) =
            item
        else {
            continue;
        };
        if has_subquery(e) {
            *e = Expr::value(ast::Value::Null);
        }
    }
}

/// Whether a SELECT has no rows because it reads an always-empty catalog through inner
/// or left joins from it (or a comma join).
fn select_is_empty(select: &ast::Select) -> bool {
    let empty = |f: &TableFactor| {
        matches!(f, TableFactor::Table { name, args: None, .. }
            if name.0.last().is_some_and(|p| ALWAYS_EMPTY.contains(&p.to_string().to_ascii_lowercase().as_str())))
    };
    let driven_by_empty = select.from.iter().any(|twj| {
        empty(&twj.relation)
            && twj.joins.iter().all(|j| {
                matches!(
                    j.join_operator,
                    ast::JoinOperator::Join(_)
                        | ast::JoinOperator::Inner(_)
                        | ast::JoinOperator::Left(_)
                        | ast::JoinOperator::LeftOuter(_)
                        | ast::JoinOperator::CrossJoin(_)
                )
            })
    });
    // An aggregate without GROUP BY has a row even over no input (count(*) = 0).
    driven_by_empty
        && !select.projection.iter().any(|item| match item {
            ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => {
                has_aggregate(e)
            }
            _ => false,
        })
}

/// Whether `e` calls an aggregate of its own SELECT (not one inside a subquery).
fn has_aggregate(e: &Expr) -> bool {
    struct Find {
        found: bool,
        depth: usize,
    }
    impl ast::Visitor for Find {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if self.depth == 0
                && matches!(e, Expr::Function(f)
                    if AGGREGATES.contains(&f.name.to_string().to_ascii_lowercase().as_str()))
            {
                self.found = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Find {
        found: false,
        depth: 0,
    };
    let _ = ast::Visit::visit(e, &mut f);
    f.found
}

fn has_subquery(e: &Expr) -> bool {
    struct Find(bool);
    impl ast::Visitor for Find {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if matches!(
                e,
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. }
            ) || matches!(e, Expr::Function(f) if matches!(f.args, FunctionArguments::Subquery(_)))
            {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Find(false);
    let _ = ast::Visit::visit(e, &mut f);
    f.0
}

/// `EXISTS (q)` and `x IN (q)` in an output column as counting scalar subqueries:
/// DataFusion decorrelates EXISTS and IN only in filters, a counting scalar subquery
/// anywhere.
fn exists_in_outputs(select: &mut ast::Select) {
    struct Swap;
    impl VisitorMut for Swap {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::InSubquery {
                expr,
                subquery,
                negated,
            } = e
            {
                // x IN (q) as (SELECT count(*) FROM (q) AS s(v) WHERE s.v = x) > 0: a
                // correlated count DataFusion decorrelates. (NULLs give false, not NULL.)
                let sql = format!(
                    "SELECT ((SELECT count(*) FROM ({subquery}) AS __sabot_in(v) WHERE __sabot_in.v = {expr}) {} 0)",
                    if *negated { "=" } else { ">" }
                );
                if let Ok(mut parsed) = sabot_sql::sqlparser::parser::Parser::parse_sql(
                    &sabot_sql::sqlparser::dialect::PostgreSqlDialect {},
                    &sql,
                ) {
                    if let Some(ast::Statement::Query(q)) = parsed.pop() {
                        if let ast::SetExpr::Select(sel) = *q.body {
                            if let Some(ast::SelectItem::UnnamedExpr(new)) =
                                sel.projection.into_iter().next()
                            {
                                *e = new;
                            }
                        }
                    }
                }
                return ControlFlow::Continue(());
            }
            let Expr::Exists { subquery, negated } = e else {
                return ControlFlow::Continue(());
            };
            let mut q = subquery.as_ref().clone();
            if let ast::SetExpr::Select(inner) = q.body.as_mut() {
                inner.projection = vec![ast::SelectItem::UnnamedExpr(Expr::Function(Function {
                    name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new("count"))]),
                    uses_odbc_syntax: false,
                    parameters: FunctionArguments::None,
                    args: FunctionArguments::List(FunctionArgumentList {
                        duplicate_treatment: None,
                        args: vec![FunctionArg::Unnamed(FunctionArgExpr::Wildcard)],
                        clauses: vec![],
                    }),
                    filter: None,
                    null_treatment: None,
                    over: None,
                    within_group: vec![],
                }))];
                *e = Expr::BinaryOp {
                    left: Box::new(Expr::Subquery(Box::new(q))),
                    op: if *negated {
                        BinaryOperator::Eq
                    } else {
                        BinaryOperator::Gt
                    },
                    right: Box::new(Expr::value(ast::Value::Number("0".into(), false))),
                };
            }
            ControlFlow::Continue(())
        }
    }
    for item in &mut select.projection {
        if let ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } =
            item
        {
            let _ = e.visit(&mut Swap);
        }
    }
}

/// `ORDER BY` an expression with a subquery (Grafana orders tables by "is its schema on
/// the search path"): DataFusion plans subqueries only in projections and filters, so
/// the sort keys become hidden output columns of an inner query, and an outer query
/// sorts by them and returns the original columns.
fn order_by_subqueries(q: &mut Query) {
    let Some(ast::OrderBy {
        kind: ast::OrderByKind::Expressions(keys),
        ..
    }) = &q.order_by
    else {
        return;
    };
    if !keys.iter().any(|k| has_subquery(&k.expr)) {
        return;
    }
    let ast::SetExpr::Select(select) = q.body.as_ref() else {
        return;
    };
    let mut names = Vec::new();
    for item in &select.projection {
        match item {
            ast::SelectItem::ExprWithAlias { alias, .. } => names.push(alias.to_string()),
            ast::SelectItem::UnnamedExpr(Expr::Identifier(id)) => names.push(id.to_string()),
            ast::SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => match parts.last() {
                Some(p) => names.push(p.to_string()),
                None => return,
            },
            _ => return,
        }
    }
    let mut inner = q.clone();
    inner.order_by = None;
    inner.limit_clause = None;
    inner.fetch = None;
    let mut order = Vec::new();
    if let ast::SetExpr::Select(inner_select) = inner.body.as_mut() {
        for (k, key) in keys.iter().enumerate() {
            let positional = matches!(&key.expr, Expr::Value(v)
                if matches!(v.value, ast::Value::Number(..)));
            if positional {
                order.push(key.to_string());
                continue;
            }
            let alias = format!("__sabot_sort_{k}");
            inner_select
                .projection
                .push(ast::SelectItem::ExprWithAlias {
                    expr: key.expr.clone(),
                    alias: Ident::new(alias.clone()),
                });
            let mut key = key.clone();
            key.expr = Expr::Identifier(Ident::new(alias));
            order.push(key.to_string());
        }
        exists_in_outputs(inner_select);
    }
    let limit = q
        .limit_clause
        .as_ref()
        .map(|l| format!(" {l}"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT {} FROM ({inner}) AS __sabot_sorted ORDER BY {}{limit}",
        names.join(", "),
        order.join(", ")
    );
    if let Ok(mut parsed) = sabot_sql::sqlparser::parser::Parser::parse_sql(
        &sabot_sql::sqlparser::dialect::PostgreSqlDialect {},
        &sql,
    ) {
        if let Some(ast::Statement::Query(outer)) = parsed.pop() {
            *q = *outer;
        }
    }
}

/// PostgreSQL allows output columns with the same name (`SELECT NULL, NULL`); DataFusion
/// does not: a repeated unnamed expression gets an alias.
fn unique_output_names(select: &mut ast::Select) {
    let mut seen = HashSet::new();
    for (i, item) in select.projection.iter_mut().enumerate() {
        let name = match item {
            ast::SelectItem::UnnamedExpr(Expr::Identifier(id)) => id.value.clone(),
            ast::SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                parts.last().map(|p| p.value.clone()).unwrap_or_default()
            }
            ast::SelectItem::UnnamedExpr(e) => e.to_string(),
            ast::SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
            _ => continue,
        };
        if !seen.insert(name) {
            if let ast::SelectItem::UnnamedExpr(e) = item {
                *item = ast::SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: Ident::new(format!("?column?{}", i + 1)),
                };
            }
        }
    }
}

/// Aggregates that make a subquery return one row.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
];

/// A scalar subquery that selects one plain expression, `(SELECT e FROM .. WHERE ..)`,
/// as `(SELECT max(e) ...)`: DataFusion plans correlated scalar subqueries only when
/// aggregated. The catalog queries clients send match at most one row there, so the
/// answer is the same (PostgreSQL would raise an error for several rows).
fn aggregate_scalar_subquery(q: &mut Query) {
    if q.limit_clause.is_some() || q.fetch.is_some() {
        return;
    }
    let ast::SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    if select.distinct.is_some()
        || !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
        || select.having.is_some()
    {
        return;
    }
    let [item] = select.projection.as_mut_slice() else {
        return;
    };
    let (ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. }) = item
    else {
        return;
    };
    let aggregated = matches!(e, Expr::Function(f)
        if AGGREGATES.contains(&f.name.to_string().to_ascii_lowercase().as_str()));
    let constant = matches!(e, Expr::Value(_));
    if !aggregated && !constant {
        *e = call("max", vec![e.clone()]);
    }
}

/// A function returning a scalar or an array used as a table, `FROM f(args) AS x`:
/// PostgreSQL gives one row with column `x` (for `generate_series`, one row per value).
/// DataFusion has no such table functions, so it becomes a derived table,
/// `(SELECT f(args) AS x) AS x`, or for `generate_series` `(SELECT unnest(...) AS x)`.
fn scalar_function_in_from(factor: &TableFactor) -> Option<TableFactor> {
    const SCALAR: &[&str] = &[
        "string_to_array",
        "current_setting",
        "parse_ident",
        "current_schemas",
    ];
    let TableFactor::Table {
        name,
        args: Some(args),
        alias: Some(alias),
        ..
    } = factor
    else {
        return None;
    };
    if !alias.columns.is_empty() {
        return None;
    }
    let func = name.to_string().to_ascii_lowercase();
    let set_returning = func == "generate_series";
    if !set_returning && !SCALAR.contains(&func.as_str()) {
        return None;
    }
    let call = format!(
        "{func}({})",
        args.args
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let value = if set_returning {
        format!("unnest({call})")
    } else {
        call
    };
    let sql = format!("SELECT {value} AS {}", alias.name);
    let mut parsed = sabot_sql::sqlparser::parser::Parser::parse_sql(
        &sabot_sql::sqlparser::dialect::PostgreSqlDialect {},
        &sql,
    )
    .ok()?;
    let Some(ast::Statement::Query(subquery)) = parsed.pop() else {
        return None;
    };
    Some(TableFactor::Derived {
        lateral: false,
        subquery,
        alias: Some(alias.clone()),
        sample: None,
    })
}

/// The qualifier (alias, else table name) of each plain table in a FROM list.
fn inner_tables(from: &[ast::TableWithJoins]) -> Vec<(String, TableFactor)> {
    let mut out = Vec::new();
    for twj in from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            if let TableFactor::Table { name, alias, .. } = factor {
                let q = match alias {
                    Some(a) => a.name.value.to_ascii_lowercase(),
                    None => name
                        .0
                        .last()
                        .map(|p| p.to_string().to_ascii_lowercase())
                        .unwrap_or_default(),
                };
                out.push((q, factor.clone()));
            }
        }
    }
    out
}

fn conjuncts(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                *inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner, out);
        }
        other => out.push(other),
    }
}

fn and_all(parts: Vec<Expr>) -> Option<Expr> {
    parts.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    })
}

/// The qualifiers a condition names (`a` of `a.x`), and whether it names a bare column.
fn qualifiers(e: &Expr) -> (HashSet<String>, bool) {
    struct Names(HashSet<String>, bool);
    impl ast::Visitor for Names {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    self.0
                        .insert(parts[parts.len() - 2].value.to_ascii_lowercase());
                }
                Expr::Identifier(_) => self.1 = true,
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                    // Names inside are the inner query's business.
                    self.1 = true;
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut n = Names(HashSet::new(), false);
    let _ = ast::Visit::visit(e, &mut n);
    (n.0, n.1)
}

/// DataFusion decorrelates a scalar subquery only when its correlated conditions are
/// equalities. Conditions on the outer row alone (`AND a.atthasdef`) and inequalities
/// between inner and outer columns (`a.attcollation <> t.typcollation`) are moved out:
/// `CASE WHEN cond THEN (subquery) END`, an inner column in them read by its own
/// equality-correlated subquery over that table.
fn hoist_outer_filters(q: &mut Query) -> Option<Expr> {
    let ast::SetExpr::Select(select) = q.body.as_mut() else {
        return None;
    };
    let inner = inner_tables(&select.from);
    if inner.is_empty() {
        return None;
    }
    let inner_names: HashSet<String> = inner.iter().map(|(n, _)| n.clone()).collect();
    let mut parts = Vec::new();
    conjuncts(select.selection.take()?, &mut parts);
    let classified: Vec<(Expr, HashSet<String>, bool)> = parts
        .into_iter()
        .map(|c| {
            let (names, bare) = qualifiers(&c);
            (c, names, bare)
        })
        .collect();
    let mut keep = Vec::new();
    let mut hoist = Vec::new();
    for (c, names, bare) in &classified {
        let outer: Vec<&String> = names.iter().filter(|n| !inner_names.contains(*n)).collect();
        let touches_inner = names.iter().any(|n| inner_names.contains(n));
        let is_eq = matches!(
            c,
            Expr::BinaryOp {
                op: BinaryOperator::Eq,
                ..
            }
        );
        if *bare || outer.is_empty() || (is_eq && touches_inner) {
            keep.push(c.clone());
        } else {
            hoist.push(c.clone());
        }
    }
    if hoist.is_empty() {
        select.selection = and_all(keep);
        return None;
    }
    // An inner column in a hoisted condition: read through its table's equalities.
    let binding = |table: &str| -> Vec<Expr> {
        classified
            .iter()
            .filter(|(c, names, bare)| {
                !bare
                    && matches!(
                        c,
                        Expr::BinaryOp {
                            op: BinaryOperator::Eq,
                            ..
                        }
                    )
                    && names.contains(table)
                    && names.iter().all(|n| n == table || !inner_names.contains(n))
            })
            .map(|(c, _, _)| c.clone())
            .collect()
    };
    let mut conditions = Vec::new();
    for mut c in hoist {
        struct Swap<'a> {
            inner: &'a [(String, TableFactor)],
            binding: &'a dyn Fn(&str) -> Vec<Expr>,
        }
        impl VisitorMut for Swap<'_> {
            type Break = ();
            fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
                let Expr::CompoundIdentifier(parts) = e else {
                    return ControlFlow::Continue(());
                };
                let [t, _] = parts.as_slice() else {
                    return ControlFlow::Continue(());
                };
                let t = t.value.to_ascii_lowercase();
                let Some((_, factor)) = self.inner.iter().find(|(n, _)| *n == t) else {
                    return ControlFlow::Continue(());
                };
                let sub = format!(
                    "SELECT max({e}) FROM {factor}{}",
                    and_all((self.binding)(&t))
                        .map(|w| format!(" WHERE {w}"))
                        .unwrap_or_default()
                );
                if let Ok(mut parsed) = sabot_sql::sqlparser::parser::Parser::parse_sql(
                    &sabot_sql::sqlparser::dialect::PostgreSqlDialect {},
                    &sub,
                ) {
                    if let Some(ast::Statement::Query(query)) = parsed.pop() {
                        *e = Expr::Subquery(query);
                    }
                }
                ControlFlow::Continue(())
            }
        }
        let _ = c.visit(&mut Swap {
            inner: &inner,
            binding: &binding,
        });
        conditions.push(c);
    }
    select.selection = and_all(keep);
    let condition = and_all(conditions)?;
    Some(Expr::Case {
        case_token: ast::helpers::attached_token::AttachedToken::empty(),
        end_token: ast::helpers::attached_token::AttachedToken::empty(),
        operand: None,
        conditions: vec![ast::CaseWhen {
            condition,
            result: Expr::Subquery(Box::new(q.clone())),
        }],
        else_result: None,
    })
}

/// `ARRAY(SELECT e FROM ...)` as `(SELECT array_agg(e) FROM ...)`, which DataFusion
/// plans (NULL rather than `{}` when no row matches). psql's
/// `ARRAY(SELECT .. FROM pg_options_to_table(opts))` becomes `sabot_options_array(opts)`.
fn array_subquery(q: &Query) -> Option<Expr> {
    let ast::SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    if let [from] = select.from.as_slice() {
        if let TableFactor::Table {
            name,
            args: Some(args),
            ..
        } = &from.relation
        {
            let n = name.to_string().to_ascii_lowercase();
            if n == "unnest" || n.ends_with(".unnest") {
                return array_of_unnest(select, args, from);
            }
            if n.ends_with("pg_options_to_table") {
                let arg = args.args.first().and_then(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                    _ => None,
                })?;
                return Some(call("sabot_options_array", vec![arg]));
            }
        }
    }
    let [ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. }] =
        select.projection.as_slice()
    else {
        return None;
    };
    let mut select = select.clone();
    select.projection = vec![ast::SelectItem::UnnamedExpr(call(
        "array_agg",
        vec![e.clone()],
    ))];
    let mut query = q.clone();
    query.body = Box::new(ast::SetExpr::Select(select));
    query.order_by = None;
    Some(Expr::Subquery(Box::new(query)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_builds_with_its_columns() {
        for (name, spec) in CATALOGS {
            let b = catalog_batch(spec, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(b.num_columns(), spec.split_whitespace().count(), "{name}");
        }
    }

    #[test]
    fn format_type_names_match_postgres() {
        assert_eq!(type_display(23, None).as_deref(), Some("integer"));
        assert_eq!(
            type_display(1043, Some(14)).as_deref(),
            Some("character varying(10)")
        );
        assert_eq!(
            type_display(1700, Some((10 << 16 | 2) + 4)).as_deref(),
            Some("numeric(10,2)")
        );
        assert_eq!(type_display(1009, None).as_deref(), Some("text[]"));
    }

    fn rewritten(sql: &str) -> String {
        let Ok(mut stmts) = sabot_sql::sqlparser::parser::Parser::parse_sql(
            &sabot_sql::sqlparser::dialect::PostgreSqlDialect {},
            sql,
        ) else {
            panic!("cannot parse {sql}");
        };
        let Some(ast::Statement::Query(mut q)) = stmts.pop() else {
            panic!("not a query: {sql}");
        };
        rewrite(&mut q, &HashSet::new());
        q.to_string()
    }

    #[test]
    fn outputs_of_always_empty_catalogs_are_not_planned() {
        // No rows, so a subquery in the output is never evaluated...
        assert_eq!(
            rewritten("SELECT p.pubname, (SELECT string_agg(x, ',') FROM t) FROM pg_catalog.pg_publication p"),
            "SELECT p.pubname, NULL FROM pg_catalog.pg_publication p"
        );
        // ...but an aggregate over no rows is a row.
        assert_eq!(
            rewritten("SELECT count(*), (SELECT max(x) FROM t) FROM pg_policy"),
            "SELECT count(*), (SELECT max(x) FROM t) FROM pg_catalog.pg_policy"
        );
        assert_eq!(
            rewritten("SELECT a.attname, (SELECT d.adbin FROM pg_attrdef d WHERE d.adrelid = a.attrelid) FROM pg_attribute a"),
            "SELECT a.attname, NULL FROM pg_catalog.pg_attribute a"
        );
    }

    #[test]
    fn user_queries_keep_their_subqueries() {
        // A catalog-looking function name alone does not reshape subqueries: a plain
        // scalar subquery must still fail on several rows, as in PostgreSQL.
        assert_eq!(
            rewritten("SELECT has_x, (SELECT v FROM t WHERE t.k = u.k) FROM u WHERE k IN (SELECT k FROM t)"),
            "SELECT has_x, (SELECT v FROM t WHERE t.k = u.k) FROM u WHERE k IN (SELECT k FROM t)"
        );
        assert_eq!(
            rewritten("SELECT pg_catalog.version(), (SELECT v FROM t)"),
            "SELECT version(), (SELECT v FROM t)"
        );
    }

    #[test]
    fn postgres_spellings_become_datafusion_ones() {
        assert_eq!(
            rewritten("SELECT pg_catalog.format_type(t.oid, NULL) FROM pg_type t WHERE t.typname OPERATOR(pg_catalog.~) '^(int4)$' COLLATE pg_catalog.default"),
            "SELECT format_type(t.oid, NULL) FROM pg_catalog.pg_type t WHERE t.typname ~ '^(int4)$'"
        );
        assert_eq!(
            rewritten("SELECT 'items'::regclass, c.oid::regclass, c.reltype::regtype::text FROM pg_class c"),
            "SELECT to_regclass('items'), sabot_regclass_name(c.oid), format_type(c.reltype, NULL)::TEXT FROM pg_catalog.pg_class c"
        );
    }

    #[test]
    fn format_follows_postgres() {
        let args = ["public", "My Table", "it's", "a\\b"];
        let arg = |i: usize| args.get(i).map(|a| Some(*a));
        assert_eq!(
            format_row("%I.%I = %L, %s%%", arg).unwrap(),
            "public.\"My Table\" = 'it''s', a\\b%"
        );
        assert_eq!(
            format_row("%4$L|%1$-8s|%1$8s", arg).unwrap(),
            "E'a\\\\b'|public  |  public"
        );
        assert_eq!(format_row("%s %L", |_| Some(None)).unwrap(), " NULL");
        assert!(format_row("%s %s %s %s %s", arg).is_err());
        assert!(format_row("%I", |_| Some(None)).is_err());
        assert!(format_row("%x", arg).is_err());
        assert!(format_row("%99999999999999999999s", arg).is_err());
        assert!(format_row("%2000000s", arg).is_err());
    }

    #[test]
    fn sizes_print_like_postgres() {
        assert_eq!(size_pretty(8192), "8192 bytes");
        assert_eq!(size_pretty(16384), "16 kB");
        assert_eq!(size_pretty(50 * 1024 * 1024), "50 MB");
    }
}
