/**
 * The panel's state and what changes it: loading, live refresh (polling), and the actions
 * (deploy, scale, roll, roll back, delete, logs). The view renders `state` and calls these
 * methods; nothing here touches the DOM, so it is unit-tested in Node.
 *
 * State is immutable: every change makes a new `state` object and emits `changed`.
 * Errors are never swallowed: a failed load sets `loadError` (cleared by the next load that
 * works), a failed action sets `actionError` (cleared when dismissed or by the next action
 * that works); the view shows both in its error banner.
 */

import type { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  HubserveClient,
  HubserveError,
  type IDeployment,
  type IDeploymentCreate,
  type IDeploymentPatch,
  type IHubUser,
  type IHubserveConfig,
  type ILogChunk,
  type IModelDetail,
  type IVersionRecord
} from './api';
import type { IModelRef } from './form';

/** A model of the user, with its versions once loaded. */
export interface IModelEntry {
  owner: string;
  name: string;
  /** `owner/name` */
  key: string;
  detail: IModelDetail | null;
  /** Why its versions could not be loaded. */
  error: HubserveError | null;
}

/** The logs view of one deployment. */
export interface ILogsState {
  loading: boolean;
  chunks: ILogChunk[] | null;
  error: HubserveError | null;
}

/** An open deploy form: the version to preselect; `nonce` changes on every opening. */
export interface IDeployFormState {
  ref: IModelRef | null;
  nonce: number;
}

export interface IPanelState {
  /** `loading` until the first load ends (successfully or not). */
  status: 'idle' | 'loading' | 'ready';
  /** A load is running (the first one or a refresh). */
  refreshing: boolean;
  config: IHubserveConfig | null;
  me: IHubUser | null;
  /** `null` until loaded. */
  models: IModelEntry[] | null;
  /** `null` until loaded. */
  deployments: IDeployment[] | null;
  loadError: HubserveError | null;
  actionError: HubserveError | null;
  /** `owner/name` of deployments with an action in flight. */
  pending: ReadonlySet<string>;
  /** `owner/name` of the expanded deployment (its endpoint snippets are shown). */
  selected: string | null;
  deployForm: IDeployFormState | null;
  /** Open logs views by `owner/name`. */
  logs: ReadonlyMap<string, ILogsState>;
}

export interface IHubserveModelOptions {
  client?: HubserveClient;
  /** Milliseconds between two refreshes while polling (default 3000). */
  interval?: number;
  /** Reload the models (one request per model) every this many refreshes (default 5). */
  modelsEvery?: number;
  /** Log lines per replica (default 200). */
  logsTail?: number;
  /** Whether the page is visible; polling skips its refreshes while it is not. */
  isPageVisible?: () => boolean;
}

export const DEFAULT_INTERVAL = 3000;

const INITIAL_STATE: IPanelState = {
  status: 'idle',
  refreshing: false,
  config: null,
  me: null,
  models: null,
  deployments: null,
  loadError: null,
  actionError: null,
  pending: new Set(),
  selected: null,
  deployForm: null,
  logs: new Map()
};

/** `owner/name` */
export function keyOf(item: { owner: string; name: string }): string {
  return `${item.owner}/${item.name}`;
}

function splitKey(key: string): [string, string] {
  const slash = key.indexOf('/');
  return [key.slice(0, slash), key.slice(slash + 1)];
}

function defaultPageVisible(): boolean {
  return typeof document === 'undefined' || document.visibilityState !== 'hidden';
}

interface IRefreshOptions {
  /** Reload the models and their versions too (default true). */
  models?: boolean;
  /** Ask the server extension for its config and the service for `api/me` again. */
  config?: boolean;
}

export class HubserveModel implements IDisposable {
  readonly client: HubserveClient;
  readonly interval: number;

  constructor(options: IHubserveModelOptions = {}) {
    this.client = options.client ?? new HubserveClient();
    this.interval = options.interval ?? DEFAULT_INTERVAL;
    this._modelsEvery = Math.max(1, options.modelsEvery ?? 5);
    this._logsTail = options.logsTail ?? 200;
    this._isPageVisible = options.isPageVisible ?? defaultPageVisible;
  }

  get state(): IPanelState {
    return this._state;
  }

  /** Emitted with the new state after every change. */
  get changed(): ISignal<this, IPanelState> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  get isPolling(): boolean {
    return this._polling;
  }

  /**
   * What relative deployment URLs are resolved against: the service's public URL (from
   * `hubserve/config`) when absolute, else the page's origin.
   */
  get urlBase(): string | null {
    const service = this._state.config?.service_url;
    if (service && /^https?:\/\//i.test(service)) {
      return service;
    }
    return typeof location !== 'undefined' ? location.origin : null;
  }

  /** Whether the user may scale, roll or delete this deployment (owner or hub admin). */
  canManage(deployment: { owner: string }): boolean {
    const me = this._state.me;
    return !!me && (me.admin || me.name === deployment.owner);
  }

  // -- loading ------------------------------------------------------------------------------

  /**
   * Load what the panel shows. Concurrent calls share one load (a call that wants the
   * models waits for a running load without them, then loads again).
   */
  refresh(options: IRefreshOptions = {}): Promise<void> {
    const wantModels = options.models ?? true;
    const wantConfig = options.config ?? false;
    const running = this._inflight;
    if (running) {
      if ((running.models || !wantModels) && (running.config || !wantConfig)) {
        return running.promise;
      }
      return running.promise.then(() => this.refresh(options));
    }
    const promise = this._load(wantModels, wantConfig).finally(() => {
      this._inflight = null;
    });
    this._inflight = { promise, models: wantModels, config: wantConfig };
    return promise;
  }

  /** Load everything once, unless it is loaded already. */
  async ensureLoaded(): Promise<void> {
    if (this._state.models === null || this._state.deployments === null) {
      await this.refresh({ models: true });
    }
  }

  private async _load(models: boolean, reconfigure: boolean): Promise<void> {
    if (this._disposed) {
      return;
    }
    const generation = this._generation;
    this._set({
      refreshing: true,
      status: this._state.status === 'ready' ? 'ready' : 'loading'
    });
    try {
      let config = this._state.config;
      if (!config || reconfigure) {
        config = await this._config();
      }
      if (!config.configured) {
        this._set({
          config,
          status: 'ready',
          loadError: new HubserveError(
            'not-configured',
            config.reason || 'the hubserve server extension has no service URL or token',
            503
          )
        });
        return;
      }
      let me = this._state.me;
      if (!me || reconfigure) {
        me = await this.client.me();
      }
      const owner = me.name;
      const [deployments, modelEntries] = await Promise.all([
        this.client.listDeployments(owner),
        models ? this._loadModels(owner) : Promise.resolve(this._state.models)
      ]);
      if (this._disposed) {
        return;
      }
      if (generation !== this._generation) {
        // an action changed deployments meanwhile: this answer may predate it
        this._set({ config, me, models: modelEntries, status: 'ready', loadError: null });
        return;
      }
      this._set({
        config,
        me,
        models: modelEntries,
        deployments,
        status: 'ready',
        loadError: null,
        selected: this._keepSelection(deployments, this._state.selected),
        logs: this._pruneLogs(deployments)
      });
    } catch (error) {
      this._set({ status: 'ready', loadError: HubserveError.from(error) });
    } finally {
      this._set({ refreshing: false });
    }
  }

  /** `hubserve/config`; a 404 means that the server extension is not loaded at all. */
  private async _config(): Promise<IHubserveConfig> {
    try {
      return await this.client.config();
    } catch (error) {
      const failure = HubserveError.from(error);
      if (failure.kind === 'not-found') {
        throw new HubserveError(
          'not-configured',
          'the hubserve server extension is not enabled in this Jupyter server' +
            ' (`jupyter server extension enable jupyter_extension`; installing hubserve with' +
            ' pip enables it)',
          404
        );
      }
      throw failure;
    }
  }

  private async _loadModels(owner: string): Promise<IModelEntry[]> {
    const summaries = await this.client.listModels(owner);
    const entries = await Promise.all(
      summaries.map(async (summary): Promise<IModelEntry | null> => {
        const key = keyOf(summary);
        try {
          const detail = await this.client.getModel(summary.owner, summary.name);
          return { owner: summary.owner, name: summary.name, key, detail, error: null };
        } catch (error) {
          const failure = HubserveError.from(error);
          if (failure.kind === 'not-found') {
            return null; // deleted between the two calls
          }
          return { owner: summary.owner, name: summary.name, key, detail: null, error: failure };
        }
      })
    );
    return entries
      .filter((entry): entry is IModelEntry => entry !== null)
      .sort((a, b) => a.key.localeCompare(b.key));
  }

  private _keepSelection(deployments: IDeployment[], selected: string | null): string | null {
    if (selected && deployments.some(d => keyOf(d) === selected)) {
      return selected;
    }
    return deployments.length ? keyOf(deployments[0]) : null;
  }

  private _pruneLogs(deployments: IDeployment[]): ReadonlyMap<string, ILogsState> {
    const keys = new Set(deployments.map(keyOf));
    const logs = new Map([...this._state.logs].filter(([key]) => keys.has(key)));
    return logs.size === this._state.logs.size ? this._state.logs : logs;
  }

  // -- polling ------------------------------------------------------------------------------

  /** Refresh now, then every `interval` ms (models every few times) until stopped. */
  startPolling(): void {
    if (this._polling || this._disposed) {
      return;
    }
    this._polling = true;
    const chain = ++this._chain;
    void this._tick(chain);
  }

  /** Stop refreshing (a load already running still ends and updates the state). */
  stopPolling(): void {
    this._polling = false;
    this._chain++;
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private async _tick(chain: number): Promise<void> {
    this._timer = null;
    if (chain !== this._chain) {
      return;
    }
    if (this._isPageVisible()) {
      const models = this._ticks % this._modelsEvery === 0 || this._state.models === null;
      this._ticks++;
      await this.refresh({ models });
      if (chain === this._chain && this._state.logs.size) {
        await Promise.all([...this._state.logs.keys()].map(key => this.loadLogs(key)));
      }
    }
    if (chain === this._chain && !this._disposed) {
      this._timer = setTimeout(() => void this._tick(chain), this.interval);
    }
  }

  // -- actions ------------------------------------------------------------------------------

  /** Create a deployment; on success the form closes and the new deployment is selected. */
  async deploy(request: IDeploymentCreate): Promise<IDeployment | null> {
    this._generation++;
    try {
      const created = await this.client.createDeployment(request);
      this._generation++;
      const key = keyOf(created);
      const others = (this._state.deployments ?? []).filter(d => keyOf(d) !== key);
      const deployments = [...others, created].sort((a, b) => keyOf(a).localeCompare(keyOf(b)));
      this._set({ deployments, selected: key, deployForm: null, actionError: null });
      return created;
    } catch (error) {
      this._set({ actionError: HubserveError.from(error) });
      return null;
    }
  }

  /** Run `replicas` replicas (0 stops them all but keeps the deployment). */
  scale(key: string, replicas: number): Promise<boolean> {
    return this._patch(key, { replicas });
  }

  /** Roll to another version (or tag) of the same model. */
  roll(key: string, version: string): Promise<boolean> {
    return this._patch(key, { version });
  }

  /** Roll back to the version of the previous revision. */
  rollback(key: string): Promise<boolean> {
    return this._patch(key, { rollback: true });
  }

  /** Delete the deployment (the view asks for confirmation first). */
  remove(key: string): Promise<boolean> {
    return this._act(key, async () => {
      const [owner, name] = splitKey(key);
      await this.client.deleteDeployment(owner, name);
      return null;
    });
  }

  private _patch(key: string, patch: IDeploymentPatch): Promise<boolean> {
    return this._act(key, () => {
      const [owner, name] = splitKey(key);
      return this.client.updateDeployment(owner, name, patch);
    });
  }

  private async _act(key: string, work: () => Promise<IDeployment | null>): Promise<boolean> {
    this._generation++;
    this._set({ pending: new Set([...this._state.pending, key]) });
    try {
      const updated = await work();
      this._generation++;
      const current = this._state.deployments ?? [];
      let deployments: IDeployment[];
      if (updated) {
        deployments = current.map(d => (keyOf(d) === key ? updated : d));
      } else {
        deployments = current.filter(d => keyOf(d) !== key);
      }
      const logs = new Map(this._state.logs);
      if (!updated) {
        logs.delete(key);
      }
      this._set({
        deployments,
        actionError: null,
        logs,
        selected: this._keepSelection(deployments, this._state.selected)
      });
      return true;
    } catch (error) {
      this._set({ actionError: HubserveError.from(error) });
      return false;
    } finally {
      const pending = new Set(this._state.pending);
      pending.delete(key);
      this._set({ pending });
    }
  }

  // -- logs ---------------------------------------------------------------------------------

  /** Open (and load) the logs view of a deployment, or close it when open. */
  toggleLogs(key: string): void {
    if (this._state.logs.has(key)) {
      this.closeLogs(key);
    } else {
      void this.loadLogs(key);
    }
  }

  /** Load (or reload) the logs of a deployment; opens its logs view. */
  async loadLogs(key: string): Promise<void> {
    const previous = this._state.logs.get(key);
    this._setLogs(key, { loading: true, chunks: previous?.chunks ?? null, error: null });
    const [owner, name] = splitKey(key);
    try {
      const chunks = await this.client.logs(owner, name, this._logsTail);
      if (this._state.logs.has(key)) {
        this._setLogs(key, { loading: false, chunks, error: null });
      }
    } catch (error) {
      if (this._state.logs.has(key)) {
        this._setLogs(key, {
          loading: false,
          chunks: previous?.chunks ?? null,
          error: HubserveError.from(error)
        });
      }
    }
  }

  closeLogs(key: string): void {
    const logs = new Map(this._state.logs);
    logs.delete(key);
    this._set({ logs });
  }

  private _setLogs(key: string, value: ILogsState): void {
    const logs = new Map(this._state.logs);
    logs.set(key, value);
    this._set({ logs });
  }

  // -- versions -----------------------------------------------------------------------------

  /** A version's record (with its manifest); versions are immutable, so it is cached. */
  versionRecord(owner: string, name: string, version: string): Promise<IVersionRecord> {
    const key = `${owner}/${name}:${version}`;
    let found = this._records.get(key);
    if (!found) {
      found = this.client.getVersion(owner, name, version);
      this._records.set(key, found);
      found.catch(() => this._records.delete(key));
    }
    return found;
  }

  /** The loaded versions of `owner/name`, newest first (`null` when not loaded). */
  versionsOf(modelKey: string): IModelDetail | null {
    return this._state.models?.find(m => m.key === modelKey)?.detail ?? null;
  }

  // -- view state ---------------------------------------------------------------------------

  select(key: string | null): void {
    this._set({ selected: key });
  }

  /** Open the deploy form, with `ref` preselected when given. */
  openDeployForm(ref: IModelRef | null = null): void {
    this._set({ deployForm: { ref, nonce: ++this._nonce } });
  }

  closeDeployForm(): void {
    this._set({ deployForm: null });
  }

  dismissError(): void {
    this._set({ actionError: null });
  }

  /** Show an error that happened in the view (e.g. the clipboard refused). */
  reportError(error: unknown): void {
    this._set({ actionError: HubserveError.from(error) });
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this.stopPolling();
    this._disposed = true;
    Signal.clearData(this);
  }

  private _set(patch: Partial<IPanelState>): void {
    if (this._disposed) {
      return;
    }
    this._state = { ...this._state, ...patch };
    this._changed.emit(this._state);
  }

  private _state: IPanelState = INITIAL_STATE;
  private _changed = new Signal<this, IPanelState>(this);
  private _disposed = false;
  private _polling = false;
  private _chain = 0;
  private _ticks = 0;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _generation = 0;
  private _nonce = 0;
  private _inflight: { promise: Promise<void>; models: boolean; config: boolean } | null = null;
  private _records = new Map<string, Promise<IVersionRecord>>();
  private readonly _modelsEvery: number;
  private readonly _logsTail: number;
  private readonly _isPageVisible: () => boolean;
}
