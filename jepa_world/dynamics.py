"""The dynamics: an action-conditioned predictor over latents, with its input statistics, the
robot's action-to-state map and the KV-cached rollout the planner and the training loss share.

    dynamics = Dynamics(ACPredictor(cfg), DynamicsConfig(integrated_state_dims=(0, 1, 2)))
    z_next = dynamics.predict(z_hist, actions, states)   # teacher-forced, step t predicts t+1
    z_future = dynamics.rollout(z0, state0, actions)     # (S, H, N, D), KV-cached

Inputs. Callers pass actions and states in raw env units; they are standardised, (x - mean) / std
per dim, with statistics set by post-training from the training split, so that 5 cm displacements
and joint angles reach the predictor at unit scale. Empty statistics mean identity.

States during rollout. The robot state is not observed in imagination, so it is advanced by a rule:
``state_update="integrate"`` adds action dim i to state dim ``integrated_state_dims[i]`` (the
action-to-state map: displacement actions moving the end-effector part of the state, as in
V-JEPA 2-AC; collect.py records it in the dataset's meta/info.json), and ``"hold"`` keeps the
initial state. Predictors with ``state_dim == 0`` need no states at all.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from jepa_world.compile_cache import compile_keyed_to_isa
from jepa_world.frozen_compile import FrozenWeightsCompile
from jepa_world.models.ac_predictor import ACPredictor, layer_norm_tokens

STATE_UPDATES: tuple[str, ...] = ("integrate", "hold")
# Tokens per step and torch thread in one CPU rollout chunk: 1024 rows keep a 6 x 192 predictor's MLP activations
# (1024 x 768 floats) in a core's cache; 1.27x per rollout at 300 samples x 18 tokens against one chunk
# (docs/speed.md, "Rollout routes"), no change for models whose whole batch is smaller. Per thread: with
# the weights folded in, two threads ran 1024-token chunks 1.05x slower than 2048-token ones, one thread
# 1.09x faster than 5400-token ones ("fourteenth session").
CPU_CHUNK_TOKENS = 1024
# Rows x width of a chunk's products from which the compiled CPU rollout folds the weights into its graph
# (FrozenWeightsCompile: oneDNN's products, about 10% faster per FLOP on an AMD EPYC but about 10 us slower per
# call). The shipped 128-wide predictor: 0.79x at 64 rows, 1.02x at 256, 1.15x at 1024; issue #14's 192-wide one
# 1.07x at 36 rows, 1.16x at 1008 (docs/speed.md, "fourteenth session").
FOLD_WEIGHTS_MIN_ROWS_X_WIDTH = 256 * 128


@dataclass
class DynamicsConfig:
    state_update: str = "integrate"
    integrated_state_dims: tuple[int, ...] = ()  # state dim moved by action dim i; () -> state held
    rollout_chunk: int = 0  # run rollout samples in chunks of this size (0: automatic, see Dynamics.rollout_chunk_for)
    action_mean: tuple[float, ...] = ()
    action_std: tuple[float, ...] = ()
    state_mean: tuple[float, ...] = ()
    state_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.integrated_state_dims = tuple(int(v) for v in self.integrated_state_dims)
        for name in ("action_mean", "action_std", "state_mean", "state_std"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        for kind in ("action", "state"):
            mean, std = getattr(self, f"{kind}_mean"), getattr(self, f"{kind}_std")
            if len(mean) != len(std) or (std and min(std) <= 0):
                raise ValueError(f"world_model.{kind}_mean/{kind}_std must have equal lengths and std > 0, "
                                 f"got {mean}/{std}")
        if self.state_update not in STATE_UPDATES:
            raise ValueError(f"world_model.state_update={self.state_update!r}; expected one of {STATE_UPDATES}")
        if self.rollout_chunk < 0:
            raise ValueError(f"world_model.rollout_chunk must be >= 0, got {self.rollout_chunk}")


class Dynamics(nn.Module):
    """Predictor + input statistics + state rule + rollout. ``normalize_outputs``: the latent space's
    layer norm, applied to every prediction so that predicted and encoded latents share one space."""

    def __init__(self, predictor: ACPredictor, config: DynamicsConfig | None = None, normalize_outputs: bool = True):
        super().__init__()
        self.predictor = predictor
        self.config = config or DynamicsConfig()
        self.normalize_outputs = normalize_outputs
        self._compiled_rollout: Callable[..., Tensor] | None = None  # these two set by compile_rollout
        self._folded_rollout: FrozenWeightsCompile | None = None
        c, pc = self.config, predictor.config
        if c.integrated_state_dims and c.state_update == "integrate":
            if len(c.integrated_state_dims) > pc.action_dim:
                raise ValueError(
                    f"integrated_state_dims {c.integrated_state_dims} lists more dims than action_dim={pc.action_dim}"
                )
            if pc.state_dim == 0 or max(c.integrated_state_dims) >= pc.state_dim or min(c.integrated_state_dims) < 0:
                raise ValueError(
                    f"integrated_state_dims {c.integrated_state_dims} must index a state of dim {pc.state_dim}"
                )
        for kind, dim in (("action", pc.action_dim), ("state", pc.state_dim)):
            mean, std = getattr(c, f"{kind}_mean"), getattr(c, f"{kind}_std")
            if mean and len(mean) != dim:
                raise ValueError(f"{kind}_mean/{kind}_std have {len(mean)} values but the predictor's {kind}_dim is {dim}")
            self.register_buffer(f"{kind}_mean", torch.tensor(mean or [0.0] * dim), persistent=False)
            self.register_buffer(f"{kind}_std", torch.tensor(std or [1.0] * dim), persistent=False)

    @property
    def action_state_map(self) -> tuple[int, ...]:
        """State dim each action dim integrates into during rollout (() when states are held)."""
        return () if self.config.state_update == "hold" else self.config.integrated_state_dims

    def set_input_statistics(self, action_mean: Tensor, action_std: Tensor, state_mean: Tensor | None = None,
                             state_std: Tensor | None = None) -> None:
        """Record dataset statistics used to standardise predictor inputs (kept in config.json)."""
        updates = {"action_mean": action_mean, "action_std": action_std}
        if self.predictor.config.state_dim:
            updates.update(state_mean=state_mean, state_std=state_std)
        for name, value in updates.items():
            buffer = getattr(self, name)
            if value is None or value.shape != buffer.shape:
                raise ValueError(f"{name} must have shape {tuple(buffer.shape)}, got {None if value is None else tuple(value.shape)}")
            buffer.copy_(value)
            setattr(self.config, name, tuple(float(v) for v in value.tolist()))

    def standardize(self, actions: Tensor, states: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Raw env-unit actions/states -> the predictor's standardised inputs."""
        actions = (actions - self.action_mean) / self.action_std
        if states is not None and self.predictor.config.state_dim:
            states = (states - self.state_mean) / self.state_std
        return actions, states

    def _finish(self, z: Tensor) -> Tensor:
        return layer_norm_tokens(z) if self.normalize_outputs else z

    def predict(self, z_hist: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """Teacher-forced: (B,T,N,D), (B,T,A), (B,T,S) raw units -> (B,T,N,D); output t predicts frame t+1."""
        return self._finish(self.predictor(z_hist, *self.standardize(actions, states)))

    def next_states(self, states: Tensor, actions: Tensor) -> Tensor:
        """Advance (..., S) states by (..., A) actions with the configured rule (vectorised)."""
        dims = self.action_state_map
        if not dims:
            return states
        index = torch.tensor(dims, device=states.device)
        return states.index_add(-1, index, actions[..., : len(dims)].to(states.dtype))

    def _check_rollout(self, z0: Tensor, state0: Tensor | None, actions: Tensor, context_actions: Tensor | None):
        pc = self.predictor.config
        if z0.dim() == 3:
            z0 = z0.unsqueeze(1)
        if z0.dim() != 4:
            raise ValueError(f"z0 must be (S,N,D) or (S,T0,N,D), got {tuple(z0.shape)}")
        if actions.dim() != 3 or actions.shape[-1] != pc.action_dim:
            raise ValueError(f"actions must be (S, H, action_dim={pc.action_dim}), got {tuple(actions.shape)}")
        samples, context = actions.shape[0], z0.shape[1]
        if z0.shape[0] not in (1, samples):
            raise ValueError(f"z0 batch {z0.shape[0]} must be 1 or the number of action samples {samples}")
        if pc.state_dim:
            if state0 is None:
                raise ValueError(f"this world model uses states (state_dim={pc.state_dim}); pass state0")
            if state0.dim() == 2:
                state0 = state0.unsqueeze(1)
            if state0.dim() != 3 or state0.shape[1] != context or state0.shape[0] not in (1, samples):
                raise ValueError(
                    f"state0 must be (S, {pc.state_dim}) or (S, T0={context}, {pc.state_dim}), got {tuple(state0.shape)}"
                )
        if context > 1:
            expected = (context - 1, pc.action_dim)
            if context_actions is None or context_actions.dim() != 3 or context_actions.shape[1:] != expected:
                got = None if context_actions is None else tuple(context_actions.shape)
                raise ValueError(
                    f"a {context}-frame context needs context_actions (S or 1, {expected[0]}, {expected[1]}), got {got}"
                )
            if context_actions.shape[0] not in (1, samples):
                raise ValueError(f"context_actions batch {context_actions.shape[0]} must be 1 or {samples}")
        return z0, state0

    def rollout(
        self,
        z0: Tensor,
        state0: Tensor | None,
        actions: Tensor,
        context_actions: Tensor | None = None,
        use_kv_cache: bool = True,
    ) -> Tensor:
        """Imagine H steps for S action sequences: -> (S, H, N, D) predicted latents of frames 1..H.

        z0 (S or 1, N, D) or (S or 1, T0, N, D) context latents; state0 (S or 1, Ds) or
        (S or 1, T0, Ds) (None when state_dim == 0); actions (S, H, A); context_actions
        (S or 1, T0-1, A), the actions taken between context frames. With the KV cache, the
        context's earlier steps are run once (at batch 1 when shared) and each horizon step only
        runs its own tokens; ``use_kv_cache=False`` re-runs the whole history every step (the
        path the training loss differentiates through; tests hold the two equal).
        """
        z0, state0 = self._check_rollout(z0, state0, actions, context_actions)
        if use_kv_cache and torch.is_grad_enabled():
            inputs = {"z0": z0, "state0": state0, "actions": actions, "context_actions": context_actions}
            needing_grad = [name for name, tensor in inputs.items() if tensor is not None and tensor.requires_grad]
            if needing_grad:
                # the cache is filled in place, so backward would fail later with autograd's version error
                raise ValueError(f"the KV-cached rollout cannot be differentiated ({', '.join(needing_grad)} "
                                 "requires grad): pass use_kv_cache=False, the path gradients flow through")
        chunk = self.rollout_chunk_for(actions.device, use_kv_cache)
        samples = actions.shape[0]
        if not use_kv_cache:
            run = self._rollout_naive
        elif self._compiled_rollout is None:
            run = self._cached_rollout
        else:
            run = self._compiled_for(min(samples, chunk or samples), actions.device)
            # the graph with folded weights reads them in half-split order (``half_split_decoding``)
            self._build_rope_tables(z0.shape[1], actions.shape[1], actions.device, run is self._folded_rollout)
        if chunk and samples > chunk:
            pieces = []
            for start in range(0, samples, chunk):
                part = slice(start, start + chunk)
                pieces.append(run(_rows(z0, part), _rows(state0, part), actions[part], _rows(context_actions, part)))
            return torch.cat(pieces)
        return run(z0, state0, actions, context_actions)

    def compile_rollout(self) -> None:
        """Run the KV-cached rollout through torch.compile (inductor) from now on, one graph per sample chunk.

        The graph holds a chunk's whole rollout (every horizon step and layer, the cache writes, the
        glue between steps), so the eager glue and dynamo's guards run once per chunk, not once per step:
        1.04-1.07x the cached step compiled alone at 300 samples x 18 tokens, horizon 2, and 1.07x per
        action for the shipped reach model (docs/speed.md, "seventh session"). Exact to 4e-6 against eager.

        On CPU, chunks with products of at least ``FOLD_WEIGHTS_MIN_ROWS_X_WIDTH`` run a second graph, with the
        weights folded in (``FrozenWeightsCompile``): 1.09x (one thread) to 1.16x (two) at that configuration
        ("fourteenth session"), 1.03x more with each MLP's bias and GELU inside oneDNN's product and a C++
        launcher ("fifteenth session"), and 1.02x more with queries and keys in the half-split channel order,
        where RoPE's pair swap is contiguous (``half_split_decoding``, "seventeenth session"). It compiles again after
        the weights change (training, loading). The other graph keeps the weights as inputs. Each (horizon,
        context length) compiles once per graph; the first call compiles (about 40 s at that configuration, 4 s for
        the shipped model).
        """
        self._compiled_rollout = compile_keyed_to_isa(self._cached_rollout)
        self._folded_rollout = FrozenWeightsCompile(self._cached_rollout, self, dynamic_batch=(0, 1, 2, 3))

    def _compiled_for(self, chunk_samples: int, device: torch.device) -> Callable[..., Tensor]:
        """The compiled rollout for chunks of ``chunk_samples``: with the weights folded in on CPU when the
        products are large enough (``FOLD_WEIGHTS_MIN_ROWS_X_WIDTH``), with them as graph inputs otherwise."""
        rows = chunk_samples * self.predictor.config.step_tokens
        if device.type == "cpu" and rows * self.predictor.config.dim >= FOLD_WEIGHTS_MIN_ROWS_X_WIDTH:
            return self._folded_rollout
        return self._compiled_rollout

    def _build_rope_tables(self, context: int, horizon: int, device: torch.device, half_split: bool) -> None:
        """Build, outside the compiled graph, the predictor's RoPE tables that ``_cached_rollout``'s steps read:
        built inside it, a table would be traced in and its new cache entry would force a second compile."""
        if context > 1:
            self.predictor.rope_for_steps(0, context - 1, device, half_split)
        for step in range(context - 1, context - 1 + horizon):
            self.predictor.rope_for_steps(step, 1, device, half_split)

    def rollout_chunk_for(self, device: torch.device, use_kv_cache: bool) -> int:
        """Samples per rollout chunk (0: all at once): ``config.rollout_chunk`` when set; otherwise, for the
        planner's cached fp32 rollout on CPU, about ``CPU_CHUNK_TOKENS`` tokens per step and thread, so that a
        block's MLP activations stay in cache. Exact: samples never interact. Under bf16 autocast the AMX matmuls
        gain more from one large batch than the activations from cache (measured 0.9x chunked)."""
        full_precision = self.predictor.decoding_dtype is None
        if self.config.rollout_chunk or not use_kv_cache or device.type != "cpu" or not full_precision:
            return self.config.rollout_chunk
        return max(1, CPU_CHUNK_TOKENS * torch.get_num_threads() // self.predictor.config.step_tokens)

    def _cached_rollout(self, z0, state0, actions, context_actions) -> Tensor:
        samples, horizon = actions.shape[:2]
        context = z0.shape[1]
        # Context steps before the last one have known actions: run them once, at batch 1 if shared.
        shared = all(x is None or x.shape[0] == 1 for x in (z0, state0, context_actions))
        cache_batch = 1 if shared and context > 1 else samples
        cache = self.predictor.new_cache(cache_batch, context + horizon - 1, z0)
        if context > 1:
            prefix_states = None if state0 is None else state0[:, :-1].expand(cache_batch, -1, -1)
            prefix_z = z0[:, :-1].expand(cache_batch, -1, -1, -1)
            prefix = self.standardize(context_actions.expand(cache_batch, -1, -1), prefix_states)
            self.predictor.forward_cached(prefix_z, *prefix, cache)
            if cache_batch != samples:
                cache = cache.expand_batch(samples, cache.capacity)
        state = None if state0 is None else state0[:, -1]  # (S or 1, Ds)
        z = z0[:, -1:].expand(samples, -1, -1, -1)  # (S, 1, N, D)
        outputs = []
        for step in range(horizon):
            action = actions[:, step : step + 1]  # (S, 1, A)
            action_in, state_in = self.standardize(action, None if state is None else state.unsqueeze(1))
            if state_in is not None:  # standardised before the broadcast: a shared state reaches the predictor
                state_in = state_in.expand(samples, -1, -1)  # as a stride-0 view, which it computes with once
            z = self._finish(self.predictor.forward_cached(z, action_in, state_in, cache))  # (S, 1, N, D)
            outputs.append(z)
            if state is not None:
                state = self.next_states(state.expand(samples, -1), action[:, 0])
        return torch.cat(outputs, dim=1)

    def _rollout_naive(self, z0, state0, actions, context_actions) -> Tensor:
        samples, horizon = actions.shape[:2]
        context = z0.shape[1]
        z_hist = z0.expand(samples, -1, -1, -1)
        past_actions = actions[:, :0] if context == 1 else context_actions.expand(samples, -1, -1)
        states = None if state0 is None else state0.expand(samples, -1, -1)
        outputs = []
        for step in range(horizon):
            step_actions = torch.cat([past_actions, actions[:, : step + 1]], dim=1)  # (S, T0+step, A)
            z_next = self.predict(z_hist, step_actions, states)[:, -1:]  # (S, 1, N, D)
            outputs.append(z_next)
            z_hist = torch.cat([z_hist, z_next], dim=1)
            if states is not None:
                states = torch.cat([states, self.next_states(states[:, -1:], actions[:, step : step + 1])], dim=1)
        return torch.cat(outputs, dim=1)


def _rows(x: Tensor | None, part: slice) -> Tensor | None:
    """Slice a per-sample tensor, leaving batch-1 (shared) tensors whole."""
    if x is None or x.shape[0] == 1:
        return x
    return x[part]
