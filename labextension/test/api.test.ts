import { describe, expect, test } from 'vitest';

import { HubserveClient, HubserveError, detailOf } from '../src/api';
import { BASE_URL, fakeServer, json } from './fake';
import { CONFIG, deployment, modelDetail } from './fixtures';

describe('HubserveClient requests', () => {
  test('calls the server extension under {baseUrl}hubserve/ with the Jupyter token', async () => {
    const { settings, requests } = fakeServer(() => json(CONFIG));
    const config = await new HubserveClient(settings).config();
    expect(config).toEqual(CONFIG);
    expect(requests).toHaveLength(1);
    expect(requests[0].method).toBe('GET');
    expect(requests[0].path).toBe('config');
    // ServerConnection.makeRequest adds the Jupyter server's token (never a hub token)
    expect(requests[0].headers.get('Authorization')).toBe('token jupyter-server-token');
  });

  test('encodes path segments and queries', async () => {
    const { settings, requests } = fakeServer(() => json(modelDetail('a+b@x.org', 'iris')));
    const client = new HubserveClient(settings);
    await client.getModel('a+b@x.org', 'iris');
    await client.getVersion('a+b@x.org', 'iris', 'v/1');
    expect(requests[0].path).toBe('api/models/a%2Bb%40x.org/iris');
    expect(requests[1].path).toBe('api/models/a%2Bb%40x.org/iris/versions/v%2F1');
    await client.listModels('a+b@x.org');
    expect(requests[2].path).toBe('api/models');
    expect(requests[2].query.get('owner')).toBe('a+b@x.org');
    await client.listDeployments();
    expect(requests[3].query.has('owner')).toBe(false);
    await client.logs('alice', 'iris', 50);
    expect(requests[4].path).toBe('api/deployments/alice/iris/logs');
    expect(requests[4].query.get('tail')).toBe('50');
    expect(client.url('api/me')).toBe(`${BASE_URL}hubserve/api/me`);
  });

  test('sends JSON bodies for create and patch; DELETE answers 204', async () => {
    const { settings, requests } = fakeServer(request =>
      request.method === 'DELETE' ? json(null, 204) : json(deployment())
    );
    const client = new HubserveClient(settings);
    const body = { model: 'alice/iris:latest', replicas: 2 };
    expect((await client.createDeployment(body)).name).toBe('iris');
    await client.updateDeployment('alice', 'iris', { replicas: 3 });
    await expect(client.deleteDeployment('alice', 'iris')).resolves.toBeUndefined();
    expect(requests.map(r => [r.method, r.path])).toEqual([
      ['POST', 'api/deployments'],
      ['PATCH', 'api/deployments/alice/iris'],
      ['DELETE', 'api/deployments/alice/iris']
    ]);
    expect(requests[0].body).toEqual(body);
    expect(requests[0].headers.get('Content-Type')).toBe('application/json');
    expect(requests[1].body).toEqual({ replicas: 3 });
  });
});

describe('error mapping', () => {
  async function failure(response: Response | Error): Promise<HubserveError> {
    const { settings } = fakeServer(() => {
      if (response instanceof Error) {
        throw response;
      }
      return response;
    });
    try {
      await new HubserveClient(settings).listDeployments();
    } catch (error) {
      expect(error).toBeInstanceOf(HubserveError);
      return error as HubserveError;
    }
    throw new Error('the call did not fail');
  }

  test('service down (503 from the extension) keeps its detail', async () => {
    const detail =
      'the hubserve service at http://127.0.0.1:10101/services/hubserve/ cannot be reached (All connection attempts failed): is it running?';
    const error = await failure(json({ detail, message: detail }, 503));
    expect(error.kind).toBe('unavailable');
    expect(error.status).toBe(503);
    expect(error.detail).toBe(detail);
    expect(error.message).toContain(detail);
    expect(error.title).toBe('The hubserve service is unavailable');
  });

  test('no permission (403) and unknown (404)', async () => {
    const forbidden = await failure(json({ detail: 'the token lacks access:services' }, 403));
    expect(forbidden.kind).toBe('forbidden');
    expect(forbidden.detail).toBe('the token lacks access:services');
    const missing = await failure(json({ detail: 'deployment alice/x not found' }, 404));
    expect(missing.kind).toBe('not-found');
  });

  test('validation errors (422 lists) become one line', async () => {
    const error = await failure(
      json(
        {
          detail: [
            { loc: ['body', 'replicas'], msg: 'Input should be greater than or equal to 0', type: 'x' },
            { loc: ['body', 'name'], msg: 'invalid model name', type: 'y' }
          ]
        },
        422
      )
    );
    expect(error.kind).toBe('invalid');
    expect(error.detail).toBe(
      'replicas: Input should be greater than or equal to 0; name: invalid model name'
    );
  });

  test('an HTML error page gives the status line', async () => {
    const page = new Response('<html><body>Bad gateway</body></html>', {
      status: 502,
      statusText: 'Bad Gateway',
      headers: { 'Content-Type': 'text/html' }
    });
    const error = await failure(page);
    expect(error.kind).toBe('unavailable');
    expect(error.detail).toBe('HTTP 502 Bad Gateway');
  });

  test('timeouts, conflicts and other statuses', async () => {
    expect((await failure(json({ detail: 'slow' }, 504))).kind).toBe('timeout');
    expect((await failure(json({ detail: 'exists' }, 409))).kind).toBe('conflict');
    expect((await failure(json({ detail: 'login' }, 401))).kind).toBe('unauthorized');
    expect((await failure(json({ detail: 'boom' }, 500))).kind).toBe('server');
    expect((await failure(json({ error: 'runtime says no' }, 400))).detail).toBe('runtime says no');
  });

  test('the Jupyter server not answering is a network error', async () => {
    const error = await failure(new TypeError('Failed to fetch'));
    expect(error.kind).toBe('network');
    expect(error.status).toBeNull();
    expect(error.detail).toContain('Failed to fetch');
  });

  test('a 200 answer that is not JSON is an error, not a crash', async () => {
    const error = await failure(new Response('<html>login</html>', { status: 200 }));
    expect(error.kind).toBe('server');
    expect(error.detail).toContain('not JSON');
  });

  test('detailOf', () => {
    expect(detailOf('')).toBe('');
    expect(detailOf('plain words', 'text/plain')).toBe('plain words');
    expect(detailOf('{"message": "from Lab"}')).toBe('from Lab');
    expect(detailOf('<!DOCTYPE html><p>x</p>')).toBe('');
    expect(detailOf('x'.repeat(2000)).length).toBe(500);
  });
});
