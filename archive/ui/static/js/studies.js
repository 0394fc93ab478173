// The page of matching studies: harmonized procedure, date, modality, image count, a thumbnail
// and a link to a DICOMweb viewer. Thumbnails are fetched only when their row scrolls into view,
// with the visitor's token (an <img src> could not send it), and shown from blob: URLs that are
// released when the page of studies changes.

import { getBlob } from './api.js';
import { count, dicomDate, el } from './format.js';

/** The viewer link of a study: the [ui] viewer_url template with the UID put in, or null. */
export function viewerLink(template, uid) {
  if (!template) return null;
  return template.split('{StudyInstanceUID}').join(encodeURIComponent(uid));
}

export class Thumbnails {
  constructor() {
    this.urls = [];
    this.observer = new IntersectionObserver(entries => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        this.observer.unobserve(entry.target);
        this.load(entry.target);
      }
    }, { rootMargin: '200px' });
  }

  async load(img) {
    const path = `dicom-web/studies/${encodeURIComponent(img.dataset.uid)}/thumbnail`;
    try {
      const url = URL.createObjectURL(await getBlob(path, 'image/jpeg'));
      this.urls.push(url);
      img.addEventListener('load', () => { img.dataset.thumb = 'loaded'; }, { once: true });
      img.src = url;
    } catch {
      img.dataset.thumb = 'failed';
      img.alt = 'No preview';
    }
  }

  watch(img) {
    this.observer.observe(img);
  }

  /** Forget the previous page's images and free their memory. */
  reset() {
    this.observer.disconnect();
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
  }
}

function procedure(study) {
  const cell = el('td', { class: 'procedure' });
  if (study.loinc_name) {
    cell.append(el('span', { class: 'name', text: study.loinc_name }),
      el('span', { class: 'code', text: ` LOINC ${study.loinc_code}` }));
  } else {
    cell.append(el('span', { class: 'name unmapped', text: 'Not harmonized' }));
  }
  if (study.StudyDescription) cell.append(el('span', { class: 'sent', text: `as sent: ${study.StudyDescription}` }));
  return cell;
}

/** Fills `tbody` with one row per study; `showState` adds the release state column. */
export function renderStudies(tbody, studies, { viewerUrl, showState, thumbnails }) {
  thumbnails.reset();
  tbody.replaceChildren();
  for (const study of studies) {
    const uid = study.StudyInstanceUID;
    const img = el('img', { class: 'thumb', width: 64, height: 64, alt: `Preview of ${study.loinc_name || 'the study'}`,
      dataset: { uid, thumb: 'pending' } });
    const link = viewerLink(viewerUrl, uid);
    const row = el('tr', { dataset: { uid, state: study.release_state } },
      el('td', { class: 'preview' }, img),
      procedure(study),
      el('td', { class: 'date', text: dicomDate(study.StudyDate) }),
      el('td', { class: 'modality', text: study.ModalitiesInStudy.join(', ') || '—' }),
      el('td', { class: 'num images', text: count(study.instances) }),
      el('td', { class: 'num series', text: count(study.series) }));
    if (showState) {
      row.append(el('td', { class: 'state' }, el('span', { class: `badge ${study.release_state}`, text: study.release_state })));
    }
    if (viewerUrl) {
      row.append(el('td', { class: 'viewer' }, link ? el('a', { class: 'viewer', href: link, target: '_blank',
        rel: 'noopener noreferrer', text: 'Open in viewer', 'aria-label': `Open study ${uid} in the viewer` }) : null));
    }
    tbody.append(row);
    thumbnails.watch(img);
  }
}
