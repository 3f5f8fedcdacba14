"""A model registered in a user's own module trains and evaluates from a YAML without any edit to vlmkit."""
import json
import textwrap

import pytest

from conftest import REPO, run_tool

USER_MODULE = '''
import torch
from torch import nn

from vlmkit.models.base import VLModel
from vlmkit.registry import MODELS

LETTERS = "ABCDE"


class Collate:
    def __call__(self, samples):
        return {"answer": torch.tensor([s["answer"] for s in samples]),
                "has_image": torch.tensor([bool(s["images"]) for s in samples]),
                "ids": [s["id"] for s in samples]}


@MODELS.register("letter_prior")
class LetterPrior(VLModel):
    """Learns how often each option letter is right, separately for image and text questions."""

    default_config = {"n_letters": 5}

    def __init__(self, n_letters):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2, n_letters))
        self.image_transform = lambda image: torch.zeros(1)

    @classmethod
    def from_config(cls, cfg, device=None):
        return cls(int(cfg.n_letters)).to(device or "cpu")

    def collator(self, train):
        return Collate()

    def forward(self, batch):
        logits = self.logits[batch["has_image"].long()]
        return {"loss": nn.functional.cross_entropy(logits, batch["answer"])}

    @torch.no_grad()
    def generate(self, batch, **gen_kwargs):
        best = self.logits[batch["has_image"].long()].argmax(-1)
        return [f"The answer is {LETTERS[i]}." for i in best.tolist()]
'''


@pytest.mark.parametrize("how", ["run.imports", "--import"])
def test_user_registered_model(tmp_path, how):
    data = tmp_path / "sqa"
    res = run_tool([str(REPO / "tools/prepare_data.py"), "synthetic-scienceqa", "--out", str(data), "--no-tiny-llama",
                    "--n-train", "60", "--n-val", "10", "--n-test", "30"])
    assert res.returncode == 0, res.stderr
    (tmp_path / "my_models.py").write_text(USER_MODULE)
    (tmp_path / "project.yaml").write_text(textwrap.dedent(f"""
        model: {{arch: letter_prior}}
        datasets: {{scienceqa: {{root: {data}}}}}
        run:
          task: scienceqa
          output_dir: {tmp_path / 'run'}
          device: cpu
          epochs: 3
          lr: 0.1
          eval_every: 0
          val_splits: []
          {"imports: [my_models]" if how == "run.imports" else ""}
    """))
    extra = ["--import", "my_models"] if how == "--import" else []
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(tmp_path / "project.yaml"), *extra],
                   env={"PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())["test"]
    predictions = json.loads((tmp_path / "run/predictions/scienceqa_test.json").read_text())["results"]
    problems = json.loads((data / "problems.json").read_text())
    # The model's answers are its learned per-modality majority letter: the same index for every image question.
    image_preds = {predictions[q] for q in predictions if problems[q]["image"]}
    assert len(image_preds) == 1 and metrics["unparsed"] == 0
    correct = sum(predictions[q] == problems[q]["answer"] for q in predictions)
    assert metrics["Average"] == pytest.approx(100 * correct / len(predictions))


def test_unregistered_user_model_is_a_clear_error(tmp_path):
    (tmp_path / "project.yaml").write_text("model: {arch: letter_prior}\nrun: {task: scienceqa}\n")
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(tmp_path / "project.yaml")])
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: unknown model 'letter_prior'")
