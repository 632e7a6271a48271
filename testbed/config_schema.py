"""The run configuration's schema: dataclasses whose field docstrings are the CLI help, the fields'
choices and ranges, and reading YAML into a checked :class:`Config`.

A run config is YAML with one mapping per section (``run``, ``task``, ``model``, ``rollout``,
``algo``, ``stop``, ``tppo``); ``key=value`` overrides use dotted paths (``stop.tau=3``). An unknown
key or a value of the wrong type raises :class:`ConfigError` naming the key.

A leaf module that never imports torch (nor anything of the testbed's but :mod:`testbed.errors`):
code that only reads configs loads them here. The names of
registry-backed fields (estimators, losses, stop rules) are checked by :mod:`testbed.config`, which
imports the registries; its ``load`` and ``from_dict`` are these plus that check.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from testbed.errors import UserError

TASK_KINDS = ("sim", "math")
"""``task.kind``: a simulated token-MDP or math problems for a language model (built by :mod:`testbed.ops.build`)."""
MODEL_KINDS = ("toy", "hf")
"""``model.kind``: the small torch token policy, or a transformers causal LM (built by :mod:`testbed.ops.build`)."""


class ConfigError(UserError, ValueError):
    """A config file or override is malformed or out of range; the message names the key."""


@dataclass
class RunSection:
    name: str = "run"
    """Run name: the run directory is ``out_dir/name``."""
    out_dir: str = "runs"
    """Parent folder of run directories."""
    seed: int = 0
    """Seed for every random number generator of the run."""
    steps: int = 50
    """Training steps (one rollout batch and its updates each)."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    eval_every: int = 0
    """Evaluate on the held-out split every N steps (0: never; LLM tasks)."""
    eval_size: int = 64
    """Held-out problems per evaluation."""
    final_eval_rows: int = 0
    """After training, sample this many whole responses to fresh prompts with no stop rule and write
    ``final_eval_nostop.json`` (success of the final policy, measured the same way for every method; 0: off)."""
    checkpoint_every: int = 10
    """Write a checkpoint every N steps (and at the end)."""
    progress: bool = True
    """Show a progress bar."""
    sft_cache: str = ""
    """Folder where a finished ``model.sft`` stage is kept for runs with the same model, task, seed and threads ("": none)."""
    tensorboard: bool = False
    """Also write each step's scalars as TensorBoard events in ``RUN_DIR/tensorboard`` (extra ``tensorboard``)."""


@dataclass
class TaskSection:
    kind: str = "sim"
    """``sim`` (a gymnasium token-MDP) or ``math`` (math problems for a language model)."""
    env_id: str = "testbed/PlantedFailure-v0"
    """sim: gymnasium id of the token env (registered by ``import envs``)."""
    env_kwargs: dict = field(default_factory=dict)
    """sim: keyword arguments for the env (its variants' knobs)."""
    eval_problems: str = "random"
    """sim: held-out evaluations draw each row's problem at random (``random``) or take every problem in turn
    (``each``: the same problems at every evaluation, each equally often when the rows are a multiple of
    ``num_problems``, so a greedy evaluation is the exact mean over problems, without sampling noise)."""
    train_problems: str = "random"
    """sim: training rows draw their problem at random with replacement (``random``) or in shuffled passes
    over the problems (``epochs``: every problem once per pass, as a data loader with ``shuffle=True``)."""
    difficulty: str = "sum2"
    """math: generator difficulty (see ``llm_backend.problems``), used when ``dataset`` is empty."""
    dataset: str = ""
    """math: path to a local JSONL/parquet file instead of the generator."""
    dataset_format: str = "auto"
    """math: ``auto``, ``gsm8k``, ``math``, ``aime`` or ``dapo``."""
    reward_timeout: float = 2.0
    """math: seconds allowed to verify one answer."""
    format_score: float = 0.0
    """math: reward for a well-formed ``\\boxed{}`` answer that is wrong."""
    system_prompt: str = ""
    """math: extra system message for the chat template (empty: none)."""
    source: str = "generator"
    """math: ``generator`` (``difficulty``, or ``dataset`` when set), ``chain`` (checkable multi-step arithmetic) or ``reasoning_gym``."""
    source_kwargs: dict = field(default_factory=dict)
    """math: the source's knobs (chain: steps (an int or [low, high]), digits, mul_max, ops, max_value, example,
    plant_fraction, plant_step; reasoning_gym: dataset, config, size)."""


@dataclass
class ModelSection:
    kind: str = "toy"
    """``toy`` (small torch GRU policy and critic) or ``hf`` (a transformers causal LM)."""
    path: str = "default"
    """hf: a local model directory, a ``.gguf`` file, ``default`` (embedded SmolLM2-135M) or ``tiny`` (random, for tests)."""
    dtype: str = "float32"
    """Parameter/compute dtype: ``float32`` or ``bfloat16`` (the critic head stays fp32)."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""
    critic: str = "separate"
    """``separate`` (critic model initialised from the policy) or ``head`` (value head on the policy trunk)."""
    arch: str = "gru"
    """toy: ``gru`` (a one-layer GRU, the default) or ``transformer`` (a small causal transformer of ``layers``
    GPT-2 blocks with ``heads`` heads, KV-cached decoding; it needs ``positions`` and attends to its prompt, so
    ``prompt_input`` and ``prompt_readout`` stay false)."""
    layers: int = 2
    """toy transformer: number of blocks."""
    heads: int = 2
    """toy transformer: attention heads (``hidden_size`` must be a multiple)."""
    hidden_size: int = 64
    """toy: GRU width, or the transformer's width."""
    embed_size: int = 32
    """toy: token embedding width."""
    positions: bool = True
    """toy: add a position embedding to the inputs (lets the policy learn where EOS goes)."""
    prompt_input: bool = False
    """toy: add the prompt's mean embedding to the input at every step, as a transformer attends to its
    prompt at every step (a GRU's state forgets the prompt over a long noisy response)."""
    prompt_readout: bool = False
    """toy: add a term bilinear in the prompt and the position to the heads, as attention from a position to
    the prompt gives a transformer (the end token's logit can then depend on problem and position jointly);
    needs ``prompt_input`` and ``positions``; zero at initialisation."""
    eos_bias: float = 0.0
    """toy: added to the policy's EOS logit at initialisation (negative: the initial policy rarely stops at
    random, as a language model does not; it then has to learn where to stop rather than to go on)."""
    cache_dir: str = ""
    """hf: folder for the dequantised checkpoint of a GGUF model (empty: ``~/.cache/testbed``)."""
    stop_check_every: int = 1
    """Evaluate the critic (and the stop rule) every N decoded tokens."""
    reference: bool = False
    """Keep a frozen reference policy (needed when ``algo.kl_coef > 0``)."""
    gradient_checkpointing: bool = False
    """hf: trade compute for memory in training forwards."""
    critic_init: str = ""
    """Run directory of a finished run whose checkpoint initialises the critic (empty: the usual init)."""
    shared_prefix: bool = True
    """hf: compute the rows' common prompt prefix (system message, one-shot example; a GRPO group's
    whole prompt) once in decoding and training; false: plain full-sequence forwards."""
    fast_decode: bool = True
    """hf: decode plain Llama trunks on the CPU with a pre-allocated KV cache and a plain-torch forward
    (``llm_backend.fastdecode``; same per-token hooks; 2-2.5x faster steps at batch 16, bench/roofline.py);
    LoRA layers through their merged weights; other trunks and devices use transformers' path (false: always)."""
    lora: dict = field(default_factory=dict)
    """hf: train LoRA adapters (``peft``) instead of every policy weight: ``{r, alpha, target_modules,
    dropout}`` (empty: full fine-tuning). The KL reference is then the base model with the adapters
    off (no second copy); checkpoints hold the adapters; ``save_pretrained`` writes the merged model."""
    sft: dict = field(default_factory=dict)
    """hf: supervised warm-start on the task's canonical solutions before RL, when a run starts from
    scratch (not on a resume): ``{steps, lr, batch_size, eval_size}`` (``llm_backend.sft``; empty: none).
    Writes ``RUN_DIR/sft.json`` with held-out greedy pass@1 before and after."""


@dataclass
class RolloutSection:
    batch_size: int = 64
    """Rows per training step (prompts x group_size)."""
    group_size: int = 1
    """Responses sampled per prompt (GRPO groups)."""
    max_len: int = 32
    """Most response tokens a row may have (total, across T-PPO windows)."""
    temperature: float = 1.0
    """Sampling temperature (also applied to training log-probs)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    length_cap: str = "terminal"
    """Treatment of rows that hit max_len: ``terminal``, ``bootstrap`` or ``masked``."""


@dataclass
class AlgoSection:
    estimator: str = "gae"
    """Advantage estimator: ``gae``, ``egae``, ``grpo``, ``mc`` (registry names)."""
    policy_loss: str = "ppo"
    """Policy loss (registry name in ``testbed.losses.POLICY_LOSSES``)."""
    gamma: float = 1.0
    """Discount."""
    lam_actor: float = 0.95
    """GAE lambda for policy advantages."""
    lam_critic: float = 1.0
    """GAE lambda for critic targets (decoupled GAE)."""
    lam_adaptive_alpha: float = 0.0
    """If > 0, length-adaptive lambda_actor = 1 - 1/(alpha * length) per row."""
    grpo_scale: bool = True
    """GRPO: divide by the group's std."""
    normalize_advantages: bool = False
    """Whiten advantages over the batch's valid tokens."""
    clip_low: float = 0.2
    """PPO ratio clip below 1."""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (clip-higher when > clip_low)."""
    dual_clip: float = 0.0
    """Dual-clip constant c > 1 for negative advantages (0: off)."""
    agg: str = "token-mean"
    """Loss aggregation: ``token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-mean``."""
    value_clip: float = 0.0
    """Value clip around the old values (0: off)."""
    value_coef: float = 1.0
    """Scale of the value loss."""
    kl_coef: float = 0.0
    """KL penalty coefficient against the reference policy."""
    kl_type: str = "k3"
    """KL estimator: ``k1`` or ``k3``."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    epochs: int = 2
    """Passes over each rollout batch."""
    minibatch_size: int = 32
    """Rows per optimiser step."""
    lr_actor: float = 3e-3
    """Policy learning rate."""
    lr_critic: float = 3e-3
    """Critic learning rate (0 freezes the critic at its initialisation)."""
    lr_schedule: str = "constant"
    """``constant`` or ``linear``: both learning rates fall linearly to 0 over ``run.steps`` (cleanrl's anneal_lr)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    adam_eps: float = 1e-8
    """Adam's epsilon for actor and critic (torch's default; cleanrl's PPO uses 1e-5). Larger values damp the
    steps of parameters whose gradients are small (Adam otherwise scales every step to about the rate)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal (no signal)."""
    overlong_buffer: int = 0
    """DAPO: soft overlong penalty starts this many tokens before max_len (0: off)."""
    overlong_penalty: float = 1.0
    """DAPO: penalty at max_len, ramping linearly over the buffer."""
    critic_warmup_steps: int = 0
    """Train only the critic (actor frozen) for the first N training steps (verl's critic_warmup)."""


@dataclass
class StopSection:
    rule: str = "none"
    """Stop rule: ``none``, ``espo``, ``regret_only``, ``value_only``, ``random``, ``oracle``."""
    failure_reward: float = 0.0
    """Reward of a failed answer; a stopped row gets ``failure_reward - stop_penalty``."""
    stop_penalty: float = 0.0
    """Extra penalty for being stopped."""
    ema_beta: float = 0.9
    """EMA factor of the regret normaliser across training batches."""
    norm_var: str = "moment"
    """Normaliser variance: ``moment`` (EMA of batch E[g^2], minus mu^2) or ``batch`` (EMA of batch variances, the paper's)."""
    z_delta: float = 0.0
    """z = (g - mu) / (sqrt(var + z_delta) + 1e-6): the paper's variance floor delta."""
    z_clip: float = math.inf
    """Clip z to [-z_clip, z_clip] (.inf: no clip; the paper clips)."""
    accumulate: str = "cusum"
    """``cusum``, ``sum`` (of positive parts), ``ema`` (S = (1-alpha) S + alpha z) or ``smooth`` (the paper's S = alpha_s S + (1-alpha_s) z)."""
    kappa: float = 0.5
    """CUSUM drift subtracted per token."""
    alpha: float = 0.2
    """``ema`` accumulation smoothing."""
    alpha_s: float = 0.9
    """``smooth`` accumulation: weight of the previous statistic (the paper's orientation)."""
    gate: str = "scaled"
    """Value gate: ``scaled`` (S > tau * p + tau_min), ``and`` (S > tau and p < rho) or ``max`` (S > tau * max(V, value_floor), the paper's)."""
    tau: float = 8.0
    """Threshold scale on the accumulated regret (the paper's beta); the controller's start when ``target_rate`` > 0."""
    value_floor: float = 0.2
    """``max`` gate: epsilon in tau * max(V, epsilon)."""
    target_rate: float = 0.0
    """Termination-rate controller: tau <- clip(tau + rate_eta * (stop rate - target_rate), tau_low, tau_high) after each batch the rule could stop in (0: off)."""
    rate_eta: float = 0.1
    """Controller step size (the paper's eta)."""
    tau_low: float = 0.0
    """Controller's lower bound on tau."""
    tau_high: float = 100.0
    """Controller's upper bound on tau."""
    tau_min: float = 1.0
    """Threshold floor (scaled gate)."""
    rho: float = 0.3
    """Success-probability ceiling (``and`` gate)."""
    r_fail: float = 0.0
    """Value of a certain failure (for p_t)."""
    r_success: float = 1.0
    """Value of a certain success (for p_t)."""
    min_tokens: int = 2
    """Never stop before this many response tokens."""
    warmup_steps: int = 2
    """``warmup=steps``: never stop during the first N training steps."""
    warmup: str = "steps"
    """``steps`` (``warmup_steps``) or ``critic_loss`` (the paper's: off until the critic's loss settles)."""
    warmup_loss_below: float = 0.5
    """critic_loss warm-up: on after ``warmup_patience`` consecutive steps with the critic's loss below this..."""
    warmup_loss_change: float = 0.1
    """...or with its step-to-step change below this."""
    warmup_patience: int = 3
    """critic_loss warm-up: consecutive steps either criterion must hold."""
    warmup_cap: float = 0.1
    """critic_loss warm-up: forced on at this fraction of ``run.steps``."""
    reference_run: str = ""
    """random: run directory of the ESPO run whose stop rate and stop-step histogram to match."""
    hit_window: int = 10
    """random: training steps over which the share of marked rows actually stopped is measured."""
    delay: int = 0
    """oracle: stop this many tokens after the planted failure."""


@dataclass
class TPPOSection:
    enabled: bool = False
    """Truncated PPO: generate at most ``window`` tokens per step, carrying unfinished rows."""
    window: int = 8
    """Tokens generated per row per training step."""
    ignore_last_k: int = 0
    """Drop the last k tokens of unfinished rows from the policy loss (0 drops none)."""
    bootstrap: str = "self"
    """Value after a window-cut row: ``self`` V(s_l) (EGAE) or ``next`` V(s_{l+1}) (one more critic step)."""
    credit: str = "window"
    """Policy updates: ``window`` (this window's tokens), ``deferred`` (whole rows once they finish), ``both``."""


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    task: TaskSection = field(default_factory=TaskSection)
    model: ModelSection = field(default_factory=ModelSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algo: AlgoSection = field(default_factory=AlgoSection)
    stop: StopSection = field(default_factory=StopSection)
    tppo: TPPOSection = field(default_factory=TPPOSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    ("task", "kind"): TASK_KINDS,
    ("model", "kind"): MODEL_KINDS,
    ("model", "dtype"): ("float32", "bfloat16"),
    ("model", "critic"): ("separate", "head"),
    ("model", "arch"): ("gru", "transformer"),
    ("rollout", "length_cap"): ("terminal", "bootstrap", "masked"),
    ("stop", "accumulate"): ("cusum", "sum", "ema", "smooth"),
    ("stop", "gate"): ("scaled", "and", "max"),
    ("stop", "norm_var"): ("moment", "batch"),
    ("stop", "warmup"): ("steps", "critic_loss"),
    ("task", "dataset_format"): ("auto", "gsm8k", "math", "aime", "dapo"),
    ("task", "source"): ("generator", "chain", "reasoning_gym"),
    ("tppo", "bootstrap"): ("self", "next"),
    ("tppo", "credit"): ("window", "deferred", "both"),
    ("algo", "lr_schedule"): ("constant", "linear"),
    ("task", "eval_problems"): ("random", "each"),
    ("task", "train_problems"): ("random", "epochs"),
}


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstring under each field of a dataclass (the CLI help text)."""
    src = inspect.getsource(cls)
    tree = ast.parse(src)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value).strip()  # type: ignore[union-attr]
    return docs


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the field type, converting what YAML/CLI text can't express exactly."""
    if isinstance(typ, str):
        typ = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}.get(typ, typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got NaN")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {typ!r}")


def _section_types(cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(cls)}


def _apply(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) < 2:
        raise ConfigError(f"{key}: keys are 'section.field', e.g. stop.tau")
    section, name = parts[0], parts[1]
    sections = _section_types(Config)
    if section not in sections:
        raise ConfigError(f"{key}: unknown section {section!r}; valid: {', '.join(sections)}")
    obj = getattr(cfg, section)
    types_ = _section_types(type(obj))
    if name not in types_:
        raise ConfigError(f"{key}: unknown key {name!r} in section {section!r}; valid: {', '.join(types_)}")
    if len(parts) > 2:  # a dict field's entry: task.env_kwargs.max_len=8
        if types_[name] not in (dict, "dict"):
            raise ConfigError(f"{key}: {section}.{name} is not a mapping")
        getattr(obj, name)[".".join(parts[2:])] = value
        return
    value = _coerce(key, value, types_[name])
    choices = _CHOICES.get((section, name))
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    setattr(obj, name, value)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        inner = _flatten(v, key + ".") if isinstance(v, dict) and prefix == "" else {key: v}
        for ik, iv in inner.items():
            if ik in out:  # e.g. a section ``stop: {tau: 1}`` and a top-level ``stop.tau: 2``
                raise ConfigError(f"{ik}: set twice; keep one")
            out[ik] = iv
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` may override on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML reports it below
                continue
            if first is not None:
                raise ConfigError(f"line {line}: duplicate key {key!r} (first at line {first}); "
                                  "merge the two into one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (a :class:`ConfigError` naming the line)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def parse_override(text: str) -> tuple[str, Any]:
    """``'stop.tau=3'`` -> ``('stop.tau', 3)``; the value is parsed as YAML (so ``true``, ``1e-3``, ``{a: 1}``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if value is None:  # "key=null" or "key=~": the empty string, as for "key="
        value = ""
    return key.strip(), value


def from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), *,
              validate: Callable[[Config], None] | None = None) -> Config:
    """Build a Config from nested mappings plus ``key=value`` overrides, checked by ``validate`` (default
    :func:`check`, no registry names; :func:`testbed.config.from_dict` checks those too)."""
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    for key, value in _flatten(data).items():
        if "." not in key:
            raise ConfigError(f"{key}: top-level keys are sections ({', '.join(_section_types(Config))})")
        _apply(cfg, key, value)
    for text in overrides:
        _apply(cfg, *parse_override(text))
    (check if validate is None else validate)(cfg)
    return cfg


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """A YAML file's content ({} when empty); a missing file, invalid YAML or a repeated key is a
    ConfigError naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        return safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}:{str(e).removeprefix('line ')}") from None


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
         validate: Callable[[Config], None] | None = None) -> Config:
    """Read a YAML config file (errors name the file) and apply overrides, checked by ``validate`` (as in
    :func:`from_dict`).

    An empty file is refused: a config names at least one section (the built-in defaults alone are not
    a tested configuration, and an empty file is more often a mistake than a choice).
    """
    data = read_yaml(path)
    if data == {}:
        raise ConfigError(f"{path}: the config file is empty; give at least one section "
                          "(start from a preset such as configs/ppo.yaml)")
    try:
        return from_dict(data, overrides, validate=validate)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# (section, field) -> (low, high, low inclusive, high inclusive); None: unbounded on that side. Every
# float field not listed must be finite; listed ones follow their bounds (an open inf bound admits inf).
_INF = math.inf
_RANGES: dict[tuple[str, str], tuple[float, float, bool, bool]] = {
    ("run", "seed"): (0, _INF, True, False),
    ("run", "steps"): (0, _INF, True, False),
    ("run", "threads"): (0, _INF, True, False),
    ("run", "eval_every"): (0, _INF, True, False),
    ("run", "eval_size"): (1, _INF, True, False),
    ("run", "checkpoint_every"): (1, _INF, True, False),
    ("run", "final_eval_rows"): (0, _INF, True, False),
    ("task", "reward_timeout"): (0, _INF, False, False),
    ("model", "hidden_size"): (1, _INF, True, False),
    ("model", "layers"): (1, _INF, True, False),
    ("model", "heads"): (1, _INF, True, False),
    ("model", "embed_size"): (1, _INF, True, False),
    ("model", "stop_check_every"): (1, _INF, True, False),
    ("rollout", "batch_size"): (1, _INF, True, False),
    ("rollout", "group_size"): (1, _INF, True, False),
    ("rollout", "max_len"): (1, _INF, True, False),
    ("rollout", "temperature"): (0, _INF, False, False),
    ("rollout", "top_p"): (0, 1, False, True),
    ("rollout", "top_k"): (0, _INF, True, False),
    ("algo", "critic_warmup_steps"): (0, _INF, True, False),
    ("algo", "gamma"): (0, 1, True, True),
    ("algo", "lam_actor"): (0, 1, True, True),
    ("algo", "lam_critic"): (0, 1, True, True),
    ("algo", "lam_adaptive_alpha"): (0, _INF, True, False),
    ("algo", "clip_low"): (0, 1, True, False),
    ("algo", "clip_high"): (0, _INF, True, False),
    ("algo", "dual_clip"): (0, _INF, True, False),
    ("algo", "value_clip"): (0, _INF, True, False),
    ("algo", "value_coef"): (0, _INF, True, False),
    ("algo", "kl_coef"): (0, _INF, True, False),
    ("algo", "epochs"): (0, _INF, True, False),
    ("algo", "minibatch_size"): (1, _INF, True, False),
    ("algo", "lr_actor"): (0, _INF, False, False),
    ("algo", "lr_critic"): (0, _INF, True, False),  # 0 freezes the critic (a T-PPO study control)
    ("algo", "max_grad_norm"): (0, _INF, False, False),
    ("algo", "adam_eps"): (0, _INF, False, False),
    ("algo", "overlong_buffer"): (0, _INF, True, False),
    ("algo", "overlong_penalty"): (0, _INF, True, False),
    ("stop", "ema_beta"): (0, 1, True, False),
    ("stop", "alpha"): (0, 1, False, True),
    ("stop", "tau"): (0, _INF, True, True),  # tau = inf: a rule that never fires (PPO, for tests)
    ("stop", "tau_min"): (-_INF, _INF, False, True),  # below 0 (with tau = 0): stop at every allowed token
    ("stop", "rho"): (0, 1, True, True),
    ("stop", "min_tokens"): (0, _INF, True, False),
    ("stop", "warmup_steps"): (0, _INF, True, False),
    ("stop", "z_delta"): (0, _INF, True, False),
    ("stop", "z_clip"): (0, _INF, False, True),  # inf: no clip
    ("stop", "alpha_s"): (0, 1, True, False),
    ("stop", "value_floor"): (-_INF, _INF, False, False),
    ("stop", "target_rate"): (0, 1, True, False),
    ("stop", "rate_eta"): (0, _INF, True, False),
    ("stop", "tau_low"): (0, _INF, True, False),
    ("stop", "tau_high"): (0, _INF, False, True),
    ("stop", "warmup_loss_below"): (0, _INF, True, True),
    ("stop", "warmup_loss_change"): (0, _INF, True, True),
    ("stop", "warmup_patience"): (1, _INF, True, False),
    ("stop", "warmup_cap"): (0, 1, True, True),
    ("stop", "delay"): (0, _INF, True, False),
    ("tppo", "window"): (1, _INF, True, False),
    ("tppo", "ignore_last_k"): (0, _INF, True, False),
}


def _check_range(key: str, value: float, bounds: tuple[float, float, bool, bool]) -> None:
    lo, hi, lo_in, hi_in = bounds
    ok_lo = value >= lo if lo_in else value > lo
    ok_hi = value <= hi if hi_in else value < hi
    if not (ok_lo and ok_hi):
        left, right = "[" if lo_in else "(", "]" if hi_in else ")"
        raise ConfigError(f"{key}: {value!r} is out of range {left}{lo}, {hi}{right}")


def check(cfg: Config) -> None:
    """Choices, ranges and cross-field checks; each message names the key. Registry-backed names
    (estimator, policy loss, KL estimator, aggregation, stop rule) are :func:`testbed.config.validate`'s,
    which runs this after them."""
    for (section, name), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{section}.{name}: {value!r} is not one of {', '.join(choices)}")
    for f in dataclasses.fields(Config):
        sec = getattr(cfg, f.name)
        for sf in dataclasses.fields(sec):
            value = getattr(sec, sf.name)
            key = f"{f.name}.{sf.name}"
            bounds = _RANGES.get((f.name, sf.name))
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{key}: expected a number, got NaN")
            if bounds is not None:
                _check_range(key, value, bounds)
            elif isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}: must be finite, got {value!r}")
    for key in ("name", "out_dir"):
        if not getattr(cfg.run, key).strip():
            raise ConfigError(f"run.{key}: must not be empty")
    name = cfg.run.name
    if name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        raise ConfigError(f"run.name: {name!r} must be a plain folder name (no '/', not '.' or '..'): the run "
                          "directory is run.out_dir/run.name; put the parent folder in run.out_dir")
    # A dict of knobs for the other task kind would be ignored without a word: refuse it.
    if cfg.task.kind != "math" and cfg.task.source_kwargs:
        raise ConfigError(f"task.source_kwargs: only math tasks read it (task.kind is {cfg.task.kind!r}); "
                          f"remove {', '.join(map(str, cfg.task.source_kwargs))} or use task.env_kwargs for the env")
    if cfg.task.kind != "sim" and cfg.task.env_kwargs:
        raise ConfigError(f"task.env_kwargs: only simulated tasks read it (task.kind is {cfg.task.kind!r}); "
                          f"remove {', '.join(map(str, cfg.task.env_kwargs))} or use task.source_kwargs")
    r, a, s, t = cfg.rollout, cfg.algo, cfg.stop, cfg.tppo
    if r.batch_size % r.group_size:
        raise ConfigError(f"rollout.group_size: must divide rollout.batch_size ({r.group_size} does not divide {r.batch_size})")
    if a.dual_clip and a.dual_clip <= 1:
        raise ConfigError("algo.dual_clip: must be > 1 (or 0 for off)")
    if cfg.model.sft and cfg.model.kind != "hf":
        raise ConfigError(f"model.sft: supervised warm-start needs model.kind hf (got {cfg.model.kind!r})")
    if cfg.model.prompt_readout and not (cfg.model.prompt_input and cfg.model.positions):
        raise ConfigError("model.prompt_readout: needs model.prompt_input=true and model.positions=true "
                          "(it multiplies the prompt's vector by a position's)")
    if a.kl_coef > 0 and not cfg.model.reference:
        raise ConfigError("algo.kl_coef: needs model.reference=true")
    if a.overlong_buffer > r.max_len:
        raise ConfigError(f"algo.overlong_buffer: {a.overlong_buffer} exceeds rollout.max_len {r.max_len}")
    if s.r_success <= s.r_fail:
        raise ConfigError(f"stop.r_success: {s.r_success} must exceed stop.r_fail {s.r_fail}")
    if s.tau_low > s.tau_high:
        raise ConfigError(f"stop.tau_low: {s.tau_low} exceeds stop.tau_high {s.tau_high}")
    if s.rule == "random" and not s.reference_run:
        raise ConfigError("stop.reference_run: the random rule needs a reference ESPO run directory")
    if t.enabled and t.ignore_last_k > t.window:  # the ranges table has already checked both are >= 0 / >= 1
        raise ConfigError("tppo.ignore_last_k: must be in [0, window]")


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
