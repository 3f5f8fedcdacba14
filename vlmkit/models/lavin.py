"""LaVIN: LLaMA (transformers' LlamaForCausalLM) + CLIP ViT taps + mixture-of-modality adapters (paper "Cheap and Quick").

Sequence fed to the LLM (one column per position)::

    [modality][BOS] "Image: " [n image tokens] prompt  target EOS  pad…     (sample with an image)
    [modality][BOS] "Image: N/A"               prompt  target EOS  pad…     (text-only sample)

The modality column holds ``adapter_modality_embedding[1 if image else 0]``. No token attends to it (only it sees
itself); its hidden state in each layer is what that layer's adapter routers read, so it only steers the routers.
Training pads on the right. Generation pads on the LEFT of the text but keeps the modality token in column 0
(``[modality][pad…][BOS]…``), so every prompt ends in the last column and the routers read column 0 in every pass.

Routing during incremental decoding: a new token's pass has no modality column, so ``generate`` runs inside
``_reused_routing()``, which makes every LLM adapter keep the routing weights it computed in the prompt pass and reuse
them for the generated tokens (as the reference's ``cache_weights``); the context clears them on exit. Generation is
transformers' ``generate`` (greedy, beam search, sampling, stopping) with a forward pre-hook that gives each step
LaVIN's attention mask and positions.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.models import hf_compat
from vlmkit.models.adapters import AdapterMLP, MMAdapter, dropout_schedule
from vlmkit.models.base import VLModel
from vlmkit.models.clip import HOW_TO_OBTAIN, CLIPVisionTaps, build_clip_vision
from vlmkit.models.lavin_collate import IGNORE_INDEX, LaVINCollator
from vlmkit.models.llama import PAD_ID, load_llama, resolve_dtype
from vlmkit.processors.image import squash_resize_transform
from vlmkit.registry import MODELS

MODALITY_COLUMN = 0
IMAGE_MODALITY, TEXT_MODALITY = 1, 0  # rows of adapter_modality_embedding
CLIP_HOW_TO_OBTAIN = HOW_TO_OBTAIN.format(key="model.clip_weights", env="VLMKIT_CLIP_WEIGHTS") + "; see docs/lavin.md"
ADAPTER_PLACEMENTS = ("attn", "block")
VISUAL_ADAPTERS = ("router", "none")


class NormWithAdapter(nn.Module):
    """A decoder layer's RMSNorm followed by an MMA adapter (replaces ``input_layernorm`` / ``post_attention_layernorm``).

    The router reads the normalised hidden state of the modality column; see the module docstring for decoding.
    """

    def __init__(self, norm: nn.Module, adapter: MMAdapter) -> None:
        super().__init__()
        self.norm = norm
        self.adapter = adapter
        self.keep_routing = False  # set by LaVIN._reused_routing
        self.kept_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if self.kept_weights is not None:
            return self.adapter(h, self.kept_weights)
        weights = self.adapter.routing_weights(h[:, MODALITY_COLUMN])
        if self.keep_routing:
            self.kept_weights = weights
        return self.adapter(h, weights)


def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype, start: int = 0, n: int | None = None) -> torch.Tensor:
    """(B, L) 1 = token / 0 = pad → (B, 1, n, L) additive mask of the queries at positions ``start .. start + n``
    (default: all L): causal, pads and the modality column hidden.

    Every position also sees itself, so the modality token (and a pad) has one key and its softmax stays finite.
    """
    B, L = attention_mask.shape
    n = L - start if n is None else n
    device = attention_mask.device
    key_ok = attention_mask.bool().clone()
    key_ok[:, MODALITY_COLUMN] = False
    query = torch.arange(start, start + n, device=device)[:, None]
    key = torch.arange(L, device=device)[None, :]
    allowed = ((key <= query)[None] & key_ok[:, None, :]) | (key == query)[None]
    bias = torch.zeros(B, 1, n, L, dtype=dtype, device=device)
    return bias.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions counting real tokens only (modality 0, BOS 1, …), whatever padding sits between them."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def insert_llm_adapters(llm: nn.Module, placement: str, dropouts: list[float], **adapter_kw: Any) -> None:
    """Put an MMA adapter after the attention norm of every decoder layer (``attn``), and after the FFN norm (``block``)."""
    if placement not in ADAPTER_PLACEMENTS:
        raise ConfigError(f"model.adapter_placement must be one of {', '.join(ADAPTER_PLACEMENTS)}, got '{placement}'")
    d = llm.config.hidden_size
    for layer, p in zip(llm.model.layers, dropouts):
        layer.input_layernorm = NormWithAdapter(layer.input_layernorm, MMAdapter(d, dropout=p, **adapter_kw))
        if placement == "block":
            layer.post_attention_layernorm = NormWithAdapter(layer.post_attention_layernorm,
                                                             MMAdapter(d, dropout=p, **adapter_kw))


@MODELS.register("lavin")
class LaVIN(VLModel):
    """LLaMA + CLIP taps + mixture-of-modality adapters (LaVIN); build with :meth:`from_config`."""

    default_config = "models/lavin.yaml"  # every model key and its default (vlmkit/configs/)

    def __init__(self, llm: nn.Module, tokenizer: Any, visual: CLIPVisionTaps, hidden_proj: int,
                 max_seq_len: int, image_mean: Sequence[float], image_std: Sequence[float]) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.visual = visual
        d = llm.config.hidden_size
        self.adapter_proj = AdapterMLP(visual.width, hidden_proj, d)
        self.adapter_modality_embedding = nn.Embedding(2, d)
        self.max_seq_len = max_seq_len
        self.n_image_tokens = visual.n_tokens
        self.image_transform = squash_resize_transform(visual.image_size, image_mean, image_std)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], device: str | torch.device | None = None) -> "LaVIN":
        """Build from the ``model`` config section on ``device`` (default CPU).

        ``device="meta"`` builds the structure only (reads params.json/config.json and tokenizer.model, no weights), e.g.
        to count parameters. The frozen base is in ``cfg.dtype``; adapters, projection and modality embedding are fp32.
        """
        device = torch.device(device or "cpu")
        structure_only = device.type == "meta"
        train_backbone = bool(cfg["train_backbone"])
        dtype = torch.float32 if train_backbone else resolve_dtype(cfg["dtype"], device)
        if train_backbone and cfg["quantization"]:
            raise ConfigError("model.train_backbone needs a full-precision backbone; set model.quantization: null")
        if cfg["visual_adapter"] not in VISUAL_ADAPTERS:
            raise ConfigError(f"model.visual_adapter must be one of {', '.join(VISUAL_ADAPTERS)}, "
                              f"got '{cfg['visual_adapter']}'")
        llm, tokenizer = load_llama(cfg["llama_root"], str(cfg["llama_size"]), cfg["llama_format"], dtype,
                                    load_weights=not structure_only, quantization=cfg["quantization"], device=device)
        adapter_kw = {"adapter_dim": int(cfg["adapter_dim"]), "scale": float(cfg["adapter_scale"]),
                      "temperature": float(cfg["temperature"])}
        n_layers = llm.config.num_hidden_layers
        dropouts = dropout_schedule(cfg["dropout_schedule"], n_layers, float(cfg["adapter_dropout"]),
                                    float(cfg["dropout_min"]), float(cfg["dropout_max"]))
        vision_cfg = cfg["clip_vision_cfg"]
        vision_cfg = dict(vision_cfg) if vision_cfg is not None else None
        # Random parts (adapters, tiny towers) come from their own seed: identical on every rank and every run.
        with torch.random.fork_rng(devices=[]), torch.device("meta" if structure_only else "cpu"):
            torch.manual_seed(int(cfg["init_seed"]))
            visual = build_clip_vision(str(cfg["clip_name"]), cfg["clip_weights"], vision_cfg, CLIP_HOW_TO_OBTAIN,
                                       load_weights=not structure_only)
            n_blocks = len(visual.transformer.resblocks)
            width = int(visual.class_embedding.shape[-1])
            clip_adapters = None
            if cfg["visual_adapter"] == "router":
                clip_adapters = [MMAdapter(width, dropout=float(cfg["adapter_dropout"]), **adapter_kw)
                                 for _ in range(n_blocks)]
            taps = CLIPVisionTaps(visual.to(dtype), int(cfg["tap_every"]), clip_adapters)
            insert_llm_adapters(llm, cfg["adapter_placement"], dropouts, **adapter_kw)
            model = cls(llm, tokenizer, taps, int(cfg["hidden_proj"]), int(cfg["max_seq_len"]), list(cfg["image_mean"]),
                        list(cfg["image_std"]))
        model.set_trainable(train_backbone)
        if cfg["gradient_checkpointing"] and not structure_only:
            model.enable_gradient_checkpointing()
        return model.to(device)

    # --- parameters
    def adapter_modules(self) -> list[nn.Module]:
        """The modules LaVIN trains: LLM and CLIP adapters, the visual projection, the modality embedding."""
        mods: list[nn.Module] = [m.adapter for m in self.llm.modules() if isinstance(m, NormWithAdapter)]
        mods += list(self.visual.adapters or [])
        return mods + [self.adapter_proj, self.adapter_modality_embedding]

    def set_trainable(self, train_backbone: bool = False) -> None:
        """Adapters trainable in fp32; the backbone frozen (or trainable, fp32, with ``train_backbone``)."""
        for p in self.parameters():
            p.requires_grad_(train_backbone)
        for module in self.adapter_modules():
            module.float()
            for p in module.parameters():
                p.requires_grad_(True)

    def fsdp_wrap_classes(self) -> set[type[nn.Module]]:
        """FSDP units: the LLaMA decoder layers (with their adapters). The CLIP tower stays in the root unit: its blocks
        are run piecewise (to tap them), never through their own forward."""
        return {type(self.llm.model.layers[0])}

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer in backward (non-reentrant: the frozen layers' inputs need no grad flag)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):  # transformers >= 5.x
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def collator(self, train: bool) -> LaVINCollator:
        return LaVINCollator(self.tokenizer, self.n_image_tokens, self.visual.image_size, self.max_seq_len, train)

    # --- forward
    @property
    def _dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def input_embeddings(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """(B, L, d): token embeddings with the modality embedding in column 0 and projected CLS taps in the image slots.

        The vision tower runs on every sample (zeros where there is no image, as the reference does), so each step
        uses every trainable parameter — DDP needs no unused-parameter search.
        """
        ids = batch["input_ids"]
        embeds = self.llm.get_input_embeddings()(ids)
        B, L, d = embeds.shape
        has_image = batch["has_image"].bool()
        modality = self.adapter_modality_embedding(has_image.long()).to(embeds.dtype)
        cols = torch.arange(L, device=ids.device)
        embeds = torch.where((cols == MODALITY_COLUMN)[None, :, None], modality[:, None, :], embeds)
        feats = self.adapter_proj(self.visual(batch["images"].to(self._dtype))).to(embeds.dtype)  # (B, n, d)
        slot = cols[None, :] - batch["image_start"][:, None]
        in_slot = has_image[:, None] & (slot >= 0) & (slot < self.n_image_tokens)
        index = slot.clamp(0, self.n_image_tokens - 1)[..., None].expand(B, L, d)
        return torch.where(in_slot[..., None], feats.gather(1, index), embeds)

    def _run(self, embeds: torch.Tensor, attention_mask: torch.Tensor, **kw: Any) -> Any:
        return self.llm.model(inputs_embeds=embeds, attention_mask=attention_bias(attention_mask, embeds.dtype),
                              position_ids=position_ids(attention_mask), **kw)

    def logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Full-sequence logits (B, L, vocab), fp32."""
        hidden = self._run(self.input_embeddings(batch), batch["attention_mask"], use_cache=False).last_hidden_state
        return self.llm.lm_head(hidden).float()

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over target tokens (answer + EOS); only their positions go through the LM head."""
        hidden = self._run(self.input_embeddings(batch), batch["attention_mask"], use_cache=False).last_hidden_state
        targets = batch["labels"][:, 1:]
        scored = targets != IGNORE_INDEX
        logits = self.llm.lm_head(hidden[:, :-1][scored]).float()
        n = scored.sum()
        loss = F.cross_entropy(logits, targets[scored], reduction="sum") / n.clamp(min=1)
        return {"loss": loss, "n_target_tokens": n}

    # --- generation
    @contextmanager
    def _reused_routing(self) -> Iterator[None]:
        wrappers = [m for m in self.llm.modules() if isinstance(m, NormWithAdapter)]
        for w in wrappers:
            w.keep_routing, w.kept_weights = True, None
        try:
            yield
        finally:
            for w in wrappers:
                w.keep_routing, w.kept_weights = False, None

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 num_beams: int = 1, use_cache: bool = True, synced_gpus: bool = False,
                 streamer: Any = None) -> list[str]:
        """Decoded continuations (prompt excluded, cut at EOS), through transformers' ``generate``: ``temperature``
        0 is greedy (deterministic) or beam search with ``num_beams``; otherwise sampling from softmax(logits /
        temperature) with nucleus ``top_p``. ``use_cache`` False recomputes the whole sequence each step (a check of
        the KV-cache path). ``synced_gpus`` (set by the runner under FSDP): keep stepping until every rank's batch has
        finished, since each step all-gathers sharded weights. ``streamer`` (vlmkit chat): a transformers streamer that
        receives the tokens as they are generated (one sample, one beam). These parameters are what ``run.generate``
        may set (the config loader checks its keys against this signature)."""
        from transformers import GenerationConfig

        sample = temperature > 0
        extra_rows = list(range(self.tokenizer.vocab_size, self.llm.get_input_embeddings().weight.shape[0]))
        config = GenerationConfig(
            max_new_tokens=int(max_new_tokens), num_beams=int(num_beams), do_sample=sample,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=PAD_ID, use_cache=use_cache,
            # rows of an embedding padded beyond the tokenizer (HF checkpoints) must not be emitted
            suppress_tokens=extra_rows or None, **({"temperature": float(temperature), "top_p": float(top_p)}
                                                   if sample else {}))
        embeds, mask = self.input_embeddings(batch), batch["attention_mask"]
        beams = int(num_beams)
        supply = _LaVINStepInputs(embeds.repeat_interleave(beams, 0), mask.repeat_interleave(beams, 0),
                                  self.llm.get_input_embeddings())
        handle = self.llm.register_forward_pre_hook(supply, with_kwargs=True)
        try:
            with self._reused_routing():
                tokens = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                                           synced_gpus=synced_gpus, streamer=streamer)
        finally:
            handle.remove()
        eos = self.tokenizer.eos_token_id
        return [self.decode(row[: row.index(eos)] if eos in row else row) for row in tokens.tolist()]

    def decode(self, ids: list[int]) -> str:
        """Generated ids → text (special tokens dropped)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class _LaVINStepInputs:
    """Forward pre-hook on the LM for one ``generate`` call: LaVIN's own attention mask and positions for each step.

    Each call is placed in the sequence (the prompt, then generated tokens, every one of them real) from the KV-cache
    object it carries (found by type, as for OpenFlamingo), never from what transformers passes besides: its queries
    get :func:`attention_bias` rows over the prompt's padding mask extended by the generated tokens (the modality
    column hidden) and :func:`position_ids`. A call without a cache recomputes the whole sequence, so the prompt's
    embeddings are put back in front of the generated tokens. A call that does not fit raises.
    """

    def __init__(self, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, embed_tokens: nn.Module) -> None:
        self.prompt_embeds, self.prompt_mask, self.embed_tokens = prompt_embeds, prompt_mask, embed_tokens
        self.fed = 0  # sequence positions that have gone through the model (and into its cache) so far

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        cache = hf_compat.find_cache(args, kwargs)
        start = cache.get_seq_length() if cache is not None else 0
        embeds = kwargs.pop("inputs_embeds", None)
        ids = kwargs.pop("input_ids", None)
        if embeds is None:
            embeds = self.embed_tokens(ids)
            if start == 0:  # no cache: the prompt, then what was generated so far
                embeds = torch.cat([self.prompt_embeds.to(embeds.dtype), embeds], dim=1)
        rows, n = embeds.shape[:2]
        prompt_len = self.prompt_mask.shape[1]
        if rows != self.prompt_mask.shape[0] or (cache is not None and start != self.fed) or start + n < prompt_len:
            raise RuntimeError(f"LaVIN generation: a step of {rows} x {n} tokens after {start} cached positions "
                               f"({self.fed} fed) does not fit the {tuple(self.prompt_mask.shape)} prompt "
                               "(see docs/compatibility.md)")
        self.fed = start + n
        generated = self.prompt_mask.new_ones(rows, start + n - prompt_len)
        mask = torch.cat([self.prompt_mask, generated], dim=1)
        kwargs.pop("attention_mask", None)
        kwargs["inputs_embeds"] = embeds
        kwargs["attention_mask"] = attention_bias(mask, embeds.dtype, start, n)
        kwargs["position_ids"] = position_ids(mask)[:, start:start + n]
        return args, kwargs
