"""Registries of portraitisr.

Children of the mmengine roots (so the mmengine ``Runner`` finds our components when
``default_scope='portraitisr'``) plus domain registries for the swappable parts of a model.
Every registry imports its implementations lazily from ``locations`` the first time it is asked
for something, which keeps ``import portraitisr`` free of heavy dependencies.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry as _MMEngineRegistry


class Registry(_MMEngineRegistry):
    """mmengine ``Registry`` whose failed look-ups name the registry and the registered choices.

    mmengine's own message only says that a name "is not in the registry"; a user who mistyped
    ``type='OSEDif'`` wants to see what they could have written.
    """

    def get(self, key: str):
        obj = super().get(key)
        if obj is None:
            raise KeyError(f"'{key}' is not registered in the '{self.scope}::{self.name}' registry. "
                           f'Registered names: {self.registered_names()}')
        return obj

    def registered_names(self) -> list:
        """Sorted names visible from this registry (its own and its ancestors')."""
        self.import_from_location()
        names, node = set(self._module_dict), self.parent
        while node is not None:
            names.update(node._module_dict)
            node = node.parent
        return sorted(names)


def _child(name: str, parent, location: str) -> Registry:
    return Registry(name, parent=parent, locations=[location])


# mmengine runner components
RUNNERS = _child('runner', MMENGINE_RUNNERS, 'portraitisr.engine')
# FlexibleRunner strategies (sharded training: FSDP2Strategy)
STRATEGIES = _child('strategy', MMENGINE_STRATEGIES, 'portraitisr.engine')
LOOPS = _child('loop', MMENGINE_LOOPS, 'portraitisr.engine')
HOOKS = _child('hook', MMENGINE_HOOKS, 'portraitisr.engine')
LOG_PROCESSORS = _child('log processor', MMENGINE_LOG_PROCESSORS, 'portraitisr.engine')
OPTIMIZERS = _child('optimizer', MMENGINE_OPTIMIZERS, 'portraitisr.engine')
OPTIM_WRAPPERS = _child('optim_wrapper', MMENGINE_OPTIM_WRAPPERS, 'portraitisr.engine')
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, 'portraitisr.engine')
PARAM_SCHEDULERS = _child('parameter scheduler', MMENGINE_PARAM_SCHEDULERS, 'portraitisr.engine')
DATASETS = _child('dataset', MMENGINE_DATASETS, 'portraitisr.datasets')
DATA_SAMPLERS = _child('data sampler', MMENGINE_DATA_SAMPLERS, 'portraitisr.datasets')
TRANSFORMS = _child('transform', MMENGINE_TRANSFORMS, 'portraitisr.datasets')
# collate functions (``train_dataloader.collate_fn``)
FUNCTIONS = _child('function', MMENGINE_FUNCTIONS, 'portraitisr.datasets')
MODELS = _child('model', MMENGINE_MODELS, 'portraitisr.models')
MODEL_WRAPPERS = _child('model_wrapper', MMENGINE_MODEL_WRAPPERS, 'portraitisr.models')
METRICS = _child('metric', MMENGINE_METRICS, 'portraitisr.evaluation')
EVALUATOR = _child('evaluator', MMENGINE_EVALUATOR, 'portraitisr.evaluation')
VISUALIZERS = _child('visualizer', MMENGINE_VISUALIZERS, 'portraitisr.engine')
VISBACKENDS = _child('vis_backend', MMENGINE_VISBACKENDS, 'portraitisr.engine')

# Domain registries: the swappable parts of a model, built by the algorithms.
BACKBONES = Registry('backbone', locations=['portraitisr.models.backbones'])
TEXT_ENCODERS = Registry('text encoder', locations=['portraitisr.models.text_encoders'])
# prompters, and the image taggers a TagPrompter builds from its ``tagger=`` config (RAM, DAPE)
PROMPTERS = Registry('prompter', locations=['portraitisr.models.prompters', 'portraitisr.models.taggers'])
LOSSES = Registry('loss', locations=['portraitisr.models.losses'])
DEGRADATIONS = Registry('degradation', locations=['portraitisr.degradations'])
FACE_DETECTORS = Registry('face detector', locations=['portraitisr.face.detection'])
FACE_ALIGNERS = Registry('face aligner', locations=['portraitisr.face.alignment'])
IDENTITY_EXTRACTORS = Registry('identity extractor', locations=['portraitisr.face.identity'])
# aligned face -> per-pixel class probabilities (ParseNet, BiSeNet), e.g. PortraitSR's parsing targets
FACE_PARSERS = Registry('face parser', locations=['portraitisr.face.parsing'])
# image -> image restorers that blending baselines combine (general SR, face restorers)
RESTORERS = Registry('restorer', locations=['portraitisr.models.restorers'])
# quality / aesthetic scorers that filter candidate photos when building a dataset
IMAGE_SCORERS = Registry('image scorer', locations=['portraitisr.datasets.builder'])
