/* Leveret dashboard: a one-page app over the management HTTP API (RabbitMQ 3.10's).
 *
 * Pages are chosen by the URL's hash (#/queues, #/queues/<vhost>/<name> ...). The page shown
 * polls the API every few seconds (the Refresh choice in the header) and stops while the tab
 * is hidden. The login is kept in sessionStorage and sent as HTTP basic auth; a 401 shows the
 * login form again. Everything is built with DOM calls, never from HTML strings, so names and
 * message bodies are shown as text whatever they contain.
 */
"use strict";

(() => {
  const AUTH_KEY = "leveret.auth";
  const INTERVAL_KEY = "leveret.interval";
  const DEFAULT_INTERVAL = 2000;
  const $ = (selector, root = document) => root.querySelector(selector);

  // -- DOM and formatting helpers --------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "value" || key === "checked" || key === "disabled") el[key] = value;
      else el.setAttribute(key, value === true ? "" : value);
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const integer = new Intl.NumberFormat("en-US");
  const decimal = new Intl.NumberFormat("en-US", {minimumFractionDigits: 1, maximumFractionDigits: 1});
  const count = (n) => (n === undefined || n === null ? "–" : integer.format(n));
  const perSecond = (n) => (n === undefined || n === null ? "–" : decimal.format(n) + "/s");
  const pick = (object, path) => path.split(".").reduce((v, k) => (v == null ? undefined : v[k]), object);
  const enc = encodeURIComponent;

  function bytes(n) {
    if (n === undefined || n === null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(n >= 100 ? 0 : 1) : n) + " " + units[i];
  }

  function duration(ms) {
    let s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400); s -= d * 86400;
    const hr = Math.floor(s / 3600); s -= hr * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d}d ${hr}h`;
    if (hr) return `${hr}h ${m}m`;
    return m ? `${m}m ${s}s` : `${s}s`;
  }

  const exchangeLabel = (name) => (name === "" || name === "amq.default" ? "(AMQP default)" : name);
  const queueHref = (vhost, name) => `#/queues/${enc(vhost)}/${enc(name)}`;
  const exchangeHref = (vhost, name) => `#/exchanges/${enc(vhost)}/${enc(name || "amq.default")}`;
  const json = (value) => JSON.stringify(value);

  function toast(text, bad = false) {
    const el = h("div", {class: bad ? "toast bad" : "toast", role: "status"}, text);
    $("#toasts").append(el);
    setTimeout(() => el.remove(), bad ? 7000 : 3500);
  }

  function confirmAction(text, okLabel = "Delete") {
    const dialog = $("#confirm");
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
    });
  }

  // -- the API ---------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, reason, login = false) {
      super(reason);
      this.status = status;
      this.login = login;
    }
  }

  function basicToken(user, password) {
    let binary = "";
    for (const byte of new TextEncoder().encode(`${user}:${password}`)) binary += String.fromCharCode(byte);
    return btoa(binary);
  }

  async function api(path, {method = "GET", body, headers = {}} = {}) {
    const token = sessionStorage.getItem(AUTH_KEY);
    if (!token) {
      showLogin();
      throw new ApiError(401, "Not logged in", true);
    }
    // credentials "omit": the browser never shows its own password prompt on a 401
    const init = {method, credentials: "omit", cache: "no-store",
      headers: {Authorization: "Basic " + token, ...headers}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch("api" + path, init);
    } catch (error) {
      throw new ApiError(0, `The broker does not answer (${error.message})`);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = text; }
    }
    if (response.ok) return data;
    const reason = (data && typeof data === "object" && (data.reason || data.error))
      || (typeof data === "string" && data) || `HTTP ${response.status} ${response.statusText}`;
    if (response.status === 401
        && (response.headers.has("WWW-Authenticate") || /login failed|not management/i.test(reason))) {
      showLogin(/login failed/i.test(reason) ? "Login failed: wrong user name or password." : reason);
      throw new ApiError(401, reason, true);
    }
    throw new ApiError(response.status, reason);
  }

  // -- session, polling and routing ------------------------------------------------------------
  const app = {page: null, timer: null, interval: DEFAULT_INTERVAL, user: null, tags: [],
    running: false, again: false};
  const isAdmin = () => app.tags.includes("administrator");
  const isMonitor = () => isAdmin() || app.tags.includes("monitoring");

  function showLogin(message = "") {
    clearTimeout(app.timer);
    app.user = null;
    sessionStorage.removeItem(AUTH_KEY);
    $("#login-error").textContent = message;
    $("#login").hidden = false;
    document.body.dataset.polling = "paused";
    $("#login-password").focus();
  }

  async function login(event) {
    event.preventDefault();
    const user = $("#login-user").value;
    sessionStorage.setItem(AUTH_KEY, basicToken(user, $("#login-password").value));
    $("#login-submit").disabled = true;
    try {
      await start();
    } catch (error) {
      if (!error.login) $("#login-error").textContent = error.message;
    } finally {
      $("#login-submit").disabled = false;
    }
  }

  async function start() {
    const me = await api("/whoami");
    app.user = me.name;
    app.tags = Array.isArray(me.tags) ? me.tags : String(me.tags || "").split(",").filter(Boolean);
    $("#whoami").textContent = app.tags.length ? `${me.name} · ${app.tags.join(", ")}` : me.name;
    $("#nav-admin").hidden = !isAdmin();
    $("#login").hidden = true;
    route();
  }

  function schedule() {
    clearTimeout(app.timer);
    app.timer = null;
    const paused = !app.interval || document.hidden || !app.page || !app.user;
    document.body.dataset.polling = paused ? "paused" : "running";
    if (!paused) app.timer = setTimeout(refresh, app.interval);
  }

  // Refresh the page shown now (one refresh at a time; a request during one runs after it).
  async function refresh() {
    clearTimeout(app.timer);
    if (app.running) {
      app.again = true;
      return;
    }
    app.running = true;
    try {
      do {
        app.again = false;
        const page = app.page;
        if (!page || !app.user) break;
        try {
          await page.refresh();
          if (page === app.page) page.showError(null);
        } catch (error) {
          if (page === app.page && !error.login) page.showError(error);
          if (!(error instanceof ApiError)) console.error(error); // a bug: tests look for these
        }
      } while (app.again);
    } finally {
      app.running = false;
    }
    schedule();
  }

  const ROUTES = [
    [/^$/, overviewPage],
    [/^queues$/, queuesPage],
    [/^queues\/([^/]+)\/([^/]+)$/, queuePage],
    [/^exchanges$/, exchangesPage],
    [/^exchanges\/([^/]+)\/([^/]+)$/, exchangePage],
    [/^connections$/, connectionsPage],
    [/^admin$/, adminPage],
  ];

  function route() {
    if (!app.user) return;
    const hash = location.hash.replace(/^#\/?/, "");
    let factory = notFoundPage;
    let params = [];
    for (const [pattern, page] of ROUTES) {
      const match = pattern.exec(hash);
      if (match) {
        factory = page;
        params = match.slice(1).map(decodeURIComponent);
        break;
      }
    }
    if (app.page && app.page.leave) app.page.leave();
    const notice = h("div", {class: "notice", id: "page-error", hidden: true});
    const root = h("div", {id: "page"});
    $("#main").replaceChildren(notice, root);
    const page = factory(root, ...params);
    page.showError = (error) => {
      notice.hidden = !error;
      notice.textContent = !error ? ""
        : error.status === 404 && page.missing ? page.missing : error.message;
      if (error && page.onError) page.onError(error);
    };
    app.page = page;
    document.title = page.title ? `${page.title} · Leveret` : "Leveret";
    document.body.dataset.page = page.nav || "";
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", link.dataset.page === page.nav);
    }
    refresh();
  }

  // -- building blocks -------------------------------------------------------------------------
  function pageHead(title, subtitle, ...buttons) {
    return h("div", {class: "page-head"},
      h("div", null, h("h1", null, title), h("div", {class: "muted subtitle"}, subtitle)),
      buttons.length ? h("div", {class: "buttons"}, buttons) : null);
  }

  function tiles(spec) {
    const values = {};
    const el = h("div", {class: "tiles"}, spec.map(([key, label]) => {
      values[key] = h("div", {class: "value", id: `tile-${key}`}, "–");
      return h("div", {class: "tile"}, h("div", {class: "label"}, label), values[key]);
    }));
    return {el, set: (key, text) => { values[key].textContent = text; }};
  }

  function chartCard(title, note, id, series, unit, integer = false) {
    const canvas = h("canvas", {id, role: "img", "aria-label": title});
    const legend = h("ul", {class: "legend"});
    const card = h("section", {class: "card chart-card"},
      h("div", {class: "chart-head"}, h("h2", null, title), h("span", {class: "muted"}, note)),
      legend, canvas);
    return {card, chart: new LineChart(canvas, series, {unit, legend, integer})};
  }

  function kvTable(rows) {
    return h("table", {class: "kv"}, h("tbody", null, rows.filter(Boolean).map(([key, value]) =>
      h("tr", null, h("th", null, key), h("td", null, value)))));
  }

  function facts(rows) {
    return h("dl", {class: "facts"}, rows.filter(Boolean).map(([key, value]) =>
      h("div", null, h("dt", null, key), h("dd", null, value))));
  }

  function argumentsText(args) {
    const entries = Object.entries(args || {});
    if (!entries.length) return h("span", {class: "muted"}, "none");
    return entries.map(([key, value]) => h("div", {class: "mono"}, `${key} = ${json(value)}`));
  }

  const FEATURES = {"x-message-ttl": "TTL", "x-expires": "Exp", "x-max-length": "Lim",
    "x-max-length-bytes": "Lim B", "x-dead-letter-exchange": "DLX", "x-dead-letter-routing-key": "DLK",
    "x-max-priority": "Pri", "x-overflow": "Ovfl", "x-single-active-consumer": "SAC",
    "x-queue-mode": "Mode", "x-delivery-limit": "DLim"};

  function features(item) {
    const badges = [];
    if (item.durable) badges.push(h("span", {class: "badge", title: "durable"}, "D"));
    if (item.auto_delete) badges.push(h("span", {class: "badge", title: "auto-delete"}, "AD"));
    if (item.exclusive) badges.push(h("span", {class: "badge", title: "exclusive"}, "Excl"));
    if (item.internal) badges.push(h("span", {class: "badge", title: "internal"}, "I"));
    for (const [key, value] of Object.entries(item.arguments || {})) {
      if (key === "x-queue-type") continue;
      badges.push(h("span", {class: "badge accent", title: `${key}: ${json(value)}`}, FEATURES[key] || key));
    }
    return badges;
  }

  // A table whose rows are rebuilt from data; a row whose data did not change is kept as it
  // is (so a button in it is not replaced under the pointer).
  function dataTable(columns, {key, empty = "Nothing here yet.", onSort, sort} = {}) {
    const head = h("tr", null, columns.map((column) => {
      const th = h("th", {class: [column.num ? "num" : "", column.sort ? "sortable" : ""].join(" ").trim() || null,
        "data-sort": column.sort || null}, column.label);
      if (column.sort && onSort) th.addEventListener("click", () => onSort(column));
      return th;
    }));
    const body = h("tbody");
    const el = h("table", null, h("thead", null, head), body);
    let rows = new Map();
    function render(items) {
      const next = new Map();
      const trs = items.map((item) => {
        const id = key(item);
        const signature = json(item);
        const old = rows.get(id);
        const tr = old && old.signature === signature ? old.tr : h("tr", {"data-key": id},
          columns.map((column) => h("td", {class: `col-${column.id}${column.num ? " num" : ""}`},
            column.cell(item))));
        next.set(id, {signature, tr});
        return tr;
      });
      rows = next;
      if (!trs.length) trs.push(h("tr", null, h("td", {class: "empty", colspan: columns.length}, empty)));
      body.replaceChildren(...trs);
    }
    function showSort(current) {
      for (const th of head.children) {
        th.classList.toggle("sorted", !!current.sort && th.dataset.sort === current.sort);
        th.classList.toggle("reverse", !!current.reverse);
      }
    }
    if (sort) showSort(sort);
    return {el, render, showSort};
  }

  // A list the API pages, filters and sorts (RabbitMQ's ?page=&page_size=&name=&sort=).
  function pagedList(path, columns, {key, empty, sort = "name", reverse = false, noun = "items"}) {
    const state = {page: 1, size: 20, name: "", regex: false, sort, reverse};
    const table = dataTable(columns, {key, empty, sort: state, onSort: (column) => {
      if (state.sort === column.sort) state.reverse = !state.reverse;
      else Object.assign(state, {sort: column.sort, reverse: !!column.num});
      table.showSort(state);
      refresh();
    }});
    let timer = null;
    const filter = h("input", {type: "search", placeholder: "Filter by name", class: "filter",
      "aria-label": "Filter by name", oninput: () => {
        clearTimeout(timer);
        timer = setTimeout(() => { state.name = filter.value; state.page = 1; refresh(); }, 250);
      }});
    const regex = h("input", {type: "checkbox", onchange: () => { state.regex = regex.checked; state.page = 1; refresh(); }});
    const size = h("select", {"aria-label": "Page size", onchange: () => {
      state.size = Number(size.value); state.page = 1; refresh();
    }}, [20, 50, 100, 500].map((n) => h("option", {value: String(n)}, `${n} per page`)));
    const summary = h("span", {class: "summary"});
    const previous = h("button", {class: "ghost small", onclick: () => { state.page -= 1; refresh(); }}, "‹ Previous");
    const next = h("button", {class: "ghost small", onclick: () => { state.page += 1; refresh(); }}, "Next ›");
    const pageLabel = h("span");
    const el = h("div", null,
      h("div", {class: "toolbar"}, filter, h("label", {class: "inline"}, regex, "Regex"),
        h("span", {class: "grow"}), summary, size),
      table.el,
      h("div", {class: "pager"}, previous, pageLabel, next));

    async function load() {
      const query = new URLSearchParams({page: state.page, page_size: state.size, name: state.name,
        use_regex: state.regex, pagination: true});
      if (state.sort) {
        query.set("sort", state.sort);
        query.set("sort_reverse", state.reverse);
      }
      let data;
      try {
        data = await api(`${path}?${query}`);
      } catch (error) {
        if (error.status === 400 && state.page > 1) { // the page went past the end: go back
          state.page = 1;
          return load();
        }
        throw error;
      }
      table.render(data.items);
      const filtered = data.filtered_count === data.total_count ? "" : ` (of ${count(data.total_count)})`;
      summary.textContent = `${count(data.filtered_count)} ${noun}${filtered}`;
      pageLabel.textContent = `Page ${data.page} of ${data.page_count}`;
      previous.disabled = data.page <= 1;
      next.disabled = data.page >= data.page_count;
      return data;
    }
    return {el, load, state};
  }

  // Headers typed as "name = value" lines: numbers and true/false keep their type.
  function parseHeaders(text) {
    const headers = {};
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const match = /^\s*([^=:]+?)\s*[=:]\s*(.*?)\s*$/.exec(line);
      if (!match) throw new Error(`A header line needs "name = value": ${line}`);
      const raw = match[2];
      headers[match[1]] = /^-?\d+$/.test(raw) ? Number(raw) : raw === "true" ? true : raw === "false" ? false : raw;
    }
    return headers;
  }

  function publishCard(vhost, exchange, fixedRoutingKey) {
    const field = (label, input) => h("label", null, label, input);
    const routingKey = h("input", {id: "publish-routing-key", value: fixedRoutingKey ?? ""});
    const deliveryMode = h("select", {id: "publish-delivery-mode"},
      h("option", {value: "1"}, "1 · non-persistent"), h("option", {value: "2"}, "2 · persistent"));
    const contentType = h("input", {id: "publish-content-type", placeholder: "text/plain"});
    const correlationId = h("input", {id: "publish-correlation-id"});
    const messageId = h("input", {id: "publish-message-id"});
    const expiration = h("input", {id: "publish-expiration", placeholder: "ms"});
    const headers = h("textarea", {id: "publish-headers", rows: 2, placeholder: "name = value (one a line)"});
    const payload = h("textarea", {id: "publish-payload", rows: 5, placeholder: "Message body"});
    const button = h("button", {type: "submit", id: "publish-button"}, "Publish message");
    const form = h("form", {class: "stack", onsubmit: async (event) => {
      event.preventDefault();
      let properties;
      try {
        properties = {delivery_mode: Number(deliveryMode.value)};
        const parsed = parseHeaders(headers.value);
        if (Object.keys(parsed).length) properties.headers = parsed;
      } catch (error) {
        toast(error.message, true);
        return;
      }
      for (const [name, input] of [["content_type", contentType], ["correlation_id", correlationId],
        ["message_id", messageId], ["expiration", expiration]]) {
        if (input.value.trim()) properties[name] = input.value.trim();
      }
      button.disabled = true;
      try {
        const result = await api(`/exchanges/${enc(vhost)}/${enc(exchange || "amq.default")}/publish`, {
          method: "POST",
          body: {properties, routing_key: routingKey.value, payload: payload.value, payload_encoding: "string"}});
        if (result && result.routed === false) toast("Message published, but no queue took it (not routed).", true);
        else toast("Message published.");
        refresh();
      } catch (error) {
        if (!error.login) toast(`Not published: ${error.message}`, true);
      } finally {
        button.disabled = false;
      }
    }},
    h("div", {class: "fields"},
      fixedRoutingKey === undefined ? field("Routing key", routingKey) : null,
      field("Delivery mode", deliveryMode), field("Content type", contentType),
      field("Correlation id", correlationId), field("Message id", messageId),
      field("Expiration", expiration)),
    field("Headers", headers), field("Payload", payload), h("div", null, button));
    const where = fixedRoutingKey === undefined
      ? `to exchange ${exchangeLabel(exchange)}`
      : "through the default exchange, routing key = queue name";
    return h("section", {class: "card", id: "publish"}, h("h2", null, "Publish a message"),
      h("p", {class: "muted"}, `Sent ${where}.`), form);
  }

  // -- message bodies --------------------------------------------------------------------------
  function readableBody(message) {
    let text = null;
    let note = "";
    let shown = 0;
    if (message.payload_encoding === "base64") {
      const binary = atob(message.payload || "");
      const data = Uint8Array.from(binary, (c) => c.charCodeAt(0));
      shown = data.length;
      try {
        text = new TextDecoder("utf-8", {fatal: true}).decode(data);
        if (/[\x00-\x08\x0e-\x1f]/.test(text)) throw new Error("control characters");
      } catch {
        const rows = [];
        for (let at = 0; at < Math.min(data.length, 1024); at += 16) {
          const chunk = Array.from(data.slice(at, at + 16));
          const hex = chunk.map((b) => b.toString(16).padStart(2, "0")).join(" ");
          const ascii = chunk.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
          rows.push(`${at.toString(16).padStart(6, "0")}  ${hex.padEnd(47)}  ${ascii}`);
        }
        text = rows.join("\n");
        note = `binary, shown in hex${data.length > 1024 ? " (first 1 KiB)" : ""}`;
      }
    } else {
      text = message.payload || "";
      shown = new TextEncoder().encode(text).length;
    }
    const trimmed = text.trim();
    if (!note && (trimmed.startsWith("{") || trimmed.startsWith("["))) {
      try {
        text = JSON.stringify(JSON.parse(trimmed), null, 2);
        note = "JSON, pretty-printed";
      } catch { /* not JSON after all: shown as it is */ }
    }
    if (message.payload_bytes > shown) note = [note, `truncated: ${count(shown)} of ${count(message.payload_bytes)} bytes`].filter(Boolean).join("; ");
    return {text, note};
  }

  function propertyValue(name, value) {
    if (name === "timestamp" && typeof value === "number") return new Date(value * 1000).toISOString();
    if (name === "delivery_mode") return value === 2 ? "2 (persistent)" : `${value} (non-persistent)`;
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function messageView(message, index) {
    const properties = Array.isArray(message.properties) ? {} : message.properties || {};
    const {text, note} = readableBody(message);
    const rows = Object.entries(properties).map(([name, value]) =>
      h("tr", null, h("th", null, name), h("td", {class: "mono"}, propertyValue(name, value))));
    return h("article", {class: "message", "data-index": index},
      h("header", null,
        h("strong", null, `#${index + 1}`),
        h("span", null, "exchange ", h("code", null, exchangeLabel(message.exchange))),
        h("span", null, "routing key ", h("code", null, message.routing_key || "(empty)")),
        h("span", null, `${count(message.payload_bytes)} bytes`),
        message.redelivered ? h("span", {class: "badge accent"}, "redelivered") : null,
        note ? h("span", {class: "muted"}, note) : null),
      h("div", {class: "body"},
        h("div", {class: "props"}, rows.length ? h("table", null, h("tbody", null, rows))
          : h("span", {class: "muted"}, "no properties")),
        h("pre", {class: "payload"}, text)));
  }

  // -- pages -----------------------------------------------------------------------------------
  const RATE_SERIES = [
    {key: "publish", label: "Publish", color: "#2563eb", fill: true},
    {key: "deliver_get", label: "Deliver / get", color: "#16a34a"},
    {key: "confirm", label: "Confirm", color: "#9333ea", dash: [5, 4]},
    {key: "ack", label: "Ack", color: "#d97706", dash: [2, 3]},
    {key: "redeliver", label: "Redeliver", color: "#dc2626"},
  ];
  const DEPTH_SERIES = [
    {label: "Ready", color: "#0f766e", fill: true},
    {label: "Unacked", color: "#ea580c"},
  ];

  function overviewPage(root) {
    const alarms = h("div", {class: "alarms ok", id: "alarms"}, h("span", {class: "dot"}), "No alarms");
    const counts = tiles([["connections", "Connections"], ["channels", "Channels"],
      ["exchanges", "Exchanges"], ["queues", "Queues"], ["consumers", "Consumers"],
      ["ready", "Ready"], ["unacked", "Unacked"], ["messages", "Total messages"]]);
    const rates = chartCard("Message rates", "messages per second, all virtual hosts", "chart-rates",
      RATE_SERIES, "/s");
    const depth = chartCard("Queued messages", "all queues", "chart-messages", DEPTH_SERIES, "", true);
    const node = h("section", {class: "card", id: "node"}, h("h2", null, "Node"));
    const heading = pageHead("Overview", "");
    root.append(heading, alarms, counts.el, h("div", {class: "grid"}, rates.card, depth.card), node);

    let history = isMonitor() ? "server" : "page"; // where rate samples come from
    let previous = null; // the last totals: {t, counts}

    function addTotals(t, totals) {
      if (previous && t > previous.t) {
        const elapsed = t - previous.t;
        rates.chart.push(t, RATE_SERIES.map((s) =>
          Math.max(0, ((totals[s.key] || 0) - (previous.totals[s.key] || 0)) / elapsed)));
      }
      if (!previous || t > previous.t) previous = {t, totals};
    }

    async function pullRates(overview) {
      if (history === "server") {
        try {
          const data = await api("/leveret/history" + (previous ? `?since=${previous.t}` : ""));
          for (const [t, totals] of data.samples) addTotals(t, totals);
          return;
        } catch (error) {
          if (error.login || ![401, 403, 404].includes(error.status)) throw error;
          history = "page"; // not a Leveret, or not allowed: sample while the page is open
        }
      }
      const totals = {};
      for (const s of RATE_SERIES) totals[s.key] = pick(overview, `message_stats.${s.key}`) || 0;
      addTotals(Date.now() / 1000, totals);
    }

    async function refresh() {
      const [overview, nodes] = await Promise.all([api("/overview"),
        isMonitor() ? api("/nodes").catch(() => null) : null]);
      const info = nodes && nodes[0];
      await pullRates(overview);
      const objects = overview.object_totals || {};
      const queued = overview.queue_totals || {};
      for (const key of ["connections", "channels", "exchanges", "queues", "consumers"]) counts.set(key, count(objects[key]));
      counts.set("ready", count(queued.messages_ready));
      counts.set("unacked", count(queued.messages_unacknowledged));
      counts.set("messages", count(queued.messages));
      depth.chart.push(Date.now() / 1000, [queued.messages_ready || 0, queued.messages_unacknowledged || 0]);

      const active = new Set(overview.alarms || []);
      if (info && info.mem_alarm) active.add("low on memory");
      if (info && info.disk_free_alarm) active.add("low on disk");
      alarms.className = active.size ? "alarms bad" : "alarms ok";
      alarms.replaceChildren(h("span", {class: "dot"}), active.size
        ? `Resource alarm: ${[...active].join(", ")} · publishing connections are blocked`
        : "No alarms");

      const product = `${overview.product_name || "RabbitMQ"} ${overview.product_version || overview.rabbitmq_version || ""}`;
      heading.querySelector(".subtitle").textContent = `${product} · node ${overview.node} · cluster ${overview.cluster_name}`;
      const listeners = (overview.listeners || []).map((l) => h("span", {class: "badge"}, `${l.protocol} :${l.port}`));
      node.replaceChildren(h("h2", null, "Node"), facts([
        ["Product", product],
        ["Management API", overview.management_version],
        overview.python_version ? ["Python", overview.python_version] : null,
        info ? ["Uptime", duration(info.uptime)] : null,
        info ? ["Memory used", bytes(info.mem_used)] : null,
        info && info.disk_free != null ? ["Disk free", bytes(info.disk_free)] : null,
        ["Listeners", listeners.length ? listeners : "–"],
      ]));
    }

    return {nav: "overview", title: "Overview", refresh,
      leave: () => { rates.chart.destroy(); depth.chart.destroy(); }};
  }

  function vhostOptions(select, vhosts) {
    const names = vhosts.map((v) => v.name);
    const current = [...select.options].map((o) => o.value);
    if (json(names) === json(current)) return;
    const keep = select.value;
    select.replaceChildren(...names.map((name) => h("option", {value: name}, name)));
    if (names.includes(keep)) select.value = keep;
  }

  function queuesPage(root) {
    const columns = [
      {id: "vhost", label: "Virtual host", sort: "vhost", cell: (q) => q.vhost},
      {id: "name", label: "Name", sort: "name", cell: (q) => h("a", {href: queueHref(q.vhost, q.name)}, q.name)},
      {id: "type", label: "Type", sort: "type", cell: (q) => q.type || "classic"},
      {id: "features", label: "Features", cell: features},
      {id: "state", label: "State", cell: (q) => h("span", {class: q.state === "running" ? "badge ok" : "badge bad"}, q.state || "–")},
      {id: "ready", label: "Ready", sort: "messages_ready", num: true, cell: (q) => count(q.messages_ready)},
      {id: "unacked", label: "Unacked", sort: "messages_unacknowledged", num: true, cell: (q) => count(q.messages_unacknowledged)},
      {id: "messages", label: "Total", sort: "messages", num: true, cell: (q) => count(q.messages)},
      {id: "consumers", label: "Consumers", sort: "consumers", num: true, cell: (q) => count(q.consumers)},
      {id: "incoming", label: "Incoming", sort: "message_stats.publish_details.rate", num: true,
        cell: (q) => perSecond(pick(q, "message_stats.publish_details.rate") || 0)},
      {id: "deliver", label: "Deliver / get", sort: "message_stats.deliver_get_details.rate", num: true,
        cell: (q) => perSecond(pick(q, "message_stats.deliver_get_details.rate") || 0)},
      {id: "ack", label: "Ack", sort: "message_stats.ack_details.rate", num: true,
        cell: (q) => perSecond(pick(q, "message_stats.ack_details.rate") || 0)},
    ];
    const list = pagedList("/queues", columns, {key: (q) => `${q.vhost}\n${q.name}`, noun: "queues",
      empty: "No queues match."});
    const vhost = h("select", {id: "add-queue-vhost"});
    const name = h("input", {id: "add-queue-name", required: true, placeholder: "orders"});
    const type = h("select", {id: "add-queue-type"}, h("option", {value: "classic"}, "classic"),
      h("option", {value: "quorum"}, "quorum"));
    const durable = h("input", {type: "checkbox", id: "add-queue-durable", checked: true});
    const form = h("form", {class: "inline", onsubmit: async (event) => {
      event.preventDefault();
      const body = {durable: durable.checked, auto_delete: false, arguments: {}};
      if (type.value === "quorum") Object.assign(body, {durable: true, arguments: {"x-queue-type": "quorum"}});
      try {
        await api(`/queues/${enc(vhost.value)}/${enc(name.value)}`, {method: "PUT", body});
        toast(`Queue ${name.value} declared.`);
        name.value = "";
        refresh();
      } catch (error) {
        if (!error.login) toast(`Not declared: ${error.message}`, true);
      }
    }}, h("label", null, "Virtual host", vhost), h("label", null, "Name", name),
    h("label", null, "Type", type), h("label", null, durable, "Durable"),
    h("button", {type: "submit"}, "Add queue"));
    root.append(pageHead("Queues", "Click a column heading to sort; the broker filters, sorts and pages."),
      h("section", {class: "card", id: "queues"}, list.el),
      h("section", {class: "card"}, h("h2", null, "Add a queue"), form));
    let vhostsLoaded = false;
    return {nav: "queues", title: "Queues", refresh: async () => {
      await list.load();
      if (!vhostsLoaded) { vhostOptions(vhost, await api("/vhosts")); vhostsLoaded = true; }
    }};
  }

  function queuePage(root, vhost, name) {
    const base = `/queues/${enc(vhost)}/${enc(name)}`;
    const purge = h("button", {id: "purge", class: "ghost", onclick: async () => {
      if (!await confirmAction(`Purge queue "${name}"? Its ready messages are deleted.`, "Purge")) return;
      try {
        await api(`${base}/contents`, {method: "DELETE"});
        toast(`Queue ${name} purged.`);
        refresh();
      } catch (error) {
        if (!error.login) toast(`Not purged: ${error.message}`, true);
      }
    }}, "Purge");
    const remove = h("button", {id: "delete", class: "danger", onclick: async () => {
      if (!await confirmAction(`Delete queue "${name}" in vhost "${vhost}" and every message in it?`)) return;
      try {
        await api(base, {method: "DELETE"});
        toast(`Queue ${name} deleted.`);
        location.hash = "#/queues";
      } catch (error) {
        if (!error.login) toast(`Not deleted: ${error.message}`, true);
      }
    }}, "Delete");
    const counts = tiles([["ready", "Ready"], ["unacked", "Unacked"], ["messages", "Total"],
      ["consumers", "Consumers"], ["incoming", "Incoming"], ["deliver", "Deliver / get"], ["ack", "Ack"]]);
    const depth = chartCard("Queue depth", "messages in the queue", "chart-depth", DEPTH_SERIES, "", true);
    const details = h("section", {class: "card", id: "details"}, h("h2", null, "Details"));
    const consumers = dataTable([
      {id: "tag", label: "Consumer tag", cell: (c) => h("code", null, c.consumer_tag)},
      {id: "channel", label: "Channel", cell: (c) => pick(c, "channel_details.name") || "–"},
      {id: "ack", label: "Ack required", cell: (c) => (c.ack_required ? "yes" : "no")},
      {id: "prefetch", label: "Prefetch", num: true, cell: (c) => count(c.prefetch_count)},
      {id: "exclusive", label: "Exclusive", cell: (c) => (c.exclusive ? "yes" : "no")},
      {id: "active", label: "Active", cell: (c) => (c.active === false ? "no" : "yes")},
    ], {key: (c) => `${pick(c, "channel_details.name")}\n${c.consumer_tag}`, empty: "No consumers."});
    const bindings = dataTable([
      {id: "source", label: "From exchange", cell: (b) => h("a", {href: exchangeHref(b.vhost, b.source)}, exchangeLabel(b.source))},
      {id: "routing-key", label: "Routing key", cell: (b) => h("code", null, b.routing_key)},
      {id: "arguments", label: "Arguments", cell: (b) => argumentsText(b.arguments)},
    ], {key: (b) => `${b.source}\n${b.properties_key}`, empty: "No bindings."});

    const peekCount = h("input", {id: "peek-count", type: "number", min: 1, max: 500, value: "10", style: "width: 6em"});
    const peekResults = h("div", {id: "peek-results"});
    const peekButton = h("button", {id: "peek-button", type: "submit"}, "Peek");
    const peek = h("section", {class: "card", id: "peek"}, h("h2", null, "Messages"),
      h("form", {class: "inline", onsubmit: async (event) => {
        event.preventDefault();
        peekButton.disabled = true;
        try {
          const messages = await api(`${base}/get`, {method: "POST", body: {
            count: Number(peekCount.value) || 1, ackmode: "ack_requeue_true", encoding: "auto", truncate: 50000}});
          peekResults.dataset.count = String(messages.length);
          peekResults.replaceChildren(messages.length ? h("p", {class: "muted"},
            `The first ${messages.length} message${messages.length === 1 ? "" : "s"}, left in the queue:`)
            : h("p", {class: "muted"}, "The queue has no ready messages."), ...messages.map(messageView));
        } catch (error) {
          if (!error.login) toast(`Cannot peek: ${error.message}`, true);
        } finally {
          peekButton.disabled = false;
        }
      }}, h("label", null, "Show the first", peekCount, "messages"), peekButton,
      h("span", {class: "muted"}, "They stay in the queue.")),
      peekResults);

    root.append(pageHead(name, `Queue in virtual host ${vhost}`, purge, remove),
      counts.el, h("div", {class: "grid"}, depth.card, details),
      h("section", {class: "card"}, h("h2", null, "Consumers"), consumers.el),
      h("section", {class: "card"}, h("h2", null, "Bindings"), bindings.el),
      peek, publishCard(vhost, "", name));

    async function refresh() {
      const [queue, bound] = await Promise.all([api(base), api(`${base}/bindings`)]);
      counts.set("ready", count(queue.messages_ready));
      counts.set("unacked", count(queue.messages_unacknowledged));
      counts.set("messages", count(queue.messages));
      counts.set("consumers", count(queue.consumers));
      counts.set("incoming", perSecond(pick(queue, "message_stats.publish_details.rate") || 0));
      counts.set("deliver", perSecond(pick(queue, "message_stats.deliver_get_details.rate") || 0));
      counts.set("ack", perSecond(pick(queue, "message_stats.ack_details.rate") || 0));
      depth.chart.push(Date.now() / 1000, [queue.messages_ready || 0, queue.messages_unacknowledged || 0]);
      details.replaceChildren(h("h2", null, "Details"), facts([
        ["Type", queue.type || "classic"],
        ["Features", features(queue).length ? features(queue) : "–"],
        ["State", queue.state],
        ["Arguments", argumentsText(queue.arguments)],
        queue.exclusive && queue.owner_pid_details ? ["Owner", queue.owner_pid_details.name] : null,
        ["Ready bytes", bytes(queue.message_bytes_ready)],
        ["Memory", bytes(queue.memory)],
        queue.idle_since ? ["Idle since", queue.idle_since] : null,
      ]));
      consumers.render(queue.consumer_details || []);
      bindings.render(bound);
    }
    return {nav: "queues", title: `Queue ${name}`, refresh, leave: () => depth.chart.destroy(),
      missing: `There is no queue "${name}" in virtual host "${vhost}" (any more).`,
      onError: (error) => { if (error.status === 404) purge.disabled = remove.disabled = true; }};
  }

  function exchangesPage(root) {
    const columns = [
      {id: "vhost", label: "Virtual host", sort: "vhost", cell: (x) => x.vhost},
      {id: "name", label: "Name", sort: "name", cell: (x) => h("a", {href: exchangeHref(x.vhost, x.name)}, exchangeLabel(x.name))},
      {id: "type", label: "Type", sort: "type", cell: (x) => x.type},
      {id: "features", label: "Features", cell: features},
      {id: "in", label: "Message rate in", sort: "message_stats.publish_in_details.rate", num: true,
        cell: (x) => perSecond(pick(x, "message_stats.publish_in_details.rate") || 0)},
      {id: "out", label: "Message rate out", sort: "message_stats.publish_out_details.rate", num: true,
        cell: (x) => perSecond(pick(x, "message_stats.publish_out_details.rate") || 0)},
    ];
    const list = pagedList("/exchanges", columns, {key: (x) => `${x.vhost}\n${x.name}`, noun: "exchanges",
      empty: "No exchanges match."});
    const vhost = h("select", {id: "add-exchange-vhost"});
    const name = h("input", {id: "add-exchange-name", required: true});
    const type = h("select", {id: "add-exchange-type"},
      ["direct", "fanout", "topic", "headers"].map((t) => h("option", {value: t}, t)));
    const durable = h("input", {type: "checkbox", checked: true});
    const form = h("form", {class: "inline", onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api(`/exchanges/${enc(vhost.value)}/${enc(name.value)}`, {method: "PUT",
          body: {type: type.value, durable: durable.checked, auto_delete: false, internal: false, arguments: {}}});
        toast(`Exchange ${name.value} declared.`);
        name.value = "";
        refresh();
      } catch (error) {
        if (!error.login) toast(`Not declared: ${error.message}`, true);
      }
    }}, h("label", null, "Virtual host", vhost), h("label", null, "Name", name),
    h("label", null, "Type", type), h("label", null, durable, "Durable"),
    h("button", {type: "submit"}, "Add exchange"));
    root.append(pageHead("Exchanges", ""), h("section", {class: "card", id: "exchanges"}, list.el),
      h("section", {class: "card"}, h("h2", null, "Add an exchange"), form));
    let vhostsLoaded = false;
    return {nav: "exchanges", title: "Exchanges", refresh: async () => {
      await list.load();
      if (!vhostsLoaded) { vhostOptions(vhost, await api("/vhosts")); vhostsLoaded = true; }
    }};
  }

  function exchangePage(root, vhost, name) {
    const base = `/exchanges/${enc(vhost)}/${enc(name)}`;
    const counts = tiles([["in", "Message rate in"], ["out", "Message rate out"],
      ["outgoing", "Bindings from here"], ["incoming", "Bindings to here"]]);
    const details = h("section", {class: "card", id: "details"}, h("h2", null, "Details"));
    const destination = (b) => h("a", {href: b.destination_type === "queue" ? queueHref(b.vhost, b.destination)
      : exchangeHref(b.vhost, b.destination)}, b.destination);
    const outgoing = dataTable([
      {id: "to", label: "To", cell: destination},
      {id: "kind", label: "Kind", cell: (b) => b.destination_type},
      {id: "routing-key", label: "Routing key", cell: (b) => h("code", null, b.routing_key)},
      {id: "arguments", label: "Arguments", cell: (b) => argumentsText(b.arguments)},
    ], {key: (b) => `${b.destination_type}\n${b.destination}\n${b.properties_key}`,
      empty: name === "amq.default" ? "Every queue, by its name (the default exchange's implicit bindings)." : "No bindings."});
    const incoming = dataTable([
      {id: "from", label: "From", cell: (b) => h("a", {href: exchangeHref(b.vhost, b.source)}, exchangeLabel(b.source))},
      {id: "routing-key", label: "Routing key", cell: (b) => h("code", null, b.routing_key)},
      {id: "arguments", label: "Arguments", cell: (b) => argumentsText(b.arguments)},
    ], {key: (b) => `${b.source}\n${b.properties_key}`, empty: "No exchange routes here."});
    root.append(pageHead(exchangeLabel(name), `Exchange in virtual host ${vhost}`), counts.el, details,
      h("div", {class: "grid"},
        h("section", {class: "card", id: "bindings-source"}, h("h2", null, "This exchange routes to"), outgoing.el),
        h("section", {class: "card", id: "bindings-destination"}, h("h2", null, "Exchanges routing here"), incoming.el)),
      publishCard(vhost, name));

    async function refresh() {
      const [exchange, from, to] = await Promise.all([api(base), api(`${base}/bindings/source`),
        api(`${base}/bindings/destination`)]);
      counts.set("in", perSecond(pick(exchange, "message_stats.publish_in_details.rate") || 0));
      counts.set("out", perSecond(pick(exchange, "message_stats.publish_out_details.rate") || 0));
      counts.set("outgoing", count(from.length));
      counts.set("incoming", count(to.length));
      details.replaceChildren(h("h2", null, "Details"), facts([
        ["Type", exchange.type],
        ["Features", features(exchange).length ? features(exchange) : "–"],
        ["Arguments", argumentsText(exchange.arguments)],
      ]));
      outgoing.render(from);
      incoming.render(to);
    }
    return {nav: "exchanges", title: `Exchange ${exchangeLabel(name)}`, refresh,
      missing: `There is no exchange "${name}" in virtual host "${vhost}" (any more).`};
  }

  function connectionsPage(root) {
    const close = async (c) => {
      if (!await confirmAction(`Close connection ${c.name} (user ${c.user})?`, "Close")) return;
      try {
        await api(`/connections/${enc(c.name)}`, {method: "DELETE",
          headers: {"X-Reason": "Closed from the Leveret dashboard"}});
        toast("Connection closed.");
        refresh();
      } catch (error) {
        if (!error.login) toast(`Not closed: ${error.message}`, true);
      }
    };
    const client = (c) => {
      const p = c.client_properties || {};
      return [p.product || "–", p.version ? h("span", {class: "muted"}, ` ${p.version}`) : null];
    };
    // bytes a second when the broker tells the rate, else the total so far
    const traffic = (c, key) => {
      const rate = pick(c, `${key}_details.rate`);
      if (rate !== undefined) return `${bytes(rate)}/s`;
      return c[key] === undefined ? "–" : h("span", {title: "in total"}, bytes(c[key]));
    };
    const columns = [
      {id: "name", label: "Name", sort: "name", cell: (c) => h("span", {class: "mono"}, c.name)},
      {id: "user", label: "User", sort: "user", cell: (c) => c.user},
      {id: "vhost", label: "Virtual host", sort: "vhost", cell: (c) => c.vhost},
      {id: "client", label: "Client", cell: client},
      {id: "protocol", label: "Protocol", cell: (c) => [c.protocol, c.ssl ? h("span", {class: "badge ok"}, "TLS") : null]},
      {id: "state", label: "State", cell: (c) => h("span", {class: c.state === "running" ? "badge ok" : "badge bad"}, c.state || "–")},
      {id: "channels", label: "Channels", sort: "channels", num: true, cell: (c) => count(c.channels)},
      {id: "recv", label: "From client", sort: "recv_oct", num: true, cell: (c) => traffic(c, "recv_oct")},
      {id: "send", label: "To client", sort: "send_oct", num: true, cell: (c) => traffic(c, "send_oct")},
      {id: "actions", label: "", cell: (c) => h("button", {class: "ghost small close", onclick: () => close(c)}, "Close")},
    ];
    const list = pagedList("/connections", columns, {key: (c) => c.name, noun: "connections",
      empty: "No open connections."});
    root.append(pageHead("Connections", ""), h("section", {class: "card", id: "connections"}, list.el));
    return {nav: "connections", title: "Connections", refresh: () => list.load()};
  }

  function adminPage(root) {
    const remove = async (what, path, question) => {
      if (!await confirmAction(question)) return;
      try {
        await api(path, {method: "DELETE"});
        toast(`${what} deleted.`);
        refresh();
      } catch (error) {
        if (!error.login) toast(`Not deleted: ${error.message}`, true);
      }
    };
    const submit = (what, action) => async (event) => {
      event.preventDefault();
      try {
        await action();
        toast(`${what} saved.`);
        event.target.reset();
        refresh();
      } catch (error) {
        if (!error.login) toast(`Not saved: ${error.message}`, true);
      }
    };
    const deleteButton = (onclick) => h("button", {class: "ghost small delete", onclick}, "Delete");
    const tagList = (tags) => (Array.isArray(tags) ? tags : String(tags || "").split(",").filter(Boolean));

    const users = dataTable([
      {id: "name", label: "Name", cell: (u) => u.name},
      {id: "tags", label: "Tags", cell: (u) => tagList(u.tags).map((t) => h("span", {class: "badge"}, t))},
      {id: "password", label: "Password", cell: (u) => (u.password_hash ? "set" : h("span", {class: "muted"}, "none"))},
      {id: "actions", label: "", cell: (u) => deleteButton(() => remove(`User ${u.name}`, `/users/${enc(u.name)}`,
        u.name === app.user ? `Delete user "${u.name}"? That is you: you will be logged out.` : `Delete user "${u.name}"?`))},
    ], {key: (u) => u.name, empty: "No users."});
    const userName = h("input", {id: "add-user-name", required: true});
    const userPassword = h("input", {id: "add-user-password", type: "password", autocomplete: "new-password"});
    const userTags = h("select", {id: "add-user-tags"},
      ["management", "monitoring", "policymaker", "administrator", ""].map((t) => h("option", {value: t}, t || "(none)")));
    const userForm = h("form", {class: "inline", onsubmit: submit("User", () => api(`/users/${enc(userName.value)}`,
      {method: "PUT", body: {password: userPassword.value, tags: userTags.value}}))},
    h("label", null, "Name", userName), h("label", null, "Password", userPassword),
    h("label", null, "Tags", userTags), h("button", {type: "submit"}, "Add user"));

    const vhosts = dataTable([
      {id: "name", label: "Name", cell: (v) => v.name},
      {id: "description", label: "Description", cell: (v) => v.description || pick(v, "metadata.description") || ""},
      {id: "ready", label: "Ready", num: true, cell: (v) => count(v.messages_ready || 0)},
      {id: "unacked", label: "Unacked", num: true, cell: (v) => count(v.messages_unacknowledged || 0)},
      {id: "messages", label: "Total", num: true, cell: (v) => count(v.messages || 0)},
      {id: "actions", label: "", cell: (v) => deleteButton(() => remove(`Virtual host ${v.name}`, `/vhosts/${enc(v.name)}`,
        `Delete virtual host "${v.name}" with all its queues, exchanges and messages?`))},
    ], {key: (v) => v.name, empty: "No virtual hosts."});
    const vhostName = h("input", {id: "add-vhost-name", required: true});
    const vhostDescription = h("input", {id: "add-vhost-description"});
    const vhostForm = h("form", {class: "inline", onsubmit: submit("Virtual host", () => api(`/vhosts/${enc(vhostName.value)}`,
      {method: "PUT", body: vhostDescription.value ? {description: vhostDescription.value} : {}}))},
    h("label", null, "Name", vhostName), h("label", null, "Description", vhostDescription),
    h("button", {type: "submit"}, "Add virtual host"));

    const permissions = dataTable([
      {id: "user", label: "User", cell: (p) => p.user},
      {id: "vhost", label: "Virtual host", cell: (p) => p.vhost},
      {id: "configure", label: "Configure", cell: (p) => h("code", null, p.configure)},
      {id: "write", label: "Write", cell: (p) => h("code", null, p.write)},
      {id: "read", label: "Read", cell: (p) => h("code", null, p.read)},
      {id: "actions", label: "", cell: (p) => deleteButton(() => remove("Permission",
        `/permissions/${enc(p.vhost)}/${enc(p.user)}`, `Remove ${p.user}'s permissions on "${p.vhost}"?`))},
    ], {key: (p) => `${p.vhost}\n${p.user}`, empty: "No permissions."});
    const permUser = h("select", {id: "add-permission-user"});
    const permVhost = h("select", {id: "add-permission-vhost"});
    const regex = (id) => h("input", {id, value: ".*", style: "width: 7em"});
    const [configure, write, read] = ["configure", "write", "read"].map((p) => regex(`add-permission-${p}`));
    const permForm = h("form", {class: "inline", onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api(`/permissions/${enc(permVhost.value)}/${enc(permUser.value)}`, {method: "PUT",
          body: {configure: configure.value, write: write.value, read: read.value}});
        toast("Permission saved.");
        refresh();
      } catch (error) {
        if (!error.login) toast(`Not saved: ${error.message}`, true);
      }
    }}, h("label", null, "User", permUser), h("label", null, "Virtual host", permVhost),
    h("label", null, "Configure", configure), h("label", null, "Write", write), h("label", null, "Read", read),
    h("button", {type: "submit"}, "Set permission"));

    root.append(pageHead("Admin", "Users, virtual hosts and permissions"),
      h("section", {class: "card", id: "users"}, h("h2", null, "Users"), users.el, h("h2", {style: "margin-top: 16px"}, "Add a user"), userForm),
      h("section", {class: "card", id: "vhosts"}, h("h2", null, "Virtual hosts"), vhosts.el, h("h2", {style: "margin-top: 16px"}, "Add a virtual host"), vhostForm),
      h("section", {class: "card", id: "permissions"}, h("h2", null, "Permissions"), permissions.el, h("h2", {style: "margin-top: 16px"}, "Set a permission"), permForm));

    async function refresh() {
      const [userList, vhostList, permissionList] = await Promise.all([api("/users"), api("/vhosts"), api("/permissions")]);
      users.render(userList);
      vhosts.render(vhostList);
      permissions.render(permissionList);
      vhostOptions(permUser, userList);
      vhostOptions(permVhost, vhostList);
    }
    return {nav: "admin", title: "Admin", refresh};
  }

  function notFoundPage(root) {
    root.append(pageHead("Not found", "There is no such page."), h("p", null, h("a", {href: "#/"}, "Back to the overview")));
    return {nav: "", title: "Not found", refresh: async () => {}};
  }

  // -- start -----------------------------------------------------------------------------------
  function init() {
    const interval = $("#interval");
    const saved = localStorage.getItem(INTERVAL_KEY);
    app.interval = saved !== null && [...interval.options].some((o) => o.value === saved) ? Number(saved) : DEFAULT_INTERVAL;
    interval.value = String(app.interval);
    interval.addEventListener("change", () => {
      app.interval = Number(interval.value);
      localStorage.setItem(INTERVAL_KEY, interval.value);
      if (app.interval) refresh(); else schedule();
    });
    document.addEventListener("visibilitychange", () => (document.hidden ? schedule() : refresh()));
    window.addEventListener("hashchange", route);
    $("#login-form").addEventListener("submit", login);
    $("#logout").addEventListener("click", () => showLogin());
    if (sessionStorage.getItem(AUTH_KEY)) start().catch((error) => { if (!error.login) showLogin(error.message); });
    else showLogin();
  }

  init();
})();
