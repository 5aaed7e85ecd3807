"""Packaging for portraitisr. ``pip install -e ".[dev]"`` installs the library and the test tools."""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    namespace: dict = {}
    with open(os.path.join(HERE, 'portraitisr', 'version.py'), encoding='utf-8') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


class BuildWithConfigs(build_py):
    """Copy the repository's ``configs/`` into the built package as ``portraitisr/.mim/configs``.

    The OpenMMLab packages' layout (as mmagic's ``add_mim_extension`` builds it): a wheel
    carries every config, ``_base_`` fragments included, so ``portraitisr train osediff_tiny`` and
    ``portraitisr restore --model NAME`` work after ``pip install``. The copy goes into the build folder only, never
    the source tree; an editable install (or a checkout on PYTHONPATH) reads the checkout's ``configs/``
    (portraitisr/apis/config_location.py).
    """

    def run(self) -> None:
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        target = os.path.join(self.build_lib, 'portraitisr', '.mim', 'configs')
        if os.path.isdir(target):
            shutil.rmtree(target)  # a config deleted from configs/ must not survive in a rebuilt wheel
        shutil.copytree(os.path.join(HERE, 'configs'), target,
                        ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


INSTALL_REQUIRES = [
    # 2.10: the first torch whose torch.load(weights_only=True) has no published bypass (CVE-2025-32434, fixed
    # in 2.6; CVE-2026-24747, fixed in 2.10). Every checkpoint is loaded that way (portraitisr.weights.MIN_SAFE_TORCH).
    'torch>=2.10',
    'torchvision',
    'mmengine>=0.10.5',
    'diffusers>=0.27',
    'peft>=0.10',
    'transformers>=4.38',
    'safetensors',
    'lpips>=0.1.4',
    'kornia>=0.9',
    'opencv-python-headless',
    'omegaconf',
    'numpy',
    'scipy',
    'pillow',
    'tqdm',
    # ships CLIP's BPE vocabulary: a real SD tokenizer for the offline debug configs
    'open_clip_torch',
    # the offline face detector / landmarks / identity model of last resort (real weights on PyPI)
    'dlib-bin',
    'face_recognition_models',
]

WEBSCALE = ['ray[data]>=2.51,<2.64', 'webdataset>=1.0', 'faiss-cpu>=1.8']
STUDY = ['starlette>=0.37', 'uvicorn>=0.29', 'sqlalchemy>=2.0', 'choix>=0.3.5', 'matplotlib']

EXTRAS_REQUIRE = {
    # Real photos that ship with packages (skimage astronaut/camera/lfw, matplotlib's
    # grace_hopper.jpg) used by the debug configs and tests.
    'samples': ['scikit-image', 'matplotlib'],
    # pyiqa computes DISTS, NIQE, MUSIQ, CLIPIQA, MANIQA and FID; non-commercial licence, so optional.
    # pyiqa requires facexlib, which requires opencv-python: a second cv2 beside opencv-python-headless (both write
    # site-packages/cv2). pip cannot leave out a dependency's dependency, so after installing this extra (or dev)
    # remove it as .ci/run does: `pip uninstall -y opencv-python && pip install --force-reinstall --no-deps
    # opencv-python-headless` (README "Set up"; tests/test_packaging.py checks one cv2 remains).
    'metrics': ['pyiqa'],
    # the documentation site (`mkdocs build --strict`; 1.6 validates anchors)
    'docs': ['mkdocs>=1.6', 'mkdocs-include-markdown-plugin>=6.0'],
    # `portraitisr study`: the web app (Starlette on uvicorn), its SQLite store (SQLAlchemy Core), the Bradley-Terry
    # fit of A/B studies (choix) and the results plot (matplotlib)
    'study': STUDY,
    # the web-scale dataset builder (docs/portrait_data.md): img2dataset's webdataset shards in, the scan on Ray Data,
    # identity pairs with faiss. Ray below 2.64: an actor stage's restarts are set through **ray_remote_args, which
    # Ray 2.60 deprecates for removal in 2.64.
    'webscale': WEBSCALE,
    # facexlib: the reference for the face-alignment parity tests; pyiqa for the metric parity tests; sewar (MIT)
    # for the VIFp parity test; mkdocs for the docs-build test; httpx for Starlette's test client, selenium to drive
    # Debian's chromium in the study's browser test, statsmodels for the Fleiss-kappa parity test; psutil for the
    # web-scale tests (they kill a Ray driver and the processes it started); import-linter checks the layers
    # (docs/architecture.md)
    'dev': ['pytest', 'scikit-image', 'matplotlib', 'facexlib', 'pyiqa', 'sewar', 'mkdocs>=1.6',
            'mkdocs-include-markdown-plugin>=6.0'] + STUDY + WEBSCALE + ['httpx', 'selenium>=4.11', 'statsmodels',
                                                                          'psutil', 'import-linter'],
}

setup(
    name='portraitisr',
    version=read_version(),
    description='Portrait image super-resolution: HeadsUp, OSEDiff and blending baselines on one runner',
    long_description=open(os.path.join(HERE, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',  # torch >= 2.9 needs it
    packages=find_packages(include=['portraitisr', 'portraitisr.*']),
    # sample://portraits, the debug manifest over the package photos; the model-zoo index
    # the study web app's page, script and style
    package_data={'portraitisr.datasets': ['manifests/*.jsonl'], 'portraitisr': ['model_zoo/index.json'],
                  'portraitisr.study': ['static/*']},
    # configs/ -> portraitisr/.mim/configs in the wheel (MANIFEST.in puts configs/ into the sdist)
    cmdclass={'build_py': BuildWithConfigs},
    # `portraitisr restore | train | config | download | models | study`; `python -m portraitisr` runs the same
    entry_points={'console_scripts': ['portraitisr=portraitisr.cli:main']},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
)
