"""``portraitisr study results``: win rates with bootstrap intervals, a Bradley-Terry ranking, agreement, exclusions.

* **Who counts.** Participants who failed more than ``max_attention_failures`` attention checks are excluded, and so
  (unless ``include_incomplete``) are those who did not finish: HeadsUp counts collected questionnaires (HeadsUp, arXiv
  2510.09924, appendix: "36 questionnaires ... each questionnaire contains 58 questions"). Attention checks never count
  as votes.
* **Win rate (WR_id, WR_N).** HeadsUp, section 4.2: "The win rate of one method is the frequency it is selected as
  the best image, out of all the selections." The rates of all methods sum to 1.
* **A/B.** Per pair, the shares of "A better", "B better", "same" in a fixed (first, second) order, as AuthFace's
  Table 5 (AuthFace, arXiv 2410.09864, appendix C) reports its method against each baseline. Per method, ``AB_win`` is
  the share of its comparisons it won (ties are neither wins nor losses).
* **95% intervals.** Percentile bootstrap over participants (answers of one person are not independent, so whole
  questionnaires are resampled): ``bootstrap`` replicates drawn by ``numpy.random.default_rng(seed)``. With fewer than
  two counted participants there is nothing to resample and the bounds are NaN.
* **Bradley-Terry** (A/B studies): log-strengths by ``choix.ilsr_pairwise_dense`` (iterative Luce spectral ranking,
  the maximum-likelihood BT fit) on the matrix of wins, a tie counting half a win for each side (the usual
  treatment when a model has no tie parameter). ``bt_alpha`` adds that much to every transition rate of the LSR
  Markov chain (choix's regularisation), which keeps a method that never lost at a finite strength; our default 0.01
  is negligible next to real counts. Log-strengths are centred (mean 0); the interval comes from the same bootstrap.
* **Agreement.** Fleiss' kappa over the items rated by two or more counted participants, in the form for a varying
  number of raters per item (Gwet 2014, *Handbook of Inter-Rater Reliability*, 4th ed., section 2.3 on missing
  ratings): ``p_a`` averages each item's pairwise agreement ``sum_k r_ik (r_ik - 1) / (r_i (r_i - 1))`` over items
  with ``r_i >= 2``; chance ``p_e = sum_k pi_k^2`` with ``pi_k`` the mean over rated items of ``r_ik / r_i``. With the
  same number of raters everywhere this is exactly Fleiss' (1971) kappa (``statsmodels.stats.inter_rater
  .fleiss_kappa``, which needs equal counts; questionnaires drawn at random do not have them). Categories are the
  methods (WR) or first better / second better / same (A/B, per item and pair).
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .design import StudyDesign, load_study
from .errors import StudyFileError
from .storage import DB_FILE, AnswerRecord, Responses, StudyStore
from .win_rates import WinRateRow, write_win_rates

__all__ = ['ParticipantStatus', 'PairResult', 'BradleyTerryRow', 'StudyResults', 'load_responses', 'analyse',
           'fleiss_kappa',
           'bradley_terry', 'ab_outcome', 'write_results', 'DEFAULT_BOOTSTRAP', 'DEFAULT_BT_ALPHA']

PathLike = Union[str, 'os.PathLike[str]']

DEFAULT_BOOTSTRAP = 2000
DEFAULT_BT_ALPHA = 0.01
#: A/B answers, as stored: 0 = A better, 1 = B better, 2 = both equally good.
AB_SAME = 2


@dataclass(frozen=True)
class ParticipantStatus:
    participant: int
    questions: int
    answered: int
    attention_answered: int
    attention_failed: int
    included: bool
    reason: str


@dataclass(frozen=True)
class PairResult:
    """One A/B pair in a fixed order: how often ``first`` was better, ``second`` was better, or neither."""
    first: str
    second: str
    first_better: int
    second_better: int
    same: int

    @property
    def total(self) -> int:
        return self.first_better + self.second_better + self.same


@dataclass(frozen=True)
class BradleyTerryRow:
    method: str
    rank: int
    log_strength: float
    ci_low: float
    ci_high: float


@dataclass
class StudyResults:
    """What :func:`analyse` finds; :func:`write_results` writes it."""
    title: str
    kind: str
    metric: str
    win_rates: List[WinRateRow]
    participants: List[ParticipantStatus]
    kappa: float
    kappa_items: int
    pairs: List[PairResult] = field(default_factory=list)
    bradley_terry: List[BradleyTerryRow] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ statistics
def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' kappa of an ``items x categories`` count table whose rows may sum to different rater counts.

    Rows with fewer than two ratings add nothing to the observed agreement; NaN when no row has two.
    See the module docstring for the formula (Gwet 2014, section 2.3).
    """
    table = np.asarray(table, dtype=np.float64)
    raters = table.sum(1)
    rated = raters >= 1
    pairs = raters >= 2
    if not pairs.any():
        return float('nan')
    r = raters[pairs]
    p_a = float(np.mean((table[pairs] * (table[pairs] - 1)).sum(1) / (r * (r - 1))))
    pi = (table[rated] / raters[rated, None]).mean(0)
    p_e = float((pi ** 2).sum())
    if p_e >= 1.0:  # every rating in one category: agreement is perfect but kappa is undefined
        return float('nan')
    return (p_a - p_e) / (1.0 - p_e)


def bradley_terry(wins: np.ndarray, alpha: float = DEFAULT_BT_ALPHA) -> np.ndarray:
    """Centred BT log-strengths from ``wins[i, j]`` = how often ``i`` beat ``j`` (ties already split in halves)."""
    import choix  # a dependency of A/B analyses only

    params = choix.ilsr_pairwise_dense(np.asarray(wins, dtype=np.float64), alpha=alpha)
    return params - params.mean()


def ab_outcome(answer: AnswerRecord) -> Tuple[str, str, int]:
    """``(first, second, outcome)`` of an A/B answer in the pair's canonical (sorted) order: outcome 0 = first
    better, 1 = second better, 2 = same."""
    a, b = answer.labels
    if answer.choice == AB_SAME:
        outcome = 2
    else:
        winner = (a, b)[answer.choice]
        outcome = 0 if winner == min(a, b) else 1
    return min(a, b), max(a, b), outcome


def _percentile_interval(samples: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """2.5 and 97.5 percentiles per column, over the replicates that are defined (not NaN)."""
    with np.errstate(invalid='ignore'), warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # an all-NaN column stays NaN
        return np.nanpercentile(samples, 2.5, axis=0), np.nanpercentile(samples, 97.5, axis=0)


# ------------------------------------------------------------------------------------------------ analysis
def _statuses(design: StudyDesign, responses: Responses, max_attention_failures: int,
              include_incomplete: bool) -> List[ParticipantStatus]:
    checks: Dict[int, List[bool]] = {}
    for answer in responses.answers:
        if answer.kind == 'attention':
            checks.setdefault(answer.participant, []).append(answer.choice == answer.correct)
    statuses = []
    for p in responses.participants:
        results = checks.get(p.number, [])
        failed = results.count(False)
        if failed > max_attention_failures:
            included, reason = False, f'failed {failed} of {len(results)} attention checks'
        elif p.answered == 0:
            included, reason = False, 'answered nothing'
        elif not p.complete and not include_incomplete:
            included, reason = False, f'incomplete ({p.answered} of {p.questions})'
        else:
            included, reason = True, ''
        statuses.append(ParticipantStatus(p.number, p.questions, p.answered, len(results), failed, included, reason))
    return statuses


def load_responses(study_dir: PathLike, db_path: Optional[PathLike] = None) -> Tuple[StudyDesign, Responses]:
    """The design of a study folder and the answers collected so far (``db_path``, default
    ``<study_dir>/responses.sqlite``), the inputs of :func:`analyse`.

    Raises:
        StudyFileError: not a study folder, no answers yet, or a database of another study.
    """
    design, fingerprint = load_study(study_dir)
    db = Path(db_path) if db_path else Path(study_dir) / DB_FILE
    if not db.is_file():
        raise StudyFileError(f'no answers yet: {db} does not exist (serve the study first, or give --db)')
    store = StudyStore(db, fingerprint)
    try:
        return design, store.responses()
    finally:
        store.close()


def analyse(design: StudyDesign, responses: Responses, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
            max_attention_failures: int = 0, include_incomplete: bool = False,
            bt_alpha: float = DEFAULT_BT_ALPHA) -> StudyResults:
    """Analyse the answers of a study (see the module docstring for every definition).

    Args:
        design: the study.
        responses: its stored answers (:meth:`StudyStore.responses`).
        bootstrap: bootstrap replicates for the 95% intervals (0: no intervals).
        seed: seed of the bootstrap.
        max_attention_failures: participants failing more attention checks are excluded.
        include_incomplete: also count participants who did not finish.
        bt_alpha: Bradley-Terry regularisation (A/B studies).
    """
    if bootstrap < 0:
        raise ValueError(f'bootstrap must be >= 0, got {bootstrap}')
    statuses = _statuses(design, responses, max_attention_failures, include_incomplete)
    included = [s.participant for s in statuses if s.included]
    row_of = {p: i for i, p in enumerate(included)}
    votes = [a for a in responses.answers if a.kind == 'question' and a.participant in row_of]
    methods = list(design.methods)
    column = {m: j for j, m in enumerate(methods)}
    n_p, n_m = len(included), len(methods)
    rng = np.random.default_rng(seed)
    # Bootstrap over participants as multinomial weights: replicate b counts participant i weights[b, i] times.
    weights = (rng.multinomial(n_p, np.full(n_p, 1.0 / n_p), size=bootstrap).astype(np.float64)
               if n_p >= 2 and bootstrap > 0 else None)
    metric = design.study_kind.metric
    settings = dict(bootstrap=bootstrap, seed=seed, max_attention_failures=max_attention_failures,
                    include_incomplete=include_incomplete, participants_counted=n_p, votes=len(votes))

    if design.kind != 'ab':
        picked = np.zeros((n_p, n_m))
        for a in votes:
            picked[row_of[a.participant], column[a.labels[a.choice]]] += 1
        totals = picked.sum(1)
        rates = picked.sum(0) / max(totals.sum(), 1)
        low = high = np.full(n_m, np.nan)
        if weights is not None:
            with np.errstate(invalid='ignore', divide='ignore'):  # a replicate of participants without votes: NaN
                low, high = _percentile_interval((weights @ picked) / (weights @ totals)[:, None])
        rows = [WinRateRow(design.title, metric, m, float(rates[j]) if totals.sum() else float('nan'),
                           float(low[j]), float(high[j]), int(picked[:, j].sum()), int(totals.sum()), n_p)
                for j, m in enumerate(methods)]
        table: Dict[str, np.ndarray] = {}
        for a in votes:
            table.setdefault(a.item, np.zeros(n_m))[column[a.labels[a.choice]]] += 1
        counts = np.array(list(table.values())) if table else np.zeros((0, n_m))
        return StudyResults(design.title, design.kind, metric, rows, statuses,
                            fleiss_kappa(counts) if len(counts) else float('nan'), int((counts.sum(1) >= 2).sum()),
                            settings=settings)

    # A/B: per participant, wins / losses / ties of each method, and half-split win matrices for Bradley-Terry.
    wins = np.zeros((n_p, n_m))
    appearances = np.zeros((n_p, n_m))
    matrix = np.zeros((n_p, n_m, n_m))
    pair_counts: Dict[Tuple[str, str], List[int]] = {}
    subjects: Dict[Tuple[str, str, str], np.ndarray] = {}
    for a in votes:
        first, second, outcome = ab_outcome(a)
        i, f, s = row_of[a.participant], column[first], column[second]
        appearances[i, [f, s]] += 1
        if outcome == 2:
            matrix[i, f, s] += 0.5
            matrix[i, s, f] += 0.5
        else:
            winner, loser = (f, s) if outcome == 0 else (s, f)
            wins[i, winner] += 1
            matrix[i, winner, loser] += 1
        pair_counts.setdefault((first, second), [0, 0, 0])[outcome] += 1
        subjects.setdefault((a.item, first, second), np.zeros(3))[outcome] += 1
    total_appearances = appearances.sum(0)
    with np.errstate(invalid='ignore', divide='ignore'):
        rates = wins.sum(0) / total_appearances
    low = high = np.full(n_m, np.nan)
    bt_low = bt_high = np.full(n_m, np.nan)
    strengths = bradley_terry(matrix.sum(0), bt_alpha) if votes else np.full(n_m, np.nan)
    if weights is not None:
        with np.errstate(invalid='ignore', divide='ignore'):
            low, high = _percentile_interval((weights @ wins) / (weights @ appearances))
        replicates = np.stack([bradley_terry(np.tensordot(w, matrix, axes=1), bt_alpha) for w in weights])
        bt_low, bt_high = _percentile_interval(replicates)
    rows = [WinRateRow(design.title, metric, m, float(rates[j]), float(low[j]), float(high[j]), int(wins[:, j].sum()),
                       int(total_appearances[j]), n_p) for j, m in enumerate(methods)]
    order = np.argsort(-strengths, kind='stable')
    bt_rows = [BradleyTerryRow(methods[j], rank + 1, float(strengths[j]), float(bt_low[j]), float(bt_high[j]))
               for rank, j in enumerate(order)]
    pairs = []
    for a, b in design.pairs:
        first, second = min(a, b), max(a, b)
        c = pair_counts.get((first, second), [0, 0, 0])
        # Report in the design's order (A/B reference method first, as AuthFace's Table 5 does).
        pairs.append(PairResult(a, b, *((c[0], c[1]) if a == first else (c[1], c[0])), c[2]))
    counts = np.array(list(subjects.values())) if subjects else np.zeros((0, 3))
    settings['bt_alpha'] = bt_alpha
    return StudyResults(design.title, design.kind, metric, rows, statuses,
                        fleiss_kappa(counts) if len(counts) else float('nan'), int((counts.sum(1) >= 2).sum()),
                        pairs=pairs, bradley_terry=bt_rows, settings=settings)


# ------------------------------------------------------------------------------------------------ output
def _number(value: float) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_results(results: StudyResults, folder: PathLike, plot: bool = True) -> List[Path]:
    """Write ``win_rates.csv`` (the file ``tools/test.py --user-study`` merges into Table 2), ``participants.csv``,
    ``summary.json``, for A/B studies ``pairs.csv`` and ``bradley_terry.csv``, and ``win_rates.png``.

    Returns the paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_win_rates(folder / 'win_rates.csv', results.win_rates)]
    path = folder / 'participants.csv'
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['participant', 'questions', 'answered', 'attention_answered', 'attention_failed', 'included',
                         'reason'])
        for s in results.participants:
            writer.writerow([s.participant, s.questions, s.answered, s.attention_answered, s.attention_failed,
                             int(s.included), s.reason])
    paths.append(path)
    if results.pairs:
        path = folder / 'pairs.csv'
        with open(path, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['first', 'second', 'first_better', 'second_better', 'same', 'total', 'first_better_rate',
                             'second_better_rate', 'same_rate'])
            for p in results.pairs:
                n = max(p.total, 1)
                writer.writerow([p.first, p.second, p.first_better, p.second_better, p.same, p.total,
                                 f'{p.first_better / n:.6f}', f'{p.second_better / n:.6f}', f'{p.same / n:.6f}'])
        paths.append(path)
    if results.bradley_terry:
        path = folder / 'bradley_terry.csv'
        with open(path, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['rank', 'method', 'log_strength', 'ci_low', 'ci_high'])
            for r in results.bradley_terry:
                writer.writerow([r.rank, r.method] + ['' if math.isnan(v) else f'{v:.6f}'
                                                      for v in (r.log_strength, r.ci_low, r.ci_high)])
        paths.append(path)
    summary = dict(title=results.title, kind=results.kind, metric=results.metric,
                   fleiss_kappa=_number(results.kappa), kappa_items=results.kappa_items,
                   participants=len(results.participants),
                   participants_counted=sum(s.included for s in results.participants),
                   excluded={str(s.participant): s.reason for s in results.participants if not s.included},
                   win_rates={r.method: dict(value=_number(r.value), ci_low=_number(r.ci_low),
                                             ci_high=_number(r.ci_high)) for r in results.win_rates},
                   pairs=[asdict(p) for p in results.pairs],
                   bradley_terry=[{k: _number(v) for k, v in asdict(r).items()} for r in results.bradley_terry],
                   settings=results.settings)
    path = folder / 'summary.json'
    path.write_text(json.dumps(summary, indent=1) + '\n', encoding='utf-8')
    paths.append(path)
    if plot:
        from .plots import plot_results  # matplotlib: only when a plot is asked for

        paths.append(plot_results(results, folder / 'win_rates.png'))
    return paths
