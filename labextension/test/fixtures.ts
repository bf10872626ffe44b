/** JSON as the hub service answers it (hub_service/registry.py, deployments.py). */

import type {
  IDeployment,
  IHubUser,
  IHubserveConfig,
  IModelDetail,
  IVersionRecord
} from '../src/api';

export const V1 = '20261125T161745123Z-3f2a9c1e';
export const V2 = '20261126T090000000Z-0a1b2c3d';

export const CONFIG: IHubserveConfig = {
  service_url: 'https://hub.example.org/services/hubserve/',
  user: 'alice',
  configured: true,
  reason: null,
  version: '0.1.0'
};

export const ME: IHubUser = { name: 'alice', admin: false, groups: ['astro'], scopes: [] };

export function modelDetail(owner = 'alice', name = 'iris'): IModelDetail {
  return {
    owner,
    name,
    versions: [
      {
        owner,
        name,
        version: V2,
        created_at: '2026-11-26T09:00:00Z',
        pushed_at: '2026-11-26T09:00:01Z',
        size: 5120,
        tags: ['latest', 'prod']
      },
      {
        owner,
        name,
        version: V1,
        created_at: '2026-11-25T16:17:45Z',
        pushed_at: '2026-11-25T16:17:46Z',
        size: 4096,
        tags: []
      }
    ],
    tags: { latest: V2, prod: V2 }
  };
}

export function versionRecord(version = V2): IVersionRecord {
  return {
    owner: 'alice',
    name: 'iris',
    version,
    pushed_at: '2026-11-26T09:00:01Z',
    pushed_by: 'alice',
    archive_sha256: '0'.repeat(64),
    archive_size: 5120,
    tags: [],
    manifest: {
      name: 'iris',
      version,
      created_at: '2026-11-26T09:00:00Z',
      apis: [
        {
          name: 'predict',
          function: 'predict',
          input: { kind: 'ndarray', dtype: 'float32', shape: [-1, 4] },
          output: { kind: 'ndarray' },
          batchable: true,
          batching: { max_batch_size: 32, max_latency_ms: 10 }
        },
        {
          name: 'classify',
          function: 'classify',
          input: { kind: 'json' },
          output: { kind: 'json' },
          batchable: false
        }
      ]
    }
  };
}

export function deployment(overrides: Partial<IDeployment> = {}): IDeployment {
  return {
    owner: 'alice',
    name: 'iris',
    model: 'alice/iris',
    version: V2,
    selector: 'latest',
    url: 'https://hub.example.org/services/hubserve/d/alice/iris/',
    replicas: 2,
    resources: {},
    batching: {},
    access: { users: [], groups: [], public: false },
    generation: 1,
    created_by: 'alice',
    created_at: '2026-11-26T09:10:00Z',
    updated_at: '2026-11-26T09:10:00Z',
    apis: [
      { name: 'predict', path: '/predict', input: 'ndarray', output: 'ndarray', batchable: true, doc: '' },
      { name: 'classify', path: '/classify', input: 'json', output: 'json', batchable: false, doc: '' }
    ],
    revisions: [
      { number: 1, version: V2, selector: 'latest', created_by: 'alice', created_at: '2026-11-26T09:10:00Z' }
    ],
    status: { desired: 2, ready: 1, updated: 1, phase: 'progressing', message: null, replicas: [] },
    ...overrides
  };
}
