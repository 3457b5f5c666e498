// The swipe demo: load the production model from storage, swipe items, watch the
// recommendations re-rank in the browser. Query parameters:
//   model    deployed model name (default two_tower)
//   storage  bucket base URL (default: ./store next to this page, as `towerops edge serve` serves it),
//            e.g. https://<ref>.supabase.co/storage/v1/object/public/model-artifacts
//   k        how many recommendations (default 10)
//   lowrank  0: download and scan the full n x d item embeddings even when the export has the
//            exact low-rank catalog (default 1)
import * as tf from '@tensorflow/tfjs';
import { EdgeRecommender } from './towerops-edge.js';

const params = new URLSearchParams(location.search);
const model = params.get('model') || 'two_tower';
const storage = params.get('storage') || new URL('store', location.href).href;
const topK = Math.max(1, parseInt(params.get('k') || '10', 10) || 10);
const lowrank = params.get('lowrank') !== '0';

const $ = (id) => document.getElementById(id);
const state = { liked: [], noped: [], skipped: new Set(), recs: [], current: null, timings: [], rec: null };
window.toweropsDemo = state;

function showError(exc) {
  const box = $('error');
  box.textContent = exc && exc.message ? exc.message : String(exc);
  box.hidden = false;
  box.dataset.code = (exc && exc.code) || 'error';
  document.body.dataset.errorCode = box.dataset.code;
}

function clearError() {
  $('error').hidden = true;
  delete document.body.dataset.errorCode;
}

function fmtMs(ms) { return ms < 10 ? ms.toFixed(2) : ms.toFixed(0); }

function describe() {
  const r = state.rec;
  const t = r.timings;
  $('about').textContent = `${model} ${r.version} · ${r.nItems.toLocaleString()} items · ${r.dim}-d embeddings, ${r.scoring} scoring · ` +
    `TF.js ${tf.version.tfjs} (${r.backend}) · ${(r.bytesFetched / 1e6).toFixed(1)} MB verified and loaded in ${fmtMs(t.load_ms)} ms`;
  $('footer').innerHTML = '';
  const src = document.createElement('span');
  src.textContent = `storage: ${storage} · every file checked against manifest.json (size + sha256) `;
  const btn = document.createElement('button');
  btn.className = 'link'; btn.id = 'refresh'; btn.textContent = 'Check for a new version';
  btn.onclick = refresh;
  $('footer').append(src, btn);
}

function candidates() {
  const swiped = new Set([...state.liked, ...state.noped]);
  const free = (id) => !swiped.has(id) && !state.skipped.has(id) && id !== state.current;
  const fromRecs = state.recs.map((r) => r.itemId).filter(free);
  if (fromRecs.length) return { id: fromRecs[0], why: 'top recommendation' };
  const popular = state.rec.popular(50).filter(free);
  if (popular.length) return { id: popular[0], why: state.liked.length + state.noped.length ? 'popular' : 'popular · start here' };
  const any = state.rec.itemIds.map(String).find(free);
  return any ? { id: any, why: 'catalog' } : null;
}

function showCard() {
  const next = candidates();
  state.current = next ? next.id : null;
  $('card').dataset.itemId = state.current || '';
  $('card-id').textContent = state.current || 'nothing left to swipe';
  $('card-why').textContent = next ? next.why : '';
  const r = state.recs.find((x) => x.itemId === state.current);
  $('card-score').textContent = r ? `score ${r.score.toFixed(4)} · rank ${r.rank}` : '\u00a0';
  for (const id of ['like', 'nope', 'skip']) $(id).disabled = !state.current;
}

function renderHistory() {
  const ul = $('history');
  ul.innerHTML = '';
  const all = [...state.liked.map((id) => [id, 'liked']), ...state.noped.map((id) => [id, 'noped'])];
  for (const [id, label] of all) {
    const li = document.createElement('li');
    li.className = label; li.dataset.itemId = id; li.dataset.label = label;
    li.textContent = `${label === 'liked' ? '\u2665' : '\u2715'} ${id}`;
    ul.append(li);
  }
  $('swipe-count').textContent = all.length ? `(${state.liked.length} liked, ${state.noped.length} noped)` : '';
  $('reset').disabled = !all.length;
}

function renderRecs(previous) {
  const ol = $('rec-list');
  ol.innerHTML = '';
  const before = new Set(previous.map((r) => r.itemId));
  const top = state.recs.length ? Math.max(...state.recs.map((r) => Math.abs(r.score)), 1e-9) : 1;
  for (const r of state.recs) {
    const li = document.createElement('li');
    li.dataset.itemId = r.itemId; li.dataset.score = String(r.score); li.dataset.rank = String(r.rank);
    if (!before.has(r.itemId)) li.className = 'fresh';
    const width = Math.max(0, Math.min(100, (r.score / top) * 100));
    li.innerHTML = `<span class="rank"></span><span class="rid"></span><span class="bar"><span style="width:${width.toFixed(1)}%"></span></span>` +
      '<span class="score"></span><button class="mini like-it">\u2665 like</button><button class="mini nope-it">\u2715 nope</button>';
    li.querySelector('.rank').textContent = r.rank;
    li.querySelector('.rid').textContent = r.itemId;
    li.querySelector('.score').textContent = r.score.toFixed(4);
    li.querySelector('.like-it').onclick = () => swipe(r.itemId, 'liked');
    li.querySelector('.nope-it').onclick = () => swipe(r.itemId, 'noped');
    ol.append(li);
  }
}

function rerank() {
  const previous = state.recs;
  if (!state.liked.length && !state.noped.length) {
    state.recs = [];
    $('timing').textContent = 'Swipe an item to get recommendations.';
  } else {
    const res = state.rec.recommend({ liked: state.liked, noped: state.noped, topK });
    state.recs = res.items;
    state.timings.push(res.timings);
    $('timing').textContent = `Re-ranked ${state.rec.nItems.toLocaleString()} items in ${fmtMs(res.timings.total_ms)} ms ` +
      `(user tower ${fmtMs(res.timings.embed_ms)} ms, scoring ${fmtMs(res.timings.score_ms)} ms), swiped items excluded.`;
  }
  renderRecs(previous);
  document.body.dataset.swipes = String(state.liked.length + state.noped.length);
}

function swipe(id, label) {
  if (!id) return;
  try {
    clearError();
    state.liked = state.liked.filter((x) => x !== id);
    state.noped = state.noped.filter((x) => x !== id);
    (label === 'liked' ? state.liked : state.noped).push(id);
    rerank();
    renderHistory();
    showCard();
  } catch (exc) {
    showError(exc);
  }
}
state.swipe = swipe;

async function refresh() {
  try {
    clearError();
    const changed = await state.rec.refresh();
    describe();
    if (changed) { rerank(); showCard(); }
    $('timing').textContent = changed ? `Now on ${state.rec.version}. ` + $('timing').textContent : `${state.rec.version} is still production.`;
  } catch (exc) {
    showError(exc);
  }
}

$('like').onclick = () => swipe(state.current, 'liked');
$('nope').onclick = () => swipe(state.current, 'noped');
$('skip').onclick = () => { if (state.current) state.skipped.add(state.current); showCard(); };
$('reset').onclick = () => { state.liked = []; state.noped = []; state.skipped.clear(); rerank(); renderHistory(); showCard(); };
document.addEventListener('keydown', (e) => {
  if (document.body.dataset.state !== 'ready') return;
  if (e.key === 'ArrowRight') $('like').click();
  else if (e.key === 'ArrowLeft') $('nope').click();
  else if (e.key === 'ArrowDown') $('skip').click();
});

try {
  state.rec = await EdgeRecommender.load({ storage, model, lowrank });
  state.readyAt = performance.now(); // since navigation start: page, TF.js, model and catalog loaded
  describe();
  renderHistory();
  showCard();
  document.body.dataset.state = 'ready';
} catch (exc) {
  $('about').textContent = `Could not load ${model} from ${storage}.`;
  $('card-id').textContent = '\u2014';
  $('timing').textContent = 'No recommendations: the model was not loaded (see the message above).';
  showError(exc);
  document.body.dataset.state = 'error';
  console.error(exc);
}
