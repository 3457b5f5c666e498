// The user tower's input from a swipe history: the JS twin of the Python function that the
// towerops engine feeds its user tower with (ml.model.inputs.user_tower_inputs, through
// ml.inference.engine for a cold user), driven by the layout towerops exports in tfjs/edge.json
// (ml/inference/edge_export.py). The export checks, when it is written, that this layout
// reproduces the Python function on probe histories; the browser test checks the scores.
//
// edge.json: { format: 1, recipe: "towerops.user_input.v1", user_dim,
//              arrays: { name: {path, dtype, shape} |        // loaded by towerops-edge.js
//                      {format: "csr", shape, indptr, indices, values} },
//              layout: [ block, ... ] }                     // concatenated in this order
// blocks:   {kind: "mean", of: "liked" | "noped", array}    mean of the array's rows at the swiped
//                                                           item rows (zeros when there are none)
//           {kind: "history"}                               log1p(#liked), log1p(#noped),
//                                                           (#liked + 1) / (#liked + #noped + 2)
//           {kind: "constant", array}                       a fixed vector (the default profile of a
//                                                           user the model does not know, the OOV
//                                                           user-id row)
//           {kind: "standardize", mean, scale}              no columns of its own: every column built
//                                                           so far becomes (x - mean) / scale
//                                                           (recipe v2; features.standardize)

export const EDGE_FORMAT = 1;
export const RECIPES = ['towerops.user_input.v1', 'towerops.user_input.v2'];

function widthOf(block, arrays) {
  if (block.kind === 'history') return 3;
  if (block.kind === 'standardize') return 0;
  const a = arrays[block.array];
  if (!a) throw new Error(`edge.json layout names array ${JSON.stringify(block.array)}, which edge.json does not list`);
  return block.kind === 'constant' ? a.data.length : a.shape[1];
}

/**
 * Float32Array(user_dim): the user tower's input for `swipes` = {liked: [rows], noped: [rows]}
 * (item rows of the catalog; a row swiped twice counts twice, as in the engine).
 */
export function buildUserInput(swipes, prep) {
  const liked = swipes.liked || [];
  const noped = swipes.noped || [];
  const arrays = prep.arrays;
  const out = new Float32Array(prep.user_dim);
  let at = 0;
  for (const block of prep.layout) {
    const w = widthOf(block, arrays);
    if (block.kind === 'mean') {
      const rows = block.of === 'liked' ? liked : block.of === 'noped' ? noped : null;
      if (rows === null) throw new Error(`edge.json layout: mean of ${JSON.stringify(block.of)}; use liked or noped`);
      const { data, csr, shape } = arrays[block.array];
      const acc = new Float64Array(w);
      for (const r of rows) {
        if (!(r >= 0 && r < shape[0])) throw new Error(`item row ${r} is outside ${block.array} (${shape[0]} rows)`);
        if (csr) { // the row's nonzeros only: the same sums
          for (let p = csr.indptr[r]; p < csr.indptr[r + 1]; p++) acc[csr.indices[p]] += csr.values[p];
        } else {
          const base = r * w;
          for (let j = 0; j < w; j++) acc[j] += data[base + j];
        }
      }
      const n = Math.max(rows.length, 1);
      for (let j = 0; j < w; j++) out[at + j] = Math.fround(Math.fround(acc[j]) / n);
    } else if (block.kind === 'history') {
      const nl = liked.length; const nn = noped.length;
      out[at] = Math.log1p(nl);
      out[at + 1] = Math.log1p(nn);
      out[at + 2] = (nl + 1) / (nl + nn + 2);
    } else if (block.kind === 'constant') {
      out.set(arrays[block.array].data, at);
    } else if (block.kind === 'standardize') {
      const mean = arrays[block.mean]; const scale = arrays[block.scale];
      if (!mean || !scale) throw new Error('edge.json layout: standardize names arrays edge.json does not list');
      if (mean.data.length !== at || scale.data.length !== at) {
        throw new Error(`edge.json layout: standardize over ${at} columns, mean has ${mean.data.length}, scale ${scale.data.length}`);
      }
      for (let j = 0; j < at; j++) out[j] = Math.fround(Math.fround(out[j] - mean.data[j]) / scale.data[j]);
    } else {
      throw new Error(`edge.json layout: block kind ${JSON.stringify(block.kind)} is unknown to this client`);
    }
    at += w;
  }
  if (at !== prep.user_dim) throw new Error(`edge.json layout builds ${at} columns, user_dim is ${prep.user_dim}`);
  return out;
}
