/** A publish kept while disconnected, as stored. */
export interface Stored {
    key?: number;
    owner: string;
    topic: string;
    payload: unknown;
    time: number;
}
export interface Store {
    add(e: Stored): Promise<number | undefined>;
    remove(key: number | undefined): void;
    /** Entries left by clients that no longer run, oldest first; they now belong to `owner`. */
    adopt(owner: string): Promise<Stored[]>;
    /** This client is done: its lock goes, so a later page may take what it left. */
    release(): void;
}
/** IndexedDB when the platform has it, else nothing (the queue stays in memory). */
export declare function openStore(name: string, owner: string): Store | undefined;
