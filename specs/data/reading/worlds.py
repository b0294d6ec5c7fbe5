"""Invented subjects for the builtin reader's documents: kinds of things, the facts a document about
one states, and questions about it that its document never answers.

Nothing here is about any example corpus: generic companies, towns, museums, festivals, clubs,
schools, transport lines, nature reserves, buildings and people, with made-up names and values.
A `Fact` is one sentence with slots; its questions are answered by one slot, copied from the
sentence. `absent` questions ask about the subject something no document of that kind states (the
near misses a reader must decline).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

FIRST = ["Ada", "Bram", "Carys", "Dov", "Elin", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaia", "Lorcan",
         "Mira", "Nils", "Orla", "Pavel", "Quinn", "Rhea", "Soren", "Talia", "Umar", "Vera", "Wim", "Xenia",
         "Yusuf", "Zofia", "Amara", "Bastian", "Celine", "Dario", "Esme", "Felix", "Gwen", "Hamid", "Ilse",
         "Joaquin", "Kenji", "Leona", "Matteo", "Nadia", "Oskar", "Priya", "Rafael", "Selma", "Tobin", "Ulla"]
LAST = ["Ashdown", "Brekke", "Castell", "Dunmore", "Everly", "Falk", "Gorse", "Halloran", "Ibsen", "Jarvik",
        "Kettering", "Lindqvist", "Marchetti", "Norrell", "Okafor", "Penhallow", "Quarry", "Rasmussen",
        "Strand", "Thorne", "Underhill", "Valdez", "Whitlock", "Yardley", "Zeller", "Abernethy", "Blom",
        "Corrigan", "Dahl", "Eastwood", "Fenn", "Greaves", "Holt", "Iversen", "Kowalski", "Lark", "Moreau",
        "Nakamura", "Oyelaran", "Pryce", "Rourke", "Sandoval", "Tamsin", "Vickers", "Wynne"]
TOWNS = ["Ardle", "Brisk", "Carrow", "Dunhallow", "Elmsby", "Fosk", "Galloway Cross", "Harrowgate", "Ilvern",
         "Jessop", "Kilbrook", "Larchmont", "Merriton", "Nether Fold", "Oakhaven", "Pellbury", "Quarrington",
         "Rushmere", "Saltby", "Thornwick", "Upfield", "Varlow", "Westerby", "Yarrowdale", "Amberley",
         "Bexford", "Coldwater", "Drennan", "Eastholm", "Fairmead", "Greyhithe", "Holloway Bay"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
COINED = ["Brisa", "Calder", "Dunlin", "Ember", "Fable", "Garnet", "Hearth", "Indigo", "Juniper", "Kestrel",
          "Lantern", "Meridian", "Northwind", "Orbit", "Pennant", "Quartz", "Rowan", "Sparrow", "Tidewater",
          "Umber", "Vantage", "Willow", "Zephyr", "Anvil", "Beacon", "Cobalt", "Drift", "Falcon", "Harbour",
          "Ironwood", "Larkspur", "Marigold", "Nimbus", "Osprey", "Pioneer", "Saffron", "Thistle", "Wayfarer"]


def person(r: random.Random) -> str:
    return f"{r.choice(FIRST)} {r.choice(LAST)}"


def year(lo: int, hi: int) -> Callable[[random.Random], str]:
    return lambda r: str(r.randint(lo, hi))


def count(lo: int, hi: int, noun: str, step: int = 1) -> Callable[[random.Random], str]:
    return lambda r: f"{r.randrange(lo, hi, step):,} {noun}"


def decimal(lo: float, hi: float, unit: str) -> Callable[[random.Random], str]:
    return lambda r: f"{r.uniform(lo, hi):.1f} {unit}"


def pick(values: list[str]) -> Callable[[random.Random], str]:
    return lambda r: r.choice(values)


def coined(suffix: str = "", prefix: str = "") -> Callable[[random.Random], str]:
    return lambda r: f"{prefix}{r.choice(COINED)}{suffix}"


def date(r: random.Random) -> str:
    return f"{r.randint(1, 28)} {r.choice(MONTHS)}"


def full_date(lo: int, hi: int) -> Callable[[random.Random], str]:
    """A day with its year ("14 March 1871"): the answer is the whole date, not the day alone."""
    return lambda r: f"{r.randint(1, 28)} {r.choice(MONTHS)} {r.randint(lo, hi)}"


@dataclass(frozen=True)
class Fact:
    sentence: str  # with {name} and slots
    slots: dict[str, Callable[[random.Random], str]]
    questions: tuple[tuple[str, str], ...]  # (question template, slot that answers it)


@dataclass(frozen=True)
class Kind:
    names: tuple[str, ...]  # the subjects' names
    facts: tuple[Fact, ...]
    filler: tuple[str, ...]  # sentences with no asked fact, for realistic prose
    absent: tuple[str, ...]  # questions about the subject that no document of this kind answers


def F(sentence: str, slots: dict, *questions: tuple[str, str]) -> Fact:  # noqa: N802
    return Fact(sentence, slots, tuple(questions))


KINDS = {
    "company": Kind(
        ("Halden Works", "Brightwater Foods", "Corvin Instruments", "Ostler Logistics", "Marrowfield Textiles",
         "Pennock Glass", "Silverline Optics", "Tamber Robotics", "Greyfield Paper", "Auren Pharmaceuticals"),
        (F("{name} was founded in {year} by the engineer {founder}.", {"year": year(1850, 2012), "founder": person},
           ("When was {name} founded?", "year"), ("Who founded {name}?", "founder")),
         F("Its headquarters are in {town}, in a converted {building}.",
           {"town": pick(TOWNS), "building": pick(["warehouse", "textile mill", "railway depot", "brewery"])},
           ("Where are the headquarters of {name}?", "town"), ("In which town is {name} based?", "town")),
         F("{name} was registered as a company on {registered}.", {"registered": full_date(1850, 2012)},
           ("On what date was {name} registered as a company?", "registered")),
         F("The current chief executive is {ceo}, who took over in {year}.", {"ceo": person, "year": year(2005, 2024)},
           ("Who is the chief executive of {name}?", "ceo"), ("Who runs {name} today?", "ceo")),
         F("The company employs {staff} across {sites} sites.", {"staff": count(120, 9000, "people"),
                                                                  "sites": pick(["three", "five", "seven", "eleven"])},
           ("How many people does {name} employ?", "staff")),
         F("Its best-known product is the {product}, first sold in {year}.",
           {"product": coined(" 300"), "year": year(1950, 2020)},
           ("What is the best-known product of {name}?", "product")),
         F("In {year} the company reported revenue of {revenue}.", {"year": year(2015, 2024),
                                                                    "revenue": decimal(12, 950, "million dollars")},
           ("What revenue did {name} report?", "revenue")),
         F("Its research laboratory, known as the {lab}, opened in {year}.",
           {"lab": coined(" Centre"), "year": year(1970, 2020)},
           ("What is the research laboratory of {name} called?", "lab")),
         F("The company's slogan is '{slogan}'.", {"slogan": pick(["Made to last", "Light for every home",
                                                                 "Quietly precise", "From field to table",
                                                                 "Built on trust"])},
           ("What is the slogan of {name}?", "slogan"))),
        ("Its shares have been traded publicly for several decades.", "The firm sponsors a youth football league.",
         "Much of its early growth came from contracts with the state railway.",
         "A small museum in the lobby shows the first machines it built."),
        ("Who owns the largest share of {name}?", "How much profit did {name} make last year?",
         "Who was the first chief executive of {name}?", "How many patents does {name} hold?",
         "What is the share price of {name}?", "Who designed the logo of {name}?"),
    ),
    "town": Kind(
        ("Wrexley", "Sallowmere", "Kinver Bridge", "Ottery Cross", "Penmarra", "Ashcombe", "Thrale", "Dunlow",
         "Marrick", "Everholt"),
        (F("{name} has a population of {pop} according to the latest count.", {"pop": count(1200, 90000, "people")},
           ("What is the population of {name}?", "pop"), ("How many people live in {name}?", "pop")),
         F("The town lies on the River {river}, about {dist} from the coast.",
           {"river": pick(["Tarrant", "Lune", "Esk", "Wendle", "Orrin", "Calder", "Sable"]),
            "dist": count(4, 90, "kilometres")},
           ("On which river does {name} lie?", "river"), ("How far is {name} from the coast?", "dist")),
         F("Its mayor is {mayor}, elected in {year}.", {"mayor": person, "year": year(2010, 2024)},
           ("Who is the mayor of {name}?", "mayor")),
         F("The oldest building in {name} is {church}, built in {year}.",
           {"church": coined(" Chapel", "St. "), "year": year(1100, 1600)},
           ("What is the oldest building in {name}?", "church"), ("When was the oldest building in {name} built?", "year")),
         F("Each {month} the town holds the {fair}, a market of local crafts.",
           {"month": pick(MONTHS), "fair": coined(" Fair")},
           ("In which month does {name} hold its fair?", "month"), ("What is the fair held in {name} called?", "fair")),
         F("Its main industry is {industry}.", {"industry": pick(["boat building", "wool weaving", "cheese making",
                                                                  "slate quarrying", "tourism", "printing"])},
           ("What is the main industry of {name}?", "industry")),
         F("{name} is twinned with {twin}.", {"twin": pick(TOWNS)},
           ("Which town is {name} twinned with?", "twin")),
         F("{name} received its town charter on {charter}.", {"charter": full_date(1200, 1890)},
           ("When did {name} receive its town charter?", "charter")),
         F("Locals call it '{nick}' because of its {reason}.",
           {"nick": pick(["the Grey Town", "the Lantern", "Little Harbour", "the Hive", "the Kettle"]),
            "reason": pick(["slate roofs", "old lighthouse", "busy market", "many bakeries", "steam baths"])},
           ("What nickname do locals give {name}?", "nick"))),
        ("Narrow lanes lead down from the market square to the water.", "Tourists come in summer for the walks.",
         "A bus service links it with the nearby villages.", "Many houses are built of the local grey stone."),
        ("What is the area of {name}?", "Who founded {name}?", "What is the average rent in {name}?",
         "How many schools does {name} have?", "Who was the first mayor of {name}?", "What is the postcode of {name}?"),
    ),
    "museum": Kind(
        ("the Harrowgate Museum of Clocks", "the Coldwater Gallery", "the Fenwick Collection",
         "the Museum of the Sea at Saltby", "the Linden Toy Museum", "the Varlow Art House"),
        (F("{Name} opened in {year} in a former {building}.", {"year": year(1880, 2015),
                                                               "building": pick(["customs house", "school", "bank",
                                                                                 "grain store"])},
           ("When did {name} open?", "year"), ("What building does {name} occupy?", "building")),
         F("Its director is {director}, a historian who joined in {year}.", {"director": person, "year": year(2000, 2023)},
           ("Who is the director of {name}?", "director")),
         F("The collection holds {objects}.", {"objects": count(800, 60000, "objects", 50)},
           ("How many objects does {name} hold?", "objects")),
         F("Its most famous exhibit is the {exhibit}, which dates from {year}.",
           {"exhibit": coined(" astrolabe"), "year": year(1500, 1900)},
           ("What is the most famous exhibit of {name}?", "exhibit")),
         F("The building was redesigned by the architect {architect}.", {"architect": person},
           ("Who redesigned the building of {name}?", "architect")),
         F("About {visitors} visit it every year.", {"visitors": count(5000, 400000, "people", 500)},
           ("How many people visit {name} each year?", "visitors")),
         F("Entry costs {price} for adults and is free for children.", {"price": pick(["6 dollars", "8 dollars",
                                                                                     "12 dollars", "4 dollars"])},
           ("How much does entry to {name} cost for adults?", "price"))),
        ("School groups visit on weekday mornings.", "The cafe on the top floor looks over the harbour.",
         "Volunteers guide tours at weekends.", "Part of the collection is stored off site."),
        ("Who founded {name}?", "What are the opening hours of {name}?", "How large is the shop of {name}?",
         "Who was the first director of {name}?", "How many staff work at {name}?"),
    ),
    "festival": Kind(
        ("the Lantern Walk of Ilvern", "the Brisk Folk Festival", "the Harvest Moon Fair", "the Sea Shanty Days",
         "the Kilbrook Kite Festival", "the Midsummer Regatta"),
        (F("{Name} takes place every year on {date}.", {"date": date},
           ("On what date is {name} held?", "date"), ("When does {name} take place?", "date")),
         F("It was first held in {year}, organised by {founder}.", {"year": year(1890, 2010), "founder": person},
           ("When was {name} first held?", "year"), ("Who organised the first {name}?", "founder")),
         F("Around {crowd} attend it.", {"crowd": count(2000, 120000, "people", 500)},
           ("How many people attend {name}?", "crowd")),
         F("The main event is {event}.", {"event": pick(["a torchlit procession", "a rowing race", "a pie contest",
                                                         "a night of fireworks", "a choir competition"])},
           ("What is the main event of {name}?", "event")),
         F("The winner receives the {prize}.", {"prize": coined(" Cup")},
           ("What prize does the winner of {name} receive?", "prize")),
         F("It is held in {town}, on the old harbour front.", {"town": pick(TOWNS)},
           ("Where is {name} held?", "town"))),
        ("Stalls sell hot cider and smoked fish.", "Schools close early on the day.",
         "Bands play until midnight.", "The event is broadcast on local radio."),
        ("How much does a ticket to {name} cost?", "Who won {name} last year?", "What was the attendance at the first {name}?",
         "Which company sponsors {name}?", "Who is the current organiser of {name}?"),
    ),
    "club": Kind(
        ("Rushmere Rovers", "the Thornwick Otters", "Galloway Cross Athletic", "the Pellbury Harriers",
         "Oakhaven United", "the Eastholm Falcons"),
        (F("{Name} was founded in {year} by a group of {founders}.",
           {"year": year(1870, 1990), "founders": pick(["dock workers", "miners", "students", "fishermen"])},
           ("When was {name} founded?", "year"), ("Who founded {name}?", "founders")),
         F("The club plays at {ground}, which holds {seats}.",
           {"ground": coined(" Park"), "seats": count(2000, 40000, "spectators", 100)},
           ("Where does {name} play?", "ground"), ("How many spectators does the ground of {name} hold?", "seats")),
         F("It has won the national championship {titles} times.", {"titles": pick(["four", "seven", "twelve", "19"])},
           ("How many times has {name} won the national championship?", "titles")),
         F("Its head coach is {coach}.", {"coach": person},
           ("Who is the head coach of {name}?", "coach"), ("Who coaches {name}?", "coach")),
         F("The record goalscorer is {scorer}, with {goals}.", {"scorer": person, "goals": count(90, 450, "goals")},
           ("Who is the record goalscorer of {name}?", "scorer"), ("How many goals did the record goalscorer of {name} score?", "goals")),
         F("The team plays in {colours}.", {"colours": pick(["green and white", "red and black", "blue and gold",
                                                             "orange shirts"])},
           ("What colours does {name} play in?", "colours")),
         F("Its great rival is {rival}.", {"rival": pick(TOWNS)},
           ("Who is the great rival of {name}?", "rival"))),
        ("Home matches are played on Saturday afternoons.", "The youth academy trains on weekday evenings.",
         "Supporters sing the same song before every match.", "The clubhouse was rebuilt after a fire."),
        ("Who is the captain of {name}?", "How many goals did {name} score last season?", "Who was the first coach of {name}?",
         "How much does a season ticket for {name} cost?", "Who owns {name}?"),
    ),
    "school": Kind(
        ("Larchmont College", "the Westerby Institute of Art", "Fairmead Academy", "the Drennan School of Music",
         "Amberley Technical College", "the Coldwater Nautical School"),
        (F("{Name} was founded in {year}.", {"year": year(1820, 1990)}, ("When was {name} founded?", "year")),
         F("It teaches about {students}.", {"students": count(300, 18000, "students", 10)},
           ("How many students does {name} have?", "students")),
         F("The principal is {head}.", {"head": person},
           ("Who is the principal of {name}?", "head"), ("Who leads {name}?", "head")),
         F("Its motto is '{motto}'.", {"motto": pick(["Learn by doing", "Ever forward", "Light and labour",
                                                      "Ask and seek", "Steady hands"])},
           ("What is the motto of {name}?", "motto")),
         F("Its training ship, the {ship}, was launched in {year}.", {"ship": coined("", "MV "), "year": year(1960, 2020)},
           ("What is the training ship of {name} called?", "ship")),
         F("The library holds {books}.", {"books": count(10000, 900000, "volumes", 1000)},
           ("How many volumes does the library of {name} hold?", "books")),
         F("It is organised in {faculties}.", {"faculties": pick(["three faculties", "six departments",
                                                                  "four schools"])},
           ("How is {name} organised?", "faculties"))),
        ("Lectures run from September to June.", "Many graduates stay in the region.",
         "The main hall is used for concerts.", "A new laboratory wing is being planned."),
        ("How much are the fees at {name}?", "Who was the first principal of {name}?", "What is the ranking of {name}?",
         "How many teachers work at {name}?", "Which famous writer studied at {name}?"),
    ),
    "line": Kind(
        ("the Greyhithe Ferry", "the Upfield Light Railway", "the Yarrowdale Tramway", "the Coast Express",
         "the Bexford Canal Line", "the Holloway Bay Cable Car"),
        (F("{Name} runs for {length} between {a} and {b}.",
           {"length": count(3, 240, "kilometres"), "a": pick(TOWNS[:16]), "b": pick(TOWNS[16:])},
           ("How long is {name}?", "length"), ("Where does {name} start?", "a")),
         F("It opened in {year}.", {"year": year(1850, 2015)}, ("When did {name} open?", "year")),
         F("Its oldest vehicle, the {engine}, still runs in summer.", {"engine": coined()},
           ("What is the oldest vehicle of {name} called?", "engine")),
         F("The journey takes {time}.", {"time": pick(["forty minutes", "two hours", "25 minutes", "three hours"])},
           ("How long does the journey on {name} take?", "time")),
         F("It carries about {riders} a year.", {"riders": count(20000, 3000000, "passengers", 1000)},
           ("How many passengers does {name} carry a year?", "riders")),
         F("It is operated by {operator}.", {"operator": coined(" Transport")},
           ("Who operates {name}?", "operator")),
         F("There are {stops} along the route.", {"stops": count(3, 40, "stations")},
           ("How many stations does {name} have?", "stops"))),
        ("Trains run every hour in summer.", "The route follows the old coast road.",
         "Cyclists may bring their bikes on board.", "Services are reduced in winter storms."),
        ("How much does a ticket on {name} cost?", "Who designed {name}?", "What is the top speed on {name}?",
         "When does the last service on {name} leave?", "Who was the first driver on {name}?"),
    ),
    "reserve": Kind(
        ("the Sallow Marsh Reserve", "Kelpie Island", "the Orrin Gorge", "Blackfell Moor", "Lake Merrow",
         "the Dunlin Sands"),
        (F("{Name} covers {area}.", {"area": count(40, 9000, "hectares")},
           ("How large is {name}?", "area"), ("What area does {name} cover?", "area")),
         F("It has been protected since {year}.", {"year": year(1930, 2015)},
           ("Since when has {name} been protected?", "year")),
         F("It is home to the rare {animal}.", {"animal": pick(["marsh harrier", "otter", "natterjack toad",
                                                                "golden plover", "pine marten", "grey seal"])},
           ("Which rare animal lives at {name}?", "animal")),
         F("About {pairs} of terns nest there each spring.", {"pairs": count(200, 30000, "pairs", 100)},
           ("How many pairs of terns nest at {name}?", "pairs")),
         F("The warden, {warden}, lives in the old keeper's cottage.", {"warden": person},
           ("Who is the warden of {name}?", "warden")),
         F("Its highest point is {peak}, at {height}.", {"peak": coined(" Knoll"), "height": count(40, 900, "metres")},
           ("What is the highest point of {name}?", "peak"), ("How high is the highest point of {name}?", "height")),
         F("The nearest village is {village}.", {"village": pick(TOWNS)},
           ("What is the nearest village to {name}?", "village"))),
        ("Paths are closed during the nesting season.", "Visitors must keep dogs on a lead.",
         "The light is best at dawn.", "Storms reshape the shore every winter."),
        ("How deep is the water at {name}?", "How many visitors does {name} get?", "Who owns {name}?",
         "What is the entry fee for {name}?", "When was {name} first mapped?"),
    ),
    "building": Kind(
        ("the Corn Exchange Tower", "the Larkspur Bridge", "the Meridian Hall", "the Old Signal House",
         "the Saltby Lighthouse", "the Orbit Theatre"),
        (F("{Name} was completed in {year}.", {"year": year(1750, 2020)}, ("When was {name} completed?", "year")),
         F("It was designed by {architect}.", {"architect": person},
           ("Who designed {name}?", "architect"), ("Who was the architect of {name}?", "architect")),
         F("It stands {height} tall.", {"height": count(12, 320, "metres")}, ("How tall is {name}?", "height")),
         F("It is built of {material}.", {"material": pick(["red sandstone", "granite", "steel and glass",
                                                            "brick", "timber"])},
           ("What is {name} built of?", "material")),
         F("It cost {cost} to build.", {"cost": decimal(1, 400, "million dollars")},
           ("How much did {name} cost to build?", "cost")),
         F("Today it is used as {use}.", {"use": pick(["a concert venue", "offices", "a hotel", "a library",
                                                      "a museum"])},
           ("What is {name} used as today?", "use")),
         F("It stands on {street} in {town}.", {"street": coined(" Street"), "town": pick(TOWNS)},
           ("On which street is {name}?", "street"), ("In which town is {name}?", "town"))),
        ("Its roof can be seen from the hills.", "Repairs were made after the war.",
         "Guided tours run on Sundays.", "The clock on its front was added later."),
        ("Who owns {name}?", "How many floors does {name} have?", "Who built the first structure on the site of {name}?",
         "How many visitors does {name} get?", "When will {name} be renovated?"),
    ),
    "person": Kind(
        ("Marta Ilves", "Teodor Branck", "Hesper Quill", "Anouk Verhaal", "Ruben Oldcastle", "Sabine Korr",
         "Cyril Ashby", "Linnea Storrs"),
        (F("{Name} was born in {town} in {year}.", {"town": pick(TOWNS), "year": year(1880, 1990)},
           ("Where was {name} born?", "town"), ("When was {name} born?", "year")),
         F("{Name} is best known as a {job}.", {"job": pick(["painter", "marine biologist", "composer",
                                                             "mountaineer", "bridge engineer", "novelist"])},
           ("What is {name} best known as?", "job")),
         F("Their most famous work is {work}.", {"work": coined(" Suite", "the ")},
           ("What is the most famous work of {name}?", "work")),
         F("In {year} {name} received the {award}.", {"year": year(1950, 2023), "award": coined(" Medal")},
           ("Which award did {name} receive?", "award")),
         F("{Name} studied under {teacher}.", {"teacher": person},
           ("Who taught {name}?", "teacher"), ("Under whom did {name} study?", "teacher")),
         F("They spent {years} working in {town}.", {"years": pick(["ten years", "two decades", "six years"]),
                                                     "town": pick(TOWNS)},
           ("Where did {name} spend years working?", "town"))),
        ("Letters from that period survive in a local archive.", "Critics were slow to notice the early work.",
         "A street is named in their honour.", "Friends described a quiet, patient character."),
        ("Who did {name} marry?", "How many children did {name} have?", "When did {name} die?",
         "What was the first job of {name}?", "Which university did {name} attend?"),
    ),
}


# Sentences any document may carry: names, years and numbers that answer none of its questions, so the
# reader must pick the asked span among look-alikes (retrieved chunks are full of them).
GENERIC = (
    F("In {year} a fire damaged part of the site, and repairs took {months}.",
      {"year": year(1900, 2020), "months": pick(["eight months", "two years", "a summer"])}),
    F("A plaque unveiled by {person} in {year} recalls its early days.", {"person": person, "year": year(1950, 2022)}),
    F("The local historian {person} wrote a short account of it in {year}.", {"person": person, "year": year(1960, 2021)}),
    F("A storm in {year} closed it for {days}.", {"year": year(1950, 2023), "days": count(3, 60, "days")}),
    F("Its archive, kept in {town}, holds letters dating back to {year}.", {"town": pick(TOWNS), "year": year(1800, 1950)}),
    F("A survey in {year} counted {number} in the surrounding district.",
      {"year": year(1990, 2023), "number": count(400, 80000, "households", 100)}),
    F("The regional council gave it a grant of {money} in {year}.",
      {"money": decimal(0.2, 40, "million dollars"), "year": year(1995, 2024)}),
    F("Newspapers in {town} covered its anniversary in {year}.", {"town": pick(TOWNS), "year": year(1970, 2023)}),
    F("The road to it was widened in {year} at the request of {person}.", {"year": year(1960, 2020), "person": person}),
    F("A documentary by {person} followed a year in its life.", {"person": person}),
)
