// The workstation is built into dist/ and served by `medsight serve` under /workstation/ (relative asset paths,
// so the same build works behind any prefix). Cornerstone's DICOM image loader decodes in module web workers.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 8000, target: 'es2022' },
  worker: { format: 'es' },
  optimizeDeps: { exclude: ['@cornerstonejs/dicom-image-loader'], include: ['dicom-parser'] },
});
