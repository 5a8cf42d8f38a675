//! Subscription filters: MongoDB-style conditions over an event, given with a `subscribe`
//! (`"filter": {...}`, `docs/PROTOCOL.md`). A filter is validated and compiled once; identical
//! filters (the same JSON) share one compiled [`Filter`] with one small id, and each event
//! remembers its verdict per id, so an event is evaluated once per distinct filter however many
//! subscribers use it.
//!
//! ```
//! use serde_json::json;
//! use weft_server::filter::Filter;
//!
//! let f = Filter::compile(&json!({"payload.price": {"$gt": 100}, "payload.side": {"$in": ["buy", "sell"]}})).unwrap();
//! assert!(f.matches_value("t", &json!({"price": 120, "side": "buy"})));
//! assert!(!f.matches_value("t", &json!({"price": 80, "side": "buy"})));
//! assert!(Filter::compile(&json!({"payload.price": {"$near": 1}})).is_err());
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

use serde_json::Value;

use crate::wire::Event;

/// Most bytes of a filter's JSON.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Most nesting of `$and` / `$or`.
pub const MAX_DEPTH: usize = 8;
/// Most conditions in one filter.
pub const MAX_CONDITIONS: usize = 64;
/// Most values in one `$in` / `$nin`.
pub const MAX_IN: usize = 256;
/// Most bytes of a `$regex` pattern; its compiled program is capped too (linear-time matching
/// by the `regex` crate, no backtracking).
pub const MAX_REGEX: usize = 256;
/// Most distinct filters alive in the process at once.
pub const MAX_FILTERS: usize = 10_000;
/// Filters whose verdicts an event keeps (the first ids; the others are evaluated for each
/// subscriber): an event's verdict table is at most this many words.
pub const CACHED_FILTERS: usize = 128;

/// A compiled filter.
#[derive(Debug)]
pub struct Filter {
    root: Node,
    /// Its slot in the registry + 1 (0: not registered).
    id: u32,
    /// Unique per registration: a verdict an event kept for an earlier filter of the same slot
    /// is not taken for this one's.
    generation: u64,
    key: String,
}

#[derive(Debug)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Cond { path: Path, op: Op },
}

#[derive(Debug)]
struct Path {
    root: Root,
    rest: Vec<Box<str>>,
}

#[derive(Debug, Clone, Copy)]
enum Root {
    Payload,
    Topic,
    Id,
    Time,
    Offset,
}

#[derive(Debug)]
enum Op {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Lt(Value),
    Gte(Value),
    Lte(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Regex(regex::Regex),
    Exists(bool),
    Contains(Value),
    StartsWith(String),
    EndsWith(String),
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FilterError {}

fn bad(msg: impl Into<String>) -> FilterError {
    FilterError(msg.into())
}

struct Compiler {
    conditions: usize,
}

impl Compiler {
    /// A filter object: every entry must hold.
    fn object(&mut self, v: &Value, depth: usize) -> Result<Node, FilterError> {
        if depth > MAX_DEPTH {
            return Err(bad(format!("filter nested deeper than {MAX_DEPTH}")));
        }
        let Value::Object(map) = v else { return Err(bad("a filter is a JSON object")) };
        if map.is_empty() {
            return Err(bad("an empty filter matches everything: leave it out"));
        }
        let mut all = Vec::with_capacity(map.len());
        for (k, v) in map {
            all.push(match k.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = v else { return Err(bad(format!("{k} takes an array of filters"))) };
                    if items.is_empty() {
                        return Err(bad(format!("{k} takes a non-empty array")));
                    }
                    let nodes = items.iter().map(|i| self.object(i, depth + 1)).collect::<Result<Vec<_>, _>>()?;
                    if k == "$and" { Node::All(nodes) } else { Node::Any(nodes) }
                }
                op if op.starts_with('$') => return Err(bad(format!("unknown top-level operator {op}"))),
                path => self.field(path, v)?,
            });
        }
        Ok(if all.len() == 1 { all.pop().expect("one") } else { Node::All(all) })
    }

    /// `path: value` (equality) or `path: {"$op": arg, ...}` (all must hold).
    fn field(&mut self, path: &str, v: &Value) -> Result<Node, FilterError> {
        let path = parse_path(path)?;
        let ops: Vec<(&String, &Value)> = match v {
            Value::Object(m) if !m.is_empty() && m.keys().all(|k| k.starts_with('$')) => m.iter().collect(),
            Value::Object(m) if m.keys().any(|k| k.starts_with('$')) => {
                return Err(bad("an operator object may hold operators only"));
            }
            _ => {
                self.count()?;
                return Ok(Node::Cond { path, op: Op::Eq(v.clone()) });
            }
        };
        let mut conds = Vec::with_capacity(ops.len());
        for (op, arg) in ops {
            self.count()?;
            let op = compile_op(op, arg)?;
            conds.push(Node::Cond { path: Path { root: path.root, rest: path.rest.clone() }, op });
        }
        Ok(if conds.len() == 1 { conds.pop().expect("one") } else { Node::All(conds) })
    }

    fn count(&mut self) -> Result<(), FilterError> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(bad(format!("more than {MAX_CONDITIONS} conditions")));
        }
        Ok(())
    }
}

fn parse_path(p: &str) -> Result<Path, FilterError> {
    let mut parts = p.split('.');
    let root = match parts.next() {
        Some("payload") => Root::Payload,
        Some("topic") => Root::Topic,
        Some("id") => Root::Id,
        Some("time") => Root::Time,
        Some("offset") => Root::Offset,
        _ => {
            return Err(bad(format!(
                "path {p:?} must start with payload, topic, id, time or offset (payload.price, payload.user.name)"
            )));
        }
    };
    let rest: Vec<Box<str>> = parts.map(Into::into).collect();
    if rest.iter().any(|s| s.is_empty()) {
        return Err(bad(format!("path {p:?} has an empty segment")));
    }
    if !matches!(root, Root::Payload) && !rest.is_empty() {
        return Err(bad(format!("path {p:?}: only payload has fields")));
    }
    Ok(Path { root, rest })
}

fn compile_op(op: &str, arg: &Value) -> Result<Op, FilterError> {
    let string = |what: &str| -> Result<String, FilterError> {
        arg.as_str().map(str::to_owned).ok_or_else(|| bad(format!("{what} takes a string")))
    };
    let list = || -> Result<Vec<Value>, FilterError> {
        match arg {
            Value::Array(a) if a.len() <= MAX_IN => Ok(a.clone()),
            Value::Array(_) => Err(bad(format!("{op} takes at most {MAX_IN} values"))),
            _ => Err(bad(format!("{op} takes an array"))),
        }
    };
    let ordered = || -> Result<Value, FilterError> {
        match arg {
            Value::Number(_) | Value::String(_) => Ok(arg.clone()),
            _ => Err(bad(format!("{op} compares with a number or a string"))),
        }
    };
    Ok(match op {
        "$eq" => Op::Eq(arg.clone()),
        "$ne" => Op::Ne(arg.clone()),
        "$gt" => Op::Gt(ordered()?),
        "$lt" => Op::Lt(ordered()?),
        "$gte" => Op::Gte(ordered()?),
        "$lte" => Op::Lte(ordered()?),
        "$in" => Op::In(list()?),
        "$nin" => Op::Nin(list()?),
        "$regex" => {
            let p = string("$regex")?;
            if p.len() > MAX_REGEX {
                return Err(bad(format!("$regex pattern longer than {MAX_REGEX} bytes")));
            }
            let re = regex::RegexBuilder::new(&p)
                .size_limit(1 << 16)
                .dfa_size_limit(1 << 16)
                .nest_limit(16)
                .build()
                .map_err(|e| bad(format!("bad $regex: {e}")))?;
            Op::Regex(re)
        }
        "$exists" => Op::Exists(arg.as_bool().ok_or_else(|| bad("$exists takes true or false"))?),
        "$contains" => match arg {
            Value::Object(_) | Value::Array(_) => return Err(bad("$contains takes a string, number, bool or null")),
            _ => Op::Contains(arg.clone()),
        },
        "$startswith" => Op::StartsWith(string("$startswith")?),
        "$endswith" => Op::EndsWith(string("$endswith")?),
        other => {
            return Err(bad(format!(
                "unknown operator {other} (known: $eq $ne $gt $lt $gte $lte $in $nin $regex $exists $contains $startswith $endswith, $and $or)"
            )));
        }
    })
}

/// What a path points at in one event.
enum Got<'a> {
    Missing,
    Value(&'a Value),
    Str(&'a str),
    Num(u64),
}

/// The fields a filter reads.
struct View<'a> {
    topic: &'a str,
    id: Option<&'a str>,
    time: u64,
    offset: u64,
    payload: &'a Value,
}

impl View<'_> {
    fn get(&self, path: &Path) -> Got<'_> {
        match path.root {
            Root::Topic => Got::Str(self.topic),
            Root::Id => self.id.map_or(Got::Missing, Got::Str),
            Root::Time => Got::Num(self.time),
            Root::Offset => Got::Num(self.offset),
            Root::Payload => {
                let mut v = self.payload;
                for seg in &path.rest {
                    v = match v {
                        Value::Object(m) => match m.get(&**seg) {
                            Some(x) => x,
                            None => return Got::Missing,
                        },
                        Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
                            Some(x) => x,
                            None => return Got::Missing,
                        },
                        _ => return Got::Missing,
                    };
                }
                Got::Value(v)
            }
        }
    }
}

/// JSON equality with numbers compared by value (1 == 1.0), integers exactly (large ids).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_order(x, y) == Some(std::cmp::Ordering::Equal),
        _ => a == b,
    }
}

/// Integers compare exactly, anything else as f64.
fn number_order(x: &serde_json::Number, y: &serde_json::Number) -> Option<std::cmp::Ordering> {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return Some(a.cmp(&b));
    }
    x.as_f64()?.partial_cmp(&y.as_f64()?)
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_order(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Node {
    fn eval(&self, view: &View<'_>) -> bool {
        match self {
            Node::All(n) => n.iter().all(|n| n.eval(view)),
            Node::Any(n) => n.iter().any(|n| n.eval(view)),
            Node::Cond { path, op } => {
                let got = view.get(path);
                // Payload fields are compared where they are; only the other roots (topic, id,
                // time, offset) are made into a JSON value for it.
                let owned;
                let value: Option<&Value> = match &got {
                    Got::Missing => None,
                    Got::Value(v) => Some(v),
                    Got::Str(s) => {
                        owned = Value::String((*s).to_owned());
                        Some(&owned)
                    }
                    Got::Num(n) => {
                        owned = Value::from(*n);
                        Some(&owned)
                    }
                };
                let text = match &got {
                    Got::Str(s) => Some(*s),
                    Got::Value(Value::String(s)) => Some(s.as_str()),
                    _ => None,
                };
                use std::cmp::Ordering::*;
                match op {
                    Op::Eq(x) => value.is_some_and(|v| equal(v, x)),
                    Op::Ne(x) => !value.is_some_and(|v| equal(v, x)),
                    Op::Gt(x) => value.is_some_and(|v| order(v, x) == Some(Greater)),
                    Op::Lt(x) => value.is_some_and(|v| order(v, x) == Some(Less)),
                    Op::Gte(x) => value.is_some_and(|v| matches!(order(v, x), Some(Greater | Equal))),
                    Op::Lte(x) => value.is_some_and(|v| matches!(order(v, x), Some(Less | Equal))),
                    Op::In(xs) => value.is_some_and(|v| xs.iter().any(|x| equal(v, x))),
                    Op::Nin(xs) => !value.is_some_and(|v| xs.iter().any(|x| equal(v, x))),
                    Op::Regex(re) => text.is_some_and(|t| re.is_match(t)),
                    Op::Exists(want) => !matches!(got, Got::Missing) == *want,
                    Op::Contains(x) => match (&got, x) {
                        (Got::Value(Value::Array(a)), _) => a.iter().any(|e| equal(e, x)),
                        (_, Value::String(s)) => text.is_some_and(|t| t.contains(s.as_str())),
                        _ => false,
                    },
                    Op::StartsWith(s) => text.is_some_and(|t| t.starts_with(s.as_str())),
                    Op::EndsWith(s) => text.is_some_and(|t| t.ends_with(s.as_str())),
                }
            }
        }
    }
}

impl Filter {
    /// Validate and compile a filter (not registered: its id is 0, its verdicts are not
    /// cached). Engines use [`intern`].
    pub fn compile(v: &Value) -> Result<Filter, FilterError> {
        let key = serde_json::to_string(v).map_err(|e| bad(e.to_string()))?;
        if key.len() > MAX_FILTER_BYTES {
            return Err(bad(format!("filter larger than {MAX_FILTER_BYTES} bytes")));
        }
        let root = Compiler { conditions: 0 }.object(v, 0)?;
        Ok(Filter { root, id: 0, generation: 0, key })
    }

    /// The filter's JSON (canonical: keys in order).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether an event of `topic` with `payload` passes (offset, id and time as 0 / none).
    pub fn matches_value(&self, topic: &str, payload: &Value) -> bool {
        self.root.eval(&View { topic, id: None, time: 0, offset: 0, payload })
    }

    /// Whether `ev` passes: evaluated once per event for each registered filter, whose verdict
    /// the event keeps for every other subscriber with the same filter.
    pub fn matches(&self, ev: &Event) -> bool {
        let eval = || {
            let id = ev.id.as_deref();
            self.root.eval(&View { topic: &ev.topic, id, time: ev.time, offset: ev.offset, payload: &ev.payload })
        };
        if self.id == 0 {
            return eval();
        }
        let slots = ev
            .verdicts
            .get_or_init(|| (0..REGISTRY.high_water().min(CACHED_FILTERS)).map(|_| AtomicU64::new(0)).collect());
        let Some(slot) = slots.get(self.id as usize - 1) else { return eval() };
        let kept = slot.load(Ordering::Relaxed);
        if kept >> 2 == self.generation {
            return kept & 3 == 1;
        }
        let pass = eval();
        slot.store(self.generation << 2 | if pass { 1 } else { 2 }, Ordering::Relaxed);
        pass
    }
}

/// The process's distinct live filters: one compiled filter per distinct JSON, with a small
/// id (ids of dropped filters are reused, so the per-event verdict table stays as small as the
/// number of filters alive).
/// Slot by filter JSON, and the slots.
type Slots = (HashMap<String, usize>, Vec<Weak<Filter>>);

struct Registry {
    slots: Mutex<Slots>,
    high: std::sync::atomic::AtomicUsize,
    generation: AtomicU64,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    slots: Mutex::new((HashMap::new(), Vec::new())),
    high: Default::default(),
    generation: AtomicU64::new(0),
});

impl Registry {
    fn high_water(&self) -> usize {
        self.high.load(Ordering::Relaxed)
    }
}

/// The shared compiled filter for `v` (compiled on first use).
pub fn intern(v: &Value) -> Result<Arc<Filter>, FilterError> {
    let compiled = Filter::compile(v)?;
    let mut g = REGISTRY.slots.lock().unwrap_or_else(|e| e.into_inner());
    let (by_key, slots) = &mut *g;
    if let Some(f) = by_key.get(&compiled.key).and_then(|&i| slots[i].upgrade()) {
        return Ok(f);
    }
    by_key.remove(&compiled.key);
    let free = slots.iter().position(|w| w.strong_count() == 0);
    let index = match free {
        Some(i) => {
            // The dead filter that held this slot is forgotten by its key too.
            by_key.retain(|_, &mut j| j != i);
            i
        }
        None if slots.len() < MAX_FILTERS => {
            slots.push(Weak::new());
            slots.len() - 1
        }
        None => return Err(bad(format!("the server holds {MAX_FILTERS} distinct filters; use a common one"))),
    };
    // 62 bits of generation beside the 2-bit verdict (no wrap in practice); 0 never names a
    // registered filter.
    let generation = REGISTRY.generation.fetch_add(1, Ordering::Relaxed) % ((1 << 62) - 1) + 1;
    let f = Arc::new(Filter { id: index as u32 + 1, generation, ..compiled });
    slots[index] = Arc::downgrade(&f);
    by_key.insert(f.key.clone(), index);
    REGISTRY.high.store(slots.len(), Ordering::Relaxed);
    Ok(f)
}

/// Per-event verdicts of registered filters (index = id − 1, the first [`CACHED_FILTERS`]):
/// the filter's generation << 2, then 1 (pass) or 2 (fail); anything else is unknown.
pub(crate) type Verdicts = OnceLock<Box<[AtomicU64]>>;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pass(f: Value, payload: Value) -> bool {
        Filter::compile(&f).unwrap().matches_value("t.x", &payload)
    }

    #[test]
    fn every_operator() {
        let p = json!({"price": 120, "side": "buy", "tags": ["a", "hot"], "name": "Widget Pro", "n": null, "user": {"id": 7}});
        assert!(pass(json!({"payload.price": 120}), p.clone()));
        assert!(pass(json!({"payload.price": 120.0}), p.clone()));
        assert!(pass(json!({"payload.price": {"$eq": 120}}), p.clone()));
        assert!(pass(json!({"payload.price": {"$ne": 121}}), p.clone()));
        assert!(pass(json!({"payload.missing": {"$ne": 1}}), p.clone()));
        assert!(pass(json!({"payload.price": {"$gt": 100, "$lt": 130}}), p.clone()));
        assert!(!pass(json!({"payload.price": {"$gt": 120}}), p.clone()));
        assert!(pass(json!({"payload.price": {"$gte": 120, "$lte": 120}}), p.clone()));
        assert!(pass(json!({"payload.side": {"$gt": "a"}}), p.clone()));
        assert!(!pass(json!({"payload.side": {"$gt": 1}}), p.clone()));
        assert!(pass(json!({"payload.side": {"$in": ["sell", "buy"]}}), p.clone()));
        assert!(pass(json!({"payload.side": {"$nin": ["sell"]}}), p.clone()));
        assert!(pass(json!({"payload.name": {"$regex": "^Widget\\s"}}), p.clone()));
        assert!(!pass(json!({"payload.price": {"$regex": "1"}}), p.clone()));
        assert!(pass(json!({"payload.n": {"$exists": true}}), p.clone()));
        assert!(pass(json!({"payload.zz": {"$exists": false}}), p.clone()));
        assert!(pass(json!({"payload.tags": {"$contains": "hot"}}), p.clone()));
        assert!(pass(json!({"payload.name": {"$contains": "get P"}}), p.clone()));
        assert!(pass(json!({"payload.name": {"$startswith": "Wid", "$endswith": "Pro"}}), p.clone()));
        assert!(pass(json!({"payload.user.id": 7, "payload.tags.1": "hot"}), p.clone()));
        assert!(pass(json!({"topic": {"$startswith": "t."}}), p.clone()));
        assert!(pass(
            json!({"$or": [{"payload.price": 1}, {"$and": [{"payload.side": "buy"}, {"payload.price": {"$gt": 5}}]}]}),
            p.clone()
        ));
        assert!(!pass(json!({"$or": [{"payload.price": 1}, {"payload.side": "sell"}]}), p.clone()));
        assert!(pass(json!({"payload.user": {"id": 7}}), p));
        // Large integers compare exactly (as f64 these two are equal).
        let id = json!({"id": 9_007_199_254_740_993u64});
        assert!(!pass(json!({"payload.id": 9_007_199_254_740_992u64}), id.clone()));
        assert!(pass(json!({"payload.id": {"$gt": 9_007_199_254_740_992u64}}), id));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let err = |f: Value| Filter::compile(&f).unwrap_err().0;
        assert!(err(json!([1])).contains("JSON object"));
        assert!(err(json!({})).contains("empty filter"));
        assert!(err(json!({"price": 1})).contains("must start with payload"));
        assert!(err(json!({"payload.p": {"$near": 1}})).contains("unknown operator $near"));
        assert!(err(json!({"$nor": []})).contains("unknown top-level operator"));
        assert!(err(json!({"payload.p": {"$gt": [1]}})).contains("number or a string"));
        assert!(err(json!({"payload.p": {"$in": 3}})).contains("takes an array"));
        assert!(err(json!({"payload.p": {"$regex": "("}})).contains("bad $regex"));
        assert!(err(json!({"payload.p": {"$regex": "a".repeat(300)}})).contains("longer than"));
        assert!(err(json!({"payload.p": {"$regex": "\\w{1000}\\w{1000}"}})).contains("bad $regex"));
        assert!(err(json!({"$or": []})).contains("non-empty"));
        assert!(err(json!({"payload..p": 1})).contains("empty segment"));
        assert!(err(json!({"topic.x": 1})).contains("only payload has fields"));
        assert!(err(json!({"payload.p": {"$gt": 1, "x": 2}})).contains("operators only"));
        let mut deep = json!({"payload.a": 1});
        for _ in 0..10 {
            deep = json!({"$and": [deep]});
        }
        assert!(err(deep).contains("nested deeper"));
        let many: serde_json::Map<String, Value> = (0..70).map(|i| (format!("payload.f{i}"), json!(i))).collect();
        assert!(err(Value::Object(many)).contains("more than 64 conditions"));
        let big: Vec<Value> = (0..200).map(|i| json!(format!("{i:030}"))).collect();
        assert!(err(json!({"payload.p": {"$in": big}})).contains("larger than"));
    }

    #[test]
    fn identical_filters_share_one_compiled_filter_and_one_verdict_per_event() {
        let a = intern(&json!({"payload.k": {"$gt": 1}})).unwrap();
        let b = intern(&json!({"payload.k": {"$gt": 1}})).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = intern(&json!({"payload.k": {"$gt": 2}})).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let ev = Event::new("t".into(), 1, "e".into(), None, json!({"k": 2}));
        assert!(a.matches(&ev) && b.matches(&ev));
        assert!(!c.matches(&ev));
        // The verdict is kept on the event.
        assert_eq!(ev.verdicts.get().unwrap()[a.id as usize - 1].load(Ordering::Relaxed) & 3, 1);
        assert_eq!(ev.verdicts.get().unwrap()[c.id as usize - 1].load(Ordering::Relaxed) & 3, 2);
        // A dropped filter's slot is reused, and the verdict the event kept for it is not taken
        // for the new filter's.
        let id = c.id;
        drop(c);
        let d = intern(&json!({"payload.k": {"$lt": 3}})).unwrap();
        if d.id == id {
            assert!(d.matches(&ev), "a stale verdict was reused");
        }
    }
}
