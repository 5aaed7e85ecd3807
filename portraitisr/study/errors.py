"""The study's errors, light to import: the ``portraitisr study`` command catches them without loading the web
stack, SQLAlchemy or the image I/O."""

__all__ = ['StudyFolderError', 'StudyFileError']


class StudyFolderError(ValueError):
    """The folders cannot make a study (missing, empty, unmatched names, different sizes, unreadable files)."""


class StudyFileError(ValueError):
    """A study folder that cannot be served or analysed (missing or inconsistent ``study.json``, missing images)."""
