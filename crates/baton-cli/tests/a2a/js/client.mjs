// Baton's A2A server, driven by the official A2A JavaScript SDK (@a2a-js/sdk 1.x) as a client.
//
// Usage: node client.mjs BASE_URL OPERATOR_TOKEN
//
// The plan has an agent `echo` (capability `echo`: its result is the task it was given) and an
// agent `sleeper` (it works until it is cancelled). Each check prints a line; the first failure
// throws, and the process exits non-zero.

import { ClientFactory, JsonRpcTransportFactory } from "@a2a-js/sdk/client";
import { Role, TaskState } from "@a2a-js/sdk";

const [base, token] = process.argv.slice(2);

function check(what, condition, detail = "") {
  if (!condition) throw new Error(`${what}: ${detail}`);
  console.log(`ok: ${what}`);
}

// Every request with the operator's token.
const withToken = (url, init = {}) => {
  const headers = new Headers(init.headers);
  headers.set("Authorization", `Bearer ${token}`);
  return fetch(url, { ...init, headers });
};

function message(text, data) {
  const parts = [{ content: { $case: "text", value: text } }];
  if (data !== undefined) parts.push({ content: { $case: "data", value: data } });
  return { messageId: crypto.randomUUID(), contextId: "", taskId: "", role: Role.ROLE_USER, parts, metadata: undefined, extensions: [], referenceTaskIds: [] };
}

function request(text, data, requires, configuration) {
  return {
    tenant: "",
    message: message(text, data),
    configuration,
    metadata: requires ? { requires } : undefined,
  };
}

const factory = new ClientFactory({ transports: [new JsonRpcTransportFactory({ fetchImpl: withToken })] });
const client = await factory.createFromUrl(base);

// SendMessage, blocking: the completed task, its result an artifact.
const sent = await client.sendMessage(request("Echo from JS", { n: 5 }, ["echo"]));
const task = sent.payload?.$case === "task" ? sent.payload.value : sent;
check("a blocking send answers the completed task", task.status?.state === TaskState.TASK_STATE_COMPLETED, JSON.stringify(sent));
const part = task.artifacts[0].parts[0].content;
check("the result is a data artifact", part.$case === "data" && part.value.title === "Echo from JS" && part.value.input.n === 5, JSON.stringify(part));

// GetTask.
const got = await client.getTask({ tenant: "", id: task.id, historyLength: undefined });
check("GetTask", got.id === task.id && got.status?.state === TaskState.TASK_STATE_COMPLETED, JSON.stringify(got));

// SendMessageStream: the task first, the completed status last.
const kinds = [];
let last;
for await (const event of client.sendMessageStream(request("Echo streamed from JS", { n: 6 }, ["echo"]))) {
  kinds.push(event.payload?.$case);
  last = event;
}
check("the stream begins with the task", kinds[0] === "task", JSON.stringify(kinds));
check("the stream has the artifact", kinds.includes("artifactUpdate"), JSON.stringify(kinds));
check(
  "the stream ends completed",
  last.payload.$case === "statusUpdate" && last.payload.value.status.state === TaskState.TASK_STATE_COMPLETED,
  JSON.stringify(last),
);

// The sleeper: returned at once, cancelled.
const sleeping = await client.sendMessage(request("Sleep from JS", undefined, ["sleep"], { acceptedOutputModes: [], historyLength: undefined, returnImmediately: true, taskPushNotificationConfig: undefined }));
const sleepingTask = sleeping.payload?.$case === "task" ? sleeping.payload.value : sleeping;
check("return immediately", sleepingTask.status?.state !== TaskState.TASK_STATE_COMPLETED, JSON.stringify(sleeping));
const canceled = await client.cancelTask({ tenant: "", id: sleepingTask.id, metadata: undefined });
check("CancelTask", canceled.status?.state === TaskState.TASK_STATE_CANCELED, JSON.stringify(canceled));

// An unknown task.
try {
  await client.getTask({ tenant: "", id: "999999", historyLength: undefined });
  check("an unknown task is refused", false);
} catch (error) {
  check("an unknown task is refused", /999999/.test(String(error?.message ?? error)), String(error));
}

// ListTasks.
const listed = await client.listTasks({ tenant: "", contextId: "", status: TaskState.TASK_STATE_COMPLETED, pageSize: 10, pageToken: "", historyLength: undefined, statusTimestampAfter: undefined, includeArtifacts: false });
check("ListTasks by state", listed.tasks.length === 2 && listed.totalSize === 2, JSON.stringify(listed));

console.log("all A2A JS client checks passed");
