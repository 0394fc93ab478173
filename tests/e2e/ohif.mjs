#!/usr/bin/env node
// The OHIF viewer (prebuilt dist/ of @ohif/app, see install-ohif.mjs) against a running
// imaging-archive.
//
//   node ohif.mjs serve --archive http://127.0.0.1:8080/dicom-web [--port 3000] [--thumbnail wadors]
//       serves the viewer for a person to use.
//   node ohif.mjs check --archive URL --studies studies.json --out DIR [--thumbnail wadors]
//       serves the viewer on a free port, drives it in headless Chromium (playwright-core, the
//       Debian `chromium` package): the study list, then each study of studies.json in the viewer,
//       until its image canvas shows an image and its requests to the archive are over. Writes
//       DIR/result.json (every request to the archive with method, URL, status and Accept
//       header; the study list's rows; per study, pixel statistics of the image canvas and the
//       state of the series thumbnails), screenshots and each image canvas as a PNG in DIR.
//       tests/test_ohif.py runs it and asserts on result.json; this script fails only when it
//       cannot drive the browser.
import { once } from 'node:events';
import { createReadStream, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const DIST = join(here, 'ohif-app', 'dist');
const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml',
  '.png': 'image/png', '.jpg': 'image/jpeg', '.ico': 'image/x-icon', '.woff': 'font/woff',
  '.woff2': 'font/woff2', '.ttf': 'font/ttf', '.map': 'application/json', '.txt': 'text/plain',
  '.xml': 'application/xml', '.onnx': 'application/octet-stream',
};

/** app-config.js of this folder, after a line giving it the archive's address and settings. */
function appConfig(settings) {
  return `window.IMAGING_ARCHIVE = ${JSON.stringify(settings)};\n`
    + readFileSync(join(here, 'app-config.js'), 'utf8');
}

/** A static server of the OHIF dist: our app-config.js, and index.html for the SPA's routes. */
async function serveViewer(settings, port = 0) {
  if (!existsSync(join(DIST, 'index.html'))) {
    throw new Error(`no OHIF build at ${DIST}: run \`npm ci && node install-ohif.mjs\` in ${here}`);
  }
  const config = appConfig(settings);
  const server = createServer((req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      res.writeHead(400, { 'Content-Type': 'text/plain' });
      res.end('bad path');
      return;
    }
    if (path === '/app-config.js') {
      res.writeHead(200, { 'Content-Type': TYPES['.js'], 'Cache-Control': 'no-store' });
      res.end(config);
      return;
    }
    let file = normalize(join(DIST, path));
    if (!file.startsWith(DIST + sep)) file = join(DIST, 'index.html');
    if (!existsSync(file) || !statSync(file).isFile()) {
      // A missing asset is a 404; any other path is a route of the single-page app.
      if (extname(path)) {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('not found');
        return;
      }
      file = join(DIST, 'index.html');
    }
    // The bundles have content hashes in their names; cached, each study's page loads faster.
    const cache = file.endsWith('index.html') ? 'no-cache' : 'max-age=3600';
    res.writeHead(200, { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream',
      'Cache-Control': cache });
    createReadStream(file).pipe(res);
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${server.address().port}` };
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** Records every request to the archive (URLs under dicomWebRoot), in the order they were made. */
function recordRequests(page, dicomWebRoot) {
  const log = [];
  const entries = new Map();
  page.on('request', request => {
    if (!request.url().startsWith(dicomWebRoot)) return;
    const entry = {
      method: request.method(), url: request.url(), path: request.url().slice(dicomWebRoot.length),
      accept: request.headers().accept ?? null, status: null, contentType: null, failure: null,
    };
    entries.set(request, entry);
    log.push(entry);
    // headers() has what the page set; allHeaders() also what the browser added (an <img>'s).
    request.allHeaders().then(headers => { entry.accept = headers.accept ?? entry.accept; }, () => {});
  });
  page.on('response', response => {
    const entry = entries.get(response.request());
    if (!entry) return;
    entry.status = response.status();
    entry.contentType = response.headers()['content-type'] ?? null;
  });
  page.on('requestfinished', request => entries.delete(request));
  page.on('requestfailed', request => {
    const entry = entries.get(request);
    if (entry) entry.failure = request.failure()?.errorText ?? 'failed';
    entries.delete(request);
  });
  return { log, pending: () => entries.size };
}

/** Waits until no request to the archive has been in flight for `quietMs`, at most `maxMs`. */
async function settle(requests, quietMs, maxMs) {
  const deadline = Date.now() + maxMs;
  let quietSince = Date.now();
  let seen = requests.log.length;
  while (Date.now() < deadline) {
    if (requests.pending() > 0 || requests.log.length !== seen) {
      quietSince = Date.now();
      seen = requests.log.length;
    } else if (Date.now() - quietSince >= quietMs) {
      return true;
    }
    await sleep(50);
  }
  return false;
}

/** Pixel statistics of the largest visible cornerstone canvas (a 2D canvas the renderer copies its
 * image to), or null while there is none. */
function canvasStats() {
  const canvases = [...document.querySelectorAll('canvas.cornerstone-canvas')]
    .filter(c => c.width > 0 && c.height > 0 && c.offsetParent !== null)
    .sort((a, b) => b.width * b.height - a.width * a.height);
  if (!canvases.length) return null;
  const canvas = canvases[0];
  canvas.dataset.e2eMeasured = 'true';  // the one canvasPng saves
  const context = canvas.getContext('2d', { willReadFrequently: true });
  if (!context) return { width: canvas.width, height: canvas.height, error: 'no 2d context' };
  const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
  let lit = 0;
  const values = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    if (r > 8 || g > 8 || b > 8) lit += 1;
    if (values.size < 4096) values.add((r << 16) | (g << 8) | b);
  }
  return { width: canvas.width, height: canvas.height, litFraction: lit / (data.length / 4),
    distinctColors: values.size };
}

/** The study list's rows, as the texts of their cells (the filter row, which has no text but its
 * Reset button, left out). */
function studyListRows() {
  return [...document.querySelectorAll('table tbody tr')]
    .map(tr => [...tr.cells].map(td => td.innerText.trim()))
    .filter(cells => cells.some(text => text && text !== 'Reset'));
}

/** The measured canvas's own pixels (not a screenshot: no viewport overlay text), as a PNG. */
function canvasPng() {
  const canvas = document.querySelector('canvas.cornerstone-canvas[data-e2e-measured]');
  return canvas ? canvas.toDataURL('image/png') : null;
}

/** The study browser's series thumbnails: whether each shows an image that loaded and decoded. */
function thumbnailImages() {
  return [...document.querySelectorAll('[data-cy^="study-browser-thumbnail"]')].map(thumb => {
    const img = thumb.querySelector('img');
    return { text: thumb.innerText.trim().replace(/\s+/g, ' ').slice(0, 80),
      loaded: Boolean(img && img.complete && img.naturalWidth > 0),
      width: img?.naturalWidth ?? 0, height: img?.naturalHeight ?? 0,
      src: img ? img.src.slice(0, 60) : null };
  });
}

const rendered = stats => stats && stats.litFraction > 0.01 && stats.distinctColors > 8;

async function waitForImage(page, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let stats = null;
  while (Date.now() < deadline) {
    stats = await page.evaluate(canvasStats).catch(error => ({ error: String(error) }));
    if (rendered(stats)) break;
    await sleep(100);
  }
  return stats;
}

async function check(args) {
  const { chromium } = await import('playwright-core');
  const studies = JSON.parse(readFileSync(args.studies, 'utf8'));
  mkdirSync(args.out, { recursive: true });
  const dicomWebRoot = args.archive.replace(/\/+$/, '');
  const settings = { dicomWebRoot, thumbnailRendering: args.thumbnail,
    thumbnailRequestStrategy: args['thumbnail-strategy'] };
  const { server, url: viewerUrl } = await serveViewer(settings);
  const launched = Date.now();
  const browser = await chromium.launch({ executablePath: args.chromium, headless: true,
    args: CHROMIUM_FLAGS });
  const result = { viewerUrl, settings, studyList: null, studies: [], requests: [], console: [],
    pageErrors: [] };
  result.launchSeconds = (Date.now() - launched) / 1000;
  const imageTimeout = Number(args['image-timeout-ms']);
  try {
    // No service worker: the requests it made would not be seen as the page's.
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 },
      serviceWorkers: 'block' });
    // A user who has seen the viewer's onboarding tour: its pop-up would cover the image.
    await context.addInitScript(
      () => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
    const page = await context.newPage();
    page.on('console', message => {
      if (['error', 'warning'].includes(message.type())) {
        result.console.push({ type: message.type(), text: message.text().slice(0, 500),
          url: page.url() });
      }
    });
    page.on('pageerror',
      error => result.pageErrors.push({ text: String(error).slice(0, 500), url: page.url() }));
    const requests = recordRequests(page, dicomWebRoot);
    result.requests = requests.log;

    // The study list: one row per stored study, showing what QIDO-RS reported of it.
    const listStarted = Date.now();
    await page.goto(`${viewerUrl}/`, { waitUntil: 'load' });
    const deadline = Date.now() + 20000;
    let rows = [];
    while (Date.now() < deadline) {
      rows = await page.evaluate(studyListRows);
      if (rows.length >= studies.length) break;
      await sleep(100);
    }
    await settle(requests, 300, 5000);
    result.studyList = { rows: await page.evaluate(studyListRows),
      seconds: (Date.now() - listStarted) / 1000 };
    await page.screenshot({ path: join(args.out, 'study-list.png') });

    // Each study in the viewer, until its image is on the canvas and its requests are over.
    for (const study of studies) {
      const started = Date.now();
      const first = requests.log.length;
      await page.goto(`${viewerUrl}/viewer?StudyInstanceUIDs=${encodeURIComponent(study.uid)}`,
        { waitUntil: 'load' });
      const stats = await waitForImage(page, imageTimeout);
      const imageSeconds = (Date.now() - started) / 1000;
      const settled = await settle(requests, 500, 15000);
      const thumbnails = await page.evaluate(thumbnailImages);
      const screenshot = join(args.out, `${study.label}.png`);
      await page.screenshot({ path: screenshot });
      const png = await page.evaluate(canvasPng).catch(() => null);
      const canvasFile = png ? join(args.out, `${study.label}-canvas.png`) : null;
      if (canvasFile) writeFileSync(canvasFile, Buffer.from(png.split(',')[1], 'base64'));
      result.studies.push({ ...study, stats, rendered: Boolean(rendered(stats)), settled, thumbnails,
        imageSeconds, seconds: (Date.now() - started) / 1000, requests: [first, requests.log.length],
        screenshot, canvas: canvasFile });
    }
    await context.close();
  } finally {
    await browser.close();
    server.close();
    writeFileSync(join(args.out, 'result.json'), JSON.stringify(result, null, 2));
  }
}

async function serve(args) {
  const dicomWebRoot = args.archive.replace(/\/+$/, '');
  const { url } = await serveViewer({ dicomWebRoot, thumbnailRendering: args.thumbnail,
    thumbnailRequestStrategy: args['thumbnail-strategy'] }, Number(args.port));
  console.log(`OHIF viewer on ${url}, reading ${dicomWebRoot} (the archive needs [http] cors_origins)`);
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    archive: { type: 'string', default: 'http://127.0.0.1:8080/dicom-web' },
    thumbnail: { type: 'string', default: 'wadors' },
    'thumbnail-strategy': { type: 'string', default: 'bulkDataRetrieve' },
    port: { type: 'string', default: '3000' },
    studies: { type: 'string' },
    out: { type: 'string', default: join(here, '..', '..', 'artifacts', 'ohif') },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
    'image-timeout-ms': { type: 'string', default: '20000' },
  },
});
const command = positionals[0];
if (command === 'serve') {
  await serve(values);
} else if (command === 'check' && values.studies) {
  await check(values);
} else {
  console.error('usage: node ohif.mjs serve [--archive URL] [--port N] [--thumbnail MODE]\n'
    + '       node ohif.mjs check --archive URL --studies FILE --out DIR [--thumbnail MODE]');
  process.exit(2);
}
