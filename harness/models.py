"""One call from a method name to a model, for notebooks and tests.

    >>> from harness.models import create_model
    >>> model = create_model("pact", depth=20, lambda_=0.03)
    >>> out = model(torch.randn(2, 3, 32, 32), EvalSpec("deterministic"))

No data, no run directory, no device: the model is built on the CPU exactly as ``train`` builds
it (method defaults filled in, the method config validated). A run's model, with the classes of
its data, comes from :func:`harness.runs.build_model`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.config import DATASETS, config_key, from_dict
from harness.contract import AdaptiveModel, ModelSpec
from harness.errors import ConfigError, check_choice
from harness.registry import get_method

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelSpec))


def split_overrides(name: str, overrides: dict[str, Any]) -> tuple[dict, dict]:
    """``(model fields, method config keys)`` of ``create_model``'s keyword arguments.

    Model keys are :class:`~harness.contract.ModelSpec` fields (``dataset``, ``depth``,
    ``variant``, ``num_classes``); method keys are fields of the method's config, as field name
    (``lambda_``) or config key (``**{"lambda": 0.03}``). Anything else is a ``ConfigError``
    listing the allowed keys; so is a key that both could mean.
    """
    spec = get_method(name)
    method_fields = {f.name: config_key(f.name) for f in dataclasses.fields(spec.config_cls)}
    method_keys = {**{key: key for key in method_fields.values()}, **method_fields}
    model, method = {}, {}
    for key, value in overrides.items():
        if key in MODEL_FIELDS and key in method_keys:
            raise ConfigError(
                f"create_model({name!r}): {key!r} is both a model field and a field of "
                f"{spec.config_cls.__name__}; build ModelSpec and the config yourself"
            )
        if key in MODEL_FIELDS:
            model[key] = value
        elif key in method_keys:
            method[method_keys[key]] = value
        else:
            allowed = ", ".join([*MODEL_FIELDS, *method_fields]) or "(none)"
            raise ConfigError(
                f"create_model({name!r}): unknown argument {key!r}; allowed: {allowed}"
            )
    return model, method


def create_model(name: str, **overrides: Any) -> AdaptiveModel:
    """Build method ``name``'s model; keyword arguments set the backbone and the method config.

    ``create_model("pact", depth=20, lambda_=0.03)`` is PACT on a CIFAR ResNet-20 with
    lambda 0.03 and every other hyper-parameter at its default. The model is returned in
    training mode on the CPU, as ``build`` made it.
    """
    model_keys, method_keys = split_overrides(name, overrides)
    spec = get_method(name)
    model_spec = from_dict(ModelSpec, model_keys, "model")
    check_choice("model.dataset", model_spec.dataset, DATASETS)
    method_config = from_dict(spec.config_cls, method_keys, "method")
    method_config.validate()
    return spec.build(model_spec, method_config)
