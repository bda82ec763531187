"""A run folder (``--out``): the one place that knows where each of a run's files lives.

Layout::

    OUT/
      frames.zarr/                    the frame store (frames, labels, split, statistics, latents)
      checkpoints/
        vae/                          the β-VAE of the main protocol (of the reference seed)
        vae_seed<k>/                  the β-VAE of seed k of an ensemble (``--seeds``)
        sweep/beta-<β>/               the candidates of a β sweep
        classifier.*                  the LSTM of the main protocol
        <slot>/vae/, <slot>/classifier.*   those of another protocol (``--protocol both``)
        update-in-progress.json       the update marker (:mod:`pipeline.store.runlock`)
      report.json, report.html, figures/
      inbox.json                      the inbox ledger (:mod:`pipeline.runs.recordings`)
      .eegmi-run.lock                 the run lock (:func:`pipeline.store.runlock.run_lock`)

Only the frame store may live at an fsspec URL (``eegmi preprocess``); everything else needs a
local folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError
from pipeline.store.frames import FrameStore

FRAMES_STORE_NAME = "frames.zarr"
CHECKPOINTS_DIR_NAME = "checkpoints"
VAE_DIR_NAME = "vae"
CLASSIFIER_NAME = "classifier"
REPORT_JSON_NAME = "report.json"
REPORT_HTML_NAME = "report.html"
FIGURES_DIR_NAME = "figures"
INBOX_LEDGER_NAME = "inbox.json"
UPDATE_MARKER_NAME = "update-in-progress.json"
RUN_LOCK_NAME = ".eegmi-run.lock"


def is_url(location: str) -> bool:
    """Whether ``location`` is a remote fsspec URL rather than a local path or ``file://`` URL."""
    return "://" in location and not location.startswith("file://")


def _entry(name: str, *, in_checkpoints: bool = False) -> property:
    """A run folder's fixed file or folder ``name``, in the run folder or in its ``checkpoints/``."""

    def located(run: RunFolder) -> Path:
        return (run.checkpoints if in_checkpoints else run.path) / name

    return property(located, doc=f"``{'checkpoints/' if in_checkpoints else ''}{name}`` of the run folder")


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder. Small and immutable, so it travels as a Prefect task parameter.

    Parameters
    ----------
    location : str or path-like
        A local folder, or (for the frame store alone) an fsspec URL.
    """

    location: str

    def __init__(self, location: str | os.PathLike | RunFolder):
        text = location.location if isinstance(location, RunFolder) else os.fspath(location)
        if not isinstance(text, str) or not text:
            raise InputError("--out", f"must be a folder path or URL, got {location!r}")
        object.__setattr__(self, "location", text)

    def __str__(self) -> str:
        return self.location

    def __fspath__(self) -> str:
        # So that every function taking a run folder path (locks, output errors) takes the object.
        return self.location

    @property
    def path(self) -> Path:
        """The local folder as given (a ``file://`` prefix dropped)."""
        return Path(self.location.removeprefix("file://"))

    # The frame store -------------------------------------------------------------------------

    @property
    def store_path(self) -> str:
        """The frame store: a local path, or a URL inside a remote run folder."""
        if is_url(self.location):
            return self.location.rstrip("/") + "/" + FRAMES_STORE_NAME
        return os.path.join(self.location, FRAMES_STORE_NAME)

    def open_store(self, *, writable: bool = False) -> FrameStore:
        """Open the run's existing frame store (:meth:`FrameStore.open`)."""
        return FrameStore.open(self.store_path, writable=writable)

    def n_stored(self) -> int:
        """How many trials (or images) the store holds; 0 when there is no store yet."""
        try:
            return len(self.open_store().committed_rows())
        except InputError:
            return 0

    # Checkpoints -----------------------------------------------------------------------------

    checkpoints = _entry(CHECKPOINTS_DIR_NAME)

    def classifier_dir(self, slot: str | None = None) -> Path:
        """Where a protocol slot's LSTM is saved: ``checkpoints/`` or ``checkpoints/<slot>/``."""
        return self.checkpoints if slot is None else self.checkpoints / slot

    def vae_dir(self, slot: str | None = None) -> Path:
        """The main protocol's β-VAE is in ``checkpoints/vae``, another's in ``checkpoints/<slot>/vae``."""
        return self.classifier_dir(slot) / VAE_DIR_NAME

    def seed_vae_dir(self, model_seed: int, reference_seed: int | None = None) -> Path:
        """The β-VAE of seed ``model_seed`` of an ensemble: the reference seed's (or a one-seed run's,
        ``reference_seed`` None) is ``checkpoints/vae``, seed k's ``checkpoints/vae_seed<k>``."""
        if reference_seed is None or model_seed == reference_seed:
            return self.vae_dir()
        return self.checkpoints / f"{VAE_DIR_NAME}_seed{model_seed}"

    def sweep_dir(self, beta: float) -> Path:
        """Where the β-VAE trained at ``beta`` in a β sweep stays."""
        return self.checkpoints / "sweep" / f"beta-{beta:g}"

    # Report, ledger, marker, lock ------------------------------------------------------------

    report_json = _entry(REPORT_JSON_NAME)
    report_html = _entry(REPORT_HTML_NAME)
    figures = _entry(FIGURES_DIR_NAME)
    inbox_ledger = _entry(INBOX_LEDGER_NAME)
    update_marker = _entry(UPDATE_MARKER_NAME, in_checkpoints=True)
    lock_file = _entry(RUN_LOCK_NAME)


def store_path(out_dir: str | os.PathLike) -> str:
    """Location of the frame store inside the run folder ``out_dir`` (a local path or an fsspec URL)."""
    return RunFolder(out_dir).store_path


def read_json_file(path: Path, what: str, advice: str = "") -> object | None:
    """The parsed content of the JSON file ``path``, or None when there is no such file.

    Raises
    ------
    InputError
        Naming ``path`` as not ``what`` (followed by ``advice``) when it does not parse.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # nested too deep
        raise InputError(path, f"is not {what} ({err}){advice}") from err
