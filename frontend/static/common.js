// Shared by the wall and the consoles: the token (from /#token=... once, then localStorage;
// the fragment never reaches the server's logs), API calls, escaping.
'use strict';

const TOKEN_KEY = 'cityops-token';

export function takeTokenFromHash() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  return localStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(token) {
  localStorage.setItem(TOKEN_KEY, token.trim());
}

export function token() {
  return localStorage.getItem(TOKEN_KEY) || '';
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === 'string' ? detail : (detail && detail.message) || JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

export async function api(path, options = {}) {
  const headers = {Authorization: 'Bearer ' + token(), ...(options.headers || {})};
  let body = options.body;
  if (body !== undefined && typeof body !== 'string') {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(body);
  }
  const answer = await fetch(path, {...options, headers, body});
  const text = await answer.text();
  const data = text ? JSON.parse(text) : null;
  if (!answer.ok) throw new ApiError(answer.status, data && data.detail !== undefined ? data.detail : data);
  return data;
}

export function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
}

export function explain(error) {
  if (!(error instanceof ApiError)) return String(error);
  const d = error.detail;
  if (Array.isArray(d)) return d.map(e => `${(e.loc || []).slice(1).join('.')}: ${e.msg}`).join('; ');
  return `${error.status}: ${error.message}`;
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleString('zh-CN', {hour12: false, month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit'});
}

export function pct(rate) {
  return rate === null || rate === undefined ? '—' : (rate * 100).toFixed(1) + '%';
}

// Metres between two WGS-84 points.
export function distanceM(lat1, lon1, lat2, lon2) {
  const r = 6371008.8, rad = Math.PI / 180;
  const dlat = (lat2 - lat1) * rad, dlon = (lon2 - lon1) * rad;
  const a = Math.sin(dlat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dlon / 2) ** 2;
  return 2 * r * Math.asin(Math.sqrt(a));
}

// Who was notified (of an incident or a ticket) and whether they acknowledged, as a small list.
const NOTIFY_STATUS = {sent: '已送达 sent', pending: '发送中 pending', failed: '失败 failed', grouped: '汇总 grouped'};

export function notifiedHtml(list) {
  if (!list.length) return '<div class="meta">暂无通知 nobody notified yet</div>';
  const byPerson = new Map();
  for (const n of list) {
    const key = n.person_id;
    const seen = byPerson.get(key) || {name: n.person_name, post: n.post, channels: [], acked: null};
    seen.channels.push(`${n.channel} ${NOTIFY_STATUS[n.status] || n.status}`);
    seen.acked = seen.acked || n.acknowledged_at;
    byPerson.set(key, seen);
  }
  return [...byPerson.entries()].map(([id, p]) =>
    `<div class="notified ${p.acked ? 'acked' : ''}" data-person="${esc(id)}">${esc(p.name)} <span class="meta">${esc(p.post || '')}</span>` +
    ` · ${esc(p.channels.join(', '))}${p.acked ? ` · <b>已确认 acknowledged ${fmtTime(p.acked)}</b>` : ''}</div>`).join('');
}
