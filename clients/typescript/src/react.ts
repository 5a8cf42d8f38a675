// React bindings: one client per app through <WeftProvider>, hooks for topics, presence, the
// connection's state and publishing. React is a peer dependency; nothing here runs without it.
import { createContext, createElement, useCallback, useContext, useEffect, useRef, useState, useSyncExternalStore } from "react";
import type { ReactNode } from "react";
import type { Member, Position, Published, StateChange, SubscribedInfo, Unrecovered, WeftClient, WeftEvent } from "./client.js";

const Ctx = createContext<WeftClient | null>(null);

/** Makes `client` available to the hooks below it. Connects it when mounted. */
export function WeftProvider(props: { client: WeftClient; children?: ReactNode; connect?: boolean }) {
  const { client, connect = true } = props;
  useEffect(() => {
    if (connect) client.connect().catch(() => {});
  }, [client, connect]);
  return createElement(Ctx.Provider, { value: client }, props.children);
}

/** The client given to the nearest <WeftProvider>. */
export function useWeftClient(): WeftClient {
  const c = useContext(Ctx);
  if (!c) throw new Error("weft-client/react: no <WeftProvider> above this component");
  return c;
}

/** The connection's state (`connecting`, `connected`, `reconnecting`, `closed`), with the reason. */
export function useConnectionState(): StateChange {
  const client = useWeftClient();
  return useSyncExternalStore(
    (onChange) => client.on("state", onChange),
    () => client.state,
    () => client.state,
  );
}

export interface TopicState<T> {
  /** The latest event, if any. */
  last?: WeftEvent<T>;
  /** The latest events, oldest first, at most `limit`. */
  events: WeftEvent<T>[];
  /** The position of the latest event seen. */
  position?: Position;
  /** The latest report that events may have been missed and could not be replayed. */
  unrecovered?: Unrecovered;
  /** Set once the server has made the subscription (again after each reconnect). */
  subscribed?: SubscribedInfo;
  /** The subscription was refused (e.g. 4003 forbidden). */
  error?: Error;
}

/**
 * Subscribes while mounted. Keeps the latest event and a bounded list (`limit`, default 100).
 * `history` starts with that many recent events; the subscription resumes across reconnects.
 */
export function useTopic<T = unknown>(topic: string, options: { limit?: number; history?: number } = {}): TopicState<T> {
  const client = useWeftClient();
  const { limit = 100, history } = options;
  const [state, setState] = useState<TopicState<T>>({ events: [] });
  // Read when an event arrives: a new limit does not subscribe again.
  const max = useRef(limit);
  max.current = limit;
  useEffect(() => {
    setState({ events: [] });
    const sub = client.subscribe<T>(
      topic,
      (ev) =>
        setState((s) => ({
          ...s,
          last: ev,
          events: [...s.events, ev].slice(-Math.max(1, max.current)),
          position: { offset: ev.offset, epoch: ev.epoch },
        })),
      {
        ...(history ? { history } : {}),
        onSubscribed: (subscribed) => setState((s) => ({ ...s, subscribed })),
        onUnrecovered: (u) => setState((s) => ({ ...s, unrecovered: u, position: u.position })),
        onError: (error) => setState((s) => ({ ...s, error })),
      },
    );
    return () => void sub.unsubscribe();
  }, [client, topic, history]);
  return state;
}

/** Who is on a topic, kept current by join and leave (subscribes with presence while mounted). */
export function usePresence(topic: string): Member[] {
  const client = useWeftClient();
  const [members, setMembers] = useState<Member[]>([]);
  useEffect(() => {
    let live = true;
    setMembers([]);
    const refresh = () =>
      client.presence(topic).then(
        (p) => live && setMembers(p.members),
        () => {},
      );
    const sub = client.subscribe(topic, undefined, {
      presence: true,
      // After each (re)subscribe the list is fetched whole; join and leave keep it current.
      onSubscribed: () => void refresh(),
      onJoin: (m) => setMembers((ms) => (ms.some((x) => x.session === m.session) ? ms : [...ms, m])),
      onLeave: (m) => setMembers((ms) => ms.filter((x) => x.session !== m.session)),
    });
    return () => {
      live = false;
      void sub.unsubscribe();
    };
  }, [client, topic]);
  return members;
}

/** A stable function that publishes through the client (queued while offline). */
export function usePublish(): (topic: string, payload: unknown) => Promise<Published> {
  const client = useWeftClient();
  const ref = useRef(client);
  ref.current = client;
  return useCallback((topic: string, payload: unknown) => ref.current.publish(topic, payload), []);
}
