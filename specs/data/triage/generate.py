"""Write the support-ticket triage data set: train.jsonl, eval.jsonl (chat rows) and qa.jsonl.

Each row: a short system prompt naming the labels, a customer ticket (1-3 sentences) as the
user message, and exactly one label word as the assistant answer. qa.jsonl holds the eval rows in
the evaluation format ({"messages": [system, user], "answer": label}: the prompt without the
answer). Seeded and deterministic:
`python specs/data/triage/generate.py` rewrites the committed files byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 7
N_TRAIN, N_EVAL = 240, 60
LABELS = ["billing", "bug", "account", "shipping", "feature_request", "cancellation"]
SYSTEM = (
    "Classify the support ticket. Reply with one label: billing, bug, account, shipping, "
    "feature_request or cancellation."
)

SLOTS = {
    "amount": ["$12.99", "$49", "$5", "$120", "29 euros", "$8.50", "$300", "$19"],
    "month": ["March", "April", "last month", "this month", "January", "October"],
    "order": ["#48213", "#10992", "#77310", "#5521", "#90045", "#31337"],
    "item": ["headphones", "a desk lamp", "the blender", "two mugs", "a phone case", "my new chair", "the printer ink"],
    "feature": ["the dashboard", "the mobile app", "the export page", "search", "the calendar view", "the editor"],
    "device": ["my iPhone", "Android", "Windows 11", "my Mac", "Chrome", "Firefox"],
    "plan": ["Pro plan", "premium subscription", "family plan", "monthly membership", "annual plan"],
    "days": ["two weeks", "ten days", "a week", "five days", "over a month"],
}

CORES = {
    "billing": [
        "I was charged {amount} twice for the same {month} invoice.",
        "My card was billed {amount} but I never received a receipt.",
        "The invoice for {month} shows {amount} more than my usual price.",
        "Please refund the {amount} charge from {month}, it was a mistake.",
        "Why did my payment of {amount} fail when my card is valid?",
        "I need a copy of my invoice for {month} for my accountant.",
        "You charged me {amount} after the free trial, I expected a discount.",
        "There is an unknown charge of {amount} on my bank statement.",
        "Can I change the credit card used for my payments?",
        "The tax on my {month} bill looks wrong.",
    ],
    "bug": [
        "{feature} crashes every time I open it on {device}.",
        "I get an error 500 when I click save in {feature}.",
        "{feature} shows a blank white screen on {device}.",
        "The app freezes after the latest update on {device}.",
        "Buttons in {feature} do nothing when I click them.",
        "Since yesterday {feature} loads forever and never finishes.",
        "The numbers in {feature} are wrong after I refresh the page.",
        "Uploading a file in {feature} fails with a strange error.",
        "Dark mode breaks the text in {feature} on {device}.",
        "Notifications stopped working on {device} after the update.",
    ],
    "account": [
        "I forgot my password and the reset email never arrives.",
        "I can't log in, it says my username does not exist.",
        "How do I change the email address on my profile?",
        "My account got locked after too many login attempts.",
        "The two-factor code on {device} is always rejected.",
        "I want to update the phone number linked to my login.",
        "Someone else may have signed in to my account, please help me secure it.",
        "I need to merge my two user profiles into one login.",
        "The verification link for my new email has expired.",
        "How can I add a teammate as an admin on my profile?",
    ],
    "shipping": [
        "My order {order} still has not arrived after {days}.",
        "The tracking number for order {order} doesn't work.",
        "{item} arrived damaged, the box was crushed.",
        "The courier left {item} at the wrong address.",
        "Can you ship order {order} to my office instead?",
        "Order {order} says delivered but there is no package at my door.",
        "How long does delivery take to Canada?",
        "I received {item} but the rest of order {order} is missing.",
        "The parcel with {item} has been stuck in transit for {days}.",
        "Can I get express delivery for order {order}?",
    ],
    "feature_request": [
        "It would be great if {feature} had a dark mode.",
        "Please add an option to export {feature} to CSV.",
        "Could you support keyboard shortcuts in {feature}?",
        "I would love a way to share {feature} with my team.",
        "Any plans to add a calendar integration to {feature}?",
        "Suggestion: let us pin favourite items in {feature}.",
        "Please make {feature} available offline.",
        "It would help a lot if {feature} could filter by date.",
        "Can you add support for more languages in {feature}?",
        "I wish {feature} had a widget for {device}.",
    ],
    "cancellation": [
        "I want to cancel my {plan} effective today.",
        "Please stop my {plan} from renewing next month.",
        "How do I end my {plan}? I don't use it anymore.",
        "Cancel my {plan} please, it is too expensive for me.",
        "I'd like to terminate my {plan} before the next cycle.",
        "Please unsubscribe me from the {plan} and confirm by email.",
        "I am moving abroad and need to cancel my {plan}.",
        "Don't renew my {plan}, I'm switching to another service.",
        "I want to cancel my {plan} and close everything down.",
        "Turn off auto-renewal and end my {plan}.",
    ],
}

OPENERS = ["", "Hi,", "Hello,", "Hey there.", "Good morning,", "Hi team,", "Hello support,", "Urgent:"]
CLOSERS = ["", "Thanks.", "Please help.", "Thank you!", "Any update?", "Regards, Sam", "Cheers.", "This is frustrating."]


def ticket(rng: random.Random, label: str) -> str:
    core = rng.choice(CORES[label]).format(**{k: rng.choice(v) for k, v in SLOTS.items()})
    core = core[0].upper() + core[1:]
    return " ".join(part for part in (rng.choice(OPENERS), core, rng.choice(CLOSERS)) if part)


def rows(n: int, rng: random.Random, seen: set[str]) -> list[dict]:
    out = []
    while len(out) < n:
        label = LABELS[len(out) % len(LABELS)]
        text = ticket(rng, label)
        if text in seen:
            continue
        seen.add(text)
        out.append({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label},
        ]})
    rng.shuffle(out)
    return out


def main(folder: Path = Path(__file__).resolve().parent) -> None:
    rng, seen = random.Random(SEED), set()
    train, evaluation = rows(N_TRAIN, rng, seen), rows(N_EVAL, rng, seen)
    qa = [{"messages": r["messages"][:-1], "answer": r["messages"][-1]["content"]} for r in evaluation]
    for name, data in (("train.jsonl", train), ("eval.jsonl", evaluation), ("qa.jsonl", qa)):
        lines = [json.dumps(r, ensure_ascii=False) for r in data]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {folder / name}: {len(data)} rows")


if __name__ == "__main__":
    main()
