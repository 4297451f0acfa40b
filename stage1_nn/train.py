"""`trajstack stage1`: K-fold training of the stage-1 network; OOF + test predictions and embeddings.

Reads top to bottom: config -> data -> per fold (datasets, model, optimiser, loop, predictions)
-> assembled artifacts. Outputs follow DESIGN.md section 4 under
`outputs/<exp>/stage1/<stage1.name>/`; a finished fold is skipped on rerun.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import random
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from trajstack.artifacts import (
    CHECKPOINT_FILE,
    OOF_EMB_FILE,
    OOF_FILE,
    TEST_EMB_FILE,
    TEST_FILE,
    TRAIN_IDS_FILE,
    ArtifactStore,
    Run,
    Stage,
    fold_dir_name,
)
from trajstack.cli import common_parser, config_from_args
from trajstack.config import Config, ConfigError
from trajstack.errors import one_line
from trajstack.folds import Folds, ensure_folds, inner_holdout
from trajstack.image_cache import ImageCache, build_or_open_cache
from trajstack.io import file_hash
from trajstack.logs import get_logger, relay_records, send_records_to
from trajstack.metrics import mae, mae_report
from trajstack.tables import read_table, table_path

from .augment import FlipRules, PhotometricAugment
from .data import (
    SequenceDataset,
    SplitArrays,
    TelemetryEncoder,
    aux_targets,
    collate,
    displacements,
    extra_vectors,
    extra_vectors_hash,
    frame_indices,
    next_row_index,
    pixel_statistics,
    raw_telemetry,
    sequence_dataset,
    target_baseline,
    target_scale,
)
from .distributed import (
    DistEnv,
    barrier,
    gather,
    relaunch_with_torchrun,
    setup,
    teardown,
    under_torchrun,
)
from .engine import predict, predict_with_tta, train_one_epoch
from .model import ModelDims, build_model, save_checkpoint
from .optim import build_ema, build_optimizer, build_scheduler
from .report import append_metrics, plot_learning_curve, prediction_frame
from .resume import RESUME_FILE, EpochState, load_epoch_state, random_state, save_epoch_state

logger = get_logger(__name__)

# The stage and the config sections its result depends on (vlm and features.physics only when
# used); other stages' sections stay out of its signature, so tuning stage 2 never invalidates a
# finished stage 1. Version 2: epochs are chosen last or on an inner holdout, never on the fold.
STAGE = Stage("stage1", sections=("seed", "dataset", "folds", "stage1", "vlm", "features"),
              version=2, rebuild="trajstack stage1 stage1.name={run}")


@dataclass
class Stage1Data:
    """Everything read once and shared by the folds: tables in CSV order, caches, folds."""

    train: pd.DataFrame
    test: pd.DataFrame
    train_images: ImageCache
    test_images: ImageCache
    folds: Folds
    fold_of_row: np.ndarray  # fold of each train row (CSV order)
    train_telemetry: np.ndarray
    test_telemetry: np.ndarray
    targets: np.ndarray
    train_extra: np.ndarray | None
    test_extra: np.ndarray | None
    train_baseline: np.ndarray | None  # (rows, n_targets) with `stage1.baseline: physics`
    test_baseline: np.ndarray | None
    train_scale: np.ndarray | None  # (rows, n_targets) with `stage1.per_metre_axes`
    test_scale: np.ndarray | None
    train_next_rows: np.ndarray | None = None  # with `stage1.loss.next_telemetry_weight` > 0

    def arrays(self, split: str, id_column: str) -> SplitArrays:
        """The per-row arrays of `split` ("train" or "test") as the datasets read them."""
        train = split == "train"
        return SplitArrays(
            ids=(self.train if train else self.test)[id_column].to_numpy(str),
            images=(self.train_images if train else self.test_images).images,
            telemetry=self.train_telemetry if train else self.test_telemetry,
            targets=self.targets if train else None,
            extra=self.train_extra if train else self.test_extra,
            baseline=self.train_baseline if train else self.test_baseline,
            next_rows=self.train_next_rows if train else None,
            scale=self.train_scale if train else self.test_scale)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `trajstack stage1`; re-launches itself under torchrun for `--nproc N`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = common_parser(STAGE.name, "train the stage-1 network with K-fold CV (OOF + embeddings)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (DDP via torchrun)")
    parser.add_argument("--force", action="store_true", help="retrain even finished folds/runs")
    args = parser.parse_args(argv)
    if args.nproc > 1 and not under_torchrun():
        return relaunch_with_torchrun(argv, args.nproc)
    cfg = config_from_args(args)
    env = setup(cfg.stage1.device)
    try:
        run_stage1(cfg, env, force=args.force)
    finally:
        teardown(env)
    return 0


def run_stage1(cfg: Config, env: DistEnv | None = None, force: bool = False) -> Run:
    """Train every selected fold not yet done, then assemble oof/test artifacts (rank 0).

    Parameters
    ----------
    cfg : the resolved config (`cfg.stage1` for this stage).
    env : the process's place in a DDP group (default: single process on the configured device).
    force : retrain folds already done.

    Returns
    -------
    The artifact-store `Run` (its folder holds the outputs).
    """
    env = env or setup(cfg.stage1.device)
    torch.set_num_threads(cfg.stage1.threads or max(1, _cpu_count() // env.world))
    data = load_data(cfg, env)
    # The VLM section and the physics vehicle join the signature only when they are used.
    config = STAGE.run_config({k: v for k, v in cfg.to_dict().items()
                               if k not in ("vlm", "features") or (k == "vlm" and cfg.vlm.enabled)})
    if cfg.stage1.baseline == "physics" or cfg.stage1.per_metre_axes:
        config["features"] = {"physics": cfg.features.physics.model_dump(mode="json")}
    inputs = {
        "train": file_hash(table_path(cfg.data_dir, cfg.dataset, "train")),
        "test": file_hash(table_path(cfg.data_dir, cfg.dataset, "test")),
        "images": data.train_images.fingerprint,
        "test_images": data.test_images.fingerprint,
    }
    extra_hash = extra_vectors_hash(cfg)
    if extra_hash is not None:
        inputs["extra"] = extra_hash
    run = ArtifactStore(cfg.experiment_dir).run(STAGE, cfg.stage1.name, config, inputs,
                                                fold_hash=data.folds.hash)
    if run.is_done() and not force:
        _say(env, f"stage1: {run.dir} is done with this config and inputs; skipping")
        return run
    if env.is_main:
        run.begin(force=force)
    barrier(env)
    folds = selected_folds(cfg, data.folds)
    todo = [k for k in folds if force or not run.part_done(fold_dir_name(k))]
    for fold in sorted(set(folds) - set(todo)):
        _say(env, f"stage1: fold {fold} already done; skipping")
    if force and env.is_main:  # retrain from scratch: no epoch an earlier run saved is resumed
        for fold in todo:
            run.path(f"{fold_dir_name(fold)}/{RESUME_FILE}").unlink(missing_ok=True)
    barrier(env)
    workers = fold_workers(cfg, env, len(todo))
    if workers > 1:  # CPU: several folds at once, each in its own process
        fit_folds_in_workers(cfg, todo, run, workers)
    else:
        for i, fold in enumerate(todo):
            try:
                fit_fold(cfg, data, fold, run, env)
            except Exception as err:
                fold_failure({fold: err}, finished=todo[:i], not_started=todo[i + 1:])
                raise
            barrier(env)
    if env.is_main:
        assemble_run(cfg, data, folds, run)
        _say(env, f"stage1: done -> {run.dir}  CV MAE {run.read_meta()['scores']['mae']:.4f}")
    barrier(env)
    return run


# ----------------------------------------------------------------------------- data


def load_data(cfg: Config, env: DistEnv) -> Stage1Data:
    """Tables, folds, image caches (rank 0 makes folds and caches first), optional VLM vectors."""
    spec = cfg.dataset
    if env.is_main:
        ensure_folds(cfg)
        for split in ("train", "test"):
            build_or_open_cache(cfg.data_dir, spec, split, cfg.cache_dir, cfg.cache.workers,
                                progress=cfg.stage1.progress)
    barrier(env)
    folds = ensure_folds(cfg)
    train, test = read_table(cfg.data_dir, spec, "train"), read_table(cfg.data_dir, spec, "test")
    caches = [build_or_open_cache(cfg.data_dir, spec, s, cfg.cache_dir, cfg.cache.workers, progress=False)
              for s in ("train", "test")]
    for cache, table in zip(caches, (train, test), strict=True):
        if not np.array_equal(cache.ids, table[spec.id_column].to_numpy(str)):
            raise RuntimeError(f"image cache {cache.path} rows differ from the table's; rebuild it")
    extra = [extra_vectors(cfg, split, table[spec.id_column].to_numpy(str))
             for split, table in (("train", train), ("test", test))]
    return Stage1Data(
        train=train, test=test, train_images=caches[0], test_images=caches[1], folds=folds,
        fold_of_row=folds.fold_of(train[spec.id_column].to_numpy(str)),
        train_telemetry=raw_telemetry(train, spec), test_telemetry=raw_telemetry(test, spec),
        targets=train[spec.target_columns].to_numpy(np.float32),
        train_extra=extra[0], test_extra=extra[1],
        train_baseline=target_baseline(cfg, train), test_baseline=target_baseline(cfg, test),
        train_scale=target_scale(cfg, train), test_scale=target_scale(cfg, test),
        train_next_rows=(next_row_index(train[spec.id_column].to_numpy(str), spec)
                         if cfg.stage1.loss.next_telemetry_weight > 0 else None),
    )


def selected_folds(cfg: Config, folds: Folds) -> list[int]:
    """`stage1.folds` checked against the fold file (all folds when unset)."""
    chosen = cfg.stage1.folds if cfg.stage1.folds is not None else list(range(folds.n_splits))
    bad = [k for k in chosen if not 0 <= k < folds.n_splits]
    if bad:
        raise ConfigError(f"stage1.folds={chosen}: folds {bad} do not exist (folds.n_splits={folds.n_splits})")
    return sorted(set(chosen))


def make_loader(dataset: SequenceDataset, batch_size: int, env: DistEnv, cfg: Config,
                train: bool, seed: int) -> DataLoader:
    """Train: shuffled (DistributedSampler under DDP). Eval: in order, this rank's shard only."""
    sampler = None
    if train and env.distributed:
        sampler = DistributedSampler(dataset, num_replicas=env.world, rank=env.rank, shuffle=True, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    workers = cfg.stage1.num_workers
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=train and sampler is None,
        collate_fn=collate, num_workers=workers, generator=generator,
        drop_last=train and len(dataset) > batch_size * env.world,  # no 1-row BatchNorm batches
        pin_memory=env.device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=_reseed_worker if workers > 0 else None,
    )


def _reseed_worker(worker_id: int) -> None:
    # Each worker holds a copy of the dataset: give its flip and albumentations draws their own seed.
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**31)


# ----------------------------------------------------------------------------- one fold


@dataclass
class FoldInputs:
    """What one fold trains on, chooses its epoch on and predicts: rows, encoder, frames, augmentations.

    `train_rows` are fitted on; `select_rows` (empty unless `stage1.select: holdout`) are an
    inner holdout of the fold's training scenes, left out of training, that choose the epoch;
    `valid_rows` are the scored fold, used only for its predictions and the learning curve.
    """

    cfg: Config
    data: Stage1Data
    fold: int
    env: DistEnv
    seed: int
    train_rows: np.ndarray
    select_rows: np.ndarray
    valid_rows: np.ndarray
    encoder: TelemetryEncoder
    frames: np.ndarray
    flip: FlipRules
    photometric: PhotometricAugment | None

    def dataset(self, split: str, rows: np.ndarray | None, augment: bool, flip_p: float) -> SequenceDataset:
        """Sequences of `split` made only of `rows` (None: all); eval sets hold this rank's shard."""
        env = self.env
        return sequence_dataset(
            self.cfg, self.data.arrays(split, self.cfg.dataset.id_column), self.encoder, self.frames, rows, self.flip, flip_p,
            photometric=self.photometric if augment else None, seed=self.seed * 1000 + env.rank,
            shard=None if augment else (env.rank, env.world))

    def loader(self, split: str, rows: np.ndarray | None, flip_p: float = 0.0) -> DataLoader:
        """An in-order evaluation loader over `rows` of `split` (this rank's shard)."""
        s1 = self.cfg.stage1
        return make_loader(self.dataset(split, rows, False, flip_p), s1.eval_batch_size or 2 * s1.batch_size,
                           self.env, self.cfg, train=False, seed=self.seed)

    def dims(self) -> ModelDims:
        """Input/output sizes of the net for this data (frames, telemetry features, targets)."""
        spec, s1, data = self.cfg.dataset, self.cfg.stage1, self.data
        return ModelDims(
            n_frames=len(self.frames), channels=data.train_images.images.shape[-1],
            n_telemetry=self.encoder.n_features,
            n_extra=0 if data.train_extra is None else data.train_extra.shape[1],
            n_targets=len(spec.target_columns), n_aux=aux_targets(data.targets[:1], spec).shape[1],
            aux_head=s1.loss.aux, image_size=tuple(s1.image_size) if s1.image_size else None,
            n_axes=len(spec.axes),
            n_next=self.encoder.n_value_columns if s1.loss.next_telemetry_weight > 0 else 0,
        )


def prepare_fold(cfg: Config, data: Stage1Data, fold: int, env: DistEnv) -> FoldInputs:
    """Split rows by fold (and, for `select: holdout`, hold some training scenes out to choose the
    epoch on); fit the telemetry encoder on the rows trained on only."""
    s1, spec = cfg.stage1, cfg.dataset
    seed = cfg.seed + s1.seed_offset + fold
    train_rows = np.flatnonzero(data.fold_of_row != fold)
    select_rows = np.zeros(0, dtype=train_rows.dtype)
    if s1.select == "holdout":
        scenes = data.folds.scene_of(data.train[spec.id_column].to_numpy(str))
        train_rows, select_rows = inner_holdout(train_rows, scenes, s1.select_fraction, seed)
    frames = frame_indices(spec, s1.frames)
    photometric = (PhotometricAugment(s1.augment, len(frames), seed=seed * 100 + env.rank)
                   if PhotometricAugment.wanted(s1.augment) else None)
    return FoldInputs(
        cfg=cfg, data=data, fold=fold, env=env, seed=seed, train_rows=train_rows,
        select_rows=select_rows, valid_rows=np.flatnonzero(data.fold_of_row == fold),
        encoder=TelemetryEncoder.fit(data.train_telemetry[train_rows], spec),
        frames=frames, flip=FlipRules.from_spec(spec), photometric=photometric,
    )


@dataclass
class FoldModel:
    """A fold's net and what trains it: the (DDP-wrapped) net, its EMA, optimiser and schedule."""

    model: torch.nn.Module  # the bare net
    net: torch.nn.Module  # what the training step calls (DDP-wrapped under DDP)
    eval_model: torch.nn.Module  # the weights evaluated and saved: the EMA copy when EMA is on
    ema: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    dims: ModelDims
    amp_dtype: torch.dtype | None


class EpochChoice:
    """The one place where a fold's kept weights are chosen; never on the scored fold.

    `last`: the weights after the final epoch (the EMA weights when EMA is on). `holdout`: the
    epoch whose weights have the lowest MAE on `FoldInputs.select_rows`, an inner holdout of the
    fold's training scenes that the net does not train on.
    """

    def __init__(self, mode: str):
        self.mode, self.epoch, self.score, self.state = mode, 0, np.inf, None

    def offer(self, epoch: int, model: torch.nn.Module, selection: dict[str, np.ndarray] | None,
              targets: np.ndarray) -> float | None:
        """Consider the weights after `epoch`; `selection` are their predictions of the select rows."""
        if self.mode == "last":
            self.epoch = epoch
            return None
        score = mae(targets[selection["rows"]], selection["main"])
        if score < self.score:
            self.epoch, self.score, self.state = epoch, score, copy.deepcopy(model.state_dict())
        return score

    def as_dict(self) -> dict[str, Any]:
        """What a resumed fold needs to go on choosing (see `stage1_nn.resume`)."""
        return {"epoch": self.epoch, "score": float(self.score), "state": self.state}

    def load_dict(self, saved: dict[str, Any]) -> None:
        """Put `as_dict()` back."""
        self.epoch, self.score, self.state = saved["epoch"], saved["score"], saved["state"]

    def restore(self, model: torch.nn.Module) -> int:
        """Load the kept weights into `model` (`last`: they are already there); the kept epoch."""
        if self.state is not None:
            model.load_state_dict(self.state)
        return self.epoch


def fit_fold(cfg: Config, data: Stage1Data, fold: int, run: Run, env: DistEnv) -> None:
    """Train on every fold but `fold`, keep the chosen epoch's weights, predict the fold and the test."""
    fold_dir = run.path(fold_dir_name(fold))
    if env.is_main:
        fold_dir.mkdir(parents=True, exist_ok=True)
    inputs = prepare_fold(cfg, data, fold, env)
    seed_everything(inputs.seed)
    fm = build_fold_model(inputs)
    history, kept_epoch = train_epochs(inputs, fm, run, resume_fold(inputs, fm, run))
    val = predict_rows(inputs, fm, "train", inputs.valid_rows)
    test = predict_rows(inputs, fm, "test", None)
    if env.is_main:
        ids = data.train[cfg.dataset.id_column].to_numpy(str)
        write_fold(run, fold, cfg, data, val, test, ids[inputs.train_rows], history, kept_epoch)
        save_checkpoint(fold_dir / CHECKPOINT_FILE, fm.eval_model, cfg.stage1.model, fm.dims,
                        encoder=inputs.encoder.state_dict(), config=cfg.to_dict(), fold=fold,
                        kept_epoch=kept_epoch)
        final_mae = mae(data.targets[val["rows"]], val["main"])
        run.mark_part_done(fold_dir_name(fold), kept_epoch=kept_epoch, select=cfg.stage1.select,
                           val_mae=final_mae, n_train=len(inputs.train_rows),
                           n_select=len(inputs.select_rows), n_valid=len(inputs.valid_rows))
        (fold_dir / RESUME_FILE).unlink(missing_ok=True)  # the fold is done: nothing to resume
        _say(env, f"stage1 fold {fold}: kept epoch {kept_epoch} (select={cfg.stage1.select}), "
                  f"val MAE {final_mae:.4f}")


def build_fold_model(inputs: FoldInputs) -> FoldModel:
    """The fold's net (targets scaled on its training rows), EMA, optimiser, schedule and loader."""
    cfg, data, env = inputs.cfg, inputs.data, inputs.env
    s1, spec = cfg.stage1, cfg.dataset
    train_loader = make_loader(inputs.dataset("train", inputs.train_rows, True, s1.augment.flip_p),
                               s1.batch_size, env, cfg, train=True, seed=inputs.seed)
    dims = inputs.dims()
    model = build_model(s1.model, dims, channels_last=s1.channels_last).to(env.device)
    if s1.loss.normalize_targets:
        y = data.targets[inputs.train_rows]  # with a baseline the heads predict (and are scaled to) residuals
        if data.train_baseline is not None:
            y = y - data.train_baseline[inputs.train_rows]
        a = aux_targets(y, spec)  # the aux head stays in metres
        if data.train_scale is not None:  # `per_metre_axes`: the main head learns y / distance
            y = y / data.train_scale[inputs.train_rows]
        if s1.model.output == "displacements":  # the head predicts steps: scale it to the steps
            y = displacements(y, spec)
        model.set_target_scaling(np.nanmean(y, 0), np.nanstd(y, 0) + 1e-6, np.nanmean(a, 0), np.nanstd(a, 0) + 1e-6)
    if s1.model.pixel_norm == "dataset":  # the fold's training rows only
        model.set_pixel_statistics(*pixel_statistics(data.train_images.images, inputs.train_rows,
                                                     inputs.frames, seed=inputs.seed))
    ema = build_ema(model, s1.ema)
    if s1.compile:
        model.backbone.compile()  # in place: state-dict keys stay unprefixed
    optimizer = build_optimizer(model, s1.optim)
    steps_per_epoch = max(1, len(train_loader))
    scheduler = build_scheduler(optimizer, steps_per_epoch * s1.epochs,
                                int(round(s1.optim.warmup_epochs * steps_per_epoch)), s1.optim)
    return FoldModel(
        model=model, net=DistributedDataParallel(model) if env.distributed else model,
        eval_model=ema.module if ema is not None else model, ema=ema, optimizer=optimizer,
        scheduler=scheduler, train_loader=train_loader, dims=dims,
        amp_dtype=_amp_dtype(s1.precision, env.device))


def resume_fold(inputs: FoldInputs, fm: FoldModel, run: Run) -> EpochState:
    """Where the fold's loop starts: the state a killed run saved after its last finished epoch
    (loaded into `fm`), or epoch 0 with a fresh metrics log."""
    env, fold = inputs.env, inputs.fold
    path = run.path(f"{fold_dir_name(fold)}/{RESUME_FILE}")
    state, why = load_epoch_state(path, run.signature, fm, env.rank, env.world)
    epochs = gather(env, 0 if state is None else state.epoch)
    if len(set(epochs)) > 1:  # they would train different epochs and DDP would hang
        raise RuntimeError(f"{path}: the processes would resume after different epochs {epochs}; "
                           "delete the file to train the fold from its start")
    if path.exists():
        _say(env, f"stage1 fold {fold}: {why}" + ("" if state else "; training the fold from its start"))
    state = state or EpochState()
    if env.is_main:  # the log holds the finished epochs' records only
        metrics = path.parent / "metrics.jsonl"
        metrics.unlink(missing_ok=True)
        for record in state.history:
            append_metrics(metrics, record)
    return state


def train_epochs(inputs: FoldInputs, fm: FoldModel, run: Run, state: EpochState) -> tuple[list[dict], int]:
    """Train from `state.epoch` to `stage1.epochs` epochs; after each, log the scored fold's MAE
    (learning curve only), offer the weights to the `EpochChoice` and save the state a rerun
    resumes from. Leaves the kept weights in `fm.eval_model`."""
    cfg, env, fold = inputs.cfg, inputs.env, inputs.fold
    s1, spec, targets = cfg.stage1, cfg.dataset, inputs.data.targets
    valid_loader = inputs.loader("train", inputs.valid_rows)
    select_loader = inputs.loader("train", inputs.select_rows) if s1.select == "holdout" else None
    choice = EpochChoice(s1.select)
    if state.choice:
        choice.load_dict(state.choice)
    history, step = list(state.history), state.step
    _say(env, f"stage1 fold {fold}: {len(inputs.train_rows)} train rows, {len(inputs.select_rows)} "
              f"select rows, {len(inputs.valid_rows)} valid rows, {s1.model.backbone}, {s1.mode} "
              f"mode, {s1.epochs} epochs on {env.device} x{env.world}")
    for epoch in range(state.epoch + 1, s1.epochs + 1):
        if isinstance(fm.train_loader.sampler, DistributedSampler):
            fm.train_loader.sampler.set_epoch(epoch - 1)
        stats, step = train_one_epoch(fm.net, fm.train_loader, fm.optimizer, fm.scheduler, fm.ema, s1,
                                      env, fm.amp_dtype, step, desc=f"fold {fold} epoch {epoch}/{s1.epochs}",
                                      spec=spec)
        started = time.perf_counter()
        val = gather_predictions(env, predict(fm.eval_model, valid_loader, env, fm.amp_dtype, spec))
        val_mae = mae(targets[val["rows"]], val["main"])
        selection = (gather_predictions(env, predict(fm.eval_model, select_loader, env, fm.amp_dtype, spec))
                     if select_loader is not None else None)
        select_mae = choice.offer(epoch, fm.eval_model, selection, targets)
        record = {"fold": fold, "epoch": epoch, **stats, "val_mae": val_mae, "select_mae": select_mae,
                  "val_seconds": time.perf_counter() - started, **_peak_memory(env),
                  **{f"lr_{g['name']}": g["lr"] for g in fm.optimizer.param_groups}, "step": step}
        history.append(record)
        shown = f"val MAE {val_mae:.4f}" + (f" select MAE {select_mae:.4f}" if select_mae is not None else "")
        if env.is_main:
            append_metrics(run.path(f"{fold_dir_name(fold)}/metrics.jsonl"), record)
            run.log(f"fold {fold} epoch {epoch}: train loss {stats.get('train_loss', 0):.4f} {shown}")
        _say(env, f"  fold {fold} epoch {epoch}/{s1.epochs}: train loss {stats.get('train_loss', 0):.4f} "
                  f"MAE {stats['train_mae']:.4f} | {shown} | {stats['train_rows_per_s']:.0f} rows/s")
        if epoch < s1.epochs:  # a kill from here on loses at most the next epoch
            randoms = gather(env, random_state(fm.train_loader))  # every rank's generators
            if env.is_main:
                save_epoch_state(run.path(f"{fold_dir_name(fold)}/{RESUME_FILE}"), run.signature,
                                 EpochState(epoch=epoch, step=step, history=history, choice=choice.as_dict()),
                                 fm, randoms, env.world)
    return history, choice.restore(fm.eval_model)


def _peak_memory(env: DistEnv) -> dict[str, float]:
    """The GPU's peak allocated memory so far (GiB), for the epoch's metrics; nothing on CPU."""
    if env.device.type != "cuda":
        return {}
    return {"peak_memory_gib": torch.cuda.max_memory_allocated(env.device) / 2**30}


def predict_rows(inputs: FoldInputs, fm: FoldModel, split: str, rows: np.ndarray | None
                 ) -> dict[str, np.ndarray]:
    """The kept weights' predictions of `rows` of `split` (None: all), flip TTA when asked."""
    s1, env = inputs.cfg.stage1, inputs.env
    pred = predict_with_tta(fm.eval_model, lambda flip_p: inputs.loader(split, rows, flip_p), env,
                            fm.amp_dtype, inputs.cfg.dataset, tta=s1.tta_flip,
                            desc=f"predict {split}", progress=s1.progress)
    return gather_predictions(env, pred)


def gather_predictions(env: DistEnv, pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All ranks' predictions, one per row (first seen kept), sorted by row position."""
    parts = gather(env, pred)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(merged["rows"], return_index=True)  # sorted unique rows
    return {k: v[first] for k, v in merged.items()}


def write_fold(run: Run, fold: int, cfg: Config, data: Stage1Data, val: dict[str, np.ndarray],
               test: dict[str, np.ndarray], train_ids: np.ndarray, history: list[dict],
               kept_epoch: int) -> None:
    """fold<k>/: oof + test predictions (sorted by ID), embeddings, train IDs, curve."""
    spec = cfg.dataset
    prefix = fold_dir_name(fold)
    for (name, emb_name), pred, table in (((OOF_FILE, OOF_EMB_FILE), val, data.train),
                                          ((TEST_FILE, TEST_EMB_FILE), test, data.test)):
        ids = table[spec.id_column].to_numpy(str)[pred["rows"]]
        order = np.argsort(ids, kind="stable")
        frame = prediction_frame(ids[order], pred["main"][order], pred["aux"][order], spec,
                                 fold=fold if name == OOF_FILE else None)
        run.write_parquet(f"{prefix}/{name}", frame)
        run.write_npy(f"{prefix}/{emb_name}", pred["emb"][order].astype(np.float32))
    run.write_npy(f"{prefix}/{TRAIN_IDS_FILE}", np.sort(train_ids))
    plot_learning_curve(run.path(f"{prefix}/learning_curve.png"), history,
                        f"{cfg.experiment} stage1/{cfg.stage1.name} fold {fold}", kept_epoch)


def assemble_run(cfg: Config, data: Stage1Data, folds: list[int], run: Run) -> None:
    """OOF_FILE + OOF_EMB_FILE (sorted by ID), TEST_FILE (mean over folds), meta scores."""
    spec = cfg.dataset
    oof = pd.concat([pd.read_parquet(run.path(f"{fold_dir_name(k)}/{OOF_FILE}")) for k in folds],
                    ignore_index=True)
    emb = np.concatenate([np.load(run.path(f"{fold_dir_name(k)}/{OOF_EMB_FILE}")) for k in folds])
    order = np.argsort(oof[spec.id_column].to_numpy(str), kind="stable")
    oof, emb = oof.iloc[order].reset_index(drop=True), emb[order]
    if oof[spec.id_column].duplicated().any():
        raise RuntimeError("stage1: an ID appears in two folds' OOF predictions")
    run.write_parquet(OOF_FILE, oof)
    run.write_npy(OOF_EMB_FILE, emb)

    tests = [pd.read_parquet(run.path(f"{fold_dir_name(k)}/{TEST_FILE}")) for k in folds]
    value_cols = [c for c in tests[0].columns if c != spec.id_column]
    test = tests[0][[spec.id_column]].copy()
    test[value_cols] = np.mean([t[value_cols].to_numpy() for t in tests], axis=0)
    run.write_parquet(TEST_FILE, test)

    truth = data.train.set_index(spec.id_column).loc[oof[spec.id_column], spec.target_columns]
    scores = mae_report(truth.to_numpy(), oof[spec.target_columns].to_numpy(), spec)
    scores["per_fold"] = {
        f"fold{k}": mae(truth.to_numpy()[(oof["fold"] == k).to_numpy()],
                        oof.loc[oof["fold"] == k, spec.target_columns].to_numpy())
        for k in folds
    }
    scores["folds"] = folds
    run.finish(scores=scores)


# ----------------------------------------------------------------------------- folds at once


def fold_workers(cfg: Config, env: DistEnv, n_folds: int) -> int:
    """How many of `n_folds` folds train at once (`stage1.fold_workers`); 1 on GPU and under DDP."""
    asked = cfg.stage1.fold_workers
    one_device = env.distributed or env.device.type == "cuda"
    if asked == "auto":
        asked = 1 if one_device else cfg.stage1.threads or _cpu_count()
    elif asked > 1 and one_device:
        raise ConfigError(f"stage1.fold_workers={asked} trains folds in CPU processes; on "
                          f"{env.device.type} x{env.world} use stage1.fold_workers=auto or 1")
    return max(1, min(asked, n_folds))


def fold_failure(failures: dict[int, BaseException], finished: list[int], not_started: list[int]
                 ) -> BaseException:
    """The first failed fold's own error (its type kept, so callers' excepts still hold), with a
    note naming each failed fold and its cause, the folds kept and those not started."""
    first = min(failures)
    causes = "; ".join(f"fold {k} failed: {type(e).__name__}: {one_line(e)}"
                       for k, e in sorted(failures.items()) if k != first)
    kept = f"folds {sorted(finished)} finished and are kept" if finished else "no fold finished"
    skipped = f", folds {sorted(not_started)} not started" if not_started else ""
    error = failures[first]
    error.add_note(f"stage1 fold {first} failed{'; ' + causes if causes else ''} "
                   f"({kept}{skipped}; a rerun trains only the folds not finished)")
    return error


def fit_folds_in_workers(cfg: Config, folds: list[int], run: Run, workers: int) -> None:
    """Train `folds`, `workers` at a time, each in a spawned process with `threads // workers`
    torch threads. Each worker writes its fold's files as `fit_fold` always does; their log lines
    reach this process's console and log.txt whole, above one bar of folds finished. After a
    failure no further fold starts; the running ones finish, then the failure is raised with a
    note naming the fold (`fold_failure`)."""
    threads = max(1, (cfg.stage1.threads or _cpu_count()) // workers)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and locks
    records = context.Queue()
    logger.info(f"stage1: {len(folds)} folds, {workers} at a time, {threads} torch threads each")
    bar = tqdm(total=len(folds), desc="stage1 folds", unit="fold", disable=None if cfg.stage1.progress else True)
    failures: dict[int, BaseException] = {}
    finished: list[int] = []
    waiting = list(folds)
    with relay_records(records, around=tqdm.external_write_mode), bar, ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_fold_worker, initargs=(threads, records, os.getpid())) as pool:
        running: dict[Future, int] = {}
        while running or (waiting and not failures):
            while waiting and not failures and len(running) < workers:
                fold = waiting.pop(0)
                running[pool.submit(_fit_fold_in_worker, cfg, fold, run)] = fold
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                fold = running.pop(future)
                try:
                    future.result()
                    finished.append(fold)
                except Exception as err:  # also a worker that died (BrokenProcessPool)
                    failures[fold] = err
                bar.update(1)
    if failures:
        raise fold_failure(failures, finished, waiting)


_WORKER_DATA: dict[str, Stage1Data] = {}  # one load per worker process, reused by its next folds


def _start_fold_worker(threads: int, records: Any, parent: int) -> None:
    torch.set_num_threads(threads)
    send_records_to(records)
    exit_when_parent_dies(parent)


def exit_when_parent_dies(parent: int, interval_s: float = 1.0) -> threading.Thread:
    """Watch, from a daemon thread, that this process's parent is still `parent`, and exit the
    process when it is not: a fold worker whose `trajstack stage1` was killed (SIGTERM, a
    scheduler) would otherwise train on, orphaned, taking the cores for the rest of its fold."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)  # files are written atomically: no half file; a rerun trains the fold again

    watcher = threading.Thread(target=watch, name="exit-when-parent-dies", daemon=True)
    watcher.start()
    return watcher


def _fit_fold_in_worker(cfg: Config, fold: int, run: Run) -> None:
    cfg = cfg.model_copy(deep=True)
    cfg.stage1.progress = False  # the parent draws the one bar; per-batch bars would interleave
    env = setup(cfg.stage1.device)
    if "data" not in _WORKER_DATA:
        _WORKER_DATA["data"] = load_data(cfg, env)  # folds and caches exist: opened, not rebuilt
    fit_fold(cfg, _WORKER_DATA["data"], fold, run, env)


# ----------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _say(env: DistEnv, message: str) -> None:
    if env.is_main:  # the console handler is rank 0's only too; this also keeps other ranks' files clean
        logger.info(message)


if __name__ == "__main__":  # torchrun's entry (`-m stage1_nn.train`): through the CLI's error boundary
    from trajstack.cli import main as cli_main

    sys.exit(cli_main(["stage1", *sys.argv[1:]]))
