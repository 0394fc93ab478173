// The data explorer: the summary of the data the visitor may see, the cohort builder (filters,
// counts, charts, the matching studies), saving a cohort and downloading it. Every number comes
// from POST /api/cohorts/query, answered for the visitor's role (docs/explorer.md).

import { ApiError, getBlob, postJson, token } from './api.js';
import { barChart } from './charts.js';
import { buildForm, clearForm, markInvalid, readFilters, toggleChoice } from './filters.js';
import { bytes, count, el } from './format.js';
import { bindSignIn, loadSession, showSession } from './session.js';
import { Thumbnails, renderStudies } from './studies.js';

const PAGE = 20; // studies per page
const DEBOUNCE_MS = 300; // typing in a field waits this long before asking the server
const FACETS = ['modality', 'loinc', 'body_region', 'sex', 'age_group', 'race', 'ethnicity',
  'covid19_positive', 'study_year', 'institution', 'manufacturer', 'release_state'];
// The charts, in order; `filter`: the filter a bar selects (null: none); `restricted`: only
// shown to a visitor who sees more than the open data.
const CHARTS = [
  { facet: 'modality', title: 'Modality', filter: 'modality' },
  { facet: 'loinc', title: 'Procedure (harmonized, LOINC)', filter: 'loinc_code' },
  { facet: 'sex', title: 'Sex', filter: 'sex' },
  { facet: 'age_group', title: 'Age group', filter: null },
  { facet: 'race', title: 'Race', filter: 'race' },
  { facet: 'ethnicity', title: 'Ethnicity', filter: 'ethnicity' },
  { facet: 'covid19_positive', title: 'COVID-19 positive', filter: 'covid19_positive' },
  { facet: 'study_year', title: 'Study year', filter: null },
  { facet: 'institution', title: 'Site', filter: 'institution' },
  { facet: 'manufacturer', title: 'Manufacturer', filter: 'manufacturer' },
  { facet: 'body_region', title: 'Body region', filter: 'body_region' },
  { facet: 'release_state', title: 'Release state', filter: null, restricted: true },
];
// What a null facet value means, per facet (clinical facets: no case, or the field empty).
const NO_VALUE = { modality: 'No modality', loinc: 'Not harmonized', body_region: 'Not harmonized',
  study_year: 'No study date', institution: 'No site given', manufacturer: 'No manufacturer given' };
const NUMBERS = [['patients', 'Patients'], ['studies', 'Studies'], ['series', 'Series'],
  ['instances', 'Images'], ['bytes', 'Size']];
const DOWNLOADS = { json: ['manifest?format=json', 'application/json'],
  csv: ['manifest?format=csv', 'text/csv'], zip: ['zip', 'application/zip'] };

const $ = id => document.getElementById(id);
const state = { session: null, summary: null, result: null, filters: {}, offset: 0, seq: 0,
  controller: null, timer: null, saved: null, measure: 'studies', expanded: new Set(), focus: null,
  withheld: false };
const thumbnails = new Thumbnails();

function sees(session) {
  return session.release_states.length > 1;
}

function renderNumbers(dl, counts) {
  dl.replaceChildren(...NUMBERS.map(([key, label]) => el('div', { class: 'number' },
    el('dt', { text: label }),
    el('dd', { dataset: { key, value: JSON.stringify(counts[key] ?? null) },
      text: key === 'bytes' ? bytes(counts[key]) : count(counts[key]) }))));
}

function chartEntries(chart, entries) {
  return entries.map(entry => ({
    key: entry.value,
    label: entry.value === null ? (NO_VALUE[chart.facet] ?? 'No clinical data') : (entry.name || entry.value),
    value: entry[state.measure],
  }));
}

function renderCharts() {
  const facets = state.result.facets;
  const figures = CHARTS.filter(chart => !chart.restricted || sees(state.session)).map(chart => barChart(
    chartEntries(chart, facets[chart.facet] || []), {
      facet: chart.facet, title: chart.title, unit: state.measure, selectable: Boolean(chart.filter),
      selected: new Set(state.filters[chart.filter] || []),
      onSelect: key => selectFromChart(chart, key),
      expanded: state.expanded.has(chart.facet),
      onExpand: () => { state.expanded.add(chart.facet); renderCharts(); },
    }));
  $('charts').replaceChildren(...figures);
  if (state.focus) {
    // Keyboard users keep their place when the charts are drawn again.
    const { facet, key } = state.focus;
    const bar = [...document.querySelectorAll(`#charts figure[data-facet="${facet}"] g.bar`)]
      .find(g => g.dataset.key === key);
    bar?.focus();
    state.focus = null;
  }
}

function selectFromChart(chart, key) {
  if (!toggleChoice($('filters'), chart.filter, key)) return;
  state.focus = { facet: chart.facet, key };
  schedule(0);
}

function renderPage(result) {
  const showState = sees(state.session);
  $('col-state').hidden = !showState;
  $('col-viewer').hidden = !state.session.viewer_url;
  renderStudies($('study-rows'), result.studies,
    { viewerUrl: state.session.viewer_url, showState, thumbnails });
  const first = result.offset + 1;
  const last = result.offset + result.studies.length;
  $('page-info').textContent = result.studies.length
    ? `Studies ${first}–${last} of ${count(result.counts.studies)}`
    : result.withheld
      ? `Fewer than ${state.session.min_cell_count ?? 'the minimum number of'} studies or patients match: `
        + 'so small a group is counted but not listed or downloadable without an evaluator token.'
      : 'No study matches these filters.';
  $('prev').disabled = result.offset === 0;
  $('next').disabled = !result.more;
}

function render(result) {
  state.withheld = Boolean(result.withheld);  // a small cell: its downloads would be refused
  showSaved();
  renderNumbers($('cohort-numbers'), result.counts);
  renderCharts();
  renderPage(result);
  const { patients, studies } = result.counts;
  $('status').textContent = `${count(studies)} studies of ${count(patients)} patients match.`;
}

async function runQuery() {
  const seq = ++state.seq;
  state.controller?.abort();
  const controller = new AbortController();
  state.controller = controller;
  const results = $('results');
  results.dataset.state = 'loading';
  results.setAttribute('aria-busy', 'true');
  $('status').textContent = 'Updating…';
  const filters = state.filters;
  const offset = state.offset;
  try {
    const result = await postJson('api/cohorts/query',
      { filters, limit: PAGE, offset, facets: FACETS }, { signal: controller.signal });
    if (seq !== state.seq) return;
    state.result = result;
    $('query-error').textContent = '';
    markInvalid($('filters'), null);
    render(result);
    results.dataset.filters = JSON.stringify(filters);
    results.dataset.offset = String(offset);
    results.dataset.seq = String(seq); // which answer is on the page (tests wait for a newer one)
    results.dataset.state = 'ready';
  } catch (error) {
    if (seq !== state.seq || error.name === 'AbortError') return;
    results.dataset.state = 'error';
    $('status').textContent = '';
    $('query-error').textContent = error instanceof ApiError
      ? error.message : `The archive could not be reached (${error.message}).`;
    markInvalid($('filters'), error.field ?? null);
  } finally {
    if (seq === state.seq) results.removeAttribute('aria-busy');
  }
}

/** Reads the form and asks again after `delay` ms of calm (typing does not send a query per key). */
function schedule(delay = DEBOUNCE_MS) {
  clearTimeout(state.timer);
  $('results').dataset.state = 'pending';
  state.timer = setTimeout(() => {
    state.filters = readFilters($('filters'));
    state.offset = 0;
    showSaved();
    runQuery();
  }, delay);
}

// ---- saving and downloading

function showSaved() {
  const saved = state.saved;
  const current = Boolean(saved) && saved.filters === JSON.stringify(state.filters);
  for (const kind of Object.keys(DOWNLOADS)) $(`dl-${kind}`).disabled = !current || state.withheld;
  $('actions').dataset.cohort = current ? saved.id : '';
  if (current) {
    $('saved').textContent = `Saved as “${saved.name}” (id ${saved.id}). Its manifest and files hold `
      + 'what your role may see when you download them.';
  } else if (saved) {
    $('saved').textContent = 'The filters changed since the cohort was saved: save it again to download this selection.';
  } else {
    $('saved').textContent = 'Save the cohort to download its manifest or its files; a saved cohort keeps an id you can cite.';
  }
}

async function save(event) {
  event.preventDefault();
  const name = $('cohort-name').value.trim();
  if (!name) {
    $('saved').textContent = 'Give the cohort a name first.';
    return;
  }
  const filters = state.filters;
  try {
    const saved = await postJson('api/cohorts', { name, filters });
    state.saved = { id: saved.id, name: saved.name, filters: JSON.stringify(filters) };
    showSaved();
  } catch (error) {
    const status = error instanceof ApiError ? error.status : 0;
    $('saved').textContent = status === 401
      ? 'Saving a cohort needs a token: sign in with one whose role may save cohorts.'
      : status === 403 ? 'Your role may not save cohorts: sign in with another token.'
        : `The cohort was not saved: ${error.message}`;
  }
}

function click(link) {
  document.body.append(link);
  link.click();
  link.remove();
}

/** A guest's download is a plain link (the browser streams it to disk); a signed-in visitor's is
 * fetched with the token into memory first (a link cannot carry the Authorization header). */
async function download(kind) {
  const id = state.saved?.id;
  if (!id) return;
  const [suffix, accept] = DOWNLOADS[kind];
  const path = `api/cohorts/${id}/${suffix}`;
  const link = el('a', { download: `cohort-${id}.${kind}` });
  if (!token()) {
    link.href = path;
    click(link);
    $('download-status').textContent = 'Download started.';
    return;
  }
  $('download-status').textContent = 'Preparing the download…';
  try {
    const url = URL.createObjectURL(await getBlob(path, accept));
    link.href = url;
    click(link);
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    $('download-status').textContent = 'Download started.';
  } catch (error) {
    $('download-status').textContent = `The download failed: ${error.message}`;
  }
}

// ---- start

/** Loads the session and the summary, rebuilds the form, and queries; true when a stored token
 * was refused. */
async function start() {
  const { session, refused } = await loadSession();
  state.session = session;
  showSession(session);
  state.summary = await postJson('api/cohorts/query', { filters: {}, limit: 0, facets: FACETS });
  renderNumbers($('summary-numbers'), state.summary.counts);
  buildForm($('filter-controls'), session, state.summary.facets, state.filters);
  state.filters = readFilters($('filters'));
  state.offset = 0;
  showSaved();
  await runQuery();
  return refused;
}

async function restart() {
  try {
    return await start();
  } catch (error) {
    $('results').dataset.state = 'error';
    $('query-error').textContent = `The archive could not be reached: ${error.message}`;
    return false;
  }
}

function bind() {
  const form = $('filters');
  form.addEventListener('input', () => schedule());
  form.addEventListener('change', () => schedule());
  form.addEventListener('submit', event => { event.preventDefault(); schedule(0); });
  $('clear').addEventListener('click', () => { clearForm(form); schedule(0); });
  $('measure').addEventListener('change', event => {
    state.measure = event.target.value;
    if (state.result) renderCharts();
  });
  $('prev').addEventListener('click', () => { state.offset = Math.max(0, state.offset - PAGE); runQuery(); });
  $('next').addEventListener('click', () => { state.offset += PAGE; runQuery(); });
  $('save').addEventListener('submit', save);
  for (const kind of Object.keys(DOWNLOADS)) $(`dl-${kind}`).addEventListener('click', () => download(kind));
  bindSignIn(restart);
}

bind();
restart();
