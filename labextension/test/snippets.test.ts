import { describe, expect, test } from 'vitest';

import {
  absoluteUrl,
  curlSnippet,
  endpointOf,
  exampleInput,
  makeSnippets,
  oipDatatype,
  pythonSnippet,
  serviceUrlOf,
  shellQuote,
  toJson,
  toPython
} from '../src/snippets';
import { deployment, versionRecord } from './fixtures';

const ENDPOINT = 'https://hub.example.org/services/hubserve/d/alice/iris/';

describe('examples', () => {
  test('arrays follow dtype and shape, -1 becomes 1', () => {
    expect(toJson(exampleInput({ kind: 'ndarray', dtype: 'float32', shape: [-1, 4] }))).toBe(
      '[[0.0, 0.0, 0.0, 0.0]]'
    );
    expect(toJson(exampleInput({ kind: 'tensor', dtype: 'int64', shape: [2] }))).toBe('[0, 0]');
    expect(toJson(exampleInput({ kind: 'ndarray', dtype: 'bool', shape: [1, 2] }))).toBe(
      '[[false, false]]'
    );
    // unknown shape: one row of one value
    expect(toJson(exampleInput({ kind: 'ndarray' }))).toBe('[[0.0]]');
    // image-sized: the structure only
    expect(toJson(exampleInput({ kind: 'ndarray', shape: [-1, 3, 224, 224] }))).toBe(
      '[[[[0.0]]]]'
    );
  });

  test('other kinds', () => {
    expect(toJson(exampleInput({ kind: 'dataframe', columns: ['a', 'b'] }))).toBe(
      '[{"a": 0, "b": 0}]'
    );
    expect(exampleInput({ kind: 'text' })).toBe('hello');
    expect(toJson(exampleInput({ kind: 'json' }))).toBe('[]');
    expect(toPython({ a: [true, null, 1.5] })).toBe("{'a': [True, None, 1.5]}");
  });

  test('shell quoting like shlex.quote', () => {
    expect(shellQuote('https://x/y')).toBe('https://x/y');
    expect(shellQuote("it's")).toBe(`'it'"'"'s'`);
    expect(shellQuote('[[0.0, 1.0]]')).toBe("'[[0.0, 1.0]]'");
    expect(shellQuote('')).toBe("''");
  });

  test('OIP datatypes', () => {
    expect(oipDatatype('float32')).toBe('FP32');
    expect(oipDatatype('int64')).toBe('INT64');
    expect(oipDatatype(null)).toBe('FP32');
    expect(oipDatatype('str')).toBe('BYTES');
  });
});

describe('snippets', () => {
  const apis = versionRecord().manifest.apis;

  test('curl calls the first API with an example body and no token', () => {
    const snippets = makeSnippets(deployment(), apis)!;
    expect(snippets.api).toBe('predict');
    expect(snippets.url).toBe(`${ENDPOINT}predict`);
    expect(snippets.curl).toBe(
      'curl -H "Authorization: token $JUPYTERHUB_API_TOKEN" \\\n' +
        "     -H 'Content-Type: application/json' -d '[[0.0, 0.0, 0.0, 0.0]]' \\\n" +
        `     ${ENDPOINT}predict`
    );
  });

  test('Python uses hubserve.Client with the service URL, numpy for arrays', () => {
    const snippets = makeSnippets(deployment(), apis)!;
    expect(snippets.python).toBe(
      [
        'import numpy as np',
        '',
        'import hubserve',
        '',
        "client = hubserve.Client('https://hub.example.org/services/hubserve/')  # token: $JUPYTERHUB_API_TOKEN",
        "x = np.array([[0.0, 0.0, 0.0, 0.0]], dtype='float32')",
        "result = client.predict('alice/iris', 'predict', x)",
        'print(result)',
        ''
      ].join('\n')
    );
  });

  test('OIP posts one flat tensor to v2/models/<api>/infer', () => {
    const snippets = makeSnippets(deployment(), apis)!;
    expect(snippets.oip).toContain(`${ENDPOINT}v2/models/predict/infer`);
    const body = /-d '([^']*)'/.exec(snippets.oip)![1];
    expect(JSON.parse(body)).toEqual({
      inputs: [{ name: 'input', shape: [1, 4], datatype: 'FP32', data: [0, 0, 0, 0] }]
    });
    expect(body).toContain('"data": [0.0, 0.0, 0.0, 0.0]');
  });

  test('another API of the deployment; OIP still uses the array API', () => {
    const snippets = makeSnippets(deployment(), apis, 'classify')!;
    expect(snippets.url).toBe(`${ENDPOINT}classify`);
    expect(snippets.curl).toContain("-d '[]'");
    expect(snippets.python).toContain("result = client.predict('alice/iris', 'classify', [])");
    expect(snippets.python).not.toContain('numpy');
    expect(snippets.oip).toContain('v2/models/predict/infer');
  });

  test('without the manifest: kinds from the deployment', () => {
    const snippets = makeSnippets(deployment(), null)!;
    expect(snippets.curl).toContain("-d '[[0.0]]'");
  });

  test('no array API: the OIP snippet says so', () => {
    const dep = deployment({
      apis: [{ name: 'echo', path: '/echo', input: 'text', output: 'text', batchable: false, doc: '' }]
    });
    const snippets = makeSnippets(dep, null)!;
    expect(snippets.curl).toContain("-H 'Content-Type: text/plain' --data-binary hello");
    expect(snippets.oip).toMatch(/^# The Open Inference Protocol/);
    expect(makeSnippets(deployment({ apis: [] }), null)).toBeNull();
  });

  test('files, images and folders', () => {
    expect(curlSnippet(ENDPOINT, { name: 'up', input: { kind: 'image' } }).code).toContain(
      '-F file=@image.png'
    );
    const job = curlSnippet(ENDPOINT, { name: 'batch', input: { kind: 'path' } });
    expect(job.url).toBe(`${ENDPOINT}jobs/batch`);
    const python = pythonSnippet(null, { owner: 'alice', name: 'iris' }, { name: 'batch', input: { kind: 'path' } });
    expect(python).toContain("client.submit_job('alice/iris', 'batch', input='/path/to/inputs'");
    expect(python).toContain('hubserve.Client()  # $HUBSERVE_URL and $JUPYTERHUB_API_TOKEN');
    const file = pythonSnippet(null, { owner: 'alice', name: 'iris' }, { name: 'up', input: { kind: 'file' } });
    expect(file).toContain("Path('input.bin')");
  });

  test('snippets never hold a token', () => {
    for (const name of ['predict', 'classify']) {
      const s = makeSnippets(deployment(), apis, name)!;
      for (const code of [s.curl, s.python, s.oip]) {
        expect(code).not.toMatch(/token [0-9a-f]{16,}/);
        expect(code).not.toContain('jupyter-server-token');
      }
      expect(s.curl).toContain('$JUPYTERHUB_API_TOKEN');
    }
  });

  test('serviceUrlOf', () => {
    expect(serviceUrlOf(ENDPOINT, 'alice', 'iris')).toBe('https://hub.example.org/services/hubserve/');
    expect(serviceUrlOf('https://x/d/a%40b/m/', 'a@b', 'm')).toBe('https://x/');
    expect(serviceUrlOf('https://elsewhere/', 'alice', 'iris')).toBeNull();
  });
});

describe('relative deployment URLs', () => {
  const apis = versionRecord().manifest.apis;

  test('are resolved against the service URL', () => {
    const dep = deployment({ url: '/services/hubserve/d/alice/iris/' });
    const base = 'http://127.0.0.1:8000/services/hubserve/';
    const snippets = makeSnippets(dep, apis, undefined, base)!;
    expect(snippets.url).toBe('http://127.0.0.1:8000/services/hubserve/d/alice/iris/predict');
    expect(snippets.python).toContain("hubserve.Client('http://127.0.0.1:8000/services/hubserve/')");
    expect(snippets.oip).toContain('http://127.0.0.1:8000/services/hubserve/d/alice/iris/v2/models/predict/infer');
  });

  test('absolute URLs stay as they are', () => {
    expect(absoluteUrl('https://hub/d/a/b/', 'http://other/')).toBe('https://hub/d/a/b/');
    expect(absoluteUrl('/d/a/b/', null)).toBe('/d/a/b/');
    expect(endpointOf({ url: '/x/d/a/b' }, 'http://h:1/')).toBe('http://h:1/x/d/a/b/');
  });
});
