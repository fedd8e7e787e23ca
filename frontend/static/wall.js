// The wall: one WebSocket (/ws/wall) gives a snapshot of the city, then changes; the map,
// tiles, lists and charts are redrawn from that state, at most once per animation frame.
import {api, distanceM, esc, explain, fmtTime, notifiedHtml, pct, setToken, takeTokenFromHash, token} from './common.js';

const SEVERITY_RANK = {low: 0, medium: 1, high: 2, critical: 3};
const SEVERITY_COLOR = {low: '#6cb4ee', medium: '#f0c94a', high: '#ff8a3d', critical: '#ff3b3b'};
const CAMERA_COLOR = {online: '#3ddc84', degraded: '#f0c94a', offline: '#ff3b3b', unknown: '#5b6f80'};
const TRAIL = 12;

const state = {
  devices: new Map(), readings: new Map(), vehicles: new Map(), trails: new Map(),
  incidents: new Map(), tickets: new Map(), cameras: new Map(), kpi: null, city: null,
  selected: null, commanded: new Set(), command: null, departments: [],
};
const dirty = new Set();
let chart = null;
let socket = null;
let frame = 0;

function schedule(...parts) {
  parts.forEach(p => dirty.add(p));
  if (!frame) frame = requestAnimationFrame(render);
}

// ---- login ----------------------------------------------------------------------------------

function start() {
  takeTokenFromHash();
  if (!token()) return askToken();
  connect();
}

function askToken(message = '') {
  const form = document.getElementById('login');
  form.hidden = false;
  document.getElementById('login-error').textContent = message;
  form.onsubmit = (e) => {
    e.preventDefault();
    setToken(document.getElementById('token-input').value);
    form.hidden = true;
    connect();
  };
}

// ---- the socket -----------------------------------------------------------------------------

let retry = 0;
let pinger = 0;

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  socket = new WebSocket(`${scheme}://${location.host}/ws/wall?token=${encodeURIComponent(token())}`);
  const link = document.getElementById('link');
  let opened = false;
  socket.onopen = () => {
    opened = true;
    retry = 0;
    link.textContent = '实时 live';
    link.className = 'up';
    pinger = setInterval(() => socket.readyState === 1 && socket.send('{"type":"ping"}'), 20000);
  };
  socket.onmessage = (e) => receive(JSON.parse(e.data));
  socket.onclose = (e) => {
    clearInterval(pinger);
    link.textContent = '重连中 reconnecting';
    link.className = 'down';
    if (!opened && retry >= 1 && e.code !== 1000) {
      // Refused at the handshake twice: most likely the token.
      return askToken('token refused or server unreachable: enter a valid token');
    }
    retry += 1;
    setTimeout(connect, Math.min(1000 * 2 ** retry, 15000));
  };
}

function receive(message) {
  const d = message.data;
  switch (message.type) {
    case 'snapshot': return loadSnapshot(d);
    case 'reading': state.readings.set(d.device_id, d); return schedule('devices', 'readings', 'levels');
    case 'vehicle': return moveVehicle(d);
    case 'incident': return updateIncident(d);
    case 'ticket':
      state.tickets.set(d.id, {...state.tickets.get(d.id), ...d});
      if (state.command && d.incident_id === state.command) loadCommandTicket();
      return schedule('tickets');
    case 'camera': {
      const cam = state.cameras.get(d.id);
      if (cam) { cam.status = d.status; cam.reason = d.reason; }
      return schedule('cameras');
    }
    case 'kpi': state.kpi = d; return schedule('kpis');
    default: return undefined;
  }
}

function loadSnapshot(d) {
  state.city = d.city;
  document.getElementById('city').textContent = d.city.name || '';
  state.devices = new Map(d.devices.map(x => [x.id, x]));
  state.readings = new Map(Object.entries(d.readings));
  state.vehicles = new Map(Object.entries(d.vehicles));
  state.trails = new Map([...state.vehicles].map(([id, p]) => [id, [[p.lon, p.lat]]]));
  state.incidents = new Map(d.incidents.map(x => [x.id, x]));
  for (const i of d.incidents) if (i.severity === 'critical') state.commanded.add(i.id);
  state.tickets = new Map(d.tickets.map(x => [x.id, x]));
  state.cameras = new Map(d.cameras.map(x => [x.id, x]));
  state.kpi = d.kpi;
  setupMap();
  loadLevels();
  schedule('kpis', 'incidents', 'tickets', 'devices', 'readings', 'cameras', 'vehicles', 'levels');
  api('/api/departments').then(list => { state.departments = list; }).catch(() => {});
}

function moveVehicle(p) {
  state.vehicles.set(p.device_id, p);
  const trail = state.trails.get(p.device_id) || [];
  trail.push([p.lon, p.lat]);
  if (trail.length > TRAIL) trail.shift();
  state.trails.set(p.device_id, trail);
  schedule('vehicles');
}

function updateIncident(i) {
  if (i.status === 'resolved') state.incidents.delete(i.id);
  else state.incidents.set(i.id, {...state.incidents.get(i.id), ...i});
  schedule('incidents', 'kpis');
  if (i.severity === 'critical' && i.status === 'open' && !state.commanded.has(i.id)) {
    state.commanded.add(i.id);
    enterCommand(i.id);
  }
  if (state.command === i.id) renderCommandInfo();
  if (state.selected === i.id || state.command === i.id) loadNotified();
}

// ---- staleness ------------------------------------------------------------------------------

function isStale(deviceId) {
  const device = state.devices.get(deviceId);
  const latest = device && device.kind === 'vehicle' ? state.vehicles.get(deviceId) : state.readings.get(deviceId);
  if (!device || !latest) return true;
  return Date.now() - Date.parse(latest.ts) > device.expected_interval_s * 1000;
}

function levelClass(device, r) {
  if (!r) return '';
  const a = device.attributes || {};
  if (device.kind === 'water_level') return r.value >= a.danger_level_m ? 'danger' : r.value >= a.warning_level_m ? 'warn' : '';
  if (device.kind === 'gas') return r.value >= 50 ? 'danger' : r.value >= 20 ? 'warn' : '';
  if (device.kind === 'smoke') return r.alarm ? 'danger' : '';
  return '';
}

// ---- the map --------------------------------------------------------------------------------

function setupMap() {
  const el = document.getElementById('map-chart');
  if (!chart) {
    chart = echarts.init(el, 'dark', {renderer: 'canvas'});
    window.wallChart = chart;  // for diagnostics from the browser's console (and the tests)
    new ResizeObserver(() => { chart.resize(); drawTiles(); }).observe(el);
    chart.on('click', (p) => { if (p.seriesName === 'incidents') select(p.data.id); });
    chart.on('georoam', () => {
      drawTiles();
      const zoom = mapZoom();
      const wanted = state.cameras.size >= GROUP_FROM && zoom < GROUP_UNTIL_ZOOM ? Math.round(zoom * 4) / 4 : null;
      if (wanted !== groupedAt) schedule('cameras');
    });
  }
  const points = [...state.devices.values(), ...state.cameras.values()].filter(x => x.lat !== null && x.lon !== null);
  const grids = (state.city.grids && state.city.grids.features) || [];
  let minLon = 180, minLat = 90, maxLon = -180, maxLat = -90;
  const extend = (lon, lat) => { minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon); minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat); };
  points.forEach(p => extend(p.lon, p.lat));
  grids.forEach(f => JSON.stringify(f.geometry.coordinates).match(/-?\d+\.?\d*,-?\d+\.?\d*/g).forEach(pair => {
    const [lon, lat] = pair.split(',').map(Number); extend(lon, lat);
  }));
  if (minLon > maxLon) { minLon = 110.2; maxLon = 110.5; minLat = 19.8; maxLat = 20.1; }
  const pad = 0.02;
  // The grids are the map itself (the center's network is closed); a tile server inside it can
  // be drawn underneath (setting wall_tile_url), and then the map is in Web Mercator like tiles.
  const tiled = Boolean(state.city.tile_url);
  const features = grids.map(f => ({...f, properties: {...f.properties, name: f.properties.name || f.properties.id}}));
  echarts.registerMap('city', {type: 'FeatureCollection', features});
  chart.setOption({
    backgroundColor: 'transparent',
    animation: false,
    tooltip: {trigger: 'item', formatter: tooltip},
    geo: {
      map: 'city', roam: true, boundingCoords: [[minLon - pad, maxLat + pad], [maxLon + pad, minLat - pad]],
      projection: tiled ? {project: mercator, unproject: unmercator} : undefined,
      itemStyle: {areaColor: tiled ? 'rgba(16, 50, 74, 0.35)' : '#10324a', borderColor: '#2f6d94', borderWidth: 1},
      emphasis: {itemStyle: {areaColor: '#174565'}, label: {show: false}},
      label: {show: true, color: '#5f88a6', fontSize: 11},
    },
    series: [
      {name: 'cameras', type: 'scatter', coordinateSystem: 'geo', large: true, largeThreshold: 5000, symbolSize: 5, data: [], itemStyle: {opacity: 0.85}},
      {name: 'devices', type: 'scatter', coordinateSystem: 'geo', large: true, largeThreshold: 2000, symbolSize: 7, data: []},
      {name: 'trails', type: 'lines', coordinateSystem: 'geo', polyline: true, data: [], lineStyle: {color: '#8fd3ff', width: 2, opacity: 0.6}},
      {name: 'vehicles', type: 'scatter', coordinateSystem: 'geo', symbol: 'diamond', symbolSize: 11, data: [], itemStyle: {color: '#8fd3ff'}},
      {name: 'incidents', type: 'effectScatter', coordinateSystem: 'geo', data: [], rippleEffect: {scale: 4, brushType: 'stroke'}, zlevel: 1},
    ],
  }, true);
  drawTiles();
}

// ---- map tiles (optional) -------------------------------------------------------------------

const TILE = 256;
const MAX_TILES = 300;
const tileImages = new Map();

// Web Mercator in the pixels of zoom level 0 (the world is 256 wide), y downwards as on screen.
function mercator([lon, lat]) {
  const s = Math.sin(Math.max(-85.05, Math.min(85.05, lat)) * Math.PI / 180);
  return [(lon + 180) / 360 * TILE, (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * TILE];
}

function unmercator([x, y]) {
  const n = Math.PI - 2 * Math.PI * y / TILE;
  return [x / TILE * 360 - 180, 180 / Math.PI * Math.atan(Math.sinh(n))];
}

function drawTiles() {
  const layer = document.getElementById('map-tiles');
  const template = state.city && state.city.tile_url;
  if (!chart || !template) { layer.replaceChildren(); tileImages.clear(); return; }
  // The chart's view is world (Mercator) coordinates scaled by k and shifted by (bx, by).
  const centre = [TILE / 2, TILE / 2];  // any point will do: the view is linear in world units
  const a = chart.convertToPixel({geoIndex: 0}, unmercator(centre));
  const b = chart.convertToPixel({geoIndex: 0}, unmercator([centre[0] + 1, centre[1]]));
  if (!a || !b) return;
  const k = b[0] - a[0];
  const bx = a[0] - k * centre[0], by = a[1] - k * centre[1];
  const z = Math.max(0, Math.min(19, Math.round(Math.log2(k))));
  const span = TILE / 2 ** z;  // one tile, in world units
  const size = k * span;       // one tile, in pixels
  const w = layer.clientWidth, h = layer.clientHeight;
  const x0 = Math.floor((0 - bx) / k / span), x1 = Math.floor((w - bx) / k / span);
  const y0 = Math.max(0, Math.floor((0 - by) / k / span)), y1 = Math.min(2 ** z - 1, Math.floor((h - by) / k / span));
  const wanted = new Set();
  for (let ty = y0; ty <= y1; ty++) {
    for (let tx = x0; tx <= x1 && wanted.size < MAX_TILES; tx++) {
      const wrapped = ((tx % 2 ** z) + 2 ** z) % 2 ** z;
      const key = `${z}/${tx}/${ty}`;
      wanted.add(key);
      let img = tileImages.get(key);
      if (!img) {
        img = new Image();
        img.alt = '';
        img.decoding = 'async';
        img.dataset.tile = `${z}/${wrapped}/${ty}`;
        img.onerror = () => { img.style.visibility = 'hidden'; };  // a missing tile is a gap, not an error
        img.src = template.replace('{z}', z).replace('{x}', wrapped).replace('{y}', ty);
        tileImages.set(key, img);
        layer.appendChild(img);
      }
      img.style.left = `${bx + tx * size}px`;
      img.style.top = `${by + ty * size}px`;
      img.style.width = img.style.height = `${size + 0.5}px`;  // half a pixel over: no seams
    }
  }
  for (const [key, img] of tileImages) if (!wanted.has(key)) { img.remove(); tileImages.delete(key); }
}

function tooltip(p) {
  const d = p.data || {};
  if (p.seriesName === 'incidents') return `${esc(d.title)}<br>${esc(d.severity)} · tier ${esc(d.tier)}`;
  if (p.seriesName === 'cameras') return `${esc(d.name)}<br>${esc(d.status)} ${esc(d.reason || '')}`;
  if (p.seriesName === 'vehicles') return `${esc(d.name)}<br>${esc(d.speed ?? '')} km/h`;
  return esc(d.name || p.name || '');
}

// Zoomed out over thousands of cameras, nearby ones are drawn as one group (count and share
// online); zoomed in, each camera. The groups follow the zoom (cells shrink as it grows).
const GROUP_FROM = 2000;
const GROUP_UNTIL_ZOOM = 3;
let groupedAt = null;

function mapZoom() {
  const geo = chart && chart.getOption().geo;
  return (geo && geo[0] && geo[0].zoom) || 1;
}

function cameraData() {
  const cams = [...state.cameras.values()];
  const zoom = mapZoom();
  if (cams.length < GROUP_FROM || zoom >= GROUP_UNTIL_ZOOM) {
    groupedAt = null;
    return cams.map(c => ({id: c.id, name: c.name, status: c.status, reason: c.reason, value: [c.lon, c.lat],
      itemStyle: {color: CAMERA_COLOR[c.status] || CAMERA_COLOR.unknown}}));
  }
  groupedAt = Math.round(zoom * 4) / 4;
  const cell = 0.02 / groupedAt;
  const bins = new Map();
  for (const c of cams) {
    const key = `${Math.floor(c.lon / cell)}:${Math.floor(c.lat / cell)}`;
    const bin = bins.get(key) || {lon: 0, lat: 0, n: 0, online: 0};
    bin.lon += c.lon; bin.lat += c.lat; bin.n += 1; bin.online += c.status === 'online' ? 1 : 0;
    bins.set(key, bin);
  }
  return [...bins.values()].map(b => {
    const share = b.online / b.n;
    return {name: `${b.n} 路视频 cameras, ${b.online} 在线 online`, status: `${Math.round(share * 100)}%`,
      value: [b.lon / b.n, b.lat / b.n], symbolSize: 5 + 2.5 * Math.log2(b.n),
      itemStyle: {color: share >= 0.9 ? CAMERA_COLOR.online : share >= 0.6 ? CAMERA_COLOR.degraded : CAMERA_COLOR.offline}};
  });
}

function deviceColor(device) {
  if (isStale(device.id)) return '#4a5866';
  const cls = levelClass(device, state.readings.get(device.id));
  return cls === 'danger' ? '#ff3b3b' : cls === 'warn' ? '#f0c94a' : '#38c6f4';
}

function mapSeries() {
  const series = [];
  if (dirty.has('cameras')) series.push({name: 'cameras', data: cameraData()});
  if (dirty.has('devices')) {
    series.push({name: 'devices', data: [...state.devices.values()].filter(d => d.kind !== 'vehicle').map(d => ({
      id: d.id, name: d.name, value: [d.lon, d.lat], symbol: d.kind === 'water_level' ? 'triangle' : 'circle',
      itemStyle: {color: deviceColor(d)},
    }))});
  }
  if (dirty.has('vehicles')) {
    series.push({name: 'trails', data: [...state.trails.entries()].filter(([, t]) => t.length > 1).map(([id, t]) => ({coords: t, id}))});
    series.push({name: 'vehicles', data: [...state.vehicles.values()].map(v => {
      const device = state.devices.get(v.device_id) || {};
      const stale = isStale(v.device_id);
      return {id: v.device_id, name: device.name || v.device_id, speed: v.speed_kmh, value: [v.lon, v.lat],
        itemStyle: {color: stale ? '#4a5866' : (device.attributes || {}).category === 'hazmat' ? '#ff8a3d' : '#8fd3ff'}};
    })});
  }
  if (dirty.has('incidents')) {
    series.push({name: 'incidents', data: [...state.incidents.values()].filter(i => i.lat !== null).map(i => ({
      id: i.id, title: i.title, severity: i.severity, tier: i.escalation_tier, value: [i.lon, i.lat],
      symbolSize: 10 + 6 * SEVERITY_RANK[i.severity], itemStyle: {color: SEVERITY_COLOR[i.severity]},
    }))});
  }
  return series;
}

// ---- panels ---------------------------------------------------------------------------------

function renderKpis() {
  const k = state.kpi || {};
  const t = k.tickets || {};
  const inc = k.incidents || {by_severity: {}, by_tier: {}};
  const dev = k.devices || {};
  const cam = k.cameras || {};
  const sev = ['critical', 'high', 'medium', 'low'].map(s => `<span style="color:${SEVERITY_COLOR[s]}">${inc.by_severity[s] || 0}</span>`).join(' / ');
  const tiers = [1, 2, 3].map(n => `T${n}:${inc.by_tier[String(n)] || 0}`).join(' ');
  const tiles = [
    ['今日工单 tickets today', k.tickets_today ?? '—', `本月 month ${t.accepted ?? '—'}`, 'tickets-today'],
    ['办结率 completion', pct(t.completion_rate), '本月 this month', 'completion'],
    ['按时率 on time', pct(t.on_time_rate), `超期未办 overdue ${t.overdue_open ?? '—'}`, 'on-time'],
    ['满意率 satisfaction', pct(t.satisfaction_rate), '回访 callbacks', 'satisfaction'],
    ['在办事件 open incidents', inc.open ?? '—', `${sev} · ${tiers}`, 'incidents-open'],
    ['设备在线 devices online', `${dev.online ?? '—'}/${dev.total ?? '—'}`, `停报 stale ${dev.stale ?? 0} · 离线 offline ${dev.offline ?? 0}`, 'devices'],
    ['视频可用率 cameras', pct(cam.availability), `${(cam.by_status || {}).online || 0} 在线 / ${cam.total ?? 0}`, 'cameras'],
  ];
  document.getElementById('kpis').innerHTML = tiles.map(([label, value, sub, id]) =>
    `<div class="tile" data-kpi="${id}"><div class="label">${label}</div><div class="value">${esc(value)}</div><div class="sub">${sub}</div></div>`).join('');
}

function sortedIncidents() {
  return [...state.incidents.values()].sort((a, b) =>
    SEVERITY_RANK[b.severity] - SEVERITY_RANK[a.severity] || Date.parse(b.opened_at) - Date.parse(a.opened_at));
}

function renderIncidents() {
  const list = sortedIncidents();
  document.getElementById('incident-count').textContent = `(${list.length})`;
  document.getElementById('incidents').innerHTML = list.slice(0, 40).map(i =>
    `<li class="${i.severity}${state.selected === i.id ? ' selected' : ''}" data-incident="${esc(i.id)}">` +
    `<span class="title">${esc(i.title)}</span><span class="meta">${esc(i.severity)} · T${i.escalation_tier} · ${esc(i.status)} · ${fmtTime(i.opened_at)}</span></li>`).join('');
}

function renderTickets() {
  const list = [...state.tickets.values()].filter(t => t.status !== 'closed')
    .sort((a, b) => Date.parse(b.created_at || b.at) - Date.parse(a.created_at || a.at));
  document.getElementById('tickets').innerHTML = list.slice(0, 25).map(t =>
    `<li class="${t.channel === 'sensor' ? 'sensor' : ''}" data-ticket="${esc(t.id)}">${esc(t.number)} ${esc(t.category)} ` +
    `<span class="meta">${esc(t.status)} · ${esc(t.department_id || '待派 queue')}${t.urgency === 'urgent' ? ' · 紧急' : ''}</span></li>`).join('');
}

function describe(device, r) {
  if (!r) return '—';
  if (device.kind === 'water_level') return `${r.value.toFixed(2)} m`;
  if (device.kind === 'gas') return `${r.value} %LEL`;
  if (device.kind === 'smoke') return `${r.value} %/m${r.alarm ? ' 报警' : ''}`;
  return String(r.value);
}

function renderReadings() {
  // Reservoirs first, then whatever is in alarm, then the most recent.
  const rows = [...state.devices.values()].filter(d => d.kind !== 'vehicle').map(d => ({d, r: state.readings.get(d.id)}))
    .sort((a, b) => (b.d.kind === 'water_level') - (a.d.kind === 'water_level') ||
      (levelClass(b.d, b.r) !== '') - (levelClass(a.d, a.r) !== '') ||
      Date.parse(b.r ? b.r.ts : 0) - Date.parse(a.r ? a.r.ts : 0));
  document.querySelector('#readings tbody').innerHTML = rows.slice(0, 14).map(({d, r}) =>
    `<tr data-device="${esc(d.id)}" class="${isStale(d.id) ? 'stale' : ''}"><td>${esc(d.name)}</td>` +
    `<td class="value ${levelClass(d, r)}">${esc(describe(d, r))}</td><td class="meta">${r ? fmtTime(r.ts) : ''}</td></tr>`).join('');
}

// ---- reservoir charts -----------------------------------------------------------------------

const levelCharts = new Map();
const history = new Map();

async function loadLevels() {
  const gauges = [...state.devices.values()].filter(d => d.kind === 'water_level').slice(0, 4);
  const box = document.getElementById('levels');
  box.innerHTML = gauges.map(g => `<div class="level" data-level="${esc(g.id)}"></div>`).join('');
  levelCharts.clear();
  const start = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  await Promise.all(gauges.map(async g => {
    levelCharts.set(g.id, echarts.init(box.querySelector(`[data-level="${CSS.escape(g.id)}"]`), 'dark'));
    try {
      const rows = await api(`/api/devices/${encodeURIComponent(g.id)}/readings?start=${encodeURIComponent(start)}`);
      history.set(g.id, rows.map(r => [Date.parse(r.ts), r.value]));
    } catch (e) { history.set(g.id, []); }
  }));
  schedule('levels');
}

// Least squares over the last hour: when the level would reach `target` (ms), if rising.
function projectedCrossing(points, target) {
  const recent = points.filter(([t]) => t >= points[points.length - 1][0] - 3600 * 1000);
  if (recent.length < 3) return null;
  const n = recent.length, mx = recent.reduce((s, p) => s + p[0], 0) / n, my = recent.reduce((s, p) => s + p[1], 0) / n;
  const sxx = recent.reduce((s, p) => s + (p[0] - mx) ** 2, 0);
  if (sxx === 0) return null;
  const slope = recent.reduce((s, p) => s + (p[0] - mx) * (p[1] - my), 0) / sxx;
  const [lastT, lastV] = recent[recent.length - 1];
  if (slope <= 0 || lastV >= target) return null;
  const at = lastT + (target - lastV) / slope;
  return at - lastT < 48 * 3600 * 1000 ? [at, target] : null;
}

function renderLevels() {
  for (const [id, c] of levelCharts) {
    const device = state.devices.get(id);
    const points = history.get(id) || [];
    const r = state.readings.get(id);
    if (r && (!points.length || points[points.length - 1][0] < Date.parse(r.ts))) points.push([Date.parse(r.ts), r.value]);
    if (points.length > 2000) points.splice(0, points.length - 2000);
    const a = device.attributes || {};
    const crossing = points.length ? projectedCrossing(points, a.warning_level_m) : null;
    const values = points.map(p => p[1]);
    const lo = Math.min(...values, a.warning_level_m) - 0.5, hi = Math.max(...values, a.danger_level_m) + 0.3;
    c.setOption({
      backgroundColor: 'transparent', animation: false,
      title: {text: device.name, textStyle: {fontSize: 12, color: isStale(id) ? '#6f8597' : '#d9e7f2'}, left: 4, top: 0},
      grid: {left: 38, right: 8, top: 22, bottom: 18},
      xAxis: {type: 'time', splitNumber: 3, axisLabel: {fontSize: 9, hideOverlap: true, formatter: '{HH}:{mm}'}},
      yAxis: {type: 'value', min: lo.toFixed(1), max: hi.toFixed(1), axisLabel: {fontSize: 9}},
      series: [
        {type: 'line', showSymbol: false, data: points, lineStyle: {color: isStale(id) ? '#4a5866' : '#38c6f4'},
          markLine: {symbol: 'none', label: {fontSize: 9}, data: [
            {yAxis: a.warning_level_m, name: '警戒', lineStyle: {color: '#f0c94a'}, label: {formatter: '警戒 {c}'}},
            {yAxis: a.danger_level_m, name: '危险', lineStyle: {color: '#ff3b3b'}, label: {formatter: '危险 {c}'}}]}},
        {type: 'line', showSymbol: true, symbolSize: 4, data: crossing ? [points[points.length - 1], crossing] : [],
          lineStyle: {type: 'dashed', color: '#f0c94a'},
          label: {show: !!crossing, position: 'top', fontSize: 9, formatter: (p) => p.dataIndex === 1 ? '预计超警 ' + new Date(p.value[0]).toTimeString().slice(0, 5) : ''}},
      ],
    }, false);
  }
}

// ---- cameras --------------------------------------------------------------------------------

function cameraTile(cameraId) {
  const cam = state.cameras.get(cameraId) || {id: cameraId, name: cameraId};
  const tile = document.createElement('div');
  tile.className = 'cam';
  tile.dataset.camera = cameraId;
  const live = `/api/cameras/${encodeURIComponent(cameraId)}/live?token=${encodeURIComponent(token())}`;
  const still = `/api/cameras/${encodeURIComponent(cameraId)}/snapshot?token=${encodeURIComponent(token())}`;
  const fallback = () => {
    tile.classList.add('still');
    tile.querySelector('img, video')?.remove();
    const img = document.createElement('img');
    img.src = still;
    img.alt = cam.name;
    img.onerror = () => { img.remove(); };
    tile.prepend(img);
  };
  api(`/api/cameras/${encodeURIComponent(cameraId)}`).then(info => {
    const url = info.stream_url || '';
    if (/^rtsps?:/.test(url) || /\.m3u8(\?|$)/.test(url)) {
      const video = document.createElement('video');
      video.muted = true; video.autoplay = true; video.playsInline = true;
      tile.prepend(video);
      if (window.Hls && Hls.isSupported()) {
        const hls = new Hls({lowLatencyMode: true});
        hls.on(Hls.Events.ERROR, (_e, data) => { if (data.fatal) { hls.destroy(); fallback(); } });
        hls.loadSource(live);
        hls.attachMedia(video);
        tile._hls = hls;
      } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
        video.src = live;
      } else fallback();
    } else if (info.status === 'offline') {
      fallback();
    } else {
      const img = document.createElement('img');
      img.alt = info.name;
      img.onerror = fallback;
      img.src = live;
      tile.prepend(img);
    }
  }).catch(fallback);
  tile.insertAdjacentHTML('beforeend', `<span class="cap">${esc(cam.name)} · ${esc(cam.status || '')}</span>`);
  return tile;
}

function showCameras(container, ids) {
  container.querySelectorAll('.cam').forEach(t => { if (t._hls) t._hls.destroy(); t.querySelector('img')?.removeAttribute('src'); });
  container.replaceChildren(...ids.map(cameraTile));
}

function select(incidentId) {
  state.selected = incidentId;
  const incident = state.incidents.get(incidentId);
  if (!incident) return;
  document.getElementById('camera-title').textContent = incident.title;
  document.getElementById('notified-title').textContent = incident.title;
  showCameras(document.getElementById('camera-strip'), incident.camera_ids || []);
  loadNotified();
  if (incident.lat !== null && chart) chart.setOption({geo: {center: [incident.lon, incident.lat], zoom: 4}});
  schedule('incidents');
}

document.getElementById('incidents').addEventListener('click', (e) => {
  const li = e.target.closest('[data-incident]');
  if (li) select(li.dataset.incident);
});

// Who was notified of the selected (or commanding) incident, and whether they acknowledged:
// loaded on selection, on each change of the incident, and every few seconds meanwhile.
async function loadNotified() {
  const id = state.command || state.selected;
  if (!id) return;
  try {
    const html = notifiedHtml(await api(`/api/notifications?incident_id=${encodeURIComponent(id)}`));
    document.getElementById('notified').innerHTML = html;
    if (state.command === id) document.getElementById('command-notified').innerHTML = html;
  } catch (e) {
    document.getElementById('notified').innerHTML = `<div class="meta">${esc(explain(e))}</div>`;
  }
}
setInterval(loadNotified, 5000);

// ---- command mode ---------------------------------------------------------------------------

function enterCommand(incidentId) {
  state.command = incidentId;
  select(incidentId);
  const incident = state.incidents.get(incidentId);
  document.getElementById('command').hidden = false;
  document.getElementById('command-title').textContent = incident.title;
  document.getElementById('command-log').textContent = '';
  if (incident.lat !== null && chart) chart.setOption({geo: {center: [incident.lon, incident.lat], zoom: 8}});
  showCameras(document.getElementById('command-cameras'), incident.camera_ids || []);
  renderCommandInfo();
  loadCommandTicket();
  const vehicles = [...state.vehicles.values()].filter(v => incident.lat !== null)
    .map(v => ({v, m: distanceM(incident.lat, incident.lon, v.lat, v.lon)})).sort((a, b) => a.m - b.m).slice(0, 3);
  document.getElementById('command-vehicles').innerHTML = '<h2>最近车辆 Nearest vehicles</h2>' + (vehicles.map(({v, m}) => {
    const d = state.devices.get(v.device_id) || {attributes: {}};
    return `<div>${esc(d.name || v.device_id)} ${esc(d.attributes.plate || '')} · ${(m / 1000).toFixed(1)} km</div>`;
  }).join('') || '<div class="meta">—</div>');
  document.getElementById('cmd-department').innerHTML = state.departments.map(d => `<option value="${esc(d.id)}">${esc(d.name)}</option>`).join('');
}

function renderCommandInfo() {
  const i = state.incidents.get(state.command);
  if (!i) return;
  document.getElementById('command-info').innerHTML =
    `<div>${esc(i.severity)} · 第${i.escalation_tier}级 tier · ${esc(i.status)}</div>` +
    `<div class="meta">${esc(i.id)} · ${fmtTime(i.opened_at)} · ${esc((i.device_ids || []).join(', '))}</div>`;
}

async function loadCommandTicket() {
  const el = document.getElementById('command-ticket');
  try {
    const found = await api(`/api/tickets?incident_id=${encodeURIComponent(state.command)}`);
    const t = found[0];
    el.dataset.ticket = t ? t.id : '';
    el.dataset.status = t ? t.status : '';
    el.innerHTML = t ? `<h2>工单 Ticket ${esc(t.number)}</h2><div>${esc(t.status)}${t.supervised ? ' · 督办 supervised' : ''} · ${esc(t.department_id || '待派 queue')} · 时限 ${fmtTime(t.deadline)}</div>`
      : '<h2>工单 Ticket</h2><div class="meta">暂无 none yet</div>';
    // Only what the ticket's state allows: a dispatched ticket is supervised, not dispatched again.
    const allowed = new Set(t ? t.allowed_actions : []);
    document.getElementById('cmd-dispatch').disabled = !allowed.has('dispatch');
    document.getElementById('cmd-supervise').disabled = !allowed.has('supervise');
  } catch (e) {
    el.innerHTML = `<div class="meta">${esc(explain(e))}</div>`;
  }
}

async function commandAction(kind) {
  const log = document.getElementById('command-log');
  const note = document.getElementById('command-note').value;
  try {
    if (kind === 'dispatch') {
      const ticketId = document.getElementById('command-ticket').dataset.ticket;
      if (!ticketId) throw new Error('no ticket for this incident yet');
      const department = document.getElementById('cmd-department').value;
      const t = await api(`/api/tickets/${encodeURIComponent(ticketId)}/actions`, {method: 'POST', body: {action: 'dispatch', department_id: department, note}});
      log.textContent = `派单 dispatched to ${t.department_id}`;
      loadCommandTicket();
    } else if (kind === 'supervise') {
      const ticketId = document.getElementById('command-ticket').dataset.ticket;
      await api(`/api/tickets/${encodeURIComponent(ticketId)}/actions`, {method: 'POST', body: {action: 'supervise', note}});
      log.textContent = '督办 supervised';
      loadCommandTicket();
    } else {
      const i = await api(`/api/incidents/${encodeURIComponent(state.command)}/${kind}`, {method: 'POST', body: {note}});
      state.incidents.set(i.id, {...state.incidents.get(i.id), ...i});
      log.textContent = `${kind === 'acknowledge' ? '已确认 acknowledged' : '已升级 escalated to tier ' + i.escalation_tier} (${fmtTime(i.updated_at)})`;
      renderCommandInfo();
      schedule('incidents');
    }
  } catch (e) {
    log.textContent = explain(e);
  }
}

document.getElementById('cmd-ack').onclick = () => commandAction('acknowledge');
document.getElementById('cmd-escalate').onclick = () => commandAction('escalate');
document.getElementById('cmd-dispatch').onclick = () => commandAction('dispatch');
document.getElementById('cmd-supervise').onclick = () => commandAction('supervise');
document.getElementById('command-exit').onclick = () => {
  document.getElementById('command').hidden = true;
  showCameras(document.getElementById('command-cameras'), []);
  state.command = null;
  if (chart) chart.setOption({geo: {zoom: 1.2}});
};

// ---- render ---------------------------------------------------------------------------------

function render() {
  frame = 0;
  if (chart) {
    const series = mapSeries();
    if (series.length) chart.setOption({series}, {lazyUpdate: true});
  }
  if (dirty.has('kpis')) renderKpis();
  if (dirty.has('incidents')) renderIncidents();
  if (dirty.has('tickets')) renderTickets();
  if (dirty.has('readings') || dirty.has('devices')) renderReadings();
  if (dirty.has('levels')) renderLevels();
  dirty.clear();
}

// Values age on screen without any message: greyed once past their expected interval.
setInterval(() => {
  document.getElementById('clock').textContent = new Date().toLocaleString('zh-CN', {hour12: false});
  if (state.devices.size) schedule('devices', 'readings', 'vehicles', 'levels');
}, 1000);

window.cityopsWall = {state, select, enterCommand};
start();
