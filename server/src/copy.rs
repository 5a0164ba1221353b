//! `COPY ... TO STDOUT`: rows streamed to the client in PostgreSQL's text or CSV format
//! (what psql's `\copy ... to` and drivers' copy APIs read).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use bytes::{Buf, Bytes};
use futures::stream;
use pgwire::api::results::{CopyResponse, FieldFormat, Response};
use pgwire::error::PgWireResult;
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;
use sabot_sql::CopyOptions;

use crate::encode::{encode_rows, fields};

/// The CopyOut response for a query's result.
pub fn copy_out(
    schema: &Schema,
    batches: &[RecordBatch],
    options: &CopyOptions,
) -> PgWireResult<Response> {
    let fields = Arc::new(fields(schema, |_| FieldFormat::Text));
    let rows = encode_rows(batches, &fields)?;
    let mut lines: Vec<Vec<u8>> = rows.iter().map(|r| line(r, options)).collect();
    if options.header {
        let names: Vec<Option<&[u8]>> = schema
            .fields()
            .iter()
            .map(|f| Some(f.name().as_bytes()))
            .collect();
        let header = join(&names, options);
        // The client counts a message per row: the header shares the first row's.
        match lines.first_mut() {
            Some(first) => {
                let mut joined = header;
                joined.extend_from_slice(first);
                *first = joined;
            }
            None => lines.push(header),
        }
    }
    let columns = schema.fields().len();
    let data = lines.into_iter().map(|l| Ok(CopyData::new(Bytes::from(l))));
    Ok(Response::CopyOut(CopyResponse::new(
        0,
        columns,
        stream::iter(data),
    )))
}

/// The fields of an encoded text row (`None` for NULL).
fn row_fields(row: &DataRow) -> Vec<Option<&[u8]>> {
    let mut data: &[u8] = &row.data;
    let mut out = Vec::with_capacity(usize::try_from(row.field_count).unwrap_or(0));
    while data.len() >= 4 {
        let len = data.get_i32();
        match usize::try_from(len) {
            Ok(n) if n <= data.len() => {
                out.push(Some(&data[..n]));
                data = &data[n..];
            }
            _ => out.push(None),
        }
    }
    out
}

fn line(row: &DataRow, options: &CopyOptions) -> Vec<u8> {
    join(&row_fields(row), options)
}

/// One line: fields joined by the delimiter, NULLs as the null string, values escaped
/// (text format) or quoted where needed (CSV), ending in a newline.
fn join(fields: &[Option<&[u8]>], o: &CopyOptions) -> Vec<u8> {
    let mut out = Vec::new();
    let mut delim = [0u8; 4];
    let delim = o.delimiter.encode_utf8(&mut delim).as_bytes();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(delim);
        }
        match f {
            None => out.extend_from_slice(o.null.as_bytes()),
            Some(v) if o.csv => csv_field(&mut out, v, o, delim),
            Some(v) => text_field(&mut out, v, delim),
        }
    }
    out.push(b'\n');
    out
}

fn text_field(out: &mut Vec<u8>, v: &[u8], delim: &[u8]) {
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0b => out.extend_from_slice(b"\\v"),
            b if delim.len() == 1 && b == delim[0] => {
                out.push(b'\\');
                out.push(b);
            }
            b => out.push(b),
        }
    }
}

fn csv_field(out: &mut Vec<u8>, v: &[u8], o: &CopyOptions, delim: &[u8]) {
    let mut q = [0u8; 4];
    let quote = o.quote.encode_utf8(&mut q).as_bytes();
    let needs = v == o.null.as_bytes()
        || v.windows(delim.len()).any(|w| w == delim)
        || v.windows(quote.len()).any(|w| w == quote)
        || v.iter().any(|&b| b == b'\n' || b == b'\r')
        || v == b"\\.";
    if !needs {
        out.extend_from_slice(v);
        return;
    }
    out.extend_from_slice(quote);
    let mut rest = v;
    while !rest.is_empty() {
        if rest.starts_with(quote) {
            out.extend_from_slice(quote);
            out.extend_from_slice(quote);
            rest = &rest[quote.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out.extend_from_slice(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::api::results::DataRowEncoder;

    fn text() -> CopyOptions {
        CopyOptions::default()
    }

    fn csv() -> CopyOptions {
        CopyOptions {
            csv: true,
            delimiter: ',',
            null: String::new(),
            ..CopyOptions::default()
        }
    }

    #[test]
    fn text_format_escapes_like_postgres() {
        let line = join(&[Some(b"a\tb\\c\nd"), None, Some(b"")], &text());
        assert_eq!(line, b"a\\tb\\\\c\\nd\t\\N\t\n");
    }

    #[test]
    fn csv_quotes_only_where_needed() {
        let line = join(
            &[
                Some(b"plain"),
                Some(b"a,b"),
                Some(b"say \"hi\""),
                None,
                Some(b""),
            ],
            &csv(),
        );
        assert_eq!(line, b"plain,\"a,b\",\"say \"\"hi\"\"\",,\"\"\n");
    }

    #[test]
    fn fields_are_read_back_from_encoded_rows() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("a", arrow::datatypes::DataType::Utf8, true),
        ]));
        let fields = Arc::new(fields(&schema, |_| FieldFormat::Text));
        let mut enc = DataRowEncoder::new(Arc::clone(&fields));
        enc.encode_field(&Some("x y")).unwrap();
        let row = enc.take_row();
        assert_eq!(row_fields(&row), vec![Some(&b"x y"[..])]);
    }
}
