"""User studies: HeadsUp's WR_id / WR_N win rates (HeadsUp, arXiv 2510.09924, Table 2 and appendix) and AuthFace's A/B
test (AuthFace, arXiv 2410.09864, appendix C), from restored folders to a web questionnaire to win rates in Table 2.

One concept per module: :mod:`.folders` (the restored folders), :mod:`.design` (study kinds, questionnaire drawing),
:mod:`.attention` (attention checks), :mod:`.faces` (aligned face crops), :mod:`.create` (the study folder),
:mod:`.storage` (SQLite answers), :mod:`.webapp` (the participants' and admin's pages), :mod:`.analysis` (win rates,
Bradley-Terry, agreement), :mod:`.plots`, :mod:`.cli`. Importing this package imports none of them: the web stack
(``pip install portraitisr[study]``) and torch (face crops only) load when used.
"""
