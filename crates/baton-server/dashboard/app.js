// The dashboard: loads the run's state through the API, keeps it current by applying each
// live event to it (and refetching only what an event does not tell), and shows one page at a
// time (the part of the URL after `#`).

import * as api from "./api.js";
import { pages } from "./pages.js";

/** What the dashboard knows of the run. Pages read it; events and refetches change it. */
export const state = {
  status: null,
  plan: null,
  /** Task id → task record (or the part of it the events told, until it is refetched). */
  tasks: new Map(),
  /** Agent name → `GET /agents` entry. */
  agents: new Map(),
  /** Agent name → restarts seen in the events. */
  restarts: new Map(),
  budgets: null,
  schedules: [],
  messages: [],
  /** The newest events, oldest first (at most MAX_EVENTS). */
  events: [],
  /** Workstream name → succeeded (from `WorkstreamCompleted`). */
  workstreamsDone: new Map(),
  /** Why a part could not be loaded: part → message (a viewer may not read everything). */
  unavailable: new Map(),
  loaded: false,
  /** The token's role (`viewer`, `operator`, …), or null without a token (no `[auth]`). */
  role: null,
};

/** What each action a button takes is, in words, for the reason it is disabled. */
const ACTIONS = {
  CreateTasks: "create tasks",
  ControlTasks: "cancel or retry tasks",
  PlanObjectives: "plan objectives",
  ManageAgents: "add, change, remove, start, stop or restart agents",
  SendMessages: "send messages",
  ControlMessages: "redeliver messages",
  SetBudgets: "set budget limits",
  ControlSchedules: "pause or resume schedules",
  TypeInTerminal: "type into an agent's terminal",
};

/**
 * Why the token's role may not take `action` (an `Action` of the server's table), or null when
 * it may. This only spares the user a click that would be refused: the server decides.
 */
export function refusal(action) {
  const role = state.role;
  if (!role || role === "admin" || role === "operator") return null;
  if (role === "agent" && (action === "CreateTasks" || action === "SendMessages")) return null;
  return `A ${role} token may not ${ACTIONS[action] || action}; an operator token can.`;
}

const MAX_EVENTS = 2000;

// ---------------------------------------------------------------------------------------------
// Small helpers for building the page without HTML strings (text is never parsed as markup).

/** An element: `h("a", { href: "#/" }, "text", child)`. `on*` attributes take functions. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    // `action: "ControlTasks"`: disabled, saying why, when the role may not take it.
    else if (name === "action") {
      const why = refusal(value);
      if (why) {
        element.disabled = true;
        element.title = why;
        element.dataset.refused = value;
      }
    } else if (name === "class") element.className = value;
    // Through the CSSOM: the page's policy refuses style attributes in markup.
    else if (name === "style") element.style.cssText = value;
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Replaces `element`'s children with `children` (arrays flattened, text as text). */
export function fill(element, ...children) {
  element.replaceChildren(...h("div", {}, ...children).childNodes);
  return element;
}

/** A state as a coloured badge (colour is never the only sign: the word is there). */
export function badge(text) {
  return h("span", { class: `state ${String(text).toLowerCase()}` }, String(text).replaceAll("_", " "));
}

export function time(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toLocaleTimeString();
}

export function dateTime(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toLocaleString();
}

// ---------------------------------------------------------------------------------------------
// Notices: errors (a refused action above all) and confirmations, announced to screen readers.

export function notify(message, kind = "error") {
  const close = h("button", { type: "button", "aria-label": "Dismiss" }, "Dismiss");
  const notice = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, h("span", {}, message), close);
  close.addEventListener("click", () => notice.remove());
  const notices = document.getElementById(kind === "error" ? "notices" : "toasts");
  notices.append(notice);
  while (notices.children.length > 3) notices.firstChild.remove();
  if (kind !== "error") setTimeout(() => notice.remove(), 6000);
}

/** The words for an error the API answered, saying plainly when the role may not act. */
export function describe(error) {
  if (error.status === 403) return `Refused (403 ${error.code}): ${error.message}. Your token's role may not do this; an operator token can.`;
  if (error.status === 401) return `Not logged in (401): ${error.message}`;
  if (error.status) return `Failed (${error.status} ${error.code}): ${error.message}`;
  return error.message;
}

/** Runs an action of the user's: a confirmation when it works, the refusal when it does not. */
export async function act(label, action) {
  try {
    const answer = await action();
    notify(`${label}: done`, "ok");
    return answer;
  } catch (error) {
    notify(`${label}: ${describe(error)}`);
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Loading.

async function part(name, load) {
  try {
    await load();
    state.unavailable.delete(name);
  } catch (error) {
    if (error.status === 401) throw error;
    state.unavailable.set(name, describe(error));
  }
}

async function loadTasks() {
  const tasks = new Map();
  let after = null;
  for (;;) {
    const page = await api.get(`/tasks${api.query({ limit: 1000, after })}`);
    for (const task of page.tasks) tasks.set(task.id, task);
    if (page.next_after === null || page.next_after === undefined || page.tasks.length === 0) break;
    after = page.next_after;
  }
  state.tasks = tasks;
}

// What the events told wins over an answer read before it: a refetch whose request was under
// way when an event changed the same task or agent keeps the event's fields (the answer may
// have been read before the change; the events come in order, so they are never behind).
/** Task id or agent name → how many events have changed it. */
const touched = new Map();

function touch(key) {
  touched.set(key, (touched.get(key) || 0) + 1);
}

/** The fields of a task that its events set (see `apply`). */
const TASK_EVENT_FIELDS = ["state", "assigned_agent", "attempt", "error", "finished_at", "not_before"];

function keepTold(fetched, current, fields) {
  for (const field of fields) if (current && field in current) fetched[field] = current[field];
  return fetched;
}

async function loadAgents() {
  const before = new Map(touched);
  const agents = await api.get("/agents");
  state.agents = new Map(agents.map((agent) => {
    const current = state.agents.get(agent.name);
    const key = `agent:${agent.name}`;
    if (current && current.status && agent.status && touched.get(key) !== before.get(key)) agent.status.state = current.status.state;
    return [agent.name, agent];
  }));
}

/**
 * Restarts from the past events up to `until` (the live stream counts those after it), at most
 * the first 10,000 agent state changes.
 */
async function loadRestarts(until) {
  const restarts = new Map();
  let since = 0;
  for (let n_pages = 0; n_pages < 10; n_pages += 1) {
    const events = await api.get(`/events/history${api.query({ type: "AgentStateChanged", since, limit: 1000 })}`);
    for (const event of events.filter((past) => past.seq <= until)) countRestart(restarts, event);
    if (events.length < 1000 || events[events.length - 1].seq >= until) break;
    since = events[events.length - 1].seq;
  }
  state.restarts = restarts;
}

function countRestart(restarts, event) {
  if (event.type === "AgentStateChanged" && event.to === "restarting") {
    restarts.set(event.agent, (restarts.get(event.agent) || 0) + 1);
  }
}

const loaders = {
  status: async () => {
    state.status = await api.get("/status");
  },
  plan: async () => {
    state.plan = await api.get("/plan");
  },
  tasks: loadTasks,
  agents: loadAgents,
  budgets: async () => {
    state.budgets = await api.get("/budgets");
  },
  schedules: async () => {
    state.schedules = await api.get("/schedules");
  },
  messages: async () => {
    state.messages = await api.get("/messages?limit=500");
  },
};

/** Loads `names` again, together, then redraws. */
export async function refetch(...names) {
  try {
    await Promise.all(names.map((name) => part(name, loaders[name])));
  } catch (error) {
    if (error.status === 401) showLogin(error.message);
  }
  redraw();
}

// Refetches asked for by events, gathered for a moment so that a burst of events costs one.
const pending = new Set();
const pendingTasks = new Set();
let refetchTimer = null;

function later(name) {
  pending.add(name);
  schedule();
}

function laterTask(id) {
  pendingTasks.add(id);
  schedule();
}

function schedule() {
  if (refetchTimer) return;
  refetchTimer = setTimeout(async () => {
    refetchTimer = null;
    const names = [...pending];
    const ids = [...pendingTasks];
    pending.clear();
    pendingTasks.clear();
    await Promise.all([
      refetch(...names),
      refetchTasks(ids),
    ]);
    redraw();
  }, 300);
}

/** Tasks some events were about: a few one by one, many (a batch was created) by pages. */
async function refetchTasks(ids) {
  if (ids.length === 0) return;
  try {
    const before = new Map(ids.map((id) => [id, touched.get(id)]));
    const take = (task) => {
      const current = state.tasks.get(task.id);
      if (before.has(task.id) && touched.get(task.id) !== before.get(task.id)) keepTold(task, current, TASK_EVENT_FIELDS);
      else if (!before.has(task.id) && current) return;
      state.tasks.set(task.id, task);
    };
    if (ids.length <= 20) {
      await Promise.all(ids.map(async (id) => take((await api.get(`/tasks/${id}`)).task)));
      return;
    }
    // Task ids grow: the pages from the smallest id to the largest hold them all.
    const last = Math.max(...ids);
    let after = Math.min(...ids) - 1;
    while (after < last) {
      const page = await api.get(`/tasks${api.query({ limit: 1000, after })}`);
      for (const task of page.tasks) take(task);
      if (page.next_after === null || page.next_after === undefined || page.tasks.length === 0) break;
      after = page.next_after;
    }
  } catch {
    // Gone or not ours to read: the events keep what they told.
  }
}

// ---------------------------------------------------------------------------------------------
// Events: each applied to the state as it comes.

function setTask(id, change) {
  touch(id);
  const task = state.tasks.get(id);
  if (task) Object.assign(task, change);
  else laterTask(id);
}

function apply(event) {
  state.events.push(event);
  if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
  switch (event.type) {
    case "TaskCreated":
      if (!state.tasks.has(event.task)) {
        state.tasks.set(event.task, {
          id: event.task, key: event.key, title: event.title, workstream: event.workstream,
          state: "pending", attempt: 0, assigned_agent: null, agent: null, created_at: event.at,
        });
      }
      // The pin, the priority and whether it is ready at once are not in the event.
      laterTask(event.task);
      break;
    case "TaskReady":
    case "TaskResumed":
      setTask(event.task, { state: "ready" });
      break;
    case "TaskRequeued":
      setTask(event.task, { state: "ready" });
      laterTask(event.task);
      break;
    case "TaskClaimed":
      setTask(event.task, { state: "running", assigned_agent: event.agent, attempt: event.attempt });
      break;
    case "TaskCompleted":
      setTask(event.task, { state: "succeeded", finished_at: event.at, error: null });
      // The agent's counts: refetched, since the snapshot may hold this event already.
      later("agents");
      break;
    case "TaskFailed":
      setTask(event.task, { error: event.reason });
      if (event.agent) later("agents");
      break;
    case "TaskRetrying":
      setTask(event.task, { state: "ready", not_before: event.not_before });
      break;
    case "TaskDeadLettered":
      setTask(event.task, { state: "dead", error: event.reason, finished_at: event.at });
      break;
    case "TaskCancelled":
      setTask(event.task, { state: "cancelled", error: event.reason, finished_at: event.at });
      break;
    case "TaskSuspended":
      setTask(event.task, { state: "suspended", error: event.reason });
      break;
    case "TaskLeaseExpired":
      laterTask(event.task);
      break;
    case "AgentStateChanged": {
      const agent = state.agents.get(event.agent);
      touch(`agent:${event.agent}`);
      if (agent && agent.status) agent.status.state = event.to;
      else later("agents");
      countRestart(state.restarts, event);
      break;
    }
    case "AgentSpawned":
    case "AgentTerminated":
    case "AgentAdded":
    case "AgentUpdated":
    case "AgentRemoved":
      later("agents");
      break;
    case "PhaseStarted":
      if (state.plan) state.plan.phase = event.phase;
      later("status");
      later("plan");
      break;
    case "PhaseCompleted":
    case "WorkstreamAdded":
    case "ConfigReloaded":
      later("plan");
      later("status");
      break;
    case "WorkstreamCompleted":
      state.workstreamsDone.set(event.workstream, event.succeeded);
      later("plan");
      break;
    case "RunStarted":
    case "RunResumed":
    case "RunInterrupted":
    case "RunCompleted":
      later("status");
      later("plan");
      break;
    case "UsageReported":
    case "BudgetThreshold":
    case "BudgetReset":
    case "BudgetLimitSet":
    case "TaskBudgetWait":
      later("budgets");
      break;
    case "ScheduleFired":
    case "ScheduleSkipped":
    case "SchedulePaused":
    case "ScheduleResumed":
      later("schedules");
      break;
    case "MessageSent":
    case "MessageDeadLettered":
    case "MessageRedelivered":
      later("messages");
      break;
    default:
      break;
  }
  redraw();
}

// ---------------------------------------------------------------------------------------------
// Pages: the current one is mounted once and asked to update when the state changes.

let current = null;
/** The role the current page was built for: a new role (a new token) builds it again. */
let mountedRole = null;
let redrawQueued = false;
let stopEvents = null;

/** Asks the current page to update, at most once a frame. */
export function redraw() {
  if (redrawQueued) return;
  redrawQueued = true;
  requestAnimationFrame(() => {
    redrawQueued = false;
    renderChrome();
    if (current && current.update) current.update();
  });
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "").split("?")[0];
  const [name, ...rest] = hash.split("/");
  const page = pages[name || "overview"] ? name || "overview" : "overview";
  return { page, argument: rest.length ? decodeURIComponent(rest.join("/")) : null };
}

function mount() {
  if (current && current.unmount) current.unmount();
  // A confirmation belongs to the page it was given on; a refusal stays until dismissed.
  document.getElementById("toasts").replaceChildren();
  const { page, argument } = route();
  for (const link of document.querySelectorAll("header nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  mountedRole = state.role;
  fill(main);
  current = pages[page]({ root: main, argument });
  document.title = `${current.title} — Baton`;
  if (state.loaded && current.update) current.update();
}

function renderChrome() {
  const name = document.getElementById("run-name");
  if (state.plan) name.textContent = `· ${state.plan.name}`;
}

function setConnection(connection, detail) {
  const element = document.getElementById("connection");
  element.dataset.state = connection;
  const words = { live: "live", reconnecting: "reconnecting…", stopped: "not following events", connecting: "connecting…" };
  element.textContent = words[connection] || connection;
  element.title = detail || "";
}

// ---------------------------------------------------------------------------------------------
// Log in: with `[auth]` the API answers 401 without a token; the token is asked for and kept in
// this tab's session storage.

function showLogin(message) {
  const dialog = document.getElementById("login");
  document.getElementById("login-error").textContent = message && api.token() ? message : "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("token-input").focus();
}

async function start() {
  if (stopEvents) stopEvents();
  stopEvents = null;
  setConnection("connecting");
  try {
    const claims = api.tokenClaims();
    state.role = claims ? claims.role : null;
    // Where to follow from comes with the status, which is read first: events between it and
    // the snapshot are applied twice, which changes nothing, rather than missed.
    state.status = await api.get("/status");
    const since = state.status.last_event_seq;
    await Promise.all([
      ...Object.entries(loaders).filter(([name]) => name !== "status").map(([name, load]) => part(name, load)),
      part("restarts", () => loadRestarts(since)),
      part("events", async () => {
        state.events = await api.get(`/events/history${api.query({ since: Math.max(0, since - 200), limit: 200 })}`);
      }),
    ]);
    state.loaded = true;
    document.getElementById("logout").hidden = !api.token();
    if (state.role !== mountedRole) mount();
    document.getElementById("who").textContent = claims ? `${claims.sub} (${claims.role})` : "";
    stopEvents = api.followEvents({ since, onEvent: apply, onState: setConnection });
    if (current && current.update) current.update();
    redraw();
  } catch (error) {
    if (error.status === 401) {
      setConnection("stopped", error.message);
      showLogin(error.message);
    } else {
      setConnection("stopped", error.message);
      notify(describe(error));
    }
  }
}

window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    const input = document.getElementById("token-input");
    api.setToken(input.value.trim());
    input.value = "";
    document.getElementById("login").close();
    start();
  });
  document.getElementById("login").addEventListener("cancel", (cancelled) => cancelled.preventDefault());
  // The skip link moves focus only: `#main` is not a page.
  document.querySelector(".skip").addEventListener("click", (clicked) => {
    clicked.preventDefault();
    document.getElementById("main").focus();
  });
  document.getElementById("logout").addEventListener("click", () => {
    api.setToken(null);
    location.reload();
  });
  api.onUnauthorized((error) => showLogin(error.message));
  window.addEventListener("hashchange", () => {
    mount();
    document.getElementById("main").focus();
  });
  mount();
  start();
});
