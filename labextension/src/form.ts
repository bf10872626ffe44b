/**
 * The deploy form's rules, apart from its view: parse and check what the user typed, and
 * build the `POST api/deployments` body. The service checks everything again (and knows
 * the limits, e.g. the most replicas); checking here gives the message next to the field.
 */

import type { IDeploymentCreate, IGrants, IModelDetail } from './api';

/** Model names, as model_runtime/naming.py has them. */
export const MODEL_NAME_RE = /^[a-z0-9](?:[a-z0-9_.-]{0,61}[a-z0-9])?$/;
/** Most numbers of a batch and longest wait, as the runtime's BatchingOverride allows. */
export const MAX_BATCH_SIZE = 65536;
export const MAX_LATENCY_MS = 60000;

/** What the form's fields hold, as typed. */
export interface IDeployFormValues {
  /** `owner/name:version` */
  model: string;
  name: string;
  replicas: string;
  maxBatchSize: string;
  maxLatency: string;
  /** comma-separated hub user names */
  users: string;
  /** comma-separated hub group names */
  groups: string;
  public: boolean;
}

export type DeployFormErrors = Partial<Record<keyof IDeployFormValues, string>>;

export interface IDeployFormResult {
  /** The request to send, when every field is fine. */
  request: IDeploymentCreate | null;
  errors: DeployFormErrors;
}

/** A model version reference. */
export interface IModelRef {
  owner: string;
  name: string;
  version: string;
}

/** `owner/name:version` */
export function formatRef(ref: IModelRef): string {
  return `${ref.owner}/${ref.name}:${ref.version}`;
}

/** `owner/name:version` → its parts, or `null`. */
export function parseRef(text: string): IModelRef | null {
  const match = /^([^/\s:]+)\/([^/\s:]+):([^/\s:]+)$/.exec(text.trim());
  return match ? { owner: match[1], name: match[2], version: match[3] } : null;
}

/** Empty values for a version (the deployment is named after the model by default). */
export function initialValues(ref: IModelRef | null): IDeployFormValues {
  return {
    model: ref ? formatRef(ref) : '',
    name: ref ? ref.name : '',
    replicas: '1',
    maxBatchSize: '',
    maxLatency: '',
    users: '',
    groups: '',
    public: false
  };
}

/** `"a, b,,c "` → `["a", "b", "c"]` (duplicates dropped). */
export function parseNames(text: string): string[] {
  const names = text
    .split(',')
    .map(part => part.trim())
    .filter(part => part.length > 0);
  return Array.from(new Set(names));
}

/** Why `name` is no hub user or group name, or `null`. */
export function nameProblem(name: string): string | null {
  if (name.length > 255) {
    return `${name.slice(0, 20)}…: too long`;
  }
  if (/[\s/\\]/.test(name)) {
    return `${JSON.stringify(name)} is not a hub user or group name (no spaces or slashes)`;
  }
  return null;
}

/** A whole number in `[min, max]`, or the reason it is not. */
export function parseInteger(
  text: string,
  what: string,
  min: number,
  max = Number.MAX_SAFE_INTEGER
): number | string {
  const trimmed = text.trim();
  if (!/^\d+$/.test(trimmed)) {
    return `${what} must be a whole number`;
  }
  const value = Number(trimmed);
  if (value < min || value > max) {
    return max === Number.MAX_SAFE_INTEGER
      ? `${what} must be at least ${min}`
      : `${what} must be between ${min} and ${max}`;
  }
  return value;
}

/** Replicas for scaling (0 stops every replica but keeps the deployment). */
export function parseReplicas(text: string): number | string {
  return parseInteger(text, 'replicas', 0);
}

/**
 * Check the form; the request when everything is fine.
 *
 * `batchableApis` are the names of the version's batchable APIs (from its manifest): the
 * batching fields apply to each of them; they are refused for a version without any.
 */
export function validateDeployForm(
  values: IDeployFormValues,
  batchableApis: string[]
): IDeployFormResult {
  const errors: DeployFormErrors = {};
  const ref = parseRef(values.model);
  if (!ref) {
    errors.model = values.model ? 'choose a model version (owner/name:version)' : 'choose a model version';
  }
  const name = values.name.trim();
  if (name && !MODEL_NAME_RE.test(name)) {
    errors.name =
      'use 1-63 lower-case letters, digits, "-", "_" or ".", starting and ending with a letter or digit';
  }
  const replicas = parseReplicas(values.replicas);
  if (typeof replicas === 'string') {
    errors.replicas = replicas;
  }
  const override: { max_batch_size?: number; max_latency_ms?: number } = {};
  if (values.maxBatchSize.trim()) {
    const size = parseInteger(values.maxBatchSize, 'max batch size', 1, MAX_BATCH_SIZE);
    if (typeof size === 'string') {
      errors.maxBatchSize = size;
    } else {
      override.max_batch_size = size;
    }
  }
  if (values.maxLatency.trim()) {
    const latency = Number(values.maxLatency.trim());
    if (!Number.isFinite(latency) || latency < 0 || latency > MAX_LATENCY_MS) {
      errors.maxLatency = `max latency must be a number of milliseconds between 0 and ${MAX_LATENCY_MS}`;
    } else {
      override.max_latency_ms = latency;
    }
  }
  if (Object.keys(override).length && !batchableApis.length) {
    const message = 'this version has no batchable API';
    if (override.max_batch_size !== undefined) {
      errors.maxBatchSize = message;
    }
    if (override.max_latency_ms !== undefined) {
      errors.maxLatency = message;
    }
  }
  const users = parseNames(values.users);
  const groups = parseNames(values.groups);
  const badUser = users.map(nameProblem).find(Boolean);
  if (badUser) {
    errors.users = badUser;
  }
  const badGroup = groups.map(nameProblem).find(Boolean);
  if (badGroup) {
    errors.groups = badGroup;
  }
  if (Object.keys(errors).length || !ref || typeof replicas === 'string') {
    return { request: null, errors };
  }
  const access: IGrants = { users, groups, public: values.public };
  const request: IDeploymentCreate = { model: formatRef(ref), replicas, access };
  if (name) {
    request.name = name;
  }
  if (Object.keys(override).length) {
    request.batching = Object.fromEntries(batchableApis.map(api => [api, { ...override }]));
  }
  return { request, errors };
}

/** A file name as a model name: `My Model.ipynb` → `my-model`. */
export function modelNameOf(path: string): string {
  const base = path.split('/').pop() ?? '';
  const stem = base.replace(/\.[^.]*$/, '');
  return stem
    .toLowerCase()
    .replace(/[^a-z0-9_.-]+/g, '-')
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '');
}

/**
 * The newest version of the model named like the notebook at `path` (`iris.ipynb` →
 * model `iris`), preferring the user's own models; `null` when none matches.
 */
export function pickVersionForNotebook(
  models: IModelDetail[],
  path: string,
  me?: string | null
): IModelRef | null {
  const base = (path.split('/').pop() ?? '').replace(/\.[^.]*$/, '');
  const normalized = modelNameOf(path);
  if (!base) {
    return null;
  }
  const withVersions = models.filter(model => model.versions.length > 0);
  const byPreference = [
    ...withVersions.filter(model => model.owner === me),
    ...withVersions.filter(model => model.owner !== me)
  ];
  const found =
    byPreference.find(model => model.name === base) ??
    byPreference.find(model => model.name === normalized);
  if (!found) {
    return null;
  }
  // versions come newest first from the service; sort anyway (versions sort by time)
  const newest = [...found.versions].sort((a, b) => (a.version < b.version ? 1 : -1))[0];
  return { owner: found.owner, name: found.name, version: newest.version };
}
