"""One-line answers from the planner: where a model runs (the Hub fit table, Compare's fit column, find my quant),
what size of model fits (the Hardware page), and how fast generation could be (an estimate).

Every number here is the planner's (:func:`desktop.memory.planner.plan_offload`): "needs" is what llama.cpp and
its backend take on all devices together (weights, KV cache, compute buffers, GPU overhead), margins excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from desktop.gguf.reader import format_parameters
from desktop.jobs import format_bytes
from desktop.memory.machine import Machine
from desktop.memory.planner import HostBudget, OffloadPlan, PlanOptions, evaluate, plan_offload
from desktop.memory.shape import ModelShape, shape_from_config

_UNLIMITED = HostBudget(2**62, 2**62)
WHERE = {"fits": "GPU", "fits_partly": "GPU+CPU", "cpu_only": "RAM", "does_not_fit": "neither"}


@dataclass(frozen=True)
class Fit:
    """The verdict for one model at one context: ``where`` is "GPU", "GPU+CPU", "RAM" or "neither"."""

    where: str
    plan: OffloadPlan

    @property
    def needed_bytes(self) -> int:
        return self.plan.totals.used

    @property
    def kv_bytes(self) -> int:
        return self.plan.totals.kv_cache

    @property
    def weights_bytes(self) -> int:
        return self.plan.totals.weights

    def short(self) -> str:
        """E.g. "GPU ~1.2 GB", "GPU 9/17 ~1.4 GB", "RAM ~1.1 GB", "no: ~40.2 GB" (Compare's column)."""
        need = "~" + format_bytes(self.needed_bytes)
        plan = self.plan
        return {"GPU": f"GPU {need}", "GPU+CPU": f"GPU {plan.n_gpu_layers}/{plan.total_layers} {need}",
                "RAM": f"RAM {need}"}.get(self.where, f"no: {need}")

    def sentence(self) -> str:
        return f"{self.plan.message} Needs {format_bytes(self.needed_bytes)} in all (an estimate)."


def fit(shape: ModelShape, machine: Machine, options: PlanOptions | None = None) -> Fit:
    """Where ``shape`` runs on ``machine``: as many layers on its usable GPUs as fit, the rest on the CPU."""
    plan = plan_offload(shape, gpus=machine.gpus, host=machine.host, options=options)
    return Fit(WHERE[plan.verdict], plan)


def memory_needed(shape: ModelShape, n_ctx: int, machine: Machine | None = None) -> int:
    """Bytes needed to run ``shape`` at ``n_ctx`` (on ``machine``'s plan; on the CPU alone without one)."""
    if machine is None:
        machine = Machine((), _UNLIMITED)
    return fit(shape, machine, PlanOptions(n_ctx=n_ctx)).needed_bytes


# ------------------------------------------------------------------------------------ what fits (Hardware page)


# Llama-family shapes the "what fits" sentence scales from (parameters, config.json fields).
_REFERENCE = (
    (1.2e9, dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=8192, vocab_size=128256)),
    (3.2e9, dict(num_hidden_layers=28, hidden_size=3072, num_attention_heads=24, num_key_value_heads=8,
                 intermediate_size=8192, vocab_size=128256)),
    (8.0e9, dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=14336, vocab_size=128256)),
    (14.8e9, dict(num_hidden_layers=48, hidden_size=5120, num_attention_heads=40, num_key_value_heads=8,
                  intermediate_size=13824, vocab_size=152064)),
    (32.8e9, dict(num_hidden_layers=64, hidden_size=5120, num_attention_heads=40, num_key_value_heads=8,
                  intermediate_size=27648, vocab_size=152064)),
    (70.6e9, dict(num_hidden_layers=80, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
                  intermediate_size=28672, vocab_size=128256)),
)
Q4_K_M_BPW = 4.85
Q8_0_BPW = 8.5


def reference_shape(parameters: float, bits_per_weight: float) -> ModelShape:
    """A Llama-family model of ``parameters`` at ``bits_per_weight``: the attention of the next larger reference
    model (the safe side), the weights of this size."""
    config = next((c for p, c in _REFERENCE if p >= parameters), _REFERENCE[-1][1])
    shape = shape_from_config(dict(config, model_type="llama", max_position_embeddings=131072))
    return shape.with_weights(int(parameters * bits_per_weight / 8))


def largest_model(machine: Machine, *, on_gpu: bool, bits_per_weight: float = Q4_K_M_BPW,
                  n_ctx: int = 4096) -> float:
    """The most parameters (0 when none) whose plan at ``n_ctx`` fits entirely on the best usable GPU
    (``on_gpu``) or in RAM, in steps of 0.1B below 10B and of 1B above."""
    if on_gpu:
        if not machine.gpus:
            return 0.0
        best = max(machine.gpus, key=lambda g: g.free_bytes)
        target = replace(machine, gpus=(best,))
    else:
        target = replace(machine, gpus=())
    options = PlanOptions(n_ctx=n_ctx)

    def fits(parameters: float) -> bool:
        shape = reference_shape(parameters, bits_per_weight)
        layers = shape.total_layers if on_gpu else 0
        return evaluate(shape, layers, gpus=target.gpus, host=target.host, options=options, with_max=False).fits

    steps = [x / 10 * 1e9 for x in range(1, 100)] + [x * 1e9 for x in range(10, 1001)]
    lo, hi = 0, len(steps)
    while lo < hi:  # fitting is monotonic in size: the last step that fits
        mid = (lo + hi) // 2
        if fits(steps[mid]):
            lo = mid + 1
        else:
            hi = mid
    return steps[lo - 1] if lo else 0.0


CPU_BYTES_PER_S_PER_CORE = 8e9
CPU_BYTES_PER_S_MAX = 60e9


def cpu_tokens_per_s(weights_bytes: int, cores: int) -> float:
    """A memory-bandwidth-bound estimate of generation speed on the CPU: every weight is read once per token,
    and ``cores`` cores move about 8 GB/s each (at most about 60 GB/s: two channels of DDR5). An estimate."""
    if weights_bytes <= 0:
        return 0.0
    bandwidth = min(CPU_BYTES_PER_S_MAX, max(1, cores) * CPU_BYTES_PER_S_PER_CORE)
    return bandwidth / weights_bytes


def what_fits(machine: Machine, *, on_gpu: bool, n_ctx: int = 4096) -> str:
    """The Hardware page's sentence: the largest model the planner fits in RAM (or on the best usable GPU) at
    ``n_ctx``, at Q4_K_M and Q8_0, with a generation-speed estimate on the CPU."""
    q4 = largest_model(machine, on_gpu=on_gpu, n_ctx=n_ctx)
    q8 = largest_model(machine, on_gpu=on_gpu, bits_per_weight=Q8_0_BPW, n_ctx=n_ctx)
    if on_gpu:
        best = max(machine.gpus, key=lambda g: g.free_bytes)
        where = f"On {best.name} ({best.backend})"
    else:
        where = "In RAM now"
    if not q4:
        return f"{where}: no room for even a 0.1B model at a {n_ctx:,}-token context right now."
    text = (f"{where}: up to about a {_params(q4)} model at Q4_K_M or {_params(q8) if q8 else 'none'} at Q8_0, "
            f"with a {n_ctx:,}-token context (the planner's estimate, KV cache and buffers included).")
    if not on_gpu:
        weights = int(q4 * Q4_K_M_BPW / 8)
        speed = cpu_tokens_per_s(weights, machine.cpu_cores)
        cores = f"{machine.cpu_cores} core{'s' if machine.cpu_cores != 1 else ''}" if machine.cpu_cores else "this CPU"
        text += (f" On {cores} that model would generate about {_rate(speed)} (an estimate: each token reads all "
                 f"{format_bytes(weights)} of weights from memory).")
    return text


def _params(n: float) -> str:
    return format_parameters(int(n))


def _rate(tokens_per_s: float) -> str:
    if tokens_per_s >= 10:
        return f"{tokens_per_s:.0f} tokens/s"
    if tokens_per_s >= 0.1:
        return f"{tokens_per_s:.1f} tokens/s"
    return f"one token every {1 / tokens_per_s:.0f} s" if tokens_per_s > 0 else "nothing"
