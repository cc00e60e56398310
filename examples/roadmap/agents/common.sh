# Shared by the example agents. An agent gets its task as JSON on stdin and in BATON_*
# variables; what it prints on stdout is the task's result (JSON here), what it prints on
# stderr goes to its log (.baton/logs/AGENT.log); its exit status says whether it succeeded.

# log MESSAGE: a line in the agent's log.
log() {
    printf '[%s] %s\n' "$BATON_AGENT" "$*" >&2
}

# work SECONDS: pretend to work.
work() {
    sleep "$1"
}

# done_with SUMMARY: print the task's result.
done_with() {
    printf '{"task":"%s","attempt":%s,"summary":"%s"}\n' "$BATON_TASK_KEY" "$BATON_TASK_ATTEMPT" "$1"
}

# The task, as Baton handed it over on stdin (kept for agents that want more than the key).
TASK_JSON=$(cat)
export TASK_JSON
