"""DiT training over ranks: DDP and FSDP under torchrun (gloo, CPU) match one process on the
same global batches, and sharded checkpoints resume at another world size."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from kinetoscope.checkpoint import optimizer_state_to_tensors, save_json, save_tensors
from kinetoscope.data.manifest import read_manifest, write_manifest
from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.train.distributed import load_sharded, save_sharded
from kinetoscope.train.dit import load_dit, train_dit
from ranks import assert_same_tensors, optimizer_moments, read_metrics, run_two_ranks

pytestmark = [
    pytest.mark.filterwarnings("ignore:prompts longer than"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),  # DCP at world size 1
    pytest.mark.usefixtures("one_thread"),
]

# Tiny everything, fp32 (bf16 would round differently on each side), 20 steps of 4 batches:
# several epochs of the 12-clip manifest, so steps also cross epoch boundaries.
RUN = {"preset": "tiny", "max_frames": 9, "lr": 3e-3, "warmup": 5, "preview_every": 0,
       "steps": 20, "checkpoint_every": 10, "given_prob": 0.5, "precision": "fp32"}  # fmt: skip
STOP = 10  # where the interrupted runs stop

SCRIPT = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
from kinetoscope.train.dit import train_dit
torch.set_num_threads(1)
manifest, root, vae, cache, run, stop = sys.argv[1:7]
run, root = json.loads(run), Path(root)
dist.init_process_group("gloo")  # one group for all the runs below
common = dict(vae=vae, cache=cache, progress=False, **run)
summaries = {
    "whole": train_dit(manifest, root / "whole", **common),
    "stopped": train_dit(manifest, root / "parts", stop_at=int(stop), **common),
    # A run that one process saved at step STOP, resumed here at world size 2.
    "from_one": train_dit(manifest, root / "from-one", resume=True, **common),
}
if run["parallel"] == "fsdp":  # mixed precision by policy: bf16 weights and compute
    summaries["bf16"] = train_dit(manifest, root / "bf16", **{**common, "steps": 3,
                                  "precision": "bf16"})
(root / f"summary-{dist.get_rank()}.json").write_text(json.dumps(summaries))
dist.barrier()  # neither rank closes the group while the other still uses it
dist.destroy_process_group()
"""


def _checkpoint(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A run's exported model and EMA, and its sharded state read back by one process."""
    checkpoint = folder / "checkpoint"
    model, ema = load_dit(checkpoint / "model"), load_dit(checkpoint / "ema")
    parts = {"model": model.state_dict(), "ema": ema.state_dict()}
    model, ema = DiT(model.config), DiT(model.config)  # fresh weights, for load_sharded to fill
    optimizer = torch.optim.AdamW(model.parameters())
    load_sharded(checkpoint / "train_state" / "sharded", model, ema, optimizer)
    parts["sharded_model"], parts["sharded_ema"] = model.state_dict(), ema.state_dict()
    return {**parts, "optimizer": optimizer_moments(optimizer)}


def _assert_same_run(expected: Path, actual: Path) -> None:
    """The same losses step by step (within 1e-4) and the same checkpoint (within float
    summation order), exported and sharded."""
    one, two = read_metrics(expected), read_metrics(actual)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 21))
    for a, b in zip(one, two, strict=True):
        assert (a["tokens"], a["epoch"]) == (b["tokens"], b["epoch"])
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    assert_same_tensors(_checkpoint(expected), _checkpoint(actual))


@pytest.fixture(scope="module")
def one_process(tiny_world, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(manifest, VAE, folder): one process taking 4 batches a step, the run whole and the
    same run stopped at step STOP."""
    world, vae = tiny_world
    root = tmp_path_factory.mktemp("one-process")
    manifest = write_manifest(root / "twice.jsonl", read_manifest(world) * 2)
    common = {"vae": vae, "cache": root / "cache", "progress": False, **RUN, "accumulate": 4}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_dit(manifest, root / "whole", **common)
    train_dit(manifest, root / "parts", stop_at=STOP, **common)
    torch.set_num_threads(threads)
    return manifest, vae, root


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_and_their_checkpoints_reshard(parallel, one_process, tmp_path):
    manifest, vae, reference = one_process
    shutil.copytree(reference / "parts", tmp_path / "from-one")
    # Two ranks taking 2 batches a step see the global batches of one process taking 4 (and
    # take the no-sync path on the first). Recomputing blocks must not change a thing.
    run = {**RUN, "accumulate": 2, "parallel": parallel, "gradient_checkpointing": True}
    run_two_ranks(SCRIPT, tmp_path, str(manifest), str(tmp_path), str(vae),
                  str(reference / "cache"), json.dumps(run), str(STOP))  # fmt: skip
    ranks = [json.loads((tmp_path / f"summary-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["whole"]["weights_sha256"] == ranks[1]["whole"]["weights_sha256"]
    assert ranks[0]["stopped"] == {"steps": STOP, "stopped": True}

    # 1. Two ranks train like one process on the same global batches, across epochs.
    assert read_metrics(reference / "whole")[-1]["epoch"] >= 1
    _assert_same_run(reference / "whole", tmp_path / "whole")
    # 2. Saved by two ranks, resumed by one process: the uninterrupted run.
    resumed = train_dit(manifest, tmp_path / "parts", vae=vae, cache=reference / "cache",
                        resume=True, progress=False, **{**RUN, "accumulate": 4})  # fmt: skip
    assert resumed["steps"] == 20
    _assert_same_run(reference / "whole", tmp_path / "parts")
    # 3. Saved by one process, resumed by two ranks: the uninterrupted run again.
    _assert_same_run(reference / "whole", tmp_path / "from-one")

    # Under FSDP each rank saved its own half of every weight and moment; under DDP, one
    # whole copy. Either way the checkpoint holds each value once.
    index = {}
    for run in (reference / "whole", tmp_path / "whole"):
        sharded = run / "checkpoint" / "train_state" / "sharded"
        metadata = dcp.FileSystemReader(sharded).read_metadata().state_dict_metadata
        chunks = metadata["optimizer.final.linear.weight.exp_avg"].chunks
        size = sum(path.stat().st_size for path in sharded.glob("*.distcp"))
        index[run.name if run != tmp_path / "whole" else "ranks"] = (len(chunks), size)
    assert index["ranks"][0] == (2 if parallel == "fsdp" else 1) and index["whole"][0] == 1
    assert index["ranks"][1] < 1.5 * index["whole"][1]  # not a copy per rank
    if parallel == "fsdp":  # mixed precision by policy: bf16 weights and compute
        bf16 = ranks[0]["bf16"]
        first = read_metrics(tmp_path / "whole")[0]["loss"]
        assert bf16["steps"] == 3 and bf16["first_loss"] == pytest.approx(first, rel=0.05)


def test_a_run_saved_before_sharded_checkpoints_resumes_exactly(tiny_world, tmp_path):
    manifest, vae = tiny_world
    common = {"vae": vae, "cache": tmp_path / "cache", "progress": False, **RUN, "steps": 4}
    train_dit(manifest, tmp_path / "whole", **common)
    train_dit(manifest, tmp_path / "parts", stop_at=2, **common)
    # Rewrite the checkpoint as runs used to save it: moments by parameter index, no shards.
    state_dir = tmp_path / "parts" / "checkpoint" / "train_state"
    model = load_dit(tmp_path / "parts" / "checkpoint" / "model")
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.0)  # the run's settings
    load_sharded(state_dir / "sharded", model, DiT(model.config), optimizer)
    tensors, rest = optimizer_state_to_tensors(optimizer)
    save_tensors(state_dir / "optimizer.safetensors", tensors)
    state = json.loads((state_dir / "state.json").read_text())
    del state["world_size"]
    save_json(state_dir / "state.json", {**state, "optimizer": rest})
    shutil.rmtree(state_dir / "sharded")

    assert train_dit(manifest, tmp_path / "parts", resume=True, **common)["steps"] == 4
    whole, parts = _checkpoint(tmp_path / "whole"), _checkpoint(tmp_path / "parts")
    for part in whole:
        assert all(torch.equal(whole[part][k], parts[part][k]) for k in whole[part]), part


def test_resume_keeps_the_batches_of_a_step(tiny_world, tmp_path):
    manifest, vae = tiny_world
    common = {"vae": vae, "cache": tmp_path / "cache", "progress": False, **RUN, "steps": 2}
    train_dit(manifest, tmp_path / "run", stop_at=1, **common)
    with pytest.raises(ValueError, match=r"1 x 1 = 1 batches a step; pass accumulate=1"):
        train_dit(manifest, tmp_path / "run", resume=True, **{**common, "accumulate": 2})


def test_a_checkpoint_index_naming_other_objects_is_refused_unread(tmp_path):
    model = DiT(DIT_PRESETS["tiny"])
    ema = DiT(DIT_PRESETS["tiny"])
    optimizer = torch.optim.AdamW(model.parameters())
    save_sharded(tmp_path / "good", model, ema, optimizer)
    load_sharded(tmp_path / "good", model, ema, optimizer)  # DCP's own classes are read

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    (tmp_path / "bad" / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="not part of a checkpoint's metadata"):
        load_sharded(tmp_path / "bad", model, ema, optimizer)
    assert not (tmp_path / "ran").exists()
    # Entries DCP stores as pickles (anything but a tensor) are refused too.
    dcp.save({"model": {"note": "hello"}}, checkpoint_id=tmp_path / "objects")
    with pytest.raises(ValueError, match="stored as a pickle"):
        load_sharded(tmp_path / "objects", model, ema, optimizer)
