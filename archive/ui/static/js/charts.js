// Horizontal bar charts drawn as SVG, one row per value of a facet. A row whose value is a filter
// choice is a button (click, Enter or Space) that adds or removes that value from the filters.
// A suppressed count ("<10") is drawn as a dashed outline up to its bound, not as a bar: the
// true number is somewhere below it.

import { count as formatCount, upperBound } from './format.js';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 420;
const LABEL = 150; // room for the value's name, right-aligned before the bar
const COUNT = 58; // room for the number after the longest bar
const ROW = 24;
const BAR = 16;
const LABEL_CHARS = 24;
export const ROWS_SHOWN = 12; // more are behind a "Show all" button

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function shorten(text) {
  return text.length > LABEL_CHARS ? `${text.slice(0, LABEL_CHARS - 1)}…` : text;
}

function row(entry, index, scale, chart) {
  const { key, label, value } = entry;
  const selectable = chart.selectable && key !== null;
  const selected = selectable && chart.selected.has(key);
  const text = formatCount(value);
  const suppressed = typeof value !== 'number';
  const width = Math.max(suppressed ? 0 : 1, upperBound(value) * scale);
  const g = svg('g', {
    class: `bar${suppressed ? ' suppressed' : ''}${selected ? ' selected' : ''}`,
    transform: `translate(0 ${index * ROW})`,
    'data-key': key ?? '', 'data-null': key === null ? 'true' : 'false',
    'aria-label': `${label}: ${text} ${chart.unit}${selectable ? (selected ? ', selected: press to remove this filter' : ', press to filter') : ''}`,
  });
  if (selectable) {
    g.setAttribute('role', 'button');
    g.setAttribute('tabindex', '0');
    g.setAttribute('aria-pressed', String(selected));
    g.addEventListener('click', () => chart.onSelect(key));
    g.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        chart.onSelect(key);
      }
    });
  } else {
    g.setAttribute('role', 'img');
  }
  g.append(svg('title', {}, `${label}: ${text} ${chart.unit}`));
  g.append(svg('rect', { class: 'track', x: 0, y: 0, width: WIDTH, height: ROW }));
  g.append(svg('text', { class: 'label', x: LABEL - 6, y: ROW / 2 + 4, 'text-anchor': 'end' },
    `${selected ? '✓ ' : ''}${shorten(label)}`));
  g.append(svg('rect', { class: 'fill', x: LABEL, y: (ROW - BAR) / 2, width, height: BAR, rx: 2 }));
  g.append(svg('text', { class: 'count', x: LABEL + width + 4, y: ROW / 2 + 4 }, text));
  return g;
}

/**
 * A chart as a <figure data-facet=…>.
 *   entries: [{key, label, value}] (key null: "no value"; value a number or "<N")
 *   chart: {facet, title, unit, selectable, selected: Set, onSelect(key), expanded, onExpand()}
 */
export function barChart(entries, chart) {
  const id = `chart-${chart.facet}`;
  const figure = document.createElement('figure');
  figure.className = 'chart';
  figure.dataset.facet = chart.facet;
  const caption = document.createElement('figcaption');
  caption.id = `${id}-title`;
  caption.textContent = `${chart.title} `;
  const unit = document.createElement('span');
  unit.className = 'unit';
  unit.textContent = `(${chart.unit})`;
  caption.append(unit);
  figure.append(caption);
  if (!entries.length) {
    const empty = document.createElement('p');
    empty.className = 'empty';
    empty.textContent = `No ${chart.unit}.`;
    figure.append(empty);
    return figure;
  }
  const shown = chart.expanded ? entries : entries.slice(0, ROWS_SHOWN);
  const largest = Math.max(1, ...entries.map(e => upperBound(e.value)));
  const scale = (WIDTH - LABEL - COUNT) / largest;
  const plot = svg('svg', {
    viewBox: `0 0 ${WIDTH} ${shown.length * ROW}`, role: 'group', 'aria-labelledby': caption.id,
    class: 'plot', preserveAspectRatio: 'xMinYMin meet',
  });
  shown.forEach((entry, index) => plot.append(row(entry, index, scale, chart)));
  figure.append(plot);
  if (shown.length < entries.length) {
    const more = document.createElement('button');
    more.type = 'button';
    more.className = 'more';
    more.textContent = `Show all ${entries.length}`;
    more.addEventListener('click', chart.onExpand);
    figure.append(more);
  }
  return figure;
}
