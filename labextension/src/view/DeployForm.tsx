import * as React from 'react';

import type { IVersionRecord } from '../api';
import {
  type DeployFormErrors,
  type IDeployFormValues,
  formatRef,
  initialValues,
  parseRef,
  validateDeployForm
} from '../form';
import type { HubserveModel, IDeployFormState, IModelEntry } from '../model';

interface IOption {
  value: string;
  label: string;
}

/** Every pushed version, newest first per model, as select options. */
function versionOptions(models: IModelEntry[] | null, extra: string | null): IOption[] {
  const options: IOption[] = [];
  for (const model of models ?? []) {
    for (const version of model.detail?.versions ?? []) {
      const value = formatRef(version);
      const tags = version.tags.length ? ` (${version.tags.join(', ')})` : '';
      options.push({ value, label: `${value}${tags}` });
    }
  }
  if (extra && !options.some(option => option.value === extra)) {
    options.unshift({ value: extra, label: extra });
  }
  return options;
}

type ManifestState =
  | { status: 'none' }
  | { status: 'loading' }
  | { status: 'loaded'; record: IVersionRecord }
  | { status: 'error'; message: string };

function FieldError(props: { field: keyof IDeployFormValues; errors: DeployFormErrors }) {
  const message = props.errors[props.field];
  if (!message) {
    return null;
  }
  return (
    <div className="jp-Hubserve-fieldError" data-testid={`hubserve-deploy-error-${props.field}`}>
      {message}
    </div>
  );
}

/** The deploy form: a version, a name, replicas, batching and who may call it. */
export function DeployForm(props: {
  model: HubserveModel;
  form: IDeployFormState;
  models: IModelEntry[] | null;
}): JSX.Element {
  const { model, form, models } = props;
  const initialRef = form.ref ? formatRef(form.ref) : null;
  const [values, setValues] = React.useState<IDeployFormValues>(() => initialValues(form.ref));
  const [errors, setErrors] = React.useState<DeployFormErrors>({});
  const [submitting, setSubmitting] = React.useState(false);
  const [manifest, setManifest] = React.useState<ManifestState>({ status: 'none' });

  // A new opening of the form (another "Deploy" click) starts over.
  React.useEffect(() => {
    setValues(initialValues(form.ref));
    setErrors({});
  }, [form.nonce]);

  const options = versionOptions(models, initialRef);

  // Without a preselected version, take the first one listed (the newest of the first model).
  React.useEffect(() => {
    if (!values.model && options.length) {
      const ref = parseRef(options[0].value);
      setValues(v => ({ ...v, model: options[0].value, name: v.name || (ref?.name ?? '') }));
    }
  }, [values.model, options.length]);

  // The selected version's manifest says which APIs are batchable.
  React.useEffect(() => {
    const ref = parseRef(values.model);
    if (!ref) {
      setManifest({ status: 'none' });
      return;
    }
    let current = true;
    setManifest({ status: 'loading' });
    model.versionRecord(ref.owner, ref.name, ref.version).then(
      record => current && setManifest({ status: 'loaded', record }),
      (error: Error) => current && setManifest({ status: 'error', message: error.message })
    );
    return () => {
      current = false;
    };
  }, [values.model]);

  const batchable =
    manifest.status === 'loaded'
      ? manifest.record.manifest.apis.filter(api => api.batchable)
      : [];
  const batchingDefaults = batchable[0]?.batching;
  const batchingEnabled = batchable.length > 0;

  const set =
    (field: keyof IDeployFormValues) =>
    (event: React.ChangeEvent<HTMLInputElement | HTMLSelectElement>): void => {
      const target = event.target;
      const value =
        target instanceof HTMLInputElement && target.type === 'checkbox' ? target.checked : target.value;
      setValues(v => {
        const next = { ...v, [field]: value };
        if (field === 'model') {
          // keep the name in step with the model while it is the default one
          const before = parseRef(v.model);
          const after = parseRef(String(value));
          if (after && (!v.name || (before && v.name === before.name))) {
            next.name = after.name;
          }
        }
        return next;
      });
    };

  const submit = async (event: React.FormEvent): Promise<void> => {
    event.preventDefault();
    const result = validateDeployForm(
      values,
      batchable.map(api => api.name)
    );
    setErrors(result.errors);
    if (!result.request) {
      return;
    }
    setSubmitting(true);
    try {
      await model.deploy(result.request);
    } finally {
      setSubmitting(false);
    }
  };

  return (
    <form
      className="jp-Hubserve-deployForm"
      data-testid="hubserve-deploy-form"
      onSubmit={event => void submit(event)}
      noValidate
    >
      <div className="jp-Hubserve-formTitle">Deploy a model version</div>
      <label className="jp-Hubserve-field">
        <span>Version</span>
        <select
          className="jp-mod-styled"
          data-testid="hubserve-deploy-model"
          value={values.model}
          onChange={set('model')}
        >
          {options.length === 0 && <option value="">no pushed model versions</option>}
          {options.map(option => (
            <option key={option.value} value={option.value}>
              {option.label}
            </option>
          ))}
        </select>
        <FieldError field="model" errors={errors} />
      </label>
      {manifest.status === 'error' && (
        <div className="jp-Hubserve-hint" data-testid="hubserve-deploy-manifest-error">
          Could not read this version's APIs: {manifest.message}
        </div>
      )}
      <label className="jp-Hubserve-field">
        <span>Name</span>
        <input
          className="jp-mod-styled"
          data-testid="hubserve-deploy-name"
          value={values.name}
          placeholder="the model's name"
          onChange={set('name')}
        />
        <FieldError field="name" errors={errors} />
      </label>
      <label className="jp-Hubserve-field">
        <span>Replicas</span>
        <input
          className="jp-mod-styled"
          data-testid="hubserve-deploy-replicas"
          type="number"
          min={0}
          step={1}
          value={values.replicas}
          onChange={set('replicas')}
        />
        <FieldError field="replicas" errors={errors} />
      </label>
      <fieldset className="jp-Hubserve-fieldset" disabled={!batchingEnabled}>
        <legend>
          Batching
          {manifest.status === 'loaded' &&
            (batchingEnabled
              ? ` (${batchable.map(api => api.name).join(', ')})`
              : ': no batchable API in this version')}
        </legend>
        <label className="jp-Hubserve-field">
          <span>Max batch size</span>
          <input
            className="jp-mod-styled"
            data-testid="hubserve-deploy-max-batch-size"
            type="number"
            min={1}
            step={1}
            value={values.maxBatchSize}
            placeholder={batchingDefaults ? String(batchingDefaults.max_batch_size) : ''}
            onChange={set('maxBatchSize')}
          />
          <FieldError field="maxBatchSize" errors={errors} />
        </label>
        <label className="jp-Hubserve-field">
          <span>Max latency (ms)</span>
          <input
            className="jp-mod-styled"
            data-testid="hubserve-deploy-max-latency"
            type="number"
            min={0}
            step="any"
            value={values.maxLatency}
            placeholder={batchingDefaults ? String(batchingDefaults.max_latency_ms) : ''}
            onChange={set('maxLatency')}
          />
          <FieldError field="maxLatency" errors={errors} />
        </label>
      </fieldset>
      <fieldset className="jp-Hubserve-fieldset">
        <legend>Who may call it (besides you and admins)</legend>
        <label className="jp-Hubserve-field">
          <span>Users</span>
          <input
            className="jp-mod-styled"
            data-testid="hubserve-deploy-users"
            value={values.users}
            placeholder="alice, bob"
            onChange={set('users')}
          />
          <FieldError field="users" errors={errors} />
        </label>
        <label className="jp-Hubserve-field">
          <span>Groups</span>
          <input
            className="jp-mod-styled"
            data-testid="hubserve-deploy-groups"
            value={values.groups}
            placeholder="astro"
            onChange={set('groups')}
          />
          <FieldError field="groups" errors={errors} />
        </label>
        <label className="jp-Hubserve-checkbox">
          <input
            type="checkbox"
            data-testid="hubserve-deploy-public"
            checked={values.public}
            onChange={set('public')}
          />
          <span>Every hub user</span>
        </label>
      </fieldset>
      <div className="jp-Hubserve-buttons">
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-mod-reject"
          data-testid="hubserve-deploy-cancel"
          onClick={() => model.closeDeployForm()}
        >
          Cancel
        </button>
        <button
          type="submit"
          className="jp-Button jp-mod-styled jp-mod-accept"
          data-testid="hubserve-deploy-submit"
          disabled={submitting}
        >
          {submitting ? 'Deploying…' : 'Deploy'}
        </button>
      </div>
    </form>
  );
}
