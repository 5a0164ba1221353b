//! Avro object container files (`.avro`): the magic `Obj\x01`, a metadata map holding
//! the writer's schema (`avro.schema`) and codec (`avro.codec`), a 16-byte sync marker,
//! then blocks: a count of records, the size of the (compressed) records, the records
//! one after another, and the sync marker again.
//!
//! Codecs read and written: `null`, `deflate` (raw RFC 1951), `snappy` (with the CRC-32
//! of the uncompressed block after it) and `zstandard`.

use std::borrow::Cow;
use std::io::{Read, Write};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::read::{skip, Input, Plan};
use super::schema::Node;
use super::write::{bytes, long};

const MAGIC: &[u8; 4] = b"Obj\x01";

/// The most bytes a block may decompress to: a bound on what a corrupt or hostile file
/// can make the reader allocate.
const MAX_BLOCK: u64 = 1 << 30;

/// How a container's blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Null,
    Deflate,
    Snappy,
    Zstandard,
}

impl Codec {
    /// The codec called `name` in `avro.codec`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "null" => Ok(Codec::Null),
            "deflate" => Ok(Codec::Deflate),
            "snappy" => Ok(Codec::Snappy),
            "zstandard" => Ok(Codec::Zstandard),
            other => Err(format!(
                "Avro codec '{other}' is not supported (null, deflate, snappy and zstandard are)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::Null => "null",
            Codec::Deflate => "deflate",
            Codec::Snappy => "snappy",
            Codec::Zstandard => "zstandard",
        }
    }

    fn compress(self, data: &[u8]) -> Result<Vec<u8>, String> {
        let failed = |e: std::io::Error| format!("{} compression: {e}", self.name());
        Ok(match self {
            Codec::Null => data.to_vec(),
            Codec::Deflate => {
                let mut w =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                w.write_all(data).map_err(failed)?;
                w.finish().map_err(failed)?
            }
            Codec::Snappy => {
                let mut out = snap::raw::Encoder::new()
                    .compress_vec(data)
                    .map_err(|e| format!("snappy compression: {e}"))?;
                out.extend_from_slice(&crc32fast::hash(data).to_be_bytes());
                out
            }
            Codec::Zstandard => zstd::stream::encode_all(data, 0).map_err(failed)?,
        })
    }

    fn decompress(self, data: &[u8]) -> Result<Cow<'_, [u8]>, String> {
        let failed = |e: std::io::Error| format!("a {} block: {e}", self.name());
        let bounded = |r: &mut dyn Read| -> Result<Vec<u8>, String> {
            let mut out = Vec::new();
            r.take(MAX_BLOCK + 1)
                .read_to_end(&mut out)
                .map_err(failed)?;
            if out.len() as u64 > MAX_BLOCK {
                return Err(format!("a block larger than {MAX_BLOCK} bytes"));
            }
            Ok(out)
        };
        Ok(match self {
            Codec::Null => Cow::Borrowed(data),
            Codec::Deflate => Cow::Owned(bounded(&mut flate2::read::DeflateDecoder::new(data))?),
            Codec::Snappy => {
                let Some((body, crc)) = data.split_last_chunk::<4>() else {
                    return Err("a snappy block without its checksum".into());
                };
                let len = snap::raw::decompress_len(body).map_err(|e| e.to_string())?;
                if len as u64 > MAX_BLOCK {
                    return Err(format!("a block larger than {MAX_BLOCK} bytes"));
                }
                let out = snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .map_err(|e| format!("a snappy block: {e}"))?;
                if crc32fast::hash(&out).to_be_bytes() != *crc {
                    return Err("a snappy block whose checksum does not match".into());
                }
                Cow::Owned(out)
            }
            Codec::Zstandard => {
                let mut decoder = zstd::stream::Decoder::new(data).map_err(failed)?;
                Cow::Owned(bounded(&mut decoder)?)
            }
        })
    }
}

/// A container file's header and where its blocks start.
pub struct Container<'a> {
    pub schema: Node,
    /// The writer's schema as the file has it (JSON).
    pub schema_text: String,
    codec: Codec,
    sync: [u8; 16],
    bytes: &'a [u8],
    blocks_at: usize,
}

impl<'a> Container<'a> {
    /// Reads the header of the container file `bytes`.
    pub fn open(bytes: &'a [u8]) -> Result<Self, String> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Err("not an Avro container file (no Obj\\x01 magic)".into());
        };
        let mut input = Input::new(rest);
        let mut schema_text = None;
        let mut codec = Codec::Null;
        input.blocks(|input| {
            let key = input.str()?;
            let value = input.bytes()?;
            match key {
                "avro.schema" => {
                    let text = std::str::from_utf8(value)
                        .map_err(|_| "avro.schema is not UTF-8".to_string())?;
                    schema_text = Some(text.to_string());
                }
                "avro.codec" => {
                    codec = Codec::parse(
                        std::str::from_utf8(value)
                            .map_err(|_| "avro.codec is not UTF-8".to_string())?,
                    )?;
                }
                _ => {}
            }
            Ok(())
        })?;
        let sync: [u8; 16] = input
            .take(16)?
            .try_into()
            .map_err(|_| "the header's sync marker is cut short".to_string())?;
        let schema_text = schema_text.ok_or("the header has no avro.schema")?;
        let schema = Node::parse(&schema_text).map_err(|e| format!("avro.schema: {e}"))?;
        Ok(Self {
            schema,
            schema_text,
            codec,
            sync,
            bytes: rest,
            blocks_at: input.position(),
        })
    }

    /// The blocks: each one's record count and (compressed) records. A file cut short
    /// inside a block, or a block not followed by the sync marker, is an error.
    fn blocks(&self) -> impl Iterator<Item = Result<(u64, &'a [u8]), String>> + '_ {
        let mut input = Input::new(&self.bytes[self.blocks_at..]);
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || input.remaining() == 0 {
                return None;
            }
            let block = (|| {
                let count = u64::try_from(input.long()?)
                    .map_err(|_| "a block with a negative record count".to_string())?;
                let data = input.bytes()?;
                if input.take(16)? != self.sync {
                    return Err("a block not followed by the file's sync marker".to_string());
                }
                Ok((count, data))
            })();
            failed = block.is_err();
            Some(block)
        })
    }

    /// How many records the file holds.
    pub fn count(&self) -> Result<u64, String> {
        self.blocks().map(|b| b.map(|(n, _)| n)).sum()
    }

    /// Records `offset..offset + limit` read into the columns of `target` (fields
    /// matched by name), or `None` when there are none there.
    pub fn rows(
        &self,
        target: &SchemaRef,
        offset: u64,
        limit: usize,
    ) -> Result<Option<RecordBatch>, String> {
        let plan = Plan::new(&self.schema, target)?;
        let mut rows = plan.start();
        let mut first = 0u64;
        let mut read = 0usize;
        for block in self.blocks() {
            if read >= limit {
                break;
            }
            let (count, data) = block?;
            let next = first + count;
            if next <= offset {
                first = next;
                continue;
            }
            let data = self.codec.decompress(data)?;
            let mut input = Input::new(&data);
            for i in first..next {
                if i < offset {
                    skip(&self.schema, &mut input)?;
                } else if read < limit {
                    rows.push_from(&mut input)
                        .map_err(|e| format!("record {i}: {e}"))?;
                    read += 1;
                } else {
                    break;
                }
            }
            if read < limit && input.remaining() != 0 {
                return Err(format!(
                    "{} bytes left after the {count} records of a block",
                    input.remaining()
                ));
            }
            first = next;
        }
        if read == 0 {
            return Ok(None);
        }
        rows.finish().map(Some)
    }
}

/// A container file of `records` (`count` of them, one after another) under the writer
/// schema `schema` (JSON), compressed with `codec`, with sync marker `sync`.
pub fn container(
    schema: &str,
    records: &[u8],
    count: u64,
    codec: Codec,
    sync: [u8; 16],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(records.len() + schema.len() + 64);
    out.extend_from_slice(MAGIC);
    long(2, &mut out);
    bytes(b"avro.schema", &mut out);
    bytes(schema.as_bytes(), &mut out);
    bytes(b"avro.codec", &mut out);
    bytes(codec.name().as_bytes(), &mut out);
    long(0, &mut out);
    out.extend_from_slice(&sync);
    if count > 0 {
        long(count as i64, &mut out);
        bytes(&codec.compress(records)?, &mut out);
        out.extend_from_slice(&sync);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::write::{datums, record_schema};
    use super::*;
    use arrow::array::{ArrayRef, AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn file(codec: Codec, ids: Vec<i64>) -> Vec<u8> {
        let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
            ("name", Arc::new(StringArray::from(names)) as ArrayRef),
        ])
        .unwrap();
        let schema = record_schema("t", batch.schema().fields()).unwrap();
        let mut records = Vec::new();
        datums(&batch, &mut records).unwrap();
        container(
            &schema.to_string(),
            &records,
            ids.len() as u64,
            codec,
            [7; 16],
        )
        .unwrap()
    }

    fn target() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int64, true),
        ]))
    }

    #[test]
    fn every_codec_round_trips_and_reads_from_an_offset() {
        for codec in [Codec::Null, Codec::Deflate, Codec::Snappy, Codec::Zstandard] {
            let bytes = file(codec, (1..=10).collect());
            let c = Container::open(&bytes).unwrap();
            assert_eq!(c.count().unwrap(), 10);
            let b = c.rows(&target(), 3, 4).unwrap().unwrap();
            let ids: Vec<i64> = b.column(1).as_primitive::<Int64Type>().values().to_vec();
            assert_eq!(ids, vec![4, 5, 6, 7], "{codec:?}");
            assert_eq!(b.column(0).as_string::<i32>().value(0), "n4");
            assert!(c.rows(&target(), 10, 4).unwrap().is_none());
        }
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let bytes = file(Codec::Snappy, vec![1, 2, 3]);
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            if let Ok(c) = Container::open(part) {
                let _ = c.count();
                let _ = c.rows(&target(), 0, 10);
            }
        }
        let Some(c) = Container::open(&bytes[..bytes.len() - 1]).ok() else {
            panic!("the header is whole");
        };
        assert!(c.count().is_err());
        let mut flipped = bytes.clone();
        let at = flipped.len() - 20;
        flipped[at] ^= 0xff;
        let c = Container::open(&flipped).unwrap();
        assert!(c.rows(&target(), 0, 10).is_err());
        assert!(Container::open(b"PAR1").is_err());
    }
}
