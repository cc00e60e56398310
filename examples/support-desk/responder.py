#!/usr/bin/env python3
"""The responder (capability `respond`): answers the tickets the classifier sends it.

For each message it writes a reply to the customer in outbox/TICKET.txt, reports the tokens
drafting it would take, and replies to the sender (a message with `correlation_id` set), then
acknowledges. Delivery is at least once: a message it has already answered is only
acknowledged again.
"""

import os
import threading

from protocol import Worker, tokens

OUTBOX = os.environ.get("DESK_OUTBOX", "outbox")
PROMPT = "You write short, friendly replies to support tickets, in the customer's language."
STYLE_GUIDE_TOKENS = 400  # the house style guide sent with every call

OPENINGS = {
    "outage": "Sorry about the disruption. Our on-call engineers are looking into it now and we will "
              "write again as soon as it is fixed.",
    "billing": "Thanks for telling us. Our billing team will check the charge and, if it is wrong, "
               "refund it within five working days.",
    "account": "We have sent a reset link to the address on the account; it is valid for one hour.",
    "feature": "Thank you for the idea! We have passed it on to the product team.",
    "general": "Thanks for writing to us; a member of the team will get back to you shortly.",
}

answered = set()
answered_lock = threading.Lock()


def respond(message):
    with answered_lock:
        if message["message_id"] in answered:
            return {"duplicate": True}
        answered.add(message["message_id"])
    ticket, category = message["data"]["ticket"], message["data"]["category"]
    reply = (f"To: {ticket['customer']}\nSubject: Re: {ticket['subject']} [{ticket['id']}]\n\n"
             f"Hello,\n\n{OPENINGS[category]}\n\n-- The support desk (category: {category})\n")
    os.makedirs(OUTBOX, exist_ok=True)
    path = os.path.join(OUTBOX, f"{ticket['id']}.txt")
    with open(path + ".tmp", "w") as file:
        file.write(reply)
    os.replace(path + ".tmp", path)
    worker.report_usage(STYLE_GUIDE_TOKENS + tokens(PROMPT) + tokens(ticket["subject"] + ticket["body"]) + tokens(category),
                        tokens(reply), task_id=message.get("task_id"))
    worker.send_message(message["from"], f"replied to {ticket['id']} in {path}",
                        data={"ticket": ticket["id"], "reply": path}, correlation_id=message["message_id"])
    worker.log(f"answered {ticket['id']} ({category}) in {path}")
    return {"reply": path}


worker = Worker(on_message=respond)

if __name__ == "__main__":
    worker.run()
