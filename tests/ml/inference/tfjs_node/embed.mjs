// Load TF.js layers models exported by ml/tfjs.py with @tensorflow/tfjs (pure JS CPU backend)
// through tfjs's own HTTP loader (model.json + weightsManifest shards), and print embeddings.
// usage: node embed.mjs <export_dir> <inputs.json>
//   inputs.json: {"user_tower": [[...], ...], "item_tower": [[...], ...]}
// stdout: {"backend": "...", "tfjs": "...", "user_tower": [[...]], "item_tower": [[...]], "layers": {...}}
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';

const [exportDir, inputsPath] = process.argv.slice(2);
if (!exportDir || !inputsPath) {
  console.error('usage: node embed.mjs <export_dir> <inputs.json>');
  process.exit(2);
}
const root = path.resolve(exportDir);
const server = http.createServer((req, res) => {
  const file = path.join(root, decodeURIComponent(new URL(req.url, 'http://x').pathname));
  if (!file.startsWith(root) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404); res.end(); return;
  }
  res.writeHead(200, {'Content-Type': file.endsWith('.json') ? 'application/json' : 'application/octet-stream'});
  fs.createReadStream(file).pipe(res);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}`;
try {
  await tf.setBackend('cpu');
  const inputs = JSON.parse(fs.readFileSync(inputsPath, 'utf8'));
  const out = {backend: tf.getBackend(), tfjs: tf.version.tfjs, layers: {}};
  for (const tower of Object.keys(inputs)) {
    const model = await tf.loadLayersModel(`${base}/${tower}/model.json`);
    out.layers[tower] = model.layers.map((l) => l.getClassName());
    const x = tf.tensor2d(inputs[tower], undefined, 'float32');
    const y = model.predict(x);
    out[tower] = await y.array();
  }
  process.stdout.write(JSON.stringify(out));
} finally {
  server.close();
}
