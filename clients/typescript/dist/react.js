// React bindings: one client per app through <WeftProvider>, hooks for topics, presence, the
// connection's state and publishing. React is a peer dependency; nothing here runs without it.
import { createContext, createElement, useCallback, useContext, useEffect, useRef, useState, useSyncExternalStore } from "react";
const Ctx = createContext(null);
/** Makes `client` available to the hooks below it. Connects it when mounted. */
export function WeftProvider(props) {
    const { client, connect = true } = props;
    useEffect(() => {
        if (connect)
            client.connect().catch(() => { });
    }, [client, connect]);
    return createElement(Ctx.Provider, { value: client }, props.children);
}
/** The client given to the nearest <WeftProvider>. */
export function useWeftClient() {
    const c = useContext(Ctx);
    if (!c)
        throw new Error("weft-client/react: no <WeftProvider> above this component");
    return c;
}
/** The connection's state (`connecting`, `connected`, `reconnecting`, `closed`), with the reason. */
export function useConnectionState() {
    const client = useWeftClient();
    return useSyncExternalStore((onChange) => client.on("state", onChange), () => client.state, () => client.state);
}
/**
 * Subscribes while mounted. Keeps the latest event and a bounded list (`limit`, default 100).
 * `history` starts with that many recent events; the subscription resumes across reconnects.
 */
export function useTopic(topic, options = {}) {
    const client = useWeftClient();
    const { limit = 100, history } = options;
    const [state, setState] = useState({ events: [] });
    // Read when an event arrives: a new limit does not subscribe again.
    const max = useRef(limit);
    max.current = limit;
    useEffect(() => {
        setState({ events: [] });
        const sub = client.subscribe(topic, (ev) => setState((s) => ({
            ...s,
            last: ev,
            events: [...s.events, ev].slice(-Math.max(1, max.current)),
            position: { offset: ev.offset, epoch: ev.epoch },
        })), {
            ...(history ? { history } : {}),
            onSubscribed: (subscribed) => setState((s) => ({ ...s, subscribed })),
            onUnrecovered: (u) => setState((s) => ({ ...s, unrecovered: u, position: u.position })),
            onError: (error) => setState((s) => ({ ...s, error })),
        });
        return () => void sub.unsubscribe();
    }, [client, topic, history]);
    return state;
}
/** Who is on a topic, kept current by join and leave (subscribes with presence while mounted). */
export function usePresence(topic) {
    const client = useWeftClient();
    const [members, setMembers] = useState([]);
    useEffect(() => {
        let live = true;
        setMembers([]);
        const refresh = () => client.presence(topic).then((p) => live && setMembers(p.members), () => { });
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
export function usePublish() {
    const client = useWeftClient();
    const ref = useRef(client);
    ref.current = client;
    return useCallback((topic, payload) => ref.current.publish(topic, payload), []);
}
