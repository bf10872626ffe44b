import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';

import { HubserveClient, type IDeployment, type IModelDetail } from '../src/api';
import { HubserveModel, keyOf } from '../src/model';
import { type IRecordedRequest, fakeServer, json } from './fake';
import { CONFIG, ME, V1, V2, deployment, modelDetail, versionRecord } from './fixtures';

/** A fake hub service behind the fake Jupyter server: mutable state, real JSON shapes. */
class FakeService {
  config = { ...CONFIG };
  down = false;
  models: IModelDetail[] = [modelDetail()];
  deployments: IDeployment[] = [deployment()];
  failNext: { status: number; detail: string } | null = null;

  handle = (request: IRecordedRequest): Response => {
    const { method, path } = request;
    if (path === 'config') {
      return json(this.config);
    }
    if (this.down) {
      return json({ detail: 'the hubserve service at http://hub:8081/services/hubserve/ cannot be reached' }, 503);
    }
    if (this.failNext) {
      const { status, detail } = this.failNext;
      this.failNext = null;
      return json({ detail }, status);
    }
    const parts = path.split('/').map(decodeURIComponent);
    if (path === 'api/me') {
      return json(ME);
    }
    if (path === 'api/models') {
      return json(this.models.map(m => ({ owner: m.owner, name: m.name })));
    }
    if (parts[1] === 'models' && parts.length === 4) {
      const found = this.models.find(m => m.owner === parts[2] && m.name === parts[3]);
      return found ? json(found) : json({ detail: 'model not found' }, 404);
    }
    if (parts[1] === 'models' && parts[4] === 'versions') {
      return json(versionRecord(parts[5]));
    }
    if (path === 'api/deployments' && method === 'GET') {
      return json(this.deployments);
    }
    if (path === 'api/deployments' && method === 'POST') {
      const body = request.body as { model: string; name?: string; replicas: number };
      const name = body.name ?? 'iris';
      if (this.deployments.some(d => d.name === name)) {
        return json({ detail: `deployment alice/${name} already exists` }, 409);
      }
      const created = deployment({ name, replicas: body.replicas, url: `https://hub/d/alice/${name}/` });
      this.deployments.push(created);
      return json(created, 201);
    }
    if (parts[1] === 'deployments' && parts.length === 4) {
      const index = this.deployments.findIndex(d => d.owner === parts[2] && d.name === parts[3]);
      if (index < 0) {
        return json({ detail: `deployment ${parts[2]}/${parts[3]} not found` }, 404);
      }
      if (method === 'DELETE') {
        this.deployments.splice(index, 1);
        return json(null, 204);
      }
      const patch = request.body as { replicas?: number; version?: string; rollback?: boolean };
      const current = this.deployments[index];
      const updated = {
        ...current,
        replicas: patch.replicas ?? current.replicas,
        version: patch.rollback ? V1 : (patch.version ?? current.version)
      };
      this.deployments[index] = updated;
      return json(updated);
    }
    if (parts[1] === 'deployments' && parts[4] === 'logs') {
      return json([{ replica: 'r1', lines: ['ready'] }]);
    }
    return json({ detail: `unexpected ${method} ${path}` }, 404);
  };
}

function setup(options: { interval?: number; modelsEvery?: number; visible?: () => boolean } = {}) {
  const service = new FakeService();
  const { settings, requests } = fakeServer(service.handle);
  const model = new HubserveModel({
    client: new HubserveClient(settings),
    interval: options.interval ?? 3000,
    modelsEvery: options.modelsEvery,
    isPageVisible: options.visible
  });
  return { service, requests, model };
}

describe('loading', () => {
  test('refresh loads config, me, my models with versions, my deployments', async () => {
    const { model, requests } = setup();
    const statuses: string[] = [];
    model.changed.connect((_, state) => statuses.push(state.status));
    await model.refresh();
    const state = model.state;
    expect(statuses[0]).toBe('loading');
    expect(state.status).toBe('ready');
    expect(state.loadError).toBeNull();
    expect(state.me?.name).toBe('alice');
    expect(state.models?.map(m => m.key)).toEqual(['alice/iris']);
    expect(state.models?.[0].detail?.versions.map(v => v.version)).toEqual([V2, V1]);
    expect(state.deployments?.map(keyOf)).toEqual(['alice/iris']);
    expect(state.selected).toBe('alice/iris'); // the first deployment is expanded
    const paths = requests.map(r => r.path);
    expect(paths).toEqual(
      expect.arrayContaining(['config', 'api/me', 'api/models', 'api/models/alice/iris', 'api/deployments'])
    );
    // only my own models and deployments
    expect(requests.find(r => r.path === 'api/deployments')?.query.get('owner')).toBe('alice');
    expect(requests.find(r => r.path === 'api/models')?.query.get('owner')).toBe('alice');
  });

  test('not configured: the reason, and no call to the service', async () => {
    const { model, service, requests } = setup();
    service.config = {
      ...CONFIG,
      configured: false,
      reason: 'the hubserve extension is not configured: set $HUBSERVE_URL'
    };
    await model.refresh();
    expect(model.state.loadError?.kind).toBe('not-configured');
    expect(model.state.loadError?.detail).toBe('the hubserve extension is not configured: set $HUBSERVE_URL');
    expect(requests.map(r => r.path)).toEqual(['config']);
    expect(model.state.status).toBe('ready');
  });

  test('service down: a load error; the data shown before stays; recovery clears it', async () => {
    const { model, service } = setup();
    await model.refresh();
    service.down = true;
    await model.refresh();
    expect(model.state.loadError?.kind).toBe('unavailable');
    expect(model.state.loadError?.detail).toContain('cannot be reached');
    expect(model.state.deployments).toHaveLength(1);
    service.down = false;
    await model.refresh();
    expect(model.state.loadError).toBeNull();
  });

  test('first load failing still ends the loading state', async () => {
    const { model, service } = setup();
    service.down = true;
    await model.refresh();
    expect(model.state.status).toBe('ready');
    expect(model.state.deployments).toBeNull();
    expect(model.state.loadError?.title).toBe('The hubserve service is unavailable');
  });

  test('concurrent refreshes share one load', async () => {
    const { model, requests } = setup();
    await Promise.all([model.refresh(), model.refresh(), model.refresh({ models: false })]);
    expect(requests.filter(r => r.path === 'api/deployments')).toHaveLength(1);
  });

  test('a model that fails to load shows its own error', async () => {
    const { model, service } = setup();
    service.models.push({ ...modelDetail('alice', 'broken') });
    const original = service.handle;
    service.handle = request =>
      request.path === 'api/models/alice/broken' ? json({ detail: 'store down' }, 503) : original(request);
    const { settings } = fakeServer(service.handle);
    const other = new HubserveModel({ client: new HubserveClient(settings) });
    await other.refresh();
    const broken = other.state.models?.find(m => m.name === 'broken');
    expect(broken?.detail).toBeNull();
    expect(broken?.error?.detail).toBe('store down');
    expect(other.state.loadError).toBeNull();
    model.dispose();
  });
});

describe('polling', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const deploymentCalls = (requests: IRecordedRequest[]) =>
    requests.filter(r => r.path === 'api/deployments').length;

  test('refreshes now and every interval until stopped', async () => {
    const { model, requests } = setup({ interval: 3000 });
    model.startPolling();
    expect(model.isPolling).toBe(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(deploymentCalls(requests)).toBe(1);
    await vi.advanceTimersByTimeAsync(3000);
    expect(deploymentCalls(requests)).toBe(2);
    await vi.advanceTimersByTimeAsync(6000);
    expect(deploymentCalls(requests)).toBe(4);
    model.stopPolling();
    expect(model.isPolling).toBe(false);
    await vi.advanceTimersByTimeAsync(30000);
    expect(deploymentCalls(requests)).toBe(4);
  });

  test('starting twice does not double the polling; restart works', async () => {
    const { model, requests } = setup();
    model.startPolling();
    model.startPolling();
    await vi.advanceTimersByTimeAsync(3000);
    expect(deploymentCalls(requests)).toBe(2);
    model.stopPolling();
    model.startPolling();
    await vi.advanceTimersByTimeAsync(0);
    expect(deploymentCalls(requests)).toBe(3);
    model.dispose();
    await vi.advanceTimersByTimeAsync(30000);
    expect(deploymentCalls(requests)).toBe(3);
    expect(model.isPolling).toBe(false);
  });

  test('models are reloaded every few refreshes only', async () => {
    const { model, requests } = setup({ modelsEvery: 3 });
    model.startPolling();
    await vi.advanceTimersByTimeAsync(5 * 3000);
    // ticks 0..5: models at 0 and 3
    expect(deploymentCalls(requests)).toBe(6);
    expect(requests.filter(r => r.path === 'api/models')).toHaveLength(2);
    model.dispose();
  });

  test('a hidden page is not polled, but polling resumes when it shows again', async () => {
    let visible = false;
    const { model, requests } = setup({ visible: () => visible });
    model.startPolling();
    await vi.advanceTimersByTimeAsync(9000);
    expect(deploymentCalls(requests)).toBe(0);
    visible = true;
    await vi.advanceTimersByTimeAsync(3000);
    expect(deploymentCalls(requests)).toBe(1);
    model.dispose();
  });

  test('errors do not stop polling; the next good answer clears them', async () => {
    const { model, requests, service } = setup();
    service.down = true;
    model.startPolling();
    await vi.advanceTimersByTimeAsync(0);
    expect(model.state.loadError?.kind).toBe('unavailable');
    service.down = false;
    await vi.advanceTimersByTimeAsync(3000);
    expect(model.state.loadError).toBeNull();
    expect(deploymentCalls(requests)).toBe(1);
    model.dispose();
  });

  test('open logs views are refreshed with the deployments', async () => {
    const { model, requests } = setup();
    await model.refresh();
    await model.loadLogs('alice/iris');
    model.startPolling();
    await vi.advanceTimersByTimeAsync(3000);
    expect(requests.filter(r => r.path.endsWith('/logs')).length).toBe(3);
    model.dispose();
  });
});

describe('actions', () => {
  test('deploy: the new deployment is listed and selected, the form closes', async () => {
    const { model, requests } = setup();
    await model.refresh();
    model.openDeployForm({ owner: 'alice', name: 'iris', version: V2 });
    expect(model.state.deployForm?.ref?.version).toBe(V2);
    const created = await model.deploy({ model: `alice/iris:${V2}`, name: 'iris-b', replicas: 1 });
    expect(created?.name).toBe('iris-b');
    expect(model.state.deployments?.map(keyOf)).toEqual(['alice/iris', 'alice/iris-b']);
    expect(model.state.selected).toBe('alice/iris-b');
    expect(model.state.deployForm).toBeNull();
    expect(requests.at(-1)?.body).toEqual({ model: `alice/iris:${V2}`, name: 'iris-b', replicas: 1 });
  });

  test('a refused deploy keeps the form open and reports the service message', async () => {
    const { model } = setup();
    await model.refresh();
    model.openDeployForm(null);
    const created = await model.deploy({ model: `alice/iris:${V2}`, replicas: 1 });
    expect(created).toBeNull();
    expect(model.state.deployForm).not.toBeNull();
    expect(model.state.actionError?.kind).toBe('conflict');
    expect(model.state.actionError?.detail).toBe('deployment alice/iris already exists');
    model.dismissError();
    expect(model.state.actionError).toBeNull();
  });

  test('scale, roll, roll back update the deployment in place', async () => {
    const { model, requests } = setup();
    await model.refresh();
    const pending: boolean[] = [];
    model.changed.connect((_, state) => pending.push(state.pending.has('alice/iris')));
    expect(await model.scale('alice/iris', 3)).toBe(true);
    expect(pending).toContain(true);
    expect(model.state.pending.size).toBe(0);
    expect(model.state.deployments?.[0].replicas).toBe(3);
    expect(requests.at(-1)?.body).toEqual({ replicas: 3 });
    await model.roll('alice/iris', V1);
    expect(requests.at(-1)?.body).toEqual({ version: V1 });
    expect(model.state.deployments?.[0].version).toBe(V1);
    await model.rollback('alice/iris');
    expect(requests.at(-1)?.body).toEqual({ rollback: true });
  });

  test('a failed action sets actionError; a later success clears it', async () => {
    const { model, service } = setup();
    await model.refresh();
    service.failNext = { status: 422, detail: 'at most 8 replicas per deployment' };
    expect(await model.scale('alice/iris', 100)).toBe(false);
    expect(model.state.actionError?.kind).toBe('invalid');
    expect(model.state.actionError?.detail).toBe('at most 8 replicas per deployment');
    expect(model.state.deployments?.[0].replicas).toBe(2);
    expect(await model.scale('alice/iris', 2)).toBe(true);
    expect(model.state.actionError).toBeNull();
  });

  test('a load error and an action error are kept apart', async () => {
    const { model, service } = setup();
    await model.refresh();
    service.failNext = { status: 403, detail: 'not yours' };
    await model.rollback('alice/iris');
    await model.refresh();
    // the refresh worked: no load error, but the action's error is still shown
    expect(model.state.loadError).toBeNull();
    expect(model.state.actionError?.kind).toBe('forbidden');
  });

  test('delete removes the deployment and its logs view', async () => {
    const { model, requests } = setup();
    await model.refresh();
    await model.loadLogs('alice/iris');
    expect(model.state.logs.get('alice/iris')?.chunks).toEqual([{ replica: 'r1', lines: ['ready'] }]);
    expect(await model.remove('alice/iris')).toBe(true);
    expect(requests.at(-1)?.method).toBe('DELETE');
    expect(model.state.deployments).toEqual([]);
    expect(model.state.logs.size).toBe(0);
    expect(model.state.selected).toBeNull();
  });

  test('logs toggle open and closed', async () => {
    const { model } = setup();
    await model.refresh();
    model.toggleLogs('alice/iris');
    expect(model.state.logs.get('alice/iris')?.loading).toBe(true);
    await vi.waitFor(() => expect(model.state.logs.get('alice/iris')?.loading).toBe(false));
    model.toggleLogs('alice/iris');
    expect(model.state.logs.has('alice/iris')).toBe(false);
  });

  test('version records are cached; failures are not', async () => {
    const { model, requests, service } = setup();
    service.failNext = { status: 503, detail: 'store down' };
    await expect(model.versionRecord('alice', 'iris', V2)).rejects.toThrow('store down');
    const record = await model.versionRecord('alice', 'iris', V2);
    await model.versionRecord('alice', 'iris', V2);
    expect(record.manifest.apis[0].name).toBe('predict');
    expect(requests.filter(r => r.path.includes('/versions/'))).toHaveLength(2);
  });

  test('canManage: owners and admins', async () => {
    const { model } = setup();
    expect(model.canManage({ owner: 'alice' })).toBe(false); // not loaded yet
    await model.refresh();
    expect(model.canManage({ owner: 'alice' })).toBe(true);
    expect(model.canManage({ owner: 'bob' })).toBe(false);
  });

  test('ensureLoaded loads once', async () => {
    const { model, requests } = setup();
    await model.ensureLoaded();
    await model.ensureLoaded();
    expect(requests.filter(r => r.path === 'api/models')).toHaveLength(1);
  });
});

test('urlBase: the service URL from the config', async () => {
  const { model } = setup();
  expect(model.urlBase).toBeNull(); // nothing known yet (no page in Node)
  await model.refresh();
  expect(model.urlBase).toBe(CONFIG.service_url);
});

test('a Jupyter server without the server extension (404 on config) says so', async () => {
  const { settings } = fakeServer(() => json({ message: 'Not Found' }, 404));
  const model = new HubserveModel({ client: new HubserveClient(settings) });
  await model.refresh();
  expect(model.state.loadError?.kind).toBe('not-configured');
  expect(model.state.loadError?.detail).toContain('server extension is not enabled');
});
