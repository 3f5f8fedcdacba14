"""What ``vlmkit train`` and ``vlmkit evaluate`` run: a :class:`Runner` built once from the config (the process around
it — distributed group, logging, signals — is vlmkit/engine/entrypoints.py).

    runner = Runner.for_training(cfg, device)      # task, model, datasets, optimizer-free: nothing written yet
    runner.train(resume=False)                     # trainer + hooks; evaluates run.test_splits at the end
    Runner.for_evaluation(cfg, device, ["test"], checkpoint).evaluate(["test"])

Nothing is written to ``run.output_dir`` until the config, the model and the data have all been built, so a bad input
leaves no half-written run behind. Hooks are a plain list (:meth:`Runner.build_hooks`): the standard ones, then the
user's ``run.hooks`` entries (registry ``HOOKS``).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, Dataset

from vlmkit import dist
from vlmkit.config import save_config, to_dict
from vlmkit.data.validate import validate_datasets
from vlmkit.engine.build import (apply_effective_batch, build_loader, build_model, build_task, check_datasets,
                                 check_strategy, load_checkpoint_into, on_device, run_logging,
                                 save_weights_from_all_ranks, seed_everything, wrap_model)
from vlmkit.engine import evaluation
from vlmkit.engine.evaluation import EvalOptions, main_score, metric_key, print_tables
from vlmkit.engine.checkpoint import load_state_or_previous, load_weights, previous_path, save_state
from vlmkit.engine.fsdp import full_tensors, is_sharded, load_trainable
from vlmkit.engine.hooks import CheckpointHook, EvalHook, LoggingHook, LRHook, MetricsFiles
from vlmkit.engine.rundir import RunDirLock, claim_output_dir, drop_previous_run, refuse_if_locked, resume_changes
from vlmkit.engine.optim import build_optimizer, effective_batch_size, resolve_lr
from vlmkit.engine.schedulers import StepScheduler, build_scheduler
from vlmkit.engine.trainer import AMP_DTYPES, HookBase, Trainer
from vlmkit.engine.vision_cache import build_vision_cache, serving
from vlmkit.errors import CheckpointError, ConfigError, DataError, missing_file
from vlmkit.failures import Interrupted
from vlmkit.registry import HOOKS
from vlmkit.tasks.base import run_evaluation

logger = logging.getLogger("vlmkit")

LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_WEIGHTS = Path("checkpoints") / "best.safetensors"
FINAL_WEIGHTS = "model.safetensors"


class Runner:
    """The task, the model and the datasets of one run, built once; trains and evaluates them."""

    def __init__(self, cfg: DictConfig, device: torch.device, splits: Sequence[str], train_splits: Sequence[str] = (),
                 checkpoint: str | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.output_dir = Path(cfg.run.output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ConfigError(f"run.output_dir {self.output_dir} is a file, not a directory; choose another "
                              "run.output_dir")
        seed_everything(int(cfg.run.seed))
        self.task = build_task(cfg)
        self.model = build_model(cfg, device)
        if checkpoint is not None:
            load_checkpoint_into(self.model, checkpoint, cfg.model.arch)
        self.splits = list(splits)
        self.datasets = self.build_datasets(splits, train_splits)
        self.hooks: list[HookBase] = []
        self.trainer: Trainer | None = None
        self.saved_step: int | None = None  # step of the newest checkpoints/last.pt this run wrote or resumed from
        self.force_config = False  # --resume --force-config
        self.overwrite = False  # --overwrite
        self.resume_notes: list[str] = []  # config changes a resume accepted
        self._vision_cache: Any = False  # built by the first evaluation (False: not yet; vlmkit/engine/vision_cache.py)

    def close(self) -> None:
        """Release what outlives one evaluation (the vision cache and its spill file)."""
        if self._vision_cache:
            self._vision_cache.close()
        self._vision_cache = False

    # ------------------------------------------------------------------------------------------------- building
    @classmethod
    def for_training(cls, cfg: DictConfig, device: torch.device, resume: bool = False) -> Runner:
        run = cfg.run
        check_strategy(run)
        apply_effective_batch(run, dist.world_size())
        last = Path(run.output_dir) / LAST_CHECKPOINT
        if resume and not last.is_file() and not previous_path(last).is_file():
            raise CheckpointError(f"--resume: no checkpoint at {last} (run.output_dir={run.output_dir}); "
                                  "start without --resume, or point run.output_dir at the interrupted run")
        refuse_if_locked(Path(run.output_dir))
        splits = list(dict.fromkeys([*run.train_splits, *run.val_splits, *run.test_splits]))
        return cls(cfg, device, splits, train_splits=list(run.train_splits))

    @classmethod
    def for_evaluation(cls, cfg: DictConfig, device: torch.device, splits: Sequence[str] | None = None,
                       checkpoint: str | None = None) -> Runner:
        splits = list(splits) if splits else list(cfg.run.test_splits)
        if not splits:
            raise ConfigError("nothing to evaluate: run.test_splits is empty and no --split was given")
        strategy = check_strategy(cfg.run)
        from vlmkit.data.fewshot import check_rices_cache

        check_rices_cache(cfg, splits)  # a RICES feature cache of other vision weights is refused before the build
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise missing_file(checkpoint, "checkpoint", "pass --checkpoint <output_dir>/model.safetensors of a "
                                                         "finished run")
        runner = cls(cfg, device, splits, checkpoint=checkpoint)
        if strategy == "fsdp":  # a model too big for one device is evaluated sharded too
            runner.model = wrap_model(runner.model, cfg.run, device)
        found = {s for by_split in runner.datasets.values() for s in by_split}
        missing = [s for s in splits if s not in found]
        if missing:
            raise DataError(f"no dataset of this config has the split(s) {', '.join(missing)} "
                            f"(available: {', '.join(sorted(found))})")
        return runner

    def build_datasets(self, splits: Sequence[str], train_splits: Sequence[str] = ()) -> dict[str, dict[str, Dataset]]:
        """(Re)build the task's datasets for ``splits`` (those in ``train_splits`` for training) and check them: not
        empty, and every image decodes (``run.validate_images``)."""
        datasets = self.task.build_datasets(self.model, splits=list(splits), train=list(train_splits))
        check_datasets(datasets)
        if self.cfg.run.get("validate_images", True):
            n = validate_datasets(datasets)
            if n:
                logger.info("checked %d images: all decode", n)
        return datasets

    def rebuild(self, cfg: DictConfig) -> None:
        """Another dataset setting with the same model (the few-shot sweep's points): new task and datasets."""
        self.cfg = cfg
        self.task = build_task(cfg)
        self.datasets = self.build_datasets(self.splits)

    def build_hooks(self, scheduler: StepScheduler, total_steps: int) -> list[HookBase]:
        """LR first (the others see the schedule after the step), then logging, evaluation, checkpointing (so a
        checkpoint includes the best metric so far), then the user's ``run.hooks`` in their order."""
        run = self.cfg.run
        metrics = MetricsFiles(self.output_dir)
        hooks: list[HookBase] = [
            LRHook(scheduler),
            LoggingHook(metrics, int(run.log_every), total_steps,
                        self.output_dir / "tensorboard" if run.tensorboard else None),
            EvalHook(self._evaluate_val, self._save_best, int(run.eval_every) if run.val_splits else 0),
            CheckpointHook(self._save_last, int(run.save_every)),
        ]
        for entry in run.get("hooks") or []:
            hook = HOOKS.build(entry)
            hook.runner = self
            hooks.append(hook)
        return hooks

    # ------------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, splits: Sequence[str], output_dir: str | Path | None = None, epoch: int | None = None,
                 step: int | None = None, options: EvalOptions | None = None) -> dict[str, dict[str, Any]]:
        """Evaluate every dataset's ``splits`` (those it has): predictions, per-sample records, metrics.jsonl and
        metrics.json under ``output_dir`` (default ``run.output_dir``); every hook's ``after_eval`` sees each result.
        ``options``: a subset, or resuming the records of an interrupted evaluation (vlmkit/engine/evaluation.py)."""
        out = Path(output_dir) if output_dir is not None else self.output_dir
        options = options or EvalOptions()
        metrics = MetricsFiles(out)
        results: dict[str, dict[str, Any]] = {}
        self.model.eval()
        for name, by_split in self.datasets.items():
            for split in splits:
                if split not in by_split:
                    continue
                key = metric_key(name, split, len(self.datasets))
                result = self._evaluate_split(name, split, by_split[split], key, out, options)
                results[key] = result
                metrics.append({"split": key, "dataset": name, "epoch": epoch, "step": step, **result})
                metrics.update_latest(key, result)
                for hook in self.hooks:
                    hook.after_eval(key, result, step)
        return results

    def _evaluate_split(self, name: str, split: str, ds: Dataset, key: str, out: Path,
                        options: EvalOptions) -> dict[str, Any]:
        run = self.cfg.run
        amp = AMP_DTYPES.get(run.get("amp") or "")
        gen_kwargs = self.task.generation_kwargs()
        if is_sharded(self.model):  # every generation step is a collective: finished ranks keep stepping
            gen_kwargs["synced_gpus"] = True
        run_set, log, index_of, done, subset = evaluation.prepare(ds, f"{name}_{split}", out, self.cfg, options)
        loader = build_loader(run_set, self.model, run, train=False)
        if self._vision_cache is False:  # kept across evaluations (a sweep's points): each image is encoded once
            self._vision_cache = build_vision_cache(run, self.model, self.output_dir)
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None), \
                serving(self._vision_cache, self.model, ds, key) as prepare:
            result = run_evaluation(self.model, on_device(loader, self.device), self.task.build_evaluator(name, split, ds),
                                    gen_kwargs, out / "predictions" / f"{name}_{split}.json", desc=f"eval {key}",
                                    samples=log, index_of=index_of, done=done, prepare=prepare)
        return evaluation.mark_subset(result, subset)

    def _evaluate_val(self, epoch: int, step: int) -> float | None:
        results = self.evaluate(list(self.cfg.run.val_splits), epoch=epoch, step=step)
        print_tables(self.task, results)
        return main_score(self.task, results)

    def _save_best(self) -> None:
        save_weights_from_all_ranks(self.model, self.output_dir / BEST_WEIGHTS, self.cfg.model.arch)

    def _save_last(self) -> None:
        # Collectives: the trainer gathers every rank's RNG state (and FSDP optimizer shards), full_tensors the weights.
        assert self.trainer is not None
        trainer_state = self.trainer.state_dict()
        weights = full_tensors(self.model.trainable_state_dict())
        failure = None
        if dist.is_main():
            try:
                save_state({"arch": self.cfg.model.arch, "config": to_dict(self.cfg), "model": weights,
                            **trainer_state}, self.output_dir / LAST_CHECKPOINT)
                self.saved_step = int(trainer_state["step"])
            except CheckpointError as e:
                failure = str(e)
        failure = dist.broadcast_object(failure)  # every rank stops on a failed save, not only rank 0
        if failure is not None:
            raise CheckpointError(failure)

    # -------------------------------------------------------------------------------------------------- training
    def _resume_state(self, resume: bool) -> dict[str, Any] | None:
        last, arch = self.output_dir / LAST_CHECKPOINT, self.cfg.model.arch
        if not resume:
            return None
        state, last = load_state_or_previous(last)
        if state.get("arch") != arch:
            raise CheckpointError(f"{last} is a checkpoint of model '{state.get('arch')}', but this config builds "
                                  f"'{arch}'; resume with the config it was trained with")
        self._check_resume_config(state.get("config") or {}, last)
        self.model.load_trainable_state_dict(state["model"])
        self.saved_step = int(state.get("step", 0))
        return state

    def _check_resume_config(self, stored: Mapping[str, Any], last: Path) -> None:
        refused, safe = resume_changes(stored, to_dict(self.cfg))
        if refused and not self.force_config:
            more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
            raise ConfigError(f"--resume: this config differs from the one {last} was trained with in keys that change "
                              f"the data order, the batch, the model or the optimisation: {'; '.join(refused[:3])}"
                              f"{more}; resume with the original config, or add --force-config to accept the change")
        # logged once log.txt is open (_start_logs)
        self.resume_notes = [f"--force-config: resuming with a changed config: {c}" for c in refused] + \
            [f"resuming with {c}" for c in safe]

    def _build_trainer(self) -> tuple[Trainer, StepScheduler, int, float]:
        run = self.cfg.run
        train_sets = [by_split[s] for by_split in self.datasets.values() for s in run.train_splits if s in by_split]
        if not train_sets:
            raise DataError(f"no training data: none of the datasets has the splits "
                            f"run.train_splits={list(run.train_splits)}")
        wrapped = wrap_model(self.model, run, self.device)
        loader = build_loader(ConcatDataset(train_sets), self.model, run, train=True)
        lr = resolve_lr(run, dist.world_size())
        optimizer = build_optimizer(self.model, run, lr)
        steps_per_epoch = math.ceil(len(loader) / int(run.accum_iter))
        total_steps = steps_per_epoch * int(run.epochs)
        if run.max_steps is not None:
            total_steps = min(total_steps, int(run.max_steps))
        scheduler = build_scheduler(optimizer, run.scheduler, lr, float(run.min_lr), total_steps, steps_per_epoch)
        return Trainer(wrapped, self.model, loader, optimizer, scheduler, run, self.device), scheduler, total_steps, lr

    def train(self, resume: bool = False) -> dict[str, dict[str, Any]]:
        """Train per ``run``, evaluate the test splits (with the best validation weights if any); metrics by split."""
        out = self.output_dir
        state = self._resume_state(resume)
        trainer, scheduler, total_steps, lr = self._build_trainer()
        self.trainer = trainer
        self.hooks = self.build_hooks(scheduler, total_steps)
        trainer.register_hooks(self.hooks)
        if state is not None:
            trainer.load_state_dict(state)
            del state
        # Everything is built and valid: from here on the run writes into output_dir.
        moved = None if resume else self._claim_output_dir()
        with RunDirLock(out) if dist.is_main() else contextlib.nullcontext(), run_logging(out / "log.txt"):
            try:
                self._start_logs(resume, lr, total_steps, moved)
                trainer.train()
                results = self._finish()
            except KeyboardInterrupt:
                raise self._interrupted() from None
            finally:
                self.close()
        if moved is not None and dist.is_main():
            drop_previous_run(out)
        return results

    def _claim_output_dir(self) -> Path | None:
        """Refuse a directory that holds a run unless ``--overwrite``; with it, move the old run aside (returned)."""
        return claim_output_dir(self.output_dir, self.overwrite)

    def _start_logs(self, resume: bool, lr: float, total_steps: int, moved: Path | None) -> None:
        run, out, trainer = self.cfg.run, self.output_dir, self.trainer
        assert trainer is not None
        metrics = MetricsFiles(out)
        if dist.is_main():
            out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, out / "config.yaml")
        if moved is not None:
            logger.info("--overwrite: the previous run is in %s until this run finishes", moved)
        for note in self.resume_notes:
            (logger.warning if note.startswith("--force-config") else logger.info)(note)
        if resume:
            metrics.truncate_after(trainer.step)
            logger.info("resuming from %s at epoch %d, batch %d of %d (step %d)", out / LAST_CHECKPOINT,
                        trainer.epoch, trainer.iter_in_epoch, len(trainer.loader), trainer.step)
        else:
            metrics.reset()
        batch = effective_batch_size(run, dist.world_size())
        logger.info("effective batch %d (batch %d x %d ranks x accum %d); lr %.4g%s; %d steps (%d per epoch)",
                    batch, run.batch_size, dist.world_size(), run.accum_iter, lr,
                    "" if run.lr is not None else f" = blr {run.blr:g} x {batch} / 256", total_steps,
                    math.ceil(len(trainer.loader) / int(run.accum_iter)))
        dist.barrier()

    def _finish(self) -> dict[str, dict[str, Any]]:
        run, out, trainer = self.cfg.run, self.output_dir, self.trainer
        assert trainer is not None
        eval_hook = next(h for h in self.hooks if isinstance(h, EvalHook))
        save_weights_from_all_ranks(self.model, out / FINAL_WEIGHTS, self.cfg.model.arch)
        logger.info("trained weights: %s (%d skipped steps)", out / FINAL_WEIGHTS, trainer.skipped_steps)
        results: dict[str, dict[str, Any]] = {}
        if run.test_splits:
            if eval_hook.evaluated and (out / BEST_WEIGHTS).is_file():
                load_trainable(self.model, load_weights(out / BEST_WEIGHTS))
                logger.info("testing the best validation weights (epoch %s)", eval_hook.best_epoch)
            results = self.evaluate(list(run.test_splits), epoch=trainer.epoch, step=trainer.step)
            print_tables(self.task, results)
        for hook in self.hooks:
            hook.after_run()
        logger.info("outputs in %s: %s, metrics.json, metrics.jsonl, predictions/, checkpoints/, config.yaml, log.txt",
                    out, FINAL_WEIGHTS)
        return results

    def _interrupted(self) -> Interrupted:
        step = self.trainer.step if self.trainer is not None else 0
        last = self.output_dir / LAST_CHECKPOINT
        if self.saved_step is not None and last.is_file():
            return Interrupted(f"interrupted at step {step}; the last good checkpoint is {last} (step "
                               f"{self.saved_step})", resumable=True)
        return Interrupted(f"interrupted at step {step}, before the first checkpoint (written every run.save_every="
                           f"{self.cfg.run.save_every} steps, 0 = at epoch ends only): nothing to resume",
                           resumable=False)
