// The page the browser end-to-end test drives: a small React app on weft-client/react, the way
// a user would write one. It shows the connection state, every event of one topic (useTopic),
// who is present (usePresence), and publishes with usePublish; it also hands the test what it
// saw through `window.weftTest`.
import { createElement as h, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { WeftClient, type SecureMode, type Unrecovered } from "../../src/index.js";
import { secure } from "../../src/secure.js";
import { WeftProvider, useConnectionState, usePresence, usePublish, useTopic } from "../../src/react.js";

const q = new URLSearchParams(location.search);
const topic = q.get("topic") ?? "feed";
const client = new WeftClient(q.get("ws")!, {
  params: { user: q.get("user") ?? "anon" },
  reconnect: { minDelay: 100, maxDelay: 500 },
  offlineQueue: { persist: "e2e-" + (q.get("user") ?? "anon") },
  ...(q.get("secure") ? { secure: secure(q.get("secure") as SecureMode) } : {}),
});

interface TestHooks {
  seen: unknown[];
  unrecovered: Unrecovered[];
  outbox: unknown[];
  publish?: (payload: unknown) => Promise<unknown>;
  secured: () => string | undefined;
}
const hooks: TestHooks = { seen: [], unrecovered: [], outbox: [], secured: () => client.secured };
(window as unknown as { weftTest: TestHooks }).weftTest = hooks;
client.on("outbox", (r) => hooks.outbox.push(r.result ? r.result.offset : String(r.error)));

function App() {
  const state = useConnectionState();
  const { events, unrecovered, subscribed } = useTopic(topic, { limit: 1000 });
  const members = usePresence(topic);
  const publish = usePublish();
  const [published, setPublished] = useState(0);
  useEffect(() => {
    hooks.seen = events.map((e) => e.payload);
  }, [events]);
  useEffect(() => {
    if (unrecovered) hooks.unrecovered.push(unrecovered);
  }, [unrecovered]);
  useEffect(() => {
    hooks.publish = (payload) => publish(topic, payload).then((r) => (setPublished((n) => n + 1), r));
  }, [publish]);
  return h(
    "main",
    null,
    h("p", { id: "state" }, state.state + (state.reason ? ` (${state.reason})` : "")),
    h("p", { id: "subscribed" }, subscribed ? "subscribed" : "not yet"),
    h("p", { id: "count" }, String(events.length)),
    h("p", { id: "published" }, String(published)),
    h("ul", { id: "members" }, ...members.map((m) => h("li", { key: m.session }, m.user))),
    h("ol", { id: "events" }, ...events.slice(-20).map((e) => h("li", { key: e.id }, JSON.stringify(e.payload)))),
  );
}

createRoot(document.getElementById("root")!).render(h(WeftProvider, { client }, h(App)));
