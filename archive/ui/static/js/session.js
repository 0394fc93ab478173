// Signing in with a bearer token, and telling the visitor what their role lets them see. The
// server decides: GET /api/explorer/session answers with the role of the token sent (401 for a
// token it does not accept); the page only shows it.

import { ApiError, clearToken, getJson, setToken, token } from './api.js';

const $ = id => document.getElementById(id);

/** The session as the server sees this tab's token; a refused token is forgotten. */
export async function loadSession() {
  try {
    return { session: await getJson('api/explorer/session'), refused: false };
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401 || !token()) throw error;
    clearToken();
    return { session: await getJson('api/explorer/session'), refused: true };
  }
}

/** Who is browsing and what they see: the header text, the sign-in form or the sign-out button,
 * and the banner shown whenever data beyond the open release is on the page. */
export function showSession(session) {
  const { caller, release_states: states } = session;
  const signedIn = Boolean(token());
  $('who').textContent = caller.role === 'anonymous'
    ? 'Browsing as a guest: open data only.'
    : `Signed in as ${caller.name} (${caller.role}).`;
  $('signin').hidden = signedIn;
  $('signout').hidden = !signedIn;
  const hidden = states.filter(state => state !== 'open');
  const banner = $('restricted-banner');
  banner.hidden = hidden.length === 0;
  banner.dataset.states = hidden.join(' ');
  $('restricted-states').textContent = hidden.join(', ');
  $('summary-title').textContent = hidden.length ? `All the data you may see (${states.join(', ')})` : 'Open data';
  const note = session.min_cell_count > 1
    ? `Counts below ${session.min_cell_count} are shown as “<${session.min_cell_count}” so that small groups of patients cannot be singled out.`
    : '';
  $('suppression-note').textContent = note;
  $('suppression-note').hidden = !note;
}

/** Wires the sign-in form and the sign-out button; `changed()` reloads the page's data. */
export function bindSignIn(changed) {
  $('signin').addEventListener('submit', async event => {
    event.preventDefault();
    const value = $('token').value.trim();
    $('signin-error').textContent = '';
    if (!value) return;
    setToken(value);
    $('token').value = '';
    const refused = await changed();
    if (refused) $('signin-error').textContent = 'The archive did not accept this token. You are browsing as a guest.';
  });
  $('signout').addEventListener('click', async () => {
    clearToken();
    $('signin-error').textContent = '';
    await changed();
  });
}
