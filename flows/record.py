"""Flow runs for the record when `adaptflow run` found the spec up to date (flows.cmd_run).

Recorded through Prefect's REST API (three small requests, no Prefect import: ~0.1 s instead of the
3-5 s of importing Prefect and running its flow engine for a flow that does nothing): an `adapt`
flow run named after the spec, Completed, with the `up to date` line in its logs. With no server up,
the run is noted (flows.unrecorded) and recorded here by the next command that has one.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from typing import Any

from flows.names import spec_name
from flows.unrecorded import claim_noted


def _post(api: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(api.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def record_unchanged(api: str, spec_path: str, ref: str, noted_at: str | None = None) -> str:
    """Create the Completed `adapt` flow run and its log line; returns the flow run id."""
    line = f"up to date: {ref}, nothing ran" + (f" (run at {noted_at}, recorded later)" if noted_at else "")
    flow = _post(api, "/flows/", {"name": "adapt"})  # the existing flow of that name, or a new one
    run = _post(api, "/flow_runs/", {
        "flow_id": flow["id"], "name": spec_name(spec_path), "tags": ["up-to-date"],
        "parameters": {"spec_path": spec_path, "ref": ref},
        "state": {"type": "COMPLETED", "name": "Completed", "message": line},
    })
    _post(api, "/logs/", [{"name": "prefect.flow_runs", "level": 20, "message": line, "flow_run_id": run["id"],
                           "timestamp": datetime.now(UTC).isoformat()}])
    return run["id"]


def record_noted(api: str) -> int:
    """Record the runs noted while no server was up; returns how many."""
    with claim_noted() as rows:
        for row in rows:
            record_unchanged(api, row["spec_path"], row["ref"], row["noted_at"])
    return len(rows)
