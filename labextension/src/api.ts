/**
 * The typed client of the hubserve Jupyter server extension (`{baseUrl}hubserve/...`).
 *
 * Every call goes through `ServerConnection.makeRequest`, so JupyterLab adds the server's
 * token and the XSRF header; the browser never holds a hub token (the server extension
 * adds its own, server-side). The JSON shapes are those of the hub service
 * (hub_service/registry.py, hub_service/deployments.py) and of `GET hubserve/config`
 * (jupyter_extension/serverext/handlers.py).
 *
 * Failures are `HubserveError`s: an HTTP status (or none when the Jupyter server could not
 * be reached), a `kind` the panel words its banner by, and the service's own `detail`.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

// -- shapes -------------------------------------------------------------------------------

/** `GET hubserve/config`: where the service is, and whether the extension can call it. */
export interface IHubserveConfig {
  service_url: string | null;
  public_url?: string | null;
  user: string | null;
  configured: boolean;
  reason: string | null;
  version: string;
}

/** `GET api/me`: the hub identity the server extension's token belongs to. */
export interface IHubUser {
  name: string;
  admin: boolean;
  groups: string[];
  scopes: string[];
}

/** One row of `GET api/models`. */
export interface IModelSummary {
  owner: string;
  name: string;
}

/** One version in `GET api/models/<owner>/<name>` (newest first). */
export interface IVersionSummary {
  owner: string;
  name: string;
  version: string;
  created_at: string;
  pushed_at: string;
  size: number;
  tags: string[];
}

/** `GET api/models/<owner>/<name>`. */
export interface IModelDetail {
  owner: string;
  name: string;
  versions: IVersionSummary[];
  /** Every tag, `latest` included, to its version. */
  tags: Record<string, string>;
}

/** What an API takes or returns (`IOSpec.to_json()` in model_runtime/kinds.py). */
export interface IIOSpec {
  kind: string;
  dtype?: string | null;
  shape?: number[] | null;
  columns?: string[] | null;
  extra?: Record<string, unknown>;
}

/** An API of a bundle's manifest. */
export interface IApiEntry {
  name: string;
  function?: string;
  input: IIOSpec;
  output: IIOSpec;
  batchable: boolean;
  batching?: { max_batch_size: number; max_latency_ms: number };
  signature?: string;
  doc?: string;
}

/** `bundle.json` (the fields the panel reads). */
export interface IBundleManifest {
  name: string;
  version: string;
  created_at: string;
  creator?: string;
  description?: string;
  labels?: Record<string, string>;
  framework?: string;
  apis: IApiEntry[];
}

/** `GET api/models/<owner>/<name>/versions/<version>`. */
export interface IVersionRecord {
  owner: string;
  name: string;
  version: string;
  pushed_at: string;
  pushed_by: string;
  archive_sha256: string;
  archive_size: number;
  manifest: IBundleManifest;
  tags: string[];
}

/** An API of a deployment (kinds only; the manifest has dtypes and shapes). */
export interface IApiInfo {
  name: string;
  path: string;
  input: string;
  output: string;
  batchable: boolean;
  doc: string;
}

/** Who besides the owner and admins may call a deployment. */
export interface IGrants {
  users: string[];
  groups: string[];
  public: boolean;
}

/** Batching settings that replace a bundle's for one API. */
export interface IBatchingOverride {
  max_batch_size?: number | null;
  max_latency_ms?: number | null;
}

export interface IReplicaStatus {
  id: string;
  version: string;
  generation: number;
  state: string;
  restarts: number;
  started_at: string;
  ready_at?: string | null;
  in_flight: number;
  last_error?: string | null;
}

/** Phases the backend reports. */
export type Phase =
  | 'preparing environment'
  | 'ready'
  | 'progressing'
  | 'degraded'
  | 'failed'
  | 'stopped';

/** The Python environment the newest version runs in. */
export interface IEnvironmentStatus {
  /** `runtime` (the service's own), `overlay` (extra packages) or `full` (separate). */
  kind: string;
  reason: string;
  key?: string | null;
  packages: Record<string, string>;
}

export interface IDeploymentStatus {
  desired: number;
  ready: number;
  updated: number;
  phase: Phase | string;
  message?: string | null;
  environment?: IEnvironmentStatus | null;
  replicas: IReplicaStatus[];
}

export interface IRevisionInfo {
  number: number;
  version: string;
  selector: string;
  created_by: string;
  created_at: string;
}

/** `GET api/deployments/<owner>/<name>` (and every item of the list). */
export interface IDeployment {
  owner: string;
  name: string;
  /** `owner/name` of the model. */
  model: string;
  version: string;
  selector: string;
  /** Where callers reach it: `.../services/hubserve/d/<owner>/<name>/`. */
  url: string;
  replicas: number;
  resources: { threads?: number | null; cpu?: string | null; memory?: string | null };
  batching: Record<string, IBatchingOverride>;
  access: IGrants;
  generation: number;
  created_by: string;
  created_at: string;
  updated_at: string;
  apis: IApiInfo[];
  revisions: IRevisionInfo[];
  status: IDeploymentStatus;
}

/** `POST api/deployments`. */
export interface IDeploymentCreate {
  /** `[owner/]name[:version-or-tag]`. */
  model: string;
  name?: string;
  replicas: number;
  batching?: Record<string, IBatchingOverride>;
  access?: IGrants;
}

/** `PATCH api/deployments/<owner>/<name>`. */
export interface IDeploymentPatch {
  replicas?: number;
  version?: string;
  rollback?: boolean;
  batching?: Record<string, IBatchingOverride>;
  access?: IGrants;
}

/** One replica's output in `GET api/deployments/<owner>/<name>/logs`. */
export interface ILogChunk {
  replica: string;
  lines: string[];
}

// -- errors -------------------------------------------------------------------------------

/** What went wrong, in the terms the panel explains it in. */
export type ErrorKind =
  | 'network' // the Jupyter server itself did not answer
  | 'not-configured' // the server extension has no service URL or token
  | 'unavailable' // the service (or its store) cannot be reached: 502, 503
  | 'timeout' // 504
  | 'unauthorized' // 401: the Jupyter login or the hub token is no longer valid
  | 'forbidden' // 403
  | 'not-found' // 404
  | 'conflict' // 409
  | 'invalid' // 400, 413, 415, 422 and form validation
  | 'server'; // anything else

const TITLES: Record<ErrorKind, string> = {
  network: 'The Jupyter server cannot be reached',
  'not-configured': 'Model Serving is not configured',
  unavailable: 'The hubserve service is unavailable',
  timeout: 'The hubserve service did not answer in time',
  unauthorized: 'Not logged in',
  forbidden: 'No permission',
  'not-found': 'Not found',
  conflict: 'Conflict',
  invalid: 'Invalid request',
  server: 'The hubserve service failed'
};

/** A failed call (or a refused form), with the service's message as `detail`. */
export class HubserveError extends Error {
  readonly kind: ErrorKind;
  /** HTTP status; `null` when no answer came. */
  readonly status: number | null;
  /** The service's (or the extension's) own message, meant for people. */
  readonly detail: string;

  constructor(kind: ErrorKind, detail: string, status: number | null = null) {
    super(`${TITLES[kind]}: ${detail}`);
    this.name = 'HubserveError';
    this.kind = kind;
    this.status = status;
    this.detail = detail;
  }

  /** A short heading for the error banner. */
  get title(): string {
    return TITLES[this.kind];
  }

  /** The kind of error an HTTP status stands for. */
  static kindOf(status: number): ErrorKind {
    if (status === 401) {
      return 'unauthorized';
    }
    if (status === 403) {
      return 'forbidden';
    }
    if (status === 404 || status === 405) {
      return 'not-found';
    }
    if (status === 409) {
      return 'conflict';
    }
    if (status === 502 || status === 503) {
      return 'unavailable';
    }
    if (status === 504) {
      return 'timeout';
    }
    if (status >= 400 && status < 500) {
      return 'invalid';
    }
    return 'server';
  }

  /** The error for a non-2xx answer: its status, and the `detail` of its JSON body. */
  static async fromResponse(response: Response): Promise<HubserveError> {
    let text = '';
    try {
      text = await response.text();
    } catch {
      // the body broke off: the status still says what happened
    }
    const detail = detailOf(text, response.headers.get('Content-Type') ?? '');
    const fallback = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
    return new HubserveError(HubserveError.kindOf(response.status), detail || fallback, response.status);
  }

  /** Anything thrown while calling, as a HubserveError. */
  static from(error: unknown): HubserveError {
    if (error instanceof HubserveError) {
      return error;
    }
    if (error instanceof ServerConnection.NetworkError) {
      return new HubserveError('network', `${error.message || 'the request failed'} (is the Jupyter server running?)`);
    }
    const message = error instanceof Error ? error.message : String(error);
    return new HubserveError('server', message || 'unexpected error');
  }
}

const MAX_DETAIL = 500;

/**
 * The message of an error body: FastAPI's `{"detail": "..."}` (or its list of validation
 * errors), the extension's `{"detail", "message"}`, the runtime's `{"error"}`; a short plain
 * text body as it is. HTML pages (a proxy's error page) give nothing: the status speaks.
 */
export function detailOf(text: string, contentType = ''): string {
  const body = text.trim();
  if (!body) {
    return '';
  }
  if (contentType.includes('json') || body.startsWith('{') || body.startsWith('[')) {
    try {
      const parsed: unknown = JSON.parse(body);
      const message = messageOf(parsed);
      if (message) {
        return clip(message);
      }
    } catch {
      // not JSON after all
    }
  }
  if (contentType.includes('html') || /^<(!doctype|html)/i.test(body)) {
    return '';
  }
  return clip(body);
}

function messageOf(value: unknown): string {
  if (typeof value === 'string') {
    return value;
  }
  if (Array.isArray(value)) {
    return value.map(messageOf).filter(Boolean).join('; ');
  }
  if (value && typeof value === 'object') {
    const record = value as Record<string, unknown>;
    for (const key of ['detail', 'message', 'error']) {
      if (record[key] !== undefined && record[key] !== null) {
        return messageOf(record[key]);
      }
    }
    if (typeof record.msg === 'string') {
      // one FastAPI validation error: {"loc": ["body", "replicas"], "msg": "..."}
      const loc = Array.isArray(record.loc)
        ? record.loc.filter(part => part !== 'body').join('.')
        : '';
      return loc ? `${loc}: ${record.msg}` : record.msg;
    }
  }
  return '';
}

function clip(text: string): string {
  return text.length > MAX_DETAIL ? `${text.slice(0, MAX_DETAIL - 1)}…` : text;
}

// -- the client ---------------------------------------------------------------------------

/** `owner/name` path segments, each percent-encoded. */
function segments(...parts: string[]): string {
  return parts.map(part => encodeURIComponent(part)).join('/');
}

/** The client of `{baseUrl}hubserve/`. */
export class HubserveClient {
  readonly serverSettings: ServerConnection.ISettings;

  constructor(serverSettings?: ServerConnection.ISettings) {
    this.serverSettings = serverSettings ?? ServerConnection.makeSettings();
  }

  /** `GET hubserve/config` */
  config(): Promise<IHubserveConfig> {
    return this.request<IHubserveConfig>('GET', 'config');
  }

  /** `GET api/me` */
  me(): Promise<IHubUser> {
    return this.request<IHubUser>('GET', 'api/me');
  }

  /** `GET api/models[?owner=]` */
  listModels(owner?: string): Promise<IModelSummary[]> {
    return this.request<IModelSummary[]>('GET', 'api/models', { query: { owner } });
  }

  /** `GET api/models/<owner>/<name>`: versions (newest first) and tags. */
  getModel(owner: string, name: string): Promise<IModelDetail> {
    return this.request<IModelDetail>('GET', `api/models/${segments(owner, name)}`);
  }

  /** `GET api/models/<owner>/<name>/versions/<version>`: the record with its manifest. */
  getVersion(owner: string, name: string, version: string): Promise<IVersionRecord> {
    return this.request<IVersionRecord>(
      'GET',
      `api/models/${segments(owner, name)}/versions/${segments(version)}`
    );
  }

  /** `GET api/deployments[?owner=]` */
  listDeployments(owner?: string): Promise<IDeployment[]> {
    return this.request<IDeployment[]>('GET', 'api/deployments', { query: { owner } });
  }

  /** `GET api/deployments/<owner>/<name>` */
  getDeployment(owner: string, name: string): Promise<IDeployment> {
    return this.request<IDeployment>('GET', `api/deployments/${segments(owner, name)}`);
  }

  /** `POST api/deployments` */
  createDeployment(body: IDeploymentCreate): Promise<IDeployment> {
    return this.request<IDeployment>('POST', 'api/deployments', { body });
  }

  /** `PATCH api/deployments/<owner>/<name>`: scale, roll, roll back, batching, access. */
  updateDeployment(owner: string, name: string, patch: IDeploymentPatch): Promise<IDeployment> {
    return this.request<IDeployment>('PATCH', `api/deployments/${segments(owner, name)}`, {
      body: patch
    });
  }

  /** `DELETE api/deployments/<owner>/<name>` */
  async deleteDeployment(owner: string, name: string): Promise<void> {
    await this.request<null>('DELETE', `api/deployments/${segments(owner, name)}`);
  }

  /** `GET api/deployments/<owner>/<name>/logs?tail=` */
  logs(owner: string, name: string, tail = 200): Promise<ILogChunk[]> {
    return this.request<ILogChunk[]>('GET', `api/deployments/${segments(owner, name)}/logs`, {
      query: { tail: String(tail) }
    });
  }

  /** The URL of a path under `{baseUrl}hubserve/`. */
  url(path: string, query?: Record<string, string | undefined>): string {
    let url = URLExt.join(this.serverSettings.baseUrl, 'hubserve', path);
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) {
        params.append(key, value);
      }
    }
    const search = params.toString();
    if (search) {
      url += `?${search}`;
    }
    return url;
  }

  private async request<T>(
    method: string,
    path: string,
    options: { query?: Record<string, string | undefined>; body?: unknown } = {}
  ): Promise<T> {
    const init: RequestInit = { method };
    if (options.body !== undefined) {
      init.body = JSON.stringify(options.body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(
        this.url(path, options.query),
        init,
        this.serverSettings
      );
    } catch (error) {
      throw HubserveError.from(error);
    }
    if (!response.ok) {
      throw await HubserveError.fromResponse(response);
    }
    if (response.status === 204) {
      return null as T;
    }
    let text: string;
    try {
      text = await response.text();
    } catch (error) {
      throw new HubserveError(
        'network',
        `the answer to ${method} hubserve/${path} broke off (${String(error)})`,
        response.status
      );
    }
    if (!text) {
      return null as T;
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new HubserveError(
        'server',
        `the answer to ${method} hubserve/${path} is not JSON (HTTP ${response.status})`,
        response.status
      );
    }
  }
}
