"""docs/service.md against the code: every setting with its real default, every metric with its
real type, and no name the code does not have, so the page cannot drift from the service."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from loopback import free_port
from redis import Redis

from megasr.queue import EngineQueues
from megasr.service.prometheus import GatewayMetrics, QueueDepthCollector, WebhookOutboxCollector
from megasr.settings import Settings
from megasr.webhooks.outbox import WebhookOutbox
from megasr.worker.prometheus import WorkerMetrics

# Variables the page may name that are not settings: the settings file and the client CLI's.
OTHER_VARIABLES = {"MEGASR_SETTINGS_FILE", "MEGASR_URL", "MEGASR_API_KEY"}


@pytest.fixture(scope="module")
def page(repo_root: Path) -> str:
    return (repo_root / "docs" / "service.md").read_text(encoding="utf-8")


def table_rows(page: str, first_cell: str) -> dict[str, list[str]]:
    """Table rows whose first cell is a code span matching ``first_cell``, by that name."""
    rows: dict[str, list[str]] = {}
    for line in page.splitlines():
        match = re.match(rf"\| `({first_cell})` \|(.*)\|$", line)
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} is listed twice"
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def documented_default(name: str) -> str | None:
    """What the default cell must say; None where it depends on the machine (user folders)."""
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, Path):
            return None
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def test_every_setting_is_in_a_table_with_its_default(page):
    rows = table_rows(page, r"MEGASR_[A-Z0-9_]+")
    expected = {f"MEGASR_{name.upper()}": name for name in Settings.model_fields}

    assert sorted(rows) == sorted(expected)
    for variable, name in expected.items():
        default, meaning = rows[variable]
        assert meaning, f"{variable} has no meaning"
        wanted = documented_default(name)
        if wanted is not None:
            assert default == wanted, f"{variable}: the page says {default}, the code {wanted}"


def test_the_page_names_no_variable_the_code_lacks(page):
    settings = {f"MEGASR_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"\bMEGASR_[A-Z0-9_]+", page))
    assert named - settings - OTHER_VARIABLES == set()


def test_every_metric_is_listed_with_its_type(page):
    redis = Redis(port=free_port())  # never connected: names only
    queues = EngineQueues(Settings(queue_name="docs"), redis)
    gateway = GatewayMetrics(queues)
    outbox = WebhookOutbox(redis, "docs")
    families = [*gateway.registry.collect(), *QueueDepthCollector(queues).describe()]
    families += WebhookOutboxCollector(outbox).describe()
    families += WorkerMetrics().registry.collect()
    exposed = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in families
        if family.name.startswith("megasr_")
    }

    rows = table_rows(page, r"megasr_[a-z_]+")
    assert {name: cells[0] for name, cells in rows.items()} == exposed
