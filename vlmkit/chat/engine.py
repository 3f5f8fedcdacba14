"""The chat behind both front ends: a trained model loaded from its run, a session of turns, streamed replies.

    engine = ChatEngine.load(run_dir="runs/quickstart_lavin_sqa_tiny")    # config.yaml + model.safetensors
    session = ChatSession(engine)
    session.attach_image("cat.png")
    reply = session.ask("Which animal is shown? | cat | dog")              # reply.dropped: turns cut from history
    for piece in reply.stream(): print(piece, end="")                      # then reply.text; the turn is recorded

A session only ever changes after a step succeeded: a bad image, setting or question leaves it as it was.
"""
from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vlmkit.chat.formats import ChatFormat, FlamingoChatFormat, LaVINChatFormat, Turn, fit_history, parse_question
from vlmkit.chat.images import ImageLimits, load_chat_image
from vlmkit.chat.settings import GenerationSettings
from vlmkit.errors import CheckpointError, ConfigError, missing_file

RUN_CONFIG, RUN_WEIGHTS = "config.yaml", "model.safetensors"
#: Datasets whose chunk template an OpenFlamingo chat uses, in this order of preference, when the run names several.
FLAMINGO_TEMPLATE_DATASETS = ("vqav2", "image_text", "coco_caption")


def resolve_run(run_dir: str | None, cfg_path: str | None, checkpoint: str | None) -> tuple[Path, Path | None]:
    """(config file, weights file or None) from ``--run`` or ``--cfg-path [--checkpoint]``."""
    if run_dir is None:
        if cfg_path is None:
            raise ConfigError("give --run RUN_DIR (a finished training run) or --cfg-path PROJECT.yaml")
        return Path(cfg_path), Path(checkpoint) if checkpoint else None
    if cfg_path is not None:
        raise ConfigError("give either --run RUN_DIR or --cfg-path, not both (the run's own config.yaml is used)")
    run = Path(run_dir)
    if not run.is_dir():
        raise missing_file(run, "run directory", "pass the run.output_dir of a training run")
    config = run / RUN_CONFIG
    if not config.is_file():
        raise missing_file(config, "run config", "a training run writes it at its start; is this a run directory?")
    weights = Path(checkpoint) if checkpoint else run / RUN_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found: the run has not finished training; pass --checkpoint "
                              f"{run / 'checkpoints' / 'best.safetensors'} (or checkpoints/last.pt)")
    return config, weights


def pick_device(cfg: DictConfig, device: str | None) -> torch.device:
    name = device or str(cfg.run.get("device", "auto"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' is not available on this machine; use --device cpu")
    return torch.device(name)


def chat_format(model: Any, cfg: DictConfig) -> ChatFormat:
    """The prompt layout of the model's training (see vlmkit/chat/formats.py)."""
    from vlmkit.config import defaults_for
    from vlmkit.models.flamingo import OpenFlamingo
    from vlmkit.models.lavin import LaVIN
    from vlmkit.registry import DATASETS

    if isinstance(model, LaVIN):
        sqa = cfg.datasets.get("scienceqa") or defaults_for("datasets", "scienceqa")
        return LaVINChatFormat(model, str(sqa.prompt_format))
    if isinstance(model, OpenFlamingo):
        named = [n for n in FLAMINGO_TEMPLATE_DATASETS if n in cfg.datasets]
        name = named[0] if named else "vqav2"
        dataset_cfg = cfg.datasets[name] if named else defaults_for("datasets", name)
        return FlamingoChatFormat(model, DATASETS.build_named(name, dataset_cfg, where=f"datasets.{name}").template())
    raise ConfigError(f"vlmkit chat serves LaVIN and OpenFlamingo models; model '{cfg.model.arch}' is "
                      f"{type(model).__name__}")


@dataclass
class ChatEngine:
    """A loaded model with its prompt layout and the settings its run generated with."""

    model: Any
    format: ChatFormat
    settings: GenerationSettings
    limits: ImageLimits = field(default_factory=ImageLimits)
    source: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time on the one model

    @classmethod
    def load(cls, run_dir: str | None = None, cfg_path: str | None = None, checkpoint: str | None = None,
             options: Sequence[str] = (), imports: Sequence[str] = (), device: str | None = None,
             limits: ImageLimits | None = None) -> "ChatEngine":
        from vlmkit.config import load_config
        from vlmkit.engine.build import load_checkpoint_into
        from vlmkit.registry import MODELS

        config, weights = resolve_run(run_dir, cfg_path, checkpoint)
        cfg = load_config(config, options, imports)
        model = MODELS.build(cfg.model, device=pick_device(cfg, device))
        if weights is not None:
            load_checkpoint_into(model, weights, str(cfg.model.arch))
        model.eval()
        source = f"{config}" + (f" + {weights}" if weights else " (no trained weights: --checkpoint not given)")
        return cls(model, chat_format(model, cfg), GenerationSettings.from_run(cfg.run.get("generate")),
                   limits or ImageLimits(), source)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def batch(self, sample: dict[str, Any]) -> dict[str, Any]:
        device = next(self.model.parameters()).device
        batch = self.model.collator(train=False)([sample])
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def stream(self, sample: dict[str, Any], settings: GenerationSettings) -> Generator[str, None, str]:
        """Yields pieces of the reply as they are generated (all at once for beam search); returns the whole reply,
        as the model's ``generate`` decodes it."""
        batch = self.batch(sample)
        kwargs = settings.generate_kwargs()
        with self.lock:
            if not settings.streams():
                text = self.model.generate(batch, **kwargs)[0]
                yield text
                return text
            return (yield from self._threaded(batch, kwargs))

    def _threaded(self, batch: dict[str, Any], kwargs: dict[str, Any]) -> Generator[str, None, str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def generate() -> None:
            try:
                result["text"] = self.model.generate(batch, streamer=streamer, **kwargs)[0]
            except BaseException as e:  # handed to the caller's thread below
                result["error"] = e
                streamer.end()

        worker = threading.Thread(target=generate, name="vlmkit-chat-generate", daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()
        if "error" in result:
            raise result["error"]
        return result["text"]


@dataclass
class Reply:
    """One answer in progress. ``stream()`` yields its pieces and records the turn in the session when it ends."""

    session: "ChatSession"
    turn: Turn
    sample: dict[str, Any]
    dropped: int
    text: str = ""

    def stream(self) -> Iterator[str]:
        text = yield from self.session.engine.stream(self.sample, self.session.settings)
        self.text = text.strip()
        self.turn.answer = self.text
        self.session.turns.append(self.turn)


class ChatSession:
    """The turns, the images and the settings of one conversation over a shared :class:`ChatEngine`."""

    def __init__(self, engine: ChatEngine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.turns: list[Turn] = []
        self.images: list[torch.Tensor] = []
        self.current_image: int | None = None
        self.last_prompt: str | None = None  # the model input of the latest question (terminal: /prompt)

    def attach_image(self, path: str | Path, name: str | None = None) -> tuple[int, int]:
        """Check and attach an image for the next questions; returns its (width, height)."""
        image = load_chat_image(path, self.engine.limits, name)
        self.images.append(self.engine.model.image_transform(image))
        self.current_image = len(self.images) - 1
        return image.size

    def set(self, name: str, value: Any) -> None:
        self.settings = self.settings.with_value(name, value)

    def reset(self) -> None:
        """Forget the turns and the images; the settings stay."""
        self.turns, self.images, self.current_image = [], [], None

    def ask(self, line: str) -> Reply:
        """Build the model input of ``line`` after the turns so far (oldest cut to fit); nothing is recorded yet."""
        question, options = parse_question(line)
        turn = Turn(question, options, self.current_image)
        sample, dropped = fit_history(self.engine.format, [*self.turns, turn], self.images,
                                      self.settings.max_new_tokens)
        self.last_prompt = sample["prompt"]
        return Reply(self, turn, sample, dropped)
