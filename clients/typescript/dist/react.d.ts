import type { ReactNode } from "react";
import type { Member, Position, Published, StateChange, SubscribedInfo, Unrecovered, WeftClient, WeftEvent } from "./client.js";
/** Makes `client` available to the hooks below it. Connects it when mounted. */
export declare function WeftProvider(props: {
    client: WeftClient;
    children?: ReactNode;
    connect?: boolean;
}): import("react").FunctionComponentElement<import("react").ProviderProps<WeftClient | null>>;
/** The client given to the nearest <WeftProvider>. */
export declare function useWeftClient(): WeftClient;
/** The connection's state (`connecting`, `connected`, `reconnecting`, `closed`), with the reason. */
export declare function useConnectionState(): StateChange;
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
export declare function useTopic<T = unknown>(topic: string, options?: {
    limit?: number;
    history?: number;
}): TopicState<T>;
/** Who is on a topic, kept current by join and leave (subscribes with presence while mounted). */
export declare function usePresence(topic: string): Member[];
/** A stable function that publishes through the client (queued while offline). */
export declare function usePublish(): (topic: string, payload: unknown) => Promise<Published>;
