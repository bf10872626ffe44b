import * as React from 'react';

import { formatAge, formatSize, formatTime } from '../format';
import type { HubserveModel, IModelEntry } from '../model';

/** Versions shown before "show more". */
const FIRST_VERSIONS = 5;

function ModelItem(props: { model: HubserveModel; entry: IModelEntry }): JSX.Element {
  const { model, entry } = props;
  const [all, setAll] = React.useState(false);
  const versions = entry.detail?.versions ?? [];
  const shown = all ? versions : versions.slice(0, FIRST_VERSIONS);
  return (
    <li className="jp-Hubserve-model" data-testid="hubserve-model" data-model={entry.key}>
      <div className="jp-Hubserve-modelHeader">
        <span className="jp-Hubserve-name">{entry.name}</span>
        <span className="jp-Hubserve-muted">
          {entry.owner} · {versions.length} version{versions.length === 1 ? '' : 's'}
        </span>
      </div>
      {entry.error && (
        <div className="jp-Hubserve-inlineError" role="alert">
          Could not load the versions: {entry.error.message}
        </div>
      )}
      <ul className="jp-Hubserve-versions">
        {shown.map(version => (
          <li
            key={version.version}
            className="jp-Hubserve-versionItem"
            data-testid="hubserve-version"
            data-version={version.version}
          >
            <div className="jp-Hubserve-versionMain">
              <span className="jp-Hubserve-version" title={version.version}>
                {version.version}
              </span>
              {version.tags.map(tag => (
                <span key={tag} className="jp-Hubserve-tag" data-testid="hubserve-tag">
                  {tag}
                </span>
              ))}
            </div>
            <div className="jp-Hubserve-versionMeta">
              <span className="jp-Hubserve-muted" data-testid="hubserve-size">
                {formatSize(version.size)}
              </span>
              <span
                className="jp-Hubserve-muted"
                data-testid="hubserve-created"
                title={`created ${formatTime(version.created_at)}, pushed ${formatTime(version.pushed_at)}`}
              >
                {formatAge(version.created_at)}
              </span>
              <button
                type="button"
                className="jp-Button jp-mod-styled jp-mod-accept jp-Hubserve-small"
                data-testid="hubserve-deploy-version"
                title={`Deploy ${entry.key}:${version.version}`}
                onClick={() =>
                  model.openDeployForm({
                    owner: entry.owner,
                    name: entry.name,
                    version: version.version
                  })
                }
              >
                Deploy
              </button>
            </div>
          </li>
        ))}
      </ul>
      {versions.length > FIRST_VERSIONS && (
        <button type="button" className="jp-Hubserve-link" onClick={() => setAll(!all)}>
          {all ? 'Show fewer' : `Show all ${versions.length} versions`}
        </button>
      )}
    </li>
  );
}

export function ModelsList(props: { model: HubserveModel; models: IModelEntry[] }): JSX.Element {
  if (!props.models.length) {
    return (
      <div className="jp-Hubserve-empty" data-testid="hubserve-empty-models">
        <p>No models yet.</p>
        <p>
          Push one from a notebook: <code>hubserve.Client().push(svc)</code> or{' '}
          <code>%hubserve push svc</code>.
        </p>
      </div>
    );
  }
  return (
    <ul className="jp-Hubserve-list" data-testid="hubserve-models">
      {props.models.map(entry => (
        <ModelItem key={entry.key} model={props.model} entry={entry} />
      ))}
    </ul>
  );
}
