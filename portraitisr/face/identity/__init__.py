"""Identity extractors: aligned face crops -> L2-normalised embeddings (frozen, eval-locked).

``DlibResNet`` imports dlib only when it is built, so importing this package does not need dlib.
"""
from .base_extractor import BaseIdentityExtractor, similarity
from .dlib_resnet import SAME_PERSON_DISTANCE, SAME_PERSON_SIMILARITY, DlibResNet
from .ir_se import ArcFaceIRSE
from .iresnet import AdaFaceIR, ArcFaceIResNet
from .resnet_arcface import ResNetArcFace

__all__ = ['BaseIdentityExtractor', 'similarity', 'ArcFaceIResNet', 'AdaFaceIR', 'ArcFaceIRSE', 'ResNetArcFace',
           'DlibResNet', 'SAME_PERSON_DISTANCE', 'SAME_PERSON_SIMILARITY']
