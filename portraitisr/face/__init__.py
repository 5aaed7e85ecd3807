"""The face stack: detection, alignment, parsing and identity, usable on their own (as facexlib's users expect).

Datasets, metrics, the dataset builder, the user study and the restorers all need faces, so the stack sits below
:mod:`portraitisr.models`, over the ground floor only (:mod:`portraitisr.registry`, :mod:`portraitisr.weights`,
:mod:`portraitisr.utils`). Each face task is a sibling sub-package whose components register in their own registry
(``FACE_DETECTORS``, ``FACE_ALIGNERS``, ``FACE_PARSERS``, ``IDENTITY_EXTRACTORS``) under the same names as before:
configs and checkpoints name them.

* :mod:`~portraitisr.face.detection`: RetinaFace and dlib detectors, boxes + 5 landmarks (:class:`FaceDetections`);
* :mod:`~portraitisr.face.alignment`: 5-point templates, similarity estimation, the facexlib-exact aligner and
  paste-back (:class:`FaceAligner`);
* :mod:`~portraitisr.face.parsing`: per-pixel facial-component probabilities (facexlib's ParseNet / BiSeNet);
* :mod:`~portraitisr.face.identity`: frozen identity embeddings (ArcFace IResNet and IR-SE, AdaFace, ResNet-ArcFace,
  dlib's ResNet) with their verification thresholds.

Example::

    from portraitisr.face import FaceAligner, build_default_face_detector

    detections = build_default_face_detector().detect(image)
"""
from . import alignment, detection, identity, parsing
from .alignment import ARCFACE_112, FFHQ_512, FaceAligner, FaceBatch, detect_and_align, get_template
from .detection import (BaseFaceDetector, DlibFaceDetector, FaceDetections, RetinaFaceDetector,
                        build_default_face_detector)
from .identity import (AdaFaceIR, ArcFaceIResNet, ArcFaceIRSE, BaseIdentityExtractor, DlibResNet, ResNetArcFace,
                       similarity)
from .parsing import FacexlibFaceParser

__all__ = ['alignment', 'detection', 'identity', 'parsing', 'ARCFACE_112', 'FFHQ_512', 'FaceAligner', 'FaceBatch',
           'detect_and_align', 'get_template', 'BaseFaceDetector', 'DlibFaceDetector', 'FaceDetections',
           'RetinaFaceDetector', 'build_default_face_detector', 'AdaFaceIR', 'ArcFaceIResNet', 'ArcFaceIRSE',
           'BaseIdentityExtractor', 'DlibResNet', 'ResNetArcFace', 'similarity', 'FacexlibFaceParser']
