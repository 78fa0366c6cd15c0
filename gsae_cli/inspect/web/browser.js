/* gsae pages: the feature browser, the comparison of two SAEs and the blinded rating page.
   Plain JavaScript, no libraries, nothing fetched from the network: data files are scripts that
   call GSAE.load(...) (browsers refuse fetch() on file:// URLs, not <script src>). */
"use strict";

var GSAE = (function () {
  var loaded = [];      // objects from the data files in the page's <head>, in order
  var last = null;      // the object the most recent data script passed to load()
  var cache = {};       // src -> object, for data loaded on demand
  var waiting = {};     // src -> callbacks

  function load(obj) { last = obj; loaded.push(obj); }

  // Load a data script once; call back with its object.
  function need(src, cb) {
    if (cache[src]) { cb(cache[src]); return; }
    if (waiting[src]) { waiting[src].push(cb); return; }
    waiting[src] = [cb];
    var s = document.createElement("script");
    s.src = src;
    s.onload = function () {  // the script ran just before its load event: `last` is its object
      cache[src] = last;
      var cbs = waiting[src]; delete waiting[src];
      cbs.forEach(function (f) { f(last); });
    };
    s.onerror = function () { fail("Cannot load " + src + ": the page's data folder is missing or incomplete."); };
    document.head.appendChild(s);
  }

  // ---- small DOM helpers ---------------------------------------------------------------------
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  var SVGNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function app() { return document.getElementById("app"); }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function fail(msg) { clear(app()).appendChild(el("p", { cls: "panel", text: msg })); }
  function fmt(x, d) { return x == null ? "–" : Number(x).toPrecision(d || 3).replace(/\.?0+(e|$)/, "$1"); }
  function pct(f) { return f === 0 ? "0" : f >= 0.001 ? (100 * f).toPrecision(3) + " %" : f.toExponential(2); }
  function hashParams() {
    var out = {}, h = location.hash.replace(/^#/, "");
    h.split("&").forEach(function (kv) { if (!kv) return; var i = kv.indexOf("="); out[decodeURIComponent(i < 0 ? kv : kv.slice(0, i))] = i < 0 ? "" : decodeURIComponent(kv.slice(i + 1)); });
    return out;
  }
  function setHash(params) {
    location.hash = Object.keys(params).filter(function (k) { return params[k] !== "" && params[k] != null; })
      .map(function (k) { return encodeURIComponent(k) + "=" + encodeURIComponent(params[k]); }).join("&");
  }
  // After a view is drawn for the current hash: scroll to the top, and record the hash it was
  // drawn for (data-rendered), so scripts driving the page know the new view is there.
  function rendered() { window.scrollTo(0, 0); document.body.setAttribute("data-rendered", location.hash); }
  function showTok(s) { return s.replace(/\n/g, "↵\n").replace(/\t/g, "→"); }

  // ---- charts --------------------------------------------------------------------------------
  // Bars of `counts` over `edges` (len counts + 1); label the x axis with `xlabel`.
  function histogram(counts, edges, xlabel, opts) {
    opts = opts || {};
    var W = opts.width || 360, H = opts.height || 120, pad = 22, n = counts.length;
    var top = Math.max.apply(null, counts.concat([1]));
    var s = svg("svg", { width: W, height: H + pad, viewBox: "0 0 " + W + " " + (H + pad), role: "img" });
    s.appendChild(svg("title", {})).textContent = xlabel;
    var bw = (W - 10) / n;
    counts.forEach(function (c, i) {
      var h = c / top * (H - 8);
      var r = svg("rect", { x: 5 + i * bw, y: H - h, width: Math.max(bw - 1, 1), height: h, fill: opts.colour || "#8fb0ea" });
      r.appendChild(svg("title", {})).textContent = fmt(edges[i]) + " – " + fmt(edges[i + 1]) + ": " + c;
      s.appendChild(r);
    });
    s.appendChild(svg("line", { x1: 5, x2: W - 5, y1: H, y2: H, stroke: "#98a2b3" }));
    var t0 = svg("text", { x: 5, y: H + 13 }); t0.textContent = fmt(edges[0]); s.appendChild(t0);
    var t1 = svg("text", { x: W - 5, y: H + 13, "text-anchor": "end" }); t1.textContent = fmt(edges[n]); s.appendChild(t1);
    var tl = svg("text", { x: W / 2, y: H + 13, "text-anchor": "middle" }); tl.textContent = xlabel; s.appendChild(tl);
    return s;
  }

  // ---- one example: tokens with their activation as the background --------------------------
  function example(ex, text, feature, before, after) {
    var w = ex[0], p = ex[1], act = ex[2], sparse = ex[3];
    var toks = text.tokens[w], first = text.first;
    var lo = Math.max(0, p - before), hi = Math.min(toks.length - 1, p + after);
    var acts = {}; sparse.forEach(function (oa) { acts[lo + oa[0]] = oa[1]; });
    var line = el("div", { cls: "toks" });
    for (var q = lo; q <= hi; q++) {
      var a = acts[q] || 0, s = text.vocab[String(toks[q])];
      var span = el("span", { cls: "tok" + (q < first ? " ctx" : "") + (q === p ? " here" : ""), text: showTok(s == null ? "?" : s) });
      if (a > 0) span.style.background = "rgba(var(--hot)," + Math.min(1, 0.15 + 0.85 * a / feature.m).toFixed(3) + ")";
      span.title = (q < first ? "context position (not part of the site)" : "activation " + fmt(a)) + " · token " + JSON.stringify(s);
      line.appendChild(span);
    }
    return el("div", { cls: "ex" }, [el("div", { cls: "act", text: fmt(act) }), line]);
  }

  // ---- a feature's dashboard ----------------------------------------------------------------
  function dashboard(f, text, settings, opts) {
    opts = opts || {};
    var b = settings.context_before, a = settings.context_after;
    var root = el("div", { cls: "dashboard" });
    var stats = el("div", { cls: "stats" }, [
      el("div", { cls: "stat" }, [el("b", { text: pct(f.f) }), el("span", { text: "firing frequency" })]),
      el("div", { cls: "stat" }, [el("b", { text: fmt(f.m) }), el("span", { text: "max activation" })])]);
    root.appendChild(stats);
    if (f.m > 0) {
      var edges = f.h.map(function (_, i) { return f.m * i / f.h.length; }).concat([f.m]);
      root.appendChild(el("div", {}, [histogram(f.h, edges, "activation (non-zero)", { width: 340, height: 70 })]));
    }
    var left = el("div", {}), right = el("div", {});
    left.appendChild(el("h3", { text: "Top activations" }));
    if (!f.top.length) left.appendChild(el("p", { cls: "muted", text: "Never fires on the inspected text." }));
    f.top.forEach(function (ex) { left.appendChild(example(ex, text, f, b, a)); });
    f.q.forEach(function (g, gi) {
      left.appendChild(el("h3", { text: "Quantile group " + (gi + 1) + " of " + f.q.length + ": activations " + fmt(g.lo) + " – " + fmt(g.hi) }));
      g.ex.forEach(function (ex) { left.appendChild(example(ex, text, f, b, a)); });
    });
    function logitTable(title, rows, cls) {
      var t = el("table", { cls: "grid logits" }, [el("tr", {}, [el("th", { text: title }), el("th", { cls: "num", text: "logit" })])]);
      rows.forEach(function (r) { t.appendChild(el("tr", {}, [el("td", { text: JSON.stringify(r[0]).slice(1, -1) }), el("td", { cls: "num " + cls, text: fmt(r[1]) })])); });
      return t;
    }
    right.appendChild(el("h3", { text: "Output tokens (decoder direction → final norm → unembedding)" }));
    right.appendChild(el("div", { cls: "cols" }, [logitTable("promoted", f.up, "pos"), logitTable("suppressed", f.down, "neg")]));
    if (f.nb && opts.neighbourLink) {
      right.appendChild(el("h3", { text: "Nearest features (decoder cosine)" }));
      var t = el("table", { cls: "grid" }, [el("tr", {}, [el("th", { text: "feature" }), el("th", { cls: "num", text: "cosine" })])]);
      f.nb.forEach(function (n) { t.appendChild(el("tr", {}, [el("td", {}, [opts.neighbourLink(n[0])]), el("td", { cls: "num", text: fmt(n[1]) })])); });
      right.appendChild(t);
    }
    root.appendChild(el("div", { cls: "cols3" }, [left, right]));
    return root;
  }

  function shardSrc(base, idx, shard) { var n = String(Math.floor(idx / shard)); while (n.length < 5) n = "0" + n; return base + "shard-" + n + ".js"; }
  function withFeature(base, index, i, cb) {
    need(shardSrc(base, i, index.shard), function (sh) {
      var f = sh.features.filter(function (x) { return x.i === i; })[0];
      cb(f);
    });
  }

  // ---- the feature browser ------------------------------------------------------------------
  function browser() {
    var index = loaded[0], text = loaded[1], info = index.info, n = index.freq.length;
    function header() {
      return el("header", { cls: "top" }, [
        el("h1", {}, [el("a", { href: "#", text: info.label })]),
        el("span", { cls: "muted", text: info.model + " · " + info.hook + " · " + n.toLocaleString() + " features · " +
          info.site_tokens.toLocaleString() + " tokens inspected" })]);
    }
    function indexView(params) {
      var root = clear(app()); root.appendChild(header());
      var q = (params.q || "").toLowerCase(), sort = params.sort || "freq", dir = params.dir || "desc";
      var page = Math.max(1, parseInt(params.page || "1", 10)), size = info.settings.page_size;
      var ids = [];
      for (var i = 0; i < n; i++) {
        if (!q || String(i) === q || index.label[i].toLowerCase().indexOf(q) >= 0 || index.up[i].toLowerCase().indexOf(q) >= 0) ids.push(i);
      }
      var key = sort === "id" ? function (i) { return i; } : sort === "max" ? function (i) { return index.max[i]; } : function (i) { return index.freq[i]; };
      ids.sort(function (x, y) { var d = key(x) - key(y); return (dir === "asc" ? d : -d) || x - y; });
      var pages = Math.max(1, Math.ceil(ids.length / size)); page = Math.min(page, pages);
      var dens = index.density;
      root.appendChild(el("div", { cls: "panel" }, [
        el("div", { cls: "muted small", text: "Feature density: log10 firing frequency over the " + info.site_tokens.toLocaleString() +
          " inspected tokens; " + dens.dead + " features never fire (not shown)." }),
        histogram(dens.counts, dens.edges, "log10 firing frequency", { width: 520, height: 90 })]));
      var search = el("input", { type: "search", id: "search", placeholder: "Search: feature id or token", value: params.q || "" });
      search.addEventListener("keydown", function (e) { if (e.key === "Enter") setHash({ q: search.value, sort: sort, dir: dir, page: 1 }); });
      var sortSel = el("select", { id: "sort" }, [["freq", "frequency"], ["max", "max activation"], ["id", "feature id"]].map(function (o) {
        var opt = el("option", { value: o[0], text: "sort by " + o[1] }); if (o[0] === sort) opt.selected = true; return opt; }));
      sortSel.addEventListener("change", function () { setHash({ q: q, sort: sortSel.value, dir: dir, page: 1 }); });
      var dirBtn = el("button", { id: "dir", text: dir === "asc" ? "ascending ↑" : "descending ↓", onclick: function () { setHash({ q: q, sort: sort, dir: dir === "asc" ? "desc" : "asc", page: 1 }); } });
      var prev = el("button", { id: "prev", text: "← previous", onclick: function () { setHash({ q: q, sort: sort, dir: dir, page: page - 1 }); } });
      var next = el("button", { id: "next", text: "next →", onclick: function () { setHash({ q: q, sort: sort, dir: dir, page: page + 1 }); } });
      prev.disabled = page <= 1; next.disabled = page >= pages;
      root.appendChild(el("div", { cls: "controls" }, [search, el("button", { text: "search", onclick: function () { setHash({ q: search.value, sort: sort, dir: dir, page: 1 }); } }),
        sortSel, dirBtn, el("span", { cls: "pager" }, [prev, el("span", { id: "pageinfo", cls: "muted", text: "page " + page + " of " + pages + " · " + ids.length.toLocaleString() + " features" }), next])]));
      var maxLog = 0, minLog = -6;
      var table = el("table", { cls: "grid", id: "features" }, [el("tr", {}, [el("th", { text: "feature" }), el("th", { cls: "num", text: "frequency" }),
        el("th", { text: "" }), el("th", { cls: "num", text: "max act." }), el("th", { text: "top token" }), el("th", { text: "promotes" })])]);
      ids.slice((page - 1) * size, page * size).forEach(function (i) {
        var f = index.freq[i], w = f > 0 ? Math.max(2, 90 * (Math.log10(f) - minLog) / (maxLog - minLog)) : 0;
        table.appendChild(el("tr", { "data-feature": i }, [el("td", {}, [el("a", { href: "#f=" + i, text: "#" + i })]),
          el("td", { cls: "num", text: pct(f) }), el("td", {}, [el("span", { cls: "bar", style: "width:" + w.toFixed(1) + "px" })]),
          el("td", { cls: "num", text: fmt(index.max[i]) }), el("td", { cls: "toks", text: JSON.stringify(index.label[i]).slice(1, -1) }),
          el("td", { cls: "toks", text: JSON.stringify(index.up[i]).slice(1, -1) })]));
      });
      root.appendChild(table);
    }
    function featureView(i) {
      var root = clear(app()); root.appendChild(header());
      if (!(i >= 0 && i < n)) { root.appendChild(el("p", { text: "No feature " + i + " (this SAE has " + n + ")." })); return; }
      var nav = el("div", { cls: "controls" }, [el("a", { href: "#", text: "← all features" }),
        el("button", { id: "prevf", text: "← #" + (i - 1), onclick: function () { setHash({ f: i - 1 }); } }),
        el("button", { id: "nextf", text: "#" + (i + 1) + " →", onclick: function () { setHash({ f: i + 1 }); } })]);
      nav.children[1].disabled = i <= 0; nav.children[2].disabled = i >= n - 1;
      root.appendChild(nav);
      root.appendChild(el("h2", { id: "feature-title", text: "Feature #" + i }));
      var holder = el("div", { id: "dashboard", cls: "muted", text: "loading…" });
      root.appendChild(holder);
      withFeature("data/", index, i, function (f) {
        clear(holder).className = "";
        holder.appendChild(dashboard(f, text, info.settings, { neighbourLink: function (j) { return el("a", { href: "#f=" + j, text: "#" + j + " " + JSON.stringify(index.label[j]).slice(1, -1) }); } }));
      });
    }
    function route() {
      var p = hashParams();
      if (p.f !== undefined) featureView(parseInt(p.f, 10)); else indexView(p);
      rendered();
    }
    window.addEventListener("hashchange", route);
    route();
  }

  // ---- two SAEs side by side ------------------------------------------------------------------
  function compare() {
    var a = loaded[0], text = loaded[1], b = loaded[2], cmp = loaded[3];
    function header() {
      return el("header", { cls: "top" }, [el("h1", {}, [el("a", { href: "#", text: "A: " + a.info.label + "  vs  B: " + b.info.label })]),
        el("span", { cls: "muted", text: a.info.model + " · " + a.info.hook })]);
    }
    function listView(params) {
      var root = clear(app()); root.appendChild(header());
      root.appendChild(el("div", { cls: "cols" }, [
        el("div", { cls: "panel" }, [el("div", { cls: "muted small", text: "Best match in B for each A feature (decoder cosine); median " + fmt(cmp.median_ab) }),
          histogram(cmp.hist_ab, cmp.edges, "max cosine A → B", { width: 460, height: 90 })]),
        el("div", { cls: "panel" }, [el("div", { cls: "muted small", text: "Best match in A for each B feature; median " + fmt(cmp.median_ba) }),
          histogram(cmp.hist_ba, cmp.edges, "max cosine B → A", { width: 460, height: 90, colour: "#f0b27a" })])]));
      var size = 100, page = Math.max(1, parseInt(params.page || "1", 10)), pairs = cmp.pairs, pages = Math.ceil(pairs.length / size);
      page = Math.min(page, pages);
      var prev = el("button", { id: "prev", text: "← previous", onclick: function () { setHash({ page: page - 1 }); } });
      var next = el("button", { id: "next", text: "next →", onclick: function () { setHash({ page: page + 1 }); } });
      prev.disabled = page <= 1; next.disabled = page >= pages;
      root.appendChild(el("div", { cls: "controls" }, [el("span", { cls: "muted", text: "A's features with their best match in B, most similar first." }),
        el("span", { cls: "pager" }, [prev, el("span", { id: "pageinfo", cls: "muted", text: "page " + page + " of " + pages }), next])]));
      var t = el("table", { cls: "grid", id: "pairs" }, [el("tr", {}, [el("th", { text: "A feature" }), el("th", { text: "A top token" }),
        el("th", { text: "B feature" }), el("th", { text: "B top token" }), el("th", { cls: "num", text: "cosine" }), el("th", { text: "" })])]);
      pairs.slice((page - 1) * size, page * size).forEach(function (p, k) {
        t.appendChild(el("tr", {}, [el("td", {}, [el("a", { href: "#a=" + p[0] + "&b=" + p[1], text: "A#" + p[0] })]),
          el("td", { cls: "toks", text: JSON.stringify(a.label[p[0]]).slice(1, -1) }), el("td", { text: "B#" + p[1] }),
          el("td", { cls: "toks", text: JSON.stringify(b.label[p[1]]).slice(1, -1) }), el("td", { cls: "num", text: fmt(p[2]) }),
          el("td", {}, [el("span", { cls: "bar", style: "width:" + Math.max(0, 80 * p[2]).toFixed(1) + "px" })])]));
      });
      root.appendChild(t);
    }
    function pairView(i, j) {
      var root = clear(app()); root.appendChild(header());
      root.appendChild(el("div", { cls: "controls" }, [el("a", { href: "#", text: "← all pairs" })]));
      var ca = el("div", { id: "side-a" }, [el("h2", { text: "A #" + i })]), cb = el("div", { id: "side-b" }, [el("h2", { text: "B #" + j })]);
      root.appendChild(el("div", { cls: "pair" }, [ca, cb]));
      withFeature("a/", a, i, function (f) { ca.appendChild(dashboard(f, text, a.info.settings)); });
      withFeature("b/", b, j, function (f) { cb.appendChild(dashboard(f, text, b.info.settings)); });
    }
    function route() {
      var p = hashParams();
      if (p.a !== undefined) pairView(parseInt(p.a, 10), parseInt(p.b, 10)); else listView(p);
      rendered();
    }
    window.addEventListener("hashchange", route);
    route();
  }

  // ---- the blinded rating page ---------------------------------------------------------------
  // FNV-1a over the UTF-8 bytes: the checksum `gsae report --ratings` recomputes.
  function fnv1a(str) {
    var bytes = new TextEncoder().encode(str), h = 0x811c9dc5;
    for (var i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 0x01000193) >>> 0; }
    return ("0000000" + h.toString(16)).slice(-8);
  }
  function rate() {
    var text = loaded[0], study = loaded[1], items = study.items, N = items.length;
    var store = "gsae-ratings-" + study.study;
    var state = { rater: "", labels: {}, notes: {} };
    try { var saved = JSON.parse(localStorage.getItem(store) || "null"); if (saved) state = saved; } catch (e) { /* private mode: keep in memory */ }
    function save() { try { localStorage.setItem(store, JSON.stringify(state)); } catch (e) { /* ignore */ } }
    function ratingsFile() {
      var ratings = items.map(function (it) { return { item: it.n, label: state.labels[it.n] || null, explanation: state.notes[it.n] || "" }; })
        .filter(function (r) { return r.label; });
      var canon = study.study + "|" + state.rater + "|" + ratings.map(function (r) { return r.item + ":" + r.label; }).join(",");
      return { format: "gsae-ratings-1", study: study.study, rater: state.rater, n_items: N, ratings: ratings, checksum: fnv1a(canon) };
    }
    function download() {
      var blob = new Blob([JSON.stringify(ratingsFile(), null, 2) + "\n"], { type: "application/json" });
      var a = el("a", { href: URL.createObjectURL(blob), download: "ratings-" + study.study + "-" + (state.rater || "anonymous").replace(/[^A-Za-z0-9_-]+/g, "_") + ".json" });
      document.body.appendChild(a); a.click(); document.body.removeChild(a);
    }
    function view(k) {
      var root = clear(app()), it = items[k], done = Object.keys(state.labels).length;
      root.appendChild(el("header", { cls: "top" }, [el("h1", { text: "Blinded feature rating" }),
        el("span", { cls: "muted", text: "study " + study.study + " · " + N + " features, shuffled; which SAE each comes from is hidden" })]));
      var rater = el("input", { type: "text", id: "rater", placeholder: "your name or initials", value: state.rater });
      rater.addEventListener("change", function () { state.rater = rater.value.trim(); save(); });
      var dl = el("button", { id: "download", cls: "primary", text: "Download ratings (" + done + " of " + N + ")", onclick: download });
      root.appendChild(el("div", { cls: "controls" }, [el("label", {}, ["Rater: ", rater]), dl]));
      var bar = el("div", { cls: "progress" }, [el("div", { style: "width:" + (100 * done / N).toFixed(1) + "%" })]);
      root.appendChild(bar);
      root.appendChild(el("p", { cls: "muted small", text: "Is there an explanation of this feature's behaviour, in particular of its highest activating examples? " +
        "Write it down if there is, then choose Yes (interpretable), Maybe, or No (uninterpretable). Keys: y / m / n, ← / →." }));
      var prev = el("button", { id: "prev", text: "← previous", onclick: function () { go(k - 1); } });
      var next = el("button", { id: "next", text: "next →", onclick: function () { go(k + 1); } });
      prev.disabled = k <= 0; next.disabled = k >= N - 1;
      root.appendChild(el("div", { cls: "controls" }, [prev, el("b", { id: "item-title", text: "Item " + it.n + " of " + N }), next]));
      var note = el("textarea", { id: "explanation", placeholder: "explanation (optional)" });
      note.value = state.notes[it.n] || "";
      note.addEventListener("input", function () { state.notes[it.n] = note.value; save(); });
      var buttons = el("div", { cls: "rating", id: "rating" });
      ["yes", "maybe", "no"].forEach(function (lab) {
        var btn = el("button", { "data-label": lab, text: lab[0].toUpperCase() + lab.slice(1), onclick: function () { choose(lab); } });
        if (state.labels[it.n] === lab) btn.className = "sel-" + lab;
        buttons.appendChild(btn);
      });
      root.appendChild(el("div", { cls: "panel" }, [note, buttons]));
      root.appendChild(dashboard(it.dash, text, study.settings));
      function choose(lab) { state.labels[it.n] = lab; save(); if (k < N - 1) go(k + 1); else view(k); }
      document.onkeydown = function (e) {
        if (e.target && (e.target.tagName === "TEXTAREA" || e.target.tagName === "INPUT")) return;
        if (e.key === "y") choose("yes"); else if (e.key === "m") choose("maybe"); else if (e.key === "n") choose("no");
        else if (e.key === "ArrowLeft" && k > 0) go(k - 1); else if (e.key === "ArrowRight" && k < N - 1) go(k + 1);
      };
    }
    function go(k) { setHash({ item: k + 1 }); }
    function route() { var p = hashParams(), k = parseInt(p.item || "1", 10) - 1; view(Math.max(0, Math.min(N - 1, isNaN(k) ? 0 : k))); rendered(); }
    window.addEventListener("hashchange", route);
    route();
  }

  function start() {
    var page = document.body.getAttribute("data-page");
    try {
      if (page === "browser") browser(); else if (page === "compare") compare(); else if (page === "rate") rate();
      else fail("Unknown page kind " + page);
    } catch (e) { fail("This page could not be drawn: " + e.message + ". Its data files may be damaged; rebuild it with gsae."); throw e; }
  }

  return { load: load, start: start, fnv1a: fnv1a };
})();
