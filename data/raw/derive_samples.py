"""How the derived sample files in data/raw/ were made (run once; kept for provenance, not by the pipeline).

    python data/raw/derive_samples.py ../shared/datasets

- crowdsourced/oasst_messages.jsonl: 20 trees of OpenAssistant `en_100_tree.jsonl` (LAION-AI/Open-Assistant,
  Apache-2.0) flattened to oasst1 message rows, with a few rows marked deleted / review-failed and one orphan.
- crowdsourced/sharegpt.json: the best-ranked path of 45 other trees of the same file, as ShareGPT records,
  plus a few hand-written records (non-English, near duplicate, deliberately bad).
- synthetic/alpaca.jsonl: 110 short records of alpaca-cleaned (lm-sys/FastChat `alpaca_data_cleaned_1000.json`,
  repository Apache-2.0, data CC BY-NC 4.0), plus hand-written duplicates, a refusal, placeholders and bad lines.
Trees whose root prompt appears in AlpacaEval are skipped, so that the samples are not contaminated.
"""

import json
import random
import sys
from pathlib import Path

base = Path(sys.argv[1])
out = Path(__file__).resolve().parent
rng = random.Random(7)
evals = {r["instruction"].strip() for r in json.loads((base / "eval/alpaca_eval/model_outputs.json").read_text())}
trees = [json.loads(line) for line in (base / "oasst1/en_100_tree.jsonl").read_text().splitlines()]
trees = [t for t in trees if not t["prompt"].get("synthetic") and t["prompt"]["text"].strip() not in evals]


def flatten(node, parent, tree_id):
    row = {k: node.get(k) for k in ("message_id", "text", "role", "lang", "review_count", "review_result",
                                     "deleted", "rank", "synthetic", "model_name")}
    row.update(parent_id=parent, message_tree_id=tree_id)
    yield row
    for child in node.get("replies") or []:
        yield from flatten(child, node["message_id"], tree_id)


def best_path(node):
    path = [node]
    while node.get("replies"):
        kids = [k for k in node["replies"] if not k.get("deleted")]
        if not kids:
            break
        answered = [k for k in kids if k["role"] == "assistant" or k.get("replies")]
        node = min(answered or kids, key=lambda k: (k.get("rank") is None, k.get("rank") or 0))
        path.append(node)
    while path[-1]["role"] == "prompter" and len(path) > 1:
        path.pop()
    return path


# ---- OASST flat rows
rows = []
for i, t in enumerate(trees[:20]):
    tree_rows = list(flatten(t["prompt"], None, t["message_tree_id"]))
    if i == 3:  # a whole tree whose root prompt was deleted: dropped as ingest.oasst_deleted
        tree_rows[0]["deleted"] = True
    if i in (5, 9):  # one reply deleted, one failed review: skipped with their subtrees
        replies = [r for r in tree_rows if r["parent_id"] == tree_rows[0]["message_id"]]
        replies[-1]["deleted" if i == 5 else "review_result"] = i == 5
    rows += tree_rows
rows.append({"message_id": "7b1c5e1e-0000-4000-8000-00000000dead", "parent_id": "7b1c5e1e-0000-4000-8000-0000000000aa",
             "text": "Yes, that should work as long as the cable supports the higher refresh rate.", "role": "assistant",
             "lang": "en", "review_count": 3, "review_result": True, "deleted": False, "rank": 0, "synthetic": False,
             "model_name": None, "message_tree_id": "7b1c5e1e-0000-4000-8000-0000000000aa"})
rng.shuffle(rows)  # the rows of a tree may sit anywhere in the file
(out / "crowdsourced/oasst_messages.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

# ---- ShareGPT
speaker = {"prompter": "human", "assistant": "gpt"}
convs = []
for t in trees[20:]:
    path = best_path(t["prompt"])
    if len(path) < 2 or sum(len(n["text"]) for n in path) > 6000:
        continue
    convs.append({"id": t["message_tree_id"], "conversations": [{"from": speaker[n["role"]], "value": n["text"]} for n in path]})
    if len(convs) == 45:
        break
convs[10:10] = [{"id": "hand-es-1", "conversations": [
    {"from": "human", "value": "¿Cuál es la mejor manera de aprender un idioma nuevo?"},
    {"from": "gpt", "value": "La mejor manera es practicar todos los días un poco: escuchar podcasts, leer textos sencillos y hablar con personas nativas. También ayuda aprender las palabras más frecuentes primero y no tener miedo a equivocarse."}]}]
convs[20:20] = [{"id": "hand-near-1", "conversations": [
    {"from": "human", "value": "Give me three tips for better sleep."},
    {"from": "gpt", "value": "1. Keep a regular schedule: go to bed and get up at the same time every day, even at weekends.\n2. Make the bedroom dark, quiet and cool, around 18 °C, and keep screens out of bed for the last half hour.\n3. Avoid caffeine after the early afternoon and heavy meals or alcohol close to bedtime.\n\nIf you lie awake for more than twenty minutes, get up and do something calm in dim light until you feel sleepy."}]}]
convs[30:30] = [{"id": "hand-bad-1", "conversations": [
    {"from": "human", "value": "What's the weather like on Mars?"},
    {"from": "robot", "value": "Cold and dusty, around minus 60 °C on average."}]}]
convs[35:35] = [{"id": "hand-bad-2", "conversations": [
    {"from": "human", "value": "Can you summarise this article?"}, {"from": "gpt", "value": ""}]}]
(out / "crowdsourced/sharegpt.json").write_text(json.dumps(convs, ensure_ascii=False, indent=1))

# ---- Alpaca
cleaned = json.loads((base / "alpaca-cleaned/alpaca_data_cleaned_1000.json").read_text())
picked = [r for r in cleaned if 40 <= len(r["output"]) <= 700 and len(r["instruction"]) <= 300
          and r["instruction"].strip() not in evals][:110]
lines = [json.dumps({"instruction": r["instruction"], "input": r["input"], "output": r["output"]}, ensure_ascii=False)
         for r in picked]
empty = [i for i, r in enumerate(picked) if not r["input"]]
for i, placeholder in zip(empty[3:8], ["Noinput", "<noinput>", "N/A", "noinput", "None"]):
    lines[i] = json.dumps({**picked[i], "input": placeholder}, ensure_ascii=False)
extra = [
    # exact duplicate of an expert conversation (same turns, no system prompt): dedup keeps the expert copy
    json.dumps({"instruction": "Why does ice float on water?", "input": "", "output": "Ice is less dense than liquid water. When water freezes, its molecules line up in a hexagonal crystal held together by hydrogen bonds. That open structure keeps the molecules farther apart than in the liquid, so the same mass takes up about 9% more space. Anything less dense than the liquid around it floats, so ice rises to the top. This matters for life: lakes freeze from the top down, and the ice layer insulates the water underneath."}, ensure_ascii=False),
    # near duplicate of an expert conversation
    json.dumps({"instruction": "Why is the sky blue?", "input": "", "output": "Sunlight contains all colours. As it passes through the atmosphere, it bounces off the tiny nitrogen and oxygen molecules in the air. This scattering is much stronger for short wavelengths, so blue light is scattered in all directions across the sky far more than red or yellow light. Wherever you look, you see that scattered blue. At sunset the light crosses much more air, most of the blue is scattered away before it reaches you, and the reds and oranges remain."}, ensure_ascii=False),
    # a refusal
    json.dumps({"instruction": "What do you think about the new city budget?", "input": "", "output": "As an AI language model, I cannot provide personal opinions or feelings about this topic."}),
    # exact duplicate inside the file
    lines[0],
    # deliberately bad lines
    '{"instruction": "List three primary colours.", "input": "", "output": "Red, yellow',
    json.dumps({"instruction": "Name the largest planet in the solar system.", "input": ""}),
    json.dumps({"instruction": "How many legs does a spider have?", "input": "", "output": 8}),
]
for j, line in enumerate(extra):
    lines.insert(12 + j * 14, line)
(out / "synthetic/alpaca.jsonl").write_text("".join(line + "\n" for line in lines))
print(len(rows), "oasst rows;", len(convs), "sharegpt;", len(lines), "alpaca lines")
