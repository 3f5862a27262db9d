"""A deterministic synthetic group chat in English, for the benchmark: names, dates, places, prices, numbers.

Everything comes from a seeded ``random.Random`` (string seeds hash with SHA-512, so runs and machines agree):
the same seed and conversation id always yield the same messages, ids and chat times. Messages mix statements
with the kind of detail memory queries ask about ("when is Priya's flight to Lisbon?"), questions, reactions and
the occasional assistant turn, one to three sentences each.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from memos_pipeline.text.dates import DAY_NAMES, MONTH_NAMES

PEOPLE = ("Caroline", "Melanie", "Jon", "Priya", "Diego", "Aiko", "Samuel", "Fatima", "Liam", "Nora", "Omar", "Grace")
CITIES = (
    "Lisbon",
    "Kyoto",
    "Denver",
    "Nairobi",
    "Montreal",
    "Edinburgh",
    "Austin",
    "Seville",
    "Melbourne",
    "Reykjavik",
    "Chicago",
    "Hanoi",
    "Porto",
    "Vancouver",
)
VENUES = (
    "the farmers market on Elm Street",
    "Blue Door Cafe",
    "the climbing gym",
    "Riverside Park",
    "the public library",
    "the community garden",
    "the Orpheum theater",
    "Harbor Pier 9",
    "the yoga studio",
    "the food bank on 5th Avenue",
)
RESTAURANTS = (
    "Casa Lupita",
    "Saffron House",
    "The Green Fork",
    "Ramen Ichiban",
    "Luigi's Trattoria",
    "Smoke & Barrel BBQ",
    "Little Lisbon Bistro",
    "Bamboo Garden",
)
EVENTS = (
    "sister's wedding",
    "product launch",
    "half marathon",
    "pottery workshop",
    "job interview",
    "jazz concert",
    "parents' anniversary dinner",
    "book club meeting",
    "charity bake sale",
    "team offsite",
)
ITEMS = (
    "a used Subaru Outback",
    "a standing desk",
    "noise-cancelling headphones",
    "a road bike",
    "a sourdough starter kit",
    "a 65-inch TV",
    "hiking boots",
    "an espresso machine",
    "a secondhand piano",
)
BOOKS = (
    "Project Hail Mary",
    "The Overstory",
    "Educated",
    "Dune",
    "Circe",
    "Sapiens",
    "The Midnight Library",
    "Pachinko",
)
RELATIVES = ("sister", "brother", "mom", "dad", "grandmother", "cousin", "nephew", "aunt")
COMPANIES = ("Northwind", "Acme Robotics", "Brightline Health", "Copperleaf Studio", "Tidewater Bank", "Glasshouse AI")
PETS = (("puppy", "Biscuit"), ("kitten", "Miso"), ("rescue dog", "Pepper"), ("parrot", "Kiwi"), ("cat", "Juniper"))
LANGUAGES = ("Spanish", "Japanese", "Portuguese", "Italian", "Korean", "German")
CLASSES = (
    "a salsa class",
    "a woodworking course",
    "an evening watercolor class",
    "a first-aid course",
    "a beginner's coding bootcamp",
)
WEEKDAYS, MONTHS = DAY_NAMES, MONTH_NAMES  # the names the service renders dates with

STATEMENTS = (
    "I booked a flight to {city} for {date}; it was ${price} round trip.",
    "My {relative} turns {age} on {date}, so we're doing dinner at {restaurant}.",
    "I finally finished {book}. The last {n} chapters kept me up until {time}.",
    "The interview at {company} is on {date} at {time}, it's already the third round.",
    "I ran {km} km along Riverside Park this morning, my best time so far is {mm}:{ss}.",
    "We adopted a {pet_kind} named {pet_name} last {weekday}; she's {n} months old.",
    "I'm thinking about buying {item}, the one I saw was ${price}.",
    "{person} recommended {restaurant} in {city}, apparently the wait is about {n} minutes.",
    "Our team shipped the {company} release on {date} with {n} bugs still open.",
    "I signed up for {klass} on {weekday} evenings: {n} sessions for ${price}.",
    "The rent on my place in {city} goes up to ${rent} a month from {month}.",
    "I have a dentist appointment on {date} at {time}, so I can't make lunch.",
    "I've been learning {language} on my phone, day {n} of the streak today.",
    "My {relative} moved to {city} in {month} {year} for a job at {company}.",
    "I volunteer at {venue} every {weekday} morning now, usually for {hours} hours.",
    "The {event} is on {date} at {venue}, tickets are ${price} each.",
    "I left my umbrella at {venue} yesterday and someone handed it in around {time}.",
    "We're planning a road trip from {city} to {city2}, roughly {miles} miles each way.",
    "I started a sourdough starter on {date} and I've baked {n} loaves since.",
    "The garage quoted ${price} for new brakes on my car, which feels like a lot.",
    "{person} and I are splitting an Airbnb in {city} from {date}, ${price} per night.",
    "My {relative}'s {event} got moved to {weekday}, {date}.",
    "I got my {language} exam result back: {score} out of 100.",
    "The electricity bill this month was ${price}, up {n} percent from {month}.",
)
QUESTIONS = (
    "Have you ever been to {city}?",
    "What time does the {event} start on {weekday}?",
    "Did {person} ever call you back about the {event}?",
    "Was {book} worth reading?",
    "Are you still going to {venue} on {weekday}?",
    "How much did you end up paying for {item}?",
    "Do you want to grab dinner at {restaurant} after work?",
    "When are you back from {city}?",
)
REACTIONS = (
    "That sounds amazing!",
    "Oh no, sorry to hear that.",
    "Congrats, that's huge!",
    "Ha, typical {person}.",
    "Let me know how it goes.",
    "Same here, honestly.",
    "Wait, really?",
    "Good for you.",
    "I'm so jealous.",
    "Fingers crossed!",
)
ASSISTANT = (
    "I've set a reminder for {date} at {time}.",
    "Noted: the {event} is on {date} at {venue}.",
    "Tip: hotels in {city} book out early in {month}, so reserve at least {n} weeks ahead.",
    "Here's a summary: {person} is going to {city} on {date} and the budget is ${price}.",
)
QUERIES = (
    "When is the flight to {city}?",
    "How much did the flight to {city} cost?",
    "What restaurant did {person} recommend?",
    "When is the interview at {company}?",
    "What is the name of the new {pet_kind}?",
    "Which book did someone finish recently?",
    "How far was the run along Riverside Park?",
    "What day is {klass}?",
    "When is the dentist appointment?",
    "Who moved to {city} for a new job?",
    "How much is the rent in {city} going up to?",
    "Where is the {event} and how much are the tickets?",
    "What did the garage quote for the brakes?",
    "Which language is being learned on the phone?",
    "Where does someone volunteer every week?",
    "Who is planning a road trip to {city}?",
    "How many loaves of sourdough were baked?",
    "What is {person} thinking about buying?",
)


class ConversationGenerator:
    """Conversations, search queries and probe adds from one seed."""

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed

    def _rng(self, *key: object) -> random.Random:
        return random.Random(":".join(str(k) for k in (self.seed, *key)))

    @staticmethod
    def _fill(rng: random.Random, template: str, base: dt.datetime) -> str:
        day = base + dt.timedelta(days=rng.randint(1, 120))
        pet_kind, pet_name = rng.choice(PETS)
        city, city2 = rng.sample(CITIES, 2)
        values: dict[str, Any] = {
            "city": city,
            "city2": city2,
            "venue": rng.choice(VENUES),
            "restaurant": rng.choice(RESTAURANTS),
            "event": rng.choice(EVENTS),
            "item": rng.choice(ITEMS),
            "book": rng.choice(BOOKS),
            "relative": rng.choice(RELATIVES),
            "company": rng.choice(COMPANIES),
            "person": rng.choice(PEOPLE),
            "pet_kind": pet_kind,
            "pet_name": pet_name,
            "language": rng.choice(LANGUAGES),
            "klass": rng.choice(CLASSES),
            "weekday": rng.choice(WEEKDAYS),
            "month": rng.choice(MONTHS),
            "date": f"{MONTHS[day.month - 1]} {day.day}",
            "year": rng.randint(2015, 2024),
            "time": f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))} {rng.choice(('am', 'pm'))}",
            "price": rng.choice((12, 18, 25, 40, 65, 89, 120, 149, 240, 380, 450, 720, 1150, 2400)),
            "rent": rng.randrange(900, 3200, 25),
            "age": rng.randint(18, 90),
            "hours": rng.randint(2, 5),
            "n": rng.randint(2, 45),
            "km": round(rng.uniform(3, 25), 1),
            "mm": rng.randint(18, 140),
            "ss": f"{rng.randint(0, 59):02d}",
            "miles": rng.randrange(80, 1400, 10),
            "score": rng.randint(55, 100),
        }
        return template.format(**values)

    def _content(self, rng: random.Random, base: dt.datetime, assistant: bool) -> str:
        if assistant:
            return self._fill(rng, rng.choice(ASSISTANT), base)
        parts: list[str] = []
        if rng.random() < 0.35:
            parts.append(self._fill(rng, rng.choice(REACTIONS), base))
        parts.append(self._fill(rng, rng.choice(STATEMENTS), base))
        if rng.random() < 0.3:
            parts.append(self._fill(rng, rng.choice(QUESTIONS), base))
        return " ".join(parts)

    def conversation(self, conversation_id: str, n: int, start: dt.datetime | None = None) -> list[dict[str, Any]]:
        """``n`` messages of a group chat among three people and the assistant, in the API's message shape."""
        rng = self._rng("conv", conversation_id)
        speakers = rng.sample(PEOPLE, 3)
        t = start or dt.datetime(2024, 3, 1, 8, 0) + dt.timedelta(hours=rng.randint(0, 500))
        out: list[dict[str, Any]] = []
        for i in range(n):
            t += dt.timedelta(minutes=rng.randint(1, 90))
            assistant = rng.random() < 0.1
            msg: dict[str, Any] = {
                "id": f"{conversation_id}-m{i:05d}",
                "role": "assistant" if assistant else "user",
                "content": self._content(rng, t, assistant),
                "chat_time": t.strftime("%Y-%m-%d %H:%M"),
            }
            if not assistant:
                msg["name"] = rng.choice(speakers)
            out.append(msg)
        return out

    def queries(self, n: int) -> list[str]:
        """``n`` distinct-ish realistic memory queries over the same vocabulary."""
        rng = self._rng("queries")
        base = dt.datetime(2024, 3, 1)
        return [self._fill(rng, QUERIES[i % len(QUERIES)], base) for i in range(n)]

    def marker(self, i: int) -> str:
        """A made-up word found nowhere else in the corpus (letters only, so the analyzer keeps it whole)."""
        rng = self._rng("marker", i)
        syllables = ("ka", "zu", "vo", "mi", "tre", "qua", "lix", "dor", "pem", "sy", "gru", "fen")
        return "zq" + "".join(rng.choice(syllables) for _ in range(4)) + "".join(rng.sample("bdfhjkmnpvwx", 2))

    def probe(self, i: int, n: int) -> tuple[list[dict[str, Any]], str, str]:
        """An add of ``n`` messages whose last one carries a unique marker: (messages, marker, its client id)."""
        conv = f"probe-{i:03d}"
        msgs = self.conversation(conv, n)
        marker = self.marker(i)
        last = msgs[-1]
        last.update(
            role="user",
            name=last.get("name") or "Caroline",
            content=f"The code for the bike locker at {VENUES[i % len(VENUES)]} is {marker}, don't lose it.",
        )
        return msgs, marker, str(last["id"])
