#!/usr/bin/env node
// The data explorer page (archive/ui) in headless Chromium (playwright-core, the Debian
// `chromium` package), driven as a visitor would: first as a guest, then signed in with a token.
//
//   EXPLORER_TOKEN=… node explorer.mjs --url http://127.0.0.1:8080 --out DIR [--chromium PATH]
//
// Steps: load the page; tick the CT modality box; select Female from the sex chart with the
// keyboard and type a minimum age; save the cohort and download its manifests (JSON, CSV) and
// zip; clear the filters and go to the second page of studies; try a token the archive refuses;
// sign in with EXPLORER_TOKEN (an evaluator's), look again, tick CT, save and download; sign out;
// shrink the window to a phone's width.
// After each step it reads what the page shows (counts, every chart's bars, the studies listed,
// the banner) into DIR/result.json, with every request the page made to the archive, console
// messages and Content-Security-Policy violations; screenshots and downloads go to DIR.
// tests/test_explorer.py runs it and compares the numbers with the API's; this script fails only
// when it cannot drive the page.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const STEP_TIMEOUT = 10000;

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    out: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
  },
});
if (!args.url || !args.out) {
  console.error('usage: EXPLORER_TOKEN=… node explorer.mjs --url URL --out DIR [--chromium PATH]');
  process.exit(2);
}
const evaluatorToken = process.env.EXPLORER_TOKEN || '';
mkdirSync(args.out, { recursive: true });

/** What the page shows, read from the DOM (runs in the page). */
function readPage() {
  const numbers = id => Object.fromEntries([...document.querySelectorAll(`#${id} dd`)]
    .map(dd => [dd.dataset.key, { value: JSON.parse(dd.dataset.value), text: dd.textContent }]));
  const charts = Object.fromEntries([...document.querySelectorAll('#charts figure')].map(figure => [
    figure.dataset.facet,
    [...figure.querySelectorAll('g.bar')].map(g => ({
      key: g.dataset.null === 'true' ? null : g.dataset.key,
      label: g.querySelector('.label').textContent,
      count: g.querySelector('.count').textContent,
      pressed: g.getAttribute('aria-pressed'),
    })),
  ]));
  const studies = [...document.querySelectorAll('#study-rows tr')].map(tr => ({
    uid: tr.dataset.uid,
    state: tr.dataset.state,
    procedure: tr.querySelector('.procedure .name').textContent,
    date: tr.querySelector('.date').textContent,
    modality: tr.querySelector('.modality').textContent,
    images: tr.querySelector('.images').textContent,
    series: tr.querySelector('.series').textContent,
    badge: tr.querySelector('.badge')?.textContent ?? null,
    viewer: tr.querySelector('a.viewer')?.getAttribute('href') ?? null,
    thumb: tr.querySelector('img.thumb').dataset.thumb,
  }));
  const results = document.getElementById('results');
  const banner = document.getElementById('restricted-banner');
  return {
    filters: JSON.parse(results.dataset.filters || 'null'),
    offset: Number(results.dataset.offset),
    summaryTitle: document.getElementById('summary-title').textContent,
    summary: numbers('summary-numbers'),
    cohort: numbers('cohort-numbers'),
    charts,
    studies,
    pageInfo: document.getElementById('page-info').textContent,
    banner: banner.hidden ? null : banner.textContent.replace(/\s+/g, ' ').trim(),
    who: document.getElementById('who').textContent,
    suppressionNote: document.getElementById('suppression-note').hidden
      ? null : document.getElementById('suppression-note').textContent,
    html: document.body.innerHTML,
  };
}

/** Waits for the answer to a query made after answer number `after`, for these filters. */
async function waitForResults(page, filters, offset = 0, after = 0) {
  await page.waitForFunction(([want, at, seq]) => {
    const results = document.getElementById('results');
    return results.dataset.state === 'ready' && results.dataset.filters === want
      && Number(results.dataset.offset) === at && Number(results.dataset.seq) > seq;
  }, [JSON.stringify(filters), offset, after], { timeout: STEP_TIMEOUT });
}

/** Does `action`, then waits for the page to show the answer for `filters` it leads to. */
async function act(page, action, filters, offset = 0) {
  const before = await page.evaluate(() => Number(document.getElementById('results').dataset.seq || 0));
  await action();
  await waitForResults(page, filters, offset, before);
}

/** Every chart at full length, every thumbnail scrolled into view and loaded (or failed). */
async function showEverything(page) {
  for (let i = 0; i < 20; i += 1) {
    const more = page.locator('#charts button.more').first();
    if (!await more.count()) break;
    await more.click();
  }
  const thumbs = page.locator('#study-rows img.thumb');
  for (let i = 0; i < await thumbs.count(); i += 1) await thumbs.nth(i).scrollIntoViewIfNeeded();
  await page.waitForFunction(() => [...document.querySelectorAll('#study-rows img.thumb')]
    .every(img => img.dataset.thumb !== 'pending'), null, { timeout: STEP_TIMEOUT });
  await page.evaluate(() => window.scrollTo(0, 0));
}

async function download(page, button, path) {
  const [file] = await Promise.all([page.waitForEvent('download', { timeout: STEP_TIMEOUT }),
    page.click(button)]);
  await file.saveAs(path);
  return { path, suggested: file.suggestedFilename() };
}

async function saveAndDownload(page, name, prefix) {
  await page.fill('#cohort-name', name);
  await page.click('#save button[type="submit"]');
  await page.waitForFunction(() => document.getElementById('actions').dataset.cohort, null,
    { timeout: STEP_TIMEOUT });
  const id = await page.getAttribute('#actions', 'data-cohort');
  const files = {};
  for (const kind of ['json', 'csv', 'zip']) {
    files[kind] = await download(page, `#dl-${kind}`, join(args.out, `${prefix}.${kind}`));
  }
  return { id, files };
}

const result = { snapshots: {}, saved: {}, requests: [], console: [], pageErrors: [], cspViolations: [],
  refusedTokenMessage: null, narrow: null };

async function run(page) {
  const snap = async (name, screenshot = false) => {
    await showEverything(page);
    result.snapshots[name] = await page.evaluate(readPage);
    if (screenshot) await page.screenshot({ path: join(args.out, `${name}.png`), fullPage: true });
  };
  let phase = 'guest';
  page.on('request', request => {
    const url = new URL(request.url());
    if (!url.pathname.startsWith('/api/') && !url.pathname.startsWith('/dicom-web/')) return;
    const entry = { phase, method: request.method(), url: request.url(), path: url.pathname,
      authorization: request.headers().authorization ?? null, status: null };
    result.requests.push(entry);
    request.response().then(response => { entry.status = response?.status() ?? null; }, () => {});
  });

  // A guest: the summary and every chart, then the same charts counting patients.
  await page.goto(`${args.url}/`, { waitUntil: 'load' });
  await waitForResults(page, {});
  await snap('guest', true);
  await page.selectOption('#measure', 'patients');
  await snap('guest-patients');
  await page.selectOption('#measure', 'studies');

  // A filter from the form: the CT check box (by its label).
  const ctBox = page.locator('#filter-controls fieldset[data-filter="modality"] label', { hasText: /^CT$/ });
  await act(page, () => ctBox.click(), { modality: ['CT'] });
  await snap('guest-ct');

  // A filter from a chart, with the keyboard; then a number typed (debounced).
  const female = page.locator('#charts figure[data-facet="sex"] g.bar[data-key="Female"]');
  await female.focus();
  await act(page, () => page.keyboard.press('Enter'), { modality: ['CT'], sex: ['Female'] });
  await act(page, () => page.locator('#f-age-min').pressSequentially('18', { delay: 40 }),
    { modality: ['CT'], sex: ['Female'], age: { min: 18 } });
  await snap('guest-ct-female-adult', true);
  result.saved.guest = await saveAndDownload(page, 'CT, women, adults', 'guest-cohort');

  // Back to everything, and the second page of studies.
  await act(page, () => page.click('#clear'), {});
  await act(page, () => page.click('#next'), {}, 20);
  await snap('guest-page-2');

  // A token the archive refuses: a clear message, still a guest.
  phase = 'refused';
  await page.fill('#token', 'not-a-valid-token');
  await act(page, () => page.click('#signin button[type="submit"]'), {});
  await page.waitForFunction(() => document.getElementById('signin-error').textContent, null,
    { timeout: STEP_TIMEOUT });
  result.refusedTokenMessage = await page.textContent('#signin-error');
  phase = 'guest';
  await snap('guest-after-refused');

  // An evaluator: the sequestered side too, with the banner.
  phase = 'evaluator';
  await page.fill('#token', evaluatorToken);
  await act(page, () => page.click('#signin button[type="submit"]'), {});
  await page.waitForSelector('#restricted-banner:not([hidden])', { timeout: STEP_TIMEOUT });
  await snap('evaluator', true);
  await act(page, () => ctBox.click(), { modality: ['CT'] });
  await snap('evaluator-ct');
  result.saved.evaluator = await saveAndDownload(page, 'CT, evaluator', 'evaluator-cohort');

  // Signed out: a guest again.
  phase = 'signed-out';
  await act(page, () => page.click('#signout'), { modality: ['CT'] });
  await page.waitForSelector('#restricted-banner[hidden]', { state: 'attached', timeout: STEP_TIMEOUT });
  await snap('signed-out-ct', true);

  // A phone-sized window: one column, nothing wider than the screen (the table scrolls in its box).
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(args.out, 'narrow.png'), fullPage: true });
  result.narrow = await page.evaluate(() => ({ width: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth }));
}

const { chromium } = await import('playwright-core');
const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: CHROMIUM_FLAGS });
const started = Date.now();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  // Content-Security-Policy violations, recorded before the page's own scripts run.
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', event => {
      window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
    });
  });
  const page = await context.newPage();
  page.on('console', message => {
    if (['error', 'warning'].includes(message.type())) {
      result.console.push({ type: message.type(), text: message.text().slice(0, 500) });
    }
  });
  page.on('pageerror', error => result.pageErrors.push(String(error).slice(0, 500)));
  try {
    await run(page);
  } finally {
    result.cspViolations = await page.evaluate(() => window.__cspViolations).catch(() => ['page gone']);
    await page.screenshot({ path: join(args.out, 'last.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
} finally {
  await browser.close();
  result.seconds = (Date.now() - started) / 1000;
  writeFileSync(join(args.out, 'result.json'), JSON.stringify(result, null, 2));
}
