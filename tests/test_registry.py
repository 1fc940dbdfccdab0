from __future__ import annotations

import pytest

from bench.core.errors import BenchError
from bench.core.registry import Registry, import_folder
from bench.method import METHODS, Method, register_method, resolve_config
from bench.tasks.digits import DIGITS


class Base:
    pass


class Child(Base):
    pass


def test_unknown_name_suggests_closest_and_lists_all():
    reg = Registry("method", Base)
    reg.add("salun", Child)
    reg.add("sfron", Child)
    with pytest.raises(BenchError) as e:
        reg.get("salnu")
    msg = str(e.value)
    assert "did you mean salun" in msg.lower() and "Available: salun, sfron" in msg


def test_duplicates_and_frozen_are_refused():
    reg = Registry("metric", Base)
    reg.add("a", Child)
    with pytest.raises(ValueError):
        reg.add("a", Base)
    reg.freeze()
    with pytest.raises(ValueError):
        reg.add("b", Child)


def test_lazy_string_targets_import_on_first_use_and_check_type():
    reg = Registry("thing", Base)
    reg.add("od", "collections:OrderedDict")
    with pytest.raises(TypeError):
        reg.get("od")
    reg2 = Registry("thing")
    reg2.add("od", "collections:OrderedDict")
    import collections

    assert reg2.get("od") is collections.OrderedDict


def test_resolve_list_all_and_unknown():
    reg = Registry("method", Base)
    for n in ("b", "a"):
        reg.add(n, Child)
    assert reg.resolve_list("all") == ["a", "b"]
    assert reg.resolve_list("b, a,b") == ["b", "a"]
    with pytest.raises(BenchError):
        reg.resolve_list("a,zz")


def test_every_bundled_method_is_registered():
    for name in ("original", "retrain", "ga", "rl", "ft", "salun"):
        assert name in METHODS


def test_plugin_folder_is_discovered(tmp_path):
    (tmp_path / "my_noop.py").write_text(
        "from dataclasses import dataclass\n"
        "from bench.method import Method, register_method\n"
        "@register_method('plugin-noop-test')\n"
        "class Noop(Method):\n"
        "    @dataclass(frozen=True)\n"
        "    class Config:\n"
        "        iters: int = 0\n"
        "    steps_per_iter = 0\n"
        "    def unlearn(self, ctx):\n"
        "        return ctx.sampler(ctx.base_model(trainable=False))\n")
    (tmp_path / "_private.py").write_text("raise RuntimeError('private helpers are not imported')\n")
    assert import_folder(tmp_path) == ["my_noop"]
    assert "plugin-noop-test" in METHODS


def test_broken_plugin_is_a_clear_user_error(tmp_path):
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    with pytest.raises(BenchError, match="broken.py failed to import"):
        import_folder(tmp_path)


def test_register_requires_iters_budget():
    from dataclasses import dataclass

    with pytest.raises(TypeError, match="iters"):
        @register_method("no-iters-test")
        class Bad(Method):
            @dataclass(frozen=True)
            class Config:
                lr: float = 1.0


def test_config_resolution_order_and_validation():
    cls = METHODS.get("salun")
    ref = resolve_config(cls, DIGITS, DIGITS.profile("paper"))
    assert ref.iters == 1000 and ref.lr == 1e-4  # the reference defaults
    fast = resolve_config(cls, DIGITS, DIGITS.profile("fast"))
    assert fast.iters == cls.presets["fast"]["iters"]
    user = resolve_config(cls, DIGITS, DIGITS.profile("fast"), {"lr": 1e-5}, iters=7)
    assert (user.lr, user.iters) == (1e-5, 7)
    with pytest.raises(BenchError, match="no option"):
        resolve_config(cls, DIGITS, DIGITS.profile("fast"), {"lrr": 1})
    with pytest.raises(BenchError, match="must be a number"):
        resolve_config(cls, DIGITS, DIGITS.profile("fast"), {"lr": "fast"})
    with pytest.raises(BenchError, match="integer"):
        resolve_config(cls, DIGITS, DIGITS.profile("fast"), {"iters": 2.5})
