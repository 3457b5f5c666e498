// towerops edge client: top-k recommendations in the browser (or Node 20+) from what
// `towerops deploy` wrote to storage, with TensorFlow.js for the user tower.
//
//   import { EdgeRecommender } from './towerops-edge.js';
//   const rec = await EdgeRecommender.load({ storage: 'http://127.0.0.1:8765/store', model: 'two_tower' });
//   const { items } = rec.recommend({ liked: ['i1', 'i7'], noped: ['i3'], topK: 10 });
//
// Trust chain: `<model>/production.json` names the version folder and the sha256 of its
// manifest.json; the manifest lists every file with its size and sha256. Each file this
// client uses is checked (size, then sha256 with Web Crypto) before it is parsed, and the
// user tower is built from those verified bytes (tf.io.fromMemory), never fetched twice.
// A file that does not match is refused with an EdgeError naming it.
import * as tf from '@tensorflow/tfjs';
import { EDGE_FORMAT, RECIPES, buildUserInput } from './user-input.js';

export { buildUserInput };
export const CLIENT_VERSION = '1.0.0';
export const MANIFEST_FORMAT = 1;

/** Every refusal of this client: `code` says which kind, the message says what to fix. */
export class EdgeError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.name = 'EdgeError';
    this.code = code; // network | http | missing | tampered | format | incompatible | unknown_item | no_history | bad_request
    this.details = details;
  }
}

const now = () => (globalThis.performance ? performance.now() : Date.now());

// ------------------------------------------------------------------------------ storage
/**
 * Where objects come from. `storage` is one of:
 *  - a base URL string that keys are appended to: the local backend over loopback
 *    (`http://127.0.0.1:8765/store`), a public Supabase bucket
 *    (`https://<ref>.supabase.co/storage/v1/object/public/<bucket>`);
 *  - `{ base, headers }` for an authenticated base (Supabase `/object/authenticated/<bucket>`
 *    with `Authorization: Bearer <user jwt>` and `apikey`);
 *  - `{ url: (key) => string | Promise<string> }` (or the function itself) returning one URL per
 *    object key: Supabase signed URLs, S3 presigned URLs.
 */
export function resolveStorage(storage) {
  if (typeof storage === 'function') return { url: storage, headers: {}, describe: 'signed URLs' };
  if (typeof storage === 'string') storage = { base: storage };
  if (!storage || typeof storage !== 'object') {
    throw new EdgeError('bad_request', 'storage must be a base URL, {base, headers} or {url: key => signedUrl}');
  }
  if (typeof storage.url === 'function') return { url: storage.url, headers: storage.headers || {}, describe: 'signed URLs' };
  if (typeof storage.base !== 'string' || !storage.base) {
    throw new EdgeError('bad_request', 'storage.base must be the URL of the bucket, e.g. http://127.0.0.1:8765/store');
  }
  const base = storage.base.replace(/\/+$/, '');
  const enc = (key) => key.split('/').map(encodeURIComponent).join('/');
  return { url: (key) => `${base}/${enc(key)}`, headers: storage.headers || {}, describe: base };
}

async function fetchBytes(store, key) {
  let url;
  try {
    url = await store.url(key);
  } catch (exc) {
    throw new EdgeError('network', `no URL for ${key}: ${exc.message}; the signing function must return a URL for every key of the manifest`);
  }
  let res;
  try {
    res = await fetch(url, { headers: store.headers, cache: 'no-store', credentials: 'omit' });
  } catch (exc) {
    throw new EdgeError('network', `fetching ${key} failed (${exc.message}); check the storage URL (${store.describe}), ` +
      'that the server is up, and that it allows this page\'s origin (CORS)');
  }
  if (!res.ok) {
    const code = res.status === 404 || res.status === 400 ? 'missing' : 'http';
    throw new EdgeError(code, `${key}: HTTP ${res.status} from ${store.describe}; ` +
      (code === 'missing' ? 'the object is not there (is the model deployed? is the bucket public or the URL signed?)'
        : 'check the storage credentials and URL'), { key, status: res.status });
  }
  return new Uint8Array(await res.arrayBuffer());
}

export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle) {
    throw new EdgeError('format', 'Web Crypto (crypto.subtle) is unavailable: browsers offer it only in secure contexts; ' +
      'serve the page over https or from http://localhost / http://127.0.0.1');
  }
  const digest = new Uint8Array(await subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

function parseJson(bytes, key) {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (exc) {
    throw new EdgeError('format', `${key} is not valid JSON (${exc.message})`);
  }
}

// ------------------------------------------------------------------------------ semver
export function parseSemver(text, what = 'version') {
  const m = /^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$/.exec(String(text || ''));
  if (!m) throw new EdgeError('format', `${what} ${JSON.stringify(text)} is not a semantic version like v1.2.0`);
  return { major: +m[1], minor: +m[2], patch: +m[3], text: `${m[1]}.${m[2]}.${m[3]}` };
}

/** Refuse a manifest from another embedding space (another major) than embeddings already held. */
export function checkCompatible(manifestSemver, heldSemver) {
  const m = parseSemver(manifestSemver, 'manifest version');
  const h = parseSemver(heldSemver, 'version of the held embeddings');
  if (m.major !== h.major) {
    throw new EdgeError('incompatible', `manifest v${m.text} is major ${m.major} but the item embeddings held are ` +
      `v${h.text} (major ${h.major}): a new major is a new embedding space, its user tower must not be scored ` +
      `against the held embeddings. Drop them and load v${m.text} whole (EdgeRecommender.load).`,
    { manifest: m.text, held: h.text });
  }
  return m;
}

// ------------------------------------------------------------------------------ .npy
const NPY_DTYPES = { '<f4': Float32Array, '<i4': Int32Array, '<i8': BigInt64Array, '<f8': Float64Array, '|i1': Int8Array, '|u1': Uint8Array };

/** A little-endian, C-order NumPy .npy file as { data: TypedArray, shape }. */
export function parseNpy(bytes, key) {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) throw new EdgeError('format', `${key} is not a .npy file`);
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder('latin1').decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shapeM = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeM) throw new EdgeError('format', `${key}: unreadable .npy header ${header.trim()}`);
  const Type = NPY_DTYPES[descr[1]];
  if (!Type) throw new EdgeError('format', `${key}: dtype ${descr[1]} is not supported (little-endian float32/64, int8/32/64)`);
  if (fortran[1] === 'True') throw new EdgeError('format', `${key} is Fortran-ordered; save it C-ordered (np.ascontiguousarray)`);
  const shape = shapeM[1].split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = bytes.byteOffset + start + headerLen;
  const need = count * Type.BYTES_PER_ELEMENT;
  if (bytes.byteLength - start - headerLen !== need) {
    throw new EdgeError('format', `${key}: header says ${JSON.stringify(shape)} ${descr[1]} (${need} bytes) but ${bytes.byteLength - start - headerLen} bytes follow`);
  }
  const data = offset % Type.BYTES_PER_ELEMENT === 0
    ? new Type(bytes.buffer, offset, count)
    : new Type(bytes.slice(start + headerLen).buffer, 0, count);
  return { data, shape };
}

/** A raw little-endian array file described by edge.json ({path, dtype, shape}). */
export function parseRaw(bytes, spec) {
  const Type = { float32: Float32Array, int32: Int32Array }[spec.dtype];
  if (!Type) throw new EdgeError('format', `${spec.path}: dtype ${spec.dtype} is not supported (float32, int32)`);
  const count = spec.shape.reduce((a, b) => a * b, 1);
  if (bytes.byteLength !== count * Type.BYTES_PER_ELEMENT) {
    throw new EdgeError('format', `${spec.path}: ${bytes.byteLength} bytes, edge.json describes ${JSON.stringify(spec.shape)} ${spec.dtype}`);
  }
  const data = bytes.byteOffset % Type.BYTES_PER_ELEMENT === 0
    ? new Type(bytes.buffer, bytes.byteOffset, count) : new Type(bytes.slice().buffer);
  return { data, shape: spec.shape };
}

// ------------------------------------------------------------------------------ ranking
/**
 * Indices of the k highest scores of `matrix @ query` (rows of width d), best first, ties to the
 * lower index (as ml.inference.scoring.top_k_indices), skipping rows where exclude[row] is 1.
 */
export function topK(matrix, d, query, k, exclude) {
  const n = matrix.length / d;
  const heapIdx = new Int32Array(k);
  const heapScore = new Float64Array(k);
  let size = 0;
  // min-heap on (score, -index): the root is the worst kept item
  const worse = (sa, ia, sb, ib) => sa < sb || (sa === sb && ia > ib);
  const siftDown = (i) => {
    for (;;) {
      const l = 2 * i + 1; const r = l + 1; let m = i;
      if (l < size && worse(heapScore[l], heapIdx[l], heapScore[m], heapIdx[m])) m = l;
      if (r < size && worse(heapScore[r], heapIdx[r], heapScore[m], heapIdx[m])) m = r;
      if (m === i) return;
      const ts = heapScore[i]; heapScore[i] = heapScore[m]; heapScore[m] = ts;
      const ti = heapIdx[i]; heapIdx[i] = heapIdx[m]; heapIdx[m] = ti;
      i = m;
    }
  };
  const q = Float64Array.from(query);
  const d4 = d - (d % 4);
  for (let row = 0, base = 0; row < n; row++, base += d) {
    if (exclude && exclude[row]) continue;
    let s0 = 0; let s1 = 0; let s2 = 0; let s3 = 0;
    let j = 0;
    for (; j < d4; j += 4) {
      s0 += matrix[base + j] * q[j];
      s1 += matrix[base + j + 1] * q[j + 1];
      s2 += matrix[base + j + 2] * q[j + 2];
      s3 += matrix[base + j + 3] * q[j + 3];
    }
    for (; j < d; j++) s0 += matrix[base + j] * q[j];
    const s = (s0 + s1) + (s2 + s3);
    if (!Number.isFinite(s)) continue;
    if (size < k) {
      let i = size++;
      heapScore[i] = s; heapIdx[i] = row;
      while (i > 0) { // sift up
        const p = (i - 1) >> 1;
        if (!worse(heapScore[i], heapIdx[i], heapScore[p], heapIdx[p])) break;
        const ts = heapScore[i]; heapScore[i] = heapScore[p]; heapScore[p] = ts;
        const ti = heapIdx[i]; heapIdx[i] = heapIdx[p]; heapIdx[p] = ti;
        i = p;
      }
    } else if (k > 0 && worse(heapScore[0], heapIdx[0], s, row)) {
      heapScore[0] = s; heapIdx[0] = row;
      siftDown(0);
    }
  }
  const out = [];
  for (let i = 0; i < size; i++) out.push([heapIdx[i], heapScore[i]]);
  out.sort((a, b) => (b[1] - a[1]) || (a[0] - b[0]));
  return out;
}

/** u @ basis: a user embedding (d) in the catalog's low-rank basis (basis: d x r, row-major). */
export function project(u, basis, r) {
  const q = new Float64Array(r);
  for (let i = 0; i < u.length; i++) {
    const ui = u[i];
    const base = i * r;
    for (let j = 0; j < r; j++) q[j] += ui * basis[base + j];
  }
  return q;
}

// ------------------------------------------------------------------------------ loading
async function loadVersion(store, model, opts = {}) {
  const t0 = now();
  const timings = {};
  const pointerKey = `${model}/production.json`;
  const pointer = parseJson(await fetchBytes(store, pointerKey), pointerKey);
  if (typeof pointer.manifest_path !== 'string' || typeof pointer.manifest_sha256 !== 'string') {
    throw new EdgeError('format', `${pointerKey} names no manifest (manifest_path, manifest_sha256); redeploy with towerops deploy`);
  }
  const manifestBytes = await fetchBytes(store, pointer.manifest_path);
  const manifestSha = await sha256Hex(manifestBytes);
  if (manifestSha !== pointer.manifest_sha256) {
    throw new EdgeError('tampered', `${pointer.manifest_path} has sha256 ${manifestSha.slice(0, 12)}… but ${pointerKey} ` +
      `records ${pointer.manifest_sha256.slice(0, 12)}…: refusing it. Redeploy the version (towerops deploy) or restore the file.`,
    { key: pointer.manifest_path });
  }
  const manifest = parseJson(manifestBytes, pointer.manifest_path);
  if (manifest.format !== MANIFEST_FORMAT || typeof manifest.files !== 'object') {
    throw new EdgeError('format', `${pointer.manifest_path}: manifest format ${manifest.format} is not ${MANIFEST_FORMAT}; use a client matching this towerops`);
  }
  const semver = parseSemver(manifest.semver || manifest.version, `${pointer.manifest_path} version`);
  if (opts.heldSemver) checkCompatible(semver.text, opts.heldSemver);
  timings.manifest_ms = now() - t0;

  const prefix = pointer.manifest_path.replace(/manifest\.json$/, '');
  let bytesFetched = manifestBytes.byteLength;
  const verified = async (rel) => {
    const info = manifest.files[rel];
    if (!info) {
      throw new EdgeError('missing', `${prefix}${rel} is not in ${pointer.manifest_path}; the deployment lacks it ` +
        '(redeploy with storage.tfjs: true and tfjs/ in storage.include)', { key: prefix + rel });
    }
    const bytes = await fetchBytes(store, prefix + rel);
    bytesFetched += bytes.byteLength;
    if (bytes.byteLength !== info.size) {
      throw new EdgeError('tampered', `${prefix}${rel}: ${bytes.byteLength} bytes, the manifest records ${info.size}: ` +
        'refusing a file that is not the deployed one. Redeploy the version (towerops deploy) or restore the file.', { key: prefix + rel });
    }
    const sha = await sha256Hex(bytes);
    if (sha !== info.sha256) {
      throw new EdgeError('tampered', `${prefix}${rel}: sha256 ${sha.slice(0, 12)}… differs from the manifest's ` +
        `${info.sha256.slice(0, 12)}…: refusing a file that is not the deployed one. Redeploy the version ` +
        '(towerops deploy) or restore the file.', { key: prefix + rel });
    }
    return bytes;
  };

  const tFetch = now();
  const edgeRel = 'tfjs/edge.json';
  if (!manifest.files[edgeRel]) {
    throw new EdgeError('missing', `${prefix}${edgeRel} is not in the manifest: this version was deployed without the edge ` +
      'export; redeploy it with this towerops (towerops deploy writes tfjs/edge.json)', { key: prefix + edgeRel });
  }
  const edge = parseJson(await verified(edgeRel), prefix + edgeRel);
  if (edge.format !== EDGE_FORMAT || !RECIPES.includes(edge.recipe)) {
    throw new EdgeError('format', `${prefix}${edgeRel}: format ${edge.format} / recipe ${edge.recipe} is not one this client ` +
      `builds (format ${EDGE_FORMAT}, recipes ${RECIPES.join(', ')}); update edge/towerops-edge.js from this towerops`);
  }
  if (manifest.feature_schema_hash && edge.feature_schema_hash !== manifest.feature_schema_hash) {
    throw new EdgeError('format', `${prefix}${edgeRel} was exported for feature schema ${edge.feature_schema_hash}, the ` +
      `manifest is ${manifest.feature_schema_hash}; re-export and redeploy`);
  }
  const towerRel = edge.user_tower || 'tfjs/user_tower/model.json';
  const towerDir = towerRel.replace(/[^/]*$/, '');
  const modelJsonP = verified(towerRel).then((b) => parseJson(b, prefix + towerRel));
  const arrayJobs = Object.entries(edge.arrays || {}).map(async ([name, spec]) => {
    if (spec.format === 'csr') { // mostly-zero rows (one-hot columns): indptr, indices, values
      const [indptr, indices, values] = await Promise.all([spec.indptr, spec.indices, spec.values]
        .map((part) => verified(part.path).then((b) => parseRaw(b, part))));
      if (indptr.data.length !== spec.shape[0] + 1 || indices.data.length !== values.data.length) {
        throw new EdgeError('format', `${prefix}${spec.indptr.path}: CSR parts do not fit a ${JSON.stringify(spec.shape)} matrix`);
      }
      return [name, { csr: { indptr: indptr.data, indices: indices.data, values: values.data }, shape: spec.shape }];
    }
    const bytes = await verified(spec.path);
    return [name, spec.path.endsWith('.npy') ? parseNpy(bytes, prefix + spec.path) : parseRaw(bytes, spec)];
  });
  const idsRel = edge.item_ids || 'embeddings/item_ids.json';
  const embRel = edge.item_embeddings || 'embeddings/item_embeddings.npy';
  const popRel = 'embeddings/item_popularity.npy';
  const idsP = verified(idsRel).then((b) => parseJson(b, prefix + idsRel));
  // the catalog: in its exact low-rank basis when the export has one (n x rank floats instead of n x d)
  const scoring = edge.scoring || { kind: 'full' };
  const lowrank = scoring.kind === 'lowrank' && opts.lowrank !== false;
  const raw = (spec) => verified(spec.path).then((b) => parseRaw(b, spec));
  const embP = lowrank
    ? Promise.all([raw(scoring.items), raw(scoring.basis)]).then(([items, basis]) => ({ ...items, basis }))
    : verified(embRel).then((b) => parseNpy(b, prefix + embRel));
  const popP = manifest.files[popRel] ? verified(popRel).then((b) => parseNpy(b, prefix + popRel)) : Promise.resolve(null);
  // all in flight at once; the first failure is reported by the awaits below, the rest are not "unhandled"
  for (const pending of [modelJsonP, idsP, embP, popP, ...arrayJobs]) pending.catch(() => {});
  const modelJson = await modelJsonP;
  const shardRels = [];
  for (const group of modelJson.weightsManifest || []) {
    for (const p of group.paths) shardRels.push(towerDir + p);
  }
  const shards = await Promise.all(shardRels.map(verified));
  const [ids, emb, arrays, pop] = await Promise.all([idsP, embP, Promise.all(arrayJobs), popP]);
  timings.fetch_verify_ms = now() - tFetch;

  const tModel = now();
  const total = shards.reduce((a, s) => a + s.byteLength, 0);
  const weightData = new Uint8Array(total);
  let off = 0;
  for (const s of shards) { weightData.set(s, off); off += s.byteLength; }
  const weightSpecs = (modelJson.weightsManifest || []).flatMap((g) => g.weights);
  let tower;
  try {
    tower = await tf.loadLayersModel(tf.io.fromMemory({ modelTopology: modelJson.modelTopology, weightSpecs, weightData: weightData.buffer }));
  } catch (exc) {
    throw new EdgeError('format', `${prefix}${towerRel} does not load as a TF.js layers model (${exc.message})`);
  }
  const inputDim = tower.inputs[0].shape[1];
  const outputDim = tower.outputs[0].shape[1];
  const embShape = emb.shape;
  const what = lowrank ? scoring.items.path : embRel;
  if (embShape.length !== 2 || embShape[0] !== ids.length) {
    throw new EdgeError('format', `${prefix}${what} has shape ${JSON.stringify(embShape)} but ${idsRel} lists ${ids.length} ids`);
  }
  if (inputDim !== edge.user_dim) {
    throw new EdgeError('format', `${prefix}${towerRel} takes ${inputDim}-d inputs, edge.json builds ${edge.user_dim}-d ones; re-export and redeploy`);
  }
  const itemDim = lowrank ? emb.basis.shape[0] : embShape[1];
  if (outputDim !== itemDim || (lowrank && emb.basis.shape[1] !== embShape[1])) {
    throw new EdgeError('format', `the user tower outputs ${outputDim}-d embeddings, the items are ${itemDim}-d (${what})`);
  }
  timings.model_ms = now() - tModel;
  timings.load_ms = now() - t0;
  return {
    pointer, manifest, semver, prefix, edge, tower, ids, timings, bytesFetched, popularity: pop && pop.data,
    catalog: { matrix: emb.data, width: embShape[1], basis: lowrank ? emb.basis.data : null },
    dim: outputDim, prep: { ...edge, arrays: Object.fromEntries(arrays), nItems: ids.length },
  };
}

// ------------------------------------------------------------------------------ the recommender
export class EdgeRecommender {
  /**
   * Load the production version of `model` from `storage` (see resolveStorage). Options:
   * `backend` (TF.js backend for the user tower, default 'cpu': one row is fastest there and exact),
   * `heldSemver` (refuse a manifest of another major than embeddings the app already holds),
   * `lowrank` (default true: score in the catalog's exact low-rank basis when the export has one;
   * false downloads the full n x d item embeddings).
   */
  static async load({ storage, model, backend = 'cpu', heldSemver, lowrank = true } = {}) {
    if (!model || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(model)) {
      throw new EdgeError('bad_request', `model ${JSON.stringify(model)} is not a model name (letters, digits, _ . -)`);
    }
    if (backend && tf.getBackend() !== backend) {
      const ok = await tf.setBackend(backend);
      if (!ok) throw new EdgeError('bad_request', `TF.js backend ${backend} is not available here; use 'cpu'`);
    }
    await tf.ready();
    const store = resolveStorage(storage);
    const state = await loadVersion(store, model, { heldSemver, lowrank });
    return new EdgeRecommender(store, model, state, { lowrank });
  }

  constructor(store, model, state, options = {}) {
    this.store = store;
    this.model = model;
    this.options = options;
    this._set(state);
  }

  _set(state) {
    if (this.state && this.state.tower !== state.tower) this.state.tower.dispose();
    this.state = state;
    this.index = new Map(state.ids.map((id, i) => [String(id), i]));
  }

  get version() { return this.state.manifest.version; }
  get semver() { return this.state.semver.text; }
  get itemIds() { return this.state.ids; }
  get nItems() { return this.state.ids.length; }
  get dim() { return this.state.dim; }
  /** 'full' (n x d embeddings) or 'lowrank (r)' (the catalog in its exact rank-r basis). */
  get scoring() { return this.state.catalog.basis ? `lowrank (${this.state.catalog.width})` : 'full'; }
  get timings() { return this.state.timings; }
  get bytesFetched() { return this.state.bytesFetched; }
  get backend() { return tf.getBackend(); }

  /**
   * Re-read production.json; load a new version of the same major (same embedding space) and
   * swap to it. A new major is refused (EdgeError 'incompatible') and the current one is kept.
   * Returns whether the version changed.
   */
  async refresh() {
    const pointerKey = `${this.model}/production.json`;
    const pointer = parseJson(await fetchBytes(this.store, pointerKey), pointerKey);
    if (pointer.manifest_sha256 === this.state.pointer.manifest_sha256) return false;
    if (pointer.semver) checkCompatible(pointer.semver, this.semver);
    this._set(await loadVersion(this.store, this.model, { ...this.options, heldSemver: this.semver }));
    return true;
  }

  /** The k most liked items of the training data (ties to the lower row), for a user with no swipes yet. */
  popular(k = 10) {
    const pop = this.state.popularity;
    if (!pop) return this.state.ids.slice(0, k).map(String);
    const score = Float64Array.from(pop, Number);
    return topK(score, 1, [1], k, null).map(([row]) => String(this.state.ids[row]));
  }

  rows(ids, field, lenient = false) {
    const out = [];
    const unknown = [];
    for (const id of ids || []) {
      const r = this.index.get(String(id));
      if (r !== undefined) out.push(r); else if (!lenient) unknown.push(id);
    }
    if (unknown.length) {
      const shown = unknown.slice(0, 5).map((u) => JSON.stringify(String(u))).join(', ');
      throw new EdgeError('unknown_item', `${field}: ${unknown.length} unknown item id(s): ${shown}${unknown.length > 5 ? ' ...' : ''}; ` +
        `send ids from the model's catalog (${this.nItems} items, version ${this.version})`);
    }
    return out;
  }

  /** The user's embedding (Float32Array) from their swipes, through the TF.js user tower. */
  embed({ liked = [], noped = [] } = {}) {
    const swipes = { liked: this.rows(liked, 'liked'), noped: this.rows(noped, 'noped') };
    const x = buildUserInput(swipes, this.state.prep);
    return tf.tidy(() => this.state.tower.predict(tf.tensor2d(x, [1, x.length], 'float32')).dataSync());
  }

  /**
   * Top-k items for a cold user given as liked and noped item ids (unknown ids are refused); swiped
   * items and `seen` ones (ids the model does not know are ignored there) are excluded. Returns { items: [{itemId, score, rank}], timings: {embed_ms, score_ms, total_ms} }.
   */
  recommend({ liked = [], noped = [], seen = [], topK: k = 10 } = {}) {
    if (!Number.isInteger(k) || k <= 0) throw new EdgeError('bad_request', `topK=${JSON.stringify(k)} must be a positive integer, e.g. 10`);
    if (!liked.length && !noped.length) {
      throw new EdgeError('no_history', 'no swipes: send at least one liked or noped item id to get recommendations');
    }
    const t0 = now();
    const emb = this.embed({ liked, noped });
    const t1 = now();
    const exclude = new Uint8Array(this.nItems);
    for (const r of [...this.rows(liked, 'liked'), ...this.rows(noped, 'noped'), ...this.rows(seen, 'seen', true)]) exclude[r] = 1;
    const { matrix, width, basis } = this.state.catalog;
    const top = topK(matrix, width, basis ? project(emb, basis, width) : emb, k, exclude);
    const t2 = now();
    return {
      items: top.map(([row, score], i) => ({ itemId: String(this.state.ids[row]), score, rank: i + 1 })),
      timings: { embed_ms: t1 - t0, score_ms: t2 - t1, total_ms: t2 - t0 },
    };
  }
}
