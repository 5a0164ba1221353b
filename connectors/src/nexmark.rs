//! The Nexmark benchmark's event generator: people register, open auctions, and bid.
//!
//! Events are numbered 0, 1, 2, ...; event `e`'s kind follows the standard proportions
//! (out of every 50 events: 1 person, 3 auctions, 46 bids) and everything about it is
//! computed from `e` and the seed alone, so any event can be produced on its own: a
//! split `i` of `n` produces the events `i, i + n, i + 2n, ...` and can resume anywhere.
//! Ids, hot sellers, hot auctions, hot bidders, prices and auction lengths follow the
//! Nexmark generator's rules (Beam / nexmark-rs); event time starts at
//! `nexmark.base.time` (ms since the epoch, default 2015-07-15 00:00:00 UTC) and advances
//! 100 µs per event (10,000 events per second of event time).
//!
//! A source produces one kind of event, chosen by `nexmark.table.type`
//! (`Person`, `Auction` or `Bid`), with RisingWave's column names.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::rng::Rng;
use crate::Split;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const PROPORTION_DENOMINATOR: u64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
/// Hot sellers, auctions and bidders come in groups of this many ids.
const HOT_GROUP: u64 = 100;
/// 1 in this many sellers is not hot, and so on.
const HOT_SELLERS_RATIO: u64 = 4;
const HOT_AUCTIONS_RATIO: u64 = 2;
const HOT_BIDDERS_RATIO: u64 = 4;
const HOT_CHANNELS_RATIO: u64 = 2;
const CHANNELS: u64 = 10_000;
const ACTIVE_PEOPLE: u64 = 1000;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
const EVENT_GAP_US: i64 = 100;
/// 2015-07-15 00:00:00 UTC.
const DEFAULT_BASE_TIME_MS: u64 = 1_436_918_400_000;
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;

const FIRST_NAMES: &[&str] = &[
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: &[&str] = &[
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: &[&str] = &[
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const HOT_CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];
const HOT_URLS: &[&str] = &[
    "https://www.nexmark.com/googl/item.htm?query=1",
    "https://www.nexmark.com/fb/item.htm?query=1",
    "https://www.nexmark.com/baidu/item.htm?query=1",
    "https://www.nexmark.com/apple/item.htm?query=1",
];

/// Which events a source produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Person,
    Auction,
    Bid,
}

impl EventKind {
    /// The kind of event number `e`.
    pub fn of(e: u64) -> EventKind {
        match e % PROPORTION_DENOMINATOR {
            0 => EventKind::Person,
            1..=3 => EventKind::Auction,
            _ => EventKind::Bid,
        }
    }

    /// The columns of this kind, as RisingWave names them.
    pub fn schema(self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, None);
        let f = |n: &str, t: DataType| Field::new(n, t, true);
        Arc::new(Schema::new(match self {
            EventKind::Person => vec![
                f("id", DataType::Int64),
                f("name", DataType::Utf8),
                f("email_address", DataType::Utf8),
                f("credit_card", DataType::Utf8),
                f("city", DataType::Utf8),
                f("state", DataType::Utf8),
                f("date_time", ts()),
                f("extra", DataType::Utf8),
            ],
            EventKind::Auction => vec![
                f("id", DataType::Int64),
                f("item_name", DataType::Utf8),
                f("description", DataType::Utf8),
                f("initial_bid", DataType::Int64),
                f("reserve", DataType::Int64),
                f("date_time", ts()),
                f("expires", ts()),
                f("seller", DataType::Int64),
                f("category", DataType::Int64),
                f("extra", DataType::Utf8),
            ],
            EventKind::Bid => vec![
                f("auction", DataType::Int64),
                f("bidder", DataType::Int64),
                f("price", DataType::Int64),
                f("channel", DataType::Utf8),
                f("url", DataType::Utf8),
                f("date_time", ts()),
                f("extra", DataType::Utf8),
            ],
        }))
    }
}

/// The settings of a Nexmark source.
#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    pub kind: EventKind,
    /// Total events over all splits (all kinds count); `None`: endless.
    pub event_num: Option<u64>,
    pub split_num: u64,
    /// Minimum wall-clock gap between events of one split (0: as fast as possible).
    pub min_event_gap_ns: u64,
    pub seed: u64,
    pub base_time_ms: u64,
}

impl NexmarkConfig {
    pub fn from_options(options: &Options) -> Result<Self> {
        let kind = match options
            .get("nexmark.table.type")
            .map(str::to_ascii_lowercase)
        {
            Some(t) if t == "person" => EventKind::Person,
            Some(t) if t == "auction" => EventKind::Auction,
            Some(t) if t == "bid" => EventKind::Bid,
            Some(other) => {
                return Err(ConnectorError::Options(format!(
                    "nexmark.table.type must be Person, Auction or Bid, not '{other}'"
                )))
            }
            None => {
                return Err(ConnectorError::Options(
                    "a nexmark source needs nexmark.table.type = 'Person' | 'Auction' | 'Bid' \
                     (the combined event stream is not supported yet)"
                        .into(),
                ))
            }
        };
        let event_num = options.u64("nexmark.event.num", 0)?;
        let split_num = options.u64("nexmark.split.num", 1)?;
        if split_num == 0 || split_num > 1024 {
            return Err(ConnectorError::Options(
                "nexmark.split.num must be between 1 and 1024".into(),
            ));
        }
        Ok(Self {
            kind,
            event_num: (event_num > 0).then_some(event_num),
            split_num,
            min_event_gap_ns: options.u64("nexmark.min.event.gap.in.ns", 100_000)?,
            seed: options.u64("nexmark.seed", 0)?,
            base_time_ms: options.u64("nexmark.base.time", DEFAULT_BASE_TIME_MS)?,
        })
    }

    /// The splits of the source.
    pub fn splits(&self) -> Vec<NexmarkSplit> {
        (0..self.split_num)
            .map(|index| NexmarkSplit {
                config: self.clone(),
                index,
                position: 0,
                schema: self.kind.schema(),
            })
            .collect()
    }
}

/// Writes the rows of `kind` among the first `events` events (seed `seed`, as a source
/// with `nexmark.event.num = events` and `nexmark.seed = seed` produces them) to `out`
/// as JSON lines with the source's column names, timestamps in ISO 8601. This is how
/// other engines read the same events as Sabot (`sabot nexmark-gen`). Returns the rows
/// written.
pub fn write_json_lines(
    kind: EventKind,
    events: u64,
    seed: u64,
    out: impl std::io::Write,
) -> Result<u64> {
    let config = NexmarkConfig {
        kind,
        event_num: Some(events),
        split_num: 1,
        min_event_gap_ns: 0,
        seed,
        base_time_ms: DEFAULT_BASE_TIME_MS,
    };
    let mut writer = arrow_json::LineDelimitedWriter::new(out);
    let mut rows = 0u64;
    for mut split in config.splits() {
        while let Some(batch) = split.next_batch(8192)? {
            rows += batch.num_rows() as u64;
            writer.write(&batch)?;
        }
    }
    writer.finish()?;
    Ok(rows)
}

/// One split: events `index + k * split_num` for k = 0, 1, 2, ...
#[derive(Debug, Clone)]
pub struct NexmarkSplit {
    config: NexmarkConfig,
    index: u64,
    /// Events of this split already looked at (whatever their kind).
    position: u64,
    schema: SchemaRef,
}

impl NexmarkSplit {
    fn event_number(&self, k: u64) -> u64 {
        self.index + k * self.config.split_num
    }

    fn exhausted(&self) -> bool {
        self.config
            .event_num
            .is_some_and(|n| self.event_number(self.position) >= n)
    }
}

/// Builders for one batch of one kind (one value per batch, so size differences between
/// the kinds do not matter).
#[allow(clippy::large_enum_variant)]
enum Builders {
    Person {
        id: Int64Builder,
        name: StringBuilder,
        email: StringBuilder,
        card: StringBuilder,
        city: StringBuilder,
        state: StringBuilder,
        time: TimestampMicrosecondBuilder,
        extra: StringBuilder,
    },
    Auction {
        id: Int64Builder,
        item: StringBuilder,
        description: StringBuilder,
        initial_bid: Int64Builder,
        reserve: Int64Builder,
        time: TimestampMicrosecondBuilder,
        expires: TimestampMicrosecondBuilder,
        seller: Int64Builder,
        category: Int64Builder,
        extra: StringBuilder,
    },
    Bid {
        auction: Int64Builder,
        bidder: Int64Builder,
        price: Int64Builder,
        channel: StringBuilder,
        url: StringBuilder,
        time: TimestampMicrosecondBuilder,
        extra: StringBuilder,
    },
}

impl Builders {
    fn new(kind: EventKind) -> Self {
        match kind {
            EventKind::Person => Builders::Person {
                id: Int64Builder::new(),
                name: StringBuilder::new(),
                email: StringBuilder::new(),
                card: StringBuilder::new(),
                city: StringBuilder::new(),
                state: StringBuilder::new(),
                time: TimestampMicrosecondBuilder::new(),
                extra: StringBuilder::new(),
            },
            EventKind::Auction => Builders::Auction {
                id: Int64Builder::new(),
                item: StringBuilder::new(),
                description: StringBuilder::new(),
                initial_bid: Int64Builder::new(),
                reserve: Int64Builder::new(),
                time: TimestampMicrosecondBuilder::new(),
                expires: TimestampMicrosecondBuilder::new(),
                seller: Int64Builder::new(),
                category: Int64Builder::new(),
                extra: StringBuilder::new(),
            },
            EventKind::Bid => Builders::Bid {
                auction: Int64Builder::new(),
                bidder: Int64Builder::new(),
                price: Int64Builder::new(),
                channel: StringBuilder::new(),
                url: StringBuilder::new(),
                time: TimestampMicrosecondBuilder::new(),
                extra: StringBuilder::new(),
            },
        }
    }

    fn finish(self) -> Vec<ArrayRef> {
        fn a<T: arrow::array::Array + 'static>(x: T) -> ArrayRef {
            Arc::new(x)
        }
        match self {
            Builders::Person {
                mut id,
                mut name,
                mut email,
                mut card,
                mut city,
                mut state,
                mut time,
                mut extra,
            } => vec![
                a(id.finish()),
                a(name.finish()),
                a(email.finish()),
                a(card.finish()),
                a(city.finish()),
                a(state.finish()),
                a(time.finish()),
                a(extra.finish()),
            ],
            Builders::Auction {
                mut id,
                mut item,
                mut description,
                mut initial_bid,
                mut reserve,
                mut time,
                mut expires,
                mut seller,
                mut category,
                mut extra,
            } => vec![
                a(id.finish()),
                a(item.finish()),
                a(description.finish()),
                a(initial_bid.finish()),
                a(reserve.finish()),
                a(time.finish()),
                a(expires.finish()),
                a(seller.finish()),
                a(category.finish()),
                a(extra.finish()),
            ],
            Builders::Bid {
                mut auction,
                mut bidder,
                mut price,
                mut channel,
                mut url,
                mut time,
                mut extra,
            } => vec![
                a(auction.finish()),
                a(bidder.finish()),
                a(price.finish()),
                a(channel.finish()),
                a(url.finish()),
                a(time.finish()),
                a(extra.finish()),
            ],
        }
    }
}

/// How many people exist once event `e` happened, minus one.
fn last_base0_person_id(e: u64) -> u64 {
    // One person opens each group of 50 events, so the offset within the group adds
    // nothing (it would with a person proportion above 1).
    (e / PROPORTION_DENOMINATOR) * PERSON_PROPORTION
}

/// How many auctions exist once event `e` happened, minus one (saturating at 0).
fn last_base0_auction_id(e: u64) -> u64 {
    let mut epoch = e / PROPORTION_DENOMINATOR;
    let mut offset = e % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        if epoch == 0 {
            return 0;
        }
        epoch -= 1;
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

/// A recently active person, or one about to join.
fn next_base0_person_id(e: u64, rng: &mut Rng) -> u64 {
    let people = last_base0_person_id(e) + 1;
    let active = people.min(ACTIVE_PEOPLE);
    let n = rng.below(active + PERSON_ID_LEAD);
    people - active + n
}

/// An auction still in flight, or one about to open.
fn next_base0_auction_id(e: u64, rng: &mut Rng) -> u64 {
    let max = last_base0_auction_id(e);
    let min = max.saturating_sub(IN_FLIGHT_AUCTIONS);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}

/// Prices spread over six orders of magnitude, in cents.
fn next_price(rng: &mut Rng) -> i64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as i64
}

/// Filler text bringing an event to about `average` bytes.
fn extra(rng: &mut Rng, current: usize, average: usize, out: &mut String) {
    out.clear();
    if current >= average {
        return;
    }
    let delta = average - current;
    let low = delta * 9 / 10;
    let len = low + rng.below((delta * 2 / 10 + 1) as u64) as usize;
    rng.string(len, out);
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Split for NexmarkSplit {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>> {
        if self.exhausted() {
            return Ok(None);
        }
        let seed = self.config.seed;
        let base_us = i64_of(self.config.base_time_ms).saturating_mul(1000);
        let mut b = Builders::new(self.config.kind);
        let mut rows = 0;
        let mut s1 = String::new();
        let mut s2 = String::new();
        while rows < max && !self.exhausted() {
            let e = self.event_number(self.position);
            self.position += 1;
            if EventKind::of(e) != self.config.kind {
                continue;
            }
            rows += 1;
            let mut rng = Rng::for_item(seed, e);
            let time = base_us.saturating_add(i64_of(e).saturating_mul(EVENT_GAP_US));
            match &mut b {
                Builders::Person {
                    id,
                    name,
                    email,
                    card,
                    city,
                    state,
                    time: t,
                    extra: x,
                } => {
                    id.append_value(FIRST_PERSON_ID + i64_of(last_base0_person_id(e)));
                    s1.clear();
                    s1.push_str(FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize]);
                    s1.push(' ');
                    s1.push_str(LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]);
                    name.append_value(&s1);
                    let mut size = 8 + s1.len();
                    s1.clear();
                    rng.string(7, &mut s1);
                    s1.push('@');
                    rng.string(5, &mut s1);
                    s1.push_str(".com");
                    email.append_value(&s1);
                    size += s1.len();
                    s1.clear();
                    for g in 0..4 {
                        if g > 0 {
                            s1.push(' ');
                        }
                        for _ in 0..4 {
                            s1.push(char::from(b'0' + rng.below(10) as u8));
                        }
                    }
                    card.append_value(&s1);
                    size += s1.len();
                    let c = US_CITIES[rng.below(US_CITIES.len() as u64) as usize];
                    let st = US_STATES[rng.below(US_STATES.len() as u64) as usize];
                    city.append_value(c);
                    state.append_value(st);
                    size += c.len() + st.len() + 8;
                    t.append_value(time);
                    extra(&mut rng, size, AVG_PERSON_BYTES, &mut s2);
                    x.append_value(&s2);
                }
                Builders::Auction {
                    id,
                    item,
                    description,
                    initial_bid,
                    reserve,
                    time: t,
                    expires,
                    seller,
                    category,
                    extra: x,
                } => {
                    id.append_value(FIRST_AUCTION_ID + i64_of(last_base0_auction_id(e)));
                    s1.clear();
                    rng.string(20, &mut s1);
                    item.append_value(&s1);
                    s1.clear();
                    rng.string(100, &mut s1);
                    description.append_value(&s1);
                    let first = next_price(&mut rng);
                    initial_bid.append_value(first);
                    reserve.append_value(first + next_price(&mut rng));
                    t.append_value(time);
                    // Open for a random time up to twice the span in which the in-flight
                    // auctions are replaced.
                    let horizon =
                        i64_of(IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR / AUCTION_PROPORTION)
                            * EVENT_GAP_US;
                    expires.append_value(time + 1 + rng.below((2 * horizon) as u64) as i64);
                    let s = if rng.below(HOT_SELLERS_RATIO) > 0 {
                        (last_base0_person_id(e) / HOT_GROUP) * HOT_GROUP
                    } else {
                        next_base0_person_id(e, &mut rng)
                    };
                    seller.append_value(FIRST_PERSON_ID + i64_of(s));
                    category.append_value(FIRST_CATEGORY_ID + i64_of(rng.below(NUM_CATEGORIES)));
                    extra(&mut rng, 20 + 100 + 48, AVG_AUCTION_BYTES, &mut s2);
                    x.append_value(&s2);
                }
                Builders::Bid {
                    auction,
                    bidder,
                    price,
                    channel,
                    url,
                    time: t,
                    extra: x,
                } => {
                    let a = if rng.below(HOT_AUCTIONS_RATIO) > 0 {
                        (last_base0_auction_id(e) / HOT_GROUP) * HOT_GROUP
                    } else {
                        next_base0_auction_id(e, &mut rng)
                    };
                    auction.append_value(FIRST_AUCTION_ID + i64_of(a));
                    let p = if rng.below(HOT_BIDDERS_RATIO) > 0 {
                        (last_base0_person_id(e) / HOT_GROUP) * HOT_GROUP + 1
                    } else {
                        next_base0_person_id(e, &mut rng)
                    };
                    bidder.append_value(FIRST_PERSON_ID + i64_of(p));
                    price.append_value(next_price(&mut rng));
                    if rng.below(HOT_CHANNELS_RATIO) > 0 {
                        let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
                        channel.append_value(HOT_CHANNELS[i]);
                        url.append_value(HOT_URLS[i]);
                    } else {
                        let c = rng.below(CHANNELS);
                        s1.clear();
                        s1.push_str("channel-");
                        s1.push_str(&c.to_string());
                        channel.append_value(&s1);
                        s1.clear();
                        s1.push_str("https://www.nexmark.com/");
                        rng.string(5, &mut s1);
                        s1.push('/');
                        rng.string(5, &mut s1);
                        s1.push_str("/item.htm?query=1&channel_id=");
                        s1.push_str(&c.to_string());
                        url.append_value(&s1);
                    }
                    t.append_value(time);
                    extra(&mut rng, 32 + 40, AVG_BID_BYTES, &mut s2);
                    x.append_value(&s2);
                }
            }
        }
        if rows == 0 {
            return Ok(if self.exhausted() {
                None
            } else {
                Some(RecordBatch::new_empty(Arc::clone(&self.schema)))
            });
        }
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.schema),
            b.finish(),
        )?))
    }

    fn offset(&self) -> u64 {
        self.position
    }

    fn end_offset(&self) -> Option<u64> {
        // The split looks at events index, index + split_num, ... below event_num.
        let n = self.config.event_num?;
        Some(
            n.saturating_sub(self.index)
                .div_ceil(self.config.split_num.max(1)),
        )
    }

    fn seek(&mut self, offset: u64) {
        self.position = offset;
    }

    fn rate(&self) -> Option<f64> {
        // The gap is between events of any kind; a source sees its kind's share.
        (self.config.min_event_gap_ns > 0).then(|| 1e9 / self.config.min_event_gap_ns as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::Int64Type;

    #[test]
    fn json_lines_hold_what_a_source_reads() {
        let mut out = Vec::new();
        let rows = write_json_lines(EventKind::Bid, 1000, 3, &mut out).unwrap();
        // 46 of every 50 events are bids.
        assert_eq!(rows, 920);
        let lines: Vec<serde_json::Value> = std::str::from_utf8(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 920);
        let mut split = NexmarkConfig {
            kind: EventKind::Bid,
            event_num: Some(1000),
            split_num: 1,
            min_event_gap_ns: 0,
            seed: 3,
            base_time_ms: DEFAULT_BASE_TIME_MS,
        }
        .splits()
        .remove(0);
        let batch = split.next_batch(10).unwrap().unwrap();
        let prices = batch.column(2).as_primitive::<Int64Type>();
        for (i, line) in lines.iter().take(10).enumerate() {
            assert_eq!(line["price"], prices.value(i));
            assert_eq!(
                line["auction"],
                batch.column(0).as_primitive::<Int64Type>().value(i)
            );
        }
        // ISO 8601, as Flink's JSON format reads it.
        let first = lines[0]["date_time"].as_str().unwrap();
        assert!(first.starts_with("2015-07-15T00:00:00"), "{first}");
    }

    fn config(kind: &str, events: u64, splits: u64) -> NexmarkConfig {
        NexmarkConfig::from_options(&Options::new([
            ("nexmark.table.type".to_string(), kind.to_string()),
            ("nexmark.event.num".to_string(), events.to_string()),
            ("nexmark.split.num".to_string(), splits.to_string()),
        ]))
        .unwrap()
    }

    /// Each split knows its end offset: the offset it has reached once exhausted.
    #[test]
    fn end_offsets_are_where_splits_run_out() {
        for (events, splits) in [(1000, 3), (7, 4), (2, 5), (50, 1)] {
            let c = config("bid", events, splits);
            let mut total = 0;
            for mut s in c.splits() {
                let end = s.end_offset().unwrap();
                while s.next_batch(64).unwrap().is_some() {}
                assert_eq!(s.offset(), end, "{events} events over {splits} splits");
                total += end;
            }
            assert_eq!(total, events);
        }
    }

    fn drain(split: &mut NexmarkSplit, chunk: usize) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        while let Some(b) = split.next_batch(chunk).unwrap() {
            out.push(b);
        }
        out
    }

    #[test]
    fn proportions_and_ids() {
        let mut counts = [0usize; 3];
        for (i, kind) in ["Person", "Auction", "Bid"].iter().enumerate() {
            for mut s in config(kind, 10_000, 1).splits() {
                counts[i] += drain(&mut s, 777)
                    .iter()
                    .map(|b| b.num_rows())
                    .sum::<usize>();
            }
        }
        assert_eq!(counts, [200, 600, 9200]);
        let mut s = config("Person", 10_000, 1).splits().remove(0);
        let b = drain(&mut s, 10_000).remove(0);
        let ids = b.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.value(0), 1000);
        assert_eq!(ids.value(199), 1199);
    }

    #[test]
    fn splits_partition_the_events_and_resume_anywhere() {
        let whole: Vec<RecordBatch> = drain(&mut config("Bid", 5_000, 1).splits().remove(0), 5_000);
        let whole = arrow::compute::concat_batches(&whole[0].schema(), &whole).unwrap();
        let mut parts = Vec::new();
        for mut s in config("Bid", 5_000, 3).splits() {
            // Stop midway, then continue in a fresh split seeked to the offset.
            let first = s.next_batch(100).unwrap().unwrap();
            let mut resumed = config("Bid", 5_000, 3).splits().remove(s.index as usize);
            resumed.seek(s.offset());
            parts.push(first);
            parts.extend(drain(&mut resumed, 333));
        }
        let parts = arrow::compute::concat_batches(&whole.schema(), &parts).unwrap();
        assert_eq!(parts.num_rows(), whole.num_rows());
        // Same multiset of rows: compare sorted (auction, bidder, price, date_time).
        let key = |b: &RecordBatch| {
            let mut v: Vec<(i64, i64, i64, i64)> = (0..b.num_rows())
                .map(|r| {
                    let c = |i: usize| b.column(i).as_primitive::<Int64Type>().value(r);
                    let t = b
                        .column(5)
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .value(r);
                    (c(0), c(1), c(2), t)
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(key(&parts), key(&whole));
    }

    #[test]
    fn bids_reference_existing_or_imminent_auctions() {
        let b = drain(&mut config("Bid", 20_000, 1).splits().remove(0), 20_000).remove(0);
        let auctions: &Int64Array = b.column(0).as_primitive();
        let max_auction =
            FIRST_AUCTION_ID + i64_of(last_base0_auction_id(20_000)) + AUCTION_ID_LEAD as i64;
        assert!(auctions
            .values()
            .iter()
            .all(|a| *a >= FIRST_AUCTION_ID && *a <= max_auction));
        let prices: &Int64Array = b.column(2).as_primitive();
        assert!(prices
            .values()
            .iter()
            .all(|p| (100..=100_000_000).contains(p)));
    }

    #[test]
    fn bad_options_are_refused() {
        let e = NexmarkConfig::from_options(&Options::new([(
            "nexmark.table.type".to_string(),
            "Bids".to_string(),
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("Person, Auction or Bid"));
        let e = NexmarkConfig::from_options(&Options::new([
            ("nexmark.table.type".to_string(), "Bid".to_string()),
            ("nexmark.event.num".to_string(), "-1".to_string()),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("non-negative integer"));
    }
}
