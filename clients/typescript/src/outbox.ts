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
}

const LOCK = "weft-outbox:";

/** IndexedDB when the platform has it, else nothing (the queue stays in memory). */
export function openStore(name: string, owner: string): Store | undefined {
  const idb = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
  if (!idb) return undefined;
  const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
  // Held for this client's life: other pages see that its entries are not orphans.
  locks?.request(LOCK + owner, () => new Promise<void>(() => {})).catch(() => {});
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
      const all = (await tx((s) => s.getAll() as IDBRequest<Stored[]>).catch(() => undefined)) ?? [];
      const orphans = all.filter((e) => e.owner !== me && !held.has(LOCK + e.owner));
      if (orphans.length > 0) {
        await tx((s) => {
          for (const e of orphans) s.put({ ...e, owner: me });
        }).catch(() => {});
      }
      return orphans.sort((a, b) => (a.key ?? 0) - (b.key ?? 0)).map((e) => ({ ...e, owner: me }));
    },
  };
}
