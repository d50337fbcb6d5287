"""Build a ChatStage for a model role from the active profile: the one place stage knobs are read."""

from __future__ import annotations

from firm_assets.curation.parsers import Parser
from firm_assets.curation.prompts import load_template
from firm_assets.curation.stage import ChatStage
from resources.chat import Decoding
from resources.profiles import Profile


def chat_stage(
    profile: Profile, name: str, template_id: str, parser: Parser, budget: str, scored: bool
) -> ChatStage:
    """`budget` names the profile's max_new_tokens entry; `scored` stages use the profile's score reader.
    A guided profile holds answers to the parser's format, sized so the longest fits the budget."""
    max_new_tokens = profile.max_new_tokens[budget]
    regex = parser.guide(max_new_tokens) if profile.guided and parser.guide else None
    return ChatStage(
        name=name,
        template=load_template(template_id),
        parser=parser,
        decoding=Decoding(max_new_tokens=max_new_tokens, regex=regex),
        max_attempts=profile.max_attempts,
        score_reader=profile.score_reader if scored else None,
    )


def static_code_version(*parts: str) -> str:
    """An asset's code_version from its template and parser refs (known at definition time)."""
    return "+".join(parts)
