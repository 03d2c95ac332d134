// stakeswarm dashboard: polls api/swarm and redraws the page. Vanilla JS, no dependencies.
"use strict";

(function () {
  const REFRESH_MS = Number(document.body.dataset.refreshMs) || 3000;
  let lastOk = null; // Date.now() of the last snapshot received
  let lastSnapshot = null;

  // --- small helpers -----------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "style") node.setAttribute("style", value);
      else if (key.startsWith("data-")) node.setAttribute(key, String(value));
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function short(hex, head = 6, tail = 4) {
    if (!hex) return "";
    return hex.length > head + tail + 1 ? `${hex.slice(0, head)}…${hex.slice(-tail)}` : hex;
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function badge(state) {
    return el("span", { class: `badge ${state.replace(/ /g, "-")}` }, state);
  }

  function replaceBody(table, rows, empty, columns) {
    const body = table.tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      body.append(el("tr", {}, el("td", { colspan: columns, class: "empty" }, empty)));
      return;
    }
    body.append(...rows);
  }

  // --- sections ----------------------------------------------------------------------------

  function renderModels(snapshot) {
    const root = document.getElementById("models");
    root.replaceChildren();
    if (!snapshot.models.length) {
      root.append(el("p", { class: "empty" }, "no model seen yet"));
      return;
    }
    for (const model of snapshot.models) {
      const total = model.total_blocks;
      const grid = `grid-template-columns: repeat(${total}, minmax(28px, 1fr))`;
      const gapText = model.gaps.map(([a, b]) => (b - a === 1 ? `${a}` : `${a}–${b - 1}`));
      const summary = model.gaps.length
        ? el("span", { class: "summary bad", "data-gaps": model.gaps.length },
             `no node serves block(s) ${gapText.join(", ")}: requests cannot pass`)
        : el("span", { class: "summary ok", "data-gaps": 0 },
             `every block is served (${total} blocks)`);
      const blocks = el("div", { class: "blocks", style: grid },
        model.coverage.map((count, index) =>
          el("div", {
            class: count ? "block" : "block gap",
            "data-block": index,
            title: count ? `block ${index}: ${count} node(s)` : `block ${index}: nobody serves it`,
          }, el("span", { class: "count" }, count ? String(count) : "✕"), `#${index}`)));
      const spans = model.spans.map((span) =>
        el("div", { class: "spanrow", style: grid },
          el("div", {
            class: `span ${span.state.replace(/ /g, "-")}`,
            "data-span-node": span.address,
            style: `grid-column: ${span.start + 1} / ${span.end + 1}`,
            title: `${span.address} (${span.peer_id}) serves blocks ${span.start}–${span.end - 1}: ${span.state}`,
          }, `${short(span.address)} · blocks ${span.start}–${span.end - 1} · ${span.state}`)));
      root.append(el("div", { class: "model", "data-model": model.name },
        el("h3", {}, `${model.name} `, summary), blocks, spans));
    }
  }

  function renderNodes(snapshot) {
    const now = snapshot.chain_time; // commits carry chain time
    const rows = snapshot.nodes.map((node) => {
      const committed = `${node.leaves_committed} steps in ${node.batches_committed} batch${node.batches_committed === 1 ? "" : "es"}`;
      const throughput = node.throughput === null ? "—" : `${node.throughput.toFixed(1)} tok/s`;
      const slashes = node.slashes
        ? el("span", { class: "red" }, `${node.slashes} (−${node.slashed})`)
        : "none";
      const lastCommit = node.last_commit_at ? ago(now - node.last_commit_at) : "never";
      return el("tr", { "data-node": node.address, class: node.slashes ? "slashed" : null },
        el("td", {},
          el("div", { class: "mono", title: node.address }, short(node.address, 8, 6)),
          el("div", { class: "mono minor", title: `libp2p peer id ${node.peer_id}` },
            `peer ${short(node.peer_id, 4, 6)}`)),
        el("td", {}, `${node.span[0]}–${node.span[1] - 1}`,
          el("div", { class: "minor" }, node.model || "model unknown")),
        el("td", {}, badge(node.state)),
        el("td", {}, node.precision || "—"),
        el("td", { class: "num" }, node.price_per_token_per_block),
        el("td", { class: "num", "data-stake": node.stake_base_units },
          node.stake, node.unbonding_base_units !== "0" ? ` (+${node.unbonding} unbonding)` : ""),
        el("td", { class: "num" }, throughput),
        el("td", { class: "num" }, node.tokens_served === null ? "—" : String(node.tokens_served)),
        el("td", {}, committed),
        el("td", {}, lastCommit),
        el("td", { "data-slashes": node.slashes }, slashes));
    });
    replaceBody(document.getElementById("nodes"), rows, "no node registered yet", 11);
  }

  function renderVerifiers(snapshot) {
    const rows = snapshot.verifiers.map((v) => {
      let audits = "— (status page not known)";
      if (v.audits) {
        const a = v.audits;
        audits = `${a.done ?? 0} done: ${a.passed ?? 0} passed, ${a.failed ?? 0} failed, ` +
                 `${a.withheld ?? 0} withheld, ${a.pending ?? 0} pending`;
      }
      return el("tr", { "data-verifier": v.address },
        el("td", { class: "mono", title: v.address }, short(v.address, 8, 6)),
        el("td", {}, badge(v.active ? "online" : "inactive")),
        el("td", { class: "num" }, v.stake),
        el("td", {}, audits),
        el("td", { class: "num", "data-submitted": v.slashes_submitted }, String(v.slashes_submitted)),
        el("td", { class: "num" }, v.bounties));
    });
    replaceBody(document.getElementById("verifiers"), rows, "no verifier registered yet", 6);
  }

  function renderSlashes(snapshot) {
    const root = document.getElementById("slashes");
    root.replaceChildren();
    if (!snapshot.slashes.length) {
      root.append(el("li", { class: "empty" }, "no slash yet"));
      return;
    }
    for (const s of snapshot.slashes.slice(0, 50)) {
      const facts = [
        ["node", s.node],
        ["why", s.reason],
        ["stake taken", s.amount],
        ["bounty", s.bounty],
        ["batch", s.batch_id],
        ["leaf", s.leaf],
        ["leaf index", s.leaf_index],
        ["session", s.session],
        ["step", s.step],
        ["submitted by", s.submitter],
        ["transaction", s.tx_hash],
        ["block", s.block_number],
      ].filter(([, value]) => value !== null && value !== undefined);
      root.append(el("li", { "data-slash-node": s.node, "data-kind": s.kind },
        el("span", { class: "what" }, `${short(s.node, 8, 6)} slashed: ${s.kind}`),
        el("dl", {}, facts.map(([k, v]) =>
          [el("dt", {}, k), el("dd", { class: typeof v === "string" && v.startsWith("0x") ? "mono" : null }, String(v))]))));
    }
  }

  function renderExtra(body) {
    const section = document.getElementById("extra-section");
    const extra = body.extra;
    if (!extra || typeof extra !== "object") {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    document.getElementById("extra-title").textContent = extra.title || "Gateway";
    const root = document.getElementById("extra");
    root.replaceChildren();
    if (Array.isArray(extra.rows)) {
      root.append(el("table", {}, el("tbody", {}, extra.rows.map((row) =>
        el("tr", {}, (Array.isArray(row) ? row : [row]).map((cell, i) =>
          el("td", { class: i ? "num" : null }, String(cell))))))));
    }
    for (const [key, value] of Object.entries(extra)) {
      if (key === "title" || key === "rows") continue;
      root.append(el("p", {}, el("b", {}, `${key}: `),
        typeof value === "object" ? JSON.stringify(value) : String(value)));
    }
  }

  function render(body) {
    renderModels(body);
    renderNodes(body);
    renderVerifiers(body);
    renderSlashes(body);
    renderExtra(body);
    const problems = document.getElementById("problems");
    problems.hidden = !body.problems.length;
    problems.replaceChildren(...body.problems.map((p) => el("div", {}, `⚠ ${p}`)));
    document.getElementById("chain").textContent =
      `chain ${body.chain_id} at ${body.rpc_url}, block ${body.block_number} ` +
      `(${new Date(body.chain_time * 1000).toISOString().replace("T", " ").slice(0, 19)} UTC); ` +
      `amounts in ${body.token}; JSON at api/swarm`;
  }

  function showFreshness() {
    const line = document.getElementById("freshness");
    if (lastOk === null) return;
    const seconds = (Date.now() - lastOk) / 1000;
    const stale = seconds > Math.max(15, (3 * REFRESH_MS) / 1000);
    line.classList.toggle("stale", stale);
    const counts = lastSnapshot
      ? `${lastSnapshot.nodes.length} node(s), ${lastSnapshot.verifiers.length} verifier(s), ` +
        `${lastSnapshot.slashes.length} slash(es) · `
      : "";
    line.textContent = `${counts}updated ${ago(seconds)}` +
      (stale ? " — the dashboard server does not answer" : "");
  }

  async function poll() {
    try {
      const response = await fetch("api/swarm", { cache: "no-store" });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
      lastSnapshot = body;
      lastOk = Date.now();
      render(body);
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    } catch (error) {
      if (lastOk === null) {
        document.getElementById("freshness").textContent = `cannot read the swarm yet (${error.message})`;
      }
    } finally {
      showFreshness();
      setTimeout(poll, REFRESH_MS);
    }
  }

  setInterval(showFreshness, 1000);
  poll();
})();
