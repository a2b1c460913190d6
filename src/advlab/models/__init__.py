"""Models for advlab: every loader returns an :class:`ImageClassifier` that takes images in [0, 1] (NCHW),
normalises inside (so eps is in pixel units), is in eval mode, and tells its input size, mean/std, class names
and preprocessing. See docs/models_data.md.
"""

from advlab.models.classifier import ImageClassifier
from advlab.models.efficientnet_lite import convert_lukemelas_state_dict, lukemelas_to_timm_key
from advlab.models.prepare import PreparedModel, preparation_record, prepare
from advlab.models.robustbench import published_result
from advlab.models.user import check_fits, is_factory, parse_floats, parse_input_size
from advlab.models.weights import WeightsNotFoundError, load_state_dict_file, recorded_architecture
from advlab.models.zoo import (
    DEFAULT_MODEL,
    builtin_models,
    check_device,
    list_models,
    load_model,
    runs_user_code,
    torchvision_models,
)

__all__ = [
    "DEFAULT_MODEL",
    "ImageClassifier",
    "PreparedModel",
    "WeightsNotFoundError",
    "builtin_models",
    "check_device",
    "check_fits",
    "convert_lukemelas_state_dict",
    "is_factory",
    "list_models",
    "load_model",
    "load_state_dict_file",
    "lukemelas_to_timm_key",
    "parse_floats",
    "parse_input_size",
    "preparation_record",
    "prepare",
    "published_result",
    "recorded_architecture",
    "runs_user_code",
    "torchvision_models",
]
