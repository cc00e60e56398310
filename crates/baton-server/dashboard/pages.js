// The dashboard's pages. Each is a function of `{ root, argument }` that builds its fixed
// parts once (forms keep their focus and text) and returns `{ title, update }`: `update`
// redraws the parts that show the run's state, after each change.

import * as api from "./api.js";
import { state, h, fill, badge, time, dateTime, act, describe, refetch, refusal } from "./app.js";
import { openTerminal } from "./terminal.js";

const TASK_STATES = ["pending", "ready", "running", "succeeded", "dead", "cancelled", "suspended"];
const FINISHED = new Set(["succeeded", "dead", "cancelled"]);
/** The most cards a column of the tasks board shows: 10,000 tasks stay quick. */
const BOARD_CAP = 50;
/** How the Tasks page shows them, `table` or `board`: kept while the tab is open. */
let tasksView = "table";

function link(href, text) {
  return h("a", { href }, text);
}

function taskLink(task) {
  return link(`#/tasks/${task.id}`, task.title || task.key || `task ${task.id}`);
}

function section(title, ...children) {
  const id = `h-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

function unavailable(name) {
  const why = state.unavailable.get(name);
  return why ? h("p", { class: "muted" }, `Not shown: ${why}`) : null;
}

function counts() {
  const result = Object.fromEntries(TASK_STATES.map((name) => [name, 0]));
  for (const task of state.tasks.values()) result[task.state] = (result[task.state] || 0) + 1;
  return result;
}

/** A workstream's tasks by outcome, from the tasks (so it moves with every event). */
function workstreamProgress(name) {
  const progress = { n: 0, succeeded: 0, running: 0, failed: 0 };
  for (const task of state.tasks.values()) {
    if (task.workstream !== name) continue;
    progress.n += 1;
    if (task.state === "succeeded") progress.succeeded += 1;
    else if (task.state === "running") progress.running += 1;
    else if (task.state === "dead" || task.state === "cancelled") progress.failed += 1;
  }
  return progress;
}

function progressBar(progress, label) {
  const percent = (n) => (progress.n ? (100 * n) / progress.n : 0);
  const finished = progress.succeeded + progress.failed;
  return h(
    "div",
    {
      class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": progress.n || 1,
      "aria-valuenow": finished, "aria-valuetext": `${progress.succeeded} succeeded, ${progress.running} running, ${progress.failed} dead or cancelled, of ${progress.n}`,
    },
    h("span", { class: "succeeded", style: `width:${percent(progress.succeeded)}%` }),
    h("span", { class: "failed", style: `width:${percent(progress.failed)}%` }),
    h("span", { class: "running", style: `width:${percent(progress.running)}%` }),
  );
}

function workstreamState(workstream, progress) {
  if (state.workstreamsDone.has(workstream.name)) return state.workstreamsDone.get(workstream.name) ? "done" : "failed";
  if (progress.n > 0 && progress.succeeded + progress.failed === progress.n) return progress.failed ? "failed" : "done";
  if (progress.running > 0) return "running";
  if (state.plan && workstream.phase > state.plan.phase) return "waiting";
  return "ready";
}

// Budget gauges with marks at 50, 75 and 90 %.
function gauges(scopes) {
  const limited = scopes.filter((scope) => scope.limit_tokens || scope.limit_cost_usd);
  if (limited.length === 0) return h("p", { class: "muted" }, "No budget limits are set.");
  return limited.map((scope) => {
    const byTokens = scope.limit_tokens ? scope.used_tokens / scope.limit_tokens : 0;
    const byCost = scope.limit_cost_usd ? scope.used_cost_usd / scope.limit_cost_usd : 0;
    const fraction = Math.max(byTokens, byCost);
    const percent = Math.round(fraction * 100);
    const level = scope.exhausted || fraction >= 0.9 ? "bad" : fraction >= 0.75 ? "warn" : "";
    const used = scope.limit_tokens
      ? `${scope.used_tokens.toLocaleString()} of ${scope.limit_tokens.toLocaleString()} tokens`
      : `$${scope.used_cost_usd.toFixed(2)} of $${scope.limit_cost_usd.toFixed(2)}`;
    return h(
      "div", { class: "gauge-row" },
      h("div", { class: "head" }, h("span", { class: "mono" }, scope.scope), h("span", {}, `${percent}% · ${used}`, scope.exhausted ? [" ", badge("exhausted")] : null)),
      h(
        "div",
        { class: "gauge", role: "meter", "aria-label": `budget ${scope.scope}`, "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.min(percent, 100) },
        h("div", { class: `fill ${level}`, style: `width:${Math.min(percent, 100)}%` }),
        [50, 75, 90].map((mark) => h("span", { class: "mark", style: `left:${mark}%`, title: `${mark}%` })),
      ),
    );
  });
}

function alerts() {
  const items = [];
  if (state.status && state.status.error) items.push(h("li", {}, `Run: ${state.status.error}`));
  const dead = [...state.tasks.values()].filter((task) => task.state === "dead");
  if (dead.length) {
    items.push(h("li", {}, `${dead.length} dead task(s): `, dead.slice(0, 5).map((task, i) => [i ? ", " : "", taskLink(task)]), dead.length > 5 ? " …" : ""));
  }
  for (const agent of state.agents.values()) {
    const agentState = agent.status && agent.status.state;
    if (agentState === "failed" || agentState === "circuit_open") {
      items.push(h("li", {}, "Agent ", link(`#/agents/${encodeURIComponent(agent.name)}`, agent.name), " is ", badge(agentState)));
    }
  }
  for (const scope of (state.budgets && state.budgets.scopes) || []) {
    if (scope.exhausted) items.push(h("li", {}, "Budget ", h("span", { class: "mono" }, scope.scope), " is exhausted"));
  }
  const deadLetters = state.messages.filter((message) => message.state === "dead");
  if (deadLetters.length) items.push(h("li", {}, `${deadLetters.length} dead letter(s): `, link("#/chat", "redeliver them in Chat")));
  if (items.length === 0) items.push(h("li", { class: "none" }, "No alerts."));
  return h("ul", { class: "alerts" }, items);
}

// ---------------------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element, its attributes set one by one (the page's policy refuses style attributes). */
function svg(tag, attributes = {}) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  return element;
}

/**
 * Draws, in `edges` (an SVG laid over the phase columns), an arrow from each workstream's box
 * to the box of each workstream that depends on it, from where the boxes are after layout.
 */
function drawEdges(edges) {
  const container = edges.parentElement;
  if (!container || !state.plan) return;
  const origin = container.getBoundingClientRect();
  const box = (name) => {
    const element = container.querySelector(`[data-workstream="${CSS.escape(name)}"]`);
    if (!element) return null;
    const rect = element.getBoundingClientRect();
    const left = rect.left - origin.left + container.scrollLeft;
    const top = rect.top - origin.top + container.scrollTop;
    return { left, right: left + rect.width, middle: top + rect.height / 2 };
  };
  edges.setAttribute("width", container.scrollWidth);
  edges.setAttribute("height", container.scrollHeight);
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
  const defs = svg("defs");
  defs.append(marker);
  const paths = [];
  for (const workstream of state.plan.workstreams) {
    for (const dependency of workstream.depends_on) {
      const from = box(dependency);
      const to = box(workstream.name);
      if (!from || !to) continue;
      const bend = Math.max(24, (to.left - from.right) / 2);
      const d = `M ${from.right} ${from.middle} C ${from.right + bend} ${from.middle}, ${to.left - bend} ${to.middle}, ${to.left} ${to.middle}`;
      const path = svg("path", { d, class: "edge", "marker-end": "url(#arrow)", "data-edge": `${dependency}→${workstream.name}`, "data-from": dependency, "data-to": workstream.name });
      paths.push(path);
    }
  }
  edges.replaceChildren(defs, ...paths);
}

function overview({ root }) {
  const summary = h("div");
  const alertList = h("div");
  const plan = h("div");
  const budgets = h("div");
  root.append(
    h("h1", {}, "Overview"),
    summary,
    h("div", { class: "grid2" },
      section("Plan", plan),
      h("div", {}, section("Alerts", alertList), section("Budgets", budgets))),
  );
  // The boxes move when the window's width changes: the edges follow them.
  const redrawEdges = () => {
    const edges = plan.querySelector("svg.edges");
    if (edges) drawEdges(edges);
  };
  window.addEventListener("resize", redrawEdges);
  return {
    title: "Overview",
    unmount() { window.removeEventListener("resize", redrawEdges); },
    update() {
      const status = state.status;
      const taskCounts = counts();
      fill(summary, 
        h("div", { class: "cards", "aria-label": "Run and tasks" },
          h("div", { class: "card", "data-testid": "run-state" },
            h("div", { class: "label" }, "Run"),
            h("div", { class: "value" }, status ? badge(status.completed ? status.state : "running") : "…"),
            status ? h("div", { class: "muted" }, `phase ${status.phase} of ${status.n_phases} · ${Math.round(status.progress * 100)}%`) : null),
          TASK_STATES.map((name) =>
            h("a", { class: "card", href: `#/tasks?state=${name}`, "data-testid": `count-${name}` },
              h("div", { class: "label" }, name),
              h("div", { class: "value" }, String(taskCounts[name] || 0)))),
        ),
      );
      fill(alertList, alerts());
      fill(budgets, unavailable("budgets") || h("div", {}, gauges((state.budgets && state.budgets.scopes) || [])));
      if (!state.plan) {
        fill(plan, unavailable("plan") || h("p", { class: "muted" }, "Loading…"));
        return;
      }
      const byName = new Map(state.plan.workstreams.map((workstream) => [workstream.name, workstream]));
      const edges = svg("svg", { class: "edges", "aria-hidden": "true" });
      fill(plan, 
        h("p", { class: "muted" }, `${state.plan.name}: phase ${state.plan.phase} of ${state.plan.phases.length}. Workstreams run in the phase after those they depend on.`),
        h("div", { class: "phases" }, edges,
          state.plan.phases.map((names, index) => {
            const number = index + 1;
            return h("section", { class: `phase${number === state.plan.phase ? " current" : ""}`, "aria-label": `Phase ${number}` },
              h("h3", {}, `Phase ${number}`, number === state.plan.phase ? " (current)" : ""),
              names.map((name) => {
                const workstream = byName.get(name) || { name, depends_on: [], priority: "", phase: number };
                const progress = workstreamProgress(name);
                const wsState = workstreamState(workstream, progress);
                return h("div", { class: "ws", "data-workstream": name },
                  h("div", { class: "row" }, h("span", { class: "name" }, name), badge(wsState)),
                  h("div", { class: "deps" }, workstream.priority, workstream.depends_on.length ? ` · after ${workstream.depends_on.join(", ")}` : ""),
                  progressBar(progress, `${name} progress`),
                  h("div", { class: "muted" }, `${progress.succeeded}/${progress.n} done`, progress.running ? `, ${progress.running} running` : "", progress.failed ? `, ${progress.failed} dead or cancelled` : ""));
              }));
          })),
      );
      drawEdges(edges);
    },
  };
}

// ---------------------------------------------------------------------------------------------

function options(select, values, all) {
  const wanted = [all, ...values].join("\n");
  if (select.dataset.options === wanted) return;
  const chosen = select.value;
  fill(select, h("option", { value: "" }, all), values.map((value) => h("option", { value }, value)));
  select.value = values.includes(chosen) ? chosen : "";
  select.dataset.options = wanted;
}

function tasks({ root, argument }) {
  if (argument) return taskPage({ root, id: Number(argument) });
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const filters = {
    workstream: h("select", { id: "filter-workstream" }),
    agent: h("select", { id: "filter-agent" }),
    state: h("select", { id: "filter-state" }),
    text: h("input", { id: "filter-text", type: "search", placeholder: "title or key" }),
  };
  options(filters.state, TASK_STATES, "any state");
  filters.state.value = params.get("state") || "";
  const summary = h("p", { class: "muted", role: "status" });
  const body = h("tbody");
  const scroller = h("div", { class: "scroller", tabindex: 0, "aria-label": "Tasks" },
    h("table", { class: "windowed" },
      h("thead", {}, h("tr", {}, ["Id", "Task", "Workstream", "State", "Agent", "Attempt"].map((name) => h("th", { scope: "col" }, name)))),
      body));
  let rowHeight = 34;
  let shown = [];

  // Only the rows in view (and a few more) are in the page: 10,000 tasks stay quick.
  function drawRows() {
    const viewHeight = scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(scroller.scrollTop / rowHeight) - 10);
    const last = Math.min(shown.length, first + Math.ceil(viewHeight / rowHeight) + 20);
    const spacer = (height) => h("tr", { class: "spacer", "aria-hidden": "true" }, h("td", { colspan: 6, style: `height:${height}px` }));
    fill(body, 
      spacer(first * rowHeight),
      shown.slice(first, last).map((task) =>
        h("tr", { "data-task": task.id },
          h("td", {}, String(task.id)),
          h("td", { title: task.title }, taskLink(task)),
          h("td", {}, task.workstream || ""),
          h("td", {}, badge(task.state)),
          h("td", {}, task.assigned_agent || task.agent || ""),
          h("td", {}, String(task.attempt || 0)))),
      spacer((shown.length - last) * rowHeight),
    );
    const row = body.querySelector("tr[data-task]");
    if (row && row.offsetHeight > 0) rowHeight = row.offsetHeight;
  }
  scroller.addEventListener("scroll", () => requestAnimationFrame(drawRows));

  // The board: a column per state, each showing at most BOARD_CAP cards (the rest counted).
  const board = h("div", { class: "board", role: "region", "aria-label": "Board of tasks" });
  function drawBoard() {
    const byState = new Map(TASK_STATES.map((name) => [name, []]));
    for (const task of shown) {
      if (!byState.has(task.state)) byState.set(task.state, []);
      byState.get(task.state).push(task);
    }
    // Drawn again at each change: the card (or link) that had the focus gets it back.
    const focused = board.contains(document.activeElement) ? document.activeElement : null;
    const focusedCard = focused && focused.closest("[data-task]") ? focused.closest("[data-task]").dataset.task : null;
    const focusedMore = focused && focused.classList.contains("more") ? focused.closest("[data-column]").dataset.column : null;
    fill(board, [...byState].map(([name, column]) => {
      // Finished tasks newest first (what just happened); the others in the order they came.
      const cards = FINISHED.has(name) ? column.slice(-BOARD_CAP).reverse() : column.slice(0, BOARD_CAP);
      const id = `column-${name}`;
      return h("section", { class: "column", "data-column": name, "aria-labelledby": id },
        h("h3", { id }, badge(name), ` ${column.length}`),
        h("ul", {}, cards.map((task) =>
          h("li", { class: "task-card", "data-task": task.id },
            h("a", { href: `#/tasks/${task.id}` }, task.key ? h("span", { class: "mono" }, task.key) : null, task.key ? " " : null, task.title || `task ${task.id}`),
            h("div", { class: "muted" }, task.workstream || "no workstream", (task.assigned_agent || task.agent) ? ` · ${task.assigned_agent || task.agent}` : "")))),
        column.length > cards.length
          ? h("a", { class: "more", href: `#/tasks?state=${name}`, onclick: () => { tasksView = "table"; } }, `and ${column.length - cards.length} more`)
          : null);
    }));
    const refocus = focusedCard ? board.querySelector(`[data-task="${focusedCard}"] a`)
      : focusedMore ? board.querySelector(`[data-column="${focusedMore}"] .more`) : null;
    if (refocus) refocus.focus();
  }

  const views = {
    table: h("button", { type: "button", "data-view": "table" }, "Table"),
    board: h("button", { type: "button", "data-view": "board" }, "Board"),
  };
  function showView(view) {
    tasksView = view;
    for (const [name, button] of Object.entries(views)) button.setAttribute("aria-pressed", String(name === view));
    scroller.hidden = view !== "table";
    board.hidden = view !== "board";
    if (state.loaded) update();
  }
  for (const [name, button] of Object.entries(views)) button.addEventListener("click", () => showView(name));

  function update() {
    options(filters.workstream, state.plan ? state.plan.workstreams.map((w) => w.name) : [], "any workstream");
    options(filters.agent, [...state.agents.keys()], "any agent");
    const text = filters.text.value.trim().toLowerCase();
    const all = [...state.tasks.values()];
    shown = all
      .filter((task) => !filters.workstream.value || task.workstream === filters.workstream.value)
      .filter((task) => !filters.agent.value || task.assigned_agent === filters.agent.value || task.agent === filters.agent.value)
      .filter((task) => !filters.state.value || task.state === filters.state.value)
      .filter((task) => !text || `${task.title} ${task.key || ""}`.toLowerCase().includes(text))
      .sort((a, b) => a.id - b.id);
    summary.textContent = `${shown.length} of ${all.length} tasks`;
    if (tasksView === "board") drawBoard();
    else drawRows();
  }
  for (const control of Object.values(filters)) control.addEventListener("input", update);

  const form = createTaskForm();
  root.append(
    h("h1", {}, "Tasks"),
    h("form", { class: "row", role: "search", "aria-label": "Filter tasks", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field" }, h("label", { for: "filter-workstream" }, "Workstream"), filters.workstream),
      h("div", { class: "field" }, h("label", { for: "filter-agent" }, "Agent"), filters.agent),
      h("div", { class: "field" }, h("label", { for: "filter-state" }, "State"), filters.state),
      h("div", { class: "field" }, h("label", { for: "filter-text" }, "Text"), filters.text),
      h("div", { class: "toggle", role: "group", "aria-label": "Show tasks as" }, views.table, views.board)),
    summary,
    scroller,
    board,
    form,
  );
  showView(tasksView);
  return { title: "Tasks", update };
}

function createTaskForm() {
  const fields = {
    title: h("input", { id: "new-title", required: true }),
    workstream: h("select", { id: "new-workstream" }),
    requires: h("input", { id: "new-requires", placeholder: "e.g. build, rust" }),
    agent: h("select", { id: "new-agent" }),
    priority: h("select", { id: "new-priority" }, ["", "critical", "high", "medium", "low"].map((p) => h("option", { value: p }, p || "the workstream's"))),
    description: h("textarea", { id: "new-description", rows: 2 }),
  };
  const refresh = () => {
    options(fields.workstream, state.plan ? state.plan.workstreams.map((w) => w.name) : [], "none");
    options(fields.agent, [...state.agents.keys()], "any that can");
  };
  const form = h("form", { "aria-labelledby": "h-create" },
    h("h2", { id: "h-create" }, "Create a task"),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: "new-title" }, "Title"), fields.title),
      h("div", { class: "field" }, h("label", { for: "new-workstream" }, "Workstream"), fields.workstream),
      h("div", { class: "field" }, h("label", { for: "new-requires" }, "Requires (capabilities)"), fields.requires),
      h("div", { class: "field" }, h("label", { for: "new-agent" }, "Pin to agent"), fields.agent),
      h("div", { class: "field" }, h("label", { for: "new-priority" }, "Priority"), fields.priority)),
    h("div", { class: "field" }, h("label", { for: "new-description" }, "Description"), fields.description),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", action: "CreateTasks" }, "Create task")));
  form.addEventListener("focusin", refresh);
  refresh();
  form.addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const input = { title: fields.title.value.trim() };
    if (fields.workstream.value) input.workstream = fields.workstream.value;
    const requires = fields.requires.value.split(",").map((c) => c.trim()).filter(Boolean);
    if (requires.length) input.requires = requires;
    if (fields.agent.value) input.agent = fields.agent.value;
    if (fields.priority.value) input.priority = fields.priority.value;
    if (fields.description.value.trim()) input.description = fields.description.value.trim();
    const created = await act(`Create task “${input.title}”`, () => api.post("/tasks", input));
    if (created) {
      fields.title.value = "";
      fields.description.value = "";
    }
  });
  return form;
}

/** Text of a transcript entry's content: as it is when text, else its JSON. */
function contentText(content) {
  if (content === null || content === undefined) return "";
  return typeof content === "string" ? content : JSON.stringify(content, null, 2);
}

/** Tokens and cost of a turn, in words. */
function usageText(usage) {
  if (!usage) return null;
  const parts = [`${usage.input_tokens || 0} in`, `${usage.output_tokens || 0} out`];
  if (usage.cache_read_input_tokens) parts.push(`${usage.cache_read_input_tokens} cache read`);
  if (usage.cache_creation_input_tokens) parts.push(`${usage.cache_creation_input_tokens} cache write`);
  if (usage.cost_usd !== undefined) parts.push(`$${Number(usage.cost_usd).toFixed(4)}`);
  return `${usage.model ? `${usage.model}: ` : ""}${parts.join(", ")}`;
}

/**
 * An LLM agent's conversation, attempt by attempt: each message with its role, the tools it
 * called with their arguments, what they answered, and each turn's usage.
 */
function transcriptView(entries) {
  const attempts = new Map();
  for (const entry of entries) {
    if (!attempts.has(entry.attempt)) attempts.set(entry.attempt, []);
    attempts.get(entry.attempt).push(entry);
  }
  return [...attempts.entries()].map(([attempt, turns]) => h("details", { class: "transcript", open: attempt === Math.max(...attempts.keys()) },
    h("summary", {}, `Attempt ${attempt}: ${turns.length} message(s)`),
    h("ol", { class: "feed", "aria-label": `Transcript of attempt ${attempt}` }, turns.map((entry) => h("li", { "data-role": entry.role },
      h("span", { class: "muted" }, time(entry.at)),
      h("span", { class: "type" }, entry.role + (entry.tool_call_id ? ` (${entry.tool_call_id})` : "")),
      h("div", {},
        entry.role === "system" ? h("details", {}, h("summary", {}, "System prompt"), h("pre", { class: "log" }, contentText(entry.content)))
          : contentText(entry.content) ? h("pre", { class: "log" }, contentText(entry.content)) : null,
        (entry.tool_calls || []).map((call) => h("p", { class: "mono" }, `→ ${call.name}(${JSON.stringify(call.arguments)})`)),
        entry.usage ? h("p", { class: "muted" }, usageText(entry.usage)) : null))))));
}

function taskPage({ root, id }) {
  const content = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  let detail = null;
  let error = null;
  let seen = -1;
  const load = async () => {
    try {
      detail = await api.get(`/tasks/${id}`);
      error = null;
    } catch (failure) {
      error = describe(failure);
    }
    draw();
  };
  const draw = () => {
    if (error) return fill(content, h("p", { class: "error" }, error));
    if (!detail) return;
    const task = detail.task;
    fill(content, 
      h("div", { class: "row" }, badge(task.state), h("span", { class: "muted" }, `attempt ${task.attempt} of at most ${task.max_attempts}`)),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "danger", disabled: FINISHED.has(task.state), action: "ControlTasks",
          onclick: () => act(`Cancel task ${task.id}`, () => api.post(`/tasks/${task.id}/cancel`, { reason: "cancelled from the dashboard" })).then(load) }, "Cancel task"),
        h("button", { type: "button", disabled: !(task.state === "dead" || task.state === "cancelled"), action: "ControlTasks",
          onclick: () => act(`Retry task ${task.id}`, () => api.post(`/tasks/${task.id}/retry`)).then(load) }, "Retry task")),
      h("dl", { class: "props" },
        [["Key", task.key], ["Workstream", task.workstream], ["Priority", task.priority], ["Requires", (task.requires || []).join(", ")],
          ["Pinned to", task.agent], ["Agent", task.assigned_agent], ["Depends on", (task.depends_on || []).join(", ")],
          ["Created", dateTime(task.created_at)], ["Finished", dateTime(task.finished_at)], ["Error", task.error], ["Description", task.description]]
          .filter(([, value]) => value !== null && value !== undefined && value !== "")
          .map(([name, value]) => [h("dt", {}, name), h("dd", {}, String(value))])),
      section("Result", h("pre", { class: "log" }, task.result === null || task.result === undefined ? "(none yet)" : JSON.stringify(task.result, null, 2))),
      section("Attempts",
        detail.attempts.length === 0 ? h("p", { class: "muted" }, "No attempt yet.") :
          h("table", {}, h("thead", {}, h("tr", {}, ["#", "Agent", "Started", "Ended", "Outcome", "Error"].map((n) => h("th", { scope: "col" }, n)))),
            h("tbody", {}, detail.attempts.map((attempt) => h("tr", {},
              h("td", {}, String(attempt.attempt)), h("td", {}, attempt.agent || ""), h("td", {}, time(attempt.started_at)),
              h("td", {}, time(attempt.ended_at)), h("td", {}, attempt.outcome ? badge(attempt.outcome.replaceAll(" ", "_")) : "running"), h("td", {}, attempt.error || "")))))),
      detail.transcript && detail.transcript.length ? section("Transcript", transcriptView(detail.transcript)) : null,
      section("Events", h("ul", { class: "feed" }, detail.events.map(eventItem))),
    );
  };
  root.append(h("p", {}, link("#/tasks", "← All tasks")), h("h1", { id: "task-title" }, `Task ${id}`), content);
  load();
  return {
    title: `Task ${id}`,
    update() {
      const task = state.tasks.get(id);
      if (task) document.getElementById("task-title").textContent = `Task ${id}: ${task.title}`;
      // Attempts and the result are not in the events: read again when one is about this task.
      const newest = state.events.findLast((event) => event.task === id);
      if (newest && newest.seq > seen) {
        seen = newest.seq;
        load();
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------

function eventSummary(event) {
  // The task is shown as a link beside it.
  const skip = new Set(["seq", "run_id", "at", "type", "task"]);
  return Object.entries(event).filter(([key]) => !skip.has(key))
    .map(([key, value]) => `${key}=${typeof value === "object" ? JSON.stringify(value) : value}`).join(" ");
}

function eventItem(event) {
  return h("li", { "data-type": event.type },
    h("span", { class: "muted mono" }, `#${event.seq}`),
    h("span", { class: "muted" }, time(event.at)),
    h("span", { class: "type" }, event.type),
    h("span", { class: "mono" }, event.task !== undefined ? [link(`#/tasks/${event.task}`, `task ${event.task}`), " "] : null, eventSummary(event)));
}

function agentButtons(name) {
  const command = (verb) => () => act(`${verb[0].toUpperCase()}${verb.slice(1)} agent ${name}`, () => api.post(`/agents/${encodeURIComponent(name)}/${verb}`)).then(() => refetch("agents"));
  return h("div", { class: "actions" },
    h("button", { type: "button", onclick: command("start"), "aria-label": `Start ${name}`, action: "ManageAgents" }, "Start"),
    h("button", { type: "button", onclick: command("stop"), "aria-label": `Stop ${name}`, action: "ManageAgents" }, "Stop"),
    h("button", { type: "button", onclick: command("restart"), "aria-label": `Restart ${name}`, action: "ManageAgents" }, "Restart"));
}

function runningTasks(name) {
  return [...state.tasks.values()].filter((task) => task.state === "running" && task.assigned_agent === name);
}

/** What the form to add an agent starts with: an `[[agents]]` entry of baton.toml, as JSON. */
const NEW_AGENT = `{
  "name": "new-agent",
  "command": ["bash", "-c", "echo done"],
  "capabilities": ["shell"]
}`;

/**
 * A form of an `[[agents]]` entry as JSON (the body `POST /agents` and `PUT /agents/{name}`
 * take); `send(body)` acts on it. JSON that does not parse is said here, before any request;
 * what the server refuses (with where in the entry) is said in a banner.
 */
function agentForm({ id, label, text, submit, send, extra = [] }) {
  const area = h("textarea", { id, rows: 10, spellcheck: "false", class: "mono", "aria-describedby": `${id}-help ${id}-error` }, text);
  const error = h("p", { id: `${id}-error`, class: "error", role: "alert" });
  const form = h("form", { "aria-label": label },
    h("div", { class: "field" },
      h("label", { for: id }, label),
      h("p", { id: `${id}-help`, class: "muted" }, "An [[agents]] entry of baton.toml, as JSON: the same keys, checked the same way."),
      area),
    error,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", action: "ManageAgents" }, submit), ...extra));
  form.addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    let body;
    try {
      body = JSON.parse(area.value);
    } catch (problem) {
      error.textContent = `Not JSON: ${problem.message}`;
      return;
    }
    error.textContent = "";
    await send(body);
  });
  return { form, area };
}

function agents({ root, argument }) {
  if (argument) return agentPage({ root, name: argument });
  const body = h("tbody");
  const adding = agentForm({
    id: "agent-new", label: "Add an agent", text: NEW_AGENT, submit: "Add agent",
    send: async (entry) => {
      const added = await act(`Add agent ${entry.name}`, () => api.post("/agents", entry));
      if (added !== undefined) {
        await refetch("agents");
        location.hash = `#/agents/${encodeURIComponent(entry.name)}`;
      }
    },
  });
  root.append(h("h1", {}, "Agents"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Agent", "State", "Runtime", "Workstream", "Current task", "Done / failed", "Restarts", "Actions"].map((n) => h("th", { scope: "col" }, n)))), body),
    section("Add an agent", adding.form));
  return {
    title: "Agents",
    update() {
      fill(body, [...state.agents.values()].map((agent) => {
        const status = agent.status || {};
        const current = runningTasks(agent.name);
        return h("tr", { "data-agent": agent.name },
          h("td", {}, link(`#/agents/${encodeURIComponent(agent.name)}`, agent.name)),
          h("td", {}, badge(status.state || "waiting")),
          h("td", {}, status.runtime || agent.spec.runtime || ""),
          h("td", {}, status.workstream || "(shared)"),
          h("td", {}, current.length ? current.map((task, i) => [i ? ", " : "", taskLink(task)]) : h("span", { class: "muted" }, "none")),
          h("td", {}, `${status.tasks_succeeded || 0} / ${status.tasks_failed || 0}`),
          h("td", {}, String(state.restarts.get(agent.name) || 0)),
          h("td", {}, agentButtons(agent.name)));
      }));
    },
  };
}

function agentPage({ root, name }) {
  const props = h("div");
  const log = h("pre", { class: "log", tabindex: 0, "aria-label": `${name}'s log` }, "Loading…");
  const logState = h("p", { class: "muted", role: "status" });
  let lines = [];
  let stopLog = null;
  let drawQueued = false;
  const drawLog = () => {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = lines.length ? lines.join("\n") : "(empty)";
      if (atBottom) log.scrollTop = log.scrollHeight;
    });
  };
  // The log as it is written: its last 32 KiB, then each new line.
  const followLog = () => {
    if (stopLog) stopLog();
    lines = [];
    logState.textContent = "Following the log as it is written.";
    stopLog = api.followLog(name, 32768, (line) => {
      lines.push(line);
      if (lines.length > 2000) lines.splice(0, lines.length - 2000);
      drawLog();
    }, (error) => {
      logState.textContent = error ? `The log stream ended: ${describe(error)}` : "The log stream ended; Follow again to resume.";
      drawLog();
    });
  };
  // A terminal agent's screen, once the agent is known to be one.
  const screenPart = h("div");
  let closeTerminal = null;
  const showTerminal = () => {
    if (closeTerminal) closeTerminal();
    const why = refusal("TypeInTerminal");
    const screen = h("div", { class: "screen", "data-testid": "terminal" });
    const screenState = h("p", { class: "muted", role: "status" });
    const reconnect = h("button", { type: "button", onclick: showTerminal }, "Reconnect");
    fill(screenPart, section("Terminal",
      h("p", { class: "muted" }, why ? `Watching only: ${why}` : "Click the screen and type: keys go to the program, as with baton attach."),
      h("div", { class: "row" }, reconnect, screenState), screen));
    const words = { connecting: "Connecting…", live: "Live.", refused: "Not typed", closed: "Closed" };
    closeTerminal = openTerminal(screen, name, {
      mayType: !why,
      onState: (terminalState, detail) => {
        screenState.dataset.state = terminalState;
        screenState.textContent = detail ? `${words[terminalState]}: ${detail}` : words[terminalState];
      },
    });
  };
  // Its entry, to change (the agent is replaced by the new one) or remove.
  const remove = h("button", {
    type: "button", class: "danger", action: "ManageAgents", "aria-label": `Remove ${name}`,
    onclick: async () => {
      if (!confirm(`Remove agent ${name} from the running plan? Its running tasks are stopped and retried elsewhere.`)) return;
      const removed = await act(`Remove agent ${name}`, () => api.del(`/agents/${encodeURIComponent(name)}`));
      if (removed !== undefined) {
        await refetch("agents");
        location.hash = "#/agents";
      }
    },
  }, "Remove agent");
  const editing = agentForm({
    id: "agent-edit", label: "Its configuration", text: "", submit: "Save changes", extra: [remove],
    send: async (entry) => {
      const saved = await act(`Update agent ${name}`, () => api.put(`/agents/${encodeURIComponent(name)}`, entry));
      if (saved !== undefined) {
        edited = false;
        refetch("agents");
      }
    },
  });
  let edited = false;
  editing.area.addEventListener("input", () => { edited = true; });
  root.append(h("p", {}, link("#/agents", "← All agents")), h("h1", {}, `Agent ${name}`), props, agentButtons(name), screenPart,
    section("Recent log", h("div", { class: "row" }, h("button", { type: "button", onclick: followLog }, "Follow again"), logState), log),
    section("Configuration", editing.form));
  followLog();
  return {
    title: `Agent ${name}`,
    unmount() {
      if (stopLog) stopLog();
      if (closeTerminal) closeTerminal();
    },
    update() {
      const agent = state.agents.get(name);
      if (!agent) return fill(props, h("p", { class: "muted" }, "No such agent in the run."));
      if (!closeTerminal && agent.spec.mode === "pty") showTerminal();
      // The entry as it is now, until the user starts changing it.
      if (!edited) editing.area.value = JSON.stringify(agent.spec, null, 2);
      const status = agent.status || {};
      const current = runningTasks(name);
      fill(props, h("dl", { class: "props" },
        h("dt", {}, "State"), h("dd", {}, badge(status.state || "waiting")),
        h("dt", {}, "Role"), h("dd", {}, status.role || agent.spec.role || ""),
        h("dt", {}, "Runtime"), h("dd", {}, status.runtime || ""),
        h("dt", {}, "Capabilities"), h("dd", {}, (status.capabilities || []).join(", ")),
        h("dt", {}, "Current task"), h("dd", {}, current.length ? current.map((task, i) => [i ? ", " : "", taskLink(task)]) : "none"),
        h("dt", {}, "Done / failed"), h("dd", {}, `${status.tasks_succeeded || 0} / ${status.tasks_failed || 0}`),
        h("dt", {}, "Restarts"), h("dd", {}, String(state.restarts.get(name) || 0)),
        h("dt", {}, "Last activity"), h("dd", {}, dateTime(status.last_activity))));
    },
  };
}

// ---------------------------------------------------------------------------------------------

const EVENT_TYPES = [
  "RunStarted", "RunResumed", "RunInterrupted", "RunCompleted", "PhaseStarted", "PhaseCompleted", "WorkstreamCompleted", "AgentSpawned",
  "AgentStateChanged", "AgentTerminated", "TaskCreated", "TaskReady", "TaskClaimed", "TaskProgress", "TaskCompleted",
  "TaskFailed", "TaskRetrying", "TaskDeadLettered", "TaskCancelled", "TaskLeaseExpired", "TaskRequeued", "TaskSuspended",
  "TaskResumed", "ScheduleFired", "ScheduleSkipped", "SchedulePaused", "ScheduleResumed", "ConflictDeferred",
  "ResourceLeased", "ResourceReleased", "MessageSent", "MessageDeadLettered", "MessageRedelivered", "UsageReported",
  "BudgetThreshold", "TaskBudgetWait", "BudgetReset", "BudgetLimitSet", "AgentAdded", "AgentUpdated", "AgentRemoved",
  "WorkstreamAdded", "ConfigReloaded", "ConfigRejected", "CoordinatorDecision", "CoordinatorFallback",
];

function events({ root }) {
  const type = h("select", { id: "event-type" }, h("option", { value: "" }, "all types"), EVENT_TYPES.map((t) => h("option", { value: t }, t)));
  const text = h("input", { id: "event-text", type: "search", placeholder: "agent, task, text" });
  const list = h("ul", { class: "feed", "aria-label": "Events, newest first" });
  const summary = h("p", { class: "muted", role: "status" });
  function update() {
    const needle = text.value.trim().toLowerCase();
    const shown = state.events.filter((event) => !type.value || event.type === type.value)
      .filter((event) => !needle || JSON.stringify(event).toLowerCase().includes(needle));
    const newest = shown.slice(-300).reverse();
    summary.textContent = `${shown.length} event(s) of the last ${state.events.length}; newest first`;
    fill(list, newest.map(eventItem));
  }
  type.addEventListener("input", update);
  text.addEventListener("input", update);
  root.append(h("h1", {}, "Events"),
    h("form", { class: "row", role: "search", "aria-label": "Filter events", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field" }, h("label", { for: "event-type" }, "Type"), type),
      h("div", { class: "field" }, h("label", { for: "event-text" }, "Text"), text)),
    summary, list);
  return { title: "Events", update };
}

// ---------------------------------------------------------------------------------------------

function chat({ root }) {
  const input = h("textarea", { id: "chat-text", rows: 3, placeholder: "@agent what to do…", "aria-autocomplete": "list", "aria-controls": "mentions", "aria-expanded": "false" });
  const suggestions = h("ul", { id: "mentions", class: "suggest", role: "listbox", hidden: true, "aria-label": "Agents" });
  const result = h("p", { role: "status" });
  const log = h("tbody");
  const dead = h("div");
  let choices = [];
  let chosen = 0;

  // @mentions: typing `@` and letters offers the agents whose names start with them.
  function mentionAtCursor() {
    const before = input.value.slice(0, input.selectionStart);
    const match = /@([A-Za-z0-9_.-]*)$/.exec(before);
    return match ? { prefix: match[1], start: before.length - match[0].length } : null;
  }
  function showSuggestions() {
    const mention = mentionAtCursor();
    choices = mention ? [...state.agents.keys()].filter((name) => name.startsWith(mention.prefix)) : [];
    chosen = 0;
    drawSuggestions();
  }
  function drawSuggestions() {
    suggestions.hidden = choices.length === 0;
    input.setAttribute("aria-expanded", String(choices.length > 0));
    fill(suggestions, choices.map((name, index) =>
      h("li", { role: "option", id: `mention-${index}`, "aria-selected": String(index === chosen), onmousedown: (e) => { e.preventDefault(); complete(name); } }, `@${name}`)));
    if (choices.length) input.setAttribute("aria-activedescendant", `mention-${chosen}`);
    else input.removeAttribute("aria-activedescendant");
  }
  function complete(name) {
    const mention = mentionAtCursor();
    if (!mention) return;
    const after = input.value.slice(input.selectionStart);
    input.value = `${input.value.slice(0, mention.start)}@${name} ${after}`;
    const cursor = mention.start + name.length + 2;
    input.setSelectionRange(cursor, cursor);
    choices = [];
    drawSuggestions();
    input.focus();
  }
  input.addEventListener("input", showSuggestions);
  input.addEventListener("blur", () => { choices = []; drawSuggestions(); });
  input.addEventListener("keydown", (key) => {
    if (choices.length) {
      if (key.key === "ArrowDown" || key.key === "ArrowUp") {
        key.preventDefault();
        chosen = (chosen + (key.key === "ArrowDown" ? 1 : choices.length - 1)) % choices.length;
        drawSuggestions();
        return;
      }
      if (key.key === "Enter" || key.key === "Tab") {
        key.preventDefault();
        complete(choices[chosen]);
        return;
      }
      if (key.key === "Escape") {
        choices = [];
        drawSuggestions();
        return;
      }
    }
    if (key.key === "Enter" && (key.ctrlKey || key.metaKey)) form.requestSubmit();
  });
  const form = h("form", { class: "composer", "aria-label": "Send a message" },
    h("div", { class: "field" }, h("label", { for: "chat-text" }, "Message (mention agents with @; Ctrl+Enter sends)"), input), suggestions,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", action: "SendMessages" }, "Send")), result);
  form.addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    const answer = await act("Send message", () => api.post("/messages", { text }));
    if (answer) {
      input.value = "";
      result.textContent = `Sent to ${answer.sent.map((sent) => sent.task ? `${sent.agent} (as task ${sent.task})` : sent.agent).join(", ")}.`;
      refetch("messages", "tasks");
    }
  });
  root.append(h("h1", {}, "Chat"), form,
    section("Dead letters", dead),
    section("Messages", h("div", { class: "scroller" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Time", "From", "To", "Message", "Delivery", "Tries"].map((n) => h("th", { scope: "col" }, n)))), log))));
  // Acknowledgements make no event: while this page is open, the log is read every few seconds.
  const poll = setInterval(() => refetch("messages"), 3000);
  return {
    title: "Chat",
    unmount() { clearInterval(poll); },
    update() {
      const letters = state.messages.filter((message) => message.state === "dead");
      fill(dead, letters.length === 0 ? h("p", { class: "muted" }, "None.") : [
        h("ul", {}, letters.map((letter) => h("li", {}, `to ${letter.to}: “${letter.body}” — ${letter.error || "not acknowledged"} `,
          h("button", { type: "button", "aria-label": `Redeliver message ${letter.id} to ${letter.to}`, action: "ControlMessages", onclick: () => act(`Redeliver message ${letter.id}`, () => api.post("/messages/redeliver", { ids: [letter.id] })).then(() => refetch("messages")) }, "Redeliver")))),
        h("button", { type: "button", action: "ControlMessages", onclick: () => act("Redeliver all dead letters", () => api.post("/messages/redeliver", { dead: true })).then(() => refetch("messages")) }, "Redeliver all"),
      ]);
      fill(log, [...state.messages].reverse().map((message) => h("tr", { "data-message": message.id },
        h("td", {}, time(message.created_at)), h("td", {}, message.from), h("td", {}, message.to),
        h("td", {}, message.body, message.task ? [" ", link(`#/tasks/${message.task}`, `(task ${message.task})`)] : null),
        h("td", {}, badge(message.state), message.error ? h("span", { class: "muted" }, ` ${message.error}`) : null),
        h("td", {}, String(message.attempts)))));
    },
  };
}

// ---------------------------------------------------------------------------------------------

/** The events after which the held resources and their waiters may have changed. */
const CONFLICT_EVENTS = new Set([
  "ConflictDeferred", "ResourceLeased", "ResourceReleased", "TaskClaimed", "TaskCompleted", "TaskFailed", "TaskCancelled",
]);

/** A task named as `GET /conflicts` names it (its key, or its id without one). */
function taskNamed(name, byKey) {
  const task = byKey.get(name) || state.tasks.get(Number(name));
  return task ? link(`#/tasks/${task.id}`, name) : h("span", { class: "mono" }, name);
}

/** When a holder took `resource`: its lease's or its task's claim event, if the page holds it. */
function heldSince(held, task) {
  for (let index = state.events.length - 1; index >= 0; index -= 1) {
    const event = state.events[index];
    if (!held.task && event.type === "ResourceLeased" && event.resource === held.resource && event.agent === held.agent) return event.at;
    if (held.task && task && event.type === "TaskClaimed" && event.task === task.id) return event.at;
  }
  return task ? task.updated_at : null;
}

function conflicts({ root }) {
  const heldRows = h("tbody");
  const waitingRows = h("tbody");
  const summary = h("p", { class: "muted", role: "status" });
  let data = null;
  let failure = null;
  let timer = null;
  let lastSeq = state.events.length ? state.events[state.events.length - 1].seq : 0;

  async function load() {
    try {
      data = await api.get("/conflicts");
      failure = null;
    } catch (error) {
      failure = describe(error);
    }
    draw();
  }
  // A burst of events (a batch finishing) costs one read.
  function loadSoon() {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      load();
    }, 300);
  }

  function draw() {
    if (failure) {
      summary.textContent = `Not shown: ${failure}`;
      return;
    }
    if (!data) return;
    const byKey = new Map();
    for (const task of state.tasks.values()) if (task.key) byKey.set(task.key, task);
    summary.textContent = `${data.held.length} resource(s) held; ${data.waiting.length} task(s) waiting for one.`;
    fill(heldRows, data.held.length === 0 ? h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No resource is held.")) :
      data.held.map((held) => {
        const task = held.task ? byKey.get(held.task) || state.tasks.get(Number(held.task)) : null;
        return h("tr", { "data-held": held.resource },
          h("td", { class: "mono" }, held.resource),
          h("td", {}, held.task ? ["task ", taskNamed(held.task, byKey)] : "an agent's lease"),
          h("td", {}, held.agent ? link(`#/agents/${encodeURIComponent(held.agent)}`, held.agent) : ""),
          h("td", {}, dateTime(heldSince(held, task))),
          h("td", {}, held.until ? dateTime(held.until) : "while the task runs"));
      }));
    fill(waitingRows, data.waiting.length === 0 ? h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No task waits for a resource.")) :
      data.waiting.map((waiting) => h("tr", { "data-waiting": waiting.task },
        h("td", {}, taskNamed(waiting.task, byKey)),
        h("td", {}, badge(waiting.state)),
        h("td", {}, "task ", taskNamed(waiting.holder, byKey)),
        h("td", {}, "it wants ", h("span", { class: "mono" }, waiting.resource),
          waiting.resource === waiting.held ? null : [", which overlaps ", h("span", { class: "mono" }, waiting.held)],
          `, held by ${waiting.holder} while it runs`))));
  }

  root.append(h("h1", {}, "Conflicts"),
    h("p", { class: "muted" }, "Resources held by running tasks and by agents' leases, and the tasks that wait until they are released."),
    summary,
    section("Held resources", h("table", {},
      h("thead", {}, h("tr", {}, ["Resource", "Held by", "Agent", "Since", "Until"].map((n) => h("th", { scope: "col" }, n)))), heldRows)),
    section("Waiting tasks", h("table", {},
      h("thead", {}, h("tr", {}, ["Task", "State", "Waits for", "Why"].map((n) => h("th", { scope: "col" }, n)))), waitingRows)));
  load();
  return {
    title: "Conflicts",
    unmount() { clearTimeout(timer); },
    update() {
      const events = state.events;
      const newest = events.length ? events[events.length - 1].seq : 0;
      if (newest > lastSeq) {
        let relevant = false;
        for (let index = events.length - 1; index >= 0 && events[index].seq > lastSeq; index -= 1) {
          if (CONFLICT_EVENTS.has(events[index].type)) relevant = true;
        }
        lastSeq = newest;
        if (relevant) loadSoon();
      }
      draw();
    },
  };
}

// ---------------------------------------------------------------------------------------------

function budgets({ root }) {
  const gaugeList = h("div");
  const table = h("tbody");
  const scheduleRows = h("tbody");
  const period = h("p", { class: "muted" });
  const scope = h("input", { id: "limit-scope", list: "limit-scopes", placeholder: "global, agent:NAME, workstream:NAME", required: true });
  const scopes = h("datalist", { id: "limit-scopes" });
  const tokens = h("input", { id: "limit-tokens", type: "number", min: 0, step: 1 });
  const cost = h("input", { id: "limit-cost", type: "number", min: 0, step: "0.01" });
  const form = h("form", { class: "row", "aria-label": "Set a budget limit" },
    h("div", { class: "field" }, h("label", { for: "limit-scope" }, "Scope"), scope, scopes),
    h("div", { class: "field" }, h("label", { for: "limit-tokens" }, "Daily tokens"), tokens),
    h("div", { class: "field" }, h("label", { for: "limit-cost" }, "Cost limit (USD)"), cost),
    h("button", { type: "submit", action: "SetBudgets" }, "Set limit until the reset"));
  form.addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    // Either limit, or both; a field left empty keeps the scope's limit as it is (the API sets
    // both at once, so the current one is sent again).
    const current = state.budgets?.scopes.find((s) => s.scope === scope.value.trim());
    const limit = {};
    if (tokens.value !== "") limit.daily_tokens = Number(tokens.value);
    else if (cost.value !== "" && current?.limit_tokens) limit.daily_tokens = current.limit_tokens;
    if (cost.value !== "") limit.cost_usd = Number(cost.value);
    else if (tokens.value !== "" && current?.limit_cost_usd) limit.cost_usd = current.limit_cost_usd;
    if (tokens.value === "" && cost.value === "") {
      tokens.setCustomValidity("Give a token limit, a cost limit, or both.");
      tokens.reportValidity();
      return;
    }
    act(`Set budget ${scope.value}`, () => api.post(`/budgets/${encodeURIComponent(scope.value.trim())}`, limit)).then(() => refetch("budgets"));
  });
  tokens.addEventListener("input", () => tokens.setCustomValidity(""));
  cost.addEventListener("input", () => tokens.setCustomValidity(""));
  root.append(h("h1", {}, "Budgets & schedules"),
    section("Budgets", period, gaugeList,
      h("table", {}, h("thead", {}, h("tr", {}, ["Scope", "Tokens used", "Token limit", "Cost used", "Cost limit", "State"].map((n) => h("th", { scope: "col" }, n)))), table), form),
    section("Schedules", h("table", {}, h("thead", {}, h("tr", {}, ["Schedule", "Cron", "State", "Next due", "Last fired", "Actions"].map((n) => h("th", { scope: "col" }, n)))), scheduleRows)));
  return {
    title: "Budgets & schedules",
    update() {
      const data = state.budgets;
      if (data) {
        period.textContent = `Period started ${dateTime(data.period_start)}${data.next_reset ? `; resets ${dateTime(data.next_reset)}` : ""}.`;
        fill(gaugeList, gauges(data.scopes));
        const names = ["global", ...[...state.agents.keys()].map((name) => `agent:${name}`),
          ...(state.plan ? state.plan.workstreams.map((w) => `workstream:${w.name}`) : [])];
        fill(scopes, names.map((name) => h("option", { value: name })));
        fill(table, data.scopes.map((s) => h("tr", {},
          h("td", { class: "mono" }, s.scope), h("td", {}, s.used_tokens.toLocaleString()), h("td", {}, s.limit_tokens ? s.limit_tokens.toLocaleString() : "—"),
          h("td", {}, `$${s.used_cost_usd.toFixed(2)}`), h("td", {}, s.limit_cost_usd ? `$${s.limit_cost_usd.toFixed(2)}` : "—"),
          h("td", {}, s.exhausted ? badge("exhausted") : badge("live")))));
      } else {
        fill(gaugeList, unavailable("budgets") || "");
      }
      fill(scheduleRows, state.schedules.length === 0 ? h("tr", {}, h("td", { colspan: 6, class: "muted" }, unavailable("schedules") ? state.unavailable.get("schedules") : "No schedules.")) :
        state.schedules.map((schedule) => h("tr", {},
          h("td", {}, schedule.name), h("td", { class: "mono" }, `${schedule.cron} (${schedule.timezone})`),
          h("td", {}, badge(schedule.paused ? "paused" : "live")), h("td", {}, schedule.next.map(dateTime).join(", ")),
          h("td", {}, schedule.last_fired_at ? dateTime(schedule.last_fired_at) : "never", schedule.last_task ? [" ", link(`#/tasks/${schedule.last_task}`, `task ${schedule.last_task}`)] : null),
          h("td", {}, h("button", { type: "button", "aria-label": `${schedule.paused ? "Resume" : "Pause"} ${schedule.name}`, action: "ControlSchedules",
            onclick: () => act(`${schedule.paused ? "Resume" : "Pause"} schedule ${schedule.name}`, () => api.post(`/schedules/${encodeURIComponent(schedule.name)}/${schedule.paused ? "resume" : "pause"}`)).then(() => refetch("schedules")) },
          schedule.paused ? "Resume" : "Pause")))));
    },
  };
}

export const pages = { overview, tasks, agents, events, conflicts, chat, budgets };
