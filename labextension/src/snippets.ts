/**
 * Copy-and-paste code calling a deployment: curl, Python (`hubserve.Client`) and the Open
 * Inference Protocol v2 (curl against `v2/models/<api>/infer`).
 *
 * Snippets must work as pasted and never carry a secret: the token comes from
 * `$JUPYTERHUB_API_TOKEN` (set in every JupyterHub single-user server; anyone else gets a
 * token at `<hub>/hub/token`). The request body is an example derived from the API's input
 * spec (dtype and shape from the version's manifest when known), so a pasted snippet gets a
 * real answer, or a precise 422 saying what the API wants. Same rules as the ipywidgets
 * panel's snippets (jupyter_extension/widgets/_snippets.py).
 */

import type { IApiEntry, IApiInfo, IDeployment, IIOSpec } from './api';

export const TOKEN_ENV = 'JUPYTERHUB_API_TOKEN';
/** Example arrays never get bigger than this many numbers. */
const MAX_EXAMPLE_ITEMS = 64;

const ARRAY_KINDS = new Set(['ndarray', 'tensor']);

/** A JSON number that is printed with a decimal point (`0.0`), as a float example. */
export class Float {
  constructor(readonly value: number) {}
}

/** An example value: JSON, with `Float`s where the API wants floating point numbers. */
export type Example =
  | null
  | boolean
  | number
  | string
  | Float
  | Example[]
  | { [key: string]: Example };

/** A small valid-looking input for an API's input spec. */
export function exampleInput(spec: IIOSpec): Example {
  const kind = spec.kind || 'json';
  if (ARRAY_KINDS.has(kind)) {
    return exampleArray(spec.dtype ?? null, spec.shape ?? null);
  }
  if (kind === 'dataframe') {
    const columns = spec.columns && spec.columns.length ? spec.columns : ['x'];
    const row: { [key: string]: Example } = {};
    for (const column of columns) {
      row[column] = 0;
    }
    return [row];
  }
  if (kind === 'text') {
    return 'hello';
  }
  if (kind === 'path') {
    return { input: '/path/to/inputs', output: '/path/to/outputs' };
  }
  return [];
}

/** Nested lists of zeros in the API's shape (`-1` dimensions become 1). */
export function exampleArray(dtype: string | null, shape: number[] | null): Example {
  let value: Example;
  if (dtype && dtype.startsWith('bool')) {
    value = false;
  } else if (dtype && (dtype.startsWith('int') || dtype.startsWith('uint'))) {
    value = 0;
  } else {
    value = new Float(0);
  }
  let dims = (shape && shape.length ? shape : [-1, 1]).map(d =>
    Number.isInteger(d) && d > 0 ? d : 1
  );
  if (dims.reduce((a, b) => a * b, 1) > MAX_EXAMPLE_ITEMS) {
    // an image-sized input: show the structure, not 50k zeros
    dims = dims.map(() => 1);
  }
  const nested = (rest: number[]): Example =>
    rest.length ? Array.from({ length: rest[0] }, () => nested(rest.slice(1))) : value;
  return nested(dims);
}

/** The example's shape (nested list lengths). */
export function shapeOf(value: Example): number[] {
  const shape: number[] = [];
  let current: Example = value;
  while (Array.isArray(current)) {
    shape.push(current.length);
    current = current.length ? current[0] : null;
  }
  return shape;
}

function flatten(value: Example): Example[] {
  return Array.isArray(value) ? value.flatMap(flatten) : [value];
}

function formatNumber(value: number, float: boolean): string {
  if (!Number.isFinite(value)) {
    return 'null';
  }
  const text = String(value);
  return float && Number.isInteger(value) ? `${text}.0` : text;
}

/** JSON as Python's `json.dumps` writes it (`", "` and `": "` separators, `0.0` floats). */
export function toJson(value: Example): string {
  if (value instanceof Float) {
    return formatNumber(value.value, true);
  }
  if (value === null) {
    return 'null';
  }
  if (typeof value === 'number') {
    return formatNumber(value, false);
  }
  if (typeof value === 'boolean' || typeof value === 'string') {
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(toJson).join(', ')}]`;
  }
  return `{${Object.entries(value)
    .map(([key, item]) => `${JSON.stringify(key)}: ${toJson(item)}`)
    .join(', ')}}`;
}

/** A Python literal for the example (`True`, `None`, `'text'`). */
export function toPython(value: Example): string {
  if (value instanceof Float) {
    return formatNumber(value.value, true);
  }
  if (value === null) {
    return 'None';
  }
  if (typeof value === 'boolean') {
    return value ? 'True' : 'False';
  }
  if (typeof value === 'number') {
    return formatNumber(value, false);
  }
  if (typeof value === 'string') {
    return pythonString(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(toPython).join(', ')}]`;
  }
  return `{${Object.entries(value)
    .map(([key, item]) => `${pythonString(key)}: ${toPython(item)}`)
    .join(', ')}}`;
}

/** A Python string literal (single quotes, like `repr`). */
export function pythonString(text: string): string {
  const escaped = text
    .replace(/\\/g, '\\\\')
    .replace(/'/g, "\\'")
    .replace(/\n/g, '\\n')
    .replace(/\r/g, '\\r')
    .replace(/\t/g, '\\t');
  return `'${escaped}'`;
}

/** Quote for a POSIX shell, as Python's `shlex.quote`. */
export function shellQuote(text: string): string {
  if (text === '') {
    return "''";
  }
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(text)) {
    return text;
  }
  return `'${text.replace(/'/g, `'"'"'`)}'`;
}

/** The OIP datatype of a numpy dtype name. */
export function oipDatatype(dtype: string | null | undefined): string {
  const table: Record<string, string> = {
    bool: 'BOOL',
    uint8: 'UINT8',
    uint16: 'UINT16',
    uint32: 'UINT32',
    uint64: 'UINT64',
    int8: 'INT8',
    int16: 'INT16',
    int32: 'INT32',
    int64: 'INT64',
    float16: 'FP16',
    float32: 'FP32',
    float64: 'FP64'
  };
  if (!dtype) {
    return 'FP32';
  }
  return table[dtype] ?? 'BYTES';
}

/** The snippets of one API of a deployment. */
export interface ISnippets {
  /** The API the snippets call. */
  api: string;
  /** The URL the curl snippet posts to. */
  url: string;
  curl: string;
  python: string;
  oip: string;
}

/** An API of a deployment: from the manifest when known, else from the deployment. */
export interface ISnippetApi {
  name: string;
  input: IIOSpec;
}

/** The APIs of a deployment, with dtypes and shapes where the manifest gives them. */
export function snippetApis(
  deployment: Pick<IDeployment, 'apis'>,
  manifestApis?: IApiEntry[] | null
): ISnippetApi[] {
  if (manifestApis && manifestApis.length) {
    return manifestApis.map(api => ({ name: api.name, input: api.input }));
  }
  return deployment.apis.map((api: IApiInfo) => ({ name: api.name, input: { kind: api.input } }));
}

/** `https://hub/services/hubserve/d/alice/iris/` → `https://hub/services/hubserve/`. */
export function serviceUrlOf(deploymentUrl: string, owner: string, name: string): string | null {
  const suffix = `d/${owner}/${name}/`;
  const url = deploymentUrl.endsWith('/') ? deploymentUrl : `${deploymentUrl}/`;
  if (url.endsWith(suffix)) {
    return url.slice(0, url.length - suffix.length);
  }
  const encoded = `d/${encodeURIComponent(owner)}/${encodeURIComponent(name)}/`;
  return url.endsWith(encoded) ? url.slice(0, url.length - encoded.length) : null;
}

/**
 * An absolute URL for `url`: the service gives deployment URLs as paths
 * (`/services/hubserve/d/alice/iris/`) when it does not know its public origin; they are
 * then taken relative to `base` (the service's public URL from `hubserve/config`, or the
 * page's origin, which is the hub's in JupyterHub).
 */
export function absoluteUrl(url: string, base: string | null | undefined): string {
  if (/^https?:\/\//i.test(url) || !base) {
    return url;
  }
  try {
    return new URL(url, base).href;
  } catch {
    return url;
  }
}

/** The endpoint of a deployment, ending in `/` (absolute when `base` is given). */
export function endpointOf(deployment: Pick<IDeployment, 'url'>, base?: string | null): string {
  const url = absoluteUrl(deployment.url, base);
  return url.endsWith('/') ? url : `${url}/`;
}

const AUTH = `-H "Authorization: token $${TOKEN_ENV}"`;

/** curl calling `api` of the deployment at `endpoint`. */
export function curlSnippet(endpoint: string, api: ISnippetApi): { url: string; code: string } {
  const kind = api.input.kind || 'json';
  const url = kind === 'path' ? `${endpoint}jobs/${api.name}` : `${endpoint}${api.name}`;
  const example = exampleInput(api.input);
  let body: string;
  if (kind === 'image' || kind === 'file') {
    body = `-F ${shellQuote(`file=@${kind === 'image' ? 'image.png' : 'input.bin'}`)}`;
  } else if (kind === 'text') {
    body = `-H 'Content-Type: text/plain' --data-binary ${shellQuote(String(example))}`;
  } else {
    body = `-H 'Content-Type: application/json' -d ${shellQuote(toJson(example))}`;
  }
  return { url, code: `curl ${AUTH} \\\n     ${body} \\\n     ${shellQuote(url)}` };
}

/** Python with `hubserve.Client` calling `api` of the deployment `owner/name`. */
export function pythonSnippet(
  serviceUrl: string | null,
  deployment: { owner: string; name: string },
  api: ISnippetApi
): string {
  const kind = api.input.kind || 'json';
  const ref = pythonString(`${deployment.owner}/${deployment.name}`);
  const lines = ['import hubserve'];
  let call: string;
  const example = exampleInput(api.input);
  if (ARRAY_KINDS.has(kind)) {
    lines[0] = 'import numpy as np';
    lines.push('', 'import hubserve');
    const dtype = api.input.dtype ? `, dtype=${pythonString(api.input.dtype)}` : '';
    call = `x = np.array(${toPython(example)}${dtype})\nresult = client.predict(${ref}, ${pythonString(api.name)}, x)`;
  } else if (kind === 'image' || kind === 'file') {
    lines.unshift('from pathlib import Path', '');
    const file = kind === 'image' ? 'image.png' : 'input.bin';
    call = `result = client.predict(${ref}, ${pythonString(api.name)}, Path(${pythonString(file)}))`;
  } else if (kind === 'path') {
    const job = example as { input: string; output: string };
    call =
      `job = client.submit_job(${ref}, ${pythonString(api.name)}, ` +
      `input=${pythonString(job.input)}, output=${pythonString(job.output)})\n` +
      `result = client.wait_job(${ref}, job)`;
  } else {
    call = `result = client.predict(${ref}, ${pythonString(api.name)}, ${toPython(example)})`;
  }
  const client = serviceUrl
    ? `client = hubserve.Client(${pythonString(serviceUrl)})  # token: $${TOKEN_ENV}`
    : `client = hubserve.Client()  # $HUBSERVE_URL and $${TOKEN_ENV}`;
  return [...lines, '', client, call, 'print(result)', ''].join('\n');
}

/** curl calling `api` through the Open Inference Protocol v2 (array APIs only). */
export function oipSnippet(endpoint: string, api: ISnippetApi | null): string {
  if (!api) {
    return (
      '# The Open Inference Protocol (v2) serves the APIs that take an array\n' +
      '# (ndarray or tensor); this deployment has none.'
    );
  }
  const example = exampleInput(api.input);
  const request = {
    inputs: [
      {
        name: 'input',
        shape: shapeOf(example),
        datatype: oipDatatype(api.input.dtype),
        data: flatten(example)
      }
    ]
  };
  const url = `${endpoint}v2/models/${api.name}/infer`;
  return `curl ${AUTH} \\\n     -H 'Content-Type: application/json' -d ${shellQuote(toJson(request))} \\\n     ${shellQuote(url)}`;
}

/**
 * Every snippet for a deployment: its first API, or `apiName` (and the first array API for
 * OIP). `base` resolves a deployment URL that the service gave as a path.
 */
export function makeSnippets(
  deployment: Pick<IDeployment, 'owner' | 'name' | 'url' | 'apis'>,
  manifestApis?: IApiEntry[] | null,
  apiName?: string,
  base?: string | null
): ISnippets | null {
  const apis = snippetApis(deployment, manifestApis);
  if (!apis.length) {
    return null;
  }
  const api = apis.find(a => a.name === apiName) ?? apis[0];
  const endpoint = endpointOf(deployment, base);
  const curl = curlSnippet(endpoint, api);
  const arrayApi = ARRAY_KINDS.has(api.input.kind)
    ? api
    : (apis.find(a => ARRAY_KINDS.has(a.input.kind)) ?? null);
  return {
    api: api.name,
    url: curl.url,
    curl: curl.code,
    python: pythonSnippet(
      serviceUrlOf(endpoint, deployment.owner, deployment.name),
      deployment,
      api
    ),
    oip: oipSnippet(endpoint, arrayApi)
  };
}
