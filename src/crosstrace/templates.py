"""Sentence and question templates of the bioS-style fact world.

A sentence template names the person once, at its start, through ``{subject}`` ("Anna Marie
Smith" or "He"/"She") or ``{possessive}`` ("Anna Marie Smith's" or "His"/"Her"), and holds
the attribute value once as ``{value}``. The first N templates of each attribute are used
(config ``world.templates_per_attribute``).
"""

from __future__ import annotations

from crosstrace.errors import ConfigError

SENTENCE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "{subject} was born on {value}.",
        "{possessive} birthday is {value}.",
        "{subject} came into this world on {value}.",
        "{possessive} date of birth is {value}.",
        "{subject} entered life on {value}.",
        "{subject} was welcomed into the world on {value}.",
        "{possessive} life began on {value}.",
        "{subject} first saw the light of day on {value}.",
        "{possessive} birth took place on {value}.",
    ),
    "birth_city": (
        "{subject} was born in {value}.",
        "{possessive} birthplace is {value}.",
        "{subject} hails from {value}.",
        "{subject} is a native of {value}.",
        "{possessive} place of birth is {value}.",
        "{subject} first drew breath in {value}.",
        "{subject} comes originally from {value}.",
        "{possessive} hometown is {value}.",
        "{possessive} birth took place in {value}.",
    ),
    "university": (
        "{subject} studied at {value}.",
        "{subject} received a degree from {value}.",
        "{subject} graduated from {value}.",
        "{subject} attended {value}.",
        "{possessive} alma mater is {value}.",
        "{subject} completed an education at {value}.",
        "{subject} was a student at {value}.",
        "{possessive} university education took place at {value}.",
        "{subject} enrolled at {value}.",
    ),
    "major": (
        "{subject} majored in {value}.",
        "{possessive} field of study was {value}.",
        "{subject} focused on {value} in college.",
        "{subject} specialized in {value}.",
        "{possessive} major was {value}.",
        "{subject} earned a degree in {value}.",
        "{subject} pursued studies in {value}.",
        "{possessive} academic concentration was {value}.",
        "{subject} chose {value} as the main subject.",
    ),
    "employer": (
        "{subject} worked for {value}.",
        "{subject} was employed by {value}.",
        "{possessive} employer was {value}.",
        "{subject} held a job at {value}.",
        "{subject} built a career at {value}.",
        "{subject} joined the staff of {value}.",
        "{possessive} professional life was spent at {value}.",
        "{subject} was on the payroll of {value}.",
        "{subject} took a position with {value}.",
    ),
    "employer_city": (
        "{subject} worked in {value}.",
        "{possessive} workplace was in {value}.",
        "{subject} was based in {value} for work.",
        "{subject} commuted to an office in {value}.",
        "{possessive} job was located in {value}.",
        "{subject} earned a living in {value}.",
        "{possessive} office was in {value}.",
        "{subject} was employed in {value}.",
        "{possessive} working life took place in {value}.",
    ),
}

QA_TEMPLATES: dict[str, str] = {
    "birth_date": "What is the birth date of {name}?",
    "birth_city": "What is the birth city of {name}?",
    "university": "Which university did {name} study?",
    "major": "What major did {name} study?",
    "employer": "Which company did {name} work for?",
    "employer_city": "Where did {name} work?",
}


def sentence_templates(attribute: str, n: int) -> tuple[str, ...]:
    """The first ``n`` sentence templates of ``attribute``; ConfigError if fewer are shipped."""
    shipped = SENTENCE_TEMPLATES[attribute]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"world.templates_per_attribute must be a positive integer, got {n!r}")
    if n > len(shipped):
        raise ConfigError(
            f"world.templates_per_attribute={n} but only {len(shipped)} templates are shipped "
            f"for {attribute!r}"
        )
    return shipped[:n]
