"""Writes data/raw/expert/tool_calls.jsonl: hand-written tool-calling conversations (OpenAI format).

    python data/raw/make_tool_calls.py data/raw/expert/tool_calls.jsonl
"""
from __future__ import annotations

import json
import sys

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "city name"},
           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
FX = {"type": "function", "function": {"name": "convert_currency", "description": "Convert an amount between currencies at today's rate.",
      "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from_currency": {"type": "string", "description": "ISO 4217 code"},
      "to_currency": {"type": "string", "description": "ISO 4217 code"}}, "required": ["amount", "from_currency", "to_currency"]}}}
CAL = {"type": "function", "function": {"name": "create_event", "description": "Add an event to the user's calendar.",
       "parameters": {"type": "object", "properties": {"title": {"type": "string"}, "start": {"type": "string", "description": "ISO 8601 date-time"},
       "duration_minutes": {"type": "integer"}}, "required": ["title", "start"]}}}
SEARCH = {"type": "function", "function": {"name": "search_docs", "description": "Search the product documentation.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["query"]}}}
SYS = "You are a helpful assistant with access to tools. Call a tool when it is needed to answer; otherwise answer directly."

def call(i, name, **args):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

def conv(cid, tools, turns):
    return {"id": cid, "tools": tools, "messages": [{"role": "system", "content": SYS}, *turns]}

def a_call(*calls, content=None):
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}

def tool(i, name, result):
    return {"role": "tool", "tool_call_id": f"call_{i}", "name": name, "content": json.dumps(result)}

def U(text):  # noqa: N802 - short names keep the records readable
    return {"role": "user", "content": text}


def A(text):  # noqa: N802
    return {"role": "assistant", "content": text}


records = [
    conv("tool-001", [WEATHER], [U("What's the weather like in Lisbon right now?"),
        a_call(call(1, "get_weather", city="Lisbon", unit="celsius")),
        tool(1, "get_weather", {"city": "Lisbon", "temperature": 19, "unit": "celsius", "conditions": "sunny", "wind_kph": 14}),
        A("It's sunny in Lisbon at 19 °C, with a light breeze of about 14 km/h.")]),
    conv("tool-002", [WEATHER], [U("Is it colder in Oslo or in Helsinki today? Give me Fahrenheit."),
        a_call(call(1, "get_weather", city="Oslo", unit="fahrenheit"), call(2, "get_weather", city="Helsinki", unit="fahrenheit")),
        tool(1, "get_weather", {"city": "Oslo", "temperature": 28, "unit": "fahrenheit", "conditions": "snow"}),
        tool(2, "get_weather", {"city": "Helsinki", "temperature": 23, "unit": "fahrenheit", "conditions": "overcast"}),
        A("Helsinki is colder: 23 °F and overcast, against 28 °F with snow in Oslo.")]),
    conv("tool-003", [WEATHER, FX], [U("How many euros is 250 US dollars?"),
        a_call(call(1, "convert_currency", amount=250, from_currency="USD", to_currency="EUR")),
        tool(1, "convert_currency", {"amount": 231.38, "currency": "EUR", "rate": 0.9255}),
        A("250 US dollars is about 231.38 euros at today's rate of 0.9255 EUR per dollar.")]),
    conv("tool-004", [FX], [U("What does the 'ISO 4217' in your currency tool mean?"),
        A("ISO 4217 is the international standard for currency codes: three letters, the first two usually the country "
          "code and the third the currency's initial, such as USD for the US dollar, EUR for the euro and JPY for the "
          "Japanese yen. The conversion tool expects amounts in those codes.")]),
    conv("tool-005", [CAL], [U("Put a dentist appointment in my calendar for 3 March 2027 at 9:30, it takes 45 minutes."),
        a_call(call(1, "create_event", title="Dentist appointment", start="2027-03-03T09:30:00", duration_minutes=45)),
        tool(1, "create_event", {"status": "created", "event_id": "evt_8812"}),
        A("Done: \"Dentist appointment\" is in your calendar on 3 March 2027 from 9:30 to 10:15.")]),
    conv("tool-006", [CAL, WEATHER], [U("Schedule a run with Sam tomorrow morning."),
        A("Happy to. What time tomorrow morning should I put it in, and for how long?"),
        U("7:00, for an hour. Tomorrow is 12 May 2027."),
        a_call(call(1, "create_event", title="Run with Sam", start="2027-05-12T07:00:00", duration_minutes=60)),
        tool(1, "create_event", {"status": "created", "event_id": "evt_9034"}),
        A("Your run with Sam is booked for 12 May 2027, 7:00 to 8:00.")]),
    conv("tool-007", [SEARCH], [U("How do I rotate an API key in the dashboard?"),
        a_call(call(1, "search_docs", query="rotate API key dashboard", limit=3)),
        tool(1, "search_docs", {"results": [{"title": "Managing API keys", "snippet": "Open Settings > API keys, choose the key and click Rotate. The old key stays valid for 24 hours."}]}),
        A("Open Settings > API keys in the dashboard, choose the key and click Rotate. The old key keeps working for 24 "
          "hours, so you have a day to update your services with the new one.")]),
    conv("tool-008", [SEARCH], [U("Does the export feature support CSV?"),
        a_call(call(1, "search_docs", query="export formats CSV")),
        tool(1, "search_docs", {"results": []}),
        A("I couldn't find anything about CSV export in the documentation, so I can't confirm it. The export page in the "
          "dashboard lists the formats your plan supports, and support can tell you whether CSV is on the roadmap.")]),
    conv("tool-009", [WEATHER], [U("Should I bring an umbrella in Dublin this afternoon?"),
        a_call(call(1, "get_weather", city="Dublin"), content="Let me check the current conditions in Dublin."),
        tool(1, "get_weather", {"city": "Dublin", "temperature": 12, "unit": "celsius", "conditions": "light rain", "chance_of_rain": 0.8}),
        A("Yes, take one: it's 12 °C with light rain in Dublin and an 80% chance of rain.")]),
    conv("tool-010", [FX], [U("Convert 1,000 yen to pounds and then to dollars."),
        a_call(call(1, "convert_currency", amount=1000, from_currency="JPY", to_currency="GBP")),
        tool(1, "convert_currency", {"amount": 5.21, "currency": "GBP", "rate": 0.00521}),
        a_call(call(2, "convert_currency", amount=5.21, from_currency="GBP", to_currency="USD")),
        tool(2, "convert_currency", {"amount": 6.62, "currency": "USD", "rate": 1.2706}),
        A("1,000 yen is about £5.21, which is about $6.62.")]),
    conv("tool-011", [WEATHER, CAL], [U("Write me a haiku about autumn."),
        A("Maple leaves let go,\nthe river carries their red\nfarther than I can.")]),
    conv("tool-012", [SEARCH], [U("What's the rate limit for the search endpoint?"),
        a_call(call(1, "search_docs", query="search endpoint rate limit", limit=2)),
        tool(1, "search_docs", {"results": [{"title": "Rate limits", "snippet": "Search: 60 requests per minute per key; bursts up to 10 per second."}]}),
        A("The search endpoint allows 60 requests per minute per API key, with short bursts of up to 10 requests per second.")]),
]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(records))
