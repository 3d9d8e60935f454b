// The Plexus dashboard: renders the swarm view (/dashboard/view, then /dashboard/events) with
// plain DOM and SVG. Names and ids come from other peers: they are only ever set as text.
'use strict'

const SVG_NS = 'http://www.w3.org/2000/svg'
const BACKENDS = ['webgpu', 'tensorflow', 'wasm', 'cpu']

function el (tag, attrs, ...children) {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs ?? {})) if (v != null) e.setAttribute(k, String(v))
  for (const c of children) if (c != null) e.append(typeof c === 'string' || typeof c === 'number' ? String(c) : c)
  return e
}

function svg (tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag)
  for (const [k, v] of Object.entries(attrs ?? {})) if (v != null) e.setAttribute(k, String(v))
  if (text != null) e.textContent = String(text)
  return e
}

const short = (peer) => peer.length > 10 ? '…' + peer.slice(-6) : peer
const fmt = (n, digits = 1) => n == null ? '–' : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits })
const plural = (n, what) => `${n} ${what}${n === 1 ? '' : 's'}`
const blocks = (s, e) => e - s === 1 ? `${s}` : `${s}–${e - 1}`
/** The CSS class that colours a backend's cells (style.css). */
const tint = (backend) => `b-${BACKENDS.includes(backend) ? backend : 'other'}`

function ago (ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000))
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`
}

function renderLocal (local) {
  document.getElementById('local-title').textContent = local.role === 'gateway' ? 'This gateway' : 'This node'
  document.getElementById('who').textContent = `${local.role}${local.peerId != null ? ' ' + local.peerId : ''} · v${local.version}`
  document.getElementById('tps').textContent = fmt(local.tokensPerSecond)
  document.getElementById('sessions').textContent = fmt(local.sessions, 0)
  document.getElementById('tokens').textContent = fmt(local.tokensTotal, 0)
  document.getElementById('peers').textContent = fmt(local.peers, 0)
  document.getElementById('serving').textContent = local.serving != null ? `${local.serving.model}, blocks ${blocks(local.serving.start, local.serving.end)}` : '–'
  document.getElementById('serving').parentElement.hidden = local.role === 'gateway'
  document.getElementById('routes-title').textContent = local.role === 'gateway' ? 'Recent routes' : 'Recent sessions through this node'
  const spark = document.getElementById('spark')
  const h = local.history.length > 0 ? local.history : [0]
  const max = Math.max(1, ...h)
  const x = (i) => h.length === 1 ? 300 : (i / (h.length - 1)) * 300
  const y = (v) => 58 - (v / max) * 54
  const pts = h.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ')
  spark.replaceChildren(
    svg('polygon', { points: `0,60 ${pts} 300,60` }),
    svg('polyline', { points: pts }),
    svg('title', {}, `last ${h.length} s, peak ${fmt(max)} tokens/s`)
  )
}

/** Blocks across, servers down; the last row counts each block's servers (red: none). */
function coverageMap (m) {
  const cw = 22; const rh = 22; const lw = 80; const top = 18
  const rows = m.servers.length
  const width = lw + m.numBlocks * cw + 4
  const height = top + (rows + 1) * rh + 4
  const root = svg('svg', { class: 'coverage', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `coverage of ${m.numBlocks} blocks by ${rows} servers`, 'data-model': m.id })
  // as wide as the card allows up to 1.6× its natural size; below 8 px a block, the card scrolls
  root.style.maxWidth = `${Math.round(width * 1.6)}px`
  root.style.minWidth = `${lw + m.numBlocks * 8}px`
  const every = m.numBlocks <= 24 ? 1 : m.numBlocks <= 64 ? 4 : 8
  for (let b = 0; b < m.numBlocks; b += every) {
    root.append(svg('text', { x: lw + b * cw + cw / 2, y: top - 4, 'text-anchor': 'middle', class: 'label' }, b))
  }
  m.servers.forEach((s, r) => {
    const y = top + r * rh
    root.append(svg('text', { x: lw - 6, y: y + rh - 7, 'text-anchor': 'end', class: 'label', 'data-peer': s.peer }, s.self ? 'here' : short(s.peer)))
    for (let b = 0; b < m.numBlocks; b++) {
      const held = b >= s.start && b < s.end
      const cell = svg('rect', {
        x: lw + b * cw + 1.5, y: y + 1.5, width: cw - 3, height: rh - 3, rx: 3,
        class: `cell${held ? ` held ${tint(s.backend)}` : ' free'}${held && s.self ? ' self' : ''}`,
        'data-peer': s.peer, 'data-block': b, 'data-held': held
      })
      if (held) cell.append(svg('title', {}, `${s.peer}\nblocks ${blocks(s.start, s.end)} · ${s.backend ?? '?'} · ${fmt(s.throughput)} tokens/s per block`))
      root.append(cell)
    }
  })
  const y = top + rows * rh
  root.append(svg('text', { x: lw - 6, y: y + rh - 7, 'text-anchor': 'end', class: 'label' }, 'servers'))
  m.coverage.forEach((n, b) => {
    root.append(svg('text', { x: lw + b * cw + cw / 2, y: y + rh - 7, 'text-anchor': 'middle', class: `count${n === 0 ? ' zero' : ''}`, 'data-block': b }, n))
  })
  return root
}

function reputation (r) {
  if (r == null) return el('span', { class: 'muted' }, '–')
  const text = `${r.passed} ✓ ${r.failed} ✗`
  return el('span', { class: r.failed > 0 ? 'rep-bad' : 'rep-good', title: `from ${r.verifiers} verifier(s)` }, text)
}

function serverTable (m) {
  const head = el('tr', {}, ...['server', 'blocks', 'backend', 'format', 'tokens/s per block', 'latency', 'sessions', 'reputation', 'version']
    .map((h, i) => el('th', { class: i >= 4 && i <= 6 ? 'num' : null }, h)))
  const rows = m.servers.map(s => el('tr', { class: s.self ? 'self' : null, 'data-peer': s.peer },
    el('td', { title: s.peer }, short(s.peer)),
    el('td', {}, blocks(s.start, s.end)),
    el('td', {}, el('i', { class: `swatch ${tint(s.backend)}` }), s.backend ?? '?'),
    el('td', {}, s.format ?? '?'),
    el('td', { class: 'num', title: 'measured per block, one session' }, fmt(s.throughput)),
    el('td', { class: 'num' }, s.self ? 'here' : s.latencyMs != null ? `${fmt(s.latencyMs, 0)} ms` : 'no answer'),
    el('td', { class: 'num' }, `${s.sessions} / ${s.maxSessions}`),
    el('td', {}, reputation(s.reputation)),
    el('td', {}, s.version)
  ))
  return el('div', { class: 'scroll' }, el('table', { class: 'servers' }, el('thead', {}, head), el('tbody', {}, ...rows)))
}

function legend (m) {
  const used = [...new Set(m.servers.map(s => s.backend ?? '?'))]
  return el('div', { class: 'legend' }, ...used.map(b => el('span', {}, el('i', { class: `swatch ${tint(b)}` }), b)))
}

function renderModels (view) {
  const box = document.getElementById('models')
  if (view.models.length === 0) {
    const why = view.local.peerId == null ? 'This gateway runs a local model: there is no swarm to show.' : view.swarmError != null ? `The last look at the swarm failed: ${view.swarmError}` : view.swarmAt === 0 ? 'Looking at the swarm…' : 'No server announces a model.'
    box.replaceChildren(el('section', { class: 'card' }, el('p', { class: 'muted' }, why)))
    return
  }
  box.replaceChildren(...view.models.map(m => {
    const missing = m.coverage.filter(n => n === 0).length
    return el('section', { class: 'card model', 'data-model': m.id },
      el('div', { class: 'model-head' },
        el('h2', {}, m.name),
        el('code', { title: m.id }, m.id.slice(0, 12)),
        el('span', { class: `badge${missing > 0 ? ' bad' : ''}` }, missing > 0 ? `${missing} of ${m.numBlocks} blocks unserved` : `all ${m.numBlocks} blocks served`),
        el('span', { class: 'muted' }, `${plural(m.servers.length, 'server')}${m.verifiers > 0 ? `, ${plural(m.verifiers, 'verifier')}` : ''}`)),
      el('h3', {}, 'Coverage: blocks × servers'),
      el('div', { class: 'scroll' }, coverageMap(m)),
      legend(m),
      el('h3', {}, 'Servers'),
      serverTable(m))
  }))
}

function renderRoutes (routes) {
  const list = document.getElementById('routes')
  if (routes.length === 0) {
    list.replaceChildren(el('li', { class: 'muted' }, 'No generation yet.'))
    return
  }
  list.replaceChildren(...routes.map(r => {
    const li = el('li', { class: 'route' }, el('span', { class: r.open ? 'when live' : 'when' }, r.open ? 'live' : ago(r.at)), el('span', {}, r.model + ':'))
    r.hops.forEach((h, i) => {
      if (i > 0) li.append(el('span', { class: 'arrow' }, '→'))
      li.append(el('span', { class: 'hop', title: h.peer }, `${short(h.peer)} [${blocks(h.start, h.end)}]`))
    })
    return li
  }))
}

function render (view) {
  renderLocal(view.local)
  renderModels(view)
  renderRoutes(view.routes)
  document.getElementById('swarm-at').textContent = view.swarmAt > 0 ? `swarm looked at ${ago(view.swarmAt)}` : ''
  document.body.dataset.updated = String(view.at)
}

function setLink (state) {
  const link = document.getElementById('link')
  link.className = `link ${state}`
  link.textContent = state === 'live' ? 'live' : state === 'down' ? 'reconnecting…' : 'connecting…'
}

function connect () {
  fetch('dashboard/view').then(r => r.json()).then(render).catch(() => {})
  const events = new EventSource('dashboard/events')
  events.onopen = () => setLink('live')
  events.onmessage = (e) => { setLink('live'); render(JSON.parse(e.data)) }
  // EventSource reconnects by itself; say so meanwhile
  events.onerror = () => setLink('down')
}

connect()
