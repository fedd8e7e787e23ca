// The consoles: hotline agents (/console/agent) and department handlers (/console/handler),
// behind a token login with the roles of the ticket flow.
import {api, esc, explain, fmtTime, notifiedHtml, setToken, takeTokenFromHash, token} from './common.js';

const MODE = location.pathname.endsWith('/handler') ? 'handler' : 'agent';
const ROLES = {agent: ['agent', 'admin'], handler: ['handler', 'admin']};
const message = document.getElementById('message');
let departments = [];

function say(text) { message.textContent = text; }

async function start() {
  takeTokenFromHash();
  document.getElementById('console-title').textContent = MODE === 'agent' ? '热线受理台 Agent console' : '承办单位工作台 Department console';
  if (!token()) return askToken();
  let me;
  try {
    me = await api('/api/me');
  } catch (e) {
    return askToken(explain(e));
  }
  if (!ROLES[MODE].includes(me.role)) {
    return askToken(`this console is for ${ROLES[MODE][0]}s; your token is a ${me.role}'s`);
  }
  document.getElementById('who').textContent = `${me.name} · ${me.role}${me.department_id ? ' · ' + me.department_id : ''}`;
  const logout = document.getElementById('logout');
  logout.hidden = false;
  logout.onclick = () => { setToken(''); location.reload(); };
  departments = await api('/api/departments');
  document.getElementById(MODE).hidden = false;
  if (MODE === 'agent') await startAgent(); else await loadMine();
}

function askToken(error = '') {
  const form = document.getElementById('login');
  form.hidden = false;
  document.getElementById('login-error').textContent = error;
  form.onsubmit = (e) => {
    e.preventDefault();
    setToken(document.getElementById('token-input').value);
    form.hidden = true;
    start();
  };
}

async function act(ticketId, body) {
  try {
    const t = await api(`/api/tickets/${encodeURIComponent(ticketId)}/actions`, {method: 'POST', body});
    say(`${t.number}: ${body.action} → ${t.status}`);
    return t;
  } catch (e) {
    say(explain(e));
    return null;
  }
}

// ---- agents ---------------------------------------------------------------------------------

async function startAgent() {
  const lines = await api('/api/hotline/lines');
  const form = document.getElementById('intake');
  form.called_number.innerHTML = lines.map(l => `<option value="${esc(l.number)}">${esc(l.number)} ${esc(l.name)}</option>`).join('');
  const categories = [...new Set(departments.flatMap(d => d.categories))].sort();
  form.category.innerHTML = categories.map(c => `<option>${esc(c)}</option>`).join('');
  form.onsubmit = intake;
  document.getElementById('kb-search').onsubmit = searchKnowledge;
  document.getElementById('refresh-queue').onclick = loadQueue;
  await loadQueue();
  setInterval(loadQueue, 15000);
}

function departmentOptions() {
  return departments.map(d => `<option value="${esc(d.id)}">${esc(d.name)}</option>`).join('');
}

async function loadQueue() {
  const queue = await api('/api/tickets?status=new,returned&limit=200');
  document.querySelector('#queue tbody').innerHTML = queue.map(t => `
    <tr data-ticket="${esc(t.id)}" class="${t.channel === 'sensor' ? 'sensor' : ''} ${t.urgency}">
      <td>${esc(t.number)}</td><td>${esc(t.channel)} ${esc(t.called_number || '')}</td><td>${esc(t.category)}</td>
      <td>${esc(t.title)}<div class="meta">${esc(t.route_note)}${t.returns ? ` · 退回 ${t.returns} 次` : ''}</div>
        ${t.incident_id ? `<div class="notified-list" data-incident="${esc(t.incident_id)}"></div>` : ''}</td>
      <td>${fmtTime(t.created_at)}</td>
      <td>${t.coordination ? '<span class="meta">待领导协调 awaiting a leader</span>' :
        `<select class="dept">${departmentOptions()}</select> <button class="dispatch" type="button">派单</button>`}</td>
    </tr>`).join('');
  // Sensor-made tickets: who was told of their incident, and whether they acknowledged it.
  for (const el of document.querySelectorAll('#queue .notified-list')) {
    api(`/api/notifications?incident_id=${encodeURIComponent(el.dataset.incident)}`)
      .then(list => { el.innerHTML = notifiedHtml(list); }).catch(() => {});
  }
  const waiting = await api('/api/tickets?status=replied&limit=200');
  document.querySelector('#callbacks tbody').innerHTML = waiting.map(t => `
    <tr data-ticket="${esc(t.id)}"><td>${esc(t.number)}</td><td>${esc(t.department_id)}</td><td>${esc(t.reply_text)}</td>
      <td>${t.satisfaction ? `${esc(t.satisfaction)} <button class="close" type="button">办结 Close</button>` :
        `<select class="satisfaction"><option value="satisfied">满意</option><option value="basically_satisfied">基本满意</option><option value="dissatisfied">不满意</option></select>
         <button class="callback" type="button">回访 Callback</button>`}</td></tr>`).join('');
}

document.getElementById('queue').addEventListener('click', async (e) => {
  const row = e.target.closest('tr[data-ticket]');
  if (row && e.target.classList.contains('dispatch')) {
    if (await act(row.dataset.ticket, {action: 'dispatch', department_id: row.querySelector('.dept').value})) loadQueue();
  }
});

document.getElementById('callbacks').addEventListener('click', async (e) => {
  const row = e.target.closest('tr[data-ticket]');
  if (!row) return;
  if (e.target.classList.contains('callback')) {
    if (await act(row.dataset.ticket, {action: 'callback', satisfaction: row.querySelector('.satisfaction').value})) loadQueue();
  } else if (e.target.classList.contains('close')) {
    if (await act(row.dataset.ticket, {action: 'close'})) loadQueue();
  }
});

async function intake(e) {
  e.preventDefault();
  const f = e.target;
  const body = {channel: f.channel.value, called_number: f.called_number.value, category: f.category.value,
    urgency: f.urgency.value, description: f.description.value, caller_phone: f.caller_phone.value,
    auto_dispatch: f.auto_dispatch.checked};
  if (f.lat.value && f.lon.value) { body.lat = Number(f.lat.value); body.lon = Number(f.lon.value); }
  if (f.knowledge_id.value) body.knowledge_id = Number(f.knowledge_id.value);
  const result = document.getElementById('intake-result');
  try {
    const t = await api('/api/tickets', {method: 'POST', body});
    result.textContent = `受理 ${t.number}: ${t.status}${t.department_id ? ' → ' + t.department_id : ''}`;
    f.reset();
    f.knowledge_id.value = '';
    loadQueue();
  } catch (err) {
    result.textContent = explain(err);
  }
}

async function searchKnowledge(e) {
  e.preventDefault();
  const q = e.target.q.value;
  const found = await api(`/api/knowledge?q=${encodeURIComponent(q)}`);
  document.getElementById('kb-results').innerHTML = found.length ? found.map(k => `
    <li data-knowledge="${k.id}"><b>${esc(k.question)}</b><div>${esc(k.answer)}</div>
    <button class="use" type="button">以此答复并办结 Answer and close</button></li>`).join('') : '<li class="meta">没有找到 nothing found</li>';
}

document.getElementById('kb-results').addEventListener('click', (e) => {
  const li = e.target.closest('li[data-knowledge]');
  if (!li || !e.target.classList.contains('use')) return;
  const f = document.getElementById('intake');
  f.knowledge_id.value = li.dataset.knowledge;
  f.category.value = 'consultation';
  if (!f.description.value) f.description.value = li.querySelector('b').textContent;
  document.getElementById('intake-result').textContent = '将以知识库答复办结 will close with this answer: submit';
});

// ---- department handlers --------------------------------------------------------------------

async function loadMine() {
  const mine = await api('/api/tickets?status=dispatched,accepted&limit=200');
  document.querySelector('#mine tbody').innerHTML = mine.map(t => `
    <tr data-ticket="${esc(t.id)}" class="${t.channel === 'sensor' ? 'sensor' : ''} ${t.urgency}">
      <td>${esc(t.number)}</td><td>${esc(t.status)}${t.overdue ? ' · 超期' : ''}${t.supervised ? ' · 督办' : ''}</td>
      <td>${esc(t.category)}</td><td>${esc(t.description)}</td><td>${fmtTime(t.deadline)}</td>
      <td>${t.status === 'dispatched' ? '<button class="accept" type="button">签收 Accept</button>' : ''}
        ${t.status === 'accepted' ? '<input class="reply-text" placeholder="答复 reply"> <button class="reply" type="button">答复 Reply</button>' : ''}
        ${t.coordinated ? '' : '<input class="reason" placeholder="退回理由 reason"> <button class="return" type="button">退回 Return</button>'}</td>
    </tr>`).join('') || '<tr><td colspan="6" class="meta">没有待办 nothing to do</td></tr>';
}

document.getElementById('mine').addEventListener('click', async (e) => {
  const row = e.target.closest('tr[data-ticket]');
  if (!row) return;
  const id = row.dataset.ticket;
  let done = null;
  if (e.target.classList.contains('accept')) done = await act(id, {action: 'accept'});
  else if (e.target.classList.contains('reply')) done = await act(id, {action: 'reply', text: row.querySelector('.reply-text').value});
  else if (e.target.classList.contains('return')) done = await act(id, {action: 'return', reason: row.querySelector('.reason').value});
  if (done) loadMine();
});
document.getElementById('refresh-mine').onclick = loadMine;

start();
