import { LabIcon } from '@jupyterlab/ui-components';

/** A model (the cube) served over the network (the waves): the panel's icon. */
const SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2 3.5 6.5v9L12 20l8.5-4.5v-9L12 2Zm0 2.26 5.9 3.12L12 10.5 6.1 7.38 12 4.26ZM5.5 9.05l5.5 2.9v5.8l-5.5-2.9v-5.8Zm7.5 8.7v-5.8l5.5-2.9v5.8l-5.5 2.9Z"/>
    <path d="M2 19.5c1.5 0 1.5 1.5 3 1.5s1.5-1.5 3-1.5 1.5 1.5 3 1.5 1.5-1.5 3-1.5 1.5 1.5 3 1.5 1.5-1.5 3-1.5v1.5c-1.5 0-1.5 1.5-3 1.5s-1.5-1.5-3-1.5-1.5 1.5-3 1.5-1.5-1.5-3-1.5-1.5 1.5-3 1.5-1.5-1.5-3-1.5Z"/>
  </g>
</svg>`;

export const hubserveIcon = new LabIcon({ name: 'hubserve:model-serving', svgstr: SVG });
