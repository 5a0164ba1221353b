//! The Nexmark queries (`benches/nexmark/queries/*.sql`, RisingWave's formulations) as
//! materialized views over the built-in nexmark sources, each checked against a batch
//! evaluation of the same query over the same events.
//!
//! Every generated event is also copied by an identity view (`bid_all`, ...), whose row
//! counts are checked against the generator run here. Once all views have read every
//! event, each query runs again as a plain `SELECT` over the copies: a DataFusion batch
//! plan over a snapshot, sharing nothing with the incremental operators (joins, top-N,
//! windows, distinct aggregates) that maintained the view. Both results must be equal as
//! multisets (numbers within a relative 1e-9).

mod common;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use common::{same_multiset, Server};
use sabot_connectors::nexmark::NexmarkConfig;
use sabot_connectors::{Options, Split};
use sabot_sql::sqlparser::ast::{self, TableFactor, VisitMut, VisitorMut};
use sabot_sql::sqlparser::dialect::PostgreSqlDialect;
use sabot_sql::sqlparser::parser::Parser;

const EVENTS: u64 = 60_000;
const KINDS: [&str; 3] = ["person", "auction", "bid"];
const SIDE_INPUT_KEYS: u64 = 10_000;

fn queries() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/nexmark/queries");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("benches/nexmark/queries")
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            (
                name,
                std::fs::read_to_string(&path).unwrap().trim().to_string(),
            )
        })
        .collect();
    out.sort_by_key(|(n, _)| n[1..].parse::<u32>().unwrap_or(0));
    out
}

/// Rows of each kind the generator makes for `EVENTS` events.
fn generated_rows(kind: &str) -> u64 {
    let config = NexmarkConfig::from_options(&Options::new([
        ("nexmark.table.type".to_string(), kind.to_string()),
        ("nexmark.event.num".to_string(), EVENTS.to_string()),
    ]))
    .unwrap();
    let mut n = 0;
    for mut s in config.splits() {
        while let Some(b) = s.next_batch(8192).unwrap() {
            n += b.num_rows() as u64;
        }
    }
    n
}

/// The query reading the copies (`bid` → `bid_all AS bid`, in window functions too).
/// The server computes its windows (TUMBLE, HOP, SESSION) as a batch query.
fn over_copies(sql: &str) -> String {
    struct Renamer;
    impl VisitorMut for Renamer {
        type Break = ();
        fn post_visit_table_factor(&mut self, f: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                alias,
                args: Some(args),
                ..
            } = f
            {
                // TUMBLE(bid, ...): the table is the first argument.
                if let Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
                    ast::Expr::Identifier(table),
                ))) = args.args.first_mut()
                {
                    let n = table.value.to_lowercase();
                    if KINDS.contains(&n.as_str()) {
                        if alias.is_none() {
                            *alias = Some(ast::TableAlias {
                                explicit: true,
                                name: ast::Ident::new(&n),
                                columns: vec![],
                                at: None,
                            });
                        }
                        *table = ast::Ident::new(format!("{n}_all"));
                    }
                }
                let _ = name;
                return ControlFlow::Continue(());
            }
            if let TableFactor::Table { name, alias, .. } = f {
                let n = name.to_string().to_lowercase();
                if KINDS.contains(&n.as_str()) {
                    if alias.is_none() {
                        *alias = Some(ast::TableAlias {
                            explicit: true,
                            name: ast::Ident::new(&n),
                            columns: vec![],
                            at: None,
                        });
                    }
                    *name = ast::ObjectName::from(vec![ast::Ident::new(format!("{n}_all"))]);
                }
            }
            ControlFlow::Continue(())
        }
    }
    // The side input does not change while the views run: read as of processing time or
    // not, it is the same table.
    let sql = sql.replace("FOR SYSTEM_TIME AS OF PROCTIME()", "");
    let dialect = PostgreSqlDialect {};
    let mut q = Parser::new(&dialect)
        .try_with_sql(&sql)
        .unwrap()
        .parse_query()
        .unwrap();
    let _ = q.visit(&mut Renamer);
    q.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_views_match_batch_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    for kind in KINDS {
        client
            .batch_execute(&format!(
                "CREATE SOURCE {kind} WITH (connector = 'nexmark', nexmark.table.type = '{kind}', \
                 nexmark.event.num = '{EVENTS}', nexmark.split.num = '3', nexmark.min.event.gap.in.ns = '0');
                 CREATE MATERIALIZED VIEW {kind}_all AS SELECT * FROM {kind};"
            ))
            .await
            .unwrap();
    }
    // q13's side input: a value per auction id modulo 10,000, looked up as of
    // processing time.
    let values: Vec<String> = (0..SIDE_INPUT_KEYS)
        .map(|k| format!("({k}, 'v{}')", k * 7 % 101))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE TABLE side_input (key BIGINT PRIMARY KEY, value TEXT);
             INSERT INTO side_input VALUES {};",
            values.join(", ")
        ))
        .await
        .unwrap();
    let queries = queries();
    assert_eq!(queries.len(), 23, "q0 to q22, found {}", queries.len());
    for (name, sql) in &queries {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW nexmark_{name} AS {sql}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    // Every view reads the sources from their start; wait until all have everything.
    let deadline = Instant::now() + Duration::from_secs(120);
    for kind in KINDS {
        let want = generated_rows(kind).to_string();
        loop {
            client.batch_execute("FLUSH").await.unwrap();
            let got =
                common::nullable_rows(&client, &format!("SELECT count(*) FROM {kind}_all")).await;
            if got[0][0].as_deref() == Some(want.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{kind}_all has {got:?} rows, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A few epochs more, so that views created later have caught up too.
    for _ in 0..20 {
        client.batch_execute("FLUSH").await.unwrap();
    }
    let mut failed = Vec::new();
    for (name, sql) in &queries {
        if name == "q12" {
            // Processing time: no batch query knows when each row was read. Per bidder,
            // the windows' counts add up to the bids; every window is [10s k, 10s (k+1)).
            let view = common::nullable_rows(
                &client,
                "SELECT bidder, sum(bid_count) FROM nexmark_q12 GROUP BY bidder",
            )
            .await;
            let batch = common::nullable_rows(
                &client,
                "SELECT bidder, count(*) FROM bid_all GROUP BY bidder",
            )
            .await;
            let misshapen = common::nullable_rows(
                &client,
                "SELECT count(*) FROM nexmark_q12 WHERE window_end - window_start <> INTERVAL '10' SECOND \
                 OR date_bin(INTERVAL '10' SECOND, window_start) <> window_start",
            )
            .await;
            let ok = same_multiset(view.clone(), batch.clone())
                && misshapen[0][0].as_deref() == Some("0");
            eprintln!(
                "q12: {} ({} bidders, {misshapen:?} misshapen windows)",
                if ok { "ok" } else { "DIFFERS" },
                batch.len()
            );
            if !ok {
                failed.push(format!(
                    "q12: {} bidders in the view, {} in the bids; {misshapen:?} misshapen windows",
                    view.len(),
                    batch.len()
                ));
            }
            continue;
        }
        // q19 orders bids by price alone: among bids of equal price ROW_NUMBER may pick
        // any, so its rows are compared on what ties cannot change.
        let columns = if name == "q19" { "auction, price" } else { "*" };
        let view =
            common::nullable_rows(&client, &format!("SELECT {columns} FROM nexmark_{name}")).await;
        let batch = common::nullable_rows(
            &client,
            &format!("SELECT {columns} FROM ({}) AS batch", over_copies(sql)),
        )
        .await;
        let ok = same_multiset(view.clone(), batch.clone());
        eprintln!(
            "{name}: {} ({} rows)",
            if ok { "ok" } else { "DIFFERS" },
            batch.len()
        );
        if !ok {
            failed.push(format!(
                "{name}: view has {} rows, batch {} rows; view {:?} ... batch {:?} ...",
                view.len(),
                batch.len(),
                view.iter().take(3).collect::<Vec<_>>(),
                batch.iter().take(3).collect::<Vec<_>>()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
