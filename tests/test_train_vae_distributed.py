"""VAE training over ranks: DDP and FSDP under torchrun (gloo, CPU) match one process on the
same global batch, and its checkpoints resume at another world size."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from kinetoscope.train.distributed import load_sharded
from kinetoscope.train.vae import train_vae
from kinetoscope.vae import VideoVAE, load_vae
from ranks import assert_same_tensors, optimizer_moments, read_metrics, run_two_ranks

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),  # DCP at world size 1
    pytest.mark.usefixtures("one_thread"),
]

# The tiny VAE, fp32 (bf16 would round differently on each side), 3 clips a step (2 videos and
# an image: one rank takes two, the other one), across epochs of the 5 training clips.
RUN = {"preset": "tiny", "batch": 2, "images": 1, "crop": 32, "max_frames": 5, "holdout": 1,
       "steps": 8, "checkpoint_every": 4, "eval_every": 4, "stats_clips": 2, "warmup": 2,
       "lr": 3e-3, "precision": "fp32", "progress": False}  # fmt: skip
STOP = 4  # where the interrupted runs stop

SCRIPT = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
from kinetoscope.train.vae import train_vae
torch.set_num_threads(1)
manifest, root, run, stop = sys.argv[1:5]
run, root = json.loads(run), Path(root)
dist.init_process_group("gloo")  # one group for all the runs below
summaries = {
    "whole": train_vae(manifest, root / "whole", **run),
    "stopped": train_vae(manifest, root / "parts", stop_at=int(stop), **run),
    # A run that one process saved at step STOP, resumed here at world size 2.
    "from_one": train_vae(manifest, root / "from-one", resume=True, **run),
}
(root / f"summary-{dist.get_rank()}.json").write_text(json.dumps(summaries))
dist.barrier()  # neither rank closes the group while the other still uses it
dist.destroy_process_group()
"""


def _checkpoint(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A run's exported VAE, and its sharded state read back by one process."""
    vae = load_vae(folder)
    parts = {"model": vae.state_dict()}
    fresh = VideoVAE(vae.config)  # other weights, for load_sharded to fill
    optimizer = torch.optim.AdamW(fresh.parameters())
    load_sharded(folder / "checkpoint" / "train_state" / "sharded", fresh, None, optimizer)
    parts["sharded_model"] = fresh.state_dict()
    return {**parts, "optimizer": optimizer_moments(optimizer)}


def _assert_same_run(expected: Path, actual: Path) -> None:
    """The same losses and clips step by step (losses within 1e-4), the same held-out PSNR,
    and the same checkpoint (within float summation order), exported and sharded."""
    one, two = read_metrics(expected), read_metrics(actual)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 9))
    for a, b in zip(one, two, strict=True):
        assert a["frames"] == b["frames"] and a["lr"] == b["lr"]
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert ("psnr" in b) == ("psnr" in a) == (a["step"] % 4 == 0)
        if "psnr" in a:
            assert b["psnr"] == pytest.approx(a["psnr"], abs=1e-3)
    assert_same_tensors(_checkpoint(expected), _checkpoint(actual))


@pytest.fixture(scope="module")
def one_process(tiny_world, tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, folder): one process, the run whole and the same run stopped at STOP."""
    manifest, _ = tiny_world
    root = tmp_path_factory.mktemp("vae-one-process")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_vae(manifest, root / "whole", **RUN)
    train_vae(manifest, root / "parts", stop_at=STOP, **RUN)
    torch.set_num_threads(threads)
    return manifest, root


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_and_their_checkpoints_reshard(parallel, one_process, tmp_path):
    manifest, reference = one_process
    shutil.copytree(reference / "parts", tmp_path / "from-one")
    run = {**RUN, "parallel": parallel}
    run_two_ranks(SCRIPT, tmp_path, str(manifest), str(tmp_path), json.dumps(run), str(STOP))
    ranks = [json.loads((tmp_path / f"summary-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["whole"]["weights_sha256"] == ranks[1]["whole"]["weights_sha256"]
    assert ranks[0]["whole"]["heldout_psnr"] == ranks[1]["whole"]["heldout_psnr"]
    assert ranks[0]["stopped"] == {"steps": STOP, "stopped": True}

    # 1. Two ranks train like one process on the same global batches, across epochs.
    _assert_same_run(reference / "whole", tmp_path / "whole")
    # 2. Saved by two ranks, resumed by one process: the uninterrupted run.
    resumed = train_vae(manifest, tmp_path / "parts", resume=True, **RUN)
    assert resumed["steps"] == 8
    _assert_same_run(reference / "whole", tmp_path / "parts")
    # 3. Saved by one process, resumed by two ranks: the uninterrupted run again.
    _assert_same_run(reference / "whole", tmp_path / "from-one")
