/**
 * hubserve's JupyterLab extension: the "Model Serving" side panel, its commands
 * (`hubserve:open`, `hubserve:refresh`, `hubserve:deploy`), their palette entries, a
 * "Deploy" button in every notebook's toolbar and an item in the notebook context menu.
 */

import {
  ILayoutRestorer,
  type JupyterFrontEnd,
  type JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import type { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookTracker, type INotebookModel, type NotebookPanel } from '@jupyterlab/notebook';
import { CommandToolbarButton } from '@jupyterlab/ui-components';
import type { IDisposable } from '@lumino/disposable';

import { pickVersionForNotebook } from './form';
import { hubserveIcon } from './icon';
import { HubserveModel } from './model';
import { HubservePanel, PANEL_ID } from './widget';

export const PLUGIN_ID = 'hubserve-labextension:plugin';

export namespace CommandIDs {
  export const open = 'hubserve:open';
  export const refresh = 'hubserve:refresh';
  export const deploy = 'hubserve:deploy';
}

const CATEGORY = 'Model Serving';

/**
 * The "Deploy" button of each notebook's toolbar (`data-testid="hubserve-deploy-toolbar"`):
 * the `hubserve:deploy` command (its button carries `data-command="hubserve:deploy"`),
 * acting on the notebook it belongs to (clicking in a notebook makes it the current one).
 */
class DeployButtonExtension
  implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel>
{
  constructor(private readonly app: JupyterFrontEnd) {}

  createNew(panel: NotebookPanel): IDisposable {
    const button = new CommandToolbarButton({
      commands: this.app.commands,
      id: CommandIDs.deploy,
      label: 'Deploy',
      caption: 'Deploy this model (Model Serving)'
    });
    button.node.dataset.testid = 'hubserve-deploy-toolbar';
    if (!panel.toolbar.insertAfter('cellType', 'hubserve-deploy', button)) {
      panel.toolbar.insertItem(10, 'hubserve-deploy', button);
    }
    return button;
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The hubserve "Model Serving" side panel: models, deployments, endpoints.',
  autoStart: true,
  optional: [ICommandPalette, INotebookTracker, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    restorer: ILayoutRestorer | null
  ) => {
    const model = new HubserveModel();
    const panel = new HubservePanel(model);
    app.shell.add(panel, 'left', { rank: 850 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'Open Model Serving',
      caption: 'Show the Model Serving panel: models, deployments, endpoints',
      icon: hubserveIcon,
      execute: () => {
        app.shell.activateById(panel.id);
      }
    });

    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Model Serving',
      caption: 'Reload models and deployments',
      execute: () => model.refresh({ models: true, config: true })
    });

    app.commands.addCommand(CommandIDs.deploy, {
      label: 'Deploy this model',
      caption:
        'Open the deploy form, with the newest version of the model named like this notebook',
      icon: hubserveIcon,
      execute: async args => {
        const path =
          typeof args.path === 'string' ? args.path : (notebooks?.currentWidget?.context.path ?? '');
        app.shell.activateById(panel.id);
        await model.ensureLoaded();
        const found = (model.state.models ?? []).flatMap(entry =>
          entry.detail ? [entry.detail] : []
        );
        const ref = path ? pickVersionForNotebook(found, path, model.state.me?.name) : null;
        model.openDeployForm(ref);
      }
    });

    if (palette) {
      for (const command of [CommandIDs.open, CommandIDs.refresh, CommandIDs.deploy]) {
        palette.addItem({ command, category: CATEGORY });
      }
    }

    if (notebooks) {
      app.docRegistry.addWidgetExtension('Notebook', new DeployButtonExtension(app));
      app.contextMenu.addItem({
        command: CommandIDs.deploy,
        selector: '.jp-Notebook',
        rank: 100
      });
    }
  }
};

export default plugin;
