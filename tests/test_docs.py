"""The docs point at what exists: every test file a guarantee names, every relative link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from celery_kafka_bridge.codec import Reason

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_file_a_doc_names_exists(doc: Path) -> None:
    named = set(re.findall(r"\b(test_\w+\.py)\b", doc.read_text()))
    missing = sorted(name for name in named if not (ROOT / "tests" / name).exists())
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_of_a_doc_resolves(doc: Path) -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    relative = [link for link in links if not re.match(r"[a-z]+://|mailto:", link)]
    missing = sorted(link for link in relative if not (doc.parent / link).exists())
    assert not missing, f"{doc.name} links to what does not exist: {missing}"


def test_the_record_contract_lists_every_dead_letter_reason() -> None:
    contract = (ROOT / "docs" / "record.md").read_text()
    missing = [reason.value for reason in Reason if f"`{reason.value}`" not in contract]
    assert not missing, f"docs/record.md does not list the dead-letter reasons {missing}"
