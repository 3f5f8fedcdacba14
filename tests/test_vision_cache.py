"""The vision cache (vlmkit/engine/vision_cache.py) and length-grouped evaluation batches (vlmkit/engine/batching.py).

In-process: cached visual tokens equal the encoder's, per slot; hits and misses are counted per image slot; the
memory bound evicts the least recently used entries, which a spill file gives back bit for bit (and is deleted at the
end); other weights empty the cache; deferred images are decoded by the cache, once each. Through the CLI, on a tiny
fine-tuned OpenFlamingo (3-beam search, 0/4/8 shots × 2 trials): every prediction of the sweep is the same with the
cache on, off, spilling, with length grouping off, with the beams' prefill not shared, on 2 ranks with all of them and
with none of them — and the log counts the hits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_flamingo_model import images, randomize_trainable, tiny_config

from conftest import REPO, run_tool
from vlmkit.data.records import DeferredImage, PromptTemplate, RecordDataset
from vlmkit.engine.batching import LengthGroupedBatches
from vlmkit.engine.vision_cache import VisionCache
from vlmkit.models.flamingo import OpenFlamingo
from vlmkit.registry import MODELS

DEMO = "<image>Question: what color? Short answer: red<|endofchunk|>"
QUERY = "<image>Question: what shape? Short answer:"


@pytest.fixture(scope="module")
def model(spm_tokenizer_path: Path) -> OpenFlamingo:
    m = MODELS.build(tiny_config(spm_tokenizer_path)).eval()
    randomize_trainable(m)
    return m


@pytest.fixture(scope="module")
def pool() -> dict[str, torch.Tensor]:
    return {f"img{i}": image for i, image in enumerate(images(6, seed=5))}


def batch_of(model: OpenFlamingo, pool: dict[str, torch.Tensor], rows: list[list[str]], deferred: bool = False) -> dict:
    samples = [{"id": str(i), "prompt": DEMO * (len(keys) - 1) + QUERY, "target": "", "image_keys": keys,
                "images": [DeferredImage(k) if deferred else pool[k] for k in keys]} for i, keys in enumerate(rows)]
    return model.collator(train=False)(samples)


ROWS = [["img0", "img1", "img2"], ["img1", "img3"], ["img4"]]


def expected_media(model: OpenFlamingo, pool: dict[str, torch.Tensor], rows: list[list[str]]) -> list[list[torch.Tensor]]:
    with torch.no_grad():
        return [[model.encode_images(pool[k][None, None, None])[0, 0] for k in keys] for keys in rows]


def test_cached_tokens_equal_the_encoder_and_hits_are_counted(model, pool):
    cache = VisionCache(max_bytes=10**9)
    cache.bind(model)
    want = expected_media(model, pool, ROWS)
    with torch.no_grad():
        media = cache.media(model, batch_of(model, pool, ROWS))
    for i, keys in enumerate(ROWS):
        for j in range(len(keys)):
            torch.testing.assert_close(media[i, j], want[i][j], rtol=1e-5, atol=1e-5)
        assert not media[i, len(keys):].any()  # padded slots are zeros
    assert (cache.stats.misses, cache.stats.hits) == (5, 1)  # img1 twice in one batch: encoded once
    with torch.no_grad():
        again = cache.media(model, batch_of(model, pool, ROWS))
    assert torch.equal(again, media) and (cache.stats.misses, cache.stats.hits) == (5, 7)


def test_generation_with_the_cache_equals_without(model, pool):
    cache = VisionCache(max_bytes=10**9)
    cache.bind(model)
    batch = batch_of(model, pool, ROWS)
    for beams in (1, 3):
        plain = model.generate_ids(batch, max_new_tokens=6, num_beams=beams)
        cached = {**batch}
        with torch.no_grad():
            cache.fill(model, cached)
        assert torch.equal(model.generate_ids(cached, max_new_tokens=6, num_beams=beams), plain)


def test_memory_bound_evicts_oldest_and_the_spill_file_gives_them_back(model, pool, tmp_path):
    spill = tmp_path / "out" / "vision_cache.rank0.spill"
    one = expected_media(model, pool, [["img0"]])[0][0]
    size = one.numel() * one.element_size()
    cache = VisionCache(max_bytes=2 * size, spill_path=spill)
    cache.bind(model)
    with torch.no_grad():
        first = cache.media(model, batch_of(model, pool, [["img0"], ["img1"], ["img2"], ["img3"]]))
    assert cache.bytes_held <= 2 * size and cache.stats.evicted == 2 and spill.is_file()
    with torch.no_grad():
        back = cache.media(model, batch_of(model, pool, [["img0"], ["img1"]]))  # the two evicted ones
    assert torch.equal(back, first[:2]) and cache.stats.spill_hits == 2 and cache.stats.misses == 4
    dropping = VisionCache(max_bytes=2 * size)  # no spill file: evicted entries are recomputed
    dropping.bind(model)
    with torch.no_grad():
        dropping.media(model, batch_of(model, pool, [["img0"], ["img1"], ["img2"]]))
        dropping.media(model, batch_of(model, pool, [["img0"]]))
    assert dropping.stats.misses == 4 and len(dropping) == 2
    cache.close()
    assert not spill.exists()


def test_other_weights_empty_the_cache(model, pool):
    cache = VisionCache(max_bytes=10**9)
    first = cache.bind(model)
    with torch.no_grad():
        cache.media(model, batch_of(model, pool, ROWS))
    assert cache.bind(model) == first and len(cache) == 5  # unchanged weights: nothing recomputed
    with torch.no_grad():
        model.perceiver.latents.add_(0.0)  # in place, same values: rehashed, same hash, cache kept
    assert cache.bind(model) == first and len(cache) == 5
    saved = model.perceiver.latents.detach().clone()
    try:
        with torch.no_grad():
            model.perceiver.latents.add_(0.01)  # as an optimizer step would
        assert cache.bind(model) != first and len(cache) == 0
    finally:
        with torch.no_grad():
            model.perceiver.latents.copy_(saved)


def test_deferred_images_are_decoded_by_the_cache_once(model, pool):
    loaded: list[str] = []
    cache = VisionCache(max_bytes=10**9, loader=lambda key: loaded.append(key) or pool[key])
    cache.bind(model)
    batch = batch_of(model, pool, ROWS, deferred=True)
    assert batch["images_deferred"] and not batch["images"].any()
    with pytest.raises(ValueError, match="vision cache"):
        model.generate_ids(batch, max_new_tokens=2)
    with torch.no_grad():
        media = cache.media(model, batch)
        cache.media(model, batch_of(model, pool, ROWS, deferred=True))
    assert sorted(loaded) == ["img0", "img1", "img2", "img3", "img4"] and cache.stats.decoded == 5
    torch.testing.assert_close(media[0, 0], expected_media(model, pool, [["img0"]])[0][0], rtol=1e-5, atol=1e-6)


class _Images:
    """Images by key, in memory (the ImageSource protocol, as much as RecordDataset's image paths use)."""

    def __init__(self, keys: list[str]) -> None:
        self.loaded: dict[str, int] = {k: i for i, k in enumerate(keys)}

    def load(self, key: str) -> int:
        return self.loaded[key]


class _ProbingDataset(RecordDataset):
    """Asks for its last image while its image index is being built, as a second loader thread would."""

    probed: Any = "not asked"

    def image_key(self, index: int) -> str:
        if index == 1 and self.probed == "not asked":
            self.probed = None  # asking again re-enters the index building: no second probe
            self.probed = self.image_by_key(f"d:img{len(self.records) - 1}")
        return super().image_key(index)


def test_image_index_is_never_seen_half_built():
    keys = [f"img{i}" for i in range(5)]
    template = PromptTemplate("{image_token}{question} {answer}", "answer", "<image>", "<|endofchunk|>")
    data = _ProbingDataset([{"id": str(i), "image": k} for i, k in enumerate(keys)], _Images(keys), None, template,
                           train=False, name="d", split="val")
    assert data.image_by_key("d:img2") == 2
    assert data.probed == 4  # the index it saw was whole (a half-built one answers None: no such image)
    assert data.image_by_key("d:missing") is None
    data.defer_images(True)
    assert data.image_or_deferred(3) == DeferredImage("d:img3")
    data.defer_images(False)
    assert data.image_or_deferred(3) == 3


@pytest.mark.parametrize("n, batch_size", [(23, 4), (5, 8), (16, 4)])
def test_length_grouped_batches_do_not_depend_on_the_rank_count(n, batch_size):
    lengths = [(i * 7919) % 13 for i in range(n)]
    single = LengthGroupedBatches(lengths, batch_size).batches
    assert sorted(i for b in single for i in b) == list(range(n))
    assert [lengths[b[0]] for b in single] == sorted((lengths[b[0]] for b in single), reverse=True)
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 12 for b in single)
    for world in (2, 3):
        per_rank = [LengthGroupedBatches(lengths, batch_size, r, world).batches for r in range(world)]
        assert len({len(b) for b in per_rank}) == 1  # every rank runs as many batches (collectives stay in step)
        assert {tuple(b) for rank in per_rank for b in rank} == {tuple(b) for b in single}


# ------------------------------------------------------------------------------------------------------ through the CLI
PROJECT = str(REPO / "projects/quickstart/flamingo_vqav2_tiny.yaml")
SHOTS = ("0", "4", "8")


def sweep(fewshot_flamingo: dict, out: Path, *options: str, torchrun: int = 0) -> Path:
    res = run_tool([str(REPO / "tools/evaluate.py"), "--cfg-path", PROJECT, "--checkpoint", fewshot_flamingo["weights"],
                    "--split", "val", "--shots", *SHOTS, "--trials", "2", "--options", f"run.output_dir={out}",
                    "run.generate.max_new_tokens=3", "run.generate.num_beams=3", "run.eval_batch_size=5", *options],
                   env=fewshot_flamingo["env"], torchrun=torchrun)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def predictions(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("shots*/trial*/predictions/*.json"))}


@pytest.fixture(scope="module")
def cached_sweep(fewshot_flamingo, tmp_path_factory):
    return sweep(fewshot_flamingo, tmp_path_factory.mktemp("vision_cache") / "cached")


def test_sweep_counts_hits_and_decodes_each_image_once(cached_sweep):
    lines = [line for line in (cached_sweep / "log.txt").read_text().splitlines() if "vision cache, val:" in line]
    assert len(lines) == 6  # one per point
    decoded = sum(int(line.split(" images decoded")[0].rsplit(" ", 1)[1]) for line in lines)
    held = int(lines[-1].split(" images held")[0].rsplit("; ", 1)[1])
    assert decoded == held  # every image decoded (and encoded) once over the whole sweep
    assert "0 misses (100.0 % hit rate)" in lines[1]  # zero shots, trial 1: the query images of trial 0


@pytest.mark.parametrize("variant, options, torchrun", [
    ("off", ("run.vision_cache_gb=0",), 0),
    ("spill", ("run.vision_cache_gb=0.00002", "run.vision_cache_spill=true"), 0),
    ("ungrouped", ("run.group_by_length=false",), 0),
    ("unshared_prefill", ("run.generate.share_prefill=false",), 0),
    ("two_ranks", (), 2),
    ("two_ranks_none_of_them", ("run.vision_cache_gb=0", "run.group_by_length=false",
                                "run.generate.share_prefill=false"), 2),
])
def test_sweep_predictions_identical(fewshot_flamingo, cached_sweep, tmp_path, variant, options, torchrun):
    out = sweep(fewshot_flamingo, tmp_path / variant, *options, torchrun=torchrun)
    assert predictions(out) == predictions(cached_sweep) and len(predictions(out)) == 6
    assert not list(out.glob("*.spill"))  # the spill file is gone with the run
    if variant == "spill":
        assert "from the spill file" in (out / "log.txt").read_text()
        spilled = [line for line in (out / "log.txt").read_text().splitlines() if "vision cache, val:" in line]
        assert any(" 0 from the spill file" not in line for line in spilled)
