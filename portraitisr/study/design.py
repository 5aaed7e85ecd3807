"""What a study is (its kind, methods, items, images) and how one participant's questionnaire is drawn from it.

Three kinds, after the papers:

* ``wr_id``: HeadsUp's identity study (HeadsUp, arXiv 2510.09924, appendix "User Study Details"): the ground-truth face
  and the methods' faces, "select the image that is most similar to the ground-truth face image". Metric WR_id.
* ``wr_n``: HeadsUp's naturalness study: the methods' faces without the ground truth, "select the most natural
  face". Metric WR_N.
* ``ab``: AuthFace's A/B test (AuthFace, arXiv 2410.09864, appendix C): two images A and B and three answers, "A is
  better", "B is better", "Both are equally good", positions randomised; each pair of methods, or one method against
  each of the others (AuthFace: its method against six baselines).

A questionnaire is ``questions_per_participant`` questions drawn without replacement from the study's pool (items;
for A/B, item x pair combinations) by ``numpy.random.default_rng([seed, participant number])``, the options of each
question shuffled (HeadsUp: "the order of options is randomly shuffled"), with ``attention_per_participant``
attention checks (see :mod:`.attention`) at random positions. The same seed and participant number always give the
same questionnaire; the drawn questionnaire is also stored with the answers, so the analysis never re-draws it.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .errors import StudyFileError

__all__ = ['STUDY_KINDS', 'StudyKind', 'StudyFileError', 'StudyItem', 'AttentionItem', 'StudyDesign',
           'DrawnQuestion', 'STUDY_FILE', 'CLEAN_LABEL', 'draw_questionnaire', 'load_study', 'save_study',
           'study_pool']

PathLike = Union[str, 'os.PathLike[str]']

STUDY_FILE = 'study.json'
FORMAT_VERSION = 1
#: Option label of the clean image of an attention check; its corrupted copies are ``'@' + corruption name``.
CLEAN_LABEL = '@clean'


@dataclass(frozen=True)
class StudyKind:
    """A kind of study.

    Attributes:
        name: ``wr_id``, ``wr_n`` or ``ab``.
        metric: the column it fills (``WR_id``, ``WR_N``) or ``AB_win``.
        needs_reference: shows the ground truth as a reference above the candidates.
        face_prompt, image_prompt: the default question with and without face crops.
        answers: the fixed answer texts of A/B questions (empty: participants pick a candidate).
    """
    name: str
    metric: str
    needs_reference: bool
    face_prompt: str
    image_prompt: str
    answers: Tuple[str, ...] = ()


#: The study kinds. Prompts follow the papers' wording (HeadsUp appendix B "User Study Details"; AuthFace appendix C).
STUDY_KINDS: Dict[str, StudyKind] = {
    'wr_id': StudyKind('wr_id', 'WR_id', True, 'Which face is the most similar to the reference face?',
                       'Which image is the most similar to the reference image?'),
    'wr_n': StudyKind('wr_n', 'WR_N', False, 'Which face is the most natural?', 'Which image looks the most natural?'),
    'ab': StudyKind('ab', 'AB_win', False, 'Which image is better?', 'Which image is better?',
                    answers=('A is better', 'B is better', 'Both are equally good')),
}


@dataclass(frozen=True)
class StudyItem:
    """One test image: ``images`` maps each method to the opaque id of its (cropped) image; ``reference`` is the
    ground truth's id (None without ground truth)."""
    name: str
    images: Dict[str, str]
    reference: Optional[str] = None


@dataclass(frozen=True)
class AttentionItem:
    """An attention-check image: the clean id, ``corruption name -> id`` of its corrupted copies, and for studies
    that show a reference, the same clean pixels under another id (so that the page never shows one URL twice)."""
    name: str
    clean: str
    corrupted: Dict[str, str]
    reference: Optional[str] = None


@dataclass(frozen=True)
class DrawnQuestion:
    """One question of a questionnaire.

    Attributes:
        kind: ``'question'`` or ``'attention'``.
        item: the item's name (never shown to participants).
        reference: image id shown as the reference (WR_id) or None.
        option_labels: what each option is, in display order: method names; for attention checks
            :data:`CLEAN_LABEL` and ``'@<corruption>'``.
        option_images: the image id of each option, in display order.
        correct: the index of the right option of an attention check; None for real questions.
    """
    kind: str
    item: str
    reference: Optional[str]
    option_labels: Tuple[str, ...]
    option_images: Tuple[str, ...]
    correct: Optional[int] = None


@dataclass
class StudyDesign:
    """Everything ``study.json`` holds. Image ids are opaque random hex strings; ``images`` maps them to files
    relative to the study folder. ``source`` records where the images came from (admins only)."""
    kind: str
    title: str
    prompt: str
    methods: List[str]
    items: List[StudyItem]
    questions_per_participant: int
    seed: int
    images: Dict[str, str]
    attention_items: List[AttentionItem] = field(default_factory=list)
    attention_per_participant: int = 0
    pairs: List[Tuple[str, str]] = field(default_factory=list)
    face_crops: Optional[dict] = None
    source: dict = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def study_kind(self) -> StudyKind:
        return STUDY_KINDS[self.kind]

    @property
    def questions_total(self) -> int:
        return self.questions_per_participant + self.attention_per_participant

    def choices(self, options: int) -> int:
        """How many answers a question with ``options`` images has: one per image, or the three A/B answers."""
        return len(self.study_kind.answers) or options

    def validate(self) -> None:
        """Raise :class:`StudyFileError` if the design is inconsistent."""
        if self.format != FORMAT_VERSION:
            raise StudyFileError(f'study format {self.format} is not supported (this version reads {FORMAT_VERSION})')
        if self.kind not in STUDY_KINDS:
            raise StudyFileError(f'unknown study kind {self.kind!r}; choose from {", ".join(STUDY_KINDS)}')
        if len(self.methods) < 2 or len(set(self.methods)) != len(self.methods):
            raise StudyFileError(f'a study needs two or more distinct methods, got {self.methods}')
        for item in self.items:
            if set(item.images) != set(self.methods):
                raise StudyFileError(f'item {item.name!r} has images of {sorted(item.images)}, not of every method '
                                     f'{sorted(self.methods)}')
            if self.study_kind.needs_reference and item.reference is None:
                raise StudyFileError(f'a {self.kind} study shows the ground truth, but item {item.name!r} has none')
        if self.kind == 'ab':
            if not self.pairs:
                raise StudyFileError('an A/B study needs pairs of methods')
            for a, b in self.pairs:
                if a == b or a not in self.methods or b not in self.methods:
                    raise StudyFileError(f'bad A/B pair ({a!r}, {b!r}) for methods {self.methods}')
        elif self.pairs:
            raise StudyFileError(f'only A/B studies have pairs, this one is {self.kind}')
        pool = len(study_pool(self))
        if not 1 <= self.questions_per_participant <= pool:
            raise StudyFileError(f'{self.questions_per_participant} questions per participant, but the study has '
                                 f'{pool} distinct questions; ask for 1 to {pool}')
        if not 0 <= self.attention_per_participant <= len(self.attention_items):
            raise StudyFileError(f'{self.attention_per_participant} attention checks per participant, but the study '
                                 f'has {len(self.attention_items)} check images')
        needed = 1 if self.kind == 'ab' else len(self.methods) - 1
        for check in self.attention_items:
            if len(check.corrupted) < needed:
                raise StudyFileError(f'attention check {check.name!r} has {len(check.corrupted)} corrupted copies, '
                                     f'needs {needed}')
            if self.study_kind.needs_reference and check.reference is None:
                raise StudyFileError(f'attention check {check.name!r} has no reference image')
        used = [image for item in self.items for image in item.images.values()]
        used += [item.reference for item in self.items if item.reference is not None]
        used += [check.clean for check in self.attention_items]
        used += [check.reference for check in self.attention_items if check.reference is not None]
        used += [image for check in self.attention_items for image in check.corrupted.values()]
        unknown = [image for image in used if image not in self.images]
        if unknown:
            raise StudyFileError(f'{len(unknown)} image ids have no file, e.g. {unknown[0]}')


def study_pool(design: StudyDesign) -> List[Tuple[int, Optional[Tuple[str, str]]]]:
    """The distinct questions: ``(item index, None)`` for WR studies, ``(item index, pair)`` for A/B studies."""
    if design.kind == 'ab':
        return [(i, tuple(pair)) for i, pair in itertools.product(range(len(design.items)), design.pairs)]
    return [(i, None) for i in range(len(design.items))]


def draw_questionnaire(design: StudyDesign, participant_number: int) -> List[DrawnQuestion]:
    """The questionnaire of participant ``participant_number`` (1, 2, ...): deterministic given the design's seed.

    Returns ``questions_per_participant + attention_per_participant`` questions in the order they are asked.
    """
    rng = np.random.default_rng([design.seed, int(participant_number)])
    pool = study_pool(design)
    questions: List[DrawnQuestion] = []
    for index in rng.choice(len(pool), size=design.questions_per_participant, replace=False):
        item_index, pair = pool[int(index)]
        item = design.items[item_index]
        labels = list(pair) if pair is not None else list(design.methods)
        order = rng.permutation(len(labels))
        labels = [labels[k] for k in order]
        questions.append(DrawnQuestion('question', item.name, item.reference, tuple(labels),
                                       tuple(item.images[label] for label in labels)))

    checks: List[DrawnQuestion] = []
    picked = rng.choice(len(design.attention_items), size=design.attention_per_participant, replace=False)
    for index in picked:
        check = design.attention_items[int(index)]
        corrupted = list(check.corrupted)
        if design.kind == 'ab':
            corrupted = [corrupted[int(rng.integers(len(corrupted)))]]
        else:
            corrupted = corrupted[:len(design.methods) - 1]
        labels = [CLEAN_LABEL] + ['@' + name for name in corrupted]
        images = [check.clean] + [check.corrupted[name] for name in corrupted]
        order = rng.permutation(len(labels))
        labels, images = [labels[k] for k in order], [images[k] for k in order]
        reference = check.reference if design.study_kind.needs_reference else None
        checks.append(DrawnQuestion('attention', check.name, reference, tuple(labels), tuple(images),
                                    correct=labels.index(CLEAN_LABEL)))
    # Checks go to random positions, never first: the first question is where participants learn the screen.
    for check in checks:
        questions.insert(int(rng.integers(1, len(questions) + 1)), check)
    return questions


# ------------------------------------------------------------------------------------------------ files
def _design_to_json(design: StudyDesign) -> dict:
    data = asdict(design)
    data['pairs'] = [list(pair) for pair in design.pairs]
    return data


def save_study(design: StudyDesign, folder: PathLike) -> Path:
    """Write ``study.json`` into ``folder`` (the design is validated first)."""
    design.validate()
    path = Path(folder) / STUDY_FILE
    path.write_text(json.dumps(_design_to_json(design), indent=1, sort_keys=True) + '\n', encoding='utf-8')
    return path


def load_study(folder: PathLike) -> Tuple[StudyDesign, str]:
    """Read and check a study folder; returns the design and the sha256 of its ``study.json`` (which ties a
    database of answers to the study it was collected for).

    Raises:
        StudyFileError: no ``study.json``, not valid JSON, an inconsistent design, or an image file missing.
    """
    folder = Path(folder)
    path = folder / STUDY_FILE
    if not path.is_file():
        raise StudyFileError(f'{folder} is not a study folder: it has no {STUDY_FILE} (make one with '
                             '`portraitisr study create`)')
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
        data['items'] = [StudyItem(**item) for item in data['items']]
        data['attention_items'] = [AttentionItem(**item) for item in data.get('attention_items', [])]
        data['pairs'] = [tuple(pair) for pair in data.get('pairs', [])]
        design = StudyDesign(**data)
    except (ValueError, TypeError, KeyError) as error:
        raise StudyFileError(f'{path} is not a valid study file: {type(error).__name__}: {error}') from None
    design.validate()
    for image_id, relative in design.images.items():
        file = folder / relative
        if Path(relative).is_absolute() or '..' in Path(relative).parts or not file.is_file():
            raise StudyFileError(f'{path}: image {image_id} should be the file {file}, which is missing')
    return design, hashlib.sha256(raw).hexdigest()
