"""Scheduled runs: the deployments ``eegmi serve`` serves and ``eegmi deployments`` lists.

Two deployments of the ``ingest-inbox`` flow watch one inbox folder and one run folder:

``nightly-ingest`` (default 02:00 every day)
    Stores the recordings that arrived since the last run, encodes them with the run's models
    and rewrites the report. No training.
``weekly-retrain`` (default 03:00 on Sundays)
    The same, then fits split, normalisation, β-VAE and LSTM again on everything stored.

Both hold the run folder while they run (:func:`pipeline.store.runlock.run_lock`), so when they
overlap the later one waits. Declaring the deployments (:func:`deployment_specs`) starts
nothing and needs no Prefect server; :func:`serve_deployments` registers them with the Prefect
API (``PREFECT_API_URL``, or a temporary local server) and runs each scheduled run in a
subprocess until interrupted. Declared without folders, the deployments can be listed with
their defaults (``eegmi deployments`` with no arguments) but not served.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.errors import InputError

INBOX_FLOW = "ingest-inbox"
NIGHTLY_INGEST = "nightly-ingest"
WEEKLY_RETRAIN = "weekly-retrain"
DEFAULT_NIGHTLY_CRON = "0 2 * * *"
DEFAULT_WEEKLY_CRON = "0 3 * * 0"
# A file changed in the last five minutes may still be being copied; the next run takes it.
DEFAULT_SETTLE_SECONDS = 300.0
_NIGHTLY_DOES = "store new inbox recordings, encode them with the run's models, rewrite the report"
_WEEKLY_DOES = "store new inbox recordings, then retrain the β-VAE and the LSTM on everything"


@dataclass(frozen=True)
class FolderNotChosen:
    """A folder parameter left open in a listing; shown as the option that sets it."""

    option: str

    def __repr__(self) -> str:
        return f"<set by {self.option} DIR>"


@dataclass(frozen=True)
class DeploymentSpec:
    """One scheduled deployment, declared without touching Prefect.

    Attributes
    ----------
    name : str
        Deployment name; Prefect shows it as ``<flow name>/<name>``.
    flow_name : str
        The flow it runs.
    cron : str
        Five-field cron expression.
    timezone : str
        IANA zone the cron expression is read in.
    parameters : dict
        The flow's parameters for every scheduled run.
    description : str
        One line for ``eegmi deployments`` and the Prefect UI.
    """

    name: str
    flow_name: str
    cron: str
    timezone: str
    parameters: dict = field(default_factory=dict)
    description: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    def next_runs(self, n: int = 1, after: datetime | None = None) -> list[datetime]:
        """The next ``n`` times the schedule fires (in its timezone), computed locally."""
        from prefect.server.schemas.schedules import CronSchedule

        schedule = CronSchedule(cron=self.cron, timezone=self.timezone)
        return list(asyncio.run(schedule.get_dates(n=n, start=after)))


def _check_cron(cron: str, name: str) -> str:
    from prefect.schedules import Cron

    if not isinstance(cron, str):
        raise InputError(name, f"must be a cron expression, got {type(cron).__name__}")
    try:
        return Cron(cron).cron
    except ValueError as err:
        raise InputError(name, f"{cron!r} is not a valid cron expression") from err


def _check_timezone(timezone: str) -> str:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as err:
        raise InputError("timezone", f"{timezone!r} is not an IANA time zone such as Europe/Berlin") from err
    return timezone


def _folder_parameter(value: str | os.PathLike | None, option: str) -> str | FolderNotChosen:
    if value is None:
        return FolderNotChosen(option)
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise InputError(option, f"must be a folder path, got {value!r}")
    if "://" in os.fspath(value):
        raise InputError(option, f"{os.fspath(value)!r}: scheduled runs need local folders")
    return str(Path(value).absolute())


def deployment_specs(
    inbox_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike | None,
    *,
    nightly_cron: str = DEFAULT_NIGHTLY_CRON,
    weekly_cron: str = DEFAULT_WEEKLY_CRON,
    timezone: str = "UTC",
    interpolate_missing: bool = False,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
) -> list[DeploymentSpec]:
    """Declare the nightly ingest and the weekly retrain of ``inbox_dir`` into ``out_dir``.

    Paths are made absolute, since scheduled runs may start in another working directory. A
    folder given as None stays open (:class:`FolderNotChosen`): such specs list the deployments
    with their defaults, but cannot be built or served.

    Returns
    -------
    list of DeploymentSpec
        ``nightly-ingest`` then ``weekly-retrain``.

    Raises
    ------
    InputError
        For an invalid cron expression, time zone or settle time, or an ``out_dir`` that is a URL.
    """
    folders = {
        "inbox_dir": _folder_parameter(inbox_dir, "--inbox"),
        "out_dir": _folder_parameter(out_dir, "--out"),
    }
    if not isinstance(settle_seconds, int | float) or settle_seconds < 0:
        raise InputError("settle_seconds", f"must be a number >= 0, got {settle_seconds!r}")
    timezone = _check_timezone(timezone)
    common = {
        **folders,
        "interpolate_missing": bool(interpolate_missing),
        "settle_seconds": float(settle_seconds),
    }
    schedules = (
        (NIGHTLY_INGEST, nightly_cron, "--nightly", False, _NIGHTLY_DOES),
        (WEEKLY_RETRAIN, weekly_cron, "--weekly", True, _WEEKLY_DOES),
    )
    return [
        DeploymentSpec(
            name=name,
            flow_name=INBOX_FLOW,
            cron=_check_cron(cron, option),
            timezone=timezone,
            parameters={**common, "retrain": retrain},
            description=description,
        )
        for name, cron, option, retrain, description in schedules
    ]


def build_deployments(specs: list[DeploymentSpec]):
    """Prefect ``RunnerDeployment`` objects for ``specs`` (nothing is registered or started).

    The flow is referenced by module path (``flows.ingest.ingest_inbox``), so the runs find it
    from any working directory where eegmi is installed.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.ingest import ingest_inbox

    flows = {INBOX_FLOW: ingest_inbox}
    deployments = []
    for spec in specs:
        if spec.flow_name not in flows:
            raise InputError(spec.full_name, f"unknown flow {spec.flow_name!r}; known: {sorted(flows)}")
        for value in spec.parameters.values():
            if isinstance(value, FolderNotChosen):
                raise InputError(spec.full_name, f"has no folder for {value.option}; give {value.option} DIR")
        deployments.append(
            flows[spec.flow_name].to_deployment(
                name=spec.name,
                schedule=Cron(spec.cron, timezone=spec.timezone),
                parameters=dict(spec.parameters),
                description=spec.description,
                tags=["eegmi"],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def serve_deployments(specs: list[DeploymentSpec], limit: int | None = None) -> None:
    """Register ``specs`` with the Prefect API and run their scheduled (or triggered) runs until interrupted.

    Parameters
    ----------
    specs : list of DeploymentSpec
        From :func:`deployment_specs`.
    limit : int, optional
        Most runs at once; runs on one run folder take turns anyway.
    """
    from prefect import serve

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError("--limit", f"must be a positive integer, got {limit!r}")
    serve(*build_deployments(specs), limit=limit)


def describe(specs: list[DeploymentSpec], now: datetime | None = None) -> str:
    """A readable listing: each deployment's schedule, next run and parameters."""
    lines = []
    for spec in specs:
        next_run = spec.next_runs(1, after=now)[0]
        lines.append(f"{spec.full_name}")
        lines.append(f"  schedule:   {spec.cron} ({spec.timezone}); next run {next_run.isoformat()}")
        lines.append(f"  does:       {spec.description}")
        for key, value in spec.parameters.items():
            lines.append(f"  parameter:  {key} = {value!r}")
    return "\n".join(lines)
