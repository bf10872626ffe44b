import { defineConfig } from 'vitest/config';

// Unit tests of the data layer (src/api.ts, src/model.ts, src/snippets.ts, src/form.ts).
// They run in Node: fetch, Request, Headers and Response are Node's own, and the only
// thing replaced is the `fetch` the JupyterLab ServerConnection settings call.
export default defineConfig({
  test: {
    environment: 'node',
    include: ['test/**/*.test.ts'],
    server: {
      deps: {
        // JupyterLab and Lumino publish ES modules without "type": "module".
        inline: [/@jupyterlab\//, /@lumino\//]
      }
    }
  }
});
