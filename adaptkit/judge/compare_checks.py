"""Arguments of ``compare`` and ``advise`` checked before any work (issue 22, item 8).

Each value here reaches a library (optuna, sqlalchemy, torch's samplers, the bootstrap) that
either fails with a traceback after the data and the models were loaded, or, worse, accepts it
and reports nonsense (``[nan, nan]`` intervals, a learning rate of 0 silently replaced by the
default). So they are checked first, in pure Python and without writing beyond one
probe file, by ``adaptkit.compare()`` and by the CLI alike; the messages name the
option and the value, and say what is accepted.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Optional

from adaptkit.errors import AdaptkitError, RecipeError
from adaptkit.recipe.schema import MAX_COUNT, MAX_SEED, Recipe

# sqlalchemy (optuna's, for --storage URLs) is imported inside the check that reads such a URL:
# the other checks run without it.

# A learning rate above this diverges with every optimizer adaptkit builds (AdamW steps by about
# the rate itself); 1e308 then overflows the log-spaced search grid to inf. The recipe's own
# ``training.learning_rate`` is only asked to be positive; a search centre is asked to be sane.
MAX_LEARNING_RATE = 10.0
# A 95% percentile interval needs at least 1 / 0.05 = 20 resamples for either tail to hold one;
# with 0 resamples the percentiles of nothing are printed as [nan, nan].
MIN_BOOTSTRAP = 20
MAX_BOOTSTRAP = 1_000_000  # each resample is a tensor of the eval set's size per seed, held at once
# The pip names of the database drivers whose import name differs.
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient",
                   "pymysql": "PyMySQL", "cx_Oracle": "cx-Oracle", "pyodbc": "pyodbc"}


def check_compare_arguments(seeds: Optional[Iterable[int]] = None, sizes: Optional[Iterable[int]] = None,
                            learning_rates: Optional[Mapping[str, float]] = None, trials: Optional[int] = None,
                            validation_fraction: Optional[float] = None, bootstrap_rounds: Optional[int] = None,
                            storage: Optional[str] = None, strategies: Optional[Iterable[str]] = None,
                            edge_rates: Optional[int] = None) -> None:
    """Refuse, with the option named, any compare argument that would fail late or mislead.

    Called by ``adaptkit.compare()`` and by ``adaptkit compare`` before the recipe's data or any
    model is loaded and before the output folder is made, so a typo costs nothing and leaves
    nothing behind. ``None`` means "not given" and is not checked.
    """
    if seeds is not None:
        for seed in seeds:
            _integer("--seeds", seed, 0, MAX_SEED)
    if sizes is not None:
        for size in sizes:
            _integer("--sizes", size, 1, MAX_COUNT, "a training-set size is a number of rows, at least 1")
    if trials is not None:
        _integer("--trials", trials, 1, 1000)
    if edge_rates is not None:
        _integer("--edge-rates", edge_rates, 0, 20, "rates tried past an end of the grid; 0 tries the grid only")
    if bootstrap_rounds is not None:
        _integer("--bootstrap", bootstrap_rounds, MIN_BOOTSTRAP, MAX_BOOTSTRAP,
                 f"a 95% interval needs at least {MIN_BOOTSTRAP} resamples")
    if validation_fraction is not None:
        if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) \
                or not math.isfinite(validation_fraction) or not 0 < validation_fraction < 1:
            raise AdaptkitError(
                f"--validation-fraction: {validation_fraction!r} is not a share strictly between 0 and 1; "
                f"it is the part of each arm's rows held out to choose the learning rate (default 0.2)")
    if learning_rates:
        known = set(strategies) if strategies is not None else None
        for name, rate in learning_rates.items():
            check_learning_rate(name, rate, known)
    if storage is not None:
        check_storage(storage)


def check_pretrained(recipe: Recipe) -> None:
    """Refuse a recipe that names no pretrained weights: ``compare`` judges pretraining.

    Its verdicts ask whether the pretrained model beats the same architecture from random weights
    (``scratch``) and a model trained without pretraining (the baselines). A model built from
    ``model.config``, or loaded with ``model.init: random``, has no pretraining: every arm starts
    from random weights, ``scratch`` is a second random draw of the same thing, and a "negative
    transfer" between them was noise reported as a finding. Refused rather than run with the
    verdict dropped: what would remain (strategies from random weights against the baselines) is
    a table of training runs, which ``adaptkit run`` gives per strategy without the search's cost.
    """
    model = recipe.model
    if model.config is not None:
        where, what = recipe.where("model", "config"), "the model is built from model.config (random weights)"
    elif model.init == "random":
        where, what = recipe.where("model", "init"), "model.init is random"
    else:
        return
    raise RecipeError(
        f"{where}: compare judges pretraining (does the pretrained model beat the same architecture from random "
        f"weights, and a model trained without pretraining?), but {what}: every arm would start from random weights "
        f"and scratch would be a second random initialisation, so there is no transfer to judge. Name the pretrained "
        f"weights in model.name (a Hub id, or a folder saved with save_pretrained), or train each strategy with "
        f"adaptkit run")


def check_learning_rate(name: str, rate: float, strategies: Optional[set] = None) -> None:
    """``--lr NAME=RATE``: a named arm and a finite rate in (0, MAX_LEARNING_RATE].

    0 used to be replaced by the strategy's suggestion without a word (a falsy ``or``); NaN,
    negative and huge rates reached optuna's grid as nan/inf.
    """
    if not name:
        raise AdaptkitError(f"--lr: expected NAME=RATE, got '={rate}' (no arm name)")
    if strategies is not None and name not in strategies:
        raise AdaptkitError(f"--lr {name}={rate}: {name!r} is not one of the compared arms "
                            f"({', '.join(sorted(strategies))})")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
            or not 0 < rate <= MAX_LEARNING_RATE:
        raise AdaptkitError(f"--lr {name}={rate}: a learning rate must be a number above 0 and at most "
                            f"{MAX_LEARNING_RATE:g}")


def check_advise_arguments(max_feature_rows: Optional[int] = None, probe_steps: Optional[int] = None) -> None:
    """``advise --max-rows`` must leave rows to fit LogME and the probe on; ``--probe-steps`` is 0 or more."""
    if max_feature_rows is not None:
        _integer("--max-rows", max_feature_rows, 2, MAX_COUNT,
                 "LogME and the probe need at least 2 rows (one per fold side)")
    if probe_steps is not None:
        _integer("--probe-steps", probe_steps, 0, 1000)


def check_storage(url: str) -> None:
    """An Optuna storage URL that optuna can open: parsed, a known dialect, its driver installed,
    and for SQLite a database file whose folder exists and can be written.

    Optuna hands the string to SQLAlchemy only when the first study is created, after the data
    and the first model are loaded, and on failure left a manifest-only output folder behind.
    """
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    except ImportError:
        raise AdaptkitError(f"--storage {url!r}: an Optuna database needs SQLAlchemy: "
                            f"pip install sqlalchemy") from None
    example = "e.g. sqlite:///sweep.db or postgresql://user@host/db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise AdaptkitError(f"--storage {url!r} is not a database URL ({example}): {exc}") from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise AdaptkitError(f"--storage {url!r}: unknown database kind {parsed.drivername!r} "
                            f"(sqlite, postgresql, mysql, ...; {example})") from None
    try:
        importer = getattr(dialect, "import_dbapi", None) or dialect.dbapi
        importer()
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        package = DRIVER_PACKAGES.get(missing, missing)
        raise AdaptkitError(f"--storage {url!r}: the {parsed.drivername} driver is not installed "
                            f"(cannot import {missing}): pip install {package}") from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(url, parsed.database)


def _check_sqlite_file(url: str, database: Optional[str]) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise AdaptkitError(f"--storage {url!r}: the folder {folder} of the SQLite database does not exist")
    if path.is_dir():
        raise AdaptkitError(f"--storage {url!r}: {path} is a folder, not an SQLite database file")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise AdaptkitError(f"--storage {url!r}: the SQLite database {path} cannot be written")
    # SQLite writes a journal next to the database, so the folder must take a new file even when the
    # database exists; a real probe, as os.access says yes to root on a read-only mount.
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".adaptkit-probe-"):
            pass
    except OSError as exc:
        raise AdaptkitError(f"--storage {url!r}: cannot write in {folder}, the folder of the SQLite "
                            f"database ({exc.strerror or exc}; SQLite keeps its journal there)") from None


def _integer(option: str, value: object, low: int, high: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AdaptkitError(f"{option}: {value!r} is out of range; expected a whole number from "
                            f"{low:,} to {high:,}" + (f" ({why})" if why else ""))
