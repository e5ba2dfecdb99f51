"""The root config: every group, and the rules that tie groups together."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, one_of
from vpdd.config.bc import BCConfig
from vpdd.config.data import DataConfig
from vpdd.config.diffusion import DiffusionConfig
from vpdd.config.env import EnvConfig
from vpdd.config.eval import EvalConfig
from vpdd.config.kernel import KernelConfig
from vpdd.config.model import ModelConfig
from vpdd.config.rlbench import RLBenchConfig
from vpdd.config.tokenizer import TokenizerConfig
from vpdd.config.train import FinetuneConfig, PretrainConfig


@dataclass
class VPDDConfig(Validated):
    preset: str = "tiny"
    seed: int = 0
    # benchmarks whose DVC matrix stages run besides the Meta-World pipeline (dvc.yaml: matrix over this list)
    extra_benchmarks: list[str] = field(default_factory=lambda: ["rlbench"])
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rlbench: RLBenchConfig = field(default_factory=RLBenchConfig)
    bc: BCConfig = field(default_factory=BCConfig)

    def checks(self) -> list[Check]:
        return [
            one_of(self, "preset", ("tiny", "paper", "custom")),
            Check("extra_benchmarks", set(self.extra_benchmarks) <= {"rlbench"}
                  and len(set(self.extra_benchmarks)) == len(self.extra_benchmarks),
                  "distinct names from ['rlbench'] (each needs a `vpdd <name>` command group)"),
            Check("tokenizer.resolution", self.tokenizer.resolution == self.env.resolution,
                  f"equal to env.resolution ({self.env.resolution}): the tokenizer sees rendered frames"),
            Check("finetune.demos_per_task", self.finetune.demos_per_task <= self.data.robot.demos_per_task,
                  f"at most data.robot.demos_per_task ({self.data.robot.demos_per_task})"),
            Check("eval.sampling_stride", self.eval.sampling_stride <= self.diffusion.num_timesteps,
                  f"at most diffusion.num_timesteps ({self.diffusion.num_timesteps})"),
            Check("eval.execute_steps", self.eval.execute_steps <= self.model.actions.chunk,
                  f"at most model.actions.chunk ({self.model.actions.chunk})"),
            Check("rlbench.eval_sampling_stride", self.rlbench.eval_sampling_stride <= self.diffusion.num_timesteps,
                  f"at most diffusion.num_timesteps ({self.diffusion.num_timesteps})"),
        ]
