//! Cluster mode over a real Redis and a real NATS: several `weft serve` processes joined by a
//! `redis-server` or a `nats-server -js` that each test starts on a free port (most tests run
//! once per broker). Publish on one node, receive on the others in order;
//! resume on another node; presence across nodes and after `kill -9`; Redis frozen or
//! restarted while publishing (no gap or duplicate without a `reset`); a bounded soak.
//!
//! Needs `redis-server` and `nats-server` (scripts/test.sh installs them); without them these
//! tests fail unless `WEFT_SKIP_REDIS=1` / `WEFT_SKIP_NATS=1`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::{ClientBuilder, ClientStream, Message};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const T: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what} did not start within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which broker a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Redis,
    Nats,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Nats => "nats",
        }
    }
}

/// A `redis-server` (without persistence) or a `nats-server -js` (its store in a directory
/// of its own) of the test's own, on a free port.
struct Broker {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Broker {
    fn start(kind: Kind) -> Option<Broker> {
        let skip = match kind {
            Kind::Redis => "WEFT_SKIP_REDIS",
            Kind::Nats => "WEFT_SKIP_NATS",
        };
        if std::env::var(skip).is_ok_and(|v| v == "1") {
            return None;
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("weft-broker-{}-{port}", std::process::id()));
        let mut r = Broker { kind, child: None, port, dir };
        r.launch();
        Some(r)
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let child = match self.kind {
            Kind::Redis => Command::new("redis-server")
                .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                // Its snapshot (written only when a test asks with SAVE) is the test's own.
                .args(["--dir", {
                    std::fs::create_dir_all(&self.dir).unwrap();
                    self.dir.to_str().unwrap()
                }])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server not found: install it (apt-get install redis-server) or set WEFT_SKIP_REDIS=1"),
            Kind::Nats => Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd", self.dir.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server not found: install it (apt-get install nats-server) or set WEFT_SKIP_NATS=1"),
        };
        self.child = Some(child);
        wait_port(self.port, self.kind.name());
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind.name(), self.port)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    }

    /// Kill it and start it again on the same port, keeping its data (NATS's store; Redis's
    /// last snapshot, if a test made one with SAVE).
    fn restart_keeping(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.launch();
    }

    /// Kill it, losing everything (Redis keeps nothing; NATS's store is deleted), and start a
    /// new one on the same port.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `weft serve` node.
struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(redis: &Broker, name: &str, extra: &[&str]) -> Node {
    let url = redis.url();
    spawn_node(name, |port| {
        let mut cmd = Command::new(WEFT);
        cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--threads", "1"])
            .args(["--broker", &url, "--node-name", name, "--node-ttl", "3"])
            .args(["--rate-limit", "100000", "--rate-burst", "100000", "--topic-churn-limit", "100000"])
            .args(extra);
        cmd
    })
}

/// Starts `weft serve` (the command `make` builds for a port) on a free port and waits until
/// it listens. Its log goes to a file that a failed start prints; a start that lost its port
/// to another process in between (free when chosen, not when bound) is retried on another.
fn spawn_node(name: &str, make: impl Fn(u16) -> Command) -> Node {
    for _ in 0..3 {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("weft-node-{}-{port}.log", std::process::id()));
        let mut child = make(port)
            .env_remove("WEFT_JWT_SECRET")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let _ = std::fs::remove_file(&log);
                return Node { child, port };
            }
            if let Some(status) = child.try_wait().unwrap() {
                let text = text();
                let _ = std::fs::remove_file(&log);
                if text.contains("Address already in use") || text.contains("address already in use") {
                    break;
                }
                panic!("weft serve {name} exited at start ({status}):\n{text}");
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("weft serve {name} did not listen within 30 s:\n{}", text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("weft serve {name}: its port was taken three times");
}

struct Client {
    ws: ClientStream,
}

impl Client {
    async fn connect(port: u16, user: &str) -> Client {
        let ws = ClientBuilder::new(format!("ws://127.0.0.1:{port}/ws?user={user}")).connect().await.unwrap();
        let mut c = Client { ws };
        assert_eq!(c.recv().await["type"], "welcome");
        c
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        self.recv_within(T).await.expect("timed out")
    }

    async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(d, self.ws.recv()).await.ok()? {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// The next event or reset (what a sequence check must see), skipping replies.
    async fn next_item(&mut self) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == "event" || m["type"] == "reset" {
                return m;
            }
        }
    }

    /// The next message of `kind`, skipping others.
    async fn next(&mut self, kind: &str) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == kind {
                return m;
            }
        }
    }

    async fn subscribe(&mut self, req: Value) -> Value {
        self.send(req).await;
        self.next("subscribed").await
    }
}

async fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// What one subscriber saw of one topic: positions must follow each other within an epoch,
/// and anything else must come right after a `reset`.
#[derive(Default, Debug)]
struct Seq {
    epoch: String,
    last: u64,
    events: u64,
    resets: u64,
}

impl Seq {
    fn start(r: &Value) -> Seq {
        let res = &r["results"][0];
        Seq {
            epoch: res["epoch"].as_str().unwrap().to_owned(),
            last: res["offset"].as_u64().unwrap(),
            ..Seq::default()
        }
    }

    fn see(&mut self, m: &Value) {
        match m["type"].as_str() {
            Some("event") => {
                let (off, epoch) = (m["offset"].as_u64().unwrap(), m["epoch"].as_str().unwrap());
                assert_eq!(epoch, self.epoch, "epoch changed without a reset: {m}");
                assert_eq!(off, self.last + 1, "gap or duplicate without a reset (after {}): {m}", self.last);
                self.last = off;
                self.events += 1;
            }
            Some("reset") => {
                assert_eq!(m["recovered"], false);
                self.epoch = m["epoch"].as_str().unwrap().to_owned();
                self.last = m["offset"].as_u64().unwrap();
                self.resets += 1;
            }
            _ => {}
        }
    }
}

async fn publish_on_one_node_arrives_in_order_on_every_node_and_resumes_on_another(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let nodes = [node(&redis, "a", &[]), node(&redis, "b", &[]), node(&redis, "c", &[])];
    let mut subs = Vec::new();
    for n in &nodes[1..] {
        let mut c = Client::connect(n.port, "s").await;
        let r = c.subscribe(json!({"type": "subscribe", "topics": ["chat.room"]})).await;
        let p = c.subscribe(json!({"type": "subscribe", "topics": ["chat.*"]})).await;
        assert_eq!(p["results"][0]["ok"], true, "{p}");
        subs.push((c, Seq::start(&r)));
    }
    let mut publisher = Client::connect(nodes[0].port, "p").await;
    for i in 0..300 {
        publisher.send(json!({"type": "publish", "topic": "chat.room", "payload": {"n": i}})).await;
    }
    // Sent without waiting (the node pipelines them to Redis): replies in request order.
    for i in 1..=300 {
        let r = publisher.next("published").await;
        assert_eq!((r["topic"].as_str(), r["offset"].as_u64()), (Some("chat.room"), Some(i)), "{r}");
    }
    // Each subscriber gets every event once from its exact subscription (the pattern does not
    // duplicate it), in order, with the payloads as published.
    for (c, seq) in subs.iter_mut() {
        for i in 0..300 {
            let m = c.next("event").await;
            assert_eq!(m["payload"]["n"], i, "{m}");
            seq.see(&m);
        }
        assert!(c.recv_within(Duration::from_millis(300)).await.is_none(), "an event arrived twice");
    }
    // A pattern-only subscriber on node c gets events of other matching topics.
    let mut p = Client::connect(nodes[2].port, "pat").await;
    p.subscribe(json!({"type": "subscribe", "topics": ["news.>"]})).await;
    let (status, body) = http(nodes[0].port, "POST", "/api/publish", r#"{"topic":"news.eu.fr","payload":"x"}"#).await;
    assert_eq!(status, 200, "{body}");
    let m = p.next("event").await;
    assert_eq!((m["topic"].as_str(), m["payload"].as_str()), (Some("news.eu.fr"), Some("x")));

    // Resume on another node: disconnect from b at offset 300, publish 50 more on a, resume
    // on c: exactly the 50 missed, then live.
    let (c, seq) = subs.remove(0);
    drop(c);
    for i in 300..350 {
        publisher.send(json!({"type": "publish", "topic": "chat.room", "payload": {"n": i}})).await;
        publisher.next("published").await;
    }
    let mut again = Client::connect(nodes[2].port, "s2").await;
    let r = again
        .subscribe(json!({"type": "subscribe", "topics": ["chat.room"],
            "resume": {"chat.room": {"offset": seq.last, "epoch": seq.epoch}}}))
        .await;
    let res = &r["results"][0];
    assert_eq!((res["recovered"].as_bool(), res["replayed"].as_u64()), (Some(true), Some(50)), "{r}");
    let mut seq2 = Seq { epoch: seq.epoch.clone(), last: seq.last, ..Seq::default() };
    for i in 300..350 {
        let m = again.next("event").await;
        assert_eq!(m["payload"]["n"], i);
        seq2.see(&m);
    }
    publisher.send(json!({"type": "publish", "topic": "chat.room", "payload": {"n": 350}})).await;
    seq2.see(&again.next("event").await);
    assert_eq!(seq2.last, 351);

    // A resume from a position no longer in the stream (history_size 100) is not recovered.
    let mut late = Client::connect(nodes[1].port, "late").await;
    let r = late
        .subscribe(json!({"type": "subscribe", "topics": ["chat.room"],
            "resume": {"chat.room": {"offset": 10, "epoch": seq.epoch}}}))
        .await;
    assert_eq!(r["results"][0]["recovered"], false, "{r}");
    assert_eq!(r["results"][0]["offset"], 351, "{r}");

    // Stats and metrics show the node and the broker; every node is seen alive within a
    // heartbeat period (node_ttl / 3).
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let (_, stats) = http(nodes[1].port, "GET", "/api/stats", "").await;
        let stats: Value = serde_json::from_str(&stats).unwrap();
        if stats["cluster"]["nodes"] == 3 || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stats["cluster"]["node"], "b", "{stats}");
    assert_eq!(stats["cluster"]["state"], "ok");
    assert_eq!(stats["cluster"]["nodes"], 3, "{stats}");
    let (_, metrics) = http(nodes[1].port, "GET", "/metrics", "").await;
    let up = format!("weft_broker_up{{broker=\"{}\",node=\"b\"}} 1", kind.name());
    assert!(metrics.contains(&up), "{metrics}");
}

async fn presence_spans_nodes_and_a_killed_node_leaves_within_the_bound(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let a = node(&redis, "a", &[]);
    let mut b = node(&redis, "b", &[]);
    let c = node(&redis, "c", &[]);
    let mut watcher = Client::connect(a.port, "watcher").await;
    watcher.subscribe(json!({"type": "subscribe", "topics": ["room"], "presence": true})).await;
    let mut on_b = Client::connect(b.port, "bob").await;
    on_b.subscribe(json!({"type": "subscribe", "topics": ["room"]})).await;
    let j = watcher.next("join").await;
    assert_eq!(j["member"]["user"], "bob", "{j}");
    let mut asker = Client::connect(c.port, "asker").await;
    asker.send(json!({"type": "presence", "topic": "room"})).await;
    let p = asker.next("presence").await;
    assert_eq!(p["count"], 2, "{p}");
    let mut users: Vec<&str> = p["members"].as_array().unwrap().iter().map(|m| m["user"].as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["bob", "watcher"]);

    // A clean leave reaches the other node at once.
    let mut carol = Client::connect(c.port, "carol").await;
    carol.subscribe(json!({"type": "subscribe", "topics": ["room"]})).await;
    assert_eq!(watcher.next("join").await["member"]["user"], "carol");
    drop(carol);
    assert_eq!(watcher.next("leave").await["member"]["user"], "carol");

    // kill -9 b: bob's membership goes within node_ttl (3 s) plus a heartbeat period.
    let killed = Instant::now();
    Command::new("kill").args(["-9", &b.child.id().to_string()]).status().unwrap();
    let _ = b.child.wait();
    let l = tokio::time::timeout(Duration::from_secs(10), watcher.next("leave")).await.expect("no leave for bob");
    assert_eq!(l["member"]["user"], "bob", "{l}");
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    asker.send(json!({"type": "presence", "topic": "room"})).await;
    assert_eq!(asker.next("presence").await["count"], 1);
}

/// A node that stalls past `node_ttl` (SIGSTOP) is taken for dead and its members leave; when
/// it runs again it notices and registers them again (a join), so presence matches reality.
async fn a_stalled_node_is_swept_then_registers_its_members_again(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut watcher = Client::connect(a.port, "watcher").await;
    watcher.subscribe(json!({"type": "subscribe", "topics": ["hall"], "presence": true})).await;
    let mut bob = Client::connect(b.port, "bob").await;
    bob.subscribe(json!({"type": "subscribe", "topics": ["hall"]})).await;
    assert_eq!(watcher.next("join").await["member"]["user"], "bob");
    let pid = b.child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let l = tokio::time::timeout(Duration::from_secs(10), watcher.next("leave")).await;
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert_eq!(l.expect("no leave while b was stopped")["member"]["user"], "bob");
    let j = tokio::time::timeout(Duration::from_secs(10), watcher.next("join")).await.expect("bob never came back");
    assert_eq!(j["member"]["user"], "bob");
    watcher.send(json!({"type": "presence", "topic": "hall"})).await;
    assert_eq!(watcher.next("presence").await["count"], 2);
    drop(bob);
}

fn redis_cli(redis: &Broker, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &redis.port.to_string()]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An event that reached the stream but whose pub/sub message was lost (written here straight
/// into Redis, as the publish script would, without the PUBLISH): the next event reveals the
/// gap and the node refills it; a lost last event is found by the periodic check of the stream
/// top. The subscriber sees every event once, in order.
#[tokio::test]
async fn lost_pubsub_messages_are_refilled_from_the_stream() {
    let Some(redis) = Broker::start(Kind::Redis) else { return };
    let a = node(&redis, "a", &[]);
    let mut sub = Client::connect(a.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["gap"]})).await;
    let mut seq = Seq::start(&r);
    let epoch = seq.epoch.clone();
    let lose = |offset: u64| {
        assert_eq!(redis_cli(&redis, &["HINCRBY", "weft:m:gap", "o", "1"]), offset.to_string());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        let body = format!("{epoch}\n{now}\n\n\"lost {offset}\"");
        redis_cli(&redis, &["XADD", "weft:s:gap", &format!("{offset}-0"), "d", &body]);
    };
    let (status, _) = http(a.port, "POST", "/api/publish", r#"{"topic":"gap","payload":"one"}"#).await;
    assert_eq!(status, 200);
    lose(2);
    let (status, _) = http(a.port, "POST", "/api/publish", r#"{"topic":"gap","payload":"three"}"#).await;
    assert_eq!(status, 200);
    let mut payloads = Vec::new();
    for _ in 0..3 {
        let m = sub.next_item().await;
        seq.see(&m);
        payloads.push(m["payload"].as_str().unwrap().to_owned());
    }
    assert_eq!(payloads, ["one", "lost 2", "three"]);
    // Lost with nothing after it: the periodic top check (every 0.5 s here) finds it.
    lose(4);
    let m = sub.next_item().await;
    seq.see(&m);
    assert_eq!(m["payload"], "lost 4");
    let (_, stats) = http(a.port, "GET", "/api/stats", "").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["cluster_gaps_total"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["cluster_refilled_total"].as_u64().unwrap() >= 2, "{stats}");
    // A gap whose events are no longer in the stream: the subscriber is told with a reset.
    assert_eq!(redis_cli(&redis, &["HINCRBY", "weft:m:gap", "o", "5"]), "9");
    let (status, _) = http(a.port, "POST", "/api/publish", r#"{"topic":"gap","payload":"ten"}"#).await;
    assert_eq!(status, 200);
    let r = sub.next_item().await;
    seq.see(&r);
    assert_eq!(r["offset"], 9, "{r}");
    let m = sub.next_item().await;
    seq.see(&m);
    assert_eq!((m["offset"].as_u64(), m["payload"].as_str()), (Some(10), Some("ten")));
}

/// Pattern subscribers get the same guarantee as exact ones: a topic seen through a pattern is
/// followed by position, so an event whose pub/sub message was lost is refilled from the
/// stream (by the next event, or the periodic check when none follows), duplicates from two
/// covering patterns are dropped, and a hole that cannot be refilled is a `reset`.
#[tokio::test]
async fn pattern_subscribers_get_every_event_once_in_order_across_lost_messages() {
    let Some(redis) = Broker::start(Kind::Redis) else { return };
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut sub = Client::connect(b.port, "s").await;
    for p in ["feed.*", "feed.>"] {
        let r = sub.subscribe(json!({"type": "subscribe", "topics": [p]})).await;
        assert_eq!(r["results"][0]["ok"], true, "{r}");
    }
    let publish = |topic: &'static str, payload: &'static str| async move {
        let body = json!({"topic": topic, "payload": payload}).to_string();
        let (status, body) = http(a.port, "POST", "/api/publish", &body).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let first = publish("feed.x", "one").await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    let lose = |offset: u64| {
        assert_eq!(redis_cli(&redis, &["HINCRBY", "weft:m:feed.x", "o", "1"]), offset.to_string());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        let body = format!("{epoch}\n{now}\n\n\"lost {offset}\"");
        redis_cli(&redis, &["XADD", "weft:s:feed.x", &format!("{offset}-0"), "d", &body]);
    };
    lose(2);
    publish("feed.x", "three").await;
    publish("feed.y", "other").await;
    let mut got: Vec<(String, u64, String)> = Vec::new();
    while got.len() < 4 {
        let m = sub.next_item().await;
        assert_eq!(m["type"], "event", "{m}");
        got.push((
            m["topic"].as_str().unwrap().into(),
            m["offset"].as_u64().unwrap(),
            m["payload"].as_str().unwrap().into(),
        ));
    }
    let x: Vec<_> = got.iter().filter(|g| g.0 == "feed.x").map(|g| (g.1, g.2.as_str())).collect();
    assert_eq!(x, [(1, "one"), (2, "lost 2"), (3, "three")], "{got:?}");
    // Lost with nothing after it: the periodic check finds it.
    lose(4);
    let m = sub.next_item().await;
    assert_eq!(
        (m["topic"].as_str(), m["offset"].as_u64(), m["payload"].as_str()),
        (Some("feed.x"), Some(4), Some("lost 4"))
    );
    // A hole the stream no longer holds: a reset, then the next event.
    assert_eq!(redis_cli(&redis, &["HINCRBY", "weft:m:feed.x", "o", "5"]), "9");
    publish("feed.x", "ten").await;
    let r = sub.next_item().await;
    assert_eq!(
        (r["type"].as_str(), r["topic"].as_str(), r["offset"].as_u64()),
        (Some("reset"), Some("feed.x"), Some(9)),
        "{r}"
    );
    let m = sub.next_item().await;
    assert_eq!((m["offset"].as_u64(), m["payload"].as_str()), (Some(10), Some("ten")));
    // Nothing twice (two patterns cover the topic).
    assert!(sub.recv_within(Duration::from_millis(300)).await.is_none());
    // An exact subscriber of a topic followed for patterns: it starts from the node's position,
    // and keeps receiving once the patterns are gone (the node listens to the topic itself).
    let mut exact = Client::connect(b.port, "e").await;
    let r = exact.subscribe(json!({"type": "subscribe", "topics": ["feed.x"]})).await;
    assert_eq!(r["results"][0]["offset"], 10, "{r}");
    drop(sub);
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish("feed.x", "eleven").await;
    let m = exact.next_item().await;
    assert_eq!((m["offset"].as_u64(), m["payload"].as_str()), (Some(11), Some("eleven")), "{m}");
    let (_, stats) = http(b.port, "GET", "/api/stats", "").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["topics"], 1, "{stats}");
}

/// Redis is killed and restarted from a snapshot older than its last acknowledged publishes
/// (as after a failover to a replica that had not received them): the offsets it handed out
/// after the snapshot must never be handed out again to other events, or subscribers that saw
/// the lost ones would drop the new ones as duplicates. The restarted server is a new era:
/// every topic starts a new epoch, subscribers hear `reset`, and a client resuming from a lost
/// position is told `recovered: false`.
#[tokio::test]
async fn a_redis_restart_that_lost_acknowledged_publishes_starts_new_epochs() {
    let Some(mut redis) = Broker::start(Kind::Redis) else { return };
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut sub = Client::connect(b.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["ledger"]})).await;
    let mut seq = Seq::start(&r);
    let publish = |payload: &str| {
        let body = json!({"topic": "ledger", "payload": payload}).to_string();
        async move {
            let (status, body) = http(a.port, "POST", "/api/publish", &body).await;
            (status, body)
        }
    };
    for i in 1..=3 {
        assert_eq!(publish(&format!("kept {i}")).await.0, 200);
    }
    assert_eq!(redis_cli(&redis, &["SAVE"]), "OK");
    for i in 4..=5 {
        assert_eq!(publish(&format!("lost {i}")).await.0, 200);
    }
    while seq.last < 5 {
        seq.see(&sub.next_item().await);
    }
    let lost_epoch = seq.epoch.clone();

    redis.restart_keeping();
    assert_eq!(redis_cli(&redis, &["HGET", "weft:m:ledger", "o"]), "3", "the snapshot holds offsets up to 3");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pos: Value = loop {
        let (status, body) = publish("after").await;
        if status == 200 {
            break serde_json::from_str(&body).unwrap();
        }
        assert!(Instant::now() < deadline, "publishing did not resume after the restart: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(
        pos["epoch"].as_str().unwrap(),
        lost_epoch,
        "offset {} handed out again in the old epoch",
        pos["offset"]
    );
    // The subscriber is told, then gets the new event.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = None;
    while after.is_none() {
        let m = sub.next_item().await;
        seq.see(&m);
        if m["payload"] == "after" {
            after = Some(m);
        }
        assert!(Instant::now() < deadline, "the event after the restart did not arrive");
    }
    assert!(seq.resets >= 1, "no reset after the server lost publishes");
    assert_eq!(seq.epoch, pos["epoch"].as_str().unwrap());
    // A client that saw the lost offsets cannot resume from them.
    let mut late = Client::connect(a.port, "late").await;
    let r = late
        .subscribe(json!({"type": "subscribe", "topics": ["ledger"],
            "resume": {"ledger": {"offset": 5, "epoch": lost_epoch}}}))
        .await;
    assert_eq!(r["results"][0]["recovered"], false, "{r}");
    assert_eq!(r["results"][0]["epoch"], pos["epoch"], "{r}");
}

/// One `redis-server` process (a master, a replica or a sentinel) for the Sentinel test.
struct RedisProc {
    child: Child,
    port: u16,
}

impl RedisProc {
    fn start(args: &[&str], dir: &std::path::Path) -> RedisProc {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(args)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found");
        wait_port(port, "redis-server");
        RedisProc { child, port }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis+sentinel://`: the nodes find the master through Redis Sentinel. The master is killed
/// (-9) while a subscriber listens: publishes fail fast with 5003 until Sentinel promotes the
/// replica, the nodes follow it, health returns to ok, and the subscriber sees every event
/// once in order, or a `reset` where the failover may have lost some (a promoted replica starts
/// a new era). Never a silent gap or duplicate.
#[tokio::test]
async fn nodes_follow_a_sentinel_failover_without_silent_loss() {
    if std::env::var("WEFT_SKIP_REDIS").is_ok_and(|v| v == "1") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("weft-sentinel-{}-{}", std::process::id(), free_port()));
    let (mdir, rdir, sdir) = (dir.join("m"), dir.join("r"), dir.join("s"));
    for d in [&mdir, &rdir, &sdir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let master = RedisProc::start(&["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"], &mdir);
    let mport = master.port.to_string();
    let replica = RedisProc::start(&["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", &mport], &rdir);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica.cli(&["INFO", "replication"]).contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "the replica did not sync with the master");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A replica's address given as the broker is refused at start with the reason.
    let out = Command::new(WEFT)
        .args(["serve", "--addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--broker", &format!("redis://127.0.0.1:{}", replica.port)])
        .env_remove("WEFT_JWT_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a replica (role slave), not the master"), "{err}");
    let conf = sdir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor weftm 127.0.0.1 {mport} 1\n\
             sentinel down-after-milliseconds weftm 1000\n\
             sentinel failover-timeout weftm 10000\n\
             sentinel parallel-syncs weftm 1\n"
        ),
    )
    .unwrap();
    let sentinel = RedisProc::start(&[conf.to_str().unwrap(), "--sentinel"], &sdir);
    // The sentinel knows the replica before the test goes on (it learns it from the master).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sentinel.cli(&["SENTINEL", "replicas", "weftm"]).contains(&replica.port.to_string()) {
        assert!(Instant::now() < deadline, "the sentinel did not discover the replica");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("redis+sentinel://127.0.0.1:{}/weftm", sentinel.port);
    let start = |name: &'static str| {
        let url = url.clone();
        spawn_node(name, move |port| {
            let mut cmd = Command::new(WEFT);
            cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--threads", "1"])
                .args(["--broker", &url, "--node-name", name, "--node-ttl", "3"])
                .args(["--rate-limit", "100000", "--rate-burst", "100000"]);
            cmd
        })
    };
    let (a, b) = (start("a"), start("b"));
    let mut sub = Client::connect(b.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["orders"], "presence": true})).await;
    let mut seq = Seq::start(&r);
    let mut publisher = Client::connect(a.port, "p").await;
    let mut published = Vec::new();
    for i in 0..20 {
        publisher.send(json!({"type": "publish", "topic": "orders", "payload": i})).await;
        published.push(publisher.next("published").await);
    }
    // The replica has the first 20 before its link goes (replication is asynchronous: under load
    // it can lag behind the acknowledgements).
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.cli(&["HGET", "weft:m:orders", "o"]) != "20" {
        assert!(Instant::now() < deadline, "the replica did not catch up with the first 20");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The replica loses its link and cannot get it back (a wrong master password): the next
    // publishes, acknowledged by the master, are never replicated before the master dies.
    replica.cli(&["CONFIG", "SET", "masterauth", "wrong"]);
    master.cli(&["CLIENT", "KILL", "TYPE", "replica"]);
    for i in 20..25 {
        publisher.send(json!({"type": "publish", "topic": "orders", "payload": i})).await;
        published.push(publisher.next("published").await);
    }
    assert_eq!(replica.cli(&["HGET", "weft:m:orders", "o"]), "20", "the replica was not to have the last 5");
    drop(master); // kill -9
    let t0 = Instant::now();
    let mut refused = 0;
    let mut next = 25;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        publisher.send(json!({"type": "publish", "topic": "orders", "payload": next})).await;
        let t = Instant::now();
        let m = publisher.recv().await;
        assert!(t.elapsed() < Duration::from_secs(6), "a publish hung for {:?} during the failover", t.elapsed());
        if m["type"] == "published" {
            published.push(m);
            next += 1;
            if refused > 0 {
                break;
            }
        } else {
            assert_eq!(m["code"], 5003, "{m}");
            refused += 1;
        }
        assert!(Instant::now() < deadline, "no failover within 45 s (refused {refused})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused > 0, "publishes did not fail during the failover");
    eprintln!("failover: publishing again after {:?} ({refused} refused)", t0.elapsed());
    assert_eq!(replica.cli(&["ROLE"]).lines().next(), Some("master"), "the replica was promoted");
    for i in 0..20 {
        publisher.send(json!({"type": "publish", "topic": "orders", "payload": 1000 + i})).await;
        published.push(publisher.next("published").await);
    }
    let last = published.last().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut received = std::collections::HashSet::new();
    while seq.epoch != last["epoch"].as_str().unwrap() || seq.last < last["offset"].as_u64().unwrap() {
        let m = sub.next_item().await;
        seq.see(&m);
        if m["type"] == "event" {
            received.insert((m["epoch"].as_str().unwrap().to_owned(), m["offset"].as_u64().unwrap()));
        }
        assert!(Instant::now() < deadline, "the subscriber did not reach {last}");
    }
    assert_eq!(seq.last, last["offset"].as_u64().unwrap());
    // Everything acknowledged by the new master arrived: none was taken for a duplicate of an
    // event the old master acknowledged and lost.
    let new_epoch = last["epoch"].as_str().unwrap();
    for p in published.iter().filter(|p| p["epoch"] == new_epoch) {
        let key = (new_epoch.to_owned(), p["offset"].as_u64().unwrap());
        assert!(received.contains(&key), "{p} was acknowledged after the failover but never delivered");
    }
    assert!(seq.resets >= 1, "the promoted replica is a new era: subscribers must hear a reset");
    let lost = published.iter().filter(|p| p["epoch"] != new_epoch).count();
    eprintln!("failover: {lost} publishes acknowledged before it, {} after", published.len() - lost);
    for n in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = http(n.port, "GET", "/healthz", "").await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "health did not return: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Presence was registered again on the new master.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        publisher.send(json!({"type": "presence", "topic": "orders"})).await;
        let p = publisher.next("presence").await;
        if p["count"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "presence not on the new master: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((a, b, sentinel, replica));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis stops answering (SIGSTOP) while events are published: publishes fail fast with 5003,
/// health is degraded, subscribers stay connected; after SIGCONT everything continues with no
/// gap and no duplicate. Then Redis is killed and restarted empty: subscribers get a `reset`
/// (the history is gone) and continue in the new epoch.
async fn a_broker_outage_fails_publishes_fast_and_loses_nothing_silently(kind: Kind) {
    let Some(mut redis) = Broker::start(kind) else { return };
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut sub = Client::connect(b.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["feed"]})).await;
    let mut seq = Seq::start(&r);
    let mut publisher = Client::connect(a.port, "p").await;
    let mut published = 0u64;
    for _ in 0..20 {
        publisher.send(json!({"type": "publish", "topic": "feed", "payload": published})).await;
        assert_eq!(publisher.next("published").await["type"], "published");
        published += 1;
    }

    redis.signal("-STOP");
    // Publishes fail fast (within the command timeout, not forever) with 5003.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    while refused < 5 && Instant::now() < deadline {
        let t0 = Instant::now();
        publisher.send(json!({"type": "publish", "id": 1, "topic": "feed", "payload": "during"})).await;
        let m = publisher.recv().await;
        assert!(t0.elapsed() < Duration::from_secs(4), "a publish hung for {:?}", t0.elapsed());
        if m["type"] == "error" {
            assert_eq!(m["code"], 5003, "{m}");
            refused += 1;
        } else {
            assert_eq!(m["type"], "published");
            published += 1;
        }
    }
    assert!(refused >= 5, "publishes were not refused during the outage");
    let (status, body) = http(a.port, "GET", "/healthz", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("degraded"), "{body}");
    let (status, _) = http(a.port, "POST", "/api/publish", r#"{"topic":"feed","payload":1}"#).await;
    assert_eq!(status, 503);

    redis.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = http(a.port, "GET", "/healthz", "").await;
        let (status_b, _) = http(b.port, "GET", "/healthz", "").await;
        if status == 200 && status_b == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "health did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        publisher.send(json!({"type": "publish", "topic": "feed", "payload": published})).await;
        publisher.next("published").await;
        published += 1;
    }
    // Every published event arrives once, in order (what was published before the freeze and
    // answered `published` during it included).
    while seq.events < published {
        let m = sub.recv().await;
        seq.see(&m);
    }
    assert_eq!(seq.resets, 0);

    // Redis restarted empty: the topic's history is gone. The subscriber hears `reset` and
    // continues in the new epoch.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let pos = loop {
        publisher.send(json!({"type": "publish", "topic": "feed", "payload": "after"})).await;
        let m = publisher.recv().await;
        if m["type"] == "published" {
            break m;
        }
        assert!(Instant::now() < deadline, "publishing did not resume after the restart: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(pos["epoch"].as_str().unwrap(), seq.epoch, "a new epoch after the history was lost");
    let deadline = Instant::now() + Duration::from_secs(10);
    while seq.last != pos["offset"].as_u64().unwrap() || seq.epoch != pos["epoch"].as_str().unwrap() {
        let m = sub.recv().await;
        seq.see(&m);
        assert!(Instant::now() < deadline);
    }
    assert!(seq.resets >= 1, "no reset after the history was lost");
}

/// Publishes the broker refused during an outage are kept as dead letters (a client's over
/// WebSocket, the HTTP API's with its event id): listed with their payloads, a replay while the
/// broker is still down stops at the first and keeps them all, a replay after it is back
/// publishes them in order to every node's subscribers, and purge empties the store.
async fn publishes_refused_during_an_outage_are_dead_letters_replayed_after_it(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut sub = Client::connect(b.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["orders"]})).await;
    let mut seq = Seq::start(&r);
    let mut publisher = Client::connect(a.port, "p").await;
    publisher.send(json!({"type": "publish", "topic": "orders", "payload": 0})).await;
    assert_eq!(publisher.next("published").await["type"], "published");

    redis.signal("-STOP");
    // Once the node knows the broker is down (its health says so), publishes are refused
    // without being sent: their dead letters are exactly what was not published. (A publish
    // sent just before, whose answer timed out, may have been made anyway: see
    // docs/PROTOCOL.md, "Dead letters".)
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(a.port, "GET", "/healthz", "").await.0 != 503 {
        assert!(Instant::now() < deadline, "the outage was not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut refused = Vec::new();
    for n in 1..=3 {
        publisher.send(json!({"type": "publish", "id": n, "topic": "orders", "payload": n})).await;
        let m = publisher.recv().await;
        assert_eq!((m["type"].as_str(), m["code"].as_u64()), (Some("error"), Some(5003)), "{m}");
        refused.push(n);
    }
    let (status, _) =
        http(a.port, "POST", "/api/publish", r#"{"topic":"orders","payload":"http","id":"h-1","priority":"high"}"#)
            .await;
    assert_eq!(status, 503);
    let (status, body) = http(a.port, "GET", "/api/dead-letters", "").await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let items = page["items"].as_array().unwrap();
    // The refused ones, in order (a publish answered 'published' late is not among them).
    let payloads: Vec<&Value> = items.iter().map(|l| &l["payload"]).collect();
    let want: Vec<Value> = refused.iter().map(|n| json!(n)).chain([json!("http")]).collect();
    assert_eq!(payloads, want.iter().collect::<Vec<_>>(), "{body}");
    let last = items.last().unwrap();
    assert_eq!(
        (&last["kind"], &last["event_id"], &last["priority"], &last["error"]["code"]),
        (&json!("publish"), &json!("h-1"), &json!("high"), &json!(5003)),
        "{body}"
    );

    // A replay while the broker is down: stops at the first, keeps everything.
    let (status, body) = http(a.port, "POST", "/api/dead-letters/replay", "").await;
    assert_eq!(status, 200, "{body}");
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (done["replayed"].as_u64(), done["remaining"].as_u64(), done["error"]["code"].as_u64()),
        (Some(0), Some(4), Some(5003)),
        "{body}"
    );

    redis.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http(a.port, "GET", "/healthz", "").await.0 != 200 {
        assert!(Instant::now() < deadline, "health did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = http(a.port, "POST", "/api/dead-letters/replay", "").await;
    assert_eq!(status, 200, "{body}");
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((done["replayed"].as_u64(), done["remaining"].as_u64()), (Some(4), Some(0)), "{body}");
    // Node b's subscriber: 0, then every refused publish in order, then the HTTP one (with
    // its event id), with no gap.
    let mut got = Vec::new();
    while got.len() < 5 {
        let m = sub.recv().await;
        seq.see(&m);
        if m["type"] == "event" {
            got.push(m["payload"].clone());
            if m["payload"] == "http" {
                assert_eq!(m["id"], "h-1", "{m}");
            }
        }
    }
    assert_eq!(got, [json!(0)].into_iter().chain(want).collect::<Vec<_>>());
    let (_, metrics) = http(a.port, "GET", "/metrics", "").await;
    assert_eq!(metric(&metrics, "weft_dead_letters_replayed_total"), 4.0);
    assert_eq!(metric(&metrics, "weft_dead_letters"), 0.0);
    let (status, body) = http(a.port, "DELETE", "/api/dead-letters", "").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["purged"].as_u64()), (200, Some(0)));
}

/// The value of one metric line (`name{labels} value`) in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Freeze the broker (SIGSTOP) and wait until every node in `ports` reports it down.
async fn freeze(broker: &Broker, ports: &[u16]) {
    broker.signal("-STOP");
    let deadline = Instant::now() + Duration::from_secs(20);
    for &port in ports {
        while http(port, "GET", "/healthz", "").await.0 != 503 {
            assert!(Instant::now() < deadline, "the outage was not noticed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Let the broker run again (SIGCONT) and wait until every node in `ports` is healthy.
async fn thaw(broker: &Broker, ports: &[u16]) {
    broker.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    for &port in ports {
        while http(port, "GET", "/healthz", "").await.0 != 200 {
            assert!(Instant::now() < deadline, "health did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An HTTP publish the broker refuses (the node knows it is down): a dead letter.
async fn refused_publish(port: u16, topic: &str, payload: Value) {
    let body = json!({"topic": topic, "payload": payload}).to_string();
    let (status, body) = http(port, "POST", "/api/publish", &body).await;
    assert_eq!(status, 503, "{body}");
}

/// `GET /api/dead-letters` (all of them).
async fn dead_letter_page(port: u16) -> Value {
    let (status, body) = http(port, "GET", "/api/dead-letters?limit=1000", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Wait until node `port` has moved `n` letters to the shared store in all.
async fn wait_moved(port: u16, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, m) = http(port, "GET", "/metrics", "").await;
        if metric(&m, "weft_dead_letters_moved_total") >= n && metric(&m, "weft_dead_letters") == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "the letters did not move to the shared store:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Dead letters made on node a during an outage stay in a's memory while Redis is frozen
/// (listed there as a's, not shared), move to Redis by themselves once it is back (listed on
/// node b as shared letters of node a), and outlive a killed with -9: b replays them, in order,
/// to its subscriber.
#[tokio::test]
async fn dead_letters_move_to_redis_and_outlive_the_node_that_made_them() {
    let Some(redis) = Broker::start(Kind::Redis) else { return };
    let mut a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut sub = Client::connect(b.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["orders"]})).await;
    let mut seq = Seq::start(&r);
    freeze(&redis, &[a.port]).await;
    for n in 1..=3 {
        refused_publish(a.port, "orders", json!(n)).await;
    }
    let page = dead_letter_page(a.port).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{page}");
    assert!(items.iter().all(|l| l["shared"] == false && l["node"] == "a"), "{page}");
    assert!(page["shared_error"]["code"] == 5003, "{page}");

    thaw(&redis, &[a.port, b.port]).await;
    // Nobody asked: the letters moved by themselves.
    wait_moved(a.port, 3.0).await;
    let page = dead_letter_page(b.port).await;
    let items = page["items"].as_array().unwrap();
    let payloads: Vec<&Value> = items.iter().map(|l| &l["payload"]).collect();
    assert_eq!(payloads, [&json!(1), &json!(2), &json!(3)], "{page}");
    assert!(items.iter().all(|l| l["shared"] == true && l["node"] == "a" && l["kind"] == "publish"), "{page}");
    assert_eq!(page["count"], 3, "{page}");

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let (status, body) = http(b.port, "POST", "/api/dead-letters/replay", "").await;
    assert_eq!(status, 200, "{body}");
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((done["replayed"].as_u64(), done["remaining"].as_u64()), (Some(3), Some(0)), "{body}");
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = sub.next_item().await;
        seq.see(&m);
        got.push(m["payload"].clone());
    }
    assert_eq!(got, [json!(1), json!(2), json!(3)]);
    let (_, m) = http(b.port, "GET", "/metrics", "").await;
    assert_eq!(metric(&m, "weft_dead_letters_replayed_total"), 3.0);
    assert_eq!(metric(&m, "weft_dead_letters_shared"), 0.0);
}

/// The shared store keeps the bounds (here 3 letters, 64 KiB) over the whole cluster: letters
/// of two nodes that each fit in their node's memory do not all fit in it, and the oldest go,
/// counted; a store of 30 KB letters holds two (not three) within its bytes.
#[tokio::test]
async fn the_shared_dead_letter_store_is_bounded_in_entries_and_bytes() {
    let Some(redis) = Broker::start(Kind::Redis) else { return };
    let bounds = ["--dead-letter-max", "3", "--dead-letter-bytes", "65536"];
    let a = node(&redis, "a", &bounds);
    let b = node(&redis, "b", &bounds);
    let ports = [a.port, b.port];

    // Entries: two letters from each node, in one store of three.
    freeze(&redis, &ports).await;
    for n in 1..=2 {
        refused_publish(a.port, "t", json!(format!("a{n}"))).await;
        refused_publish(b.port, "t", json!(format!("b{n}"))).await;
    }
    thaw(&redis, &ports).await;
    wait_moved(a.port, 2.0).await;
    wait_moved(b.port, 2.0).await;
    let page = dead_letter_page(a.port).await;
    let ids: Vec<u64> = page["items"].as_array().unwrap().iter().map(|l| l["id"].as_u64().unwrap()).collect();
    // The first one stored (id 1) went.
    assert_eq!((ids, page["count"].as_u64(), page["dropped"].as_u64()), (vec![2, 3, 4], Some(3), Some(1)), "{page}");
    let (_, m) = http(b.port, "GET", "/metrics", "").await;
    assert_eq!(metric(&m, "weft_dead_letters_shared"), 3.0);
    assert_eq!(metric(&m, "weft_dead_letters_shared_dropped_total"), 1.0);
    let (_, body) = http(b.port, "DELETE", "/api/dead-letters", "").await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"purged": 3, "remaining": 0}));

    // Bytes: three letters of 30 KB (each node holds its own within 64 KiB); two fit.
    freeze(&redis, &ports).await;
    refused_publish(a.port, "t", json!("a".repeat(30_000))).await;
    refused_publish(b.port, "t", json!("b".repeat(30_000))).await;
    refused_publish(b.port, "t", json!("c".repeat(30_000))).await;
    thaw(&redis, &ports).await;
    wait_moved(a.port, 3.0).await;
    wait_moved(b.port, 4.0).await;
    let page = dead_letter_page(b.port).await;
    assert_eq!((page["count"].as_u64(), page["dropped"].as_u64()), (Some(2), Some(2)), "{page}");
    let (_, m) = http(a.port, "GET", "/metrics", "").await;
    let bytes = metric(&m, "weft_dead_letter_shared_bytes");
    assert!((60_000.0..=65_536.0).contains(&bytes), "{bytes}");
    assert_eq!(metric(&m, "weft_dead_letters_shared_dropped_total"), 2.0);
}

/// Two nodes replaying the shared letters at the same moment publish each letter once: every
/// letter is claimed before its publish, so the two replays share the work.
#[tokio::test]
async fn nodes_replaying_shared_dead_letters_at_once_publish_each_once() {
    let Some(redis) = Broker::start(Kind::Redis) else { return };
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let ports = [a.port, b.port];
    let mut sub = Client::connect(a.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["once"]})).await;
    let mut seq = Seq::start(&r);
    freeze(&redis, &ports).await;
    for n in 0..40 {
        refused_publish(if n % 2 == 0 { a.port } else { b.port }, "once", json!(n)).await;
    }
    thaw(&redis, &ports).await;
    wait_moved(a.port, 20.0).await;
    wait_moved(b.port, 20.0).await;
    // Both nodes see all 40.
    for port in ports {
        assert_eq!(dead_letter_page(port).await["count"], 40);
    }
    let (ra, rb) = tokio::join!(
        http(a.port, "POST", "/api/dead-letters/replay", ""),
        http(b.port, "POST", "/api/dead-letters/replay", "")
    );
    let (da, db): (Value, Value) = (serde_json::from_str(&ra.1).unwrap(), serde_json::from_str(&rb.1).unwrap());
    assert_eq!(da["replayed"].as_u64().unwrap() + db["replayed"].as_u64().unwrap(), 40, "{da} {db}");
    assert!(da["error"].is_null() && db["error"].is_null(), "{da} {db}");
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 40 {
        let m = sub.next_item().await;
        seq.see(&m);
        assert!(got.insert(m["payload"].as_u64().unwrap()), "published twice: {m}");
    }
    assert_eq!(got, (0..40).collect());
    // Nothing more comes.
    if let Some(m) = sub.recv_within(Duration::from_secs(1)).await {
        panic!("an extra message: {m}");
    }
    assert_eq!(dead_letter_page(b.port).await["count"], 0);
}

/// The publishes a node holds for a broker that does not answer are bounded in bytes
/// (`--broker-buffer-bytes`, half of it for them): past it a publish fails at once with 5003
/// and says why; the gauge never passes the budget and returns to 0 once the broker answers,
/// and what was accepted is delivered in order.
async fn publishes_waiting_for_the_broker_are_bounded_in_bytes(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let a = node(&redis, "a", &["--broker-buffer-bytes", "1048576", "--max-message-size", "262144"]);
    let mut sub = Client::connect(a.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["big"]})).await;
    let mut seq = Seq::start(&r);
    let mut publisher = Client::connect(a.port, "p").await;
    let blob = "x".repeat(100_000);
    redis.signal("-STOP");
    for i in 0..12 {
        publisher.send(json!({"type": "publish", "id": i, "topic": "big", "payload": blob})).await;
    }
    let (mut ok, mut full) = (0, 0);
    let (_, metrics) = http(a.port, "GET", "/metrics", "").await;
    let held = metric(&metrics, "weft_cluster_publish_queue_bytes");
    assert!(held <= 524_288.0, "{held} bytes queued past the 512 KiB budget");
    assert!(held > 0.0, "nothing queued while the broker is frozen");
    redis.signal("-CONT");
    for _ in 0..12 {
        let m = publisher.recv().await;
        match m["type"].as_str() {
            Some("published") => ok += 1,
            _ => {
                assert_eq!(m["code"], 5003, "{m}");
                let why = m["message"].as_str().unwrap_or_default();
                if why.contains("too many publishes waiting") {
                    full += 1;
                }
            }
        }
    }
    assert!(full >= 1, "no publish was refused for the byte budget ({ok} published)");
    assert!(ok >= 1, "nothing was published");
    while seq.events < ok {
        let m = sub.next_item().await;
        seq.see(&m);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = http(a.port, "GET", "/metrics", "").await;
        let held: f64 =
            ["weft_cluster_publish_queue_bytes", "weft_cluster_inbound_bytes", "weft_cluster_pending_bytes"]
                .iter()
                .map(|m| metric(&metrics, m))
                .sum();
        if held == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "buffers did not drain:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two nodes publish to the same topic at the same time, each with many publishes in flight:
/// every event gets its own offset (NATS: publishes refused by the last-sequence check are
/// retried), and a subscriber on a third node sees all of them once, in order.
async fn concurrent_publishers_on_one_topic_share_one_sequence(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let nodes = [node(&redis, "a", &[]), node(&redis, "b", &[]), node(&redis, "c", &[])];
    let mut sub = Client::connect(nodes[2].port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["race"]})).await;
    let mut seq = Seq::start(&r);
    let mut tasks = Vec::new();
    for (k, n) in nodes[..2].iter().enumerate() {
        let port = n.port;
        tasks.push(tokio::spawn(async move {
            let mut p = Client::connect(port, &format!("p{k}")).await;
            for i in 0..200 {
                p.send(json!({"type": "publish", "topic": "race", "payload": format!("{k}-{i}")})).await;
            }
            let mut offsets = Vec::new();
            for _ in 0..200 {
                let m = p.next("published").await;
                offsets.push(m["offset"].as_u64().unwrap());
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let offsets = t.await.unwrap();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "one connection's publishes out of order");
        all.extend(offsets);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>(), "every publish its own offset");
    let mut payloads = std::collections::HashSet::new();
    while seq.events < 400 {
        let m = sub.next_item().await;
        seq.see(&m);
        assert!(payloads.insert(m["payload"].as_str().unwrap().to_owned()), "{m}");
    }
    assert_eq!(seq.resets, 0);
}

/// NATS restarted with its store: history and positions survive, so subscribers see no reset
/// and a client resumes across the restart; presence (kept in memory) is registered again.
#[tokio::test]
async fn nats_restarted_with_its_store_keeps_positions_and_history() {
    let Some(mut nats) = Broker::start(Kind::Nats) else { return };
    let a = node(&nats, "a", &[]);
    let b = node(&nats, "b", &[]);
    let mut sub = Client::connect(b.port, "s").await;
    let r = sub.subscribe(json!({"type": "subscribe", "topics": ["kept"], "presence": true})).await;
    let mut seq = Seq::start(&r);
    for i in 0..10 {
        let (status, _) = http(a.port, "POST", "/api/publish", &format!(r#"{{"topic":"kept","payload":{i}}}"#)).await;
        assert_eq!(status, 200);
    }
    while seq.events < 10 {
        seq.see(&sub.next_item().await);
    }
    nats.restart_keeping();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (sa, _) = http(a.port, "GET", "/healthz", "").await;
        let (sb, _) = http(b.port, "GET", "/healthz", "").await;
        if sa == 200 && sb == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "health did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 10..20 {
        let (status, body) =
            http(a.port, "POST", "/api/publish", &format!(r#"{{"topic":"kept","payload":{i}}}"#)).await;
        assert_eq!(status, 200, "{body}");
    }
    while seq.events < 20 {
        seq.see(&sub.next_item().await);
    }
    assert_eq!((seq.last, seq.resets), (20, 0));
    // A resume from before the restart is exact.
    let mut again = Client::connect(a.port, "again").await;
    let r = again
        .subscribe(json!({"type": "subscribe", "topics": ["kept"],
            "resume": {"kept": {"offset": 5, "epoch": seq.epoch}}}))
        .await;
    assert_eq!((r["results"][0]["recovered"].as_bool(), r["results"][0]["replayed"].as_u64()), (Some(true), Some(15)));
    // Presence came back: both members are listed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        again.send(json!({"type": "presence", "topic": "kept"})).await;
        let p = again.next("presence").await;
        if p["count"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "presence not registered again: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node killed with -9 and started again at once under the same name (a fixed
/// `--node-name`): its heartbeat never stops, so no sweep would remove the members of its
/// previous run; the new process removes them itself at start (with their leave notices).
async fn a_node_restarted_under_its_name_leaves_no_ghosts(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let w = node(&redis, "w", &[]);
    let mut fixed = node(&redis, "fixed", &[]);
    let mut watcher = Client::connect(w.port, "watcher").await;
    watcher.subscribe(json!({"type": "subscribe", "topics": ["lobby"], "presence": true})).await;
    let mut bob = Client::connect(fixed.port, "bob").await;
    bob.subscribe(json!({"type": "subscribe", "topics": ["lobby"]})).await;
    assert_eq!(watcher.next("join").await["member"]["user"], "bob");
    Command::new("kill").args(["-9", &fixed.child.id().to_string()]).status().unwrap();
    let _ = fixed.child.wait();
    drop(bob);
    fixed = node(&redis, "fixed", &[]);
    let l = tokio::time::timeout(Duration::from_secs(10), watcher.next("leave")).await.expect("bob stayed a ghost");
    assert_eq!(l["member"]["user"], "bob", "{l}");
    watcher.send(json!({"type": "presence", "topic": "lobby"})).await;
    assert_eq!(watcher.next("presence").await["count"], 1);
    drop(fixed);
}

/// TLS to the broker: nodes reach a TLS-only server, trusting a private CA; a node that does not
/// trust it does not start, and says why (without the password).
async fn nodes_join_over_tls(kind: Kind) {
    let skip = if kind == Kind::Redis { "WEFT_SKIP_REDIS" } else { "WEFT_SKIP_NATS" };
    if std::env::var(skip).is_ok_and(|v| v == "1") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("weft-{}-tls-{}-{}", kind.name(), std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let port = free_port();
    let p = port.to_string();
    let (mut cmd, scheme) = match kind {
        Kind::Redis => {
            let mut c = Command::new("redis-server");
            c.args(["--port", "0", "--tls-port", &p, "--bind", "127.0.0.1", "--save", ""])
                .args(["--tls-cert-file", cert_s, "--tls-key-file", key_s])
                .args(["--tls-ca-cert-file", cert_s, "--tls-auth-clients", "no"]);
            (c, "rediss")
        }
        Kind::Nats => {
            let mut c = Command::new("nats-server");
            c.args(["-js", "-a", "127.0.0.1", "-p", &p, "-sd", dir.join("store").to_str().unwrap()]).args([
                "--tls",
                "--tlscert",
                cert_s,
                "--tlskey",
                key_s,
            ]);
            (c, "tls")
        }
    };
    let server = Broker {
        kind,
        child: Some(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()),
        port,
        dir: dir.join("store"),
    };
    wait_port(port, "the TLS broker");
    let url = format!("{scheme}://localhost:{port}");
    let start = |name: &str| {
        spawn_node(name, |p| {
            let mut c = Command::new(WEFT);
            c.args(["serve", "--addr", &format!("127.0.0.1:{p}"), "--threads", "1", "--broker", &url]).args([
                "--broker-ca-file",
                cert_s,
                "--node-name",
                name,
            ]);
            c
        })
    };
    let (a, b) = (start("a"), start("b"));
    let mut sub = Client::connect(b.port, "s").await;
    sub.subscribe(json!({"type": "subscribe", "topics": ["secure"]})).await;
    let (status, body) = http(a.port, "POST", "/api/publish", r#"{"topic":"secure","payload":"over tls"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sub.next("event").await["payload"], "over tls");
    // Without the CA (system roots only): refused at start with the reason, no password shown.
    let out = Command::new(WEFT)
        .args(["serve", "--addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--broker", &format!("{scheme}://u:hunter2@localhost:{port}")])
        .env_remove("WEFT_JWT_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let title = if kind == Kind::Redis { "Redis" } else { "NATS" };
    assert!(err.contains(&format!("cannot reach {title} at {scheme}://u:***@localhost")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    drop((a, b, server));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A broker that cannot be reached, or is not supported, stops the start with the reason.
#[test]
fn unreachable_or_unsupported_brokers_are_refused_at_start() {
    let run = |broker: &str| {
        let out = Command::new(WEFT)
            .args(["serve", "--addr", &format!("127.0.0.1:{}", free_port()), "--broker", broker])
            .env_remove("WEFT_JWT_SECRET")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&format!("redis://:s3cret@127.0.0.1:{}", free_port()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach Redis at redis://:***@127.0.0.1"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let (code, err) = run(&format!("nats://u:s3cret@127.0.0.1:{}", free_port()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach NATS at nats://u:***@127.0.0.1"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let (code, err) = run(&format!("redis+sentinel://127.0.0.1:{}/main", free_port()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no master \"main\" from Redis Sentinel"), "{err}");
    let (code, err) = run(&format!("redis+sentinel://127.0.0.1:{}", free_port()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the master's name is missing"), "{err}");
    let (code, err) = run("kafka://127.0.0.1:9092");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unsupported broker"), "{err}");
}

/// `--workers 2`: two processes share the port, each its own node; clients spread over them
/// still see one engine. SIGTERM to the parent stops both and exits 0. Without a cluster broker
/// the flag says what it needs.
async fn workers_share_the_port_and_the_topics(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let port = free_port();
    let mut parent = Command::new(WEFT)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--workers", "2", "--pin"])
        .args(["--broker", &redis.url(), "--node-name", "box"])
        .env_remove("WEFT_JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, "weft serve --workers");
    // Connections land on both workers (the kernel hashes each connection's addresses).
    let mut nodes = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.len() < 2 {
        let (status, body) = http(port, "GET", "/api/stats", "").await;
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            nodes.insert(v["cluster"]["node"].as_str().unwrap().to_owned());
        }
        assert!(Instant::now() < deadline, "only saw {nodes:?}");
    }
    assert!(nodes.contains("box-w0") && nodes.contains("box-w1"), "{nodes:?}");
    let mut subs = Vec::new();
    for i in 0..8 {
        let mut c = Client::connect(port, &format!("u{i}")).await;
        c.subscribe(json!({"type": "subscribe", "topics": ["w"]})).await;
        subs.push(c);
    }
    let (status, _) = http(port, "POST", "/api/publish", r#"{"topic":"w","payload":"all"}"#).await;
    assert_eq!(status, 200);
    for c in subs.iter_mut() {
        assert_eq!(c.next("event").await["payload"], "all");
    }
    drop(subs);
    Command::new("kill").args(["-TERM", &parent.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || parent.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "a worker outlived the parent");

    let out = Command::new(WEFT)
        .args(["serve", "--addr", &format!("127.0.0.1:{}", free_port()), "--workers", "2"])
        .env_remove("WEFT_JWT_SECRET")
        .env_remove("WEFT_BROKER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("add --broker redis://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node killed with -9 under load and started again: its clients reconnect to the new node
/// with their positions and resume exactly while publishing never stopped on the other node.
async fn a_node_restarted_under_load_loses_nothing_for_resuming_clients(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let a = node(&redis, "a", &[]);
    let port_b = free_port();
    let start_b = |name: &str| {
        let child = Command::new(WEFT)
            .args(["serve", "--addr", &format!("127.0.0.1:{port_b}"), "--threads", "1"])
            .args(["--broker", &redis.url(), "--node-name", name])
            .args(["--rate-limit", "100000", "--rate-burst", "100000"])
            .env_remove("WEFT_JWT_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port_b, "weft serve b");
        Node { child, port: port_b }
    };
    let mut b = start_b("b1");
    let mut subs = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(b.port, &format!("u{i}")).await;
        let r = c.subscribe(json!({"type": "subscribe", "topics": ["load"]})).await;
        subs.push((c, Seq::start(&r)));
    }
    // The publisher: 600 events on node a, one every millisecond or so.
    let a_port = a.port;
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(a_port, "pub").await;
        for i in 0..600u64 {
            p.send(json!({"type": "publish", "topic": "load", "payload": i})).await;
            assert_eq!(p.next("published").await["offset"], i + 1);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // Read for a while, then kill b in the middle of the stream.
    for (c, seq) in subs.iter_mut() {
        while seq.last < 100 {
            seq.see(&c.next_item().await);
        }
    }
    Command::new("kill").args(["-9", &b.child.id().to_string()]).status().unwrap();
    let _ = b.child.wait();
    b = start_b("b2");
    // Each client: read what arrived before the kill, then reconnect and resume.
    for (c, seq) in subs.iter_mut() {
        loop {
            match tokio::time::timeout(Duration::from_millis(200), c.ws.recv()).await {
                Ok(Some(Ok(Message::Text(t)))) => seq.see(&serde_json::from_str(t.as_str()).unwrap()),
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        let mut again = Client::connect(b.port, "back").await;
        let r = again
            .subscribe(json!({"type": "subscribe", "topics": ["load"],
                "resume": {"load": {"offset": seq.last, "epoch": seq.epoch}}}))
            .await;
        assert_eq!(r["results"][0]["recovered"], true, "{r}");
        *c = again;
    }
    publisher.await.unwrap();
    for (c, seq) in subs.iter_mut() {
        while seq.last < 600 {
            seq.see(&c.next_item().await);
        }
        assert_eq!((seq.last, seq.resets), (600, 0));
    }
    drop(a);
}

/// Random publishes on random nodes while clients reconnect to random nodes with their last
/// position: at the end, every client has seen every event of its topic exactly once, in order.
async fn soak_random_nodes_and_reconnects_keep_every_sequence_exact(kind: Kind) {
    let Some(redis) = Broker::start(kind) else { return };
    let nodes = [node(&redis, "a", &[]), node(&redis, "b", &[]), node(&redis, "c", &[])];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let topics = ["soak.0", "soak.1", "soak.2"];
    struct Sub {
        c: Client,
        topic: &'static str,
        seq: Seq,
    }
    let mut subs = Vec::new();
    for i in 0..9 {
        let topic = topics[i % 3];
        let mut c = Client::connect(nodes[i % 3].port, &format!("u{i}")).await;
        let r = c.subscribe(json!({"type": "subscribe", "topics": [topic]})).await;
        let seq = Seq::start(&r);
        subs.push(Sub { c, topic, seq });
    }
    let mut pubs = Vec::new();
    for n in &nodes {
        pubs.push(Client::connect(n.port, "pub").await);
    }
    let mut total = [0u64; 3];
    let started = Instant::now();
    for round in 0..40 {
        if started.elapsed() > Duration::from_secs(40) {
            break;
        }
        for _ in 0..10 {
            let t = rand(3);
            let p = &mut pubs[rand(3)];
            p.send(json!({"type": "publish", "topic": topics[t], "payload": round})).await;
            p.next("published").await;
            total[t] += 1;
        }
        // Read what has arrived, then move one client to a random node with its position.
        for s in subs.iter_mut() {
            while let Some(m) = s.c.recv_within(Duration::from_millis(5)).await {
                s.seq.see(&m);
            }
        }
        let k = rand(subs.len());
        let s = &mut subs[k];
        let mut c = Client::connect(nodes[rand(3)].port, "moved").await;
        let r = c
            .subscribe(json!({"type": "subscribe", "topics": [s.topic],
                "resume": {(s.topic): {"offset": s.seq.last, "epoch": s.seq.epoch}}}))
            .await;
        assert_eq!(r["results"][0]["recovered"], true, "{r}");
        s.c = c;
    }
    for s in subs.iter_mut() {
        let t = topics.iter().position(|t| *t == s.topic).unwrap();
        while s.seq.last < total[t] {
            let m = s.c.recv().await;
            s.seq.see(&m);
        }
        assert_eq!(s.seq.last, total[t]);
        assert_eq!(s.seq.resets, 0);
    }
}

/// The tests above that hold for every cluster broker, once per broker.
macro_rules! on_every_broker {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Kind::Redis).await
            })*
        }
        mod nats {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Kind::Nats).await
            })*
        }
    };
}

on_every_broker!(
    publish_on_one_node_arrives_in_order_on_every_node_and_resumes_on_another,
    presence_spans_nodes_and_a_killed_node_leaves_within_the_bound,
    a_stalled_node_is_swept_then_registers_its_members_again,
    a_broker_outage_fails_publishes_fast_and_loses_nothing_silently,
    workers_share_the_port_and_the_topics,
    a_node_restarted_under_load_loses_nothing_for_resuming_clients,
    soak_random_nodes_and_reconnects_keep_every_sequence_exact,
    concurrent_publishers_on_one_topic_share_one_sequence,
    nodes_join_over_tls,
    a_node_restarted_under_its_name_leaves_no_ghosts,
    publishes_waiting_for_the_broker_are_bounded_in_bytes,
    publishes_refused_during_an_outage_are_dead_letters_replayed_after_it,
);
