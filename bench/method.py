"""The method contract: a registered class with a typed config and ``unlearn(ctx) -> Generator``.

A method never times itself, counts its own steps, writes files or picks a device: the
:class:`~bench.context.UnlearnContext` hands it models, data, optimizers and the budgeted loop,
and the driver measures everything from outside.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from bench.core.errors import BenchError
from bench.core.registry import Registry


class Method:
    #: registry key (set by :func:`register_method`)
    name: ClassVar[str] = ""
    #: dataclass of hyperparameters with the reference defaults; must have ``iters: int``
    Config: ClassVar[type]
    #: citation shown by ``bench list methods`` and in the README
    paper: ClassVar[str] = ""
    #: True when the method needs no real training images (labels or generated samples only)
    data_free: ClassVar[bool] = False
    #: "multi-step" (evaluated with the task's sampler) or "one-step" (a distilled generator)
    output: ClassVar[str] = "multi-step"
    #: "reference" (checked against official code), "paper" (paper only), "reconstruction",
    #: "baseline", or "user" (the default: a plugin whose fidelity this project has not checked)
    status: ClassVar[str] = "user"
    version: ClassVar[str] = "1"
    #: optimizer steps per iteration; the driver checks ``iters * steps_per_iter`` against its count
    steps_per_iter: ClassVar[int] = 1
    #: conformance checks this method is known to fail, with the reason: "forgets" (UA rises well
    #: above the Original's) and/or "keeps_quality" (retained accuracy stays above the floor). The
    #: suite runs them anyway and marks them as expected failures (xfail, strict), so a method that
    #: starts passing, or a new failure, is visible.
    expected_failures: ClassVar[dict[str, str]] = {}
    #: reference rows (Original, Retrain) are shown apart in tables
    reference_row: ClassVar[bool] = False
    #: overrides of the reference defaults, applied in this order (later wins):
    #: ``"concept"`` (the reference defaults of the method's text-to-image variant, on every concept task),
    #: a profile (``"fast"``: class tasks; ``"concept:fast"``: concept tasks), then ``"<task>:<profile>"``
    #: (``"digits-class:fast"``, ``"sd-digits:smoke"``). The class ``"paper"`` profile uses the reference defaults.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: which task kinds the method supports: "class" (class-conditional DDPM) and/or "concept"
    #: (text-to-image concept forgetting); one ``unlearn(ctx)`` serves both, through the context
    task_kinds: ClassVar[frozenset[str]] = frozenset({"class"})

    def __init__(self, config: Any) -> None:
        self.config = config

    def unlearn(self, ctx):  # pragma: no cover - the contract
        """Unlearn with a :class:`bench.context.UnlearnContext`; return a generator (``ctx.sampler(net)`` or
        ``ctx.one_step(...)``)."""
        raise NotImplementedError

    @classmethod
    def task_defaults(cls, task: Any, profile: Any) -> dict[str, Any]:
        """Defaults that depend on the task (e.g. Retrain copies the base recipe); below presets."""
        return {}

    def expected_steps(self) -> int:
        return int(self.config.iters) * self.steps_per_iter

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.name, "paper": cls.paper, "data_free": cls.data_free, "output": cls.output,
                "status": cls.status, "version": cls.version, "steps_per_iter": cls.steps_per_iter,
                "task_kinds": sorted(cls.task_kinds)}


def supports(cls: type[Method], kind: str) -> bool:
    return kind in cls.task_kinds


def methods_for(kind: str) -> list[str]:
    return [n for n in METHODS.names() if supports(METHODS.get(n), kind)]


METHODS: Registry[type[Method]] = Registry("method", Method)


def register_method(name: str):
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} is not a Method subclass")
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"method {name!r} needs a dataclass Config")
        if "iters" not in {f.name for f in dataclasses.fields(cls.Config)}:
            raise TypeError(f"method {name!r}: Config must have an 'iters' field (the budget)")
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return deco


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def per_task(values: dict[str, dict], profiles: tuple[str, ...] = ("smoke", "fast", "paper")) -> dict[str, dict]:
    """``{"sd-nudity": {...}}`` -> presets keyed ``"sd-nudity:<profile>"`` for every profile."""
    return {f"{task}:{p}": v for task, v in values.items() for p in profiles}


def merge_presets(*dicts: dict[str, dict]) -> dict[str, dict]:
    """Presets merged key by key (later dictionaries win within a key)."""
    out: dict[str, dict] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = {**out.get(k, {}), **v}
    return out


def preset_keys(kind: str, task: str, profile: str) -> list[str]:
    """The preset keys that apply to a cell, in the order they are applied."""
    if kind == "concept":
        return ["concept", f"concept:{profile}", f"{task}:{profile}"]
    return [profile, f"{task}:{profile}"]


def resolve_config(cls: type[Method], task: Any, profile: Any, overrides: dict[str, Any] | None = None,
                   iters: int | None = None) -> Any:
    """Reference defaults, then ``task_defaults``, then the presets (:func:`preset_keys`), then the profile's
    per-method sizes, then user overrides (``--set``), then ``--steps``."""
    kind = getattr(task, "kind", "class")
    merged: dict[str, Any] = dict(cls.task_defaults(task, profile))
    for key in preset_keys(kind, task.name, profile.name):
        merged.update(cls.presets.get(key, {}))
    # a profile may shrink every method's sizes ("*": only options the method has) or one method's
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    shrink = getattr(profile, "method_overrides", None) or {}
    merged.update({k: v for k, v in shrink.get("*", {}).items() if k in fields})
    merged.update(shrink.get(cls.name, {}))
    merged.update(overrides or {})
    if iters is not None:
        if iters < 0:
            raise BenchError(f"--steps must be non-negative, got {iters}")
        merged["iters"] = iters
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise BenchError(f"method {cls.name!r} has no option {', '.join(unknown)}; "
                         f"options: {', '.join(sorted(fields))}")
    base = cls.Config()
    for key, value in merged.items():
        default = getattr(base, key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise BenchError(f"{cls.name}.{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise BenchError(f"{cls.name}.{key} must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(default, bool) and float(value) != int(value):
                raise BenchError(f"{cls.name}.{key} must be an integer, got {value!r}")
            merged[key] = type(default)(value)
    return dataclasses.replace(base, **merged)
