"""Score many cases (in parallel) and write ``metrics.json``.

Cases run in a process pool sized by :func:`evaluation.workers.plan_workers` (CPUs and the
container's memory; ``--workers`` or ``GRAND_CHALLENGE_MAX_WORKERS`` override it); with one
worker, or one case, they run inline. A case that fails is recorded by the scorer; a worker that dies (e.g. killed
for memory) is recorded as an error for its case. Neither stops the other cases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.aggregate import aggregate
from evaluation.score import ERROR, CaseFiles, empty_record, score_case_problems
from evaluation.workers import available_cpus, retain_freed_memory
from spine.image import write_text_atomic

__all__ = ["evaluate_cases", "metrics_document", "safe_key", "write_metrics"]

log = logging.getLogger(__name__)


def evaluate_cases(cases: Sequence[CaseFiles], workers: int, *, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Records of all cases, ``{case id: record}`` sorted by case id.

    One warning line on stderr per case with a problem an organiser must see (missing or
    unreadable prediction, missing, unreadable or invalid points, a resampled prediction,
    a failure: :data:`evaluation.score.PROBLEMS`), naming the case and its problems;
    ``metrics.json`` has the whole story. The progress bar shows only on a terminal.
    """
    workers = max(1, min(int(workers), len(cases)))
    records: dict[str, dict[str, Any]] = {}
    with _progress(len(cases), progress) as advance:
        if workers == 1:
            threads = available_cpus()[0]  # one case at a time: a distance transform may take every core
            for case in cases:
                records[case.case_id] = _warned(case.case_id, *score_case_problems(case, threads))
                advance()
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            log.debug("scoring %d cases in %d processes", len(cases), workers)
            # workers reuse one case's memory for the next (no page faults), whatever the start method
            with ProcessPoolExecutor(max_workers=workers, initializer=retain_freed_memory) as pool:
                futures = {pool.submit(score_case_problems, case): case for case in cases}
                for future in as_completed(futures):
                    case = futures[future]
                    try:
                        record, problems = future.result()
                    except Exception as error:  # the worker process itself died
                        reason = f"{ERROR}: worker failed: {type(error).__name__}: {error}"[:300]
                        record, problems = empty_record(reason), (reason,)
                    records[case.case_id] = _warned(case.case_id, record, problems)
                    advance()
    return {case_id: records[case_id] for case_id in sorted(records)}


@contextlib.contextmanager
def _progress(total: int, wanted: bool) -> Iterator[Any]:
    """A progress bar's ``update`` on a terminal (log lines printed clear of it); a no-op
    elsewhere, without importing tqdm (a log file gets no bar, the run no import time)."""
    if not (wanted and sys.stderr.isatty()):
        yield lambda: None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, desc="cases", unit="case", leave=False) as bar:
        yield bar.update


def _warned(case_id: str, record: dict[str, Any], problems: Sequence[str]) -> dict[str, Any]:
    """``record``, after one warning line naming the case and its problems, when it has any."""
    if problems:
        log.warning("%s: %s", case_id, "; ".join(p.replace("\n", " ") for p in problems))
    return record


def safe_key(key: str) -> str:
    """A JSON key without dots (GC reads dotted paths): ``.`` -> ``_``."""
    return key.replace(".", "_")


def metrics_document(
    records: Mapping[str, Mapping[str, Any]],
    unmatched: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """``{"case": {...}, "aggregates": {...}, "unmatched_predictions": [...]}`` with dot-free keys."""
    cases: dict[str, Any] = {}
    for case_id, record in records.items():
        key = safe_key(case_id)
        if key != case_id:
            log.warning("case id %r written as %r (keys hold no dots)", case_id, key)
        cases[key] = dict(record)
    return {"case": cases, "aggregates": aggregate(cases), "unmatched_predictions": [dict(u) for u in unmatched]}


def write_metrics(path: str | os.PathLike[str], document: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` atomically; raises ValueError before writing anything non-finite."""
    text = json.dumps(document, indent=2, allow_nan=False, sort_keys=False)
    return write_text_atomic(path, text + "\n")
