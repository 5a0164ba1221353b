//! The introspection queries BI tools send, replayed over pgwire as the tools send them.
//!
//! Grafana's PostgreSQL data source (`postgresMetaQuery.ts` in grafana/grafana): the
//! server version, schemas, tables (with and without a schema, the latter through its
//! `search_path` constraint) and a table's columns. Superset introspects through
//! SQLAlchemy's inspector, which `clients.rs` runs.

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
