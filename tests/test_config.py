import textwrap

import pytest

from vlmkit.config import load_config, save_config
from vlmkit.errors import ConfigError


@pytest.fixture()
def project(tmp_path):
    def write(name: str, text: str):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


BASE = """
model:
  arch: lavin
  adapter_dim: 8
datasets:
  scienceqa:
    root: /data/sqa
run:
  task: scienceqa
  epochs: 20
  blr: 9.0e-3
"""


def test_defaults_merged_and_overrides(project):
    cfg = load_config(project("a.yaml", BASE), ["run.epochs=3", "model.temperature=5.0"])
    assert cfg.run.epochs == 3 and cfg.run.blr == 9e-3
    assert cfg.model.temperature == 5.0
    assert cfg.run.batch_size == 4  # from vlmkit/configs/run.yaml
    assert cfg.datasets.scienceqa.root == "/data/sqa"
    assert cfg.datasets.scienceqa.prompt_format == "QCM-ALE"  # from vlmkit/configs/datasets/scienceqa.yaml


def test_extends_changes_only_given_keys(project):
    project("base.yaml", BASE)
    child = project("child.yaml", """
        extends: base.yaml
        run:
          scheduler:
            name: cyclical
    """)
    cfg = load_config(child)
    assert cfg.run.scheduler.name == "cyclical" and cfg.run.epochs == 20 and cfg.model.adapter_dim == 8


def test_unknown_key_reports_dotted_path_and_suggestion(project):
    path = project("a.yaml", BASE)
    with pytest.raises(ConfigError, match=r"unknown config key 'model.adapter_dimm'.*did you mean 'model.adapter_dim'"):
        load_config(path, ["model.adapter_dimm=16"])
    with pytest.raises(ConfigError, match=r"run.scheduler.nme"):
        load_config(path, ["run.scheduler.nme=constant"])


def test_wrong_type_rejected(project):
    path = project("a.yaml", BASE)
    with pytest.raises(ConfigError, match=r"'run.epochs'.*must be int"):
        load_config(path, ["run.epochs=many"])
    cfg = load_config(path, ["run.blr=1"])  # an int where a float is expected is fine
    assert cfg.run.blr == 1


def test_unknown_arch_and_section(project):
    with pytest.raises(Exception, match=r"unknown model 'lavn'; did you mean 'lavin'"):
        load_config(project("a.yaml", BASE.replace("arch: lavin", "arch: lavn")))
    with pytest.raises(ConfigError, match=r"unknown section 'trainer'"):
        load_config(project("b.yaml", BASE + "trainer: {}\n"))


def test_env_interpolation_and_dump(project, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SQA", "/env/sqa")
    cfg = load_config(project("a.yaml", BASE.replace("/data/sqa", "${oc.env:MY_SQA}")))
    assert cfg.datasets.scienceqa.root == "/env/sqa"
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again == cfg


def test_all_shipped_projects_load():
    from pathlib import Path

    projects = sorted(Path(__file__).resolve().parents[1].glob("projects/**/*.yaml"))
    assert projects, "no project YAMLs found"
    for path in projects:
        load_config(path)
