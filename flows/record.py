"""Flow runs for the record when `adaptflow run` found the spec up to date (flows.cmd_run): at once
with a server up, else later from the runs `flows.unrecorded` noted."""

from __future__ import annotations

from prefect import flow

from flows.names import spec_run_name
from flows.unrecorded import claim_noted


@flow(name="adapt", flow_run_name=spec_run_name, log_prints=True)
def adapt_unchanged(spec_path: str, ref: str, noted_at: str | None = None) -> str:
    """Every stage of the spec is stored and `ref` already holds their result: nothing runs.

    Args:
        spec_path: The spec that was run.
        ref: The registered version that already holds its result.
        noted_at: When the run happened, if it is recorded later (no server was up then).
    """
    when = f" (run at {noted_at}, recorded now)" if noted_at else ""
    print(f"up to date: {ref}, nothing ran{when}")
    return ref


def record_noted() -> int:
    """Record the noted runs on the server in use now; returns how many. Claims the ledger first
    (a rename), so two commands never record the same run twice."""
    with claim_noted() as rows:
        for row in rows:
            adapt_unchanged(row["spec_path"], row["ref"], row["noted_at"])
    return len(rows)
