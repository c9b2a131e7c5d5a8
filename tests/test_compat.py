"""The torchvision workaround lets diffusers and lpips import on a CPU-only torch."""

import subprocess
import sys


def test_diffusers_lpips_and_torchvision_import_after_ouroboros3d():
    code = (
        "import ouroboros3d, ouroboros3d._compat as c\n"
        "import torchvision, diffusers, lpips\n"
        "from diffusers import UNetSpatioTemporalConditionModel, AutoencoderKLTemporalDecoder\n"
        "import torchvision.transforms.functional as F, torch\n"
        "assert F.hflip(torch.arange(4.).view(1, 1, 4)).flatten().tolist() == [3., 2., 1., 0.]\n"
        "print(c.TORCHVISION_OPS_AVAILABLE)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in {"True", "False"}
