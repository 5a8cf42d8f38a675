// The offline queue's storage. In memory always; in browsers also in IndexedDB, so publishes
// made while disconnected survive a reload: a page that starts takes over the entries left by
// pages that are gone (each live page holds a Web Lock named after it, so a second open tab
// does not take a live tab's entries).

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

const LOCK = "weft-outbox:";

/** IndexedDB when the platform has it, else nothing (the queue stays in memory). */
export function openStore(name: string, owner: string): Store | undefined {
  const idb = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
  if (!idb) return undefined;
  const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
  // Held for this client's life: other pages see that its entries are not orphans.
  let release = () => {};
  locks?.request(LOCK + owner, () => new Promise<void>((done) => (release = done))).catch(() => {});
  let db: Promise<IDBDatabase> | undefined;
  const open = () =>
    (db ??= new Promise<IDBDatabase>((resolve, reject) => {
      const r = idb.open("weft-client:" + name, 1);
      r.onupgradeneeded = () => r.result.createObjectStore("outbox", { keyPath: "key", autoIncrement: true });
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    }));
  const tx = async <T>(f: (s: IDBObjectStore) => IDBRequest<T> | void): Promise<T | undefined> => {
    const t = (await open()).transaction("outbox", "readwrite");
    const req = f(t.objectStore("outbox"));
    return new Promise((resolve, reject) => {
      t.oncomplete = () => resolve(req ? req.result : undefined);
      t.onerror = t.onabort = () => reject(t.error);
    });
  };
  return {
    add: (e) => tx((s) => s.add(e) as IDBRequest<number>).catch(() => undefined),
    remove: (key) => {
      if (key !== undefined) tx((s) => void s.delete(key)).catch(() => {});
    },
    adopt: async (me) => {
      const held = new Set<string>();
      try {
        const q = await locks?.query();
        for (const l of [...(q?.held ?? []), ...(q?.pending ?? [])]) if (l.name) held.add(l.name);
      } catch {
        /* no lock manager: take everything */
      }
      // Read and take over in one transaction: IndexedDB runs them one at a time, so of two
      // pages starting together only one takes an entry.
      const taken: Stored[] = [];
      await tx((s) => {
        const all = s.getAll() as IDBRequest<Stored[]>;
        all.onsuccess = () => {
          for (const e of all.result) {
            if (e.owner === me || held.has(LOCK + e.owner)) continue;
            const mine = { ...e, owner: me };
            s.put(mine);
            taken.push(mine);
          }
        };
      }).catch(() => {});
      return taken.sort((a, b) => (a.key ?? 0) - (b.key ?? 0));
    },
    release: () => release(),
  };
}
