// Runs pieces of edge/towerops-edge.js in Node on inputs from test_edge_client.py and prints
// what they return as JSON (the expectations live in the Python test).
// usage: node client_checks.mjs <inputs.json>
import fs from 'node:fs';
import {
  EdgeError, buildUserInput, checkCompatible, parseNpy, parseSemver, project, sha256Hex, topK,
} from '../../edge/towerops-edge.js';

const inputs = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = {};
const f32 = (a) => Float32Array.from(a.flat());
const refusal = (fn) => {
  try { fn(); return null; } catch (exc) { return { name: exc.name, code: exc.code, message: exc.message }; }
};

out.topk = inputs.topk.map(({ matrix, d, query, k, exclude }) => {
  const mask = exclude ? Uint8Array.from(exclude) : null;
  return topK(f32(matrix), d, query, k, mask);
});
out.lowrank = inputs.lowrank.map(({ items, basis, r, u, k }) => topK(f32(items), r, project(u, f32(basis), r), k, null));
out.npy = inputs.npy.map((path) => {
  const { data, shape } = parseNpy(new Uint8Array(fs.readFileSync(path)), path);
  return { shape, values: Array.from(data, (v) => Number(v)), type: data.constructor.name };
});
out.npy_bad = refusal(() => parseNpy(new TextEncoder().encode('not a numpy file'), 'x.npy'));
out.user_input = inputs.user_input.map(({ prep, liked, noped }) => {
  const arrays = Object.fromEntries(Object.entries(prep.arrays).map(([k, v]) => [k, v.csr
    ? { csr: { indptr: Int32Array.from(v.csr[0]), indices: Int32Array.from(v.csr[1]), values: f32(v.csr[2]) }, shape: v.shape }
    : { data: f32(v.values), shape: v.shape }]));
  return Array.from(buildUserInput({ liked, noped }, { ...prep, arrays }));
});
out.compatible = inputs.compatible.map(([manifest, held]) => refusal(() => checkCompatible(manifest, held)));
out.semver = parseSemver('v1.2.3');
out.semver_bad = refusal(() => parseSemver('latest', 'manifest version'));
out.sha256 = await sha256Hex(new TextEncoder().encode(inputs.sha256));
out.error_class = new EdgeError('tampered', 'x') instanceof Error;
process.stdout.write(JSON.stringify(out));
