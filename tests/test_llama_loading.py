"""LLaMA loaders: Meta layout (1 and 2 shards) and HF directories → LlamaForCausalLM, checked against Meta's formulas."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from vlmkit.errors import DataError
from vlmkit.models.llama import load_llama, load_llama_tokenizer
from vlmkit.models.tiny import write_meta_checkpoint

PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-6, "vocab_size": -1}


def meta_reference_logits(sd: dict, params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """LLaMA's forward written from Meta's llama/model.py: RMSNorm, complex-number RoPE, causal attention, SwiGLU."""
    dim, n_heads, eps = params["dim"], params["n_heads"], params["norm_eps"]
    head_dim = dim // n_heads
    B, L = tokens.shape

    def rms_norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(L).float(), freqs)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)  # (L, head_dim/2) complex

    def rope(x):  # (B, L, H, head_dim), consecutive pairs are (real, imaginary)
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)

    mask = torch.triu(torch.full((L, L), float("-inf")), diagonal=1)
    h = sd["tok_embeddings.weight"][tokens]
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = rms_norm(h, sd[p + "attention_norm.weight"])
        q = (x @ sd[p + "attention.wq.weight"].T).view(B, L, n_heads, head_dim)
        k = (x @ sd[p + "attention.wk.weight"].T).view(B, L, n_heads, head_dim)
        v = (x @ sd[p + "attention.wv.weight"].T).view(B, L, n_heads, head_dim)
        q, k = rope(q).transpose(1, 2), rope(k).transpose(1, 2)
        scores = q @ k.transpose(2, 3) / math.sqrt(head_dim) + mask
        attn = (torch.softmax(scores, dim=-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(B, L, dim)
        h = h + attn @ sd[p + "attention.wo.weight"].T
        x = rms_norm(h, sd[p + "ffn_norm.weight"])
        ffn = (F.silu(x @ sd[p + "feed_forward.w1.weight"].T) * (x @ sd[p + "feed_forward.w3.weight"].T))
        h = h + ffn @ sd[p + "feed_forward.w2.weight"].T
    return rms_norm(h, sd["norm.weight"]) @ sd["output.weight"].T


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def meta_root(tmp_path_factory, spm_tokenizer_path):
    return write_meta_checkpoint(tmp_path_factory.mktemp("llama"), "tiny", PARAMS, spm_tokenizer_path, seed=0)


@pytest.fixture(scope="module")
def tokens(spm_tokenizer_path):
    tok = load_llama_tokenizer(spm_tokenizer_path)
    rows = [tok.encode("the answer is a because the red circle"),
            tok.encode("which shape is shown in picture of dog")]
    n = min(len(r) for r in rows)
    return torch.tensor([r[:n] for r in rows])


def test_meta_checkpoint_matches_meta_formulas(meta_root, tokens):
    model, tok = load_llama(meta_root, "tiny", "meta", torch.float32)
    raw = torch.load(meta_root / "tiny" / "consolidated.00.pth", weights_only=True)
    assert model.config.vocab_size == tok.vocab_size == raw["tok_embeddings.weight"].shape[0]
    assert model.config.intermediate_size == 192  # 32 · ceil(int(2·4·64/3) / 32)
    with torch.no_grad():
        ours = model(input_ids=tokens).logits
    ref = meta_reference_logits(raw, PARAMS, tokens)
    assert rel_err(ours, ref) <= 1e-5
    # the check has teeth: skipping the q/k permutation is visibly wrong
    assert rel_err(ours, meta_reference_logits({**raw, "layers.0.attention.wq.weight":
                                                raw["layers.0.attention.wq.weight"].flip(0)}, PARAMS, tokens)) > 1e-3


def test_two_shards_load_to_the_same_model(meta_root, tmp_path, spm_tokenizer_path, tokens):
    sharded = write_meta_checkpoint(tmp_path, "tiny", PARAMS, spm_tokenizer_path, seed=0, n_shards=2)
    shards = [torch.load(p, weights_only=True) for p in sorted((sharded / "tiny").glob("consolidated.*.pth"))]
    assert len(shards) == 2
    assert shards[0]["tok_embeddings.weight"].shape[1] == PARAMS["dim"] // 2  # split as Meta splits
    assert shards[0]["layers.0.attention.wo.weight"].shape[1] == PARAMS["dim"] // 2
    one, _ = load_llama(meta_root, "tiny", "meta")
    two, _ = load_llama(sharded, "tiny", "meta")
    sd1, sd2 = one.state_dict(), two.state_dict()
    assert sd1.keys() == sd2.keys()
    for key in sd1:
        assert torch.equal(sd1[key], sd2[key]), key


def test_hf_directory_loads_identical_logits(meta_root, tmp_path, tokens):
    model, _ = load_llama(meta_root, "tiny", "meta")
    hf_dir = tmp_path / "hf"
    model.save_pretrained(hf_dir)
    shutil.copyfile(meta_root / "tokenizer.model", hf_dir / "tokenizer.model")
    again, tok = load_llama(hf_dir, fmt="hf")
    assert tok.vocab_size == model.config.vocab_size
    with torch.no_grad():
        assert torch.equal(model(input_ids=tokens).logits, again(input_ids=tokens).logits)


def test_structure_only_build_reads_no_weights(meta_root, tmp_path):
    (tmp_path / "tiny").mkdir()
    shutil.copyfile(meta_root / "tiny" / "params.json", tmp_path / "tiny" / "params.json")
    shutil.copyfile(meta_root / "tokenizer.model", tmp_path / "tokenizer.model")
    model, _ = load_llama(tmp_path, "tiny", load_weights=False)
    assert next(model.parameters()).device.type == "meta"
    with pytest.raises(DataError, match=r"LLaMA weights not found: .*consolidated\.00\.pth.*request LLaMA-1"):
        load_llama(tmp_path, "tiny")


@pytest.mark.parametrize("missing, what", [("tokenizer.model", "tokenizer.model"),
                                           ("tiny/params.json", "params.json"),
                                           ("tiny/consolidated.00.pth", "LLaMA weights")])
def test_missing_file_names_the_path(meta_root, tmp_path, missing, what):
    root = tmp_path / "root"
    shutil.copytree(meta_root, root)
    (root / missing).unlink()
    with pytest.raises(DataError) as info:
        load_llama(root, "tiny")
    message = str(info.value)
    assert message.startswith(f"{what} not found: {root / missing}") and "docs/lavin.md" in message
    assert "\n" not in message


def test_hf_directory_missing_config(tmp_path):
    with pytest.raises(DataError, match=r"config.json"):
        load_llama(tmp_path, fmt="hf")


@pytest.mark.parametrize("bits, tolerance", [("8bit", 0.05), ("4bit", 0.3)])
def test_quantized_build_and_forward_on_cpu(meta_root, tokens, bits, tolerance, tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    model, _ = load_llama(meta_root, "tiny", "meta", torch.float32)
    with torch.no_grad():
        full = model(input_ids=tokens).logits
    model, _ = load_llama(meta_root, "tiny", "meta", torch.float32, quantization=bits, device="cpu")
    expected = bnb.nn.Linear8bitLt if bits == "8bit" else bnb.nn.Linear4bit
    assert isinstance(model.model.layers[0].self_attn.q_proj, expected)
    assert isinstance(model.model.layers[1].mlp.down_proj, expected)
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, expected)
    with torch.no_grad():
        quant = model(input_ids=tokens).logits
    assert torch.isfinite(quant).all()
    assert 0 < rel_err(quant, full) < tolerance  # quantized (so not equal), yet the same model
    # the HF-directory reader takes the same path and quantizes to the same weights
    full_model, _ = load_llama(meta_root, "tiny", "meta", torch.float32)
    full_model.save_pretrained(tmp_path / "hf")
    shutil.copyfile(meta_root / "tokenizer.model", tmp_path / "hf" / "tokenizer.model")
    from_hf, _ = load_llama(tmp_path / "hf", fmt="hf", quantization=bits, device="cpu")
    assert isinstance(from_hf.model.layers[1].mlp.down_proj, expected)
    with torch.no_grad():
        assert torch.equal(from_hf(input_ids=tokens).logits, quant)
