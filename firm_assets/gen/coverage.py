"""How much of a GenEval prompt's ground-truth item set a planned checklist mentions: a free quality
signal for the planner (GenEval's metadata is a machine-checkable checklist for its prompt)."""

import json
import re

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def _mentions(text: str, word: str) -> bool:
    """Whole-word match of a class name, its simple plurals included."""
    return re.search(rf"\b{re.escape(word.lower())}(s|es)?\b", text) is not None


def ground_truth_facts(geneval: str) -> list[tuple[str, ...]]:
    """Facts to cover: ("object", cls), ("count", cls, n), ("color", cls, colour), ("position", cls, rel)."""
    spec = json.loads(geneval)
    facts: list[tuple[str, ...]] = []
    for item in spec["include"]:
        cls = item["class"]
        facts.append(("object", cls))
        if item.get("count", 1) > 1:
            facts.append(("count", cls, str(item["count"])))
        if item.get("color"):
            facts.append(("color", cls, item["color"]))
        if item.get("position"):
            facts.append(("position", cls, item["position"][0].split()[0]))
    return facts


def _covered(fact: tuple[str, ...], texts: list[str]) -> bool:
    kind, cls = fact[0], fact[1]
    for text in texts:
        if not _mentions(text, cls):
            continue
        if kind == "object":
            return True
        detail = fact[2]
        words = {detail, NUMBER_WORDS.get(int(detail), detail)} if kind == "count" else {detail}
        if any(re.search(rf"\b{re.escape(w)}\b", text) for w in words):
            return True
    return False


def checklist_coverage(geneval: str, items: list[dict[str, str]]) -> float:
    """Fraction of ground-truth facts that some checklist item (its text or question) states."""
    facts = ground_truth_facts(geneval)
    texts = [f"{item['item']} {item['question']}".lower() for item in items]
    return sum(_covered(fact, texts) for fact in facts) / len(facts)
