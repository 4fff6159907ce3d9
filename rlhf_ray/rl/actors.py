"""The three RL actor groups and the phases of a step, as the driver calls them. Each phase returns
Ray object refs where the data is large (rollouts, scores, weights) and waits with a timeout that
names the actor; the driver never copies a batch."""
from __future__ import annotations

from dataclasses import asdict, replace

from rlhf_ray.actor_group import ActorGroup
from rlhf_ray.cluster import ActorSetup
from rlhf_ray.config import Config
from rlhf_ray.config.rl import PolicySync
from rlhf_ray.rl.engines.base import Sampling
from rlhf_ray.rl.phases import PendingGeneration, Generation, Scores, generated_of
from rlhf_ray.rl.learner import LearnerSpec, RLOOLearnerActor
from rlhf_ray.rl.rollout import EngineSpec, RolloutActor
from rlhf_ray.rl.rank_shares import shard_positions, split_for_ranks
from rlhf_ray.rl.scorer import RLScorerActor
from rlhf_ray.rl.sync import Colocated, Delivery, transport_class
from rlhf_ray.utils.seeds import derive_seed


def rollout_workers(cfg: Config, shared_placement=None, setup: ActorSetup | None = None) -> ActorGroup:
    """The rollout workers of the `rollout` section, each with an engine holding the policy."""
    return ActorGroup(RolloutActor, "rollout", cfg.rollout, EngineSpec.of(cfg),
                      PolicySync.of(cfg.policy.lora, cfg.rollout).transport,
                      shared_placement=shared_placement, setup=setup)


def split_task(rollouts, scores: Scores | None, first_group: int, world_size: int) -> list:
    """The Ray task around `split_for_ranks` (a worker's output and, if scored, its `Scores`)."""
    return split_for_ranks(rollouts, scores.train if scores is not None else None, first_group,
                           world_size)


def colocated_bundles(cfg: Config) -> list[dict[str, float]]:
    """One bundle per (learner rank i, rollout worker i) (`paired_bundles`)."""
    return paired_bundles(cfg.learner, cfg.rollout, cfg.learner.num_workers)


def paired_bundles(first, second, count: int) -> list[dict[str, float]]:
    """`count` bundles of one actor of each of two groups (`first`, `second`: their sections), their
    CPUs, GPUs and custom resources added up, so Ray puts each pair on one node and, with num_gpus
    0.5 each, on one GPU."""
    from rlhf_ray.placement import bundle_of

    a, b = bundle_of(first), bundle_of(second)
    return [{k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}] * count


def shards_by_load(prompt_tokens: list[int], workers: int) -> list[list[int]]:
    """Prompt indices per worker, each prompt (and so its k samples) on one worker: longest first,
    each to the worker with the fewest prompt tokens so far (ties: the lowest index), each shard in
    prompt order."""
    shards, load = [[] for _ in range(workers)], [0] * workers

    def longest_first(i: int) -> tuple:
        return -prompt_tokens[i], i

    def least_loaded(w: int) -> tuple:
        return load[w], w

    for i in sorted(range(len(prompt_tokens)), key=longest_first):
        w = min(range(workers), key=least_loaded)
        shards[w].append(i)
        load[w] += prompt_tokens[i]
    return [sorted(s) for s in shards]


class RLActors:
    def __init__(self, cfg: Config, total_steps: int, setup: ActorSetup | None = None):
        """`setup`: how the run's actors start (`cluster.connect`)."""
        import ray

        from rlhf_ray.placement import reserve_bundles

        self.cfg = cfg
        rc = cfg.rollout
        self.shared = (reserve_bundles("learner", colocated_bundles(cfg),
                                       cfg.learner.placement_strategy,
                                       cfg.learner.placement_timeout_s) if rc.colocate_with_learner else None)
        self.rollout = rollout_workers(cfg, self.shared, setup)
        if self.shared is not None:
            # colocated: the engines take their memory (vLLM checks the GPU's free memory as it
            # starts) and sleep before the learner rank loads beside them; they wake with the
            # learner's weights below
            self.rollout.call("sleep", timeout_s=rc.timeout_s)
        # with online_rm.colocate_with_scorers, bundle i holds scorer i and RM trainer i (the RM
        # trainers start in `OnlineRewardTraining`, into `scorer_placement`)
        oc = cfg.online_rm
        self.scorer_placement = (reserve_bundles("scorer", paired_bundles(cfg.scorer, cfg.rm,
                                                                          cfg.scorer.num_workers),
                                                 cfg.scorer.placement_strategy,
                                                 cfg.scorer.placement_timeout_s)
                                 if oc.enabled and oc.colocate_with_scorers else None)
        self.scorer = ActorGroup(RLScorerActor, "scorer", cfg.scorer, cfg.reward, cfg.scorer.device,
                                 oc.sync, shared_placement=self.scorer_placement, setup=setup)
        self.setup, self.total_steps = setup, total_steps
        self.learner_spec = LearnerSpec.of(cfg)
        self.learner = self._start_learner()
        # cuts a worker's output into the ranks' shares
        self.split = ray.remote(num_cpus=0)(split_task)
        # what the driver reads of the samples
        self.read_generated = ray.remote(num_cpus=0)(generated_of)
        self.delivery = self._connect_delivery()
        # (folder, version, weights' bucket refs) of the reward model the scorers serve, once
        # online reward training made one (None: reward.models, version 0)
        self.reward_model: tuple[str, int, object] | None = None
        if self.shared is not None:
            self.sync(0)  # the initial weights again: a sleeping engine (level 2) dropped its own

    def _start_learner(self) -> ActorGroup:
        # learner.max_restarts counts the driver's restarts (rl/loop.py), never Ray's
        learner = ActorGroup(RLOOLearnerActor, "learner",
                             self.cfg.learner.model_copy(update={"max_restarts": 0}),
                             shared_placement=self.shared, setup=self.setup)
        learner.setup_data_parallel(self.learner_spec, self.total_steps,
                                    self.cfg.learner.timeout_s)
        return learner

    def _connect_delivery(self):
        """The learner's weight transport to the rollout workers, connected."""
        cfg, rc = self.cfg, self.cfg.rollout
        transport = transport_class(self.learner_spec.sync.transport)(self.learner, self.rollout,
                                                                      rc.sync_timeout_s)
        delivery = transport if self.shared is None else Colocated(
            transport, cfg.learner.offload_states_while_generating, rc.timeout_s,
            cfg.learner.timeout_s)
        delivery.connect()
        return delivery

    @property
    def restarts_learner_alone(self) -> bool:
        """Whether a dead learner rank can be replaced with the other groups running: not when
        colocated (the engines sleep and wake around the learner ranks sharing their bundles; the
        run restarts whole)."""
        return self.shared is None

    def restart_learner(self) -> None:
        """A learner rank died (its process group and optimizer state with it): the whole learner
        group anew, its transport to the rollout workers connected again; the rollout workers,
        scorers and their engines keep running. `load_state` then gives it a checkpoint."""
        self.learner.shutdown()
        self.learner = self._start_learner()
        self.delivery = self._connect_delivery()

    def _sampling(self, seed: int) -> Sampling:
        rc = self.cfg.rollout
        return Sampling(rc.max_new_tokens, rc.temperature, rc.top_p, seed=seed)

    def start_generation(self, prompt_ids: list[list[int]], sampling: Sampling,
                         k: int | None = None) -> PendingGeneration:
        """Prompts split over the rollout workers, k samples each (rollout.k unless given),
        generating with the weights they hold now while the caller goes on (overlap);
        `finish_generation` waits for them."""
        n, k = len(self.rollout), k or self.cfg.rollout.k
        shard_index = [i for i in shards_by_load([len(p) for p in prompt_ids], n) if i]
        version = self.delivery.version
        args = {w: ([prompt_ids[i] for i in idx], k, replace(sampling, positions=idx), version)
                for w, idx in enumerate(shard_index)}
        return PendingGeneration(self.rollout.submit("generate", args), shard_index, version)

    def finish_generation(self, generating: PendingGeneration) -> Generation:
        """One Rollouts ref per worker that got prompts. A worker that Ray restarted gets the
        current weights and its share again."""
        refs = self.rollout.collect(generating.submitted, self.cfg.rollout.timeout_s,
                                    on_restart=self._replay)
        refs = [refs[w] for w in range(len(generating.shard_index))]
        return Generation(refs, generating.shard_index, generating.weights_version,
                          [self.read_generated.remote(ref) for ref in refs])

    def _generate(self, prompt_ids: list[list[int]], sampling: Sampling, k: int) -> Generation:
        return self.finish_generation(self.start_generation(prompt_ids, sampling, k))

    def _replay(self, worker: int, args: tuple) -> tuple:
        """A restarted rollout worker: the current weights (`Transport.replay`), then its generate
        call again, expecting those weights."""
        self.delivery.replay(worker)
        return (*args[:-1], self.delivery.version)

    def score(self, generation: Generation, prompts: list[dict],
              baselines: dict[str, list[float]] | None = None) -> list:
        """Each rollout worker's output goes to a scorer (round robin); refs of small `Scores`, one
        per ref of `generation`. `baselines`: LSC / PAR's reference rewards by prompt id. A scorer's
        only state is the reward model it serves, so one that Ray restarted loads the current one
        (online reward training's) and scores again."""
        n, refs = len(self.scorer), []
        version = self.reward_model[1] if self.reward_model else 0

        def shard(j: int) -> tuple:
            mine = [prompts[i] for i in generation.shard_index[j]]
            ours = None if baselines is None else [baselines[p["prompt_id"]] for p in mine]
            return generation.refs[j], mine, ours, version

        for start in range(0, len(generation.refs), n):  # one call per scorer at a time
            batch = {j - start: shard(j) for j in range(start, min(start + n, len(generation.refs)))}
            done = self.scorer.map("score", batch, self.cfg.scorer.timeout_s,
                                   on_restart=self._reload_scorer)
            refs += [done[j] for j in range(len(batch))]
        return refs

    def _reload_scorer(self, index: int, args: tuple) -> None:
        """A restarted scorer: the reward model the others score with, loaded before its retried
        call (an actor runs one caller's calls in order)."""
        if self.reward_model is not None:
            model_dir, version, weights = self.reward_model
            if weights is not None:
                self.scorer.actors[index].receive_weights.remote("load", version, *weights)
            else:
                self.scorer.actors[index].load_reward_model.remote(model_dir, version)

    def generate(self, prompt_ids: list[list[int]], step: int,
                 stream: str = "generate") -> PendingGeneration:
        """Step `step`'s samples, started: the workers generate while the driver goes on (their
        sampling seeded by `stream`, a `derive_seed` stream, and `step`)."""
        return self.start_generation(prompt_ids,
                                     self._sampling(derive_seed(self.cfg.seed, stream, step)))

    def evaluate(self, prompt_ids: list[list[int]], prompts: list[dict], k: int,
                 baselines: dict[str, list[float]] | None = None) -> list[dict]:
        """Generate k samples of each held-out prompt with the current weights and score them
        (no learning). Per worker,
        one record of its share (what `policy_eval` reads, and what a kept policy's held_out.json
        holds): its `Generated` and `Scores` fields, its prompts' indices and its samples' sequence
        KLs."""
        import ray

        generation = self._generate(prompt_ids,
                                    self._sampling(derive_seed(self.cfg.seed, "evaluate")), k)
        scores = ray.get(self.score(generation, prompts, baselines))
        kl = self._sequence_kl(generation, k)
        parts, at = [], 0
        for generated, scored, idx in zip(ray.get(generation.generated), scores,
                                          generation.shard_index):
            n = len(idx) * k  # each worker's share: its samples' KLs in order
            parts.append({**asdict(generated), **asdict(scored), "prompt_index": idx,
                          "kl": kl[at : at + n]})
            at += n
        return parts

    def _rank_shares(self, generation: Generation, score_refs: list | None = None) -> list[list]:
        """Per learner rank, refs of its share of the batch (`rank_shares`): its prompt groups of
        each worker's samples, then of their training rewards. A task next to each worker's output
        cuts it, so a rank pulls 1/ranks of the batch. One rank: the workers' outputs as they
        are."""
        n = len(self.learner)
        if n == 1:
            return [[*generation.refs, *(score_refs or [])]]
        samples, rewards = [[] for _ in range(n)], [[] for _ in range(n)]
        first_group, per_rank = 0, 2 if score_refs is not None else 1
        for j, ref in enumerate(generation.refs):
            scores = score_refs[j] if score_refs is not None else None
            parts = self.split.options(num_returns=n * per_rank).remote(ref, scores, first_group, n)
            for r in range(n):
                samples[r].append(parts[r * per_rank])
                if scores is not None:
                    rewards[r].append(parts[r * per_rank + 1])
            first_group += len(generation.shard_index[j])
        return [[*samples[r], *rewards[r]] for r in range(n)]

    def _sequence_kl(self, generation: Generation, k: int) -> list[float]:
        """The evaluated policy's own KL to the reference, per sample of `generation` (k per prompt,
        in the order of its refs): every learner rank computes its prompt groups'
        (`RLOOLearner.sequence_kl`)."""
        n = len(self.learner)
        shares = self._rank_shares(generation)
        refs = [a.sequence_kl.remote(*shares[r]) for r, a in enumerate(self.learner.actors)]
        total = sum(len(idx) for idx in generation.shard_index) * k
        out = {}
        for r, kls in enumerate(self.learner.wait(refs, "sequence_kl", self.cfg.learner.timeout_s)):
            out.update(zip(shard_positions(total, k, r, n), kls))
        return [out[i] for i in range(total)]

    def learn(self, generation: Generation, score_refs: list) -> list[dict]:
        """One update on every learner rank, each on its share of the batch (`_rank_shares`; Ray
        resolves only top-level ObjectRef arguments, so a rank's refs go as one flat argument
        list)."""
        shares = self._rank_shares(generation, score_refs)
        # colocated: the engines free the GPU for the learner's update
        self.delivery.before_update()
        refs = [a.update.remote(*shares[r]) for r, a in enumerate(self.learner.actors)]
        return self.learner.wait(refs, "update", self.cfg.learner.timeout_s)

    def sync(self, version: int) -> Delivery:
        """The learner's weights to every rollout worker, by the run's transport (`rl/sync/`); the
        workers load them after the generations queued before it."""
        return self.delivery.deliver(version)

    def reference_rewards(self, prompt_ids: list[list[int]], prompts: list[dict]) -> dict[str, list[float]]:
        """For LSC / PAR: rewards of the initial policy's responses, by prompt id (the driver holds
        them and passes each scorer its prompts'). Generated in step-sized chunks, so memory stays
        what a training step needs."""
        from rlhf_ray.scoring.aggregate import aggregate

        rc, m, chunk = self.cfg.rollout, self.cfg.reward.reference_samples, self.cfg.rloo.prompts_per_step
        baselines: dict[str, list[float]] = {}
        for start in range(0, len(prompts), chunk):
            ids, recs = prompt_ids[start : start + chunk], prompts[start : start + chunk]
            sampling = Sampling(rc.max_new_tokens, rc.temperature, rc.top_p,
                                seed=derive_seed(self.cfg.seed, "reference", start))
            rollouts = self.rollout.call_one(0, "generate", ids, m, sampling,
                                             timeout_s=rc.timeout_s)
            texts = [p["prompt"] for p in recs for _ in range(rollouts.k)]
            members = self.scorer.call_one(0, "member_rewards", texts, rollouts.texts,
                                           timeout_s=self.cfg.scorer.timeout_s)
            proxy = aggregate(members, self.cfg.reward.aggregate,
                              self.cfg.reward.uwo_lambda).view(len(recs), -1)
            for p, row in zip(recs, proxy.tolist()):
                baselines[p["prompt_id"]] = row[:m]
        return baselines

    def load_reward_model(self, model_dir: str, version: int, weights=None) -> None:
        """Every scorer scores with the reward model version `version` from the next step on: its
        weights through the object store (`weights`, refs of its buckets the driver never fetches:
        loaded in place into the model each scorer holds, `Receiver.load`) or, without them, read
        from `model_dir` (a resume). A scorer Ray restarts later loads it before scoring again
        (`_reload_scorer`)."""
        method, args = (("receive_weights", ("load", version, *weights)) if weights is not None
                        else ("load_reward_model", (model_dir, version)))
        # a scorer Ray restarts during the load is given it again once back (`map` retries)
        self.scorer.map(method, dict.fromkeys(range(len(self.scorer)), args),
                        self.cfg.scorer.timeout_s)
        self.reward_model = (model_dir, version, weights)

    def serve_reward_model(self, model_dir: str, version: int) -> None:
        """Every scorer loaded version `version` by a transport (`online_rm.sync`); a scorer Ray
        restarts later reads it from `model_dir`."""
        self.reward_model = (model_dir, version, None)

    def set_beta(self, beta: float) -> None:
        self.learner.call("set_beta", [(beta,)] * len(self.learner), self.cfg.learner.timeout_s)

    def placement(self) -> dict[str, str]:
        return {**self.rollout.placement(), **self.scorer.placement(), **self.learner.placement()}

    def peak_rss_mb(self) -> dict[str, float]:
        """Each actor's peak resident memory so far (MiB), by actor name."""
        return {name: mb for group in (self.rollout, self.scorer, self.learner)
                for name, mb in zip(group.names, group.call("peak_rss_mb", timeout_s=60))}

    def save_state(self, path: str) -> list[list[str]]:
        """Every learner rank's files of the checkpoint, once in storage."""
        return self.learner.call("save_state", [(path,)] * len(self.learner),
                                 self.cfg.learner.timeout_s)

    def load_state(self, path: str, version: int) -> None:
        """The learner continues from a checkpoint; the rollout workers get its weights."""
        self.learner.call("load_state", [(path,)] * len(self.learner), self.cfg.learner.timeout_s)
        self.sync(version)

    def save_policy(self, path: str) -> None:
        self.learner.call("save", [(path,)] * len(self.learner), self.cfg.learner.timeout_s)

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actors in (self.rollout, self.scorer, self.learner):
            actors.shutdown()
        for shared in (self.shared, self.scorer_placement):
            if shared is not None:
                remove_placement_group(shared)
