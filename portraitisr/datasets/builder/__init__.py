"""PortraitSR-4K builder: from a folder of photos to portrait / reference manifests (HeadsUp section 3, appendix C).

Stage 1, :func:`scan_images`, writes one JSON record per photo (faces, crops, identity embeddings). Stage 2,
:func:`build_manifests`, pairs faces of one identity within a train/test split by image and writes the manifests;
:func:`write_report` summarises both. ``photos`` finds the photos (links followed, loops warned about); ``scorers``
holds the ``IMAGE_SCORERS`` plug-ins of the quality filter; importing this package registers them. ``stages``
holds the per-photo steps of the scan, shared by both engines.

At web scale (``pip install -e ".[webscale]"``), three modules that this package does not import add webdataset
shards as input (``shards``), the scan on Ray Data (``ray_scan``) and faiss pair search (``ann``); they import
``webdataset``, ``ray`` and ``faiss``, and only the web-scale entry points import them.
"""
from . import scorers
from .pairs import PairConfig, build_manifests, find_pairs, identity_threshold, split_images
from .photos import BuilderWarning, find_photos
from .records import (RECORD_KEYS, RECORDS_FILE, SETTINGS_FILE, RecordWriter, file_stamp, load_records,
                      read_records, read_records_with_stats, read_settings, stamp_status)
from .report import write_report
from .scan import (ImageScanner, ScanConfig, WorkerStartError, check_settings, error_reason, image_id_of,
                   scan_images, size_reject_reason)
from .scorers import MetricScorer, SharpnessScorer, passes_threshold, shrink_to_max_side

__all__ = ['scorers', 'RECORD_KEYS', 'RECORDS_FILE', 'SETTINGS_FILE', 'ImageScanner', 'ScanConfig', 'BuilderWarning',
           'WorkerStartError', 'check_settings', 'error_reason', 'find_photos', 'file_stamp', 'stamp_status',
           'image_id_of', 'load_records', 'read_settings', 'scan_images', 'size_reject_reason', 'MetricScorer',
           'SharpnessScorer', 'passes_threshold', 'shrink_to_max_side', 'PairConfig', 'build_manifests', 'find_pairs',
           'identity_threshold', 'read_records', 'split_images', 'write_report', 'RecordWriter',
           'read_records_with_stats']
