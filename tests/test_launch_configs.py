"""configs/accelerate/*.yaml: each loads with accelerate's own loader and says what its name says.

accelerate reads these files only at launch time, on the machines that run them; a typo would
otherwise surface there. The slow test checks that the CPU config really starts two gloo ranks;
tests/test_distributed.py trains through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from conftest import ROOT

from ouroboros3d.config import load_params

CONFIGS = ROOT / "configs" / "accelerate"
# name -> (distributed_type, num_processes, mixed_precision, ZeRO stage or None, use_cpu)
EXPECTED = {
    "1gpu": (DistributedType.NO, 1, "bf16", None, False),
    "8gpu_ddp": (DistributedType.MULTI_GPU, 8, "bf16", None, False),
    "8gpu_deepspeed_zero2": (DistributedType.DEEPSPEED, 8, "bf16", 2, False),
    # accelerate's torchrun launcher starts the 2 ranks; use_cpu makes each a gloo MULTI_CPU rank
    "cpu_2proc": (DistributedType.MULTI_GPU, 2, "no", None, True),
}


def path(name: str) -> str:
    return str(CONFIGS / f"{name}.yaml")


def test_every_config_is_checked():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    distributed_type, processes, precision, zero_stage, use_cpu = EXPECTED[name]
    config = load_config_from_file(path(name))  # unknown top-level keys raise ValueError here
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == distributed_type
    assert config.num_processes == processes
    assert config.mixed_precision == precision
    assert config.use_cpu is use_cpu
    assert config.num_machines == 1
    assert config.deepspeed_config.get("zero_stage") == zero_stage


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nested_keys_are_launch_options(name):
    # the loader checks top-level keys only: deepspeed_config etc. become `accelerate launch`
    # options by name, so a misspelt one would be silently ignored
    config = load_config_from_file(path(name))
    options = {action.dest for action in launch_command_parser()._actions}
    for section in ("deepspeed_config", "fsdp_config", "dynamo_config"):
        unknown = sorted(set(getattr(config, section)) - options)
        assert not unknown, f"{name}: {section} has keys accelerate launch does not know: {unknown}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_resolves_the_config(name):
    """What `accelerate launch --config_file ...` decides, short of starting processes."""
    _, processes, precision, zero_stage, use_cpu = EXPECTED[name]
    args = launch_command_parser().parse_args(["--config_file", path(name), "train.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == processes
    assert args.mixed_precision == precision
    assert args.use_deepspeed is (zero_stage is not None)
    assert args.multi_gpu is (processes > 1 and zero_stage is None)
    assert bool(args.use_cpu) is use_cpu
    if zero_stage is not None:
        assert args.zero_stage == zero_stage
        assert args.gradient_clipping == load_params(ROOT / "params.yaml").train.grad_clip


def test_gpu_configs_match_the_gpu_medium_precision():
    # training.py passes params train.mixed_precision to Accelerator, which overrides the config's
    gpu_medium = load_params(ROOT / "params.yaml", preset="gpu-medium")
    for name in ("1gpu", "8gpu_ddp"):
        assert load_config_from_file(path(name)).mixed_precision == gpu_medium.train.mixed_precision


HELLO = """
from pathlib import Path

import torch
from accelerate import Accelerator

accelerator = Accelerator(cpu=not torch.cuda.is_available())
total = accelerator.reduce(torch.tensor([accelerator.process_index + 1.0]), "sum")
# one file per rank: the ranks share one stdout, where their lines can interleave mid-line
Path(f"rank{accelerator.process_index}.txt").write_text(
    f"rank {accelerator.process_index}/{accelerator.num_processes} {accelerator.distributed_type} "
    f"{accelerator.state.backend} {total.item()}"
)
accelerator.end_training()  # destroys the process group: without it gloo may abort at exit
"""


@pytest.mark.slow
def test_cpu_config_starts_two_gloo_ranks(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text(HELLO)
    accelerate = Path(sys.executable).parent / "accelerate"
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(accelerate), "launch", "--config_file", path("cpu_2proc"), str(script)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [p.read_text() for p in sorted(tmp_path.glob("rank*.txt"))]
    assert ranks == [f"rank {i}/2 DistributedType.MULTI_CPU gloo 3.0" for i in range(2)], proc.stdout
