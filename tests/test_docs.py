"""docs/contract.md stays true: its settings table is the one `python -m botburrow.settings --markdown` prints."""

from __future__ import annotations

import re
from pathlib import Path

from botburrow import settings

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract.md"
BLOCK = re.compile(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", re.S)


def test_settings_table_is_generated() -> None:
    found = BLOCK.search(CONTRACT.read_text(encoding="utf-8"))
    assert found, "docs/contract.md lost its <!-- settings:begin --> / <!-- settings:end --> markers"
    assert found.group(1) == settings.markdown_table(), (
        "docs/contract.md §7 differs from botburrow/settings.py: paste the output of "
        "`python -m botburrow.settings --markdown` between the settings markers"
    )


def test_contract_keeps_spec_numbering() -> None:
    headings = re.findall(r"^## §(\d) ", CONTRACT.read_text(encoding="utf-8"), re.M)
    assert headings == [str(n) for n in range(1, 8)]
