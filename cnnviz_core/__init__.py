"""cnnviz: visualize, understand and explain convolutional networks.

Public API::

    import cnnviz_core as cnnviz
    model = cnnviz.load_model("efficientnet_lite0")
    result = cnnviz.run("gradcam", model, ["cat.png"], target="Egyptian cat")
    result.maps            # (B, H, W) raw float32
    result.save("out/")    # PNGs, .npy arrays and a JSON record

Everything a plugin may use is a name of this package (``__all__``) or of
``cnnviz_core.toolkit`` (hooks, score selection and base classes for torch
methods); the other modules are internal. ``import cnnviz_core`` does not
import torch.
"""

from . import images, notes, plots, render
from .adapter import ModelAdapter, ModelEntry, select_scores
from .analysis import Analysis, AnalysisMethod, AnalysisParams
from .api import analyze, check_capabilities, load_model, methods, missing_capabilities, models, run
from .capabilities import Capability
from .config import PreprocessConfig
from .dataset import Dataset, DatasetBatch
from .errors import (
    AdapterError,
    CapabilityError,
    CnnvizError,
    ImageLoadError,
    InputError,
    LayerNotFoundError,
    MethodError,
    MethodNotFoundError,
    MethodWarning,
    ModelLoadError,
    OutOfMemoryError,
    PluginError,
    TargetError,
)
from .hookspecs import hookimpl
from .images import preprocess
from .pixel_arrays import NormalizedBatch
from .model_facts import CamHead, ForwardRunner, ReceptiveField, Span, WeightLayer, WeightLayerNotFoundError
from .method import Attribution, AttributionMethod, AttributionParams, Method, MethodParams, param
from .metric import Metric, MetricBatch, MetricParams, MetricResult, MetricScores, PerturbationParams
from .evaluation import Evaluation, evaluate
from .registry import get_registry, reset_registry
from .results import AttributionResult
from .results_analysis import AnalysisResult
from .results_synthesis import SynthesisResult
from .scheduler import Scheduler
from .store import StoredResults, open_results, run_dataset
from .synthesis import Synthesis, SynthesisMethod, SynthesisParams
from .targets import KINDS as TARGET_KINDS, Target, parse_target, resolve_classes, validate_targets

__version__ = "0.1.0"

__all__ = [
    "Analysis", "AnalysisMethod", "AnalysisParams", "AnalysisResult", "Dataset", "DatasetBatch",
    "Synthesis", "SynthesisMethod", "SynthesisParams", "SynthesisResult", "analyze",
    "Attribution", "AttributionMethod", "AttributionParams", "AttributionResult", "Capability",
    "CapabilityError", "CnnvizError", "ImageLoadError", "InputError", "LayerNotFoundError",
    "Method", "MethodError", "MethodNotFoundError", "MethodWarning", "MethodParams", "ModelAdapter", "ModelEntry",
    "ModelLoadError", "OutOfMemoryError", "PluginError", "PreprocessConfig", "Scheduler", "Target",
    "TargetError", "check_capabilities", "get_registry", "hookimpl", "load_model", "methods",
    "missing_capabilities", "models", "param", "parse_target", "reset_registry", "run",
    # raw images → the model's normalized batch, declared as such
    "NormalizedBatch", "preprocess",
    # evaluation metrics (kind "metric"): the base class, what it is given and returns; cnnviz evaluate
    "Metric", "MetricBatch", "MetricParams", "MetricResult", "MetricScores", "PerturbationParams",
    "Evaluation", "evaluate",
    # dataset runs: attribution maps of a whole dataset in one resumable store
    "StoredResults", "open_results", "run_dataset",
    # for plugins: targets, score selection, pictures
    "TARGET_KINDS", "images", "plots", "render", "resolve_classes", "select_scores", "validate_targets",
    # the adapter contract's answers (cnnviz_core.ModelAdapter), and small facts kept between processes
    "AdapterError", "CamHead", "ForwardRunner", "ReceptiveField", "Span", "WeightLayer", "WeightLayerNotFoundError", "notes",
]
