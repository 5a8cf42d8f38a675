//! The server-side scripts: each runs atomically in Redis, so every node sees one order per
//! topic. Keys are built by the caller (`{prefix}:m:{topic}` and so on, see `docs/CLUSTER.md`).

use std::sync::LazyLock;

use redis::Script;

/// Assign the next position of a topic, keep the event in its capped stream and publish it.
///
/// KEYS: meta hash, stream. ARGV: channel, body after the epoch (`time\nid\npayload`), history
/// size, stream TTL (s), meta TTL (s), a fresh epoch (used when the topic needs one), the
/// server's era. Returns `{offset, epoch}`. A topic without meta, or whose epoch began in
/// another era (before a restart or failover of Redis, which may have lost its last
/// publishes), gets a new epoch, and its stream is dropped: history never mixes epochs, and no
/// offset is ever handed out twice.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local m = redis.call('HMGET', KEYS[1], 'e', 'r')
local epoch = m[1]
if not epoch or m[2] ~= ARGV[7] then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0, 'r', ARGV[7])
end
local off = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
local body = epoch .. '\n' .. ARGV[2]
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], off .. '-0', 'd', body)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[1], 'e\n' .. off .. '\n' .. body)
return {off, epoch}
"#,
    )
});

/// A topic's current position, creating its epoch when it has none (so a subscriber always
/// gets a position it can resume from), or a new one when it began in another era (as in
/// [`PUBLISH`]). KEYS: meta hash, stream. ARGV: fresh epoch, meta TTL, the server's era.
/// Returns `{offset, epoch}`.
pub(super) static POSITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local m = redis.call('HMGET', KEYS[1], 'e', 'r')
local epoch = m[1]
if not epoch or m[2] ~= ARGV[3] then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0, 'r', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {tonumber(redis.call('HGET', KEYS[1], 'o')), epoch}
"#,
    )
});

/// A connection joins a topic's presence. KEYS: presence hash, this node's member index.
/// ARGV: session, member JSON, channel, index entry (`topic\nsession`). Publishes `join` when
/// the member is new.
pub(super) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
if new == 1 then redis.call('PUBLISH', ARGV[3], 'j\n' .. ARGV[2]) end
return new
"#,
    )
});

/// A connection leaves a topic's presence. KEYS: presence hash, this node's member index.
/// ARGV: session, channel, index entry. Publishes `leave` when the member was there.
pub(super) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SREM', KEYS[2], ARGV[3])
local m = redis.call('HGET', KEYS[1], ARGV[1])
if m then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[2], 'l\n' .. m)
  return 1
end
return 0
"#,
    )
});

/// Heartbeat this node and list the nodes whose heartbeat is older than the TTL.
/// KEYS: nodes hash. ARGV: this node, TTL (ms). Returns `{alive, known, dead...}` where `known`
/// is 0 when this node's entry was missing (another node took it for dead: its members must be
/// registered again); times are Redis's own clock, so nodes' clocks do not matter.
pub(super) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('HSET', KEYS[1], ARGV[1], now) == 0 and 1 or 0
local all = redis.call('HGETALL', KEYS[1])
local out = {0, known}
for i = 1, #all, 2 do
  if now - tonumber(all[i + 1]) > tonumber(ARGV[2]) then
    table.insert(out, all[i])
  else
    out[1] = out[1] + 1
  end
end
return out
"#,
    )
});

/// Remove up to 500 presence members of a dead node, publishing `leave` for each one still
/// there (a member removed by another node's sweep first is not announced twice). Forgets the
/// node when its index is empty. Does nothing (returns -1) when the node's heartbeat is fresh
/// again. KEYS: nodes hash, the node's member index. ARGV: node, key prefix, TTL (ms). Returns
/// how many index entries it took.
pub(super) static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hb = redis.call('HGET', KEYS[1], ARGV[1])
if hb and now - tonumber(hb) <= tonumber(ARGV[3]) then return -1 end
local entries = redis.call('SPOP', KEYS[2], 500)
for _, e in ipairs(entries) do
  local nl = string.find(e, '\n', 1, true)
  if nl then
    local topic = string.sub(e, 1, nl - 1)
    local session = string.sub(e, nl + 1)
    local pkey = ARGV[2] .. ':p:' .. topic
    local m = redis.call('HGET', pkey, session)
    if m then
      redis.call('HDEL', pkey, session)
      redis.call('PUBLISH', ARGV[2] .. ':c:' .. topic, 'l\n' .. m)
    end
  end
end
if #entries < 500 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return #entries
"#,
    )
});

/// The shared dead-letter store's keys, in this order, for every `DL_*` script: the ids in
/// order (sorted set, score = id), the letters (hash id → `token\njson`), the ids of snapshot
/// letters (sorted set), the totals (hash `next`, `bytes`, `dropped`, `total`), the tokens
/// (hash token → id: a letter pushed again after a lost answer is not stored twice). Every
/// script starts with `dl_remove`, which takes one letter out and keeps the totals right.
const DL_LIB: &str = r#"
local function dl_remove(id)
  local v = redis.call('HGET', KEYS[2], id)
  if not v then return nil end
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HINCRBY', KEYS[4], 'bytes', -#v)
  local nl = string.find(v, '\n', 1, true)
  if nl then redis.call('HDEL', KEYS[5], string.sub(v, 1, nl - 1)) end
  return v
end
"#;

fn dl_script(body: &str) -> Script {
    Script::new(&format!("{DL_LIB}{body}"))
}

/// Append dead letters, oldest first, within the bounds: past `max_entries` letters or
/// `max_bytes` bytes (of `token\njson`), the oldest go, snapshot letters first, and snapshot
/// letters hold at most `snapshot_cap`; each drop counts in `dropped`. A letter larger than
/// the whole store is dropped (id 0). A letter whose token is known is not added again (its id
/// is returned). ARGV: max entries, max bytes, snapshot cap, then per letter: token, kind
/// (`p` or `s`), JSON. Returns the ids.
pub(super) static DL_PUSH: LazyLock<Script> = LazyLock::new(|| {
    dl_script(
        r#"
local maxn, maxb, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 3 do
  local token, kind = ARGV[i], ARGV[i + 1]
  local v = token .. '\n' .. ARGV[i + 2]
  local known = redis.call('HGET', KEYS[5], token)
  if known then
    table.insert(out, tonumber(known))
  else
    redis.call('HINCRBY', KEYS[4], 'total', 1)
    if #v > maxb then
      redis.call('HINCRBY', KEYS[4], 'dropped', 1)
      table.insert(out, 0)
    else
      if kind == 's' then
        while redis.call('ZCARD', KEYS[3]) >= cap do
          dl_remove(redis.call('ZRANGE', KEYS[3], 0, 0)[1])
          redis.call('HINCRBY', KEYS[4], 'dropped', 1)
        end
      end
      while redis.call('ZCARD', KEYS[1]) >= maxn
        or tonumber(redis.call('HGET', KEYS[4], 'bytes') or '0') + #v > maxb do
        local victim = redis.call('ZRANGE', KEYS[3], 0, 0)[1] or redis.call('ZRANGE', KEYS[1], 0, 0)[1]
        if not victim then break end
        dl_remove(victim)
        redis.call('HINCRBY', KEYS[4], 'dropped', 1)
      end
      local id = redis.call('HINCRBY', KEYS[4], 'next', 1)
      redis.call('ZADD', KEYS[1], id, id)
      if kind == 's' then redis.call('ZADD', KEYS[3], id, id) end
      redis.call('HSET', KEYS[2], id, v)
      redis.call('HSET', KEYS[5], token, id)
      redis.call('HINCRBY', KEYS[4], 'bytes', #v)
      table.insert(out, id)
    end
  end
end
return out
"#,
    )
});

/// Up to `limit` dead letters with ids above `after`, oldest first, with the totals. ARGV:
/// after, limit. Returns `{count, bytes, dropped, id, token\njson, id, …}`.
pub(super) static DL_LIST: LazyLock<Script> = LazyLock::new(|| {
    dl_script(
        r#"
local ids = {}
if tonumber(ARGV[2]) > 0 then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
end
local m = redis.call('HMGET', KEYS[4], 'bytes', 'dropped')
local out = {redis.call('ZCARD', KEYS[1]), tonumber(m[1] or '0'), tonumber(m[2] or '0')}
for _, id in ipairs(ids) do
  local v = redis.call('HGET', KEYS[2], id)
  if v then
    table.insert(out, tonumber(id))
    table.insert(out, v)
  end
end
return out
"#,
    )
});

/// Take one dead letter out (a replay claims it before publishing it: of two nodes replaying
/// at once, one gets it). ARGV: id. Returns `token\njson`, or nil when it is gone.
pub(super) static DL_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    dl_script(
        r#"
return dl_remove(ARGV[1]) or false
"#,
    )
});

/// Put a claimed dead letter back under its id (its replay failed), unless a letter holds the
/// id. Not trimmed: the store can pass its bounds by one letter per replay in progress. ARGV:
/// id, kind (`p` or `s`), `token\njson`.
pub(super) static DL_RESTORE: LazyLock<Script> = LazyLock::new(|| {
    dl_script(
        r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
if ARGV[2] == 's' then redis.call('ZADD', KEYS[3], ARGV[1], ARGV[1]) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local nl = string.find(ARGV[3], '\n', 1, true)
if nl then redis.call('HSET', KEYS[5], string.sub(ARGV[3], 1, nl - 1), ARGV[1]) end
redis.call('HINCRBY', KEYS[4], 'bytes', #ARGV[3])
return 1
"#,
    )
});

/// Remove dead letters: ARGV `*` for all, else their ids. Returns how many went.
pub(super) static DL_PURGE: LazyLock<Script> = LazyLock::new(|| {
    dl_script(
        r#"
if ARGV[1] == '*' then
  local n = redis.call('ZCARD', KEYS[1])
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5])
  redis.call('HSET', KEYS[4], 'bytes', 0)
  return n
end
local n = 0
for i = 1, #ARGV do
  if dl_remove(ARGV[i]) then n = n + 1 end
end
return n
"#,
    )
});
