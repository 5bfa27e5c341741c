// The page of `partlens serve`: pick an index and filters, upload an image and draw a box on it,
// or click a result for "more like this". Every search goes through the URL hash, so a search
// can be shared and back/forward repeat it. Plain ES2020, no framework, nothing global.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const FILTERS = ['kind', 'label', 'object', 'split'];
  const IMAGE_TYPES = { jpg: 'image/jpeg', jpeg: 'image/jpeg', png: 'image/png' };
  const BOX_FORMAT = 'the box must be x0,y0,x1,y1 with x0 < x1 and y0 < y1';

  const page = {
    indexes: [],   // GET v1/indexes
    image: null,   // {blob, type, name, img} of the uploaded image
    box: null,     // [x0,y0,x1,y1] in the image's own pixels (half-open), null = whole image
    source: null,  // what Search searches from: 'image' | 'region' | null
    similar: null, // the region id of the last "more like this"
    drag: null,    // {x, y, before} while the pointer draws a box
    seq: 0,        // number of the latest search; answers to older ones are dropped
  };

  // ---------- small helpers ----------

  /** Creates an element with attributes and children (strings become text). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    node.append(...children);
    return node;
  }

  const enc = encodeURIComponent;
  const regionPath = (index, id) => `v1/regions/${enc(index)}/${enc(id)}`;

  function clampK(value) {
    const n = parseInt(value, 10);
    return Number.isFinite(n) ? Math.min(100, Math.max(1, n)) : 10;
  }

  /** "x0,y0,x1,y1" -> four integers, or undefined when it is not that. */
  function parseBox(text) {
    const nums = String(text || '').split(',').map((s) => s.trim());
    if (nums.length !== 4 || !nums.every((s) => /^\d+$/.test(s))) return undefined;
    const [x0, y0, x1, y1] = nums.map(Number);
    return x1 > x0 && y1 > y0 ? [x0, y0, x1, y1] : undefined;
  }

  /** A query string of the non-empty entries, with readable commas and slashes. */
  function queryString(entries) {
    return entries.filter(([, v]) => v !== null && v !== undefined && v !== '')
      .map(([k, v]) => `${k}=${enc(v).replace(/%2C/gi, ',').replace(/%2F/gi, '/')}`).join('&');
  }

  /** The parameters every search takes: k, feature and the non-empty filters. */
  const searchParams = (s) => [['k', s.k], ['feature', s.feature], ...FILTERS.map((f) => [f, s[f]])];

  /** Shows a message under the Search button (scrolled into view), or hides it when empty. */
  function showError(message) {
    const box = $('error');
    box.textContent = message || '';
    box.hidden = !message;
    const r = box.getBoundingClientRect();
    if (message && (r.bottom > window.innerHeight || r.top < 0)) box.scrollIntoView({ block: 'nearest' });
  }

  const setStatus = (text) => { $('status').textContent = text || ''; };
  const clearResults = () => { $('results').replaceChildren(); setStatus(''); };

  // ---------- the server ----------

  /** Fetches JSON; a 4xx/5xx becomes an Error carrying the server's {"error"} message. */
  async function api(path, options) {
    const response = await fetch(path, options).catch((e) => {
      throw new Error(`cannot reach the server (${e.message})`);
    });
    if (response.ok) return response.json();
    const body = await response.json().catch(() => null);     // not JSON: keep the status line
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }

  // ---------- controls <-> state <-> URL ----------

  /** The search parameters the controls show now. */
  function readControls() {
    const s = { index: $('index').value, feature: $('feature').value, k: clampK($('k').value) };
    for (const f of FILTERS) s[f] = $(f).value.trim();
    return s;
  }

  /** Sets the controls from a state (unknown select values fall back to the first option). */
  function writeControls(s) {
    $('k').value = s.k;
    for (const id of ['feature', 'kind', 'split']) {
      const select = $(id);
      const known = [...select.options].some((o) => o.value === s[id]);
      select.value = known ? s[id] : select.options[0]?.value ?? '';
    }
    for (const id of ['label', 'object']) $(id).value = s[id];
  }

  // Hash: index, similar=ID | box=x0,y0,x1,y1 | box=whole, then k, feature, filters.
  function stateToHash(s) {
    const box = s.box === undefined ? null : s.box ? s.box.join(',') : 'whole';
    return '#' + queryString([['index', s.index], ['similar', s.similar], ['box', box], ...searchParams(s)]);
  }

  function hashToState(hash) {
    const p = new URLSearchParams(hash.replace(/^#/, ''));
    const s = { index: p.get('index') || '', feature: p.get('feature') || '', k: clampK(p.get('k') ?? 10) };
    for (const f of FILTERS) s[f] = p.get(f) || '';
    const similar = p.get('similar');
    s.similar = similar !== null && /^\d+$/.test(similar) ? Number(similar) : null;
    const box = p.get('box');                       // undefined: no upload search in this URL
    s.box = box === null ? undefined : box === 'whole' ? null : parseBox(box);
    s.badBox = box !== null && box !== 'whole' && s.box === undefined ? box : null;
    return s;
  }

  /** Runs a search by putting it in the URL; the hashchange handler does the work. */
  function navigate(state) {
    const hash = stateToHash(state);
    if (location.hash === hash) runFromHash();
    else location.hash = hash;
  }

  // ---------- indexes ----------

  function fillSelect(select, values, anyLabel) {
    const options = values.map((v) => el('option', { value: v }, v));
    if (anyLabel) options.unshift(el('option', { value: '' }, anyLabel));
    select.replaceChildren(...options);
  }

  /** Fills the controls that depend on the index: features, kinds, splits, name lists. */
  function showIndex(ix) {
    $('index').value = ix.name;
    fillSelect($('feature'), ix.features || []);
    fillSelect($('kind'), ix.kinds || [], 'any');
    fillSelect($('split'), ix.splits || [], 'any');
    const labels = [...new Set((ix.labels || []).map((l) => l.name))];
    $('label-names').replaceChildren(...labels.map((n) => el('option', { value: n })));
    $('object-names').replaceChildren(...(ix.objects || []).map((n) => el('option', { value: n })));
    const c = ix.counts || {};
    $('index-info').textContent = `${ix.name} · ${ix.encoder} · ${c.regions ?? '?'} regions ` +
      `(${c.parts ?? '?'} parts, ${c.objects ?? '?'} objects) in ${c.images ?? '?'} images`;
  }

  /** The index a URL names (the first when it names none), shown in the controls; or null. */
  function selectIndex(name) {
    const ix = name ? page.indexes.find((i) => i.name === name) : page.indexes[0];
    if (!ix) {
      showError(`no index named "${name}" (this server has ${page.indexes.map((i) => i.name).join(', ')})`);
      return null;
    }
    if ($('index').value !== ix.name || !$('feature').options.length) showIndex(ix);
    return ix;
  }

  // ---------- the image and its box ----------

  /** Loads a dropped or chosen file as the query image. */
  async function loadImage(file) {
    const type = file.type || IMAGE_TYPES[file.name.split('.').pop().toLowerCase()] || '';
    if (type !== 'image/jpeg' && type !== 'image/png') return showError(`"${file.name}" is not a JPEG or PNG image`);
    const img = new Image();
    img.src = URL.createObjectURL(file);
    try {
      await img.decode();
    } catch (_) {
      URL.revokeObjectURL(img.src);
      return showError(`cannot read "${file.name}" as an image`);
    }
    const hadImage = page.image !== null;
    if (hadImage) URL.revokeObjectURL(page.image.img.src);
    page.image = { blob: file, type, name: file.name, img };
    // A box that came with a shared URL is kept for the image it asks for; a new image drops it.
    setBox(!hadImage && boxFits(page.box) ? page.box : null);
    page.source = 'image';
    showError('');
    if (!$('query-region').hidden && page.similar === null) renderQueryImage();
  }

  /** Whether a box lies inside the uploaded image (true when there is no image yet). */
  function boxFits(box) {
    const img = page.image && page.image.img;
    return !box || !img || (box[2] <= img.naturalWidth && box[3] <= img.naturalHeight);
  }

  function setBox(box) {
    page.box = box;
    $('box').value = box ? box.join(',') : '';
    drawStage();
  }

  /** Draws the image scaled to fit the stage, the box as a rectangle, and dims what is outside. */
  function drawStage() {
    const canvas = $('canvas'), image = page.image;
    $('stage').dataset.empty = String(!image);
    canvas.hidden = !image;
    $('stage-hint').hidden = !!image;
    if (!image) return;
    const { naturalWidth: w, naturalHeight: h } = image.img;
    const scale = Math.min(($('stage').clientWidth || 360) / w, Math.max(200, window.innerHeight * 0.4) / h);
    const ratio = window.devicePixelRatio || 1;
    canvas.style.width = `${Math.round(w * scale)}px`;
    canvas.style.height = `${Math.round(h * scale)}px`;
    canvas.width = Math.round(w * scale * ratio);
    canvas.height = Math.round(h * scale * ratio);
    const ctx = canvas.getContext('2d');
    const s = canvas.width / w;
    ctx.setTransform(s, 0, 0, s, 0, 0);                // draw in the image's own pixels
    ctx.drawImage(image.img, 0, 0);
    if (!page.box) return;
    const [x0, y0, x1, y1] = page.box;
    ctx.fillStyle = 'rgba(20, 24, 31, 0.45)';       // dim outside the box
    ctx.beginPath();
    ctx.rect(0, 0, w, h);
    ctx.rect(x0, y0, x1 - x0, y1 - y0);
    ctx.fill('evenodd');
    Object.assign(ctx, { lineWidth: (2 * ratio) / s, strokeStyle: '#ffd23f' });
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }

  /** A pointer position in the image's own pixels, clamped to the image. */
  function toImage(event) {
    const rect = $('canvas').getBoundingClientRect();
    const { naturalWidth: w, naturalHeight: h } = page.image.img;
    const x = ((event.clientX - rect.left) / rect.width) * w;
    const y = ((event.clientY - rect.top) / rect.height) * h;
    return { x: Math.min(w, Math.max(0, x)), y: Math.min(h, Math.max(0, y)) };
  }

  /** The integer half-open box spanned by two image points. */
  function spanBox(a, b) {
    const { naturalWidth: w, naturalHeight: h } = page.image.img;
    const x0 = Math.floor(Math.min(a.x, b.x)), y0 = Math.floor(Math.min(a.y, b.y));
    const x1 = Math.min(w, Math.ceil(Math.max(a.x, b.x))), y1 = Math.min(h, Math.ceil(Math.max(a.y, b.y)));
    return [x0, y0, Math.max(x1, x0 + 1), Math.max(y1, y0 + 1)];
  }

  function wireDrawing() {
    const canvas = $('canvas');
    canvas.addEventListener('pointerdown', (e) => {
      if (!page.image || e.button > 0) return;
      canvas.setPointerCapture(e.pointerId);
      page.drag = { ...toImage(e), before: page.box };
      e.preventDefault();
    });
    canvas.addEventListener('pointermove', (e) => page.drag && setBox(spanBox(page.drag, toImage(e))));
    const finish = (e) => {
      if (!page.drag) return;
      const p = toImage(e);
      const tiny = Math.abs(p.x - page.drag.x) < 3 && Math.abs(p.y - page.drag.y) < 3;
      setBox(tiny ? page.drag.before : spanBox(page.drag, p));  // a click keeps the old box
      page.drag = null;
      page.source = 'image';
    };
    canvas.addEventListener('pointerup', finish);
    canvas.addEventListener('pointercancel', () => { if (page.drag) setBox(page.drag.before); page.drag = null; });
    window.addEventListener('resize', drawStage);
  }

  // ---------- searching ----------

  /** Runs the search the URL describes: "more like this", an upload search, or nothing. */
  async function runFromHash() {
    const s = hashToState(location.hash);
    showError('');
    if (!selectIndex(s.index)) return;
    writeControls(s);
    if (s.badBox) return showError(`the URL's box "${s.badBox}" is not x0,y0,x1,y1`);
    if (s.similar !== null) return searchSimilar(s);
    page.similar = null;
    if (s.box === undefined) return;                     // settings only: nothing to run
    if (!boxFits(s.box)) return showError(`the box ${s.box.join(',')} lies outside this image`);
    setBox(s.box);
    if (page.image) return searchUpload(s);
    clearResults();
    renderQueryImage();                                  // "upload the image to repeat this search"
  }

  /** Common loading / answer / error handling; `request` returns the hits. */
  async function runSearch(request, s) {
    const seq = ++page.seq, grid = $('results');
    const busy = (on) => { grid.setAttribute('aria-busy', String(on)); grid.classList.toggle('loading', on); };
    busy(true);
    setStatus('Searching…');
    try {
      const hits = await request();
      if (seq === page.seq) renderHits(hits, s);
    } catch (e) {
      if (seq !== page.seq) return;
      clearResults();
      showError(e.message);
    } finally {
      if (seq === page.seq) busy(false);
    }
  }

  function searchUpload(s) {
    page.source = 'image';
    renderQueryImage();
    const query = queryString([['index', s.index], ['box', s.box && s.box.join(',')], ...searchParams(s)]);
    runSearch(() => api(`v1/query?${query}`, {
      method: 'POST', headers: { 'Content-Type': page.image.type }, body: page.image.blob,
    }), s);
  }

  function searchSimilar(s) {
    page.similar = s.similar;
    page.source = 'region';
    renderQueryRegion(s.index, s.similar);
    runSearch(() => api(`${regionPath(s.index, s.similar)}/similar?${queryString(searchParams(s))}`), s);
  }

  /** The Search button: from the uploaded image, or again from the region on show. */
  function onSearch(event) {
    event.preventDefault();
    const s = readControls();
    const box = parseBox($('box').value);
    if ($('box').value.trim() && !box) return showError(BOX_FORMAT);
    if (page.source === 'region' && page.similar !== null) return navigate({ ...s, similar: page.similar });
    if (!page.image) return showError('Choose an image first (or open a shared link to a region).');
    navigate({ ...s, box: box || null });
  }

  // ---------- showing results ----------

  function describeFilters(s) {
    const set = FILTERS.filter((f) => s[f]).map((f) => `${f} = ${s[f]}`);
    return set.length ? set.join(', ') : `any region of ${s.index}`;
  }

  function renderHits(hits, s) {
    $('results').replaceChildren(...hits.map((h) => hitCard(s.index, h, h.id === page.similar)));
    setStatus(hits.length ? `${hits.length} result${hits.length === 1 ? '' : 's'} · ${describeFilters(s)}`
      : `No region matches ${describeFilters(s)}.`);
  }

  /** One result: a button that runs "more like this" from that region. */
  function hitCard(index, h, isQuery) {
    const card = el('button', {
      type: 'button', class: isQuery ? 'hit is-query' : 'hit', 'data-id': h.id,
      title: `${h.image} · box ${(h.box || []).join(',')} · more like this`,
    },
    el('span', { class: 'thumb' }, el('img', {
      src: `${regionPath(index, h.id)}/thumbnail`, loading: 'lazy', decoding: 'async',
      alt: `${h.label} (${h.kind}) of a ${h.object} in ${h.image}`,
    })),
    el('span', { class: 'hit-label' }, h.label),
    el('span', { class: 'hit-meta' }, `${h.object} · ${h.split} · ${h.kind}`),
    el('span', { class: 'hit-score' }, `score ${Number(h.score).toFixed(3)}`));
    card.addEventListener('click', () => navigate({ ...readControls(), similar: h.id }));
    return card;
  }

  /** The query panel for "more like this": the region's thumbnail and label. */
  async function renderQueryRegion(index, id) {
    const box = $('query-region');
    box.hidden = false;
    box.replaceChildren(el('p', { class: 'muted' }, `More like region #${id}…`));
    try {
      const r = await api(regionPath(index, id));
      if (page.similar !== id) return;
      box.replaceChildren(
        el('img', { src: `${regionPath(index, id)}/thumbnail`, alt: `${r.label} (${r.kind}) of a ${r.object}` }),
        el('div', {},
          el('h3', {}, `More like #${id}: ${r.label}`),
          el('p', { class: 'muted' }, `${r.object} · ${r.split} · ${r.kind} · ${r.image} · box ${r.box.join(',')}`)));
    } catch (e) {
      if (page.similar === id) box.replaceChildren(el('p', { class: 'notice' }, `Region #${id}: ${e.message}`));
    }
  }

  /** The query panel for an upload search: the crop, or a request to upload the image again. */
  function renderQueryImage() {
    const panel = $('query-region');
    panel.hidden = false;
    const where = page.box ? `box ${page.box.join(',')}` : 'whole image';
    if (!page.image) {
      panel.replaceChildren(el('p', { class: 'notice' },
        `This search used an uploaded image (${where}). Upload the image to repeat this search.`));
      return;
    }
    const [x0, y0, x1, y1] = page.box || [0, 0, page.image.img.naturalWidth, page.image.img.naturalHeight];
    const scale = 96 / Math.max(x1 - x0, y1 - y0);
    const crop = el('canvas', { role: 'img', 'aria-label': `crop of ${page.image.name}` });
    crop.width = Math.max(1, Math.round((x1 - x0) * scale));
    crop.height = Math.max(1, Math.round((y1 - y0) * scale));
    crop.getContext('2d').drawImage(page.image.img, x0, y0, x1 - x0, y1 - y0, 0, 0, crop.width, crop.height);
    panel.replaceChildren(crop, el('div', {},
      el('h3', {}, `Like this part of ${page.image.name}`),
      el('p', { class: 'muted' }, where)));
  }

  // ---------- start ----------

  function wireControls() {
    $('controls').addEventListener('submit', onSearch);
    $('file').addEventListener('change', () => $('file').files[0] && loadImage($('file').files[0]));
    $('whole').addEventListener('click', () => { setBox(null); if (page.image) page.source = 'image'; });
    $('box').addEventListener('change', () => {           // typing a box: the keyboard's way to draw
      const box = parseBox($('box').value);
      if ($('box').value.trim() && !box) return showError(BOX_FORMAT);
      if (!boxFits(box)) return showError('the box lies outside the image');
      showError('');
      setBox(box || null);
      if (page.image) page.source = 'image';
    });
    $('index').addEventListener('change', () => {
      const ix = page.indexes.find((i) => i.name === $('index').value);
      if (ix) showIndex(ix);
      page.similar = null;                    // a region id belongs to its index
      page.source = page.image ? 'image' : null;
      $('query-region').hidden = true;
      clearResults();
    });
    // Drop an image anywhere on the page.
    document.addEventListener('dragover', (e) => { e.preventDefault(); $('stage').classList.add('dropping'); });
    document.addEventListener('dragleave', () => $('stage').classList.remove('dropping'));
    document.addEventListener('drop', (e) => {
      e.preventDefault();
      $('stage').classList.remove('dropping');
      if (e.dataTransfer && e.dataTransfer.files[0]) loadImage(e.dataTransfer.files[0]);
    });
  }

  async function start() {
    wireControls();
    wireDrawing();
    window.addEventListener('hashchange', runFromHash);
    try {
      page.indexes = await api('v1/indexes');
    } catch (e) {
      $('index-info').textContent = 'no indexes';
      return showError(`cannot list the indexes: ${e.message}`);
    }
    if (!page.indexes.length) return showError('this server has no index');
    fillSelect($('index'), page.indexes.map((i) => i.name));
    $('index-field').hidden = page.indexes.length < 2;
    showIndex(page.indexes[0]);
    runFromHash();
  }

  start();
})();
