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
