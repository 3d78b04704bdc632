// Fixed output names, so the dashboard's asset table (src/web.rs) never changes with a rebuild,
// and no inline script or style, so the page runs under its strict Content-Security-Policy.
import { defineConfig } from 'vite';
import preact from '@preact/preset-vite';

export default defineConfig({
  plugins: [preact()],
  build: {
    outDir: process.env.DASHBOARD_UI_OUT_DIR || 'dist',
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    rollupOptions: {
      output: {
        entryFileNames: 'assets/app.js',
        chunkFileNames: 'assets/[name].js',
        assetFileNames: 'assets/app[extname]',
      },
    },
  },
});
