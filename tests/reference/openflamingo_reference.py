"""The open-flamingo 2.0.1 side of tests/test_flamingo_parity.py. Run it with PYTHONPATH=<reference dir> (see
install_open_flamingo.sh), so that open-flamingo runs with the transformers / open_clip versions it was released with.

    python openflamingo_reference.py build OUT TOKENIZER_MODEL   build a tiny reference, write its files and outputs
    python openflamingo_reference.py load OUT CHECKPOINT         rebuild it, load a (vlmkit-written) checkpoint, record
    python openflamingo_reference.py fewshot OUT TOKENIZER_MODEL a larger model (LM width 256): 0/4/8-shot VQA prompts,
                                                                 greedy and 3-beam generations (io_fewshot.pt)

``create_model_and_transforms`` needs hub names, so ``build_reference`` does its steps by hand: open_clip model with
``visual.output_tokens``, tokenizer + special tokens, causal LM + ``FlamingoLMMixin``, decoder layer attribute from
``_infer_decoder_layers_attr_name``, ``resize_token_embeddings``, ``Flamingo(...)``, freeze all, unfreeze perceiver,
cross-attention layers and input embeddings.

Files written to OUT: ``lm/`` (the LM before open-flamingo touched it), ``clip.pt`` (open_clip CLIP state dict),
``ref_tokenizer/`` (the tokenizer as used, saved by transformers 4.36), ``full_state.pt`` (model.state_dict()),
``trainable_state.pt`` (filtered as open-flamingo's training script saves), ``io.pt`` (inputs and outputs),
``meta.json``.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import open_clip
import torch
from open_flamingo.src.factory import _infer_decoder_layers_attr_name
from open_flamingo.src.flamingo import Flamingo
from open_flamingo.src.flamingo_lm import FlamingoLMMixin
from open_flamingo.src.utils import extend_instance
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SEED = 1234
CROSS_ATTN_EVERY_N_LAYERS = 2
EMBED_DIM = 32
VISION_CFG = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0}
TEXT_CFG = {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}  # unused by open-flamingo
LM_CFG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 4, "tie_word_embeddings": False}
# Interleaved prompts as open-flamingo's evaluation builds them, with text before the first image, a text-only demo,
# and different numbers of images per sample (the third sample's last image slot is padding).
PROMPTS = [
    "a photo of<image>Output: a red circle<|endofchunk|><image>Output: a blue square<|endofchunk|><image>Output:",
    "<image>Question: what color is the shape? Short answer: red<|endofchunk|>"
    "<image>Question: what shape? Short answer:",
    "Question: which animal? Short answer: dog<|endofchunk|><image>Output:",
]
IMAGES_PER_PROMPT = [3, 2, 1]
MAX_NEW_TOKENS = 8


# The few-shot build: an LM wide enough that the image a generated token attends to decides its argmax.
FEWSHOT_LM_CFG = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
                  "num_key_value_heads": 8, "tie_word_embeddings": False}
FEWSHOT_SHOTS = (0, 4, 8)
FEWSHOT_QUERIES = 4
FEWSHOT_MAX_NEW_TOKENS = 8
QUESTIONS = ["what color is the shape?", "what shape is shown?", "which animal is in the picture?",
             "what number is on the map?", "which state is north?", "what is on the table?"]
ANSWERS = ["red", "circle", "dog", "two", "south", "cat"]


def vqa_prompt(question: str, answer: str | None) -> str:
    """open_flamingo/eval's VQA prompt; a demo ends with <|endofchunk|> (and is followed by a newline)."""
    return f"<image>Question:{question} Short answer:{answer + '<|endofchunk|>' if answer is not None else ''}"


def fewshot_prompts(shots: int) -> tuple[list[str], list[int]]:
    """FEWSHOT_QUERIES prompts with ``shots`` demos each; 0 shots = two text-only demos (the <image> tags removed)."""
    prompts, n_images = [], []
    for q in range(FEWSHOT_QUERIES):
        n_demos = shots if shots else 2
        demos = [vqa_prompt(QUESTIONS[(q + d) % 6], ANSWERS[(q + 2 * d) % 6]) + "\n" for d in range(n_demos)]
        context = "".join(demos)
        if shots == 0:
            context = context.replace("<image>", "")
        prompts.append(context + vqa_prompt(QUESTIONS[(q + 3) % 6], None))
        n_images.append(shots + 1)
    return prompts, n_images


def build_reference(out: Path, tokenizer_model: Path | None, write: bool,
                    lm_cfg: dict = LM_CFG) -> tuple[Flamingo, object]:
    torch.manual_seed(SEED)
    clip = open_clip.CLIP(embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG, quick_gelu=True)
    with torch.no_grad():  # ln_post is not used by the tap; make it non-trivial so a tap after ln_post would show
        clip.visual.ln_post.weight.uniform_(0.5, 1.5)
        clip.visual.ln_post.bias.normal_(0, 0.5)
    clip.visual.output_tokens = True
    if write:
        torch.save({k: v.clone() for k, v in clip.state_dict().items()}, out / "clip.pt")
        tok_dir = out / "ref_tokenizer_src"
        tok_dir.mkdir(exist_ok=True)
        shutil.copy(tokenizer_model, tok_dir / "tokenizer.model")
        (tok_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    tokenizer = AutoTokenizer.from_pretrained(str(out / "ref_tokenizer_src"), local_files_only=True)
    base_vocab = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    if write:
        LlamaForCausalLM(LlamaConfig(vocab_size=base_vocab, **lm_cfg)).save_pretrained(str(out / "lm"))
        tokenizer.save_pretrained(str(out / "ref_tokenizer"))
    lang_encoder = LlamaForCausalLM.from_pretrained(str(out / "lm"), local_files_only=True)
    extend_instance(lang_encoder, FlamingoLMMixin)
    lang_encoder.set_decoder_layers_attr_name(_infer_decoder_layers_attr_name(lang_encoder))
    lang_encoder.resize_token_embeddings(len(tokenizer))
    model = Flamingo(clip, lang_encoder, tokenizer.encode("<|endofchunk|>")[-1], tokenizer.encode("<image>")[-1],
                     vis_dim=VISION_CFG["width"], cross_attn_every_n_layers=CROSS_ATTN_EVERY_N_LAYERS)
    model.requires_grad_(False)
    model.perceiver.requires_grad_(True)
    model.lang_encoder.gated_cross_attn_layers.requires_grad_(True)
    model.lang_encoder.get_input_embeddings().requires_grad_(True)
    # As if trained: gates away from 0 (else the cross-attention would be invisible), norms away from 1/0 (else swapped
    # names would go unnoticed), new-token embedding rows changed.
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name.endswith("_gate"):
                param.uniform_(-1.0, 1.0, generator=gen)
            elif "embed_tokens" in name:
                param[base_vocab:] += 0.5 * torch.randn(param[base_vocab:].shape, generator=gen)
            else:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    model.eval()
    return model, tokenizer


def filter_state_dict_to_trainable(model: Flamingo, state: dict) -> dict:
    """open_flamingo/train/train_utils.py's filter (that module imports wandb, so its logic is repeated here)."""
    for name, param in model.named_parameters():
        if "embed" not in name and not param.requires_grad:  # embeddings are kept even when frozen
            state.pop(name, None)
    return {k: v for k, v in state.items()
            if "lang_encoder.old_decoder_blocks" not in k and "lang_encoder.gated_cross_attn_layers" not in k
            and "vision_encoder" not in k}


def inputs(tokenizer: object, prompts: list[str] = PROMPTS, images_per_prompt: list[int] = IMAGES_PER_PROMPT,
           seed: int = SEED + 2) -> dict:
    tokenizer.padding_side = "left"  # as open-flamingo's evaluation
    enc = tokenizer(prompts, return_tensors="pt", padding="longest")
    gen = torch.Generator().manual_seed(seed)
    size = VISION_CFG["image_size"]
    vision_x = torch.zeros(len(prompts), max(images_per_prompt), 1, 3, size, size)
    for i, n in enumerate(images_per_prompt):
        vision_x[i, :n] = torch.randn(n, 1, 3, size, size, generator=gen)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "vision_x": vision_x,
            "images_per_prompt": torch.tensor(images_per_prompt)}


def run_model(model: Flamingo, tokenizer: object, io: dict, generate: bool,
              max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    with torch.no_grad():
        out = {"logits": model(io["vision_x"], io["input_ids"], attention_mask=io["attention_mask"]).logits}
        if generate:
            for name, beams in (("greedy", 1), ("beam3", 3)):
                ids = model.generate(io["vision_x"], io["input_ids"], attention_mask=io["attention_mask"],
                                     max_new_tokens=max_new_tokens, num_beams=beams, length_penalty=0.0,
                                     pad_token_id=tokenizer.pad_token_id)
                out[name] = ids[:, io["input_ids"].shape[1]:]
    return out


def main() -> None:
    command, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if command == "build":
        model, tokenizer = build_reference(out, Path(sys.argv[3]), write=True)
        io = inputs(tokenizer)
        io.update(run_model(model, tokenizer, io, generate=True))
        torch.save(io, out / "io.pt")
        torch.save(model.state_dict(), out / "full_state.pt")
        torch.save(filter_state_dict_to_trainable(model, model.state_dict()), out / "trainable_state.pt")
        from open_clip.version import __version__ as open_clip_version
        import transformers

        meta = {"vision_cfg": VISION_CFG, "embed_dim": EMBED_DIM, "lm_cfg": LM_CFG, "prompts": PROMPTS,
                "cross_attn_every_n_layers": CROSS_ATTN_EVERY_N_LAYERS, "eoc_id": model.eoc_token_id,
                "media_id": model.media_token_id, "pad_id": tokenizer.pad_token_id,
                "transformers": transformers.__version__, "open_clip": open_clip_version}
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
    elif command == "load":
        model, tokenizer = build_reference(out, None, write=False)
        model.load_state_dict(torch.load(out / "full_state.pt"))
        result = model.load_state_dict(torch.load(sys.argv[3]), strict=False)  # as open-flamingo loads checkpoint.pt
        io = torch.load(out / "io.pt")
        logits = run_model(model, tokenizer, io, generate=False)["logits"]
        torch.save({"logits": logits, "unexpected": list(result.unexpected_keys),
                    "missing": list(result.missing_keys)}, out / "loaded.pt")
    elif command == "fewshot":
        model, tokenizer = build_reference(out, Path(sys.argv[3]), write=True, lm_cfg=FEWSHOT_LM_CFG)
        torch.save(model.state_dict(), out / "full_state.pt")
        points = {}
        for shots in FEWSHOT_SHOTS:
            prompts, n_images = fewshot_prompts(shots)
            io = inputs(tokenizer, prompts, n_images, seed=SEED + 10 + shots)
            io.update(run_model(model, tokenizer, io, generate=True, max_new_tokens=FEWSHOT_MAX_NEW_TOKENS))
            points[shots] = {**io, "prompts": prompts}
        torch.save(points, out / "io_fewshot.pt")
        meta = {"vision_cfg": VISION_CFG, "embed_dim": EMBED_DIM, "lm_cfg": FEWSHOT_LM_CFG,
                "cross_attn_every_n_layers": CROSS_ATTN_EVERY_N_LAYERS}
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
