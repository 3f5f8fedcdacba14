"""OpenFlamingo (Awadalla et al. 2023; open-flamingo 2.0.1) as a vlmkit model.

    images (B, T_img, 1, 3, H, W) ─ frozen CLIP ViT (patch tokens, pre-ln_post) ─ PerceiverResampler ─┐ media
    text with <image> tags ─ LM embeddings ─ [GatedCrossAttention → frozen decoder layer] × N ─ logits ┘

A gated cross-attention block sits before decoder layer i wherever (i + 1) % every_n_layers == 0. A text token attends
to the visual tokens of the image whose ``<image>`` tag it follows (text_time = cumsum(input_ids == <image>)); text
before the first image attends to nothing. Trainable: the Perceiver, the cross-attention blocks, the embedding rows of
the added tokens (and LoRA adapters when enabled); everything else is frozen.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.models import hf_compat
from vlmkit.models.base import LoadReport, VLModel
from vlmkit.models.clip import clip_patch_tokens
from vlmkit.models.flamingo import build
from vlmkit.models.flamingo.checkpoint import load_openflamingo_checkpoint, load_openflamingo_state_dict
from vlmkit.models.flamingo.collate import IGNORE_INDEX, FlamingoCollator
from vlmkit.models.tokenizer import load_tokenizer
from vlmkit.models.flamingo.modules import (FlamingoDecoderLayer, GatedCrossAttentionBlock, MediaContext,
                                            PerceiverResampler, media_text_time)
from vlmkit.processors.image import center_crop_transform
from vlmkit.registry import MODELS

logger = logging.getLogger(__name__)

#: Parts of open_clip's ViT after the tapped patch tokens (final norm and projection): never part of the forward.
UNUSED_VISION_PARAMS = ("ln_post", "proj")


@MODELS.register("openflamingo")
class OpenFlamingo(VLModel):
    """Frozen CLIP ViT + Perceiver resampler + frozen causal LM with gated cross-attention before every n-th layer."""

    default_config = "models/openflamingo.yaml"  # every model key and its default (vlmkit/configs/)

    #: Entry points besides ``forward`` that use the weights (registered with FSDP, see vlmkit/engine/fsdp.py).
    fsdp_forward_methods = ("generate", "generate_ids")

    def __init__(self, vision_encoder: nn.Module, lang_encoder: nn.Module, tokenizer: Any,
                 tokens: build.SpecialTokens, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.media_token_id, self.eoc_token_id, self.pad_token_id = tokens.media_id, tokens.eoc_id, tokens.pad_id
        self.vision_encoder = vision_encoder
        vis_dim = vision_encoder.conv1.out_channels  # the ViT's width (1024 for ViT-L/14)
        p = cfg["perceiver"]
        self.perceiver = PerceiverResampler(vis_dim, int(p["depth"]), int(p["heads"]), int(p["dim_head"]),
                                            int(p["num_latents"]), int(p["ff_mult"]))
        self.lang_encoder = lang_encoder
        layers_path, layers = build.decoder_layers(lang_encoder, cfg["lm"].get("decoder_layers_attr"))
        x = cfg["cross_attn"]
        every = int(x["every_n_layers"])
        if every < 1:
            raise ConfigError(f"model.cross_attn.every_n_layers must be >= 1, got {every}")
        lm_dim = lang_encoder.get_input_embeddings().embedding_dim
        for i, layer in enumerate(layers):
            block = (GatedCrossAttentionBlock(lm_dim, vis_dim, int(x["heads"]), int(x["dim_head"]), int(x["ff_mult"]),
                                              bool(x["only_attend_immediate_media"]), float(x["gate_init"]))
                     if (i + 1) % every == 0 else None)
            layers[i] = FlamingoDecoderLayer(layer, block)
        self.layers_param_prefix = f"lang_encoder.{layers_path}"  # checkpoint interop: where the layers are named
        self.embedding_param_prefix = next(f"lang_encoder.{n}" for n, m in lang_encoder.named_modules()
                                           if m is lang_encoder.get_input_embeddings())
        self.image_size = int(vision_encoder.image_size[0] if isinstance(vision_encoder.image_size, (tuple, list))
                              else vision_encoder.image_size)
        self.image_transform = center_crop_transform(self.image_size, cfg["vision"]["image_mean"],
                                                     cfg["vision"]["image_std"])
        self.set_gradient_checkpointing(bool(cfg.get("gradient_checkpointing", False)))
        self._set_trainable(train_backbone=bool(cfg.get("train_backbone", False)))

    # ----------------------------------------------------------------------------------------------------------- build
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], device: torch.device | str | None = None) -> OpenFlamingo:
        """Build from a complete ``model:`` config (``MODELS.build`` / the config loader merge the defaults)."""
        device = torch.device(device or "cpu")
        if cfg.dtype not in build.DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(build.DTYPES)}, got {cfg.dtype!r}")
        dtype = build.DTYPES[cfg.dtype]
        generator = torch.Generator().manual_seed(int(cfg.init_seed))
        with torch.random.fork_rng(devices=[]):  # every random init (Perceiver, blocks, tiny models) from init_seed
            torch.manual_seed(int(cfg.init_seed))
            tokenizer = load_tokenizer(cfg.lm.tokenizer or cfg.lm.path, cfg.lm.tokenizer_legacy,
                                       how_to_obtain=build.LM_HOW_TO_OBTAIN)
            tokens = build.add_flamingo_tokens(tokenizer)
            lm = build.load_language_model(cfg.lm, tokens.base_vocab, dtype, device)
            build.extend_vocabulary(lm, tokens, generator)
            if cfg.lora.enabled:
                build.apply_lora(lm, cfg.lora)
            vision = build.build_vision_tower(cfg.vision, dtype)
            model = cls(vision, lm, tokenizer, tokens, cfg)
        model.place_on(device, lm_already_there=cfg.lm.quantization is not None)
        if cfg.checkpoint:
            report = load_openflamingo_checkpoint(model, cfg.checkpoint)
            logger.info("loaded %d tensors from %s (%d frozen tensors not in the file)", len(report.loaded),
                        cfg.checkpoint, len(report.frozen_absent))
        return model

    def place_on(self, device: torch.device, lm_already_there: bool = False) -> None:
        """Move to ``device``; a quantized LM was loaded there already and must not be moved again."""
        if not lm_already_there:
            self.to(device)
            return
        blocks = [layer.gated_cross_attn_layer for layer in self.flamingo_layers() if layer.gated_cross_attn_layer]
        for module in (self.vision_encoder, self.perceiver, self.lang_encoder.get_input_embeddings(), *blocks):
            module.to(device)

    def flamingo_layers(self) -> list[FlamingoDecoderLayer]:
        return [m for m in self.lang_encoder.modules() if isinstance(m, FlamingoDecoderLayer)]

    def _set_trainable(self, train_backbone: bool = False) -> None:
        if train_backbone:  # tiny random backbones (quickstarts) know nothing: everything learns
            self.requires_grad_(True)
            for name in UNUSED_VISION_PARAMS:  # features are tapped before them; DDP needs every trainable used
                part = getattr(self.vision_encoder, name, None)
                params = part.parameters() if isinstance(part, nn.Module) else [part] if part is not None else []
                for param in params:
                    param.requires_grad_(False)
            return
        self.requires_grad_(False)
        self.perceiver.requires_grad_(True)
        for layer in self.flamingo_layers():
            if layer.gated_cross_attn_layer is not None:
                layer.gated_cross_attn_layer.requires_grad_(True)
        self.lang_encoder.get_input_embeddings().new_weight.requires_grad_(True)
        for name, param in self.lang_encoder.named_parameters():
            if ".lora_" in name:
                param.requires_grad_(True)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each (cross-attention + decoder) layer in backward instead of keeping its activations."""
        for layer in self.flamingo_layers():
            layer.gradient_checkpointing = enabled

    def fsdp_wrap_classes(self) -> set[type[nn.Module]]:
        """Module classes to wrap one FSDP unit each; every unit is then all-frozen or all-trainable."""
        layer = self.flamingo_layers()[0]
        return {type(layer.decoder_layer), GatedCrossAttentionBlock, PerceiverResampler,
                type(self.vision_encoder.transformer.resblocks[0])}

    def train(self, mode: bool = True) -> OpenFlamingo:
        super().train(mode)
        self.vision_encoder.eval()  # frozen; keeps patch dropout and the like off
        return self

    # ------------------------------------------------------------------------------------------------------ batches
    def collator(self, train: bool) -> FlamingoCollator:
        return FlamingoCollator(self.tokenizer, train=train, image_size=self.image_size)

    #: Evaluation may take the visual tokens from a vision cache (vlmkit/engine/vision_cache.py): they depend on the
    #: image and on :meth:`vision_cache_modules` only.
    supports_vision_cache = True

    def vision_cache_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules whose weights the visual tokens (:meth:`encode_images`) depend on."""
        return [("vision_encoder", self.vision_encoder), ("perceiver", self.perceiver)]

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, T_img, 1, 3, H, W) → visual tokens (B, T_img, num_latents, d_visual); padded slots skip CLIP."""
        b, t = images.shape[:2]
        flat = images.flatten(0, 2)  # one frame per image
        selected = image_mask.flatten().bool() if image_mask is not None else torch.ones(b * t, dtype=torch.bool,
                                                                                          device=images.device)
        width = self.vision_encoder.conv1.out_channels
        patches = self.vision_encoder.positional_embedding.shape[0] - 1
        features = torch.zeros(b * t, patches, width, dtype=self.perceiver.latents.dtype, device=images.device)
        if selected.any():
            vision_learns = torch.is_grad_enabled() and self.vision_encoder.conv1.weight.requires_grad
            with torch.set_grad_enabled(vision_learns):  # frozen CLIP (the usual case): keep no activations
                features[selected] = clip_patch_tokens(self.vision_encoder, flat[selected]).to(features.dtype)
        return self.perceiver(features.unflatten(0, (b, t)))

    def _lm_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        # Positions count real tokens only, so a left-padded prompt sees the positions it would see unpadded.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        context = MediaContext(media, media_text_time(input_ids, self.media_token_id))
        out = self.lang_encoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False, media=context)
        return out.logits

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"logits"}``, plus ``"loss"`` (mean cross-entropy over labelled tokens) when the batch has labels."""
        media = self.encode_images(batch["images"], batch.get("image_mask"))
        logits = self._lm_forward(batch["input_ids"], batch["attention_mask"], media)
        out = {"logits": logits}
        if batch.get("labels") is not None:
            out["loss"] = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                          ignore_index=IGNORE_INDEX)
        return out

    # --------------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int = 20, num_beams: int = 3, length_penalty: float = 0.0,
                 temperature: float = 0.0, top_p: float = 1.0, do_sample: bool | None = None,
                 synced_gpus: bool = False, streamer: Any = None, share_prefill: bool = True) -> list[str]:
        """Continuations of the (left-padded) prompts, stopping at ``<|endofchunk|>``; special tokens removed.

        Greedy/beam search by default; sampling when ``do_sample`` or (``do_sample`` None and) ``temperature > 0``,
        only then are ``temperature`` and ``top_p`` used. ``synced_gpus`` (set by the runner under FSDP): keep stepping
        until every rank has finished, since each step all-gathers sharded weights. ``streamer`` (vlmkit chat): a
        transformers streamer that receives the tokens as they are generated (one sample, one beam). These parameters
        are what ``run.generate`` may set (the config loader checks its keys against this signature);
        ``share_prefill``: see :meth:`generate_ids` (false only to compare against the unshared beam search).
        """
        new_tokens = self.generate_ids(batch, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                       length_penalty=length_penalty, temperature=temperature, top_p=top_p,
                                       do_sample=do_sample, synced_gpus=synced_gpus, streamer=streamer,
                                       share_prefill=share_prefill)
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, Any], max_new_tokens: int = 20, num_beams: int = 3,
                     length_penalty: float = 0.0, temperature: float = 0.0, top_p: float = 1.0,
                     do_sample: bool | None = None, synced_gpus: bool = False, streamer: Any = None,
                     share_prefill: bool = True) -> torch.Tensor:
        """The generated token ids (B, ≤ max_new_tokens), prompt excluded, padded with the pad id after the end.

        ``batch["media"]`` (visual tokens, e.g. from :class:`vlmkit.engine.vision_cache.VisionCache`) replaces
        encoding ``batch["images"]``. With beams, the prompt is run once per query (``share_prefill``; not once per
        beam) and its KV cache copied to the beams; every cross-attention layer computes the media's keys and values
        once per call, and the beams of a query attend to them without copies."""
        from transformers import GenerationConfig

        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if (attention_mask[:, -1] == 0).any():
            raise ValueError("generate needs left-padded prompts; build the batch with model.collator(train=False)")
        sample = temperature > 0 if do_sample is None else do_sample
        options: dict[str, Any] = {"temperature": float(temperature), "top_p": float(top_p)} if sample else {}
        if num_beams > 1:
            options["length_penalty"] = float(length_penalty)  # only beam search ranks by length
        config = GenerationConfig(max_new_tokens=int(max_new_tokens), num_beams=int(num_beams), do_sample=bool(sample),
                                  eos_token_id=self.eoc_token_id, pad_token_id=self.pad_token_id, use_cache=True,
                                  **options)
        supply = _MediaForGeneration(self.batch_media(batch), input_ids, self.media_token_id)
        handle = self.lang_encoder.register_forward_pre_hook(supply, with_kwargs=True)
        try:
            extra = {}
            if share_prefill and num_beams > 1 and input_ids.shape[1] > 1:
                extra = self._prefill_once(input_ids, attention_mask, int(num_beams))
            out = self.lang_encoder.generate(input_ids=input_ids, attention_mask=attention_mask,
                                             generation_config=config, synced_gpus=synced_gpus, streamer=streamer,
                                             **extra)
        finally:
            handle.remove()
        return out[:, input_ids.shape[1]:]

    def batch_media(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's visual tokens (B, T_img, n, d): ``batch["media"]`` when given, else its images encoded."""
        media = batch.get("media")
        if media is not None:
            return media
        if batch.get("images_deferred"):
            raise ValueError("this batch's images were not loaded (the dataset left them to a vision cache); pass "
                             "batch['media'] from vlmkit.engine.vision_cache.VisionCache.fill")
        return self.encode_images(batch["images"], batch.get("image_mask"))

    def _prefill_once(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, beams: int) -> dict[str, Any]:
        """Run every prompt but its last token through the LM once (under the media hook), copy the KV cache to each
        beam and return it as ``generate``'s cache argument: generate then feeds only the last prompt token per beam.
        Positions as ``generate`` computes them (count of real tokens − 1; 1 on padding, which nothing attends to)."""
        mask = attention_mask[:, :-1]
        position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        name = hf_compat.cache_keyword(self.lang_encoder)
        cache = hf_compat.new_cache(self.lang_encoder)
        self.lang_encoder(input_ids=input_ids[:, :-1], attention_mask=mask, position_ids=position_ids,
                          use_cache=True, **{name: cache})
        hf_compat.repeat_cache_rows(cache, beams)
        return {name: cache}

    # -------------------------------------------------------------------------------------------------- checkpoints
    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> LoadReport:
        """Load this model's own ``trainable_state_dict`` or any open-flamingo state dict (see checkpoint.py)."""
        return load_openflamingo_state_dict(self, state, strict=strict)

    def load_external_checkpoint(self, path: str) -> LoadReport:
        """What the runner calls for a ``.pt`` that is not a vlmkit checkpoint: an OpenFlamingo ``checkpoint.pt``."""
        return load_openflamingo_checkpoint(self, path)


class _MediaForGeneration:
    """Gives every forward call that Hugging Face ``generate`` makes the media of one ``generate_ids`` call.

    Registered as a forward pre-hook for the duration of that call only. Each call's tokens are placed in the whole
    sequence (prompt + generated) from what the call itself carries, never from which keywords this transformers
    release happens to use: a call that brings a KV cache continues after the cache's length (read from the cache
    object, found by its type); a call without one starts at 0 (a full recompute). Prompt tokens get
    text_time = cumsum(<image>) of the prompt; generated tokens continue the text of the prompt's last image (as
    open-flamingo 2.0.1; v1 dropped the image there). A call may carry one row per prompt (the shared prefill) or
    ``g`` rows per prompt (the beams, grouped by prompt as ``generate`` expands them): the media stay one row per
    prompt. A call that does not fit — a cache whose length disagrees with the tokens this hook has fed, prompt
    positions whose ids are not the prompt's, a row count that is no multiple of the prompts — raises instead of
    silently attending to the wrong image. Every call shares one dict of the cross-attention layers' media keys and
    values, so they are computed once per ``generate_ids`` call.
    """

    def __init__(self, media: torch.Tensor, prompt_ids: torch.Tensor, media_token_id: int) -> None:
        if media.shape[0] != prompt_ids.shape[0]:
            raise ValueError(f"media for {media.shape[0]} rows, prompts for {prompt_ids.shape[0]}")
        self.media, self.prompt_ids = media, prompt_ids
        self.prompt_time = media_text_time(prompt_ids, media_token_id)  # (prompts, prompt_len)
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.fed = 0  # sequence positions that have gone through the model (and into its cache) so far

    def text_time(self, start: int, input_ids: torch.Tensor) -> torch.Tensor:
        """text_time of the tokens at sequence positions ``start .. start + n`` (checked against the prompt)."""
        rows, n = input_ids.shape
        prompts, prompt_len = self.prompt_ids.shape
        if rows % prompts:
            raise RuntimeError(f"generate called the model with {rows} rows, but the media are for {prompts} prompts")
        group = rows // prompts
        in_prompt = max(0, min(start + n, prompt_len) - start)  # how many of this call's tokens are prompt tokens
        own = input_ids[:, :in_prompt].unflatten(0, (prompts, group))
        if in_prompt and not torch.equal(own, self.prompt_ids[:, None, start:start + in_prompt].expand_as(own)):
            raise RuntimeError(f"generation step at positions {start}..{start + n} does not match the prompt's tokens; "
                               "cannot tell which image these tokens belong to")
        time = self.prompt_time.repeat_interleave(group, dim=0) if group > 1 else self.prompt_time
        generated = time[:, -1:].expand(rows, n - in_prompt)  # the prompt's last image
        return torch.cat([time[:, start:start + in_prompt], generated], dim=1)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        input_ids = hf_compat.call_input_ids(args, kwargs)
        cache = hf_compat.find_cache(args, kwargs)
        start = cache.get_seq_length() if cache is not None else 0
        if cache is not None and start != self.fed:
            raise RuntimeError(f"the KV cache holds {start} positions but {self.fed} were fed through this generate "
                               "call; cannot place the new tokens (see docs/compatibility.md)")
        if cache is None and self.fed and input_ids.shape[1] <= self.prompt_ids.shape[1]:
            raise RuntimeError("a generation step without KV cache must carry the whole sequence (prompt + generated)")
        kwargs["media"] = MediaContext(self.media, self.text_time(start, input_ids), self.kv)
        self.fed = start + input_ids.shape[1]
        return args, kwargs
