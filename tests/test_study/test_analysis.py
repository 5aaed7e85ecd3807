"""Study results: win rates against hand counts, exclusions, bootstrap intervals, Fleiss' kappa against statsmodels
and published values, Bradley-Terry against a hand MM fit, the CSV that Table 2 merges, ``portraitisr study
results``."""
import csv
import json

import numpy as np
import pytest

from portraitisr.study.analysis import analyse, bradley_terry, fleiss_kappa, write_results
from portraitisr.study.create import create_study
from portraitisr.study.design import draw_questionnaire, load_study
from portraitisr.study.storage import AnswerRecord, ParticipantRecord, Responses, StudyStore
from portraitisr.study.win_rates import WinRateRow, read_win_rates, write_win_rates

from tests.helpers.study_data import METHODS, make_restored_folders

pytest.importorskip('choix', reason='choix is missing: pip install -e ".[study]"')


@pytest.fixture(scope='module')
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp('studies')
    folders, gt = make_restored_folders(root / 'restored', count=6, size=32)
    wr = create_study(root / 'wr', 'wr_id', folders, gt=gt, questions=4, attention_checks=1, seed=1)
    ab = create_study(root / 'ab', 'ab', folders, questions=6, attention_checks=1, seed=1, ab_reference='headsupzz')
    return root, wr, ab


def _record(participant, position, labels, choice, kind='question', correct=None, item='x'):
    return AnswerRecord(participant, position, kind, item, tuple(labels), choice, correct, 0.0)


# ------------------------------------------------------------------------------------------------ statistics
def test_fleiss_kappa_equals_statsmodels_and_the_published_example():
    inter_rater = pytest.importorskip('statsmodels.stats.inter_rater',
                                      reason='statsmodels is missing: pip install -e ".[dev]"')
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa = 0.210.
    example = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(example) == pytest.approx(0.20993, abs=5e-6)
    rng = np.random.default_rng(0)
    for raters in (2, 3, 7):
        table = np.stack([rng.multinomial(raters, rng.dirichlet(np.ones(4))) for _ in range(30)])
        assert fleiss_kappa(table) == pytest.approx(inter_rater.fleiss_kappa(table), abs=1e-12)


def test_fleiss_kappa_with_a_varying_number_of_raters():
    # Worked by hand (Gwet's form): p_a = (1 + 0 + 1) / 3; pi = mean([1, 0], [.5, .5], [1, 0]) = [5/6, 1/6];
    # p_e = 26/36; kappa = (24/36 - 26/36) / (10/36) = -0.2. The single-rater row only enters pi.
    assert fleiss_kappa(np.array([[2, 0], [1, 1], [3, 0]])) == pytest.approx(-0.2, abs=1e-12)
    assert fleiss_kappa(np.array([[2, 0], [1, 1], [3, 0], [0, 1]])) == pytest.approx(
        (2 / 3 - ((1 + 0.5 + 1 + 0) / 4) ** 2 - ((0.5 + 1) / 4) ** 2) / (1 - (2.5 / 4) ** 2 - (1.5 / 4) ** 2))
    assert np.isnan(fleiss_kappa(np.array([[1, 0], [0, 1]])))  # nobody rated an item twice


def _hand_bradley_terry(wins, iterations=20000):
    """Hunter (2004), Ann. Statist. 32(1), eq. (3): p_i <- W_i / sum_j n_ij / (p_i + p_j), normalised."""
    n = wins + wins.T
    p = np.ones(len(wins))
    for _ in range(iterations):
        p = wins.sum(1) / (n / (p[:, None] + p[None, :])).sum(1)
        p /= p.sum()
    log = np.log(p)
    return log - log.mean()


def test_bradley_terry_is_the_maximum_likelihood_fit():
    wins = np.array([[0, 7, 9.5, 4], [3, 0, 6, 2.5], [1.5, 4, 0, 1], [6, 7.5, 9, 0]])  # halves: ties split
    np.testing.assert_allclose(bradley_terry(wins, alpha=0.0), _hand_bradley_terry(wins), atol=1e-6)
    # The default regularisation moves real counts by little, and keeps a method that never lost finite.
    np.testing.assert_allclose(bradley_terry(wins), _hand_bradley_terry(wins), atol=0.01)
    unbeaten = np.array([[0, 5, 5], [0, 0, 3], [0, 2, 0]], dtype=float)
    strengths = bradley_terry(unbeaten)
    assert np.isfinite(strengths).all() and strengths.argmax() == 0 and strengths.sum() == pytest.approx(0)


# ------------------------------------------------------------------------------------------------ analysis
def test_win_rates_are_the_share_of_selections_of_counted_participants(studies):
    _, design, _ = studies
    methods = list(METHODS)
    participants = [ParticipantRecord(n, 5, 5, 0.0, 1.0) for n in (1, 2, 3, 4)] + [ParticipantRecord(5, 5, 2, 0, None)]
    answers = []
    picks = {1: [0, 0, 1, 2], 2: [0, 1, 1, 1], 3: [2, 2, 2, 2], 4: [0, 0, 0, 0], 5: [1, 1]}
    for p, chosen in picks.items():
        for position, choice in enumerate(chosen):
            answers.append(_record(p, position, methods, choice, item=f'{position:04d}'))
        # Participant 3 fails the attention check; the others pass.
        answers.append(_record(p, 4, ['@clean', '@blur', '@pixelate'], 1 if p == 3 else 0, 'attention', 0))
    results = analyse(design, Responses(participants, answers), bootstrap=0)
    assert [(s.participant, s.included, s.reason) for s in results.participants] == [
        (1, True, ''), (2, True, ''), (3, False, 'failed 1 of 1 attention checks'), (4, True, ''),
        (5, False, 'incomplete (2 of 5)')]
    counted = [c for p in (1, 2, 4) for c in picks[p]]
    for row in results.win_rates:
        j = methods.index(row.method)
        assert row.metric == 'WR_id' and row.participants == 3 and row.answers == 12
        assert row.selections == counted.count(j) and row.value == pytest.approx(counted.count(j) / 12)
        assert np.isnan(row.ci_low)  # no bootstrap asked for
    assert sum(r.value for r in results.win_rates) == pytest.approx(1)
    # Options: count unfinished questionnaires; allow one failed check.
    loose = analyse(design, Responses(participants, answers), bootstrap=0, include_incomplete=True,
                    max_attention_failures=1)
    assert all(s.included for s in loose.participants) and loose.win_rates[0].answers == 18
    # Agreement over items rated twice or more: item 0000 got (0, 0, 0) -> methods[0] three times, etc.
    table = np.zeros((4, 3))
    for p in (1, 2, 4):
        for position, choice in enumerate(picks[p]):
            table[position, choice] += 1
    assert results.kappa == pytest.approx(fleiss_kappa(table)) and results.kappa_items == 4


def test_bootstrap_intervals_resample_whole_participants(studies):
    _, design, _ = studies
    methods = list(METHODS)
    # Two participants: one always picks methods[0], the other methods[1]. Resampling the two gives 0, 1/2 or 1
    # with probabilities 1/4, 1/2, 1/4, so the 95% interval of either rate is [0, 1].
    participants = [ParticipantRecord(n, 4, 4, 0.0, 1.0) for n in (1, 2)]
    answers = [_record(p, k, methods, p - 1, item=f'{k:04d}') for p in (1, 2) for k in range(4)]
    results = analyse(design, Responses(participants, answers), bootstrap=4000, seed=3)
    first, second, third = results.win_rates
    assert (first.value, first.ci_low, first.ci_high) == (0.5, 0.0, 1.0)
    assert (second.ci_low, second.ci_high) == (0.0, 1.0) and (third.value, third.ci_low, third.ci_high) == (0, 0, 0)
    # Participants who answer alike give no spread; the seed makes the intervals reproducible.
    same = [_record(p, k, methods, k % 2, item=f'{k:04d}') for p in (1, 2) for k in range(4)]
    alike = analyse(design, Responses(participants, same), bootstrap=500, seed=1)
    assert [(r.ci_low, r.ci_high) for r in alike.win_rates] == [(0.5, 0.5), (0.5, 0.5), (0.0, 0.0)]
    many = [ParticipantRecord(n, 4, 4, 0.0, 1.0) for n in range(1, 21)]
    rng = np.random.default_rng(5)
    noisy = [_record(p, k, methods, int(rng.integers(3)), item=f'{k:04d}') for p in range(1, 21) for k in range(4)]
    a = analyse(design, Responses(many, noisy), bootstrap=300, seed=7)
    b = analyse(design, Responses(many, noisy), bootstrap=300, seed=7)
    assert a.win_rates == b.win_rates
    for row in a.win_rates:
        assert row.ci_low < row.value < row.ci_high


def test_ab_results_pairs_win_rates_and_ranking(studies):
    _, _, design = studies
    ref, o, p = 'headsupzz', 'osediffzz', 'pisasrzz'
    participants = [ParticipantRecord(n, 4, 4, 0.0, 1.0) for n in (1, 2)]
    answers = [
        # participant 1: headsup beats osediff twice (once shown as B), ties with pisasr once, loses once
        _record(1, 0, [ref, o], 0, item='0000'), _record(1, 1, [o, ref], 1, item='0001'),
        _record(1, 2, [ref, p], 2, item='0000'), _record(1, 3, [p, ref], 0, item='0001'),
        # participant 2: headsup beats pisasr, osediff beats headsup, two ties
        _record(2, 0, [ref, p], 0, item='0002'), _record(2, 1, [ref, o], 1, item='0002'),
        _record(2, 2, [o, ref], 2, item='0003'), _record(2, 3, [ref, o], 2, item='0000'),
    ]
    results = analyse(design, Responses(participants, answers), bootstrap=0)
    pairs = {(r.first, r.second): (r.first_better, r.second_better, r.same) for r in results.pairs}
    assert pairs == {(ref, o): (2, 1, 2), (ref, p): (1, 1, 1)}
    rates = {r.method: (r.selections, r.answers, r.value) for r in results.win_rates}
    assert rates[ref] == (3, 8, 3 / 8) and rates[o] == (1, 5, 1 / 5) and rates[p] == (1, 3, 1 / 3)
    assert all(r.metric == 'AB_win' for r in results.win_rates)
    # Bradley-Terry on the same counts, ties as half wins.
    wins = np.zeros((3, 3))
    idx = {m: i for i, m in enumerate(design.methods)}
    wins[idx[ref], idx[o]] = 2 + 1
    wins[idx[o], idx[ref]] = 1 + 1
    wins[idx[ref], idx[p]] = 1 + 0.5
    wins[idx[p], idx[ref]] = 1 + 0.5
    expected = bradley_terry(wins, 0.01)
    assert [r.method for r in results.bradley_terry] == [design.methods[j] for j in np.argsort(-expected)]
    assert {r.method: r.log_strength for r in results.bradley_terry} == pytest.approx(
        {m: expected[idx[m]] for m in design.methods})
    # Agreement: per item and pair, first better / second better / same in the sorted order.
    assert results.kappa_items == 1  # only ('0000', headsup, osediff) was rated by both
    boot = analyse(design, Responses(participants, answers), bootstrap=200, seed=0)
    for row in boot.bradley_terry:
        assert row.ci_low <= row.log_strength <= row.ci_high


# ------------------------------------------------------------------------------------------------ files and Table 2
def test_win_rate_csv_round_trip_and_merge_into_table2(tmp_path):
    from portraitisr.evaluation.tables import ResultTables
    from portraitisr.study.table2 import merge_user_study

    wr_id = [WinRateRow('s', 'WR_id', 'headsup_sd21', 0.4, 0.35, 0.46, 40, 100, 10),
             WinRateRow('s', 'WR_id', 'osediff_sd21', 0.6, 0.54, 0.65, 60, 100, 10)]
    wr_n = [WinRateRow('n', 'WR_N', 'headsup_sd21', 0.25, float('nan'), float('nan'), 1, 4, 1)]
    write_win_rates(tmp_path / 'id.csv', wr_id)
    write_win_rates(tmp_path / 'n.csv', wr_n)
    assert read_win_rates(tmp_path / 'id.csv') == wr_id
    back = read_win_rates(tmp_path / 'n.csv')[0]
    assert np.isnan(back.ci_low) and back.value == 0.25
    tables = ResultTables()
    tables.add('portrait', 'PortraitSR-4K-Te', 'headsup_sd21', {'PSNR': 25.64})
    tables.add('general', 'RealSR', 'headsup_sd21', {'PSNR': 25.2})
    unmatched = merge_user_study(tables, [tmp_path / 'id.csv', tmp_path / 'n.csv'])
    assert unmatched == ['osediff_sd21']
    markdown = tables.to_markdown()
    assert ('| Dataset | Method | PSNR↑ | SSIM↑ | LPIPS↓ | DISTS↓ | FID↓ | NIQE↓ | MUSIQ↑ | ID-Score↑ | WR_id↑ | '
            'WR_N↑ | Seam↓ |') in markdown
    assert '| PortraitSR-4K-Te | headsup_sd21 | 25.6400 |  |  |  |  |  |  |  | 0.4000 | 0.2500 |  |' in markdown
    assert tables.rows[1][3] == {'PSNR': 25.2}  # other tables untouched
    tables.write(str(tmp_path / 'tables' / 'headsup'))
    with open(tmp_path / 'tables' / 'headsup_portrait.csv', newline='') as f:
        rows = {r['dataset']: r for r in csv.DictReader(f)}
    assert rows['PortraitSR-4K-Te']['WR_id'] == '0.4000' and rows['PortraitSR-4K-Te']['WR_N'] == '0.2500'
    # Bad inputs: twice the same metric, an A/B file, not a win-rate CSV, a missing file.
    with pytest.raises(ValueError, match="WR_id of 'headsup_sd21' is given twice"):
        merge_user_study(ResultTables(), [tmp_path / 'id.csv', tmp_path / 'id.csv'])
    write_win_rates(tmp_path / 'ab.csv', [WinRateRow('a', 'AB_win', 'x', 0.5, 0.4, 0.6, 5, 10, 2)])
    with pytest.raises(ValueError, match='has no WR_id or WR_N rows'):
        merge_user_study(ResultTables(), [tmp_path / 'ab.csv'])
    (tmp_path / 'bad.csv').write_text('dataset,method,PSNR\nx,y,1\n')
    with pytest.raises(ValueError, match='is not a win_rates.csv'):
        merge_user_study(ResultTables(), [tmp_path / 'bad.csv'])
    (tmp_path / 'bad2.csv').write_text((tmp_path / 'id.csv').read_text().replace('0.400000', 'forty'))
    with pytest.raises(ValueError, match='line 2: could not convert'):
        read_win_rates(tmp_path / 'bad2.csv')
    with pytest.raises(FileNotFoundError, match='user-study CSV .* does not exist'):
        merge_user_study(ResultTables(), [tmp_path / 'none.csv'])


def _answer_everything(store, design, participants, policy):
    """Participants ``1..n`` answer their whole questionnaire through the store; ``policy(p, question)`` picks."""
    for p in range(1, participants + 1):
        number = store.start_participant(f'token-{p}', lambda n: draw_questionnaire(design, n))
        assert number == p
        while True:
            state = store.state(p)
            question = state['question']
            if question is None:
                break
            choice = question['correct'] if question['kind'] == 'attention' else policy(p, question)
            store.record_answer(p, question['id'], choice, lambda q: design.choices(len(q['option_labels'])))


def test_study_results_on_the_command_line(studies, tmp_path, capsys):
    from PIL import Image

    from portraitisr.study.cli import main

    root, _, _ = studies
    for name in ('wr', 'ab'):
        design, fingerprint = load_study(root / name)
        store = StudyStore(tmp_path / f'{name}.sqlite', fingerprint)
        # Everyone prefers headsupzz when it is shown; in A/B, participant 2 says "same" each time.
        _answer_everything(store, design, 4, lambda p, q: (
            2 if design.kind == 'ab' and p == 2 else q['option_labels'].index('headsupzz')))
        store.close()
        out = tmp_path / f'{name}_results'
        assert main(['results', str(root / name), '--db', str(tmp_path / f'{name}.sqlite'), '-o', str(out),
                     '--bootstrap', '200']) == 0
        printed = capsys.readouterr().out
        rows = {r.method: r for r in read_win_rates(out / 'win_rates.csv')}
        summary = json.loads((out / 'summary.json').read_text())
        assert summary['participants_counted'] == 4 and summary['kind'] == design.kind
        with Image.open(out / 'win_rates.png') as im:
            assert im.size[0] >= 500
        if name == 'wr':
            assert rows['headsupzz'].value == 1.0 and rows['osediffzz'].value == 0.0 and rows['headsupzz'].answers == 16
            assert summary['fleiss_kappa'] is None  # every vote in one category: kappa undefined, written as null
            assert 'headsupzz' in printed and 'WR_id 1.000' in printed
        else:
            # headsupzz wins 3 x 6 comparisons, ties 6: AB_win = 18 / 24; each other method is in 12 of them.
            assert rows['headsupzz'].value == pytest.approx(18 / 24) and rows['osediffzz'].value == 0.0
            with open(out / 'pairs.csv', newline='') as f:
                pairs = list(csv.DictReader(f))
            assert [(r['first'], r['second']) for r in pairs] == [('headsupzz', 'osediffzz'), ('headsupzz', 'pisasrzz')]
            assert sum(int(r['first_better']) for r in pairs) == 18 and sum(int(r['same']) for r in pairs) == 6
            with open(out / 'bradley_terry.csv', newline='') as f:
                ranking = list(csv.DictReader(f))
            assert ranking[0]['method'] == 'headsupzz' and ranking[0]['rank'] == '1'
            assert 'BT rank 1: headsupzz' in printed
    # No database yet, a missing study: one line, exit status 2.
    assert main(['results', str(root / 'wr'), '--db', str(tmp_path / 'none.sqlite')]) == 2
    assert 'no answers yet' in capsys.readouterr().err
    assert main(['results', str(tmp_path)]) == 2
    assert 'is not a study folder' in capsys.readouterr().err


def test_write_results_lists_exclusions(studies, tmp_path):
    _, design, _ = studies
    participants = [ParticipantRecord(1, 5, 5, 0.0, 1.0), ParticipantRecord(2, 5, 0, 0.0, None)]
    answers = [_record(1, k, list(METHODS), 0, item=f'{k:04d}') for k in range(4)]
    paths = write_results(analyse(design, Responses(participants, answers), bootstrap=10), tmp_path, plot=False)
    assert [p.name for p in paths] == ['win_rates.csv', 'participants.csv', 'summary.json']
    with open(tmp_path / 'participants.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['participant'], r['included'], r['reason']) for r in rows] == [('1', '1', ''),
                                                                              ('2', '0', 'answered nothing')]
