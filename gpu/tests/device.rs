//! The shim against libcudf on a real device, checked against results computed here on
//! the CPU. Without a GPU (CI) the device tests skip, saying why; the loader's failure
//! paths are checked everywhere.
//!
//! On a GPU machine: `SABOT_GPU_LIBRARY=/path/to/libsabot_cudf.so ./device-<hash>`
//! (gpu/README.md has the exact runs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use sabot_gpu::{Agg, AggKind, BinaryOp, ExprBuilder, Gpu, GpuError, UnaryOp};

fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::load(None) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("{test}: skipped, no GPU here ({e})");
            None
        }
    }
}

/// A deterministic generator (tests must be reproducible on the device run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn batch(rows: usize, keys: u64, seed: u64) -> RecordBatch {
    let mut r = Lcg(seed);
    let mut k = Vec::new();
    let mut v = Vec::new();
    let mut f = Vec::new();
    let mut s = Vec::new();
    for _ in 0..rows {
        let key = r.next() % (keys + 1);
        // One key value in `keys + 1` is NULL.
        k.push((key < keys).then_some(key as i64));
        let x = r.next() % 1000;
        v.push((!x.is_multiple_of(7)).then_some(x as i64 - 300));
        f.push(Some((r.next() % 10_000) as f64 / 8.0));
        s.push(Some(format!("k{}", key % 50)));
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(k)) as ArrayRef,
            Arc::new(Int64Array::from(v)),
            Arc::new(Float64Array::from(f)),
            Arc::new(StringArray::from(s)),
        ],
    )
    .expect("valid batch")
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    sum: i64,
    count_valid: i64,
    count_all: i64,
    min: Option<i64>,
    max: Option<i64>,
    fsum: f64,
}

fn expected(batches: &[RecordBatch]) -> BTreeMap<Option<i64>, Expected> {
    let mut out: BTreeMap<Option<i64>, Expected> = BTreeMap::new();
    for b in batches {
        let k = b.column(0).as_primitive::<Int64Type>();
        let v = b.column(1).as_primitive::<Int64Type>();
        let f = b.column(2).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let e = out.entry(k.is_valid(i).then(|| k.value(i))).or_default();
            e.count_all += 1;
            e.fsum += f.value(i);
            if v.is_valid(i) {
                let x = v.value(i);
                e.sum += x;
                e.count_valid += 1;
                e.min = Some(e.min.map_or(x, |m| m.min(x)));
                e.max = Some(e.max.map_or(x, |m| m.max(x)));
            }
        }
    }
    out
}

const AGGS: [Agg; 6] = [
    Agg {
        kind: AggKind::Sum,
        column: 1,
    },
    Agg {
        kind: AggKind::CountValid,
        column: 1,
    },
    Agg {
        kind: AggKind::CountAll,
        column: 1,
    },
    Agg {
        kind: AggKind::Min,
        column: 1,
    },
    Agg {
        kind: AggKind::Max,
        column: 1,
    },
    Agg {
        kind: AggKind::Sum,
        column: 2,
    },
];

fn as_i64(a: &ArrayRef) -> Int64Array {
    arrow::compute::cast(a, &DataType::Int64)
        .expect("integer result")
        .as_primitive::<Int64Type>()
        .clone()
}

/// The GPU's groups (keys, then the aggregations of `AGGS`) by key.
fn groups(out: &RecordBatch) -> BTreeMap<Option<i64>, Expected> {
    let k = out.column(0).as_primitive::<Int64Type>();
    let sum = as_i64(out.column(1));
    let cv = as_i64(out.column(2));
    let ca = as_i64(out.column(3));
    let min = as_i64(out.column(4));
    let max = as_i64(out.column(5));
    let fsum = out.column(6).as_primitive::<Float64Type>();
    let mut m = BTreeMap::new();
    for i in 0..out.num_rows() {
        let key = k.is_valid(i).then(|| k.value(i));
        let prior = m.insert(
            key,
            Expected {
                sum: if sum.is_valid(i) { sum.value(i) } else { 0 },
                count_valid: cv.value(i),
                count_all: ca.value(i),
                min: min.is_valid(i).then(|| min.value(i)),
                max: max.is_valid(i).then(|| max.value(i)),
                fsum: fsum.value(i),
            },
        );
        assert!(prior.is_none(), "key {key:?} twice in the GPU's groups");
    }
    m
}

fn assert_same(got: &BTreeMap<Option<i64>, Expected>, want: &BTreeMap<Option<i64>, Expected>) {
    assert_eq!(got.len(), want.len(), "group count");
    for (k, w) in want {
        let g = got
            .get(k)
            .unwrap_or_else(|| panic!("group {k:?} missing on the GPU"));
        assert_eq!(
            (g.sum, g.count_valid, g.count_all, g.min, g.max),
            (w.sum, w.count_valid, w.count_all, w.min, w.max),
            "group {k:?}"
        );
        assert!(
            (g.fsum - w.fsum).abs() <= 1e-9 * w.fsum.abs().max(1.0),
            "group {k:?} float sum"
        );
    }
}

#[test]
fn a_missing_library_is_an_error_that_names_it() {
    let err = Gpu::load(Some(Path::new("/nonexistent/libsabot_cudf.so"))).unwrap_err();
    assert!(matches!(err, GpuError::Load { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/libsabot_cudf.so"),
        "{err}"
    );
    assert!(err.cpu_can_take_over());
}

/// With the shim and libcudf present but no driver or device (`gpu/shim/sdk.sh` on a
/// machine without a GPU), loading fails with the CUDA runtime's reason.
#[test]
fn no_device_is_an_error_not_a_crash() {
    if std::env::var_os("SABOT_GPU_EXPECT_NO_DEVICE").is_none() {
        eprintln!("no_device_is_an_error_not_a_crash: skipped (set SABOT_GPU_EXPECT_NO_DEVICE=1 and SABOT_GPU_LIBRARY)");
        return;
    }
    let err = Gpu::load(None).unwrap_err();
    assert!(matches!(err, GpuError::Device(_)), "{err:?}");
    assert!(err.to_string().contains("cuda"), "{err}");
}

#[test]
fn group_by_matches_the_cpu() {
    let Some(gpu) = gpu("group_by_matches_the_cpu") else {
        return;
    };
    eprintln!("device: {:?}", gpu.device());
    for (rows, keys, seed) in [
        (1, 1, 1),
        (1000, 10, 2),
        (200_000, 5000, 3),
        (1_000_000, 10_000, 4),
    ] {
        let b = batch(rows, keys, seed);
        let out = gpu.group_by(&b, &[0], &AGGS).expect("group-by");
        assert_same(&groups(&out), &expected(&[b]));
    }
}

#[test]
fn group_by_on_a_string_key() {
    let Some(gpu) = gpu("group_by_on_a_string_key") else {
        return;
    };
    let b = batch(100_000, 1000, 9);
    let out = gpu
        .group_by(
            &b,
            &[3],
            &[Agg {
                kind: AggKind::CountAll,
                column: 1,
            }],
        )
        .expect("group-by");
    let keys = out.column(0).as_string::<i32>();
    let counts = as_i64(out.column(1));
    let mut got = BTreeMap::new();
    for i in 0..out.num_rows() {
        got.insert(keys.value(i).to_string(), counts.value(i));
    }
    let s = b.column(3).as_string::<i32>();
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..b.num_rows() {
        *want.entry(s.value(i).to_string()).or_default() += 1;
    }
    assert_eq!(got, want);
}

#[test]
fn streaming_group_by_keeps_partials_across_batches() {
    let Some(gpu) = gpu("streaming_group_by_keeps_partials_across_batches") else {
        return;
    };
    let gpu = Arc::new(gpu);
    let batches: Vec<RecordBatch> = (0..8).map(|s| batch(250_000, 3000, 100 + s)).collect();
    let mut sg = gpu
        .streaming_group_by(&[0], &AGGS, 1 << 20)
        .expect("streaming group-by");
    for (i, b) in batches.iter().enumerate() {
        sg.aggregate(b).expect("aggregate");
        // The state stays after finalize: each prefix of the stream is right.
        let out = sg.finalize().expect("finalize");
        assert_same(&groups(&out), &expected(&batches[..=i]));
    }
    assert_eq!(sg.distinct_keys(), 3001);
}

#[test]
fn group_by_over_expressions_matches_the_cpu_reference() {
    let Some(gpu) = gpu("group_by_over_expressions_matches_the_cpu_reference") else {
        return;
    };
    let b = batch(500_000, 1000, 11);
    let mut e = ExprBuilder::new();
    // GROUP BY k: SUM(v / 2^32 * 3), SUM(v % 2^32), SUM(CAST(v IS NOT NULL AS BIGINT)), SUM(f)
    let v = e.column(1);
    let f = e.column(2);
    let base = e.int64(1 << 32);
    let three = e.int64(3);
    let hi = e.binary(BinaryOp::Div, v, base);
    let hi = e.binary(BinaryOp::Mul, hi, three);
    let lo = e.binary(BinaryOp::Mod, v, base);
    let null = e.unary(UnaryOp::IsNull, v);
    let valid = e.unary(UnaryOp::Not, null);
    let valid = e.unary(UnaryOp::CastInt64, valid);
    let roots = [hi, lo, valid, f];
    let aggs: Vec<Agg> = roots
        .iter()
        .map(|r| Agg {
            kind: AggKind::Sum,
            column: r.index(),
        })
        .collect();
    let out = gpu.group_by_exprs(&b, &[0], &e, &aggs).expect("group-by");
    // The CPU's reading of the same nodes, grouped here (NULL summands skipped, as SUM
    // skips them; a group of only NULLs sums to NULL).
    let keys = b.column(0).as_primitive::<Int64Type>();
    let mut want: BTreeMap<Option<i64>, Vec<Option<u64>>> = BTreeMap::new();
    for (c, r) in roots.iter().enumerate() {
        let values = e.evaluate(&b, *r).expect("reference");
        for i in 0..b.num_rows() {
            let slot = &mut want
                .entry(keys.is_valid(i).then(|| keys.value(i)))
                .or_insert_with(|| vec![None; roots.len()])[c];
            if values.is_null(i) {
                continue;
            }
            *slot = Some(match values.data_type() {
                DataType::Float64 => {
                    let x = values.as_primitive::<Float64Type>().value(i);
                    (f64::from_bits(slot.unwrap_or(0)) + x).to_bits()
                }
                _ => {
                    let x = values.as_primitive::<Int64Type>().value(i);
                    (slot.unwrap_or(0) as i64).wrapping_add(x) as u64
                }
            });
        }
    }
    let ok = out.column(0).as_primitive::<Int64Type>();
    assert_eq!(out.num_rows(), want.len());
    for i in 0..out.num_rows() {
        let key = ok.is_valid(i).then(|| ok.value(i));
        let row = &want[&key];
        for (c, expect) in row.iter().enumerate() {
            let col = out.column(1 + c);
            let got = col.is_valid(i).then(|| match col.data_type() {
                DataType::Float64 => col.as_primitive::<Float64Type>().value(i).to_bits(),
                _ => as_i64(col).value(i) as u64,
            });
            match (got, expect) {
                // Float sums: the device adds in another order.
                (Some(g), Some(w)) if c == 3 => {
                    let (g, w) = (f64::from_bits(g), f64::from_bits(*w));
                    assert!(
                        (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                        "key {key:?}: {g} vs {w}"
                    );
                }
                _ => assert_eq!(got, *expect, "key {key:?}, sum {c}"),
            }
        }
    }
}

#[test]
fn filter_and_projection_match_the_cpu() {
    let Some(gpu) = gpu("filter_and_projection_match_the_cpu") else {
        return;
    };
    let b = batch(500_000, 1000, 7);
    let mut e = ExprBuilder::new();
    // WHERE v > 100 AND (k % 2 = 0 OR k IS NULL); SELECT k, f * 2.0, CAST(v AS DOUBLE)
    let k = e.column(0);
    let v = e.column(1);
    let f = e.column(2);
    let hundred = e.int64(100);
    let two = e.int64(2);
    let zero = e.int64(0);
    let gt = e.binary(BinaryOp::Gt, v, hundred);
    let m = e.binary(BinaryOp::Mod, k, two);
    let even = e.binary(BinaryOp::Eq, m, zero);
    let null = e.unary(UnaryOp::IsNull, k);
    let either = e.binary(BinaryOp::Or, even, null);
    let pred = e.binary(BinaryOp::And, gt, either);
    let two_f = e.float64(2.0);
    let doubled = e.binary(BinaryOp::Mul, f, two_f);
    let vf = e.unary(UnaryOp::CastFloat64, v);
    let out = gpu
        .filter_project(&b, &e, Some(pred), &[k, doubled, vf])
        .expect("filter");

    let kc = b.column(0).as_primitive::<Int64Type>();
    let vc = b.column(1).as_primitive::<Int64Type>();
    let fc = b.column(2).as_primitive::<Float64Type>();
    let mut want = Vec::new();
    for i in 0..b.num_rows() {
        let keep = vc.is_valid(i) && vc.value(i) > 100 && (kc.is_null(i) || kc.value(i) % 2 == 0);
        if keep {
            want.push((
                kc.is_valid(i).then(|| kc.value(i)),
                (fc.value(i) * 2.0).to_bits(),
                vc.value(i),
            ));
        }
    }
    let ok = out.column(0).as_primitive::<Int64Type>();
    let od = out.column(1).as_primitive::<Float64Type>();
    let ov = out.column(2).as_primitive::<Float64Type>();
    let got: Vec<_> = (0..out.num_rows())
        .map(|i| {
            (
                ok.is_valid(i).then(|| ok.value(i)),
                od.value(i).to_bits(),
                ov.value(i) as i64,
            )
        })
        .collect();
    // The filter keeps the input's order.
    assert_eq!(got, want);
}

#[test]
fn inner_join_pairs_match_the_cpu() {
    let Some(gpu) = gpu("inner_join_pairs_match_the_cpu") else {
        return;
    };
    let left = batch(20_000, 500, 11);
    let right = batch(3_000, 800, 12);
    let (l, r) = gpu.inner_join(&left, &[0], &right, &[0]).expect("join");
    let got: BTreeSet<(i32, i32)> = l
        .values()
        .iter()
        .copied()
        .zip(r.values().iter().copied())
        .collect();
    assert_eq!(got.len(), l.len(), "no pair twice");
    let lk = left.column(0).as_primitive::<Int64Type>();
    let rk = right.column(0).as_primitive::<Int64Type>();
    let mut by_key: BTreeMap<i64, Vec<i32>> = BTreeMap::new();
    for j in 0..right.num_rows() {
        if rk.is_valid(j) {
            by_key.entry(rk.value(j)).or_default().push(j as i32);
        }
    }
    let mut want = BTreeSet::new();
    for i in 0..left.num_rows() {
        // NULL keys never match.
        if lk.is_valid(i) {
            for &j in by_key.get(&lk.value(i)).map(Vec::as_slice).unwrap_or(&[]) {
                want.insert((i as i32, j));
            }
        }
    }
    assert_eq!(got, want);
}

#[test]
fn bad_requests_are_errors() {
    let Some(gpu) = gpu("bad_requests_are_errors") else {
        return;
    };
    let b = batch(10, 3, 1);
    let err = gpu.group_by(&b, &[9], &AGGS).unwrap_err();
    assert!(matches!(err, GpuError::Invalid(_)), "{err:?}");
    let mut e = ExprBuilder::new();
    let v = e.column(1);
    let f = e.column(2);
    // INT64 + FLOAT64 without a cast: libcudf refuses mismatched operand types.
    let bad = e.binary(BinaryOp::Add, v, f);
    let err = gpu.filter_project(&b, &e, None, &[bad]).unwrap_err();
    assert!(!err.to_string().is_empty());
}
