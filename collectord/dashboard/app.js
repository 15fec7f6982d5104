// The collectord dashboard: reads the public HTTP API of the daemon that serves it.
// No framework and no build step; the chart is drawn as SVG by hand.
"use strict";
(() => {
  const CATALOGUE = window.CATALOGUE;
  const SVG = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "collectord.token";
  const LANGUAGE_KEY = "collectord.language";
  const STATS_EVERY_MS = 5000;
  const SERIES_EVERY_MS = 30000;
  const POLL_EVERY_S = 5;
  const LIVE_REFRESH_MS = 1000; // at most one re-query per second while samples stream in
  const SERIES_SHOWN = 200;
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies.
  const COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442"];
  const STEPS_MS = [60e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 10800e3, 21600e3, 43200e3, 86400e3, 172800e3, 604800e3];
  const PERIOD_MS = { "1m": 60e3, "5m": 300e3, "1h": 3600e3, "1d": 86400e3 };

  const $ = (id) => document.getElementById(id);
  const state = {
    lang: "en",
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    metrics: new Map(), // name -> {type, series, lastSeen, tags: Map key -> Set values}
    stats: null,
    previous: null, // {packets, lines, at} for rates between two polls
    query: { metric: "", range: "-1h", granularity: "1m", aggregation: "AVG", filters: {}, groupBy: [] },
    answer: null, // the last /api/v1/query answer drawn
    live: { on: false, mode: "off", controller: null, timer: 0, refresh: 0, events: 0, last: null },
    streamMissing: false,
    authNeeded: false,
    message: null, // [key, params] of the status line, kept to re-translate
  };

  // ---- language, numbers, dates ----------------------------------------------------------

  function t(key, params) {
    const text = CATALOGUE[state.lang][key] ?? CATALOGUE.en[key] ?? key;
    return params ? text.replace(/\{(\w+)\}/g, (_, name) => String(params[name] ?? "")) : text;
  }

  const formatters = new Map();
  function formatter(kind, options) {
    const key = `${state.lang}|${kind}|${JSON.stringify(options)}`;
    if (!formatters.has(key)) {
      const locale = t("locale");
      formatters.set(
        key,
        kind === "number"
          ? new Intl.NumberFormat(locale, { useGrouping: "always", ...options })
          : kind === "plural"
            ? new Intl.PluralRules(locale)
            : new Intl.DateTimeFormat(locale, options),
      );
    }
    return formatters.get(key);
  }

  function digitsFor(value, fractionDigits) {
    if (fractionDigits !== undefined) return fractionDigits;
    return Math.abs(value) >= 1e6 || Number.isInteger(value) ? 0 : Math.abs(value) >= 1 ? 2 : 4;
  }

  function number(value, fractionDigits) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "–";
    const digits = digitsFor(value, fractionDigits);
    return formatter("number", { maximumFractionDigits: digits, minimumFractionDigits: 0 }).format(value);
  }

  // "1 234 sekundy", "5 sekund", "1,5 sekundy": the plural form of what is shown, not of the raw value.
  function withUnit(value, unit, fractionDigits) {
    const text = number(value, fractionDigits);
    if (!unit || typeof value !== "number" || !Number.isFinite(value)) return text;
    const forms = t("units")[unit];
    const shown = Number(value.toFixed(digitsFor(value, fractionDigits)));
    const category = Number.isInteger(shown) ? formatter("plural").select(shown) : "other";
    return `${text} ${forms[category] ?? forms.other}`;
  }

  function date(ms, pattern = "dateTime") {
    const options = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" };
    if (pattern === "timeSeconds") options.second = "2-digit";
    const parts = {};
    for (const part of formatter("date", { ...options, hourCycle: "h23" }).formatToParts(new Date(ms))) {
      parts[part.type] = part.value;
    }
    return t(pattern).replace(/\{(\w+)\}/g, (_, name) => parts[name] ?? "");
  }

  // A unit the metric's name declares (api.latency_ms, io.read.bytes, job.seconds).
  function unitOf(metric) {
    const last = metric.toLowerCase().split(/[._-]/).pop();
    if (["ms", "msec", "millis", "milliseconds"].includes(last)) return "ms";
    if (["s", "sec", "secs", "seconds"].includes(last)) return "s";
    if (["bytes", "byte"].includes(last)) return "bytes";
    return null;
  }

  function chooseLanguage() {
    const saved = localStorage.getItem(LANGUAGE_KEY);
    if (saved && CATALOGUE[saved]) return saved;
    const preferred = navigator.languages?.length ? navigator.languages : [navigator.language || "en"];
    for (const tag of preferred) {
      const primary = tag.toLowerCase().split("-")[0];
      if (CATALOGUE[primary]) return primary;
    }
    return "en";
  }

  function setLanguage(lang, remember) {
    state.lang = lang;
    if (remember) localStorage.setItem(LANGUAGE_KEY, lang);
    document.documentElement.lang = lang;
    document.title = t("title");
    $("language").value = lang;
    for (const element of document.querySelectorAll("[data-i18n]")) element.textContent = t(element.dataset.i18n);
    renderSummary();
    renderSeries();
    renderTags();
    renderChart();
    renderLive();
    renderMessage();
  }

  // ---- talking to the API ------------------------------------------------------------------

  class AuthNeeded extends Error {}

  async function api(path, accept = "application/json") {
    const headers = { Accept: accept, "Accept-Language": state.lang };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401) {
      askForToken();
      throw new AuthNeeded();
    }
    if (!response.ok) {
      let message = `${response.status}`;
      try {
        message = (await response.json()).error.message;
      } catch {
        // not the API's error shape; the status says enough
      }
      throw new Error(message);
    }
    return accept === "application/json" ? response.json() : response.blob();
  }

  function failed(error) {
    if (error instanceof AuthNeeded || error.name === "AbortError") return;
    say("requestFailed", { message: error.message }, "error");
  }

  function say(key, params, kind = "info") {
    state.message = key ? [key, params, kind] : null;
    renderMessage();
  }

  function renderMessage() {
    const status = $("status");
    status.textContent = state.message ? t(state.message[0], state.message[1]) : "";
    status.dataset.kind = state.message?.[2] ?? "info";
  }

  function askForToken() {
    const form = $("token-form");
    if (state.authNeeded && !form.hidden) return;
    state.authNeeded = true;
    stopLive();
    $("token-error").textContent = state.token ? t("tokenRejected") : "";
    form.hidden = false;
    $("token").focus();
  }

  function saveToken(event) {
    event.preventDefault();
    state.token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, state.token);
    state.authNeeded = false;
    $("token-form").hidden = true;
    $("forget-token").hidden = false;
    loadEverything();
  }

  function forgetToken() {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    $("forget-token").hidden = true;
    loadEverything();
  }

  // ---- ingest summary ----------------------------------------------------------------------

  async function loadStats() {
    const stats = await api("/api/v1/stats");
    const now = performance.now();
    const before = state.previous;
    const seconds = before ? (now - before.at) / 1000 : stats.uptimeSeconds;
    stats.packetsPerSecond = seconds > 0 ? (stats.packets - (before?.packets ?? 0)) / seconds : 0;
    stats.linesPerSecond = seconds > 0 ? (stats.lines - (before?.lines ?? 0)) / seconds : 0;
    state.previous = { packets: stats.packets, lines: stats.lines, at: now };
    state.stats = stats;
    state.statsAt = Date.now();
    renderSummary();
  }

  function renderSummary() {
    const stats = state.stats;
    const list = $("summary");
    list.replaceChildren();
    if (!stats) return;
    const cards = [
      ["packetsPerSecond", number(stats.packetsPerSecond, 1)],
      ["linesPerSecond", number(stats.linesPerSecond, 1)],
      ["badLines", number(stats.rejected)],
      ["dropped", number(stats.dropped)],
      ["kernelDrops", number(stats.kernelDrops)],
      ["seriesHeld", number(stats.aggregation?.series)],
      ["uptime", withUnit(stats.uptimeSeconds, "s", 0)],
      ["lastFlush", withUnit(stats.flush?.lastDurationMs, "ms", 1)],
    ];
    if (stats.wal) cards.push(["walPending", withUnit(stats.wal.pendingBytes, "bytes", 0)]);
    // How far each configured sink is behind the newest flush (`sinks.<name>.lagSeconds`).
    for (const [sink, info] of Object.entries(stats.sinks ?? {})) {
      if (info && typeof info.lagSeconds === "number") {
        const lag = withUnit(info.lagSeconds, "s", 1);
        const shown = info.connected === false ? `${lag} ${t("sinkDisconnected")}` : lag;
        cards.push([`sink:${sink}`, shown, t("sinkLag", { sink })]);
      }
    }
    for (const [key, value, label] of cards) {
      const card = document.createElement("div");
      card.className = "card";
      card.dataset.key = key;
      const name = document.createElement("dt");
      name.textContent = label ?? t(key);
      const shown = document.createElement("dd");
      shown.textContent = value;
      card.append(name, shown);
      list.append(card);
    }
    $("summary-updated").textContent = t("updated", { time: date(state.statsAt, "timeSeconds") });
  }

  // ---- the series list -------------------------------------------------------------------

  async function loadSeries() {
    const answer = await api("/api/v1/series?limit=10000");
    const metrics = new Map();
    for (const one of answer.series) {
      let metric = metrics.get(one.metricName);
      if (!metric) {
        metric = { type: one.type, series: 0, lastSeen: 0, tags: new Map() };
        metrics.set(one.metricName, metric);
      }
      metric.series += 1;
      metric.lastSeen = Math.max(metric.lastSeen, Date.parse(one.lastSeen));
      for (const [key, value] of Object.entries(one.tags)) {
        if (!metric.tags.has(key)) metric.tags.set(key, new Set());
        metric.tags.get(key).add(value);
      }
    }
    state.metrics = metrics;
    const names = $("metric-names");
    names.replaceChildren(...[...metrics.keys()].map((name) => new Option(name)));
    renderSeries();
    renderTags(true);
  }

  function renderSeries() {
    const active = document.activeElement;
    const focusedMetric = active?.classList.contains("series-item") ? active.dataset.metric : null;
    const needle = $("series-search").value.trim().toLowerCase();
    const matching = [...state.metrics.entries()].filter(([name]) => name.toLowerCase().includes(needle));
    const shown = matching.slice(0, SERIES_SHOWN);
    const counts = { shown: number(shown.length), total: number(state.metrics.size) };
    $("series-count").textContent = t("seriesCount", counts);
    const list = $("series-list");
    list.replaceChildren(
      ...shown.map(([name, metric]) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "series-item";
        button.dataset.metric = name;
        if (name === state.query.metric) button.setAttribute("aria-current", "true");
        const title = document.createElement("span");
        title.className = "series-name";
        title.textContent = name;
        const detail = document.createElement("span");
        detail.className = "series-detail";
        detail.textContent = [
          t("types")[metric.type] ?? metric.type,
          t("seriesOf", { count: number(metric.series) }),
          t("lastSeen", { time: date(metric.lastSeen) }),
        ].join(" · ");
        button.append(title, detail);
        button.addEventListener("click", () => pickMetric(name));
        item.append(button);
        return item;
      }),
    );
    if (focusedMetric) list.querySelector(`button[data-metric="${CSS.escape(focusedMetric)}"]`)?.focus();
  }

  function pickMetric(name) {
    $("metric").value = name;
    state.query.metric = name;
    state.query.filters = {};
    state.query.groupBy = [];
    renderTags();
    showChart();
  }

  // Percentiles exist only for histograms and summaries; other types answer null.
  function offerAggregations(metric) {
    const distribution = !metric || metric.type === "HISTOGRAM" || metric.type === "SUMMARY";
    const select = $("aggregation");
    for (const option of select.options) option.disabled = !distribution && option.value.startsWith("P");
    if (select.selectedOptions[0]?.disabled) select.value = "AVG";
  }

  // One row per tag key of the chosen metric: a value filter and a group-by switch.
  // `refresh` (a periodic reload): keep the rows, the user's unsent choices and the focus
  // unless the metric's tag keys or values changed.
  function renderTags(refresh = false) {
    const name = $("metric").value.trim();
    const metric = state.metrics.get(name);
    const rows = $("tag-rows");
    const tags = metric ? [...metric.tags.entries()].map(([key, values]) => [key, [...values].sort()]) : [];
    const signature = JSON.stringify(tags.sort());
    const sameRows = rows.dataset.metric === name;
    if (refresh && sameRows && rows.dataset.signature === signature) return;
    const chosen = sameRows ? readTagRows() : { filters: state.query.filters, groupBy: state.query.groupBy };
    const focused = document.activeElement?.closest?.("#tag-rows") ? document.activeElement : null;
    rows.replaceChildren();
    rows.dataset.metric = metric ? name : "";
    rows.dataset.signature = signature;
    offerAggregations(metric);
    $("tags").hidden = !metric || metric.tags.size === 0;
    if (!metric) return;
    [...metric.tags.keys()].sort().forEach((key, index) => {
      const row = document.createElement("div");
      row.className = "tag-row";
      const label = document.createElement("label");
      label.htmlFor = `tag-${index}`;
      label.textContent = t("tagFilter", { key });
      const select = document.createElement("select");
      select.id = `tag-${index}`;
      select.dataset.tag = key;
      select.append(new Option(t("anyValue"), ""));
      for (const value of [...metric.tags.get(key)].sort()) select.append(new Option(value, value));
      select.value = chosen.filters[key] ?? "";
      const group = document.createElement("label");
      group.className = "check";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.groupBy = key;
      box.checked = chosen.groupBy.includes(key);
      group.append(box, ` ${t("groupBy", { key })}`);
      row.append(label, select, group);
      rows.append(row);
    });
    if (focused) {
      const again = focused.dataset.tag
        ? rows.querySelector(`select[data-tag="${CSS.escape(focused.dataset.tag)}"]`)
        : rows.querySelector(`input[data-group-by="${CSS.escape(focused.dataset.groupBy ?? "")}"]`);
      again?.focus();
    }
  }

  function readTagRows() {
    const filters = {};
    for (const select of document.querySelectorAll("#tag-rows select")) {
      if (select.value) filters[select.dataset.tag] = select.value;
    }
    const groupBy = [...document.querySelectorAll("#tag-rows input:checked")].map((box) => box.dataset.groupBy);
    return { filters, groupBy };
  }

  // ---- the chart -------------------------------------------------------------------------

  function readControls() {
    const query = state.query;
    const metric = $("metric").value.trim();
    query.metric = metric;
    query.range = $("range").value;
    query.granularity = $("granularity").value;
    query.aggregation = $("aggregation").value;
    // The tag rows may still show another metric's keys (a name typed and submitted at once).
    const chosen = $("tag-rows").dataset.metric === metric ? readTagRows() : { filters: {}, groupBy: [] };
    query.filters = chosen.filters;
    query.groupBy = chosen.groupBy;
  }

  function queryParams() {
    const query = state.query;
    const params = new URLSearchParams({
      metric: query.metric,
      start: query.range,
      end: "now",
      granularity: query.granularity,
      aggregation: query.aggregation,
      limit: "10000",
    });
    for (const [key, value] of Object.entries(query.filters)) params.append("tag", `${key}:${value}`);
    for (const key of query.groupBy) params.append("group_by", key);
    return params;
  }

  function writeHash() {
    const params = queryParams();
    params.delete("end");
    params.delete("limit");
    params.set("range", params.get("start"));
    params.delete("start");
    history.replaceState(null, "", `#${params}`);
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const query = state.query;
    query.metric = params.get("metric") ?? "";
    const pick = (id, value) => {
      if (value && [...$(id).options].some((option) => option.value === value)) $(id).value = value;
      return $(id).value;
    };
    query.range = pick("range", params.get("range"));
    query.granularity = pick("granularity", params.get("granularity"));
    query.aggregation = pick("aggregation", params.get("aggregation"));
    query.filters = {};
    for (const tag of params.getAll("tag")) {
      const at = tag.indexOf(":");
      if (at > 0) query.filters[tag.slice(0, at)] = tag.slice(at + 1);
    }
    query.groupBy = params.getAll("group_by");
    $("metric").value = query.metric;
  }

  async function showChart(event) {
    event?.preventDefault();
    readControls();
    renderSeries();
    if (!state.query.metric) {
      state.answer = null;
      renderChart();
      return;
    }
    writeHash();
    if (state.live.on) startLive();
    await loadChart().catch(failed);
  }

  async function loadChart() {
    if (!state.query.metric) return;
    const params = queryParams();
    const answer = await api(`/api/v1/query?${params}`);
    answer.params = params.toString();
    state.answer = answer;
    say(null);
    renderChart();
  }

  function groupsOf(answer) {
    const keys = answer.metadata.query.groupBy ?? [];
    const groups = new Map();
    for (const row of answer.data) {
      if (row.value === null || row.value === undefined) continue;
      const named = keys.map((key) => `${key}=${row.tags[key] || t("noTag")}`);
      const label = keys.length ? named.join(", ") : t("allSeries");
      if (!groups.has(label)) groups.set(label, []);
      groups.get(label).push({ t: Date.parse(row.periodStart), v: row.value });
    }
    for (const points of groups.values()) points.sort((a, b) => a.t - b.t);
    return [...groups.entries()].sort(([a], [b]) => a.localeCompare(b));
  }

  function niceStep(span, count) {
    const raw = span / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const n = raw / magnitude;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * magnitude;
  }

  function node(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    parent?.append(element);
    return element;
  }

  function renderChart() {
    const box = $("chart");
    const answer = state.answer;
    box.replaceChildren();
    $("legend").replaceChildren();
    $("table").replaceChildren();
    const metric = state.query.metric;
    $("chart-title").textContent = metric ? t("chartTitleFor", { metric }) : t("chartTitle");
    if (!answer) {
      box.textContent = t("chooseMetric");
      return;
    }
    const query = answer.metadata.query;
    const groups = groupsOf(answer);
    const start = Date.parse(query.startTime);
    const end = Date.parse(query.endTime);
    const unit = query.aggregation === "COUNT" ? null : unitOf(query.metricNames[0]);
    const width = Math.max(300, Math.round(box.clientWidth || 800));
    const narrow = width < 560;
    const height = narrow ? 260 : 340;
    const margin = { left: narrow ? 56 : 76, right: 16, top: 16, bottom: 44 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const values = groups.flatMap(([, points]) => points.map((p) => p.v));
    // Sums and counts start at zero; levels (averages, gauges, percentiles) use the room for detail.
    const fromZero = query.aggregation === "SUM" || query.aggregation === "COUNT" || !values.length;
    let low = Math.min(...values, ...(fromZero ? [0] : []));
    let high = Math.max(...values, ...(fromZero ? [0] : []));
    if (high === low) {
      low -= Math.abs(low) / 10 || 1;
      high += Math.abs(high) / 10 || 1;
    }
    const yStep = niceStep(high - low, narrow ? 4 : 5);
    low = Math.floor(low / yStep) * yStep;
    high = Math.ceil(high / yStep) * yStep;
    const x = (ms) => margin.left + ((ms - start) / (end - start)) * plotW;
    const y = (v) => margin.top + plotH - ((v - low) / (high - low)) * plotH;
    const count = values.length;

    const svg = node("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      class: "plot",
      "data-query": answer.params,
      "data-points": count,
    });
    const aggregation = t(`agg${query.aggregation}`);
    node("title", {}, svg).textContent = t("chartLabel", {
      aggregation,
      metric: query.metricNames[0],
      count: number(count),
      lines: number(groups.length),
    });

    const axes = node("g", { class: "axes" }, svg);
    const yDigits = Math.max(0, -Math.floor(Math.log10(yStep)));
    for (let v = low; v <= high + yStep / 2; v += yStep) {
      node("line", { x1: margin.left, x2: width - margin.right, y1: y(v), y2: y(v), class: "grid" }, axes);
      const label = node("text", { x: margin.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, axes);
      label.textContent = number(v, yDigits);
    }
    const span = end - start;
    const step = STEPS_MS.find((ms) => span / ms <= (narrow ? 4 : 7)) ?? STEPS_MS[STEPS_MS.length - 1];
    const offset = -new Date(start).getTimezoneOffset() * 60e3; // ticks on local boundaries
    for (let tick = Math.ceil((start + offset) / step) * step - offset; tick <= end; tick += step) {
      const bottom = margin.top + plotH;
      node("line", { x1: x(tick), x2: x(tick), y1: bottom, y2: bottom + 4, class: "axis" }, axes);
      const label = node("text", { x: x(tick), y: bottom + 18, "text-anchor": "middle", class: "tick" }, axes);
      label.textContent = date(tick, step >= 86400e3 ? "dayMonth" : "time");
    }
    node("line", { x1: margin.left, x2: margin.left + plotW, y1: y(low), y2: y(low), class: "axis" }, axes);
    const middle = margin.left + plotW / 2;
    const xTitle = node("text", { x: middle, y: height - 6, "text-anchor": "middle", class: "axis-title" }, axes);
    xTitle.textContent = t("axisTime");
    const yTitle = node("text", {
      transform: `translate(12 ${margin.top + plotH / 2}) rotate(-90)`,
      "text-anchor": "middle",
      class: "axis-title",
    }, axes);
    yTitle.textContent = unit ? `${t("axisValue")} (${t("units")[unit].title})` : `${t("axisValue")} (${aggregation})`;

    const period = PERIOD_MS[query.granularity] ?? 60e3;
    groups.forEach(([label, points], index) => {
      const colour = COLOURS[index % COLOURS.length];
      const line = node("g", { class: "series-line", "data-group": label }, svg);
      let path = "";
      points.forEach((point, i) => {
        const jump = i === 0 || point.t - points[i - 1].t > period; // no line across empty periods
        path += `${jump ? "M" : "L"}${x(point.t).toFixed(1)},${y(point.v).toFixed(1)}`;
      });
      node("path", { d: path, stroke: colour, fill: "none", "stroke-width": 2 }, line);
      for (const point of points) {
        const dot = node("circle", {
          cx: x(point.t).toFixed(1),
          cy: y(point.v).toFixed(1),
          r: points.length > 200 ? 1.5 : 3,
          fill: colour,
          class: "pt",
          "data-t": point.t,
          "data-v": point.v,
          "data-group": label,
        }, line);
        node("title", {}, dot).textContent = `${label}: ${withUnit(point.v, unit)} · ${date(point.t)}`;
      }
      const entry = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = colour;
      entry.append(swatch, label);
      $("legend").append(entry);
    });
    box.append(svg);
    if (!count) {
      const empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = t("noData");
      box.append(empty);
    }
    renderTable(groups, unit);
  }

  function renderTable(groups, unit) {
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const key of ["colGroup", "colPeriod", "colValue"]) {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = t(key);
      head.append(cell);
    }
    const body = table.createTBody();
    for (const [label, points] of groups) {
      for (const point of points.slice(-500)) {
        const row = body.insertRow();
        row.insertCell().textContent = label;
        row.insertCell().textContent = date(point.t);
        row.insertCell().textContent = withUnit(point.v, unit);
      }
    }
    $("table").append(table);
  }

  // ---- live mode: the SSE stream read with fetch (so the token stays in a header) -------------

  function streamParams() {
    const params = new URLSearchParams({ metric: state.query.metric });
    for (const [key, value] of Object.entries(state.query.filters)) params.append("tag", `${key}:${value}`);
    return params;
  }

  function startLive() {
    stopLive();
    state.live.on = true;
    if (!state.query.metric) return renderLive();
    const controller = new AbortController();
    state.live.controller = controller;
    if (state.streamMissing) startPolling();
    else readStream(controller).catch((error) => liveLost(controller, error));
    renderLive();
  }

  function stopLive() {
    const live = state.live;
    live.controller?.abort();
    live.controller = null;
    clearInterval(live.timer);
    clearTimeout(live.refresh);
    live.timer = 0;
    live.refresh = 0;
    live.mode = "off";
  }

  function startPolling() {
    state.live.mode = "poll";
    state.live.timer = setInterval(() => loadChart().catch(failed), POLL_EVERY_S * 1000);
    renderLive();
  }

  function liveLost(controller, error) {
    if (controller.signal.aborted || error instanceof AuthNeeded) return;
    state.live.mode = "reconnecting";
    renderLive();
    setTimeout(() => {
      if (state.live.controller === controller) readStream(controller).catch((again) => liveLost(controller, again));
    }, 3000);
  }

  async function readStream(controller) {
    const headers = { Accept: "text/event-stream" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const options = { headers, signal: controller.signal, cache: "no-store" };
    const response = await fetch(`/api/v1/stream?${streamParams()}`, options);
    if (response.status === 404) {
      state.streamMissing = true;
      return startPolling();
    }
    if (response.status === 401) {
      askForToken();
      throw new AuthNeeded();
    }
    if (!response.ok || !response.body) throw new Error(`${response.status}`);
    state.live.mode = "stream";
    renderLive();
    loadChart().catch(failed); // what arrived between the last query and the stream opening
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered = (buffered + value).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        handleEvent(buffered.slice(0, end));
        buffered = buffered.slice(end + 2);
      }
    }
    throw new Error("stream ended");
  }

  function handleEvent(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue; // comments carry heartbeats
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    // The contract names sample events `metric`; unnamed ones are read too if they carry a sample.
    if ((name !== "metric" && name !== "message") || !data.length) return;
    let sample;
    try {
      sample = JSON.parse(data.join("\n"));
    } catch {
      return;
    }
    if (sample.name !== state.query.metric) return;
    const live = state.live;
    live.events += 1;
    live.last = sample;
    renderLive();
    if (!live.refresh) {
      live.refresh = setTimeout(() => {
        live.refresh = 0;
        loadChart().catch(failed);
      }, LIVE_REFRESH_MS);
    }
  }

  function renderLive() {
    const live = state.live;
    const status = $("live-status");
    const button = $("live");
    button.setAttribute("aria-pressed", String(live.on));
    status.dataset.mode = live.on ? live.mode : "off";
    status.dataset.events = String(live.events);
    const lines = [];
    if (!live.on) lines.push(t("liveOff"));
    else if (live.mode === "stream") lines.push(t("liveStream"));
    else if (live.mode === "poll") lines.push(t("livePolling", { seconds: number(POLL_EVERY_S) }));
    else if (live.mode === "reconnecting") lines.push(t("liveReconnecting"));
    if (live.on && live.last) {
      const unit = unitOf(live.last.name);
      const at = typeof live.last.timestamp === "number" ? live.last.timestamp : Date.parse(live.last.timestamp);
      lines.push(t("lastSample", { value: withUnit(live.last.value, unit), time: date(at, "timeSeconds") }));
    }
    status.textContent = lines.join(" ");
  }

  function toggleLive() {
    if (state.live.on) {
      stopLive();
      state.live.on = false;
      renderLive();
    } else {
      readControls();
      startLive();
    }
  }

  // ---- CSV export: fetched with the token, saved from a blob ------------------------------

  async function exportCsv() {
    readControls();
    if (!state.query.metric) return say("chooseMetric");
    const params = queryParams();
    params.set("format", "csv");
    params.set("locale", state.lang);
    const blob = await api(`/api/v1/query?${params}`, "text/csv");
    const now = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    const day = `${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}`;
    const stamp = `${day}-${pad(now.getHours())}${pad(now.getMinutes())}`;
    const file = `${state.query.metric}-${stamp}.csv`;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = file;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    say("exported", { file });
  }

  // ---- start --------------------------------------------------------------------------------

  async function loadEverything() {
    say(null);
    const work = [loadStats(), loadSeries()];
    if (state.query.metric) work.push(loadChart());
    const results = await Promise.allSettled(work);
    for (const result of results) if (result.status === "rejected") failed(result.reason);
    if (state.live.on && !state.authNeeded) startLive();
  }

  function every(ms, load) {
    setInterval(() => {
      if (!state.authNeeded && document.visibilityState !== "hidden") load().catch(failed);
    }, ms);
  }

  async function start() {
    readHash();
    $("forget-token").hidden = !state.token;
    setLanguage(chooseLanguage(), false);
    $("language").addEventListener("change", (event) => setLanguage(event.target.value, true));
    $("token-form").addEventListener("submit", saveToken);
    $("forget-token").addEventListener("click", forgetToken);
    $("series-search").addEventListener("input", renderSeries);
    $("metric").addEventListener("change", () => {
      readControls();
      renderTags();
    });
    $("controls").addEventListener("submit", showChart);
    $("live").addEventListener("click", toggleLive);
    $("export").addEventListener("click", () => exportCsv().catch(failed));
    let resizing = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(renderChart, 150);
    });
    await loadEverything();
    performance.mark("collectord:ready");
    document.documentElement.dataset.ready = performance.now().toFixed(1);
    every(STATS_EVERY_MS, loadStats);
    every(SERIES_EVERY_MS, loadSeries);
  }

  start();
})();
