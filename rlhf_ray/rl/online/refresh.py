"""The RM trainer group inside the RLOO job and one refresh of it (issue 27): a step's samples ->
label requests -> labels -> the refresh's rows (fresh, replayed, original) -> a warm-started update
on the data-parallel trainers (train-rm's, with its losses) -> the new version saved, for the
scorers to load."""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.cluster import ActorGroupError
from rlhf_ray.config import Config
from rlhf_ray.data.loaders import labelling_gold, load_split
from rlhf_ray.data.schema import Ranking
from rlhf_ray.rl.online.labellers import GoldLabeller, LabelBudget, QueueLabeller
from rlhf_ray.rl.online.replay import ReplayBuffer, for_training, training_mix
from rlhf_ray.rl.online.requests import PromptGroup, select
from rlhf_ray.rl.phases import Generated, Scores
from rlhf_ray.utils import storage
from rlhf_ray.utils.seeds import derive_seed


@dataclass(frozen=True)
class Refresh:
    """One refresh: the version it made and where that is saved, the comparisons it spent and the
    run's total so far, the labeller's note (fewer answers than asked), the rows it trained on, the
    trainers' metrics of its last optimizer step (empty: no step), its seconds, why it made no
    version, if it did not, and its seconds by part."""

    version: int
    model_dir: str
    spent: int
    spent_total: int
    note: str
    rows: int
    train: dict
    seconds: float
    skipped: str = ""  # why no version was made (an RM trainer died: the group was restarted)
    parts: dict | None = None  # seconds of each part: rm_label_s, rm_train_s (training and saving)
    # the new version's weights in the object store (one ref per bucket), for the scorers
    weights: list | None = None


def _alive(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name)
        return True
    except ValueError:
        return False


def _jsonable(rng_state: tuple) -> list:
    version, internal, gauss = rng_state
    return [version, list(internal), gauss]


def prompt_groups(batch: list[dict], generated: list[Generated], scores: list[Scores],
                  shard_index: list[list[int]]) -> list[PromptGroup]:
    """The step's samples per prompt (in batch order), with each reward model's scores of them."""
    groups: dict[int, PromptGroup] = {}
    for texts, scored, index in zip(generated, scores, shard_index):
        k = len(texts.texts) // max(len(index), 1)
        for n, i in enumerate(index):
            members = tuple(tuple(m[n * k:(n + 1) * k]) for m in scored.members)
            groups[i] = PromptGroup(batch[i], tuple(texts.texts[n * k:(n + 1) * k]), members)
    return [groups[i] for i in sorted(groups)]


def gold_by_group(scores: list[Scores], shard_index: list[list[int]], version: str) -> list[list[float]]:
    """Each prompt's samples' gold (`v1` or `v2`), as the scorers computed it, in the order of
    `prompt_groups`."""
    by_prompt: dict[int, list[float]] = {}
    for scored, index in zip(scores, shard_index):
        values = scored.gold if version == "v1" else scored.gold_v2
        k = len(values) // max(len(index), 1)
        for n, i in enumerate(index):
            by_prompt[i] = list(values[n * k:(n + 1) * k])
    return [by_prompt[i] for i in sorted(by_prompt)]


def gold_taus(groups: list[PromptGroup], gold: list[list[float]]) -> list[float]:
    """Per prompt, Kendall's tau between the (first) reward model's scores of its samples and the
    gold's (NaN where the gold or the scores all tie)."""
    from scipy.stats import kendalltau

    return [float(kendalltau(g.scores[0], truth).statistic) for g, truth in zip(groups, gold)]


def gold_tau(groups: list[PromptGroup], gold: list[list[float]]) -> float:
    """The mean of `gold_taus` over the prompts where it is defined (NaN when none is)."""
    import math

    taus = [t for t in gold_taus(groups, gold) if not math.isnan(t)]
    return sum(taus) / len(taus) if taus else math.nan


def trainer_config(cfg: Config, warm_start: str) -> Config:
    """The RM trainers' config in the RL job: train-rm's sections, warm-started from `warm_start`
    (the reward model being served), at a constant learning rate (a refresh is not a run with an
    end)."""
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"name": warm_start}),
        "rm": cfg.rm.model_copy(update={"schedule": "constant", "warmup_ratio": 0.0})})


def labeller_of(cfg: Config, setup=None):
    """`online_rm.labeller`'s labeller: the gold, the queue under the run folder, or the judge's
    actors."""
    oc = cfg.online_rm
    if oc.labeller == "gold":
        return GoldLabeller(labelling_gold(oc.gold))
    if oc.labeller == "queue":
        return QueueLabeller(Path(cfg.output_dir) / "labels", oc.queue_timeout_s)
    from rlhf_ray.rl.online.judge import JudgeLabeller

    return JudgeLabeller(oc.judge, setup)


class OnlineRewardTraining:
    def __init__(self, cfg: Config, setup, stored: str, placement=None):
        """`stored`: the run's storage folder, where each version is saved (a resumed run's scorers
        read it; otherwise the weights reach them through the object store). `placement`: the
        scorers' placement group, whose bundle i trainer i shares (online_rm.colocate_with_scorers);
        None: the trainers' own."""
        oc = self.oc = cfg.online_rm
        self.cfg, self.stored, self.setup = trainer_config(cfg, cfg.reward.models[0]), stored, setup
        self.placement_group = placement
        self.trainers = self._start_trainers(self.cfg)
        self.labeller = labeller_of(cfg, setup)
        self.budget = LabelBudget(oc.budget_total, oc.budget_per_refresh)
        self.replay = ReplayBuffer(oc.replay_capacity)
        self.original: list[Ranking] = load_split(self.cfg, "train") or []
        self.rng = random.Random(derive_seed(cfg.seed, "online_rm"))
        self.version, self.model_dir = 0, cfg.reward.models[0]

    def _start_trainers(self, cfg: Config):
        from rlhf_ray.rl.online.trainer_actor import OnlineRMTrainerActor
        from rlhf_ray.rm.actor import RMTrainerGroup

        return RMTrainerGroup(cfg, total_steps=1 << 30, tag="online", setup=self.setup,
                              shared_placement=self.placement_group, actor_cls=OnlineRMTrainerActor)

    def _restart_trainers(self) -> None:
        """A new group, warm-started from the version being served (the optimizer's moments start
        afresh), once the old group's actors are gone (their names are reused)."""
        names = self.trainers.group.names
        self.trainers.shutdown()
        deadline = time.monotonic() + 60
        while any(_alive(name) for name in names) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.trainers = self._start_trainers(trainer_config(self.cfg, self.model_dir))

    def _train(self, rows: list[Ranking]) -> dict:
        """`passes` passes over `rows`; the metrics of the last optimizer step (empty: none)."""
        size, metrics = self.cfg.rm.batch_size, {}
        for _ in range(self.oc.passes):  # whole batches only: every rank gets its share of each
            for b in range(len(rows) // size):
                metrics = self.trainers.train_step(rows[b * size:(b + 1) * size])
        return metrics

    def _publish(self) -> list | None:
        """The version's weights to the object store bucket by bucket (online_rm.sync object_store:
        put while the run goes on; the trainers' `Sender.publish`, every rank gathering), or None
        if a trainer died after the save (the scorers then read the saved version) or another
        transport delivers them (`deliver`)."""
        if self.oc.sync != "object_store":
            return None
        group = self.trainers.group
        try:
            published = group.call("send_weights", [("publish",)] * len(group),
                                   self.cfg.rm.sync_timeout_s)
        except ActorGroupError:
            return None
        return published[0]["refs"]

    def refresh(self, step: int, groups: list[PromptGroup], tag: str | None = None) -> Refresh:
        """Ask about `groups` (a step's), train on the answers, save the next version (`tag`: the
        requests' id prefix, `step<step>` unless given)."""
        start, oc = time.monotonic(), self.oc
        requests = select(groups, oc.selection, self.budget.allowance(), self.rng,
                          tag or f"step{step}")
        labels = self.labeller.label(requests, refresh=step)
        labelled = time.monotonic()
        self.budget.charge(labels.spent)
        fresh = [for_training(r, oc.selection) for r in labels.rankings]
        rows = training_mix(fresh, self.replay, self.original, oc.original_share, self.rng,
                            oc.max_rows)
        self.replay.add(fresh, step)  # before training: a refresh that fails keeps its labels
        weights = None
        try:
            metrics, skipped = self._train(rows), ""
            self.model_dir = self.trainers.save(storage.join(self.stored, "reward_models",
                                                             f"v{self.version + 1}"))
            self.version += 1
            weights = self._publish()
        except ActorGroupError as err:
            skipped = (f"refresh skipped: {err}; the RM trainers were restarted from version "
                       f"{self.version}, and this refresh's {len(fresh)} labels are kept for the next")
            metrics = {}
            self._restart_trainers()
        note = "; ".join(x for x in (labels.note, skipped) if x)
        parts = {"rm_label_s": labelled - start, "rm_train_s": time.monotonic() - labelled}
        return Refresh(self.version, self.model_dir, labels.spent, self.budget.spent, note,
                       len(rows), metrics, time.monotonic() - start, skipped, parts, weights)

    def deliver(self, rl, done: Refresh) -> str:
        """Every scorer (`rl.scorer`) loads `done`'s version, between two steps; returns how:
        `online_rm.sync`'s transport, the object store's refs the refresh published, or the saved
        version in storage (a trainer died after the save, or the transport failed: said)."""
        if self.oc.sync != "object_store":
            from rlhf_ray.rl.sync import transport_class

            transport = transport_class(self.oc.sync)(self.trainers.group, rl.scorer,
                                                      self.cfg.rm.sync_timeout_s)
            try:
                transport.connect()  # afresh each time: either side may have restarted since
                transport.deliver(done.version)
                rl.serve_reward_model(done.model_dir, done.version)
                return self.oc.sync
            except (ActorGroupError, TimeoutError, RuntimeError) as err:
                print(f"[rloo] reward-model version {done.version} over online_rm.sync={self.oc.sync} "
                      f"failed ({err}); the scorers read it from storage", file=sys.stderr, flush=True)
        rl.load_reward_model(done.model_dir, done.version, done.weights)
        return "storage" if done.weights is None else "object_store"

    # the checkpoint's part: the trainers' DeepSpeed state (`save_state` into `engine/online_rm/`
    # of the step's folder) and the rest as JSON in its state.json
    ENGINE = "online_rm"

    def save_state(self, engine_folder: str) -> tuple[dict, list[list[str]]]:
        """(the JSON state, every rank's files relative to `engine_folder`). An RM trainer that died
        since the last refresh: the group is restarted from the served version first (as a skipped
        refresh does), so the checkpoint holds a group that can go on."""
        folder = storage.join(engine_folder, self.ENGINE)
        try:
            files = self.trainers.save_state(folder)
        except ActorGroupError as err:
            print(f"[rloo] {err.actor or 'an RM trainer'} died before the checkpoint; the RM trainers "
                  f"were restarted from version {self.version}", file=sys.stderr, flush=True)
            self._restart_trainers()
            files = self.trainers.save_state(folder)
        state = {"version": self.version, "model_dir": self.model_dir,
                 "budget": {"spent": self.budget.spent, "refreshes": self.budget.refreshes},
                 "replay": self.replay.state(), "rng": _jsonable(self.rng.getstate())}
        return state, [[f"{self.ENGINE}/{f}" for f in rank] for rank in files]

    def load_state(self, engine_folder: str, state: dict, step: int) -> None:
        self.trainers.load_state(storage.join(engine_folder, self.ENGINE), step)
        self.version, self.model_dir = state["version"], state["model_dir"]
        self.budget.spent, self.budget.refreshes = state["budget"]["spent"], list(state["budget"]["refreshes"])
        self.replay = ReplayBuffer.from_state(state["replay"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def placement(self) -> dict[str, str]:
        return {**self.trainers.group.placement(), **self.labeller.placement()}

    def shutdown(self) -> None:
        self.trainers.shutdown()
        self.labeller.shutdown()
