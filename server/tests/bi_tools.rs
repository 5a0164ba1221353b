//! The introspection queries BI tools send, replayed over pgwire as the tools send them.
//!
//! Grafana's PostgreSQL data source (`postgresMetaQuery.ts` in grafana/grafana): the
//! server version, schemas, tables (with and without a schema, the latter through its
//! `search_path` constraint) and a table's columns. Metabase's sync queries (tables,
//! privileges, fields, foreign keys, indexes, enums) as its PostgreSQL driver renders
//! them. Superset introspects through SQLAlchemy's inspector, which `clients.rs` runs;
//! its own queries (catalogs, search path, stopping a query by pid) are replayed here.

mod common;

use common::{rows, Server};

/// Grafana's `buildSchemaConstraint()`: is `table_schema` on the search path?
const SCHEMA_CONSTRAINT: &str = "
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )";

fn show_tables_query() -> String {
    format!(
        "SELECT
    CASE WHEN {SCHEMA_CONSTRAINT}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS \"table\"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN {SCHEMA_CONSTRAINT} THEN 0 ELSE 1 END, 1"
    )
}

fn get_schema_query(table: &str) -> String {
    let t = format!("'{}'", table.replace('\'', "''"));
    format!(
        "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident({t}),1) = 2
        THEN quote_ident(table_schema) = (parse_ident({t}))[1]
          AND quote_ident(table_name) = (parse_ident({t}))[2]
        ELSE quote_ident(table_name) = {t}
          AND {SCHEMA_CONSTRAINT}
      END"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_introspection_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE metrics (ts TIMESTAMP, host TEXT, value DOUBLE PRECISION, n INT);
             CREATE MATERIALIZED VIEW per_host AS
                 SELECT host, count(*) AS samples, avg(value) AS mean FROM metrics GROUP BY host;",
        )
        .await
        .unwrap();

    let version = rows(
        &client,
        "SELECT current_setting('server_version_num')::int/100 as version",
    )
    .await;
    assert_eq!(version, vec![vec!["1500".to_string()]]);

    let timescale = rows(
        &client,
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
    )
    .await;
    assert!(timescale.is_empty());

    let schemas = rows(
        &client,
        "SELECT schema_name AS \"name\"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name",
    )
    .await;
    assert_eq!(
        schemas,
        vec![
            vec!["public".to_string()],
            vec!["sabot_catalog".to_string()]
        ]
    );

    let in_public = rows(
        &client,
        "SELECT quote_ident(table_name) AS \"table\"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = 'public'
      ORDER BY 1",
    )
    .await;
    assert_eq!(
        in_public,
        vec![vec!["metrics".to_string()], vec!["per_host".to_string()]]
    );

    // Tables on the search path come first and unqualified.
    let all = rows(&client, &show_tables_query()).await;
    let all: Vec<&str> = all.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        all,
        vec![
            "metrics",
            "per_host",
            "sabot_catalog.checkpoints",
            "sabot_catalog.operators",
            "sabot_catalog.sinks",
            "sabot_catalog.source_errors",
            "sabot_catalog.sources",
            "sabot_catalog.views",
            "sabot_catalog.watermarks"
        ]
    );

    let columns = rows(&client, &get_schema_query("metrics")).await;
    assert_eq!(
        columns,
        vec![
            vec!["ts".to_string(), "timestamp without time zone".to_string()],
            vec!["host".to_string(), "text".to_string()],
            vec!["value".to_string(), "double precision".to_string()],
            vec!["n".to_string(), "integer".to_string()],
        ]
    );
    let qualified = rows(&client, &get_schema_query("public.per_host")).await;
    assert_eq!(
        qualified,
        vec![
            vec!["host".to_string(), "text".to_string()],
            vec!["samples".to_string(), "bigint".to_string()],
            vec!["mean".to_string(), "double precision".to_string()],
        ]
    );
}

// Metabase's PostgreSQL driver (`src/metabase/driver/postgres.clj` in metabase/metabase),
// its sync queries as HoneySQL renders them (quoted identifiers, `?` parameters sent by
// pgJDBC as `$n`). They run after pgJDBC's own DatabaseMetaData calls, which `clients.rs`
// covers.

/// `get-tables-sql`: the tables to sync, with comments and row estimates.
const MB_TABLES: &str = r#"SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS "type", "d"."description" AS "description", "stat"."n_live_tup" AS "estimated_row_count" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = 0) AND ("d"."classoid" = 'pg_class'::regclass) LEFT JOIN "pg_stat_user_tables" AS "stat" ON ("n"."nspname" = "stat"."schemaname") AND ("c"."relname" = "stat"."relname") WHERE ("c"."relnamespace" = "n"."oid") AND ("n"."nspname" !~ '^pg_') AND ("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND ("n"."nspname" IN ($1)) ORDER BY "type" ASC, "schema" ASC, "name" ASC"#;

/// `current-user-table-privileges`.
const MB_PRIVILEGES: &str = r#"with table_privileges as ( select   NULL as role,   t.schemaname as schema,   t.objectname as table,   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'update') as update,   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'select') as select,   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'insert') as insert,   pg_catalog.has_table_privilege(     current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'delete') as delete from (   select schemaname, tablename as objectname from pg_catalog.pg_tables   union   select schemaname, viewname as objectname from pg_catalog.pg_views   union   select schemaname, matviewname as objectname from pg_catalog.pg_matviews ) t where t.schemaname !~ '^pg_'   and t.schemaname <> 'information_schema'   and pg_catalog.has_schema_privilege(current_user, t.schemaname, 'usage'))select t.*from table_privileges t"#;

/// `describe-fields-sql`: columns from information_schema, and materialized views'
/// columns from pg_attribute (PostgreSQL's information_schema leaves them out).
const MB_FIELDS: &str = r#"SELECT "c"."column_name" AS "name", CASE WHEN "c"."udt_schema" IN ('public', 'pg_catalog') THEN FORMAT('%s', "c"."udt_name") ELSE FORMAT('"%s"."%s"', "c"."udt_schema", "c"."udt_name") END AS "database-type", "c"."ordinal_position" - 1 AS "database-position", "c"."table_schema" AS "table-schema", "c"."table_name" AS "table-name", "pk"."column_name" IS NOT NULL AS "pk?", COL_DESCRIPTION(CAST(CAST(FORMAT('%I.%I', CAST("c"."table_schema" AS TEXT), CAST("c"."table_name" AS TEXT)) AS REGCLASS) AS OID), "c"."ordinal_position") AS "field-comment", (("column_default" IS NULL) OR (LOWER("column_default") = 'null')) AND ("is_nullable" = 'NO') AND NOT ((("column_default" IS NOT NULL) AND ("column_default" LIKE '%nextval(%')) OR ("is_identity" <> 'NO')) AS "database-required", (("column_default" IS NOT NULL) AND ("column_default" LIKE '%nextval(%')) OR ("is_identity" <> 'NO') AS "database-is-auto-increment" FROM "information_schema"."columns" AS "c" LEFT JOIN (SELECT "tc"."table_schema", "tc"."table_name", "kc"."column_name" FROM "information_schema"."table_constraints" AS "tc" INNER JOIN "information_schema"."key_column_usage" AS "kc" ON ("tc"."constraint_name" = "kc"."constraint_name") AND ("tc"."table_schema" = "kc"."table_schema") AND ("tc"."table_name" = "kc"."table_name") WHERE "tc"."constraint_type" = 'PRIMARY KEY') AS "pk" ON ("c"."table_schema" = "pk"."table_schema") AND ("c"."table_name" = "pk"."table_name") AND ("c"."column_name" = "pk"."column_name") WHERE c.table_schema !~ '^information_schema|catalog_history|pg_' AND ("c"."table_schema" IN ($1)) UNION ALL SELECT "pa"."attname" AS "name", CASE WHEN "ptn"."nspname" IN ('public', 'pg_catalog') THEN FORMAT('%s', "pt"."typname") ELSE FORMAT('"%s"."%s"', "ptn"."nspname", "pt"."typname") END AS "database-type", "pa"."attnum" - 1 AS "database-position", "pn"."nspname" AS "table-schema", "pc"."relname" AS "table-name", FALSE AS "pk?", NULL AS "field-comment", FALSE AS "database-required", FALSE AS "database-is-auto-increment" FROM "pg_catalog"."pg_class" AS "pc" INNER JOIN "pg_catalog"."pg_namespace" AS "pn" ON "pn"."oid" = "pc"."relnamespace" INNER JOIN "pg_catalog"."pg_attribute" AS "pa" ON "pa"."attrelid" = "pc"."oid" INNER JOIN "pg_catalog"."pg_type" AS "pt" ON "pt"."oid" = "pa"."atttypid" INNER JOIN "pg_catalog"."pg_namespace" AS "ptn" ON "ptn"."oid" = "pt"."typnamespace" WHERE ("pc"."relkind" = 'm') AND ("pa"."attnum" >= 1) AND ("pn"."nspname" IN ($2)) ORDER BY "table-schema" ASC, "table-name" ASC, "database-position" ASC"#;

/// `describe-fks-sql`.
const MB_FKS: &str = r#"SELECT "fk_ns"."nspname" AS "fk-table-schema", "fk_table"."relname" AS "fk-table-name", "fk_column"."attname" AS "fk-column-name", "pk_ns"."nspname" AS "pk-table-schema", "pk_table"."relname" AS "pk-table-name", "pk_column"."attname" AS "pk-column-name" FROM "pg_constraint" AS "c" INNER JOIN "pg_class" AS "fk_table" ON "c"."conrelid" = "fk_table"."oid" INNER JOIN "pg_namespace" AS "fk_ns" ON "c"."connamespace" = "fk_ns"."oid" INNER JOIN "pg_attribute" AS "fk_column" ON "c"."conrelid" = "fk_column"."attrelid" INNER JOIN "pg_class" AS "pk_table" ON "c"."confrelid" = "pk_table"."oid" INNER JOIN "pg_namespace" AS "pk_ns" ON "pk_table"."relnamespace" = "pk_ns"."oid" INNER JOIN "pg_attribute" AS "pk_column" ON "c"."confrelid" = "pk_column"."attrelid" WHERE fk_ns.nspname !~ '^information_schema|catalog_history|pg_' AND ("c"."contype" = 'f'::char) AND ("fk_column"."attnum" = ANY(c.conkey)) AND ("pk_column"."attnum" = ANY(c.confkey)) AND ("fk_ns"."nspname" IN ($1)) ORDER BY "fk-table-schema" ASC, "fk-table-name" ASC"#;

/// `describe-indexes-sql`: the first column of each index.
const MB_INDEXES: &str = r#"SELECT "tmp"."table-schema", "tmp"."table-name", TRIM(BOTH '"' FROM PG_CATALOG.PG_GET_INDEXDEF("tmp"."ci_oid", "tmp"."pos", FALSE)) AS "field-name" FROM (SELECT "n"."nspname" AS "table-schema", "ct"."relname" AS "table-name", "ci"."oid" AS "ci_oid", (INFORMATION_SCHEMA._PG_EXPANDARRAY("i"."indkey")).n AS "pos" FROM "pg_catalog"."pg_class" AS "ct" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "ct"."relnamespace" = "n"."oid" INNER JOIN "pg_catalog"."pg_index" AS "i" ON "ct"."oid" = "i"."indrelid" INNER JOIN "pg_catalog"."pg_class" AS "ci" ON "ci"."oid" = "i"."indexrelid" WHERE (PG_CATALOG.PG_GET_EXPR("i"."indpred", "i"."indrelid") IS NULL) AND n.nspname !~ '^information_schema|catalog_history|pg_' AND ("n"."nspname" IN ($1))) AS "tmp" WHERE "tmp"."pos" = 1"#;

/// `enum-types`.
const MB_ENUMS: &str = r#"SELECT nspname, typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid IN (SELECT DISTINCT enumtypid FROM pg_enum e)"#;

fn texts(rows: &[tokio_postgres::Row]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let t = r.columns()[i].type_().clone();
                    let v: Option<String> = match t {
                        tokio_postgres::types::Type::BOOL => {
                            r.get::<_, Option<bool>>(i).map(|b| b.to_string())
                        }
                        tokio_postgres::types::Type::INT4 => {
                            r.get::<_, Option<i32>>(i).map(|b| b.to_string())
                        }
                        tokio_postgres::types::Type::INT8 => {
                            r.get::<_, Option<i64>>(i).map(|b| b.to_string())
                        }
                        _ => r.get::<_, Option<String>>(i),
                    };
                    v.unwrap_or_else(|| "NULL".into())
                })
                .collect()
        })
        .collect()
}

fn strings(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// Metabase connects through pgJDBC, sets up the session, then syncs: tables, privileges,
/// fields, foreign keys, indexes and enums, each a prepared statement; then runs the
/// queries its query builder compiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metabase_sync_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE metrics (id BIGINT PRIMARY KEY, ts TIMESTAMP, host TEXT, value DOUBLE PRECISION);
             CREATE MATERIALIZED VIEW per_host AS
                 SELECT host, count(*) AS samples, avg(value) AS mean FROM metrics GROUP BY host;
             INSERT INTO metrics VALUES (1, '2026-01-05 10:00:00', 'a', 1.5),
                 (2, '2026-02-05 10:00:00', 'b', 2.5), (3, '2026-02-06 10:00:00', 'b', 3.5);
             FLUSH;",
        )
        .await
        .unwrap();
    // Session set-up: pgJDBC's setTransactionIsolation, Metabase's report time zone.
    client
        .batch_execute(
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED;
             SET SESSION TIMEZONE TO 'UTC';",
        )
        .await
        .unwrap();
    assert_eq!(rows(&client, "show timezone;").await, strings(&[&["UTC"]]));
    assert_eq!(
        rows(&client, "SHOW TRANSACTION ISOLATION LEVEL").await,
        strings(&[&["serializable"]])
    );

    let tables = client.query(MB_TABLES, &[&"public"]).await.unwrap();
    assert_eq!(
        texts(&tables),
        strings(&[
            &["public", "per_host", "MATERIALIZED VIEW", "NULL", "2"],
            &["public", "metrics", "TABLE", "NULL", "3"],
        ])
    );

    let privileges = client.query(MB_PRIVILEGES, &[]).await.unwrap();
    let mut privileges = texts(&privileges);
    privileges.sort();
    assert_eq!(
        privileges,
        strings(&[
            &["NULL", "public", "metrics", "true", "true", "true", "true"],
            &["NULL", "public", "per_host", "true", "true", "true", "true"],
        ])
    );

    let fields = client
        .query(MB_FIELDS, &[&"public", &"public"])
        .await
        .unwrap();
    let fields = texts(&fields);
    let metrics: Vec<_> = fields
        .iter()
        .filter(|r| r[4] == "metrics")
        .cloned()
        .collect();
    assert_eq!(
        metrics,
        strings(&[
            &["id", "int8", "0", "public", "metrics", "true", "NULL", "true", "false"],
            &[
                "ts",
                "timestamp",
                "1",
                "public",
                "metrics",
                "false",
                "NULL",
                "false",
                "false"
            ],
            &["host", "text", "2", "public", "metrics", "false", "NULL", "false", "false"],
            &["value", "float8", "3", "public", "metrics", "false", "NULL", "false", "false"],
        ])
    );
    // Sabot lists materialized views in information_schema too (for tools that look
    // only there), so both branches give each of their columns, identically: Metabase
    // keeps fields as a set.
    let mut view: Vec<_> = fields
        .iter()
        .filter(|r| r[4] == "per_host")
        .cloned()
        .collect();
    view.dedup();
    assert_eq!(
        view,
        strings(&[
            &["host", "text", "0", "public", "per_host", "false", "NULL", "false", "false"],
            &["samples", "int8", "1", "public", "per_host", "false", "NULL", "false", "false"],
            &["mean", "float8", "2", "public", "per_host", "false", "NULL", "false", "false"],
        ])
    );

    assert!(client.query(MB_FKS, &[&"public"]).await.unwrap().is_empty());
    let indexes = client.query(MB_INDEXES, &[&"public"]).await.unwrap();
    assert_eq!(texts(&indexes), strings(&[&["public", "metrics", "id"]]));
    assert!(client.query(MB_ENUMS, &[]).await.unwrap().is_empty());

    // What its query builder compiles: a breakout by month, and a table's rows.
    let by_month = client
        .query(
            r#"SELECT DATE_TRUNC('month', "public"."metrics"."ts") AS "ts", COUNT(*) AS "count" FROM "public"."metrics" GROUP BY DATE_TRUNC('month', "public"."metrics"."ts") ORDER BY DATE_TRUNC('month', "public"."metrics"."ts") ASC"#,
            &[],
        )
        .await
        .unwrap();
    let counts: Vec<i64> = by_month.iter().map(|r| r.get(1)).collect();
    assert_eq!(counts, [1, 2]);
    let view_rows = client
        .query(
            r#"SELECT "public"."per_host"."host" AS "host", "public"."per_host"."samples" AS "samples" FROM "public"."per_host" ORDER BY "host" ASC LIMIT 2000"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(texts(&view_rows), strings(&[&["a", "1"], &["b", "2"]]));
}

/// Superset's own queries beyond SQLAlchemy's inspector (`PostgresEngineSpec` in
/// apache/superset): the catalogs, the search path it sets before a query in SQL Lab,
/// the backend pid it records, and how it stops a running query from another
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superset_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let lab = server.connect().await;
    let admin = server.connect().await;
    assert_eq!(
        rows(
            &lab,
            "\nSELECT datname FROM pg_database\nWHERE datistemplate = false;\n            "
        )
        .await,
        strings(&[&["sabot"]])
    );
    lab.batch_execute("set search_path = \"public\"")
        .await
        .unwrap();
    assert_eq!(
        rows(&lab, "SHOW search_path").await,
        strings(&[&["public"]])
    );
    let pid = rows(&lab, "SELECT pg_backend_pid()").await[0][0].clone();
    lab.batch_execute(
        "CREATE TABLE c (x BIGINT); INSERT INTO c SELECT value FROM generate_series(1, 2000); FLUSH",
    )
    .await
    .unwrap();
    let running = tokio::spawn(async move {
        lab.simple_query("SELECT sum(a.x * b.x + c.x) FROM c a, c b, c c")
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stopped = rows(
        &admin,
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid='{pid}'"),
    )
    .await;
    assert_eq!(stopped, strings(&[&["t"]]));
    let e = running.await.unwrap().unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(db.code().code(), "57P01", "{db:?}");
}
