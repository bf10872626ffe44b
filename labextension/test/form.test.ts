import { describe, expect, test } from 'vitest';

import {
  initialValues,
  modelNameOf,
  parseNames,
  parseRef,
  parseReplicas,
  pickVersionForNotebook,
  validateDeployForm
} from '../src/form';
import { V1, V2, modelDetail } from './fixtures';

const REF = { owner: 'alice', name: 'iris', version: V2 };

describe('validateDeployForm', () => {
  test('defaults give a minimal request named after the model', () => {
    const result = validateDeployForm(initialValues(REF), ['predict']);
    expect(result.errors).toEqual({});
    expect(result.request).toEqual({
      model: `alice/iris:${V2}`,
      name: 'iris',
      replicas: 1,
      access: { users: [], groups: [], public: false }
    });
  });

  test('batching goes to every batchable API; access lists are split and cleaned', () => {
    const values = {
      ...initialValues(REF),
      name: 'iris-prod',
      replicas: '3',
      maxBatchSize: '64',
      maxLatency: '2.5',
      users: ' bob, carol@example.org ,, bob',
      groups: 'astro',
      public: true
    };
    const result = validateDeployForm(values, ['predict', 'embed']);
    expect(result.request).toEqual({
      model: `alice/iris:${V2}`,
      name: 'iris-prod',
      replicas: 3,
      batching: {
        predict: { max_batch_size: 64, max_latency_ms: 2.5 },
        embed: { max_batch_size: 64, max_latency_ms: 2.5 }
      },
      access: { users: ['bob', 'carol@example.org'], groups: ['astro'], public: true }
    });
  });

  test('every bad field gets its message, and no request', () => {
    const values = {
      model: '',
      name: 'Iris Model',
      replicas: '-1',
      maxBatchSize: '0',
      maxLatency: 'soon',
      users: 'bob smith',
      groups: 'a/b',
      public: false
    };
    const result = validateDeployForm(values, ['predict']);
    expect(result.request).toBeNull();
    expect(Object.keys(result.errors).sort()).toEqual(
      ['groups', 'maxBatchSize', 'maxLatency', 'model', 'name', 'replicas', 'users'].sort()
    );
    expect(result.errors.replicas).toBe('replicas must be a whole number');
    expect(result.errors.maxBatchSize).toBe('max batch size must be between 1 and 65536');
  });

  test('batching for a version without batchable APIs is refused', () => {
    const values = { ...initialValues(REF), maxBatchSize: '8' };
    const result = validateDeployForm(values, []);
    expect(result.request).toBeNull();
    expect(result.errors.maxBatchSize).toBe('this version has no batchable API');
  });

  test('zero replicas is allowed; fractions and huge batches are not', () => {
    expect(validateDeployForm({ ...initialValues(REF), replicas: '0' }, []).request?.replicas).toBe(0);
    expect(validateDeployForm({ ...initialValues(REF), replicas: '1.5' }, []).errors.replicas).toBeDefined();
    expect(
      validateDeployForm({ ...initialValues(REF), maxBatchSize: '70000' }, ['p']).errors.maxBatchSize
    ).toBeDefined();
    expect(
      validateDeployForm({ ...initialValues(REF), maxLatency: '60001' }, ['p']).errors.maxLatency
    ).toBeDefined();
  });
});

describe('helpers', () => {
  test('parseRef / parseNames / parseReplicas', () => {
    expect(parseRef(`alice/iris:${V1}`)).toEqual({ owner: 'alice', name: 'iris', version: V1 });
    expect(parseRef('iris')).toBeNull();
    expect(parseRef('a/b/c:v')).toBeNull();
    expect(parseNames(' a ,b,, a')).toEqual(['a', 'b']);
    expect(parseReplicas('4')).toBe(4);
    expect(parseReplicas('')).toBe('replicas must be a whole number');
  });

  test('modelNameOf', () => {
    expect(modelNameOf('work/Iris.ipynb')).toBe('iris');
    expect(modelNameOf('My Model (v2).ipynb')).toBe('my-model-v2');
  });

  test('pickVersionForNotebook: the newest version of the model named like the notebook', () => {
    const models = [modelDetail('alice', 'iris'), modelDetail('alice', 'other')];
    expect(pickVersionForNotebook(models, 'projects/iris.ipynb', 'alice')).toEqual({
      owner: 'alice',
      name: 'iris',
      version: V2
    });
    expect(pickVersionForNotebook(models, 'Iris.ipynb', 'alice')?.name).toBe('iris');
    expect(pickVersionForNotebook(models, 'untitled.ipynb', 'alice')).toBeNull();
    expect(pickVersionForNotebook(models, '', 'alice')).toBeNull();
    // the user's own model wins over another owner's of the same name
    const shared = [modelDetail('bob', 'iris'), modelDetail('alice', 'iris')];
    expect(pickVersionForNotebook(shared, 'iris.ipynb', 'alice')?.owner).toBe('alice');
    // a model without versions is no match
    const empty = { ...modelDetail('alice', 'iris'), versions: [] };
    expect(pickVersionForNotebook([empty], 'iris.ipynb', 'alice')).toBeNull();
  });
});
