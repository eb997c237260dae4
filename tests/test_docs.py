"""The docs stay true: the settings tables of docs/contract.md and docs/operators.md are the one
`python -m botburrow.settings --markdown` prints, and every alert of deploy/ has its runbook."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from botburrow import settings

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract.md"
OPERATORS = ROOT / "docs" / "operators.md"
ALERTS = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
BLOCK = re.compile(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", re.S)


@pytest.mark.parametrize("doc", [CONTRACT, OPERATORS], ids=lambda path: path.name)
def test_settings_table_is_generated(doc: Path) -> None:
    found = BLOCK.search(doc.read_text(encoding="utf-8"))
    assert found, f"docs/{doc.name} lost its <!-- settings:begin --> / <!-- settings:end --> markers"
    assert found.group(1) == settings.markdown_table(), (
        f"docs/{doc.name} differs from botburrow/settings.py: paste the output of "
        "`python -m botburrow.settings --markdown` between the settings markers of docs/contract.md and "
        "docs/operators.md"
    )


def test_every_alert_has_a_runbook_and_the_readme_links_it() -> None:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["spec"]["groups"]
    alerts = [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]
    runbooks = re.findall(r"^### (\w+)$", OPERATORS.read_text(encoding="utf-8"), re.M)
    assert alerts and [alert for alert in alerts if alert not in runbooks] == [], (
        "an alert of deploy/k8s/base/prometheusrule.yaml has no runbook in docs/operators.md (### <alert>)")
    assert "(docs/operators.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_contract_keeps_spec_numbering() -> None:
    headings = re.findall(r"^## §(\d) ", CONTRACT.read_text(encoding="utf-8"), re.M)
    assert headings == [str(n) for n in range(1, 8)]
