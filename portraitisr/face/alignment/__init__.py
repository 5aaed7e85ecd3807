"""Face aligners: 5-point templates, similarity estimation, alignment and paste-back."""
from .detect_and_align import FaceBatch, detect_and_align
from .face_aligner import FaceAligner, cv2_erode, cv2_gaussian_blur, invert_affine, paste_matrices
from .similarity import estimate_similarity_lmeds, estimate_similarity_lstsq
from .templates import ARCFACE_112, FFHQ_512, get_template

__all__ = ['FaceAligner', 'FaceBatch', 'detect_and_align', 'estimate_similarity_lmeds', 'estimate_similarity_lstsq',
           'get_template', 'FFHQ_512', 'ARCFACE_112', 'cv2_erode', 'cv2_gaussian_blur', 'invert_affine',
           'paste_matrices']
