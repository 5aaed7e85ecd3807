"""Participants, their drawn questionnaires and their answers, in SQLite through SQLAlchemy Core.

Four tables: ``meta`` (the sha256 of the ``study.json`` the answers belong to), ``participants`` (a number, the
sha256 of the session token, times), ``questions`` (each participant's drawn questionnaire: an opaque random id per
question, what each option shows) and ``answers`` (one row per question at most: the primary key is the question id,
so a repeated answer cannot be stored twice, whatever the timing).

Every write runs in one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock is taken at the start, so two writers
never deadlock on a lock upgrade) and the database is in WAL mode (readers do not wait for the writer). A refused
answer changes nothing: the checks and the insert are one transaction.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from sqlalchemy import (Column, Float, ForeignKey, Integer, MetaData, String, Table, Text, UniqueConstraint,
                        create_engine, event, func, select)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .design import DrawnQuestion, StudyFileError

__all__ = ['StudyStore', 'AnswerError', 'UnknownQuestion', 'InvalidChoice', 'AnswerConflict', 'NotCurrentQuestion',
           'StudyClosed', 'ParticipantRecord', 'AnswerRecord', 'Responses', 'token_hash', 'DB_FILE']

PathLike = Union[str, 'os.PathLike[str]']

#: The database's default name inside the study folder.
DB_FILE = 'responses.sqlite'

metadata = MetaData()
meta_table = Table('meta', metadata, Column('key', String(64), primary_key=True), Column('value', Text))
participants_table = Table(
    'participants', metadata,
    Column('id', Integer, primary_key=True),
    Column('token_hash', String(64), nullable=False, unique=True),
    Column('created_at', Float, nullable=False),
    Column('finished_at', Float),
    Column('user_agent', Text),
    sqlite_autoincrement=True,  # a number is never given twice, even after deletions
)
questions_table = Table(
    'questions', metadata,
    Column('id', String(32), primary_key=True),
    Column('participant_id', Integer, ForeignKey('participants.id'), nullable=False),
    Column('position', Integer, nullable=False),
    Column('kind', String(16), nullable=False),
    Column('item', Text, nullable=False),
    Column('reference', String(64)),
    Column('option_labels', Text, nullable=False),  # JSON list
    Column('option_images', Text, nullable=False),  # JSON list
    Column('correct', Integer),
    UniqueConstraint('participant_id', 'position'),
)
answers_table = Table(
    'answers', metadata,
    Column('question_id', String(32), ForeignKey('questions.id'), primary_key=True),
    Column('participant_id', Integer, ForeignKey('participants.id'), nullable=False),
    Column('position', Integer, nullable=False),
    Column('choice', Integer, nullable=False),
    Column('answered_at', Float, nullable=False),
    UniqueConstraint('participant_id', 'position'),
)


class AnswerError(ValueError):
    """An answer that is refused; ``status`` is the HTTP status the web app answers with."""
    status = 400


class UnknownQuestion(AnswerError):
    status = 404


class InvalidChoice(AnswerError):
    status = 422


class AnswerConflict(AnswerError):
    status = 409


class NotCurrentQuestion(AnswerError):
    status = 409


class StudyClosed(AnswerError):
    status = 403


@dataclass(frozen=True)
class ParticipantRecord:
    """A participant: ``number`` (1, 2, ...), how many questions were drawn, how many answered."""
    number: int
    questions: int
    answered: int
    created_at: float
    finished_at: Optional[float]

    @property
    def complete(self) -> bool:
        return self.answered == self.questions


@dataclass(frozen=True)
class AnswerRecord:
    """One stored answer with its question: ``labels`` in display order, ``choice`` the option (A/B: 0 = A,
    1 = B, 2 = both equally good), ``correct`` the right option of an attention check (else None)."""
    participant: int
    position: int
    kind: str
    item: str
    labels: Tuple[str, ...]
    choice: int
    correct: Optional[int]
    answered_at: float


@dataclass(frozen=True)
class Responses:
    """Everything the analysis reads."""
    participants: List[ParticipantRecord]
    answers: List[AnswerRecord]


def token_hash(token: str) -> str:
    """What is stored of a session token: its sha256 (a copied database gives no valid session)."""
    return hashlib.sha256(token.encode('utf-8')).hexdigest()


def _question_row(row) -> dict:
    return dict(id=row.id, position=row.position, kind=row.kind, item=row.item, reference=row.reference,
                option_labels=json.loads(row.option_labels), option_images=json.loads(row.option_images),
                correct=row.correct)


class StudyStore:
    """The answers database of one study.

    Args:
        path: the SQLite file (created with its tables when missing).
        fingerprint: sha256 of the study's ``study.json``; a database made for another study is refused.
    """

    def __init__(self, path: PathLike, fingerprint: str) -> None:
        self.path = Path(path)
        # check_same_thread: the web app's worker threads share the pool; timeout: wait up to 30 s for the lock.
        # Up to 40 connections: as many as Starlette's worker threads (anyio's default), so none waits for one.
        self.engine: Engine = create_engine(f'sqlite:///{self.path}', pool_size=10, max_overflow=30,
                                            connect_args={'check_same_thread': False, 'timeout': 30})
        event.listen(self.engine, 'connect', self._on_connect)
        event.listen(self.engine, 'begin', self._on_begin)
        try:
            metadata.create_all(self.engine)
            with self._write() as conn:
                stored = conn.execute(select(meta_table.c.value).where(meta_table.c.key == 'study_sha256')).scalar()
                if stored is None:
                    conn.execute(meta_table.insert().values(key='study_sha256', value=fingerprint))
        except SQLAlchemyError as error:
            self.engine.dispose()
            raise StudyFileError(f'cannot use {self.path} as the answers database: '
                                 f'{getattr(error, "orig", None) or error}') from None
        if stored is not None and stored != fingerprint:
            self.engine.dispose()
            raise StudyFileError(f'{self.path} holds answers to another study (its study.json had sha256 '
                                 f'{stored[:12]}..., this one {fingerprint[:12]}...); use a new --db file')

    @staticmethod
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's 'begin' event issue BEGIN itself (pysqlite's own implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute('PRAGMA journal_mode=WAL')
        cursor.execute('PRAGMA foreign_keys=ON')
        cursor.close()

    @staticmethod
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql('BEGIN' if conn.get_execution_options().get('readonly') else 'BEGIN IMMEDIATE')

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(readonly=True)
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------ participants
    def start_participant(self, token: str, draw: Callable[[int], Sequence[DrawnQuestion]],
                          user_agent: str = '', max_participants: Optional[int] = None) -> int:
        """Create a participant for session ``token`` and store the questionnaire ``draw(number)``; returns the
        number. Raises :class:`StudyClosed` when ``max_participants`` have started."""
        with self._write() as conn:
            if max_participants is not None:
                count = conn.execute(select(func.count()).select_from(participants_table)).scalar()
                if count >= max_participants:
                    raise StudyClosed('the study is closed: it has all the participants it needs')
            inserted = conn.execute(participants_table.insert().values(
                token_hash=token_hash(token), created_at=time.time(), user_agent=user_agent[:300]))
            number = inserted.inserted_primary_key[0]
            conn.execute(questions_table.insert(), [
                dict(id=secrets.token_hex(12), participant_id=number, position=position, kind=q.kind, item=q.item,
                     reference=q.reference, option_labels=json.dumps(list(q.option_labels)),
                     option_images=json.dumps(list(q.option_images)), correct=q.correct)
                for position, q in enumerate(draw(number))])
        return int(number)

    def participant(self, token: str) -> Optional[int]:
        """The number of the participant with session ``token``, or None."""
        with self._read() as conn:
            return conn.execute(select(participants_table.c.id)
                                .where(participants_table.c.token_hash == token_hash(token))).scalar()

    def _progress(self, conn: Connection, participant: int) -> Tuple[int, int]:
        total = conn.execute(select(func.count()).select_from(questions_table)
                             .where(questions_table.c.participant_id == participant)).scalar()
        answered = conn.execute(select(func.count()).select_from(answers_table)
                                .where(answers_table.c.participant_id == participant)).scalar()
        return answered, total

    def state(self, participant: int) -> dict:
        """``{'position', 'total', 'question', 'next'}``: the first unanswered question (None when done) and the
        one after it (for prefetching its images)."""
        with self._read() as conn:
            return self._state(conn, participant)

    def _state(self, conn: Connection, participant: int) -> dict:
        answered, total = self._progress(conn, participant)
        rows = conn.execute(select(questions_table).where(questions_table.c.participant_id == participant,
                                                          questions_table.c.position.in_([answered, answered + 1]))
                            .order_by(questions_table.c.position)).all()
        rows = [_question_row(row) for row in rows]
        return dict(position=answered, total=total, question=rows[0] if rows else None,
                    next=rows[1] if len(rows) > 1 else None)

    # ------------------------------------------------------------------------------------------ answers
    def record_answer(self, participant: int, question_id: str, choice: int,
                      choices: Callable[[dict], int]) -> Tuple[str, dict]:
        """Store the answer ``choice`` of ``participant`` to ``question_id``.

        Args:
            choices: how many answers a question (a row dict) has.

        Returns:
            ``('recorded' | 'repeat', state)``: ``'repeat'`` when the same answer was already stored (a retried
            request), which changes nothing.

        Raises:
            UnknownQuestion: no such question in this participant's questionnaire (another participant's id too).
            InvalidChoice: ``choice`` out of range.
            AnswerConflict: the question was answered with another choice (answers are final).
            NotCurrentQuestion: a later question than the current one.
        """
        with self._write() as conn:
            row = conn.execute(select(questions_table).where(questions_table.c.id == question_id,
                                                             questions_table.c.participant_id == participant)).first()
            if row is None:
                raise UnknownQuestion('unknown question id for this participant')
            question = _question_row(row)
            count = choices(question)
            if not 0 <= choice < count:
                raise InvalidChoice(f'choice must be 0 to {count - 1} for this question, got {choice}')
            stored = conn.execute(select(answers_table.c.choice)
                                  .where(answers_table.c.question_id == question_id)).scalar()
            if stored is not None:
                if stored != choice:
                    raise AnswerConflict('this question was already answered with another choice; answers are final')
                return 'repeat', self._state(conn, participant)
            answered, total = self._progress(conn, participant)
            if question['position'] != answered:
                raise NotCurrentQuestion(f'question {question["position"] + 1} is not the current one '
                                         f'({answered + 1} of {total}); reload the page')
            try:
                conn.execute(answers_table.insert().values(question_id=question_id, participant_id=participant,
                                                           position=question['position'], choice=choice,
                                                           answered_at=time.time()))
            except IntegrityError as error:  # only reachable if the checks above were bypassed: refuse, store nothing
                raise AnswerConflict(f'answer refused by the database: {error.orig}') from None
            if answered + 1 == total:
                conn.execute(participants_table.update().where(participants_table.c.id == participant)
                             .values(finished_at=time.time()))
            return 'recorded', self._state(conn, participant)

    # ------------------------------------------------------------------------------------------ reading out
    def responses(self) -> Responses:
        """All participants and answers, for the analysis and the exports."""
        with self._read() as conn:
            counts = dict(conn.execute(select(questions_table.c.participant_id, func.count())
                                       .group_by(questions_table.c.participant_id)).all())
            answered = dict(conn.execute(select(answers_table.c.participant_id, func.count())
                                         .group_by(answers_table.c.participant_id)).all())
            participants = [ParticipantRecord(row.id, counts.get(row.id, 0), answered.get(row.id, 0), row.created_at,
                                              row.finished_at)
                            for row in conn.execute(select(participants_table).order_by(participants_table.c.id))]
            join = answers_table.join(questions_table, answers_table.c.question_id == questions_table.c.id)
            rows = conn.execute(select(answers_table.c.participant_id, answers_table.c.position,
                                       answers_table.c.choice, answers_table.c.answered_at, questions_table.c.kind,
                                       questions_table.c.item, questions_table.c.option_labels,
                                       questions_table.c.correct)
                                .select_from(join)
                                .order_by(answers_table.c.participant_id, answers_table.c.position)).all()
        answers = [AnswerRecord(row.participant_id, row.position, row.kind, row.item,
                                tuple(json.loads(row.option_labels)), row.choice, row.correct, row.answered_at)
                   for row in rows]
        return Responses(participants, answers)

    def counts(self) -> Dict[str, int]:
        """``{'participants', 'finished', 'answers'}``."""
        with self._read() as conn:
            return dict(
                participants=conn.execute(select(func.count()).select_from(participants_table)).scalar(),
                finished=conn.execute(select(func.count()).select_from(participants_table)
                                      .where(participants_table.c.finished_at.is_not(None))).scalar(),
                answers=conn.execute(select(func.count()).select_from(answers_table)).scalar())
