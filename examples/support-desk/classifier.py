#!/usr/bin/env python3
"""The classifier (capability `classify`): one task per ticket.

It decides the ticket's category with keyword rules (offline: a stand-in for a model call,
which takes DESK_THINK_SECONDS), reports the tokens such a call would use, sends the ticket and
its category to the responder (`message/send`) and completes. The responder's replies come
back to it as messages (`correlation_id` names the message answered); it acknowledges them.
"""

import os
import time

from protocol import Worker, tokens

THINK_SECONDS = float(os.environ.get("DESK_THINK_SECONDS", "0.5"))
PROMPT = "You triage support tickets. Answer with one category: billing, outage, account, feature, general."
EXAMPLES_TOKENS = 300  # the few-shot examples sent with every call

RULES = [
    ("outage", ["down", "error", "500", "crash", "outage", "timeout"]),
    ("billing", ["invoice", "charged", "refund", "payment", "billing"]),
    ("account", ["password", "login", "log in", "2fa", "locked"]),
    ("feature", ["feature", "would be nice", "could you add", "wish"]),
]


def categorize(ticket):
    text = f"{ticket['subject']} {ticket['body']}".lower()
    for category, words in RULES:
        if any(word in text for word in words):
            return category
    return "general"


def classify(task):
    ticket = task["input"]
    time.sleep(THINK_SECONDS)
    category = categorize(ticket)
    worker.report_usage(EXAMPLES_TOKENS + tokens(PROMPT) + tokens(ticket["subject"] + ticket["body"]), tokens(category) + 8,
                        task_id=task["id"])
    message_id = worker.send_message(
        "responder", f"ticket {ticket['id']} from {ticket['customer']}: {category}",
        data={"ticket": ticket, "category": category}, task_id=task["id"])
    worker.log(f"{ticket['id']} ({ticket['customer']}) is {category}; sent to the responder as {message_id}")
    return {"ticket": ticket["id"], "customer": ticket["customer"], "category": category, "message_id": message_id}


def on_reply(message):
    worker.log(f"{message['from']} answered {message.get('correlation_id')}: {message['body']}")
    return {}


worker = Worker(on_task=classify, on_message=on_reply)

if __name__ == "__main__":
    worker.run()
