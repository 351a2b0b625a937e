import { useSyncExternalStore } from 'react';
import type { AppState, ChatStore } from './store';

/** Subscribes a component to a slice of the store. The selector must return stable references. */
export function useStore<T>(store: ChatStore, selector: (s: AppState) => T): T {
  return useSyncExternalStore(
    store.subscribe,
    () => selector(store.getState()),
    () => selector(store.getState()),
  );
}
