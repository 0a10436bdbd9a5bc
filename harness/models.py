"""The one way to build a model: a method's model for a run config, or from keyword arguments.

    >>> from harness.models import build_model, create_model
    >>> model = build_model(cfg, num_classes=data.num_classes)     # a run's model (train, study)
    >>> model = create_model("pact", depth=20, lambda_=0.03)       # notebooks and tests
    >>> out = model(torch.randn(2, 3, 32, 32), EvalSpec("deterministic"))

Both take the same path (:func:`build_model`): the method looked up in the registry, its config
built from the ``method`` section (defaults filled in, unknown keys refused) and validated
(:func:`build_method_config`), the dataset checked, then the method's ``build``. No data, no run
directory, no device: the model is returned in training mode on the CPU, as ``build`` made it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from harness.config import DATASETS, RunConfig, config_key, from_dict
from harness.contract import AdaptiveModel, MethodConfig, MethodSpec, ModelSpec
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


def build_method_config(spec: MethodSpec, values: Mapping[str, Any]) -> MethodConfig:
    """``spec``'s config from a ``method`` section (config keys: ``lambda``, not ``lambda_``):
    defaults filled in, unknown keys and bad types refused, then ``validate()``d."""
    config = from_dict(spec.config_cls, values, "method")
    config.validate()
    return config


def build_model(cfg: RunConfig, num_classes: int | None = None) -> AdaptiveModel:
    """The model of ``cfg``: method ``cfg.method`` with ``cfg.method_config`` on ``cfg.model``.

    ``num_classes`` (the data's) applies when ``cfg.model.num_classes`` is None. The method
    config is resolved and validated on the way (:func:`build_method_config`);
    :func:`harness.runs.resolve_method` returns the resolved config itself.
    """
    spec = get_method(cfg.method)
    model_spec = cfg.model
    check_choice("model.dataset", model_spec.dataset, DATASETS)
    if spec.variants:
        check_choice(f"model.variant (method {spec.name})", model_spec.variant, spec.variants)
    if num_classes is not None and model_spec.num_classes is None:
        model_spec = dataclasses.replace(model_spec, num_classes=num_classes)
    return spec.build(model_spec, build_method_config(spec, cfg.method_config))


def create_model(name: str, **overrides: Any) -> AdaptiveModel:
    """Build method ``name``'s model; keyword arguments set the backbone and the method config.

    ``create_model("pact", depth=20, lambda_=0.03)`` is PACT on a CIFAR ResNet-20 with
    lambda 0.03 and every other hyper-parameter at its default: :func:`build_model` of the run
    config those arguments describe.
    """
    model_keys, method_keys = split_overrides(name, overrides)
    model_spec = from_dict(ModelSpec, model_keys, "model")
    return build_model(RunConfig(method=name, method_config=method_keys, model=model_spec))


def backbone_identity(model: nn.Module) -> dict[str, str]:
    """The backbone a model runs on: its name (``backbone.name`` if it has one, else its class)
    and a hash of its architecture (every submodule's name, class and ``extra_repr``, every
    parameter's and buffer's name and shape; not their values): two runs with equal hashes ran
    the same architecture, whoever built it."""
    backbone = model.backbone
    name = getattr(backbone, "name", None) or (
        f"{type(backbone).__module__}.{type(backbone).__qualname__}"
    )
    digest = hashlib.sha256()
    for key, module in backbone.named_modules():
        digest.update(f"{key}|{type(module).__qualname__}|{module.extra_repr()}\n".encode())
    for key, tensor in [*backbone.named_parameters(), *backbone.named_buffers()]:
        digest.update(f"{key}|{tuple(tensor.shape)}\n".encode())
    return {"name": str(name), "architecture_hash": digest.hexdigest()[:16]}
