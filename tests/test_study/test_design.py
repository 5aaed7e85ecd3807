"""Making studies: folder checks, the study folder (opaque, re-encoded images), questionnaire drawing, face crops,
and ``portraitisr study create`` on the command line."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from portraitisr.study.create import create_study
from portraitisr.study.design import CLEAN_LABEL, StudyFileError, draw_questionnaire, load_study, study_pool
from portraitisr.study.folders import StudyFolderError, parse_method_spec, parse_method_specs, scan_restored_folders
from portraitisr.utils.image_io import read_image, write_image

from tests.helpers.data_files import REPO_ROOT
from tests.helpers.study_data import METHODS, make_restored_folders


@pytest.fixture
def restored(tmp_path):
    return make_restored_folders(tmp_path / 'restored', count=5, size=48)


def _nothing_left(parent: Path, name: str = 'study'):
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f'.{name}.tmp')]


# ------------------------------------------------------------------------------------------------ folders
def test_scan_matches_names_without_suffix_and_reads_sizes(restored):
    folders, gt = restored
    jpg = folders['pisasrzz'] / '0003.jpg'
    write_image(jpg, read_image(folders['pisasrzz'] / '0003.png').rgb)
    (folders['pisasrzz'] / '0003.png').unlink()
    scanned = scan_restored_folders(folders, gt)
    assert scanned.names == ['0000', '0001', '0002', '0003', '0004']
    assert scanned.files['0003']['pisasrzz'] == jpg and scanned.sizes['0003'] == (48, 48)
    assert list(scanned.methods) == list(METHODS) and scanned.gt == gt


@pytest.mark.parametrize('damage, message', [
    (lambda f, gt: (f['pisasrzz'] / '0002.png').unlink(), "method 'pisasrzz' .* lacks 1 of the 5 images of @gt: 0002"),
    (lambda f, gt: write_image(f['headsupzz'] / 'extra.png', np.zeros((48, 48, 3))),
     "method 'headsupzz' .* has 1 images that @gt lacks: extra"),
    (lambda f, gt: write_image(f['osediffzz'] / '0001.png', np.zeros((48, 40, 3))),
     r"image '0001' has different sizes in the folders \(@gt 48x48, osediffzz 40x48"),
    (lambda f, gt: (f['osediffzz'] / '0004.png').write_bytes(b'not an image at all'),
     'unreadable image: cannot read image file .*0004.png'),
    (lambda f, gt: (gt / '0000.png').write_bytes(b''), 'unreadable image: .*0000.png'),
    (lambda f, gt: write_image(f['pisasrzz'] / '0001.jpg', np.zeros((48, 48, 3))),
     "method 'pisasrzz': 0001.jpg and 0001.png .* have the same name"),
    (lambda f, gt: [p.unlink() for p in gt.iterdir()], 'ground truth: .* holds no image files'),
])
def test_malformed_folders_get_a_clear_error_and_no_study(restored, tmp_path, damage, message):
    folders, gt = restored
    damage(folders, gt)
    with pytest.raises(StudyFolderError, match=message):
        create_study(tmp_path / 'study', 'wr_id', folders, gt=gt, questions=2)
    _nothing_left(tmp_path)


def test_bad_method_lists(restored, tmp_path):
    folders, gt = restored
    with pytest.raises(StudyFolderError, match='at least two methods'):
        scan_restored_folders({'a': folders['osediffzz']})
    with pytest.raises(StudyFolderError, match="method 'missing': image folder .* does not exist"):
        scan_restored_folders({'a': folders['osediffzz'], 'missing': tmp_path / 'nope'})
    with pytest.raises(StudyFolderError, match='must be 1-64 letters'):
        parse_method_spec('@gt=' + str(gt))
    assert parse_method_spec(f'ours={gt}') == ('ours', gt)
    assert parse_method_spec(str(folders['pisasrzz']) + '/') == ('pisasrzz', folders['pisasrzz'])
    assert parse_method_specs([f'ours={gt}', str(folders['pisasrzz'])]) == {'ours': gt, 'pisasrzz': folders['pisasrzz']}
    with pytest.raises(StudyFolderError, match="method name 'ours' is given twice"):
        parse_method_specs([f'ours={gt}', f'ours={folders["pisasrzz"]}'])
    with pytest.raises(StudyFolderError, match="method name 'ours' is given twice"):  # the command line's strings
        create_study(tmp_path / 'study', 'wr_n', [f'ours={gt}', f'ours={folders["pisasrzz"]}'], questions=2)
    assert not (tmp_path / 'study').exists()
    with pytest.raises(ValueError, match='shows the ground truth as the reference'):
        create_study(tmp_path / 'study', 'wr_id', folders, questions=2)
    with pytest.raises(ValueError, match='only 5 distinct questions'):
        create_study(tmp_path / 'study', 'wr_n', folders, questions=6)
    with pytest.raises(ValueError, match="reference method 'nope' is not one of"):
        create_study(tmp_path / 'study', 'ab', folders, questions=2, ab_reference='nope')
    _nothing_left(tmp_path)


def test_an_existing_study_folder_is_never_touched(restored, tmp_path):
    folders, gt = restored
    out = tmp_path / 'study'
    out.mkdir()
    (out / 'keep.txt').write_text('answers of last week')
    with pytest.raises(FileExistsError, match='choose a new study folder'):
        create_study(out, 'wr_n', folders, questions=2)
    assert [p.name for p in out.iterdir()] == ['keep.txt']


# ------------------------------------------------------------------------------------------------ the study folder
def test_images_are_reencoded_under_opaque_ids(restored, tmp_path):
    folders, gt = restored
    # A method that writes its name into the PNG (as some tools do in a text chunk).
    from PIL import Image, PngImagePlugin

    source = folders['osediffzz'] / '0000.png'
    info = PngImagePlugin.PngInfo()
    info.add_text('Software', 'osediffzz restorer v1')
    with Image.open(source) as im:
        im.save(source, pnginfo=info)
    assert b'osediffzz' in source.read_bytes()
    design = create_study(tmp_path / 'study', 'wr_id', folders, gt=gt, questions=3, attention_checks=2, seed=4)
    study = tmp_path / 'study'
    files = sorted((study / 'images').iterdir())
    # 5 items x (3 methods + GT) + 5 checks x (clean + 2 corrupted + the reference copy)
    assert len(files) == len(design.images) == 5 * 4 + 5 * 4
    for path in files:
        assert len(path.stem) == 32 and int(path.stem, 16) >= 0 and path.suffix == '.png'
        data = path.read_bytes()
        assert b'osediffzz' not in data and b'Software' not in data
    item = design.items[0]
    assert item.name == '0000' and set(item.images) == set(METHODS)
    # Lossless: the pixels are the source's.
    for method in METHODS:
        shown = read_image(study / design.images[item.images[method]]).rgb
        np.testing.assert_array_equal(shown, read_image(folders[method] / '0000.png').rgb)
    np.testing.assert_array_equal(read_image(study / design.images[item.reference]).rgb,
                                  read_image(gt / '0000.png').rgb)
    # Attention checks: the clean image is the ground truth; the corruptions change it a lot.
    for check in design.attention_items:
        clean = read_image(study / design.images[check.clean]).rgb
        np.testing.assert_array_equal(clean, read_image(gt / f'{check.name}.png').rgb)
        np.testing.assert_array_equal(read_image(study / design.images[check.reference]).rgb, clean)
        assert check.reference != check.clean  # the page never shows one URL twice
        assert list(check.corrupted) == ['blur', 'pixelate']
        for image_id in check.corrupted.values():
            assert np.abs(read_image(study / design.images[image_id]).rgb - clean).mean() > 0.02
    loaded, fingerprint = load_study(study)
    assert loaded == design and len(fingerprint) == 64


def test_shrunk_jpeg_studies(restored, tmp_path):
    folders, gt = restored
    design = create_study(tmp_path / 'study', 'wr_n', folders, questions=2, attention_checks=1, max_side=64,
                          image_format='jpg')
    assert design.face_crops is None and design.study_kind.metric == 'WR_N'
    sizes = {read_image(tmp_path / 'study' / rel).rgb.shape for rel in design.images.values()}
    assert sizes == {(48, 48, 3)}  # already smaller than max_side: kept
    big, big_gt = make_restored_folders(tmp_path / 'big', count=2, size=100)
    design = create_study(tmp_path / 'small', 'wr_n', big, questions=2, max_side=64)
    sizes = {read_image(tmp_path / 'small' / rel).rgb.shape for rel in design.images.values()}
    assert sizes == {(64, 64, 3)} and all(p.suffix == '.png' for p in (tmp_path / 'small' / 'images').iterdir())
    with pytest.raises(ValueError, match='max_side must be at least 64'):
        create_study(tmp_path / 'x', 'wr_n', folders, questions=2, max_side=10)


def test_broken_study_files_are_refused(restored, tmp_path):
    folders, gt = restored
    create_study(tmp_path / 'study', 'wr_id', folders, gt=gt, questions=2)
    study = tmp_path / 'study'
    with pytest.raises(StudyFileError, match='has no study.json'):
        load_study(tmp_path)
    data = json.loads((study / 'study.json').read_text())
    image_id = next(iter(data['images']))
    path = study / data['images'][image_id]
    path.rename(path.with_suffix('.bak'))
    with pytest.raises(StudyFileError, match=f'image {image_id} should be the file .* which is missing'):
        load_study(study)
    path.with_suffix('.bak').rename(path)
    for change, message in [
        (lambda d: d['images'].update({image_id: '../../etc/passwd'}), 'which is missing'),
        (lambda d: d.update(kind='best'), "unknown study kind 'best'"),
        (lambda d: d.update(questions_per_participant=99), 'has 5 distinct questions'),
        (lambda d: d['items'][0]['images'].pop('pisasrzz'), "item '0000' has images of"),
        (lambda d: d.update(format=7), 'study format 7 is not supported'),
        (lambda d: d.pop('methods'), 'not a valid study file'),
    ]:
        broken = json.loads(json.dumps(data))
        change(broken)
        (study / 'study.json').write_text(json.dumps(broken))
        with pytest.raises(StudyFileError, match=message):
            load_study(study)
    (study / 'study.json').write_text('{"kind": ')
    with pytest.raises(StudyFileError, match='not a valid study file: JSONDecodeError'):
        load_study(study)


# ------------------------------------------------------------------------------------------------ questionnaires
def test_questionnaires_are_drawn_from_the_seed(restored, tmp_path):
    folders, gt = restored
    design = create_study(tmp_path / 'study', 'wr_id', folders, gt=gt, questions=4, attention_checks=2, seed=11,
                          attention_pool=3)
    first = draw_questionnaire(design, 1)
    assert draw_questionnaire(design, 1) == first  # the same participant: the same questionnaire
    assert draw_questionnaire(design, 2) != first
    orders, positions = Counter(), Counter()
    for participant in range(1, 301):
        questions = draw_questionnaire(design, participant)
        assert len(questions) == 6
        real = [q for q in questions if q.kind == 'question']
        checks = [q for q in questions if q.kind == 'attention']
        assert len(real) == 4 and len({q.item for q in real}) == 4  # no item twice
        assert len(checks) == 2 and len({q.item for q in checks}) == 2
        assert questions[0].kind == 'question'  # checks never come first
        for q in real:
            item = next(i for i in design.items if i.name == q.item)
            assert sorted(q.option_labels) == sorted(METHODS) and q.correct is None
            assert q.option_images == tuple(item.images[m] for m in q.option_labels) and q.reference == item.reference
            orders[q.option_labels] += 1
        for q in checks:
            check = next(c for c in design.attention_items if c.name == q.item)
            assert q.option_labels[q.correct] == CLEAN_LABEL and q.option_images[q.correct] == check.clean
            assert q.reference == check.reference  # WR_id: the reference is the clean image (under another id)
            positions[q.correct] += 1
    assert len(orders) == 6 and min(orders.values()) > 120  # all 3! orders, about equally often (1200 / 6 = 200)
    assert set(positions) == {0, 1, 2}
    # A second study with another seed draws other questionnaires.
    other = create_study(tmp_path / 'other', 'wr_id', folders, gt=gt, questions=4, attention_checks=2, seed=12,
                         attention_pool=3)
    assert [q.item for q in draw_questionnaire(other, 1)] != [q.item for q in first] or \
        [q.option_labels for q in draw_questionnaire(other, 1)] != [q.option_labels for q in first]


def test_ab_questionnaires_pair_the_reference_method_with_each_other(restored, tmp_path):
    folders, _ = restored
    design = create_study(tmp_path / 'study', 'ab', folders, questions=10, attention_checks=1,
                          ab_reference='headsupzz')
    assert design.pairs == [('headsupzz', 'osediffzz'), ('headsupzz', 'pisasrzz')]
    assert len(study_pool(design)) == 10 and design.study_kind.answers[2] == 'Both are equally good'
    sides = Counter()
    for participant in range(1, 101):
        questions = draw_questionnaire(design, participant)
        real = [q for q in questions if q.kind == 'question']
        assert len({(q.item, frozenset(q.option_labels)) for q in real}) == 10  # the whole pool, each once
        for q in real:
            assert 'headsupzz' in q.option_labels and len(q.option_labels) == 2
            sides[q.option_labels.index('headsupzz')] += 1
        check = next(q for q in questions if q.kind == 'attention')
        assert len(check.option_labels) == 2 and check.option_labels[check.correct] == CLEAN_LABEL
        assert check.reference is None
    assert abs(sides[0] - sides[1]) < 100  # positions randomised (1000 questions)
    every = create_study(tmp_path / 'every', 'ab', folders, questions=3)
    assert every.pairs == [('osediffzz', 'pisasrzz'), ('osediffzz', 'headsupzz'), ('pisasrzz', 'headsupzz')]


# ------------------------------------------------------------------------------------------------ face crops
@pytest.mark.slow
def test_face_crops_use_one_matrix_per_item_from_the_ground_truth(tmp_path):
    """Every method's crop is its image warped by the matrix of the ground truth's face (so framing never differs)."""
    import torch

    from portraitisr.face.alignment import FaceAligner
    from portraitisr.face.detection import DlibFaceDetector
    from portraitisr.utils.image_io import image_to_tensor, tensor_to_image

    folders, gt = make_restored_folders(tmp_path / 'restored', whole_photos=True)
    blank = np.full((120, 160, 3), 0.5, np.float32)  # an item without a face is left out
    write_image(gt / 'blank.png', blank)
    for folder in folders.values():
        write_image(folder / 'blank.png', blank)
    design = create_study(tmp_path / 'study', 'wr_id', folders, gt=gt, questions=2, face_crops=True, crop_size=128,
                          detector='hog')
    assert [i.name for i in design.items] == ['photo0', 'photo1'] and design.source['dropped_no_face'] == ['blank']
    detector = DlibFaceDetector('hog', only_keep_largest=True)
    aligner = FaceAligner('ffhq512', output_size=128)
    for item in design.items:
        gt_rgb = read_image(gt / f'{item.name}.png').rgb
        matrix = aligner.estimate(detector.detect(gt_rgb)[0].landmarks[:1].astype(np.float64))
        for label, image_id in [('gt', item.reference)] + list(item.images.items()):
            source = gt_rgb if label == 'gt' else read_image(folders[label] / f'{item.name}.png').rgb
            with torch.no_grad():
                expected = tensor_to_image(aligner.align(image_to_tensor(source), matrix))
            shown = read_image(tmp_path / 'study' / design.images[image_id]).rgb
            assert shown.shape == (128, 128, 3)
            assert np.abs(shown - expected).max() <= 0.5 / 255 + 1e-6  # exact up to the 8-bit PNG rounding


def test_studies_without_face_crops_never_import_torch(restored, tmp_path):
    folders, gt = restored
    methods = {m: str(f) for m, f in folders.items()}
    code = f"""
import sys
from portraitisr.study.create import create_study
from portraitisr.study.webapp import build_app
from portraitisr.study.analysis import analyse
from portraitisr.study import cli
create_study({str(tmp_path / 'study')!r}, 'wr_id', {methods!r}, gt={str(gt)!r}, questions=2, attention_checks=1)
app = build_app({str(tmp_path / 'study')!r}, admin_token='x' * 16)
assert 'torch' not in sys.modules, 'torch was imported'
print('ok')
"""
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr


# ------------------------------------------------------------------------------------------------ command line
def test_study_create_on_the_command_line(restored, tmp_path, capsys):
    from portraitisr.study.cli import main

    folders, gt = restored
    args = ['create', '-o', str(tmp_path / 'study'), '--kind', 'wr_id', '--gt', str(gt),
            '--questions', '3', '--attention-checks', '1', '--seed', '9']
    args += ['--method', str(folders['osediffzz'])]  # named after its folder
    args += ['--method', f'pisasrzz={folders["pisasrzz"]}', '--method', f'headsupzz={folders["headsupzz"]}']
    assert main(args) == 0
    out = capsys.readouterr().out
    assert 'wr_id, 3 methods, 5 images, 3 questions + 1 attention checks per participant' in out
    assert 'portraitisr study serve' in out
    design, _ = load_study(tmp_path / 'study')
    assert design.methods == list(METHODS) and design.seed == 9
    # The same folder again, and a malformed one: exit status 2, one line naming the problem.
    assert main(args) == 2
    assert 'exists; choose a new study folder' in capsys.readouterr().err
    (folders['pisasrzz'] / '0001.png').unlink()
    args[args.index('-o') + 1] = str(tmp_path / 'study2')
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('portraitisr study create: method \'pisasrzz\'') and err.count('\n') == 1
    _nothing_left(tmp_path, 'study2')


def test_the_portraitisr_command_has_the_study_subcommand(restored, tmp_path, capsys):
    from portraitisr.cli import main

    folders, gt = restored
    assert main(['study', 'create', '-o', str(tmp_path / 'study'), '--kind', 'wr_n', '--questions', '2',
                 '--method', str(folders['osediffzz']), '--method', str(folders['pisasrzz'])]) == 0
    assert 'wr_n, 2 methods, 5 images' in capsys.readouterr().out
    assert main(['study', 'results', str(tmp_path / 'study')]) == 2
    assert 'no answers yet' in capsys.readouterr().err
