"""Face detectors. Importing this package registers them in ``FACE_DETECTORS`` (the registry's lazy location).

All share :class:`BaseFaceDetector` (inputs, options, post-processing) and return :class:`FaceDetections`.
"""
from .base_detector import BaseFaceDetector, FaceDetections, nms_detections, to_rgb_uint8
from .dlib_detector import DlibFaceDetector, build_default_face_detector, dlib_model_path, landmarks68_to_5
from .retinaface import RETINAFACE_WEIGHTS, RetinaFaceDetector, decode_boxes, decode_landmarks, prior_boxes

__all__ = ['BaseFaceDetector', 'FaceDetections', 'nms_detections', 'to_rgb_uint8', 'DlibFaceDetector',
           'build_default_face_detector', 'dlib_model_path', 'landmarks68_to_5', 'RetinaFaceDetector',
           'RETINAFACE_WEIGHTS', 'decode_boxes', 'decode_landmarks', 'prior_boxes']
