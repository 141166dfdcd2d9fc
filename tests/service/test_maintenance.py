"""The gateway's background chores: one pass per interval across replicas, old objects swept."""

from __future__ import annotations

import os
import time

from megasr.service.context import Gateway
from megasr.service.maintenance import maintain_once


def test_one_pass_per_interval_and_old_objects_swept(make_settings):
    gw = Gateway.from_settings(make_settings(maintenance_interval_s=3600))  # no app, no loop
    gw.storage.put("outputs/old/output.png", b"old", "image/png")
    gw.storage.put("outputs/new/output.png", b"new", "image/png")
    past = time.time() - 10 * 24 * 3600  # older than every try plus the retention
    os.utime(gw.storage.path("outputs/old/output.png"), (past, past))

    assert maintain_once(gw) is True
    assert maintain_once(gw) is False  # another replica (or this one) just ran it

    assert not gw.storage.exists("outputs/old/output.png")
    assert gw.storage.exists("outputs/new/output.png")
    gw.close()
