#!/usr/bin/env python3
"""The inbox poller (capability `poll`): the `inbox-poll` schedule's task, every 2 seconds.

Each poll reads the ticket files in inbox/ (JSON: id, customer, subject, body) and, for at
most BATCH tickets not picked up yet, creates a `classify` task keyed `classify-ID` that holds
the resource `customer:CUSTOMER`, so that two tickets of one customer are never classified at
once. The inbox is left as it is: the run's tasks are the cursor. A task key is unique within
a run, so a ticket picked up before a restart is refused ("already exists") and skipped, and
`baton run --fresh` works the inbox again. The poll task's result lists what it picked up.
"""

import json
import os

from protocol import RpcError, Worker

INBOX = os.environ.get("DESK_INBOX", "inbox")
BATCH = int(os.environ.get("DESK_BATCH", "3"))

queued = set()  # tickets this process has handed on


def read_tickets():
    tickets = []
    for name in sorted(os.listdir(INBOX)):
        if name.endswith(".json"):
            with open(os.path.join(INBOX, name)) as file:
                ticket = json.load(file)
            ticket.setdefault("id", name[:-5])
            tickets.append(ticket)
    return tickets


def poll(task):
    picked = []
    for ticket in read_tickets():
        if len(picked) == BATCH:
            break
        if ticket["id"] in queued:
            continue
        try:
            worker.create_tasks([{
                "key": f"classify-{ticket['id']}",
                "title": f"Classify ticket {ticket['id']}: {ticket['subject']}",
                "requires": ["classify"],
                "resources": [f"customer:{ticket['customer']}"],
                "input": ticket,
            }], parent=task["id"])
            picked.append(ticket["id"])
        except RpcError as error:
            if "already exists" not in str(error):
                raise
            worker.log(f"{ticket['id']} was picked up before (this run): skipped")
        queued.add(ticket["id"])
    waiting = sum(1 for ticket in read_tickets() if ticket["id"] not in queued)
    if picked:
        worker.log(f"picked up {', '.join(picked)}; {waiting} left in the inbox")
    return {"picked_up": picked, "left": waiting}


worker = Worker(on_task=poll)

if __name__ == "__main__":
    worker.run()
