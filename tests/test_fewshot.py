"""Few-shot demos: chosen by sample id (not by rank or position), zero-shot text-only demos, RICES ordering, prompts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import ToTensor

from vlmkit.data.fewshot import rices_select, save_features, wrap_fewshot
from vlmkit.io import stable_seed
from vlmkit.data.synthetic.coco_vqa import write_synthetic_coco, write_synthetic_vqav2
from vlmkit.data.coco import COCOCaptionBuilder
from vlmkit.data.vqav2 import VQAv2Builder

from vlmkit.config import CONFIG_ROOT as CONFIGS  # noqa: E402


def cfg_for(name: str, root: Path, **overrides):
    cfg = OmegaConf.load(CONFIGS / "datasets" / f"{name}.yaml")
    cfg.root = str(root)
    return OmegaConf.merge(cfg, overrides)


def FewShotDataset(query, demos, **fewshot):
    """The few-shot wrapper with vqav2.yaml's fewshot defaults and ``fewshot`` changed (keys as in the YAML)."""
    changes = {k: str(v) if isinstance(v, Path) else v for k, v in fewshot.items()}
    cfg = OmegaConf.merge(OmegaConf.load(CONFIGS / "datasets" / "vqav2.yaml").fewshot, changes)
    return wrap_fewshot(query, demos, cfg)


@pytest.fixture(scope="module")
def vqa(tmp_path_factory: pytest.TempPathFactory):
    root = write_synthetic_vqav2(tmp_path_factory.mktemp("v"), n_train_images=10, n_val_images=6, seed=3)
    builder = VQAv2Builder(cfg_for("vqav2", root))
    return builder, builder.build("val", ToTensor(), False), builder.build("train", ToTensor(), False)


def test_stable_seed_is_the_same_in_another_process() -> None:
    code = "from vlmkit.io import stable_seed; print(stable_seed(42, 1, '12345'))"
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert int(out.stdout) == stable_seed(42, 1, "12345")
    assert stable_seed(42, 1, "12345") != stable_seed(42, 2, "12345") != stable_seed(42, 1, "12346")


def test_demos_depend_on_sample_id_only(vqa) -> None:
    builder, val, train = vqa
    full = FewShotDataset(val, train, shots=4, seed=7, trial=0, query_set_size=20)
    demos = {full[i]["id"]: full[i]["demo_ids"] for i in range(len(full))}
    # two "ranks" each see every other sample (DistributedSampler order): same demos per id
    for rank in range(2):
        for i in range(rank, len(full), 2):
            assert full[i]["demo_ids"] == demos[full[i]["id"]]
    # a different subset of the evaluated split (other positions, other length): still the same demos per id
    sub_val = VQAv2Builder(cfg_for("vqav2", Path(builder.cfg.root), max_samples=7)).build("val", ToTensor(), False)
    sub = FewShotDataset(sub_val, train, shots=4, seed=7, trial=0, query_set_size=20)
    for i in range(len(sub)):
        assert sub[i]["demo_ids"] == demos[sub[i]["id"]]
    assert len({tuple(d) for d in demos.values()}) > 1  # samples do get different demos
    other_trial = FewShotDataset(val, train, shots=4, seed=7, trial=1, query_set_size=20)
    assert any(other_trial[i]["demo_ids"] != demos[other_trial[i]["id"]] for i in range(len(val)))
    # demos come from the query set only
    allowed = set(full.candidate_ids)
    assert len(allowed) == 20 and all(set(d) <= allowed for d in demos.values())


def test_k_shot_prompt_and_images_in_tag_order(vqa) -> None:
    _, val, train = vqa
    fs = FewShotDataset(val, train, shots=2, seed=0, query_set_size=30)
    s = fs[3]
    d = [train.index_of(i) for i in s["demo_ids"]]
    r0, r1, q = train.records[d[0]], train.records[d[1]], val.records[3]
    assert s["prompt"] == (f"<image>Question:{r0['question']} Short answer:{r0['answers'][0]}<|endofchunk|>\n"
                           f"<image>Question:{r1['question']} Short answer:{r1['answers'][0]}<|endofchunk|>\n"
                           f"<image>Question:{q['question']} Short answer:")
    assert s["prompt"].count("<image>") == len(s["images"]) == 3
    assert torch.equal(s["images"][0], train.image(d[0])) and torch.equal(s["images"][1], train.image(d[1]))
    assert torch.equal(s["images"][2], val.image(3))
    assert s["target"] == "" and s["question_id"] == q["question_id"]


def test_zero_shot_uses_two_text_only_demos(vqa) -> None:
    _, val, train = vqa
    s = FewShotDataset(val, train, shots=0, seed=0, query_set_size=30)[0]
    assert len(s["demo_ids"]) == 2 and len(s["images"]) == 1
    context, query = s["prompt"].rsplit("\n", 1)
    assert "<image>" not in context and context.count("<|endofchunk|>") == 2 and context.count("Question:") == 2
    assert query.startswith("<image>Question:") and s["prompt"].count("<image>") == len(s["images"])


def test_caption_fewshot_prompt(tmp_path: Path) -> None:
    root = write_synthetic_coco(tmp_path, n_train=8, n_val=2, n_test=3)
    b = COCOCaptionBuilder(cfg_for("coco_caption", root, fewshot={"shots": 1}))
    test, train = b.build("test", None, False), b.build("train", None, False)
    s = wrap_fewshot(test, train, b.cfg.fewshot)[0]
    demo = train.record_by_id(s["demo_ids"][0])
    assert s["prompt"] == f"<image>Output:{demo['captions'][0]}<|endofchunk|>\n<image>Output:"


def test_rices_select_most_similar_last() -> None:
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    query = torch.tensor([[2.0, 0.2], [0.0, -1.0]])
    order = rices_select(query, pool, 3)
    assert order[0].tolist() == [1, 2, 0]  # cos: 0 > 2 > 1 > 3, most similar last
    sims = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(pool, dim=-1).T
    for q in range(2):
        picked = sims[q, order[q]]
        assert torch.all(picked[1:] >= picked[:-1])  # ascending similarity


def test_rices_fewshot_dataset(vqa, tmp_path: Path) -> None:
    _, val, train = vqa
    gen = torch.Generator().manual_seed(0)
    train_feats = torch.randn(len(train), 8, generator=gen)
    save_features(tmp_path / "train.pt", [train.sample_id(i) for i in range(len(train))], train_feats)
    # each val item's feature is a small perturbation of a known train item's, which must come last
    targets = [5, 11, 17, 2, 29, 8] * 4
    val_feats = torch.stack([train_feats[targets[i]] + 0.01 for i in range(len(val))])
    save_features(tmp_path / "val.pt", [val.sample_id(i) for i in range(len(val))], val_feats)
    fs = FewShotDataset(val, train, shots=3, rices=True, rices_features_dir=tmp_path)
    for i in range(len(val)):
        s = fs[i]
        assert len(s["demo_ids"]) == 3 and s["demo_ids"][-1] == train.sample_id(targets[i])
        assert s["prompt"].count("<image>") == len(s["images"]) == 4
