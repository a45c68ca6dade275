"""`make docs` renders the contract with the official AsyncAPI templates, offline, and the
pages name every channel address, operation and message of asyncapi.yaml."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "build" / "docs" / "html" / "index.html"
MARKDOWN = ROOT / "build" / "docs" / "markdown" / "asyncapi.md"


def contract_names() -> dict[str, list[str]]:
    """What a reader must find in the docs, read from the contract itself."""
    contract: dict[str, Any] = yaml.safe_load((ROOT / "asyncapi.yaml").read_text())
    messages = contract["components"]["messages"]
    channels = contract["channels"].values()
    return {
        "server": list(contract["servers"]),
        "channel address": [c["address"] for c in channels if c.get("address")],
        "operation": list(contract["operations"]),
        "message": [m.get("name", key) for key, m in messages.items()],
        "message title": [m["title"] for m in messages.values() if "title" in m],
    }


def visible_text(page: str) -> str:
    """The text a reader sees: no scripts or styles, no tags, entities decoded."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.DOTALL | re.IGNORECASE)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    missing = [tool for tool in ("make", "node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"`make docs` needs {', '.join(missing)}: install make, Node.js >= 20 and npm "
            "(`bash .ci/run` installs them)"
        )
    # A fresh checkout installs the templates first (npm, a few minutes); then it is ~40 s.
    done = subprocess.run(
        ["make", "docs"], cwd=ROOT, capture_output=True, text=True, timeout=540, check=False
    )
    output = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, f"`make docs` exited {done.returncode}:\n{output}"
    for page in (HTML, MARKDOWN):
        assert page.is_file(), f"`make docs` wrote no {page.relative_to(ROOT)}:\n{output}"
    return {
        "html": visible_text(HTML.read_text(encoding="utf-8")),
        "markdown": MARKDOWN.read_text(encoding="utf-8"),
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["html", "markdown"])
def test_docs_name_everything_in_the_contract(rendered: dict[str, str], kind: str):
    text = rendered[kind]
    absent = {
        what: [name for name in names if name not in text]
        for what, names in contract_names().items()
    }
    absent = {what: names for what, names in absent.items() if names}
    assert absent == {}, f"the {kind} docs leave out: {absent}"


def test_the_contract_has_what_the_docs_test_looks_for():
    # Guards the test above against passing on an empty contract read.
    names = contract_names()
    assert len(names["channel address"]) >= 9
    assert {"printQueueCommand", "printJobEvent", "commandRejection"} <= set(names["operation"])
    assert {"createPrintJob", "printJobEvent", "commandRejected"} <= set(names["message"])
