/**
 * The "Model Serving" side panel: a ReactWidget rendering the model's state. It polls
 * while it is visible and stops when hidden, detached or disposed.
 */

import { ReactWidget, refreshIcon } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import { hubserveIcon } from './icon';
import { type HubserveModel, type IPanelState, keyOf } from './model';
import { DeploymentItem } from './view/Deployment';
import { DeployForm } from './view/DeployForm';
import { ModelsList } from './view/Models';

export const PANEL_ID = 'hubserve-panel';

function useModelState(model: HubserveModel): IPanelState {
  return React.useSyncExternalStore(
    React.useCallback(
      (notify: () => void) => {
        model.changed.connect(notify);
        return () => {
          model.changed.disconnect(notify);
        };
      },
      [model]
    ),
    () => model.state
  );
}

function ErrorBanner(props: { model: HubserveModel; state: IPanelState }): JSX.Element | null {
  const { actionError, loadError } = props.state;
  if (!actionError && !loadError) {
    return null;
  }
  return (
    <div className="jp-Hubserve-error" role="alert" data-testid="hubserve-error">
      {actionError && (
        <div className="jp-Hubserve-errorItem" data-kind={actionError.kind}>
          <strong>{actionError.title}:</strong> {actionError.detail}
          <button
            type="button"
            className="jp-Hubserve-dismiss"
            data-testid="hubserve-error-dismiss"
            title="Dismiss"
            onClick={() => props.model.dismissError()}
          >
            ×
          </button>
        </div>
      )}
      {loadError && (
        <div className="jp-Hubserve-errorItem" data-kind={loadError.kind}>
          <strong>{loadError.title}:</strong> {loadError.detail}
        </div>
      )}
    </div>
  );
}

function Section(props: {
  title: string;
  count?: number;
  children: React.ReactNode;
  actions?: React.ReactNode;
}): JSX.Element {
  return (
    <section className="jp-Hubserve-section">
      <header className="jp-Hubserve-sectionHeader">
        <h3>
          {props.title}
          {props.count !== undefined && <span className="jp-Hubserve-count">{props.count}</span>}
        </h3>
        {props.actions}
      </header>
      {props.children}
    </section>
  );
}

export function HubservePanelView(props: { model: HubserveModel }): JSX.Element {
  const { model } = props;
  const state = useModelState(model);
  const configured =
    state.config?.configured !== false && state.loadError?.kind !== 'not-configured';
  return (
    <div className="jp-Hubserve-root">
      <header className="jp-Hubserve-header">
        <hubserveIcon.react tag="span" className="jp-Hubserve-headerIcon" />
        <h2>Model Serving</h2>
        <button
          type="button"
          className="jp-Button jp-mod-minimal jp-Hubserve-iconButton"
          data-testid="hubserve-refresh"
          title="Refresh"
          aria-label="Refresh"
          disabled={state.refreshing}
          onClick={() => void model.refresh({ models: true, config: true })}
        >
          <refreshIcon.react tag="span" className={state.refreshing ? 'jp-Hubserve-spin' : ''} />
        </button>
      </header>
      <ErrorBanner model={model} state={state} />
      {state.status !== 'ready' && (
        <div className="jp-Hubserve-loading" data-testid="hubserve-loading">
          Loading models and deployments…
        </div>
      )}
      {configured && state.deployForm && (
        <DeployForm model={model} form={state.deployForm} models={state.models} />
      )}
      {configured && state.deployments !== null && (
        <Section
          title="Deployments"
          count={state.deployments.length}
          actions={
            !state.deployForm && (
              <button
                type="button"
                className="jp-Button jp-mod-styled jp-Hubserve-small"
                data-testid="hubserve-deploy-open"
                onClick={() => model.openDeployForm(null)}
              >
                Deploy…
              </button>
            )
          }
        >
          {state.deployments.length === 0 ? (
            <div className="jp-Hubserve-empty" data-testid="hubserve-empty-deployments">
              Nothing deployed yet. Pick a model version below and press Deploy.
            </div>
          ) : (
            <ul className="jp-Hubserve-list" data-testid="hubserve-deployments">
              {state.deployments.map(deployment => {
                const key = keyOf(deployment);
                return (
                  <DeploymentItem
                    key={key}
                    model={model}
                    deployment={deployment}
                    selected={state.selected === key}
                    pending={state.pending.has(key)}
                    logs={state.logs.get(key)}
                  />
                );
              })}
            </ul>
          )}
        </Section>
      )}
      {configured && state.models !== null && (
        <Section title="Models" count={state.models.length}>
          <ModelsList model={model} models={state.models} />
        </Section>
      )}
      {state.config && (
        <footer className="jp-Hubserve-footer jp-Hubserve-muted">
          {state.me ? `${state.me.name} · ` : ''}
          {state.config.service_url ?? 'no service'} · hubserve {state.config.version}
        </footer>
      )}
    </div>
  );
}

/** The side panel widget; `model` belongs to it (disposed with it). */
export class HubservePanel extends ReactWidget {
  readonly model: HubserveModel;

  constructor(model: HubserveModel) {
    super();
    this.model = model;
    this.id = PANEL_ID;
    this.addClass('jp-HubservePanel');
    this.title.icon = hubserveIcon;
    this.title.caption = 'Model Serving';
  }

  render(): JSX.Element {
    return <HubservePanelView model={this.model} />;
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.model.startPolling();
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.startPolling();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.stopPolling();
  }

  protected onBeforeDetach(msg: Message): void {
    this.model.stopPolling();
    super.onBeforeDetach(msg);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.dispose();
    super.dispose();
  }
}
