import pytest

from vlmkit.errors import UnknownNameError
from vlmkit.registry import Registry


def test_register_build_and_kwargs():
    reg = Registry("widget")

    @reg.register("box")
    class Box:
        def __init__(self, size: int = 1, color: str = "red"):
            self.size, self.color = size, color

    obj = reg.build({"type": "box", "size": 3})
    assert (obj.size, obj.color) == (3, "red")
    assert "box" in reg and reg.names() == ["box"]


def test_from_config_receives_whole_mapping():
    reg = Registry("model", key="arch")

    @reg.register("m")
    class M:
        @classmethod
        def from_config(cls, cfg, device=None):
            inst = cls()
            inst.cfg, inst.device = dict(cfg), device
            return inst

    m = reg.build({"arch": "m", "x": 1}, device="cpu")
    assert m.cfg == {"arch": "m", "x": 1} and m.device == "cpu"


def test_duplicate_name_is_an_error():
    reg = Registry("widget")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))


def test_unknown_name_suggests_closest():
    reg = Registry("model", key="arch")
    reg.register("lavin")(type("LaVIN", (), {}))
    reg.register("openflamingo")(type("OF", (), {}))
    with pytest.raises(UnknownNameError) as info:
        reg.get("lavn")
    assert str(info.value) == "unknown model 'lavn'; did you mean 'lavin'? registered: lavin, openflamingo"
    assert isinstance(info.value, KeyError)


def test_builtin_models_registered():
    from vlmkit.registry import MODELS, TASKS

    assert {"lavin", "openflamingo"} <= set(MODELS.names())
    assert {"scienceqa", "vqa", "caption"} <= set(TASKS.names())
