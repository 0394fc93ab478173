// The cohort builder's form: one control per cohort filter (archive/cohorts/filters.py,
// docs/cohorts.md), read into the filter object POST /api/cohorts/query takes. Choices come
// from the data the visitor may see (the facets of the whole archive) or, for MIDRC's
// enumerations, from the clinical data dictionary (GET /api/explorer/session).

import { el } from './format.js';

// kind: choices (check boxes), text (one value, * and ? wildcards), range (whole numbers),
// dates (from/to), flag (yes/no). facet: where a choices list gets its values.
export const GROUPS = [
  { title: 'Imaging', filters: [
    { name: 'modality', label: 'Modality', kind: 'choices', facet: 'modality' },
    { name: 'loinc_code', label: 'Procedure (harmonized)', kind: 'choices', facet: 'loinc' },
    { name: 'body_region', label: 'Body region', kind: 'choices', facet: 'body_region' },
    { name: 'institution', label: 'Site', kind: 'choices', facet: 'institution' },
    { name: 'manufacturer', label: 'Manufacturer', kind: 'choices', facet: 'manufacturer' },
    { name: 'study_date', label: 'Study date', kind: 'dates' },
    { name: 'images', label: 'Images per study', kind: 'range', min: 0 },
    { name: 'series', label: 'Series per study', kind: 'range', min: 0 },
    { name: 'body_part', label: 'Body part examined', kind: 'text', hint: 'DICOM BodyPartExamined, e.g. CHEST' },
    { name: 'study_description', label: 'Study description', kind: 'text', hint: 'as sent; * and ? are wildcards' },
  ] },
  { title: 'Patients', filters: [
    { name: 'covid19_positive', label: 'COVID-19 positive', kind: 'choices', choices: 'covid19_positive' },
    { name: 'sex', label: 'Sex', kind: 'choices', choices: 'sex' },
    { name: 'age', label: 'Age at index (years)', kind: 'range', min: 0, max: 90,
      hint: '90 stands for every age over 89' },
    { name: 'race', label: 'Race', kind: 'choices', choices: 'race' },
    { name: 'ethnicity', label: 'Ethnicity', kind: 'choices', choices: 'ethnicity' },
    { name: 'icu_indicator', label: 'Admitted to an ICU', kind: 'flag' },
    { name: 'ventilator_indicator', label: 'On a ventilator', kind: 'flag' },
  ] },
];
const ALL = GROUPS.flatMap(group => group.filters);

/** The options of a choices filter: [{value, label}]. */
function options(filter, session, facets) {
  if (filter.choices) return session.choices[filter.choices].map(value => ({ value, label: value }));
  return (facets[filter.facet] || [])
    .filter(entry => entry.value !== null)
    .map(entry => ({ value: entry.value, label: entry.name ? `${entry.name} (${entry.value})` : entry.value }))
    .sort((a, b) => a.label.localeCompare(b.label));
}

function choicesControl(filter, opts, checked) {
  const box = el('fieldset', { class: 'filter choices', 'data-filter': filter.name },
    el('legend', { text: filter.label }));
  if (!opts.length) box.append(el('p', { class: 'hint', text: 'No values in the data.' }));
  const list = el('div', { class: 'options' });
  opts.forEach((opt, i) => {
    const id = `f-${filter.name}-${i}`;
    list.append(el('div', { class: 'option' },
      el('input', { type: 'checkbox', id, name: filter.name, value: opt.value, checked: checked.includes(opt.value) }),
      el('label', { for: id, text: opt.label })));
  });
  box.append(list);
  return box;
}

function rangeControl(filter, value) {
  const input = (bound, label) => {
    const id = `f-${filter.name}-${bound}`;
    return el('div', { class: 'bound' }, el('label', { for: id, text: label }),
      el('input', { type: 'number', id, name: `${filter.name}.${bound}`, inputmode: 'numeric', step: 1,
        min: filter.min, max: filter.max ?? null, value: value?.[bound] ?? null }));
  };
  return el('fieldset', { class: 'filter range', 'data-filter': filter.name },
    el('legend', { text: filter.label }), input('min', 'at least'), input('max', 'at most'),
    filter.hint ? el('p', { class: 'hint', text: filter.hint }) : null);
}

function datesControl(filter, value) {
  const iso = text => (text && /^\d{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : null);
  const input = (bound, label) => {
    const id = `f-${filter.name}-${bound}`;
    return el('div', { class: 'bound' }, el('label', { for: id, text: label }),
      el('input', { type: 'date', id, name: `${filter.name}.${bound}`, value: iso(value?.[bound]) ?? value?.[bound] ?? null }));
  };
  return el('fieldset', { class: 'filter range', 'data-filter': filter.name },
    el('legend', { text: filter.label }), input('from', 'from'), input('to', 'to'));
}

function textControl(filter, value) {
  const id = `f-${filter.name}`;
  return el('div', { class: 'filter text', 'data-filter': filter.name },
    el('label', { for: id, text: filter.label }),
    el('input', { type: 'text', id, name: filter.name, value: value ?? null, autocomplete: 'off',
      'aria-describedby': `${id}-hint` }),
    el('p', { class: 'hint', id: `${id}-hint`, text: filter.hint }));
}

function flagControl(filter, value) {
  const id = `f-${filter.name}`;
  const select = el('select', { id, name: filter.name },
    el('option', { value: '', text: 'any' }), el('option', { value: 'true', text: 'yes' }),
    el('option', { value: 'false', text: 'no' }));
  select.value = value === undefined ? '' : String(value);
  return el('div', { class: 'filter flag', 'data-filter': filter.name }, el('label', { for: id, text: filter.label }), select);
}

/** (Re)builds the controls in `container`, keeping the values of `current` (a filter object). */
export function buildForm(container, session, facets, current) {
  container.replaceChildren();
  for (const group of GROUPS) {
    const section = el('section', { class: 'group' }, el('h3', { text: group.title }));
    for (const filter of group.filters) {
      const value = current[filter.name];
      if (filter.kind === 'choices') section.append(choicesControl(filter, options(filter, session, facets), value ?? []));
      else if (filter.kind === 'range') section.append(rangeControl(filter, value));
      else if (filter.kind === 'dates') section.append(datesControl(filter, value));
      else if (filter.kind === 'text') section.append(textControl(filter, value));
      else section.append(flagControl(filter, value));
    }
    container.append(section);
  }
}

function whole(input) {
  const text = input.value.trim();
  return text === '' ? null : Number(text);
}

/** The filter object of the form: only the filters given. */
export function readFilters(form) {
  const filters = {};
  for (const filter of ALL) {
    const name = filter.name;
    if (filter.kind === 'choices') {
      const values = [...form.querySelectorAll(`input[name="${name}"]:checked`)].map(i => i.value);
      if (values.length) filters[name] = values;
    } else if (filter.kind === 'text' || filter.kind === 'flag') {
      const value = form.elements.namedItem(name)?.value.trim() ?? '';
      if (value && filter.kind === 'text') filters[name] = value;
      if (value && filter.kind === 'flag') filters[name] = value === 'true';
    } else {
      const [low, high] = filter.kind === 'range' ? ['min', 'max'] : ['from', 'to'];
      const bounds = {};
      for (const bound of [low, high]) {
        const input = form.elements.namedItem(`${name}.${bound}`);
        const value = filter.kind === 'range' ? whole(input) : (input.value || null);
        if (value !== null) bounds[bound] = value;
      }
      if (Object.keys(bounds).length) filters[name] = bounds;
    }
  }
  return filters;
}

/** Ticks or unticks the check box of `value` of filter `name`; false when there is none. */
export function toggleChoice(form, name, value) {
  const box = [...form.querySelectorAll(`input[type="checkbox"][name="${name}"]`)].find(i => i.value === value);
  if (!box) return false;
  box.checked = !box.checked;
  return true;
}

/** Marks the control of a filter the server refused (`field` is e.g. "age.max"), clears the others. */
export function markInvalid(form, field) {
  for (const node of form.querySelectorAll('[aria-invalid="true"]')) node.removeAttribute('aria-invalid');
  if (!field) return;
  const name = field.split('.')[0];
  const target = form.querySelector(`[data-filter="${name}"]`);
  target?.setAttribute('aria-invalid', 'true');
}

/** Every control back to "no filter" (a reset button would restore the values it was built with). */
export function clearForm(form) {
  for (const input of form.querySelectorAll('input')) {
    if (input.type === 'checkbox') input.checked = false;
    else input.value = '';
  }
  for (const select of form.querySelectorAll('select')) select.value = '';
}
