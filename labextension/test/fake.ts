/**
 * A fake Jupyter server at the fetch boundary: the tests replace only the `fetch` that the
 * JupyterLab ServerConnection settings call; everything above it (ServerConnection,
 * HubserveClient, HubserveModel) is the real code.
 */

import { ServerConnection } from '@jupyterlab/services';

export const BASE_URL = 'http://localhost:8888/user/alice/';

export interface IRecordedRequest {
  method: string;
  /** The path after `{baseUrl}hubserve/`, e.g. `api/models/alice/iris`. */
  path: string;
  query: URLSearchParams;
  headers: Headers;
  body: unknown;
}

export type Handler = (request: IRecordedRequest) => Response | Promise<Response>;

export function json(body: unknown, status = 200, statusText = ''): Response {
  return new Response(status === 204 ? null : JSON.stringify(body), {
    status,
    statusText,
    headers: { 'Content-Type': 'application/json' }
  });
}

/** Settings whose fetch calls `handler`; `requests` records every call. */
export function fakeServer(handler: Handler): {
  settings: ServerConnection.ISettings;
  requests: IRecordedRequest[];
} {
  const requests: IRecordedRequest[] = [];
  const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : new Request(String(input), init);
    const url = new URL(request.url);
    const prefix = new URL(BASE_URL).pathname + 'hubserve/';
    if (!url.pathname.startsWith(prefix)) {
      throw new Error(`unexpected URL ${request.url}`);
    }
    const text = await request.text();
    const recorded: IRecordedRequest = {
      method: request.method,
      path: url.pathname.slice(prefix.length),
      query: url.searchParams,
      headers: request.headers,
      body: text ? JSON.parse(text) : undefined
    };
    requests.push(recorded);
    return handler(recorded);
  };
  const settings = ServerConnection.makeSettings({
    baseUrl: BASE_URL,
    wsUrl: 'ws://localhost:8888/user/alice/',
    token: 'jupyter-server-token',
    fetch: fetch as typeof globalThis.fetch,
    Request,
    Headers
  });
  return { settings, requests };
}
