"""Result tables in the layout of HeadsUp's Tables 1-3 (HeadsUp, arXiv 2510.09924, section 4) and PortraitSR's
Tables 1 and 5 (PortraitSR, AAAI 2026), as markdown and CSV.

A layout is a list of ``(header, metric name)`` columns; the metric name is what the metric reports (prefixes
such as ``RealSR/`` are stripped). A metric a run did not compute is left empty, so a partial evaluation still
lands in the right columns.
"""
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

#: ``table name -> (title, columns)``; arrows give the better direction, as in the paper
TABLE_LAYOUTS: Dict[str, Tuple[str, List[Tuple[str, str]]]] = {
    # Table 1, Face ISR on CelebA-Test (IDA as DAEFR defines it, the paper aligns with DAEFR)
    'face': ('Face ISR', [('PSNR↑', 'PSNR'), ('SSIM↑', 'SSIM'), ('LPIPS↓', 'LPIPS'), ('FID↓', 'FID'),
                          ('NIQE↓', 'NIQE'), ('IDA↓', 'IDA_DAEFR')]),
    # Table 2, PortraitISR on PortraitSR-4K-Te; WR_id / WR_N are the user-study win rates, merged from the CSV of
    # `portraitisr study results` (evaluation/user_study.py); the seam column is ours
    'portrait': ('PortraitISR', [('PSNR↑', 'PSNR'), ('SSIM↑', 'SSIM'), ('LPIPS↓', 'LPIPS'), ('DISTS↓', 'DISTS'),
                                 ('FID↓', 'FID'), ('NIQE↓', 'NIQE'), ('MUSIQ↑', 'MUSIQ'),
                                 ('ID-Score↑', 'IDScore'), ('WR_id↑', 'WR_id'), ('WR_N↑', 'WR_N'),
                                 ('Seam↓', 'SeamScore')]),
    # Table 3, General ISR on DIV2K-val, RealSR, DRealSR
    'general': ('General ISR', [('PSNR↑', 'PSNR'), ('SSIM↑', 'SSIM'), ('LPIPS↓', 'LPIPS'), ('DISTS↓', 'DISTS'),
                                ('FID↓', 'FID'), ('NIQE↓', 'NIQE'), ('MUSIQ↑', 'MUSIQ'), ('CLIPIQA↑', 'CLIPIQA'),
                                ('MANIQA↑', 'MANIQA')]),
    # PortraitSR (AAAI 2026) face super-resolution on CelebA and Helen: Table 1's PSNR/SSIM/LPIPS and the VIF of
    # Table 5 (x8 only; an x4 run leaves the column empty)
    'face_sr': ('Face SR', [('PSNR↑', 'PSNR'), ('SSIM↑', 'SSIM'), ('LPIPS↓', 'LPIPS'), ('VIF↑', 'VIF')]),
    # IDFSR ("IDFSR: Personalized Face Super-Resolution with Identity Decoupling and Fitting") on CelebRef-HQ:
    # Table 1's columns and Table 2's identity verification accuracy (IDV, reported at x16)
    'face_ref': ('Reference-based face SR', [('PSNR↑', 'PSNR'), ('SSIM↑', 'SSIM'), ('LPIPS↓', 'LPIPS'),
                                              ('FID↓', 'FID'), ('CLIPIQA↑', 'CLIPIQA'), ('MUSIQ↑', 'MUSIQ'),
                                              ('IDS↓', 'IDS'), ('IDV↑', 'FaceVerificationAccuracy')]),
}


def strip_prefix(metrics: Dict[str, float]) -> Dict[str, float]:
    """``{'RealSR/PSNR': x}`` -> ``{'PSNR': x}``."""
    return {key.rsplit('/', 1)[-1]: value for key, value in metrics.items()}


@dataclass
class ResultTables:
    """Rows ``(table, test set, method, metrics)`` gathered over test sets, written per table."""

    rows: List[Tuple[str, str, str, Dict[str, float]]] = field(default_factory=list)

    def add(self, table: str, test_set: str, method: str, metrics: Dict[str, float]) -> None:
        if table not in TABLE_LAYOUTS:
            raise KeyError(f'unknown table {table!r}; choose from {", ".join(TABLE_LAYOUTS)}')
        self.rows.append((table, test_set, method, strip_prefix(metrics)))

    def _columns(self, table: str) -> List[Tuple[str, str]]:
        return TABLE_LAYOUTS[table][1]

    @staticmethod
    def _cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ''
        return f'{value:.4f}' if isinstance(value, float) else str(value)

    def to_markdown(self) -> str:
        blocks = []
        for table in dict.fromkeys(row[0] for row in self.rows):
            title, columns = TABLE_LAYOUTS[table]
            header = ['Dataset', 'Method'] + [h for h, _ in columns]
            lines = [f'### {title}', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
            for row_table, test_set, method, metrics in self.rows:
                if row_table == table:
                    cells = [self._cell(metrics.get(name)) for _, name in columns]
                    lines.append('| ' + ' | '.join([test_set, method] + cells) + ' |')
            blocks.append('\n'.join(lines))
        return '\n\n'.join(blocks) + '\n'

    def write(self, stem: str) -> List[str]:
        """Write ``<stem>.md`` (all tables) and ``<stem>_<table>.csv`` (one per table); returns the paths."""
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        paths = [f'{stem}.md']
        Path(paths[0]).write_text(self.to_markdown(), encoding='utf-8')
        for table in dict.fromkeys(row[0] for row in self.rows):
            path = f'{stem}_{table}.csv'
            with open(path, 'w', newline='', encoding='utf-8') as f:
                writer = csv.writer(f)
                writer.writerow(['dataset', 'method'] + [name for _, name in self._columns(table)])
                for row_table, test_set, method, metrics in self.rows:
                    if row_table == table:
                        writer.writerow([test_set, method] +
                                        [self._cell(metrics.get(name)) for _, name in self._columns(table)])
            paths.append(path)
        return paths
