"""Training as one rank of a torchrun job (PyTorch DDP): several processes on one node, or several nodes.

torchrun starts one process per GPU (or per share of a CPU machine) on every node and tells each its place
in the job through the environment: ``RANK`` (0 .. WORLD_SIZE-1 over all nodes), ``LOCAL_RANK`` (its GPU on
its node), ``WORLD_SIZE``, and ``MASTER_ADDR``/``MASTER_PORT`` from the rendezvous it ran (``--standalone``
on one node, ``--rdzv_endpoint HOST:PORT`` across nodes). The process group is joined through that
(``env://``): never a fixed address. NCCL where CUDA is available, Gloo on CPUs.

MONAI Label's own multi-GPU training spawns one process per GPU index of one node with NCCL and 127.0.0.1;
the trainers given a ``TorchrunLaunch`` (``wholebody``, ``spleen``) use this module instead (docs/training.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import partition_dataset

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int  # over all nodes; rank 0 validates last, keeps the best checkpoint and publishes it
    local_rank: int  # on this node: the GPU it trains on
    size: int

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    @property
    def backend(self) -> str:
        return "nccl" if torch.cuda.is_available() else "gloo"


def torchrun_world(environ: Mapping[str, str] = os.environ) -> World | None:
    """This process's place in a torchrun job; None outside one, or in a job of one process (trained as usual)."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    size = int(environ["WORLD_SIZE"])
    if size < 2:
        return None
    rank = int(environ["RANK"])
    return World(rank=rank, local_rank=int(environ.get("LOCAL_RANK", rank)), size=size)


@contextmanager
def process_group(world: World) -> Iterator[None]:
    """The job's process group for the block (joined once: an entry point that joined it keeps it)."""
    if dist.is_initialized():
        yield
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    dist.init_process_group(backend=world.backend, init_method="env://", rank=world.rank, world_size=world.size)
    # Ignite learns the job lazily with a collective call, which would hang when only rank 0 makes it (a
    # CheckpointSaver asks for the rank): every rank does it now, as MONAI Label's own multi-GPU path does.
    idist.sync()
    logger.info(f"rank {world.rank}/{world.size} (local {world.local_rank}) on {socket.gethostname()}: {world.backend}, {world.device}")
    try:
        yield
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class TorchrunLaunch:
    """How the server's ``multi_gpu`` training runs a trainer as a torchrun job on its own node: ``entry`` is
    what each process runs (``-m module args``), ``cpu_processes`` the Gloo processes on a machine without
    CUDA (``--conf cpu_train_processes``; with CUDA, one process per visible GPU)."""

    entry: tuple[str, ...]
    cpu_processes: int = 1

    def processes(self, studies: int) -> int:
        """Processes for a run on ``studies`` labelled studies: at most one per study (every rank trains on
        its own); 1 means no torchrun job."""
        gpus = torch.cuda.device_count()
        wanted = gpus if torch.cuda.is_available() else self.cpu_processes
        return max(1, min(wanted, studies))

    def command(self, processes: int, request: Mapping[str, Any]) -> list[str]:
        """torchrun on this node (``--standalone``: its own rendezvous on a free local port)."""
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        return [*run, *self.entry, "--request", json.dumps(request)]


def in_turns(world: World, work: Callable[[], T]) -> T:
    """``work()`` in every rank, one rank after the other: reading the datastore fetches studies from the PACS
    and converts layered labels into shared folders, which two ranks must not write at once."""
    result = None
    for rank in range(world.size):
        if rank == world.rank:
            result = work()
        dist.barrier()
    return result


def broadcast(value: T) -> T:
    """Rank 0's ``value``, in every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, in every rank."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def same_studies(studies_by_rank: Sequence[Sequence[str]]) -> None:
    """Every rank must read the same labelled studies (the shards are cut from that list): ValueError naming
    the first rank that differs from rank 0 and how."""
    first = set(studies_by_rank[0])
    for rank, studies in enumerate(studies_by_rank[1:], start=1):
        if set(studies) != first:
            only_here, missing = sorted(set(studies) - first), sorted(first - set(studies))
            raise ValueError(
                f"rank {rank} does not see the labelled studies rank 0 sees (only rank {rank}: {only_here}; "
                f"only rank 0: {missing}); every node must read the same studies folder or PACS"
            )


def agreed_datalist(items: Sequence[dict], image_id: Callable[[dict], str]) -> list[dict]:
    """``items`` in one order in every rank (by image id), after checking that every rank has the same studies."""
    items = sorted(items, key=image_id)
    same_studies(gathered([image_id(item) for item in items]))
    return items


def shard(items: Sequence[T], rank: int, size: int, equal_length: bool) -> list[T]:
    """This rank's studies: every ``size``-th from ``rank`` on, so no study is in two ranks' shards.

    ``equal_length`` (training): every rank takes the same number of steps per epoch, or DDP's gradient
    averaging would wait for a rank that has finished; a shorter shard repeats its own first study. Fewer
    studies than ranks: ValueError. Validation shards may differ in length (the metrics are gathered once
    per epoch), and with fewer studies than ranks every rank validates all of them (the gathered mean is
    the same).
    """
    if len(items) < size:
        if equal_length:
            raise ValueError(f"{len(items)} labelled studies for {size} ranks: every rank needs a study of its own; use fewer processes")
        return list(items)
    own = partition_dataset(data=list(items), num_partitions=size, shuffle=False, even_divisible=False)[rank]
    if equal_length:
        own = own + own[: math.ceil(len(items) / size) - len(own)]
    return own


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a network's state_dict (names and values, in order): equal in every rank after each DDP step."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def broadcast_weights(module: torch.nn.Module) -> None:
    """Rank 0's weights in every rank. DDP does this when it wraps the network, but the checkpoint a run resumes
    from is loaded afterwards, in each rank from its own node's model folder."""
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def batch_image_ids(batch: dict | list[dict]) -> set[str]:
    """The studies of a training batch: collated (a list of ids per key), or a list of patches each naming its study."""
    parts = batch if isinstance(batch, list) else [batch]
    ids = [part.get("image_id", []) for part in parts]
    return {i for value in ids for i in ([value] if isinstance(value, str) else value)}


@dataclass
class RankRecord:
    """What one rank did in a run, for the train stats: the studies it trained on (as its batches named them)
    and a fingerprint of its weights at the end."""

    world: World
    trained: set[str] = field(default_factory=set)
    published: list[str] = field(default_factory=list)  # the files this rank published (rank 0's alone)
    weights: str | None = None

    def attach(self, trainer: Engine, network: torch.nn.Module) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: self.trained.update(batch_image_ids(engine.state.batch)))
        trainer.add_event_handler(Events.COMPLETED, lambda _: setattr(self, "weights", weights_fingerprint(network)))

    def as_stats(self) -> dict[str, Any]:
        return {
            "rank": self.world.rank,
            "host": socket.gethostname(),
            "device": str(self.world.device),
            "trained": sorted(self.trained),
            "published": self.published,
            "weights_sha256": self.weights,
        }
