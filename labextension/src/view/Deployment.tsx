import { Dialog, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import type { IApiEntry, IDeployment } from '../api';
import { copyText } from '../clipboard';
import { parseReplicas } from '../form';
import { formatAge } from '../format';
import { type HubserveModel, type ILogsState, keyOf } from '../model';
import { endpointOf, makeSnippets } from '../snippets';

/** CSS class suffix of each phase (class names hold no spaces). */
const PHASES = new Map([
  ['preparing environment', 'preparing'],
  ['ready', 'ready'],
  ['progressing', 'progressing'],
  ['degraded', 'degraded'],
  ['failed', 'failed'],
  ['stopped', 'stopped']
]);

export function StatusBadge(props: { phase: string; message?: string | null }): JSX.Element {
  const phase = PHASES.get(props.phase) ?? 'unknown';
  return (
    <span
      className={`jp-Hubserve-badge jp-Hubserve-badge-${phase}`}
      data-testid="hubserve-status"
      title={props.message ?? props.phase}
    >
      {props.phase}
    </span>
  );
}

/** A snippet with its copy button. */
function Snippet(props: {
  kind: 'curl' | 'python' | 'oip';
  title: string;
  code: string;
  model: HubserveModel;
}): JSX.Element {
  const pre = React.useRef<HTMLPreElement>(null);
  const [feedback, setFeedback] = React.useState('');
  React.useEffect(() => {
    if (!feedback) {
      return;
    }
    const timer = setTimeout(() => setFeedback(''), 2000);
    return () => clearTimeout(timer);
  }, [feedback]);
  const copy = async (): Promise<void> => {
    const result = await copyText(props.code, pre.current);
    if (result === 'copied') {
      setFeedback('Copied');
    } else if (result === 'selected') {
      setFeedback('Selected: press Ctrl+C');
    } else {
      props.model.reportError(new Error('the browser refused to copy to the clipboard'));
    }
  };
  return (
    <div className="jp-Hubserve-snippet">
      <div className="jp-Hubserve-snippetHeader">
        <span>{props.title}</span>
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-Hubserve-small"
          data-testid={`hubserve-copy-${props.kind}`}
          title={`Copy the ${props.title} snippet`}
          onClick={() => void copy()}
        >
          {feedback || 'Copy'}
        </button>
      </div>
      <pre ref={pre} data-testid={`hubserve-snippet-${props.kind}`}>
        {props.code}
      </pre>
    </div>
  );
}

/** The endpoint of a deployment and code calling it. */
function Endpoint(props: { model: HubserveModel; deployment: IDeployment }): JSX.Element {
  const { model, deployment } = props;
  const [apis, setApis] = React.useState<IApiEntry[] | null | 'loading'>('loading');
  const [apiName, setApiName] = React.useState<string | undefined>(undefined);
  const [owner, name] = deployment.model.split('/');
  React.useEffect(() => {
    let current = true;
    setApis('loading');
    model.versionRecord(owner, name, deployment.version).then(
      record => current && setApis(record.manifest.apis),
      () => current && setApis(null) // the snippets fall back to the kinds the deployment lists
    );
    return () => {
      current = false;
    };
  }, [deployment.model, deployment.version]);

  if (apis === 'loading') {
    return <div className="jp-Hubserve-hint">Loading the APIs…</div>;
  }
  const snippets = makeSnippets(deployment, apis, apiName, model.urlBase);
  if (!snippets) {
    return (
      <div className="jp-Hubserve-hint" data-testid="hubserve-no-apis">
        This deployment lists no APIs (its version's manifest cannot be read).
      </div>
    );
  }
  const names = (apis ?? deployment.apis).map(api => api.name);
  return (
    <div className="jp-Hubserve-endpoint" data-testid="hubserve-endpoint">
      {names.length > 1 && (
        <label className="jp-Hubserve-inline">
          <span>API</span>
          <select
            className="jp-mod-styled"
            data-testid="hubserve-snippet-api"
            value={snippets.api}
            onChange={event => setApiName(event.target.value)}
          >
            {names.map(n => (
              <option key={n} value={n}>
                {n}
              </option>
            ))}
          </select>
        </label>
      )}
      <Snippet kind="curl" title="curl" code={snippets.curl} model={model} />
      <Snippet kind="python" title="Python (hubserve.Client)" code={snippets.python} model={model} />
      <Snippet kind="oip" title="Open Inference Protocol v2" code={snippets.oip} model={model} />
    </div>
  );
}

function LogsView(props: { logs: ILogsState; onReload: () => void }): JSX.Element {
  const { logs } = props;
  let text: string;
  if (logs.chunks === null) {
    text = logs.loading ? 'Loading the logs…' : '';
  } else if (!logs.chunks.length) {
    text = 'No replica has written anything (no replicas running?).';
  } else {
    text = logs.chunks
      .map(chunk => `== ${chunk.replica} ==\n${chunk.lines.join('\n') || '(no output)'}`)
      .join('\n\n');
  }
  return (
    <div className="jp-Hubserve-logs">
      {logs.error && (
        <div className="jp-Hubserve-inlineError" role="alert">
          Could not load the logs: {logs.error.message}
        </div>
      )}
      <pre data-testid="hubserve-logs-view">{text}</pre>
      <button
        type="button"
        className="jp-Button jp-mod-styled jp-Hubserve-small"
        data-testid="hubserve-logs-reload"
        disabled={logs.loading}
        onClick={props.onReload}
      >
        {logs.loading ? 'Loading…' : 'Reload'}
      </button>
    </div>
  );
}

/** One deployment: status, replicas, version, URL, actions, and when selected, snippets. */
export function DeploymentItem(props: {
  model: HubserveModel;
  deployment: IDeployment;
  selected: boolean;
  pending: boolean;
  logs: ILogsState | undefined;
}): JSX.Element {
  const { model, deployment, selected, pending, logs } = props;
  const key = keyOf(deployment);
  const manage = model.canManage(deployment);
  const [replicas, setReplicas] = React.useState(String(deployment.replicas));
  const [scaleError, setScaleError] = React.useState('');
  const [target, setTarget] = React.useState('');
  React.useEffect(() => setReplicas(String(deployment.replicas)), [deployment.replicas]);

  const detail = model.versionsOf(deployment.model);
  const versions = detail?.versions ?? [];
  const rollTarget = target || versions.find(v => v.version !== deployment.version)?.version || '';

  const scale = (): void => {
    const value = parseReplicas(replicas);
    if (typeof value === 'string') {
      setScaleError(value);
      return;
    }
    setScaleError('');
    void model.scale(key, value);
  };

  const remove = async (): Promise<void> => {
    const result = await showDialog({
      title: 'Delete deployment',
      body: `Stop every replica of ${key} and delete the deployment? Its URL stops answering.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (result.button.accept) {
      await model.remove(key);
    }
  };

  const status = deployment.status;
  const url = endpointOf(deployment, model.urlBase);
  return (
    <li
      className={`jp-Hubserve-deployment${selected ? ' jp-mod-selected' : ''}${pending ? ' jp-mod-pending' : ''}`}
      data-testid="hubserve-deployment"
      data-deployment={key}
    >
      <div
        className="jp-Hubserve-deploymentHeader"
        role="button"
        tabIndex={0}
        aria-expanded={selected}
        title={selected ? 'Hide the endpoint' : 'Show the endpoint and code to call it'}
        onClick={() => model.select(selected ? null : key)}
        onKeyDown={event => {
          if (event.key === 'Enter' || event.key === ' ') {
            event.preventDefault();
            model.select(selected ? null : key);
          }
        }}
      >
        <span className="jp-Hubserve-caret">{selected ? '▾' : '▸'}</span>
        <span className="jp-Hubserve-name">{deployment.name}</span>
        <StatusBadge phase={status.phase} message={status.message} />
        <span className="jp-Hubserve-replicas" data-testid="hubserve-replicas" title="ready/desired replicas">
          {status.ready}/{status.desired}
        </span>
      </div>
      <div className="jp-Hubserve-meta">
        <span className="jp-Hubserve-muted">{deployment.model}:</span>
        <span className="jp-Hubserve-version" data-testid="hubserve-version-label" title={deployment.version}>
          {deployment.version}
        </span>
        {deployment.selector !== deployment.version && (
          <span className="jp-Hubserve-tag" title="the tag it was deployed by">
            {deployment.selector}
          </span>
        )}
      </div>
      {status.message && (
        <div className="jp-Hubserve-statusMessage" data-testid="hubserve-status-message">
          {status.message}
        </div>
      )}
      {status.environment && status.environment.kind !== 'runtime' && (
        <div
          className="jp-Hubserve-muted jp-Hubserve-environment"
          data-testid="hubserve-environment"
          title={Object.entries(status.environment.packages)
            .map(([name, version]) => `${name} ${version}`)
            .join('\n')}
        >
          {status.environment.kind === 'overlay' ? 'environment: overlay' : 'environment: separate'}{' '}
          ({status.environment.reason})
        </div>
      )}
      <div className="jp-Hubserve-url">
        <a data-testid="hubserve-url" href={url} target="_blank" rel="noopener noreferrer" title={url}>
          {url}
        </a>
      </div>
      {manage ? (
        <div className="jp-Hubserve-actions">
          <div className="jp-Hubserve-inline jp-Hubserve-row">
            <input
              className="jp-mod-styled jp-Hubserve-replicasInput"
              data-testid="hubserve-scale-input"
              type="number"
              min={0}
              step={1}
              aria-label="replicas"
              value={replicas}
              onChange={event => setReplicas(event.target.value)}
              onKeyDown={event => event.key === 'Enter' && scale()}
            />
            <button
              type="button"
              className="jp-Button jp-mod-styled jp-Hubserve-small"
              data-testid="hubserve-scale-submit"
              disabled={pending}
              onClick={scale}
            >
              Scale
            </button>
          </div>
          {scaleError && (
            <div className="jp-Hubserve-fieldError" data-testid="hubserve-scale-error">
              {scaleError}
            </div>
          )}
          <div className="jp-Hubserve-inline jp-Hubserve-row">
            <select
              className="jp-mod-styled jp-Hubserve-rollSelect"
              data-testid="hubserve-roll-select"
              aria-label="version to roll to"
              value={rollTarget}
              onChange={event => setTarget(event.target.value)}
            >
              {versions.length === 0 && <option value="">{deployment.version}</option>}
              {versions.map(v => (
                <option key={v.version} value={v.version}>
                  {v.version}
                  {v.tags.length ? ` (${v.tags.join(', ')})` : ''}
                  {v.version === deployment.version ? ' — running' : ''}
                </option>
              ))}
            </select>
            <button
              type="button"
              className="jp-Button jp-mod-styled jp-Hubserve-small"
              data-testid="hubserve-roll-submit"
              disabled={pending || !rollTarget || rollTarget === deployment.version}
              title="Roll the replicas over to this version"
              onClick={() => void model.roll(key, rollTarget)}
            >
              Roll
            </button>
          </div>
          <div className="jp-Hubserve-inline">
            <button
              type="button"
              className="jp-Button jp-mod-styled jp-Hubserve-small"
              data-testid="hubserve-rollback"
              disabled={pending || deployment.revisions.length < 2}
              title={
                deployment.revisions.length < 2
                  ? 'No earlier revision'
                  : `Back to ${deployment.revisions[deployment.revisions.length - 2].version}`
              }
              onClick={() => void model.rollback(key)}
            >
              Roll back
            </button>
            <button
              type="button"
              className={`jp-Button jp-mod-styled jp-Hubserve-small${logs ? ' jp-mod-active' : ''}`}
              data-testid="hubserve-logs"
              aria-pressed={!!logs}
              onClick={() => model.toggleLogs(key)}
            >
              {logs ? 'Hide logs' : 'Logs'}
            </button>
            <button
              type="button"
              className="jp-Button jp-mod-styled jp-mod-warn jp-Hubserve-small"
              data-testid="hubserve-delete"
              disabled={pending}
              onClick={() => void remove()}
            >
              Delete
            </button>
          </div>
        </div>
      ) : (
        <div className="jp-Hubserve-hint">Shared with you by {deployment.owner}.</div>
      )}
      {logs && <LogsView logs={logs} onReload={() => void model.loadLogs(key)} />}
      {selected && <Endpoint model={model} deployment={deployment} />}
      <div className="jp-Hubserve-muted jp-Hubserve-small-text">
        updated {formatAge(deployment.updated_at)} · revision{' '}
        {deployment.revisions.length ? deployment.revisions[deployment.revisions.length - 1].number : 1}
      </div>
    </li>
  );
}
