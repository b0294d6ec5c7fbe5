"""Write the context-reading data sets: answer briefly from numbered context, or abstain.

Each example shows short passages in Adaptflow's retrieval prompt format (one relevant, the others
distractors) and a question whose answer is a short span of the relevant passage. The adapter
learns the behaviour (a short, exact answer taken from the context); the facts come from
retrieval at query time. None of it is about any example corpus (Veloria): it teaches reading.

- `train.jsonl`: the `both` example's behavior data (specs/lore-assistant.yaml).
- `components/resources/reader.jsonl`: the builtin reader (`knowledge.reader: builtin`), the mixed set
  (`build_mixed`, 130 rows): the short-passage rows (two to four passages, one relevant), retrieval-shaped
  chunks and whole invented documents as one passage (full dates with their year), a fifth of the rows
  declining: the question's passage missing, or present but silent on what is asked (NEAR_MISSES); the
  answer is then `ABSTAIN_PHRASE`, exactly as the prompt template asks. Shipped on 2026-12-01 (measured in
  docs/reading.md).
- `reader-first.jsonl`: the first builtin reader set (`build_reader`, 90 rows: the short-passage rows plus
  abstentions), kept to reproduce the earlier measurements (`bench/reader_loop.py --data`).

- `reader-chunks.jsonl`: a trial set for the reader (not shipped; `bench/reader_loop.py --data`), written
  from invented documents (worlds.py) cut into sentence-aligned chunks of about 100 embedder tokens and
  put into the prompt as retrieval does (two to four chunks, the relevant one anywhere); answers are spans
  copied from the chunk; a third of the rows decline: near misses (the subject's own chunks, silent on
  what is asked) and missed chunks (the answer in none of the chunks given). Measured in docs/reading.md.

Deterministic: `python specs/data/reading/generate.py`.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worlds import GENERIC, KINDS, Kind  # noqa: E402

from components.models.prompting import ABSTAIN_PHRASE, with_context  # noqa: E402

# The chunked trial set (`reader-chunks.jsonl`; tried as the builtin reader's data on 2026-12-01, docs/reading.md)
CHUNKED_ROWS = 96
ABSTAIN_SHARE = 0.35  # of its rows, declined ...
NEAR_MISS_SHARE = 0.6  # ... of which near misses; the rest miss the answer's chunk
CONTEXT_SIZES = (2, 2, 3, 4)  # chunks per prompt (top_k)
GENERIC_PER_DOCUMENT = 6  # look-alike sentences per document (worlds.GENERIC): ~160 words
CHUNK_WORDS = 75  # about 100 embedder tokens (MiniLM: ~1.3 per word)
# The mixed set (components/resources/reader.jsonl): 60 answerable short-passage rows, `chunks` answerable
# retrieval-shaped rows, `documents` answerable whole-document rows; declines: (near misses, missing passages)
# over the short passages and (near misses, missed chunks) over the invented documents: 26 of 130, a fifth.
READER_MIX = {"short_declines": (10, 4), "chunks": 28, "documents": 16, "chunk_declines": (8, 4)}

PASSAGES = [
    ("Copper Creek Mill", "The Copper Creek Mill opened in 1871 and ground wheat for three valleys. It closed in 1952 after a flood destroyed its wheel.",
     [("When did the Copper Creek Mill open?", "1871"), ("What destroyed the mill's wheel?", "a flood")]),
    ("Tessaly Lighthouse", "Tessaly Lighthouse stands 41 metres tall on Gull Point. Its lamp was converted to solar power in 2009.",
     [("How tall is Tessaly Lighthouse?", "41 metres"), ("Where does Tessaly Lighthouse stand?", "Gull Point")]),
    ("The Brenner Prize", "The Brenner Prize is awarded every two years for research on soil health. The 2022 prize went to agronomist Lina Osei.",
     [("Who won the 2022 Brenner Prize?", "Lina Osei"), ("How often is the Brenner Prize awarded?", "every two years")]),
    ("Harlow Bridge", "Harlow Bridge crosses the Tamsin River with five stone arches. It was designed by engineer Marcus Webb.",
     [("Who designed Harlow Bridge?", "Marcus Webb"), ("How many arches does Harlow Bridge have?", "five")]),
    ("Orchid House", "The Orchid House at Kelmscott Gardens keeps 2,300 plants at a steady 24 degrees. Entry is free on Mondays.",
     [("On which day is entry to the Orchid House free?", "Mondays"), ("How many plants does the Orchid House keep?", "2,300")]),
    ("Pellin Railway", "The Pellin Railway runs 62 kilometres between Ardle and Fosk. Its steam engine is called the Grey Heron.",
     [("What is the Pellin Railway's steam engine called?", "the Grey Heron"), ("How long is the Pellin Railway?", "62 kilometres")]),
    ("Saltmarsh Choir", "The Saltmarsh Choir was founded by teacher Ruth Adeyemi in 1994. It sings every Sunday at the harbour chapel.",
     [("Who founded the Saltmarsh Choir?", "Ruth Adeyemi"), ("Where does the Saltmarsh Choir sing?", "the harbour chapel")]),
    ("Mount Arvel", "Mount Arvel rises to 2,870 metres. The first recorded ascent was made by a shepherd named Ivo Brandt in 1788.",
     [("How high is Mount Arvel?", "2,870 metres"), ("Who made the first recorded ascent of Mount Arvel?", "Ivo Brandt")]),
    ("Kestrel Lake", "Kestrel Lake freezes most winters, and skating is allowed once the ice is 12 centimetres thick. The lake is fed by the Dunmore stream.",
     [("Which stream feeds Kestrel Lake?", "the Dunmore stream"), ("How thick must the ice be for skating?", "12 centimetres")]),
    ("Quill & Ink", "Quill & Ink is a bookshop on Wren Street that sells only second-hand poetry. It is run by two sisters, June and Ada Park.",
     [("What does Quill & Ink sell?", "second-hand poetry"), ("On which street is Quill & Ink?", "Wren Street")]),
    ("The Varn Festival", "The Varn Festival celebrates the apple harvest each October. Its largest pie weighed 310 kilograms.",
     [("In which month is the Varn Festival held?", "October"), ("What does the Varn Festival celebrate?", "the apple harvest")]),
    ("Dr. Helen Marsh", "Dr. Helen Marsh mapped the caves of the Orren Plateau over eleven years. Her survey counted 146 separate chambers.",
     [("How many chambers did Helen Marsh count?", "146"), ("What did Dr. Helen Marsh map?", "the caves of the Orren Plateau")]),
    ("Bluewater Ferry", "The Bluewater Ferry leaves Port Ennis at 7:15 every morning. The crossing to Holm Island takes forty minutes.",
     [("When does the Bluewater Ferry leave Port Ennis?", "7:15"), ("How long does the crossing to Holm Island take?", "forty minutes")]),
    ("Granite Hall", "Granite Hall houses the city archive. Its reading room holds 90 seats and opens at nine.",
     [("What does Granite Hall house?", "the city archive"), ("How many seats does the reading room hold?", "90")]),
    ("The Lumen Clock", "The Lumen Clock in Corvo Square chimes every quarter hour. It was built by the Fenwick brothers in 1903.",
     [("Who built the Lumen Clock?", "the Fenwick brothers"), ("In which square is the Lumen Clock?", "Corvo Square")]),
    ("Alder Forest", "Alder Forest covers 8,400 hectares. Red deer and pine martens live there, and logging has been banned since 1979.",
     [("How large is Alder Forest?", "8,400 hectares"), ("Since when has logging been banned in Alder Forest?", "1979")]),
    ("Nadia Ruiz", "Nadia Ruiz holds the regional record for the 800 metres. She trains at the Eastfield track with coach Tom Ibarra.",
     [("Who coaches Nadia Ruiz?", "Tom Ibarra"), ("Where does Nadia Ruiz train?", "the Eastfield track")]),
    ("Marlow Observatory", "Marlow Observatory sits on Crane Hill. Its main telescope has a mirror 1.2 metres across.",
     [("Where does Marlow Observatory sit?", "Crane Hill"), ("How wide is the main telescope's mirror?", "1.2 metres")]),
    ("Sable Bakery", "Sable Bakery bakes rye loaves before dawn and sells out by ten. Its owner, Piet Vos, trained in Antwerp.",
     [("Where did Piet Vos train?", "Antwerp"), ("What does Sable Bakery bake before dawn?", "rye loaves")]),
    ("The Osk Canal", "The Osk Canal has fourteen locks and links the town of Brill to the sea. Barges carried coal on it until 1961.",
     [("How many locks does the Osk Canal have?", "fourteen"), ("What did barges carry on the Osk Canal?", "coal")]),
    ("Fernhill School", "Fernhill School teaches 420 pupils. Its headteacher is Grace Mbeki, and its motto is 'Learn to wonder'.",
     [("Who is the headteacher of Fernhill School?", "Grace Mbeki"), ("What is Fernhill School's motto?", "Learn to wonder")]),
    ("Windrow Farm", "Windrow Farm keeps 300 sheep and grows barley. It has belonged to the Calder family for six generations.",
     [("What does Windrow Farm grow?", "barley"), ("Which family owns Windrow Farm?", "the Calder family")]),
    ("Ivory Tower Cafe", "The Ivory Tower Cafe is on the top floor of the university library. Its best seller is cardamom tea.",
     [("What is the Ivory Tower Cafe's best seller?", "cardamom tea"), ("Where is the Ivory Tower Cafe?", "the top floor of the university library")]),
    ("Storm of 1987", "The storm of 1987 brought winds of 160 kilometres per hour to the coast. It felled the old oak at Bexley Green.",
     [("How fast were the winds in the storm of 1987?", "160 kilometres per hour"), ("Which tree did the storm fell?", "the old oak at Bexley Green")]),
    ("Rook Museum", "The Rook Museum displays toys from the last two centuries. Its oldest exhibit is a wooden horse from 1812.",
     [("What is the Rook Museum's oldest exhibit?", "a wooden horse"), ("What does the Rook Museum display?", "toys")]),
    ("Cinder Path", "The Cinder Path is a walking trail of 9 kilometres along the old mine railway. It starts at Hobb's Cross.",
     [("Where does the Cinder Path start?", "Hobb's Cross"), ("How long is the Cinder Path?", "9 kilometres")]),
    ("Elm Street Clinic", "The Elm Street Clinic opens at eight and sees about 70 patients a day. Appointments can be booked by phone.",
     [("How many patients does the clinic see a day?", "about 70"), ("How can appointments be booked?", "by phone")]),
    ("The Duran Cup", "The Duran Cup is a rowing race over 3 miles on the Vell River. The Blackwater club has won it nine times.",
     [("Which club has won the Duran Cup nine times?", "the Blackwater club"), ("On which river is the Duran Cup rowed?", "the Vell River")]),
    ("Pinecrest Dam", "Pinecrest Dam was finished in 1968. It supplies water to 200,000 homes and generates 40 megawatts.",
     [("When was Pinecrest Dam finished?", "1968"), ("How much power does Pinecrest Dam generate?", "40 megawatts")]),
    ("Amber Radio", "Amber Radio broadcasts on 98.4 FM. Its morning show is hosted by Leo Grant.",
     [("Who hosts Amber Radio's morning show?", "Leo Grant"), ("On which frequency does Amber Radio broadcast?", "98.4 FM")]),
]


# Questions each passage above does not answer, though it is about the same subject (index -> question).
NEAR_MISSES = {
    0: "Who owned the Copper Creek Mill?",
    1: "Who designed Tessaly Lighthouse?",
    2: "How much money comes with the Brenner Prize?",
    3: "When was Harlow Bridge built?",
    4: "How much does entry to the Orchid House cost on Fridays?",
    5: "When did the Pellin Railway open?",
    6: "How many singers are in the Saltmarsh Choir?",
    7: "Which mountain range is Mount Arvel part of?",
    8: "How deep is Kestrel Lake?",
    9: "When was Quill & Ink founded?",
    10: "Who organises the Varn Festival?",
    11: "Which university employed Dr. Helen Marsh?",
    12: "How much does a ticket on the Bluewater Ferry cost?",
    13: "Who designed Granite Hall?",
    14: "How tall is the Lumen Clock?",
    15: "Which river flows through Alder Forest?",
    16: "What is Nadia Ruiz's record time?",
    17: "Who founded Marlow Observatory?",
    18: "What time does Sable Bakery open?",
    19: "How long is the Osk Canal?",
    20: "When was Fernhill School founded?",
    21: "How large is Windrow Farm?",
    22: "What time does the Ivory Tower Cafe close?",
    23: "How many people died in the storm of 1987?",
    24: "Who founded the Rook Museum?",
    25: "When did the old mine railway close?",
    26: "Who runs the Elm Street Clinic?",
    27: "When was the first Duran Cup rowed?",
    28: "Which river does Pinecrest Dam hold back?",
    29: "Who founded Amber Radio?",
}


def _example(question: str, chunks: list[tuple[str, str]], answer: str) -> dict:
    return {"messages": with_context([{"role": "user", "content": question}], chunks)
            + [{"role": "assistant", "content": answer}]}


def build_short(seed: int = 0, near_misses: int = 20, missing: int = 10) -> list[dict]:
    """Rows over the short PASSAGES: 60 answerable (2-4 passages), `near_misses` near misses and `missing` rows
    whose passage is missing (the builtin reader's set: 20 and 10)."""
    rng = random.Random(seed)
    others = lambda i, n: [(t, x) for t, x, _ in rng.sample([p for j, p in enumerate(PASSAGES) if j != i], n)]  # noqa: E731
    rows = []
    for i, (title, text, qas) in enumerate(PASSAGES):
        for question, answer in qas:
            chunks = [(title, text)] + others(i, rng.choice((1, 2, 3)))
            rng.shuffle(chunks)
            rows.append(_example(question, chunks, answer))
    for i in rng.sample(sorted(NEAR_MISSES), near_misses):
        chunks = [PASSAGES[i][:2]] + others(i, rng.choice((1, 2)))
        rng.shuffle(chunks)
        rows.append(_example(NEAR_MISSES[i], chunks, ABSTAIN_PHRASE))
    for i in rng.sample(range(len(PASSAGES)), missing):
        rows.append(_example(rng.choice(PASSAGES[i][2])[0], others(i, rng.choice((2, 3))), ABSTAIN_PHRASE))
    rng.shuffle(rows)
    return rows


def build_reader(seed: int = 0) -> list[dict]:
    """The builtin reader's rows: 60 answerable (2-4 passages), 20 near misses, 10 missing passages."""
    return build_short(seed)


def build_mixed(seed: int = 0) -> list[dict]:
    """The builtin reader set (`components/resources/reader.jsonl`, READER_MIX; docs/reading.md): the
    short-passage rows, plus contexts shaped like retrieval's (~100-token chunks of invented documents,
    two to four per prompt) and whole invented documents as one passage (what the gold-context ceiling
    reads), each with a copied answer; a fifth of all rows decline."""
    rng = random.Random(seed)
    docs = documents(seed)
    rows = build_short(seed, *READER_MIX["short_declines"])
    for _ in range(READER_MIX["chunks"]):
        doc, size = rng.choice(docs), rng.choice(CONTEXT_SIZES)
        question, answer, sentence = rng.choice(doc.answered)
        rows.append(_example(question, _context(rng, docs, doc, lambda c, s=sentence: s in c, size), answer))
    for n in range(READER_MIX["documents"]):
        doc = docs[(n * 7) % len(docs)]
        question, answer, _ = rng.choice(doc.answered)
        rows.append(_example(question, _whole(rng, docs, doc), answer))
    near, missed = READER_MIX["chunk_declines"]
    for n in range(near):
        doc = rng.choice(docs)
        chunks = _whole(rng, docs, doc) if n % 2 else _context(rng, docs, doc, lambda c: True, rng.choice(CONTEXT_SIZES))
        rows.append(_example(rng.choice(doc.unanswered), chunks, ABSTAIN_PHRASE))
    while missed:
        doc = rng.choice(docs)
        question, _, sentence = rng.choice(doc.answered)
        if all(sentence in c for c in doc.chunks):
            continue
        chunks = _context(rng, docs, doc, lambda c, s=sentence: s not in c, rng.choice(CONTEXT_SIZES))
        rows.append(_example(question, chunks, ABSTAIN_PHRASE))
        missed -= 1
    rng.shuffle(rows)
    return rows


def _whole(rng: random.Random, docs: list[Document], doc: Document) -> list[tuple[str, str]]:
    """The whole document as one passage (its chunks joined, overlaps removed), with one chunk of another."""
    text = doc.chunks[0]
    for chunk in doc.chunks[1:]:  # a chunk starts with the previous one's last sentence (the overlap) or not
        shared = next((k for k in range(len(chunk), 0, -1) if text.endswith(chunk[:k])), 0)
        text += chunk[shared:] if shared else " " + chunk
    other = rng.choice([d for d in docs if d is not doc])
    picked = [(doc.title, text), (other.title, rng.choice(other.chunks))]
    rng.shuffle(picked)
    return picked


def _capital(name: str) -> str:
    return name[0].upper() + name[1:]


@dataclass
class Document:
    title: str
    chunks: list[str]  # sentence-aligned, about 100 embedder tokens each, consecutive ones overlapping
    answered: list[tuple[str, str, str]]  # (question, answer, the sentence that states it)
    unanswered: list[str]  # questions about this subject that the document does not answer


def _chunks(sentences: list[str], words: int = CHUNK_WORDS) -> list[str]:
    """Sentences packed into chunks of at most `words` words, each starting with the previous chunk's last
    sentence (the index's chunker packs whole sentences up to 100 tokens with a 20-token overlap)."""
    out, current = [], []
    for sentence in sentences:
        if current and len(" ".join(current + [sentence]).split()) > words:
            out.append(" ".join(current))
            current = [current[-1]] if len(current[-1].split()) < words // 4 else []
        current.append(sentence)
    return out + [" ".join(current)] if current else out


def _document(kind: Kind, name: str, rng: random.Random) -> Document:
    chosen = sorted(rng.sample(range(len(kind.facts)), rng.randint(len(kind.facts) - 3, len(kind.facts) - 1)))
    sentences, answered = [], []
    for i in chosen:
        fact = kind.facts[i]
        values = {slot: make(rng) for slot, make in fact.slots.items()}
        sentence = fact.sentence.format(name=name, Name=_capital(name), **values)
        sentences.append(sentence)
        answered += [(_capital(q.format(name=name)), values[slot], sentence) for q, slot in fact.questions]
    fillers = list(kind.filler) + [f.sentence.format(**{s: make(rng) for s, make in f.slots.items()})
                                   for f in rng.sample(GENERIC, GENERIC_PER_DOCUMENT)]
    for filler in fillers:
        sentences.insert(rng.randint(1, len(sentences)), filler)
    unanswered = [q.format(name=name) for i, f in enumerate(kind.facts) if i not in chosen for q, _ in f.questions]
    unanswered += [q.format(name=name) for q in kind.absent]
    return Document(_capital(name), _chunks(sentences), answered, [_capital(q) for q in unanswered])


def documents(seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    return [_document(kind, name, rng) for kind in KINDS.values() for name in kind.names]


def _context(rng: random.Random, docs: list[Document], doc: Document, keep, size: int) -> list[tuple[str, str]]:
    """`size` chunks as retrieval returns them: those of `doc` that `keep` admits (first one always, then up to
    two more), the rest from other documents; shuffled, so the relevant one lands anywhere."""
    own = [c for c in doc.chunks if keep(c)]
    first = rng.choice(own)
    rest = [c for c in own if c != first]
    picked = [(doc.title, first)] + [(doc.title, c) for c in rng.sample(rest, min(len(rest), rng.randint(0, 2), size - 1))]
    others = [(d.title, c) for d in docs if d is not doc for c in d.chunks]
    picked += rng.sample(others, size - len(picked))
    rng.shuffle(picked)
    return picked


def build_chunked(seed: int = 0, rows: int = CHUNKED_ROWS) -> list[dict]:
    """A trial reader set over invented documents (specs/data/reading/worlds.py), shaped like the
    runtime prompt: two to four ~100-token chunks, the relevant one anywhere, answers copied from it.
    ABSTAIN_SHARE of them decline: a near miss (the subject's own chunks, silent on what is asked) or a
    missed chunk (the question's answer is in none of the chunks given)."""
    rng = random.Random(seed)
    docs = documents(seed)
    out = []
    for n in range(rows):
        doc, size = rng.choice(docs), rng.choice(CONTEXT_SIZES)
        share = n / rows
        if share < ABSTAIN_SHARE * NEAR_MISS_SHARE:
            question, answer = rng.choice(doc.unanswered), ABSTAIN_PHRASE
            chunks = _context(rng, docs, doc, lambda c: True, size)
        elif share < ABSTAIN_SHARE:
            question, _, sentence = rng.choice(doc.answered)
            if all(sentence in c for c in doc.chunks):
                continue
            chunks = _context(rng, docs, doc, lambda c, s=sentence: s not in c, size)
            answer = ABSTAIN_PHRASE
        else:
            question, answer, sentence = rng.choice(doc.answered)
            chunks = _context(rng, docs, doc, lambda c, s=sentence: s in c, size)
        out.append(_example(question, chunks, answer))
    rng.shuffle(out)
    return out


def build(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i, (title, text, qas) in enumerate(PASSAGES):
        for question, answer in qas:
            assert answer.lower() in text.lower(), (title, answer)
            others = rng.sample([p for j, p in enumerate(PASSAGES) if j != i], 2)
            chunks = [(title, text)] + [(t, x) for t, x, _ in others]
            rng.shuffle(chunks)
            messages = with_context([{"role": "user", "content": question}], chunks)
            rows.append({"messages": messages + [{"role": "assistant", "content": answer}]})
    rng.shuffle(rows)
    return rows


if __name__ == "__main__":
    here = Path(__file__).resolve()
    for out, rows in ((here.with_name("train.jsonl"), build()),
                      (here.parents[3] / "components" / "resources" / "reader.jsonl", build_mixed()),
                      (here.with_name("reader-first.jsonl"), build_reader()),
                      (here.with_name("reader-chunks.jsonl"), build_chunked())):
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {out} ({len(rows)} rows)")
