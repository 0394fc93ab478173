// How numbers, sizes and dates are written on the page. A count is a number, or a string such
// as "<10" when the server suppressed a small cell: that string is shown as it is.

const NUMBER = new Intl.NumberFormat('en-US');
const UNITS = ['bytes', 'kB', 'MB', 'GB', 'TB', 'PB'];

export function count(value) {
  if (typeof value === 'number') return NUMBER.format(value);
  if (typeof value === 'string') return value;
  return 'hidden';
}

/** Decimal units (1 kB = 1000 bytes); null is a size the server hid with a small cell. */
export function bytes(value) {
  if (typeof value !== 'number') return 'hidden';
  let n = value;
  let unit = 0;
  while (n >= 1000 && unit < UNITS.length - 1) {
    n /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value} bytes` : `${n.toFixed(n < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

/** A DICOM DA (YYYYMMDD) as YYYY-MM-DD; '—' when there is none. */
export function dicomDate(value) {
  if (!value || !/^\d{8}$/.test(value)) return value || '—';
  return `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}`;
}

/** The number behind a count, for bar lengths: a suppressed "<N" is at most N - 1. */
export function upperBound(value) {
  if (typeof value === 'number') return value;
  const match = /^<(\d+)$/.exec(String(value));
  return match ? Number(match[1]) - 1 : 0;
}

/** An element with children and attributes, the one way this page builds HTML (no innerHTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'text') node.textContent = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}
